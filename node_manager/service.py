"""The node manager: node registry and loads, least-loaded placement, the roster, re-placement, scale-out.

    <prefix>.events.nodes ──▶ NodeAnnouncement (every agent.announce_interval_s): register/refresh
                               the node, its load (placement decides on it) and its services' states
                           ──▶ ServiceExited: record the exit (the heartbeat monitor decides on restarts)
    <prefix>.commands.node-manager (request/reply)
        PlaceService ──▶ (a thread of the placement pool; the loop reads on) choose_node
            ──▶ StartService to that node's agent ──▶ record ──▶ Placement
            no node with room ──▶ listed as waiting (NodesReport.waiting, a "waiting" incident),
            the provider asked for a node at once ──▶ placed as soon as one has room, or
            Unavailable after room_wait_s
        LocateService ──▶ Placement;  UnplaceService ──▶ StopService ──▶ forget
        ListNodes ──▶ NodesReport: every node, its load and the services placed on it
    control thread, every check_interval_s:
        nodes not announced for suspect_after_s / down_after_s become suspect, then down (counted
            on the bus's clock: while no node at all is heard, the bus stalled and none goes down;
            and only once its agent does not answer over HTTP either: a node heard late is alive)
        a node going down ──▶ the provider retires it ──▶ its services are placed on the others,
            platform services first, then models, apps, simulators; each kind concurrently with
            a short start timeout ──▶ ServiceIncident "replaced" on <prefix>.events.incidents
            (a new address for its followers: the deployer, which mails an app's user)
            no room for some ──▶ tried again every round, and the provider adds a node at once
        the roster ──▶ every roster service without a placement is placed
        placements a node's announcement lacks (the node restarted) ──▶ "missing" ──▶ placed again
        every node busier than scale_out_load for scale_out_after_s ──▶ ask the provider for a node
        every node idler than scale_in_load for scale_in_after_s (none added or removed within
            scale_cooldown_s) ──▶ one node the provider added is drained: "draining" (no new
            placements), its services placed on the others (each started there before it is
            stopped here, "replaced" incidents as for a lost node) ──▶ the provider removes it

Placements run concurrently (``place``): the node is chosen under a lock that counts the
starts in flight, the start runs outside it, and a service whose start is in flight is not
started a second time (the monitor and this loop may both move it).

Placements live in the registry database, so a restarted node manager knows
what runs where; agents' announcements keep the recorded states fresh.

A model replica or app instance on a bus with principals (`aiot up`'s Kafka) gets its own at
each placement (``BusAccess.add_instance``: its topics, ``<prefix>.inst.<service id>`` with a new
password, ACLs for its own topics and the device topics of its spec's ``bus`` grants); the
credential travels in the ``StartService`` to its agent only (the recorded spec and the
``Placement`` answers carry none). Unplacing it removes principal, ACLs and topics.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import requests

from node_manager import registry
from node_manager.models import NodeRow, PlacementRow
from node_manager.placement import NodeLoad, choose_node
from platform_core.bus_access import BusAccess
from platform_core.db import Database, utcnow
from platform_core.nodes import (
    ListNodes,
    LocateService,
    NodeAnnouncement,
    NodesReport,
    Placement,
    PlaceService,
    ServiceExited,
    ServiceIncident,
    ServiceKind,
    ServiceSpec,
    ServiceStateReply,
    StartService,
    StopService,
    UnplaceService,
    WaitingPlacement,
    agent_topic,
    node_events_topic,
    node_manager_topic,
    node_number,
    publish_incident,
)
from platform_core.roster import load_roster
from platform_core.service import PeriodicTask, Service
from platform_sdk.bus import ConsumerLoop, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.errors import NotFound, PlatformError, Timeout, Unavailable
from platform_sdk.principals import UPLOADED_KINDS, read_bus_secrets
from platform_sdk.settings import get_settings

log = logging.getLogger(__name__)
ScaleOut = Callable[[], str | None]
RemoveNode = Callable[[str], None]  # scale-in: the provider stops a drained node's agent and forgets it
AddedNodes = Callable[[], Collection[str]]  # the nodes the provider added (scale-out): removable ones
REMOVED_REMEMBERED = 64  # removed nodes whose late announcements are ignored
# The order in which a lost node's services are moved: what everyone needs first.
MOVE_ORDER: tuple[ServiceKind, ...] = ("platform", "model", "app", "simulator")
RetireNode = Callable[[str], None]


class NodeManagerService(Service):
    """Places services on the least-loaded node and keeps the roster running."""

    name = "node-manager"

    def __init__(
        self,
        *args: object,
        scale_out: ScaleOut | None = None,
        retire_node: RetireNode | None = None,
        remove_node: RemoveNode | None = None,
        added_nodes: AddedNodes | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._scale_out = scale_out
        self._retire_node = retire_node
        self._remove_node = remove_node
        self._added_nodes = added_nodes
        self._idle_since: float | None = None
        self._last_scaled = float("-inf")  # when a node was last added or removed (monotonic)
        self._removed: collections.deque[str] = collections.deque(maxlen=REMOVED_REMEMBERED)
        # Guards the choice of nodes: starts in flight per node, and placements in flight per service.
        self._place_lock = threading.Lock()
        self._stranded: set[str] = set()  # services of lost nodes for which no node had room
        self._starting: collections.Counter[str] = collections.Counter()
        self._in_flight: dict[str, Future[Placement]] = {}
        self._room = threading.Condition(self._place_lock)  # notified when a node is heard
        self._waiting: dict[str, WaitingPlacement] = {}  # placements no node has room for yet
        self._placer: ThreadPoolExecutor | None = None
        self._closing = False  # set at stop: waiting placements give up at once
        self._busy_since: float | None = None
        self._pending_node: str | None = None
        self._pending_since = 0.0
        self._declined_at = float("-inf")  # when the provider last added no node (monotonic)
        # The bus's clock: when any node's announcement last arrived. While nobody is heard (the
        # broker paused or restarting), nobody's silence counts: no node is declared down.
        self._last_announcement = time.monotonic()
        self._bus_quiet = False
        self._answering: set[str] = set()  # silent nodes whose agents still answer (logged once)
        self._next_sweep = time.monotonic() + self.settings.node_manager.instance_sweep_s
        self.bus_access: BusAccess | None = None  # made at start where the bus has principals

    def on_start(self) -> None:
        bus = self.sdk.bus
        self.database = Database.from_settings(self.settings)
        self.own(self.database)
        self.database.ensure_schema()
        with self.database.session() as session:
            registry.restart_silence_clocks(session)
        self.roster = load_roster(self.settings)
        bus.ensure_topics([bus.topics.incidents])
        found = read_bus_secrets(self.settings)
        managed = (
            bus.credential is not None and found is not None and found.bootstrap == bus.bootstrap_servers
        )
        # Principals per instance where the bus has them (`aiot up`'s Kafka); none on Tansu.
        self.bus_access = BusAccess(bus) if managed else None
        self.producer = bus.producer()
        self.requester = Requester(bus)
        self.requester.start()
        self.own(self.requester)
        events = ConsumerLoop(
            bus, [node_events_topic(bus.topics)], group=None, name="nm-events", offset_reset="latest"
        )
        events.add_handler(NodeAnnouncement, self.on_announcement)
        events.add_handler(ServiceExited, self.on_exit)
        events.start()
        self.own(events)
        self._placer = ThreadPoolExecutor(
            self.settings.node_manager.place_workers, thread_name_prefix="nm-place"
        )
        self.own(_PoolStopper(self._placer, self._end_waits))
        commands = ConsumerLoop(
            bus, [node_manager_topic(bus.topics)], group=None, name="nm-commands", offset_reset="latest"
        )
        commands.add_handler(PlaceService, self.on_place)
        commands.add_handler(LocateService, self.on_locate)
        commands.add_handler(UnplaceService, self.on_unplace)
        commands.add_handler(ListNodes, self.on_list_nodes)
        commands.start()
        self.own(commands)
        self._started = time.monotonic()
        control = PeriodicTask("node-manager", self.settings.node_manager.check_interval_s, self._control)
        control.start()
        self.own(control)

    # events ---------------------------------------------------------------------------------
    def on_announcement(self, announcement: NodeAnnouncement, _envelope: Envelope) -> None:
        now = time.monotonic()
        gap, self._last_announcement = now - self._last_announcement, now
        if announcement.node_id in self._removed:
            return  # sent before its removal: it must not come back as a node
        with self.database.session() as session:
            if gap > self.settings.node_manager.suspect_after_s:
                # Nobody was heard meanwhile: the bus stalled, not every node. Their silences
                # start again from now (their own announcements follow within an interval).
                log.warning("announcements arrive again after %.1fs without any: the bus stalled", gap)
                registry.restart_silence_clocks(session)
            known = session.get(NodeRow, announcement.node_id)
            if known is None or known.state != "up":
                log.info("node %s is up at %s", announcement.node_id, announcement.http_url)
            registry.upsert_node(session, announcement)
            placements = {
                row.service_id: row for row in registry.list_placements(session, announcement.node_id)
            }
            for state in announcement.services:
                placement = placements.get(state.service_id)
                if placement is not None:
                    registry.apply_state(placement, state)
            running_here = {state.service_id for state in announcement.services}
            # A start in flight is not announced yet: only placements older than two announcements count.
            settled = utcnow() - timedelta(seconds=2 * self.settings.agent.announce_interval_s + 1)
            for placement in placements.values():
                if placement.service_id not in running_here and placement.placed_at < settled:
                    if placement.state != "missing":
                        log.warning(
                            "%s is placed on %s but does not run there; placing it again",
                            placement.service_id,
                            announcement.node_id,
                        )
                    placement.state = "missing"
        with self._room:
            self._room.notify_all()  # a placement waiting for room looks again

    def on_exit(self, exited: ServiceExited, _envelope: Envelope) -> None:
        with self.database.session() as session:
            placement = session.get(PlacementRow, exited.service_id)
            if placement is not None and placement.node_id == exited.node_id:
                placement.state = "exited"

    # commands -------------------------------------------------------------------------------
    def on_place(self, command: PlaceService, _envelope: Envelope) -> Future[Placement]:
        """Answered from the placement pool: a start (or a wait for room) holds no other command up."""
        assert self._placer is not None
        return self._placer.submit(
            self.place, command.spec, command.avoid, wait_for_room=command.wait_for_room
        )

    def on_locate(self, command: LocateService, _envelope: Envelope) -> Placement:
        with self.database.session() as session:
            row = registry.read_placement(session, command.service_id)
            return _placement(row, session.get(NodeRow, row.node_id))

    def on_list_nodes(self, _command: ListNodes, _envelope: Envelope) -> NodesReport:
        with self.database.session() as session:
            nodes = registry.nodes_report(session)
        with self._place_lock:
            waiting = sorted(self._waiting.values(), key=lambda placement: placement.since)
        return NodesReport(nodes=nodes, waiting=waiting)

    def on_unplace(self, command: UnplaceService, _envelope: Envelope) -> Placement:
        with self.database.session() as session:
            row = registry.read_placement(session, command.service_id)
            placement = _placement(row, session.get(NodeRow, row.node_id))
        try:
            self.requester.request(
                agent_topic(self.sdk.bus.topics, placement.node_id),
                StopService(service_id=command.service_id),
                ServiceStateReply,
                timeout=self.settings.node_manager.stop_wait_s,
            )
        except (NotFound, Timeout) as exc:
            log.warning("stopping %s on %s: %s", command.service_id, placement.node_id, exc)
        with self.database.session() as session:
            leftover = session.get(PlacementRow, command.service_id)
            if leftover is not None:
                session.delete(leftover)
        self._remove_instance(placement.spec)
        return placement

    def place(
        self,
        spec: ServiceSpec,
        avoid: list[str] | None = None,
        *,
        timeout: float | None = None,
        wait_for_room: bool = False,
    ) -> Placement:
        """Start ``spec`` on the least-loaded node; a service already running where allowed stays put.

        Placements run concurrently: the choice of a node is made under a lock (with the starts
        still in flight counted on their nodes), the start itself outside it. A second placement
        of a service whose start is in flight waits for that start instead of starting it twice.
        ``timeout`` bounds each agent's answer (default ``node_manager.start_timeout_s``).
        ``wait_for_room`` (a placement request): when no node has room and the provider can add
        one, wait for it up to ``node_manager.room_wait_s``, listed as waiting, instead of failing.
        """
        excluded = set(avoid or [])
        wait = timeout if timeout is not None else self.settings.node_manager.start_timeout_s
        while True:
            with self._place_lock:
                running = self._already_placed(spec.service_id, excluded)
                if running is not None:
                    return running
                ahead = self._in_flight.get(spec.service_id)
                if ahead is None:
                    mine: Future[Placement] = Future()
                    self._in_flight[spec.service_id] = mine
                    break
            with contextlib.suppress(PlatformError):
                placed = ahead.result()
                if placed.node_id not in excluded:
                    return placed
        try:
            placed = self._start_somewhere(spec, excluded, wait, wait_for_room=wait_for_room)
        except BaseException as exc:
            mine.set_exception(exc)
            with self.database.session() as session:
                placed_before = session.get(PlacementRow, spec.service_id) is not None
            if not placed_before:
                self._remove_instance(spec)
            raise
        else:
            mine.set_result(placed)
            return placed
        finally:
            with self._place_lock:
                del self._in_flight[spec.service_id]

    def _already_placed(self, service_id: str, excluded: set[str]) -> Placement | None:
        with self.database.session() as session:
            existing = session.get(PlacementRow, service_id)
            if existing is None or existing.node_id in excluded:
                return None
            node = session.get(NodeRow, existing.node_id)
            if node is not None and node.state == "up" and existing.state in ("starting", "running"):
                return _placement(existing, node)
        return None

    def _with_credential(self, spec: ServiceSpec) -> ServiceSpec:
        """What the agent is sent: a model replica or app instance, on a bus with principals, with its
        own topics, principal (a new password) and ACLs made, and its credential in its env."""
        credential = self.sdk.bus.credential
        if spec.kind not in UPLOADED_KINDS or self.bus_access is None or credential is None:
            return spec
        own = self.bus_access.add_instance(spec.service_id, spec.bus, credential)
        return spec.model_copy(
            update={"env": {**spec.env, **own.environment(), "AIOT_KAFKA__OWN_TOPICS": "true"}}
        )

    def _remove_instance(self, spec: ServiceSpec) -> None:
        """A model replica's or app instance's principal, ACLs and topics, gone (when it has some)."""
        if spec.kind not in UPLOADED_KINDS or self.bus_access is None:
            return
        try:
            self.bus_access.remove_instance(spec.service_id)
        except PlatformError as exc:
            log.warning("cannot remove the bus principal of %s: %s", spec.service_id, exc)

    def _start_somewhere(
        self, spec: ServiceSpec, excluded: set[str], timeout: float, *, wait_for_room: bool = False
    ) -> Placement:
        """Start ``spec`` on the least-loaded node not in ``excluded``; its credential (if it gets
        one) goes to the agent only: ``spec`` as given is what is recorded and answered."""
        sent = self._with_credential(spec)
        try:
            return self._start_on_chosen(spec, sent, excluded, timeout, wait_for_room)
        finally:
            with self._place_lock:
                self._waiting.pop(spec.service_id, None)

    def _cannot_wait(self, loads: list[NodeLoad]) -> str | None:
        """(Holding ``_place_lock``) why a placement cannot wait for a node with room, or None: it can."""
        settings = self.settings.node_manager
        if self._scale_out is None or settings.room_wait_s <= 0:
            return "the platform's provider adds no nodes"
        if sum(load.state != "down" for load in loads) >= settings.max_nodes:
            return f"the platform has node_manager.max_nodes ({settings.max_nodes}) nodes already"
        return None

    def _start_on_chosen(
        self,
        spec: ServiceSpec,
        sent: ServiceSpec,
        excluded: set[str],
        timeout: float,
        wait_for_room: bool,
    ) -> Placement:
        room_deadline: float | None = None
        while True:
            with self._place_lock:
                with self.database.session() as session:
                    loads = [
                        replace(load, services=load.services + self._starting[load.node_id])
                        for load in registry.node_loads(session)
                    ]
                chosen = choose_node(loads, avoid=excluded, main_only=spec.main_node_only)
                if chosen is None:
                    full = (
                        f"no node can take {spec.service_id!r}: every node is down, full or excluded "
                        f"({', '.join(sorted(excluded)) or 'none excluded'})"
                    )
                    if not wait_for_room or choose_node(loads, main_only=spec.main_node_only):
                        # A node it avoids has room: the asker may take that one (replicas share a node).
                        raise Unavailable(full)
                    why_not = self._cannot_wait(loads)
                    if why_not is not None:
                        raise Unavailable(f"{full}; {why_not}")
                    now = time.monotonic()
                    if room_deadline is None:
                        room_deadline = now + self.settings.node_manager.room_wait_s
                        self._start_waiting(spec, loads)
                    if self._closing:
                        raise Unavailable(f"{full}; the node manager is stopping: ask again")
                    if now >= room_deadline:
                        raise Unavailable(
                            f"{full}, and no node with room joined within "
                            f"{self.settings.node_manager.room_wait_s:g}s (node_manager.room_wait_s): "
                            "see `aiot nodes` and the node manager's log for the provider's answer"
                        )
                    self._room.wait(min(room_deadline - now, self.settings.agent.announce_interval_s))
                    continue
                self._starting[chosen.node_id] += 1
            try:
                reply = self.requester.request(
                    agent_topic(self.sdk.bus.topics, chosen.node_id),
                    StartService(spec=sent),
                    ServiceStateReply,
                    timeout=timeout,
                )
            except Timeout:
                log.warning(
                    "node %s did not answer a start of %s within %gs; trying another",
                    chosen.node_id,
                    spec.service_id,
                    timeout,
                )
                excluded.add(chosen.node_id)
                with self._place_lock, self.database.session() as session:
                    self._start_ended(chosen.node_id)
                    registry.set_node_state(session, chosen.node_id, "suspect")
                continue
            except BaseException:
                with self._place_lock:
                    self._start_ended(chosen.node_id)
                raise
            with self._place_lock, self.database.session() as session:
                self._start_ended(chosen.node_id)
                registry.save_placement(session, spec, reply.state)
                node = session.get(NodeRow, chosen.node_id)
                host = node.host if node is not None else ""
                if node is not None:
                    node.services += (
                        1  # counted now, so the next placement sees it before the next announcement
                    )
            log.info(
                "placed %s on %s (score %.2f; scores: %s)",
                spec.service_id,
                chosen.node_id,
                chosen.score,
                ", ".join(f"{load.node_id} {load.score:.2f}" for load in loads),
            )
            return Placement(
                service_id=spec.service_id,
                node_id=chosen.node_id,
                host=host,
                spec=spec,
                state=reply.state,
            )

    def _end_waits(self) -> None:
        """At stop: every placement waiting for room gives up now (its asker is told to ask again)."""
        with self._room:
            self._closing = True
            self._room.notify_all()

    def _start_waiting(self, spec: ServiceSpec, loads: list[NodeLoad]) -> None:
        """(Holding ``_place_lock``) ``spec`` waits for room: listed, told as an incident, and the
        provider is asked for a node at the control loop's next round."""
        scores = ", ".join(f"{load.node_id} {load.state} {load.services}/{load.capacity}" for load in loads)
        reason = f"no node has room ({scores or 'no nodes'}): waiting for the node the provider was asked for"
        self._waiting[spec.service_id] = WaitingPlacement(
            service_id=spec.service_id, kind=spec.kind, since=datetime.now(UTC), reason=reason
        )
        log.warning("%s: %s", spec.service_id, reason)
        publish_incident(
            self.producer,
            ServiceIncident(service_id=spec.service_id, node_id=None, kind="waiting", detail=reason),
        )

    # control loop ---------------------------------------------------------------------------
    def _control(self) -> None:
        self._check_silence()
        self._rehome()
        self._reconcile_roster()
        self._restore_missing()
        self._consider_scale_out()
        self._consider_scale_in()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.settings.node_manager.instance_sweep_s
            self.sweep_instances()

    def sweep_instances(self) -> list[str]:
        """Remove the principals and topics of instances that are neither placed nor being placed
        (a node manager stopped between two steps; a late reply's topic auto-created again): the
        broker's principals and topics stay bounded by what runs. Returns the ids swept."""
        if self.bus_access is None:
            return []
        try:
            found = self.bus_access.instances()
        except PlatformError as exc:
            log.warning("cannot list the instances' principals and topics: %s", exc)
            return []
        with self._place_lock:
            placing = set(self._in_flight)
        with self.database.session() as session:
            placed = {row.service_id for row in registry.list_placements(session)}
        orphans = sorted(found - placed - placing)
        for service_id in orphans:
            log.info("removing the principal and topics of %s: it is no longer placed", service_id)
            try:
                self.bus_access.remove_instance(service_id)
            except PlatformError as exc:
                log.warning("cannot remove the bus principal of %s: %s", service_id, exc)
        return orphans

    def _restore_missing(self) -> None:
        """Start again what a node lost without an exit to report (it restarted): models, apps, the roster."""
        with self.database.session() as session:
            specs = [
                ServiceSpec.model_validate_json(row.spec)
                for row in registry.list_placements(session)
                if row.state == "missing"
            ]
        for spec in specs:
            try:
                placement = self.place(spec)
            except PlatformError as exc:
                log.error("cannot place missing %s again: %s", spec.service_id, exc)
                continue
            self._report_moved(placement, "placed again: its node no longer ran it")

    def _start_ended(self, node_id: str) -> None:
        """One start on ``node_id`` is no longer in flight (hold ``_place_lock``); none left: forgotten."""
        self._starting[node_id] -= 1
        if self._starting[node_id] <= 0:
            del self._starting[node_id]

    def _check_silence(self) -> None:
        """Nodes whose agent has not announced itself lately become suspect, then down (and retired).

        Silence is counted on the bus's clock: while no node at all is heard, the bus is what
        stalled (a paused or restarting broker), and no node is declared down for it.
        """
        settings = self.settings.node_manager
        quiet = time.monotonic() - self._last_announcement
        if quiet > settings.suspect_after_s:
            if not self._bus_quiet:
                log.warning("no node announced itself for %.1fs: has the bus stalled? none goes down", quiet)
            self._bus_quiet = True
            return
        self._bus_quiet = False
        with self.database.session() as session:
            nodes = [(n.node_id, n.state, n.last_seen) for n in registry.list_nodes(session)]
        now = datetime.now(UTC)
        for node_id, state, last_seen in nodes:
            if state == "down":
                continue
            silent = (now - last_seen).total_seconds()
            new_state = (
                "down"
                if silent > settings.down_after_s
                else "suspect"
                if silent > settings.suspect_after_s
                else state
            )
            if new_state == "down" and self._agent_answers(node_id):
                # Its agent is alive: only its announcements are late (a partition of the events
                # topic not led yet, its producer recovering after a broker stall). Moving its
                # services now would run each twice; it stays suspect until it is heard or is gone.
                if node_id not in self._answering:
                    log.warning(
                        "node %s silent for %.1fs on the bus, but its agent answers: kept suspect",
                        node_id,
                        silent,
                    )
                self._answering.add(node_id)
                new_state = "suspect"
            else:
                self._answering.discard(node_id)
            if new_state == state:
                continue
            log.warning("node %s is %s (silent for %.1fs)", node_id, new_state, silent)
            with self.database.session() as session:
                registry.set_node_state(session, node_id, new_state)
            if new_state == "down" and self._retire_node is not None:
                self._retire_node(node_id)  # its services are moved by _rehome, next

    def _agent_answers(self, node_id: str) -> bool:
        """Whether the agent of ``node_id`` answers its HTTP ``/services`` within the probe timeout."""
        with self.database.session() as session:
            node = session.get(NodeRow, node_id)
            url = node.http_url if node is not None else ""
        if not url:
            return False
        try:
            return requests.get(f"{url}/services", timeout=self.settings.node_manager.down_probe_timeout_s).ok
        except requests.RequestException:
            return False

    def _rehome(self) -> None:
        """Everything placed on a down node is placed on the others, a kind at a time, concurrently.

        Platform services first, then model replicas, apps and simulators, so the services
        everyone needs get the room there is; each kind's moves run ``move_parallelism`` at a
        time with ``move_timeout_s`` per start. What finds no room stays on the list (tried
        again each round) and makes the provider add a node.
        """
        with self.database.session() as session:
            down = {node.node_id for node in registry.list_nodes(session) if node.state == "down"}
            lost = [
                (row.node_id, ServiceSpec.model_validate_json(row.spec))
                for row in registry.list_placements(session)
                if row.node_id in down
            ]
        stranded = self._move_in_order(lost, sorted(down), "lost node")
        self._stranded = stranded

    def _move_in_order(self, moves: list[tuple[str, ServiceSpec]], avoid: list[str], what: str) -> set[str]:
        """Place each ``(node_id, spec)`` on a node outside ``avoid``, a kind at a time (``MOVE_ORDER``),
        ``move_parallelism`` at a time; each move is reported as a "replaced" incident. Returns the
        ids of the services no node took."""
        settings = self.settings.node_manager
        unmoved: set[str] = set()

        def move(node_id: str, spec: ServiceSpec) -> None:
            try:
                placement = self.place(spec, avoid=avoid, timeout=settings.move_timeout_s)
            except PlatformError as exc:
                unmoved.add(spec.service_id)
                if spec.service_id not in self._stranded:
                    log.error("cannot move %s off %s %s yet: %s", spec.service_id, what, node_id, exc)
                return
            log.warning("moved %s from %s %s to %s", spec.service_id, what, node_id, placement.node_id)
            self._report_moved(placement, f"moved off {what} {node_id}")

        for kind in MOVE_ORDER:
            batch = [(node_id, spec) for node_id, spec in moves if spec.kind == kind]
            if not batch:
                continue
            nodes = ", ".join(sorted({node_id for node_id, _ in batch}))
            log.warning("moving %d %s services off %s %s", len(batch), kind, what, nodes)
            with ThreadPoolExecutor(
                min(len(batch), settings.move_parallelism), thread_name_prefix="move"
            ) as pool:
                for future in [pool.submit(move, node_id, spec) for node_id, spec in batch]:
                    future.result()
        return unmoved

    def _report_moved(self, placement: Placement, why: str) -> None:
        """A service runs elsewhere now (a new address): told on events.incidents, as the monitor's moves."""
        publish_incident(
            self.producer,
            ServiceIncident(
                service_id=placement.service_id, node_id=placement.node_id, kind="replaced", detail=why
            ),
        )

    def _reconcile_roster(self) -> None:
        if time.monotonic() - self._started < self.settings.node_manager.settle_s:
            return
        with self.database.session() as session:
            placed = {row.service_id for row in registry.list_placements(session)}
            any_node_up = any(node.state == "up" for node in registry.list_nodes(session))
        if not any_node_up:
            return
        for spec in self.roster:
            if spec.service_id not in placed:
                self.place(spec)

    def _consider_scale_out(self) -> None:
        """One more node when every node stays busy, or at once when a lost node's services found no room."""
        settings = self.settings.node_manager
        with self.database.session() as session:
            known = {node.node_id: node.state for node in registry.list_nodes(session)}
            loads = [load for load in registry.node_loads(session) if load.state == "up"]
        if self._scale_out is None or not loads:
            return
        if self._pending_node is not None:
            waited = time.monotonic() - self._pending_since
            if known.get(self._pending_node) != "up" and waited < settings.scale_out_join_s:
                return  # one new node at a time: wait until the last one has joined
            if known.get(self._pending_node) == "up":  # the cooldown runs from when it joined
                self._last_scaled = time.monotonic()
            self._pending_node = None
        now = time.monotonic()
        serving = sum(state != "down" for state in known.values())
        scores = ", ".join(f"{load.node_id} {load.score:.2f}" for load in loads)
        with self._place_lock:
            waiting = sorted(self._waiting)
        if self._stranded:
            why = f"no room for {len(self._stranded)} services of a lost node ({scores})"
        elif waiting:
            why = f"no room for {len(waiting)} placements waiting ({', '.join(waiting[:5])}; {scores})"
        elif all(load.score > settings.scale_out_load for load in loads):
            self._busy_since = self._busy_since or now
            if now - self._busy_since < settings.scale_out_after_s:
                return
            busy_s = now - self._busy_since
            why = f"every node busier than {settings.scale_out_load:.2f} for {busy_s:.0f}s ({scores})"
        else:
            self._busy_since = None
            return
        if serving >= settings.max_nodes or now - self._declined_at < settings.scale_out_after_s:
            return  # a provider that added none is asked again scale_out_after_s later
        log.warning("%s: adding a node", why)
        self._pending_node = self._scale_out()
        self._pending_since = now
        self._busy_since = None
        if self._pending_node is None:
            self._declined_at = now
        else:
            self._last_scaled = now
        log.warning(
            "scale-out: %s",
            f"node {self._pending_node} started" if self._pending_node else "the provider added none",
        )

    def _consider_scale_in(self) -> None:
        """One node the provider added goes when every node has stayed idle long enough."""
        if self._remove_node is None or self._added_nodes is None:
            return
        settings = self.settings.node_manager
        with self.database.session() as session:
            loads = [load for load in registry.node_loads(session) if load.state == "up"]
        now = time.monotonic()
        busy = any(load.score >= settings.scale_in_load for load in loads)
        with self._place_lock:
            waiting = bool(self._waiting)
        if len(loads) < 2 or busy or self._pending_node is not None or self._stranded or waiting:
            self._idle_since = None
            return
        self._idle_since = self._idle_since or now
        idle_s = now - self._idle_since
        if idle_s < settings.scale_in_after_s or now - self._last_scaled < settings.scale_cooldown_s:
            return
        added = set(self._added_nodes())
        candidates = [load for load in loads if load.node_id in added and not load.main]
        if not candidates:
            return
        # The one running least (the newest among equals): the fewest moves.
        victim = min(candidates, key=lambda load: (load.services, load.score, -_index(load.node_id)))
        scores = ", ".join(f"{load.node_id} {load.score:.2f}" for load in loads)
        log.warning(
            "every node idler than %.2f for %.0fs (%s): removing %s",
            settings.scale_in_load,
            idle_s,
            scores,
            victim.node_id,
        )
        self._idle_since = None
        self._last_scaled = now
        self.drain_and_remove(victim.node_id)

    def drain_and_remove(self, node_id: str) -> bool:
        """Move everything off ``node_id`` and have the provider remove it (scale-in).

        The node is "draining" meanwhile (no new placements; its announcements keep it so). Each
        service is started on another node before it is stopped here. When some service finds no
        room the node stays (up again) and False is returned.
        """
        with self.database.session() as session:
            registry.set_node_state(session, node_id, "draining")
            moves = [
                (node_id, ServiceSpec.model_validate_json(row.spec))
                for row in registry.list_placements(session, node_id)
            ]
        unmoved = self._move_in_order(moves, [node_id], "removed node")
        for _, spec in moves:
            if spec.service_id not in unmoved:
                self._stop_on(node_id, spec.service_id)
        if unmoved:
            log.error(
                "scale-in of %s abandoned: no node took %s; it stays", node_id, ", ".join(sorted(unmoved))
            )
            with self.database.session() as session:
                registry.set_node_state(session, node_id, "up")
            return False
        self._removed.append(node_id)
        assert self._remove_node is not None
        try:
            self._remove_node(node_id)
        except Exception:  # the provider failed: the node is forgotten here either way, and said so
            log.exception("the provider could not remove node %s", node_id)
        with self.database.session() as session:
            registry.delete_node(session, node_id)
        log.warning("scale-in: node %s drained and removed", node_id)
        return True

    def _stop_on(self, node_id: str, service_id: str) -> None:
        """Stop ``service_id`` on ``node_id``'s agent (it runs elsewhere now); a failure is logged."""
        try:
            self.requester.request(
                agent_topic(self.sdk.bus.topics, node_id),
                StopService(service_id=service_id),
                ServiceStateReply,
                timeout=self.settings.node_manager.move_timeout_s,
            )
        except PlatformError as exc:
            log.warning("stopping %s on %s after its move: %s", service_id, node_id, exc)


def _index(node_id: str) -> int:
    """The number of ``node-N`` (0 for another name)."""
    return node_number(node_id) or 0


def _placement(row: PlacementRow, node: NodeRow | None) -> Placement:
    return Placement(
        service_id=row.service_id,
        node_id=row.node_id,
        host=node.host if node is not None else "",
        spec=ServiceSpec.model_validate_json(row.spec),
        state=registry.recorded_state(row),
    )


def main() -> None:
    """``python -m node_manager``: the node manager without a provider (it adds and retires no node).

    A provider that can add and retire nodes starts it with its own hooks instead: `aiot up`'s
    local one runs ``python -m bootstrapper.local_node_manager``.
    """
    NodeManagerService(get_settings()).run()


class _PoolStopper:
    """The placement pool as a part the service stops: queued placements are dropped (their askers
    time out and ask the next node manager), waiting ones give up (``end_waits``), starts in
    flight finish on their own."""

    def __init__(self, pool: ThreadPoolExecutor, end_waits: Callable[[], None]) -> None:
        self.pool = pool
        self.end_waits = end_waits

    def stop(self) -> None:
        self.end_waits()
        self.pool.shutdown(wait=False, cancel_futures=True)
