"""The node layer's protocol: what agents, the node manager and the heartbeat monitor say to each other.

Every message here is a pydantic ``Message`` sent through ``platform_sdk.bus``:

* to one agent (``topics.commands("agent.<node>")``, request/reply): ``StartService``,
  ``StopService``, ``RestartService``, ``ListServices`` → ``ServiceState`` / ``ServiceStates``;
* from every agent (``topics.events("nodes")``): ``NodeAnnouncement`` every
  ``agent.announce_interval_s`` (address, capacity, its load, what runs there: the node
  manager's only news of a node, so a node that stops announcing is silent) and
  ``ServiceExited`` the moment a process it started exits;
* to the node manager (``topics.commands("node-manager")``, request/reply):
  ``PlaceService`` → ``Placement``, ``LocateService`` → ``Placement``,
  ``UnplaceService`` → ``Placement``, ``ListNodes`` → ``NodesReport`` (the front door's
  ``GET /api/nodes`` and the portal's nodes page);
* from the heartbeat monitor (``topics.incidents``): ``ServiceIncident`` for every
  failure it saw and what it did; from the node manager, "replaced" for each service
  it moved off a lost node (the deployer follows its app instances there).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from platform_sdk.bus import Bus, Producer
from platform_sdk.envelope import Message
from platform_sdk.errors import BadRequest, PlatformError
from platform_sdk.topics import Topics

log = logging.getLogger(__name__)

# Every Python process the platform starts (agents, services, models, apps): glibc malloc keeps
# at most two arenas. Without the cap each thread that allocates (librdkafka's, waitress's) may get
# an arena of its own, and the idle demo's nineteen processes kept about 13 MB more resident.
PROCESS_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2"}


def node_number(node_id: str) -> int | None:
    """N of a node named ``node-N`` (the local provider's names); None for another name (a
    bootstrapped host's node is named after its host)."""
    number = node_id.removeprefix("node-")
    return int(number) if node_id.startswith("node-") and number.isdigit() else None


IncidentKind = Literal[
    "exited", "failed", "slow", "blind", "deferred", "restarted", "replaced", "gave_up", "waiting"
]
ProcessState = Literal["running", "sleeping", "io_wait", "stopped", "zombie", "gone"]
ServiceKind = Literal["platform", "model", "app", "simulator"]
# "missing": placed, but its node announces it does not run it (the node restarted, e.g. a new `aiot up`).
RunState = Literal["starting", "running", "stopping", "exited", "stopped", "failed", "missing"]
RestartPolicy = Literal["monitor", "agent"]


class BundleRef(BaseModel):
    """A deploy bundle in the blob store: a zip the agent unpacks and runs the service in."""

    key: str = Field(description="Blob store key of the zip.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Its hash; also its cache key on a node.")


class BusGrants(BaseModel):
    """What a model replica or app instance may use on the bus besides its own topics: its bound
    devices' (the deployer computes them; the node manager grants them to its principal)."""

    read: list[str] = Field(
        default_factory=list, description="Topics it may read: its sensors' data, its controllers' state."
    )
    write: list[str] = Field(
        default_factory=list, description="Topics it may write: its controllers' commands."
    )


class ServiceSpec(BaseModel):
    """Everything an agent needs to run a service, whichever node it lands on."""

    service_id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="Unique id of the running service."
    )
    kind: ServiceKind = "platform"
    owner: str = Field(
        default="",
        max_length=256,
        description="Who uploaded the model or app (kind model/app): its sandbox runs as this owner's "
        "uid on every node (docs/security.md). Platform services and simulators have none.",
    )
    module: str | None = Field(default=None, description="Run as `python -m MODULE` (platform services).")
    command: list[str] | None = Field(default=None, description="Or run this command line.")
    bundle: BundleRef | None = Field(
        default=None,
        description="Files to run in (models, apps): unpacked once per node, the working directory, "
        "AIOT_BUNDLE_DIR.",
    )
    requirements: list[str] = Field(
        default_factory=list, description="pip specifiers; one cached venv per set."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of the process.")
    bus: BusGrants = Field(
        default_factory=BusGrants,
        description="Device topics a model replica or app instance may read and write (kind model/app).",
    )
    ports: list[str] = Field(default_factory=list, description="Named ports to allocate: AIOT_PORT_<NAME>.")
    cpu_limit: float | None = Field(default=None, gt=0, description="CPUs (docker runtime).")
    memory_mb: int | None = Field(default=None, gt=0, description="Memory limit in MB (docker runtime).")
    restart: RestartPolicy = Field(
        default="monitor",
        description="`monitor`: the heartbeat monitor decides; `agent`: the agent restarts it itself "
        "(the node manager and the monitor, which cannot watch themselves).",
    )
    main_node_only: bool = Field(default=False, description="Runs on the main node only.")
    runtime: Literal["process", "docker"] | None = Field(
        default=None,
        description="Force a runtime (the control plane runs as host processes); empty: the node's.",
    )

    def argv(self, python: str) -> list[str]:
        """The command line to run, with ``python`` as the interpreter (a runtime's own)."""
        if self.module:
            return [python, "-m", self.module]
        if self.command:
            return [python if part == "{python}" else part for part in self.command]
        raise BadRequest(f"service {self.service_id!r} names neither a module nor a command")


class ServiceState(BaseModel):
    """What an agent knows of one service it runs."""

    service_id: str
    node_id: str
    state: RunState
    runtime: str
    pid: int | None = None
    container_id: str | None = None
    started_at: datetime | None = None
    exit_code: int | None = None
    restarts: int = 0
    ports: dict[str, int] = Field(default_factory=dict)


class StartService(Message):
    """Start ``spec`` here; starting one that already runs answers its state (idempotent)."""

    message_type = "agent.start"
    spec: ServiceSpec


class StopService(Message):
    message_type = "agent.stop"
    service_id: str


class RestartService(Message):
    """Stop (killed if it does not stop in time) and start again; ``force`` kills at once (hung process)."""

    message_type = "agent.restart"
    service_id: str
    force: bool = False


class ListServices(Message):
    message_type = "agent.list"


class ProbeService(Message):
    """How a service's processes are doing (the heartbeat monitor asks before it restarts a silent one)."""

    message_type = "agent.probe"
    service_id: str


class ServiceProbe(Message):
    """A service's process tree (docker: its container's processes) as its node sees it now."""

    message_type = "agent.probed"
    service_id: str
    state: ProcessState = Field(
        description="The tree's worst state: gone (no process, or the service stopped), zombie, stopped "
        "(SIGSTOP, state T), io_wait (a process in uninterruptible sleep), else sleeping or running."
    )
    cpu_s: float = Field(description="CPU seconds (user + system) the tree has used so far.")
    processes: int = 0


class ServiceStateReply(Message):
    message_type = "agent.state"
    state: ServiceState


class ServiceStates(Message):
    message_type = "agent.states"
    node_id: str
    services: list[ServiceState]


class LoadSample(BaseModel):
    """A node's load as its agent measured it (psutil): announced, and answered on ``GET /load``."""

    node_id: str
    cpu_percent: float
    memory_used_mb: float
    memory_total_mb: float
    services: int
    processes: int
    capacity: int


class NodeAnnouncement(Message):
    """An agent's periodic 'here I am': where it answers, how much it takes, its load, what it runs."""

    message_type = "node.announcement"
    node_id: str
    host: str
    http_url: str
    capacity: int
    runtime: str
    main: bool
    services: list[ServiceState]
    load: LoadSample | None = Field(default=None, description="Measured as the announcement was sent.")


class ServiceExited(Message):
    """A process or container an agent started has exited (sent at once, not after missed heartbeats)."""

    message_type = "service.exited"
    node_id: str
    service_id: str
    exit_code: int | None
    uptime_s: float
    last_output: list[str]
    will_restart_here: bool


class ServiceIncident(Message):
    """The heartbeat monitor saw a service fail or acted on it (also kept in its ``incidents`` table),
    or the node manager moved it off a lost node ("replaced")."""

    message_type = "service.incident"
    service_id: str
    node_id: str | None
    kind: IncidentKind = Field(
        description="exited (its agent restarts it), failed, slow (silent but making progress: left "
        "running), blind (the monitor cannot trust its view: it restarts nothing), deferred (a "
        "restart waits for its back-off or its node's budget), restarted (on its node), replaced (on "
        "another node), gave_up (a crash loop: it stays down), waiting (no node has room for its "
        "placement: it waits for the node the provider was asked for)."
    )
    detail: str


class PlaceService(Message):
    """Run ``spec`` on the least-loaded node (not on any of ``avoid``)."""

    message_type = "nodes.place"
    spec: ServiceSpec
    avoid: list[str] = Field(default_factory=list)
    wait_for_room: bool = Field(
        default=True,
        description="When no node has room and the provider can add one: wait for it (up to "
        "node_manager.room_wait_s, listed as waiting) rather than be refused at once.",
    )


class LocateService(Message):
    message_type = "nodes.locate"
    service_id: str


class UnplaceService(Message):
    """Stop a placed service and forget its placement."""

    message_type = "nodes.unplace"
    service_id: str


class ListNodes(Message):
    """Every node the node manager knows, with its load and the services placed on it."""

    message_type = "nodes.list"


class PlacedService(BaseModel):
    """A service placed on a node, as its agent last announced it."""

    service_id: str
    kind: ServiceKind
    state: RunState
    restarts: int = Field(description="Restarts by its agent since it was placed.")
    started_at: datetime | None


class NodeReport(BaseModel):
    """A node as the node manager last heard of it."""

    node_id: str
    host: str
    runtime: str
    main: bool
    state: str = Field(description="up, suspect or down.")
    capacity: int
    cpu_percent: float
    memory_used_mb: float
    memory_total_mb: float
    last_seen: datetime
    services: list[PlacedService]


class WaitingPlacement(BaseModel):
    """A placement no node had room for, waiting for the node the provider was asked for."""

    service_id: str
    kind: ServiceKind
    since: datetime
    reason: str


class NodesReport(Message):
    message_type = "nodes.report"
    nodes: list[NodeReport]
    waiting: list[WaitingPlacement] = Field(
        default_factory=list, description="Placements waiting for a node with room, oldest first."
    )


class Placement(Message):
    message_type = "nodes.placement"
    service_id: str
    node_id: str
    host: str = Field(default="", description="Address of the node; its services bind it.")
    spec: ServiceSpec
    state: ServiceState | None = None

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the service's ``http`` port; empty when it has none (yet)."""
        port = self.state.ports.get("http") if self.state else None
        return f"http://{self.host or '127.0.0.1'}:{port}" if port else ""


class IncidentNote(BaseModel):
    """One incident as `aiot status` and the portal's nodes page show it: when, and what happened."""

    time: datetime
    service_id: str
    node_id: str | None
    kind: IncidentKind
    detail: str


def recent_incidents(bus: Bus, count: int, timeout: float) -> list[IncidentNote]:
    """The ``count`` newest incidents on ``bus`` (the monitor's decisions, the node manager's moves),
    oldest first; ``Unavailable`` when the broker does not answer within ``timeout``."""
    return [
        IncidentNote(
            time=envelope.time, **envelope.open(ServiceIncident).model_dump(exclude={"message_type"})
        )
        for envelope in bus.recent(bus.topics.incidents, count, timeout=timeout)
    ]


def agent_topic(topics: Topics, node_id: str) -> str:
    return topics.commands(f"agent.{node_id}")


def node_manager_topic(topics: Topics) -> str:
    return topics.commands("node-manager")


def node_events_topic(topics: Topics) -> str:
    return topics.events("nodes")


def publish_incident(producer: Producer, incident: ServiceIncident) -> None:
    """Sends ``incident`` to ``events.incidents``, keyed by service; one the broker refuses is logged."""
    try:
        producer.send(producer.bus.topics.incidents, incident, key=incident.service_id)
    except PlatformError as exc:
        log.warning("cannot publish the %s incident of %s: %s", incident.kind, incident.service_id, exc)
