"""The table of services one agent runs, and the thread that watches them.

``Supervisor.start_service`` allocates ports, builds the environment and asks
the runtime to start (outside the table's lock: a first start may build an image or a venv
for minutes, and the node's announcements must go on); the supervisor thread notices exits within
``agent.supervise_interval_s`` and reports them at once (``ServiceExited``), restarts
``restart="agent"`` services itself with growing back-off, and announces the
node (its address, its load and what it runs) every ``announce_interval_s``. A service
holds its unpacked bundle (``service_agent.bundles``) from its start until it is stopped on
purpose (or its start fails, or the agent stops); restarts keep it. A model replica or app
instance also holds its sandbox (``service_agent.sandbox``: its owner's copy of the bundle, its
scratch folder) as long, and gets ``sandbox_environment``, not the agent's.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from platform_core.nodes import (
    PROCESS_ENVIRONMENT,
    LoadSample,
    NodeAnnouncement,
    ProcessState,
    RunState,
    ServiceExited,
    ServiceProbe,
    ServiceSpec,
    ServiceState,
    node_events_topic,
)
from platform_core.roster import roster_modules
from platform_sdk.bus import Bus, Producer
from platform_sdk.errors import BadRequest, Forbidden, NotFound, PlatformError
from platform_sdk.messages import LogRecord
from platform_sdk.principals import UPLOADED_KINDS
from platform_sdk.settings import Settings
from service_agent.bundles import BundleCache
from service_agent.ports import PortAllocator
from service_agent.runtime import RunningService, Runtime
from service_agent.sandbox import SANDBOXED_KINDS, Sandbox, Sandboxes, sandbox_environment

log = logging.getLogger(__name__)
# Worst first: the state a probe reports for a tree is the worst of its processes'.
_STATE_ORDER: tuple[ProcessState, ...] = ("gone", "zombie", "stopped", "io_wait", "running", "sleeping")
_PSUTIL_STATES: dict[str, ProcessState] = {
    psutil.STATUS_ZOMBIE: "zombie",
    psutil.STATUS_DEAD: "gone",
    psutil.STATUS_STOPPED: "stopped",
    psutil.STATUS_TRACING_STOP: "stopped",
    psutil.STATUS_DISK_SLEEP: "io_wait",
    psutil.STATUS_RUNNING: "running",
}
OUTPUT_LINES_KEPT = 30
# What of a model's or app's spec env says how it reaches the bus (set by the node manager).
INSTANCE_BUS_KEYS = frozenset(
    {
        "AIOT_KAFKA__SASL_USERNAME",
        "AIOT_KAFKA__SASL_PASSWORD",
        "AIOT_KAFKA__SECURITY_PROTOCOL",
        "AIOT_KAFKA__SASL_MECHANISM",
        "AIOT_KAFKA__OWN_TOPICS",
    }
)


@dataclass
class Managed:
    """One service this agent runs, or ran."""

    spec: ServiceSpec
    ports: dict[str, int]
    handle: RunningService | None = None
    state: RunState = "starting"
    started_at: datetime | None = None
    started_mono: float = 0.0
    exit_code: int | None = None
    restarts: int = 0
    quick_exits: int = 0
    restart_at: float | None = None
    runtime: str = ""
    output: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=OUTPUT_LINES_KEPT)
    )


class Supervisor:
    """Starts, stops and watches this node's services."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        runtime: Runtime,
        http_url: Callable[[], str],
        host_runtime: Runtime | None = None,
        bundles: BundleCache | None = None,
        measure_load: Callable[[], LoadSample] | None = None,
        sandboxes: Sandboxes | None = None,
    ) -> None:
        self.settings = settings
        self.agent = settings.agent
        self.node_id = settings.agent.node_id
        self.bus = bus
        self.runtime = runtime
        # Services that must see the host (the node manager starts agents, removes containers).
        self.runtimes = {runtime.name: runtime}
        if host_runtime is not None:
            self.runtimes.setdefault(host_runtime.name, host_runtime)
        self.http_url = http_url
        self.measure_load = measure_load  # the node's load, sent with each announcement
        self.bundles = bundles
        self.sandboxes = sandboxes  # None: this supervisor runs no model or app
        self.ports = PortAllocator(self.agent.port_range, self.agent.host)
        self._services: dict[str, Managed] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._host = socket.gethostname()
        self._allowed_modules = set(self.agent.allowed_modules) | roster_modules(settings)

    # life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._producer = self.bus.producer()
        self.bus.ensure_topics([node_events_topic(self.bus.topics)])
        self._thread = threading.Thread(target=self._watch, name=f"aiot-supervisor-{self.node_id}")
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, then stop every service (a node going away takes its services along)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            managed = list(self._services.values())
        # All at once: a node going down should take as long as its slowest service, not their sum.
        stoppers = [
            threading.Thread(
                target=self._halt, args=(entry, "stopped"), name=f"aiot-stop-{entry.spec.service_id}"
            )
            for entry in managed
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for entry in managed:
            self._release_bundle(entry.spec.service_id)
        if self.sandboxes is not None:
            self.sandboxes.close()
        if self._producer is not None:
            self._producer.flush(5)

    # commands -----------------------------------------------------------------------------
    def check_allowed(self, spec: ServiceSpec) -> None:
        """Refuse what is not the platform's own: a module outside ``agent.allowed_modules`` (and the
        roster's), a command line unless ``agent.allow_commands``, environment beyond ``AIOT_*``."""
        if spec.module is not None and spec.module not in self._allowed_modules:
            raise Forbidden(f"node {self.node_id} runs only the platform's modules, not {spec.module!r}")
        if spec.module is None and not self.agent.allow_commands:
            raise Forbidden(
                f"node {self.node_id} runs no command lines, only the platform's modules "
                f"({spec.service_id!r} names a command)"
            )
        foreign = sorted(key for key in spec.env if not key.startswith("AIOT_"))
        if foreign:
            raise Forbidden(f"a service's environment sets only AIOT_* variables, not {', '.join(foreign)}")

    def start_service(self, spec: ServiceSpec) -> ServiceState:
        self.check_allowed(spec)
        with self._lock:
            entry = self._services.get(spec.service_id)
            if entry is not None and entry.state in ("starting", "running"):
                return self.state_of(entry)  # idempotent: a retried start starts nothing
            if entry is None:
                entry = Managed(spec=spec, ports={name: self.ports.allocate() for name in spec.ports})
                self._services[spec.service_id] = entry
            entry.spec = spec
            entry.state = "starting"  # claimed: a start of it meanwhile starts nothing
        # Outside the lock: a first start may fetch a bundle and build an image for minutes, and
        # the node's announcements (its liveness for the node manager) and the exit checks of the
        # other services go on meanwhile.
        self._launch(entry)
        with self._lock:
            return self.state_of(entry)

    def stop_service(self, service_id: str) -> ServiceState:
        entry = self._entry(service_id)
        self._halt(entry, "stopped")
        with self._lock:
            self._services.pop(service_id, None)
            self.ports.release(list(entry.ports.values()))
        self._release_bundle(service_id)
        return self.state_of(entry)

    def restart_service(self, service_id: str, *, force: bool = False) -> ServiceState:
        entry = self._entry(service_id)
        self._halt(entry, "stopped", timeout=0.0 if force else None)
        with self._lock:
            entry.restarts += 1
            self._launch(entry)
            return self.state_of(entry)

    def probe(self, service_id: str) -> ServiceProbe:
        """The service's process tree now: its worst state and the CPU time it has used."""
        entry = self._entry(service_id)
        pid = (
            entry.handle.pid if entry.handle is not None and entry.state in ("starting", "running") else None
        )
        return probe_tree(service_id, pid)

    def states(self) -> list[ServiceState]:
        with self._lock:
            return [self.state_of(entry) for entry in self._services.values()]

    def pids(self) -> list[int]:
        with self._lock:
            return [
                e.handle.pid
                for e in self._services.values()
                if e.handle and e.handle.pid and e.state == "running"
            ]

    def running_count(self) -> int:
        with self._lock:
            return sum(entry.state in ("starting", "running") for entry in self._services.values())

    def state_of(self, entry: Managed) -> ServiceState:
        return ServiceState(
            service_id=entry.spec.service_id,
            node_id=self.node_id,
            state=entry.state,
            runtime=entry.runtime or self.runtime.name,
            pid=entry.handle.pid if entry.handle else None,
            container_id=entry.handle.container_id if entry.handle else None,
            started_at=entry.started_at,
            exit_code=entry.exit_code,
            restarts=entry.restarts,
            ports=entry.ports,
        )

    def _entry(self, service_id: str) -> Managed:
        with self._lock:
            entry = self._services.get(service_id)
        if entry is None:
            raise NotFound(f"service {service_id!r} does not run on node {self.node_id}")
        return entry

    # running ------------------------------------------------------------------------------
    def environment(self, entry: Managed) -> dict[str, str]:
        """What the service runs with: a platform service inherits the agent's environment (minus its
        ``AIOT_AGENT__*``); a model or app nothing of it (``_launch`` narrows this to
        ``sandbox_environment``)."""
        settings = self.settings
        inherited = entry.spec.kind not in SANDBOXED_KINDS
        env = {
            key: value
            for key, value in (os.environ.items() if inherited else ())
            if not key.startswith("AIOT_AGENT__")
        }
        env.update(
            {
                "AIOT_HOME": str(settings.home_dir),
                "AIOT_SERVICE_ID": entry.spec.service_id,
                "AIOT_KAFKA__BOOTSTRAP_SERVERS": self.bus.bootstrap_servers,
                "AIOT_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
                "AIOT_NODE_ID": self.node_id,
                "AIOT_SERVICE_HOST": self.agent.host,
                "PYTHONUNBUFFERED": "1",
                **PROCESS_ENVIRONMENT,
            }
        )
        env.update({f"AIOT_PORT_{name.upper()}": str(port) for name, port in entry.ports.items()})
        env.update(entry.spec.env)
        env.update(self.bus_environment(entry))
        return env

    def bus_environment(self, entry: Managed) -> dict[str, str]:
        """How the service authenticates to the bus: only AIOT_KAFKA__* variables.

        A platform service finds its own principal in the home's secrets file (by its service id),
        so it is told where that file is when the agent's settings name one. A model replica or
        an app instance never reads that file: its credential is the one its spec carries (the
        node manager made its principal, ``<prefix>.inst.<service id>``, at its placement:
        AIOT_KAFKA__SASL_USERNAME, AIOT_KAFKA__SASL_PASSWORD, AIOT_KAFKA__SECURITY_PROTOCOL,
        AIOT_KAFKA__SASL_MECHANISM, with AIOT_KAFKA__OWN_TOPICS), and nothing else: without one
        (a bus without SASL) it speaks PLAINTEXT, never as anyone else.
        """
        if entry.spec.kind in UPLOADED_KINDS:
            given = {key: value for key, value in entry.spec.env.items() if key in INSTANCE_BUS_KEYS}
            if "AIOT_KAFKA__SASL_USERNAME" not in given:
                return {"AIOT_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT"}
            return given
        secrets_file = self.settings.kafka.secrets_file
        return {"AIOT_KAFKA__SECRETS_FILE": str(secrets_file)} if secrets_file is not None else {}

    def _launch(self, entry: Managed) -> None:
        service_id = entry.spec.service_id

        def ship(line: str) -> None:
            entry.output.append(line)
            self._ship_output(service_id, line)

        entry.state, entry.exit_code, entry.restart_at = "starting", None, None
        runtime = self.runtimes.get(entry.spec.runtime or self.runtime.name)
        if runtime is None:
            entry.state = "failed"
            raise BadRequest(f"node {self.node_id} has no {entry.spec.runtime} runtime for {service_id!r}")
        entry.runtime = runtime.name
        try:
            workdir = self._bundle_dir(entry.spec)
            env = self.environment(entry)
            sandbox = self._sandbox(entry.spec, workdir)
            if sandbox is not None:
                workdir = sandbox.bundle
                env = sandbox_environment(
                    env, entry.spec, self.settings, broker_kind=self.bus.broker_kind, scratch=sandbox.scratch
                )
            if workdir is not None:
                env["AIOT_BUNDLE_DIR"] = str(workdir)
            entry.handle = runtime.start(entry.spec, env, ship, workdir, sandbox)
        except PlatformError:
            entry.state = "failed"
            self._release_bundle(service_id)
            raise
        entry.state = "running"
        entry.started_at = datetime.now(UTC)
        entry.started_mono = time.monotonic()
        log.info(
            "started %s on %s (%s %s)",
            service_id,
            self.node_id,
            runtime.name,
            entry.handle.pid or entry.handle.container_id,
        )

    def _bundle_dir(self, spec: ServiceSpec) -> Path | None:
        if spec.bundle is None:
            return None
        if self.bundles is None:
            raise BadRequest(
                f"node {self.node_id} cannot fetch bundles (no blob store) for {spec.service_id!r}"
            )
        return self.bundles.path(spec.bundle, spec.service_id)

    def _sandbox(self, spec: ServiceSpec, bundle: Path | None) -> Sandbox | None:
        """The sandbox of a model or app (None for the platform's own services)."""
        if spec.kind not in SANDBOXED_KINDS:
            return None
        if self.sandboxes is None:
            raise BadRequest(f"node {self.node_id} runs no models or apps ({spec.service_id!r})")
        return self.sandboxes.prepare(spec, bundle)

    def _release_bundle(self, service_id: str) -> None:
        if self.sandboxes is not None:
            self.sandboxes.release(service_id)
        if self.bundles is not None:
            self.bundles.release(service_id)

    def _halt(self, entry: Managed, state: RunState, timeout: float | None = None) -> None:
        with self._lock:
            entry.state = "stopping"  # an exit from here on is ours, not a crash to report
        handle = entry.handle
        if handle is not None and handle.exit_code() is None:
            handle.stop(self.agent.stop_timeout_s if timeout is None else timeout)
        entry.state = state
        entry.exit_code = handle.exit_code() if handle else None

    def _ship_output(self, service_id: str, line: str) -> None:
        if self._producer is None or not line.strip():
            return
        record = LogRecord(
            service_id=service_id,
            time=datetime.now(UTC),
            level="INFO",
            logger="stdout",
            message=line,
            host=self._host,
        )
        # Output is best effort: the agent never waits for, or fails on, shipping it.
        with contextlib.suppress(PlatformError):
            self._producer.send(self.bus.topics.logs, record, key=service_id)

    # watching -----------------------------------------------------------------------------
    def _watch(self) -> None:
        next_announcement = 0.0
        while not self._stop.wait(self.agent.supervise_interval_s):
            now = time.monotonic()
            with self._lock:
                entries = list(self._services.values())
            for entry in entries:
                self._check(entry, now)
            if now >= next_announcement:
                self._announce()
                next_announcement = now + self.agent.announce_interval_s
            if self._producer is not None:
                self._producer.poll(0)

    def _check(self, entry: Managed, now: float) -> None:
        with self._lock:
            if entry.state == "running" and entry.handle is not None:
                code = entry.handle.exit_code()
                if code is None:
                    if now - entry.started_mono > self.agent.stable_after_s:
                        entry.quick_exits = 0
                    return
                self._on_exit(entry, code, now)
            elif entry.state == "exited" and entry.restart_at is not None and now >= entry.restart_at:
                entry.restarts += 1
                try:
                    self._launch(entry)
                except PlatformError as exc:
                    log.error("restarting %s failed: %s", entry.spec.service_id, exc)

    def _on_exit(self, entry: Managed, code: int, now: float) -> None:
        uptime = now - entry.started_mono
        entry.state, entry.exit_code = "exited", code
        local = entry.spec.restart == "agent"
        if local:
            entry.quick_exits = entry.quick_exits + 1 if uptime < self.agent.stable_after_s else 0
            steps = self.agent.restart_backoff_s
            delay = steps[min(entry.quick_exits, len(steps) - 1)]
            entry.restart_at = now + delay
        log.warning(
            "%s exited with %s after %.1fs on %s%s",
            entry.spec.service_id,
            code,
            uptime,
            self.node_id,
            "; restarting it here" if local else "",
        )
        self._publish(
            ServiceExited(
                node_id=self.node_id,
                service_id=entry.spec.service_id,
                exit_code=code,
                uptime_s=round(uptime, 3),
                last_output=list(entry.output),
                will_restart_here=local,
            )
        )

    def _announce(self) -> None:
        self._publish(
            NodeAnnouncement(
                node_id=self.node_id,
                host=self.agent.host,
                http_url=self.http_url(),
                capacity=self.agent.capacity,
                runtime=self.runtime.name,
                main=self.agent.main,
                services=self.states(),
                load=None if self.measure_load is None else self.measure_load(),
            )
        )

    def _publish(self, message: ServiceExited | NodeAnnouncement) -> None:
        if self._producer is None:
            return
        try:
            self._producer.send(node_events_topic(self.bus.topics), message, key=self.node_id)
        except PlatformError as exc:
            log.warning("cannot publish %s: %s", message.message_type, exc)


def probe_tree(service_id: str, pid: int | None) -> ServiceProbe:
    """``pid`` and its descendants (a container's init and the service under it): worst state, CPU time.

    A tree whose root has exited, or that has no process but zombies, is gone or zombie; one
    process stopped (SIGSTOP) makes the tree stopped, as a stopped service under a running
    init (docker) cannot beat either.
    """
    if pid is None:
        return ServiceProbe(service_id=service_id, state="gone", cpu_s=0.0)
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return ServiceProbe(service_id=service_id, state="gone", cpu_s=0.0)
    states: list[ProcessState] = []
    cpu_s = 0.0
    for process in tree:
        try:
            states.append(_PSUTIL_STATES.get(process.status(), "sleeping"))
            times = process.cpu_times()
            cpu_s += times.user + times.system
        except psutil.Error:
            continue  # gone between the listing and the look: its parent's state still counts
    if not states:
        return ServiceProbe(service_id=service_id, state="gone", cpu_s=0.0)
    worst = min(states, key=_STATE_ORDER.index)
    if worst == "zombie" and any(state != "zombie" for state in states):
        worst = min((state for state in states if state != "zombie"), key=_STATE_ORDER.index)
    return ServiceProbe(service_id=service_id, state=worst, cpu_s=round(cpu_s, 3), processes=len(states))
