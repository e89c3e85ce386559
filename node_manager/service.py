"""The node manager: node registry, load polling, least-loaded placement, the roster, re-placement, scale-out.

    <prefix>.events.nodes ──▶ NodeAnnouncement: register/refresh the node and the states of its services
                           ──▶ ServiceExited: record the exit (the heartbeat monitor decides on restarts)
    <prefix>.commands.node-manager (request/reply)
        PlaceService ──▶ choose_node ──▶ StartService to that node's agent ──▶ record ──▶ Placement
        LocateService ──▶ Placement;  UnplaceService ──▶ StopService ──▶ forget
    control thread, every poll_interval_s:
        GET <agent>/load for every node ──▶ record; silent nodes become suspect, then down
        a node going down ──▶ its services are placed again on the others
            ──▶ ServiceIncident "replaced" on <prefix>.events.incidents (a new address for its followers)
        the roster ──▶ every roster service without a placement is placed
        placements a node's announcement lacks (the node restarted) ──▶ "missing" ──▶ placed again
        every node busier than scale_out_load for scale_out_after_s ──▶ ask the provider for a node

Placements live in the registry database, so a restarted node manager knows
what runs where; agents' announcements keep the recorded states fresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import requests

from node_manager import registry
from node_manager.models import NodeRow, PlacementRow
from node_manager.placement import choose_node
from node_manager.roster import load_roster
from platform_core.db import Database, utcnow
from platform_core.nodes import (
    LocateService,
    NodeAnnouncement,
    Placement,
    PlaceService,
    ServiceExited,
    ServiceIncident,
    ServiceSpec,
    ServiceStateReply,
    StartService,
    StopService,
    UnplaceService,
    agent_topic,
    node_events_topic,
    node_manager_topic,
    publish_incident,
)
from platform_core.service import PeriodicTask, Service
from platform_sdk.bus import ConsumerLoop, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.errors import NotFound, PlatformError, Timeout, Unavailable
from platform_sdk.settings import get_settings

log = logging.getLogger(__name__)
START_TIMEOUT_S = 120.0  # a first start may build a venv or an image
SCALE_OUT_JOIN_S = 60.0  # how long a node the provider started has to announce itself
ScaleOut = Callable[[], str | None]
RetireNode = Callable[[str], None]


class NodeManagerService(Service):
    """Places services on the least-loaded node and keeps the roster running."""

    name = "node-manager"

    def __init__(
        self,
        *args: object,
        scale_out: ScaleOut | None = None,
        retire_node: RetireNode | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._scale_out = scale_out
        self._retire_node = retire_node
        self._place_lock = threading.Lock()
        self._busy_since: float | None = None
        self._pending_node: str | None = None
        self._pending_since = 0.0

    def on_start(self) -> None:
        bus = self.sdk.bus
        self.database = Database.from_settings(self.settings)
        self.own(self.database)
        self.database.migrate()
        with self.database.session() as session:
            registry.restart_silence_clocks(session)
        self.roster = load_roster(self.settings)
        bus.ensure_topics([bus.topics.incidents])
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
        commands = ConsumerLoop(
            bus, [node_manager_topic(bus.topics)], group=None, name="nm-commands", offset_reset="latest"
        )
        commands.add_handler(PlaceService, self.on_place)
        commands.add_handler(LocateService, self.on_locate)
        commands.add_handler(UnplaceService, self.on_unplace)
        commands.start()
        self.own(commands)
        self._started = time.monotonic()
        control = PeriodicTask("node-manager", self.settings.node_manager.poll_interval_s, self._control)
        control.start()
        self.own(control)

    # events ---------------------------------------------------------------------------------
    def on_announcement(self, announcement: NodeAnnouncement, _envelope: Envelope) -> None:
        with self.database.session() as session:
            known = session.get(NodeRow, announcement.node_id)
            if known is None or known.state != "up":
                log.info("node %s is up at %s", announcement.node_id, announcement.http_url)
            registry.upsert_node(session, announcement)
            for state in announcement.services:
                placement = session.get(PlacementRow, state.service_id)
                if placement is not None and placement.node_id == announcement.node_id:
                    registry.apply_state(placement, state)
            running_here = {state.service_id for state in announcement.services}
            # A start in flight is not announced yet: only placements older than two announcements count.
            settled = utcnow() - timedelta(seconds=2 * self.settings.agent.announce_interval_s + 1)
            for placement in registry.list_placements(session, announcement.node_id):
                if placement.service_id not in running_here and placement.placed_at < settled:
                    if placement.state != "missing":
                        log.warning(
                            "%s is placed on %s but does not run there; placing it again",
                            placement.service_id,
                            announcement.node_id,
                        )
                    placement.state = "missing"

    def on_exit(self, exited: ServiceExited, _envelope: Envelope) -> None:
        with self.database.session() as session:
            placement = session.get(PlacementRow, exited.service_id)
            if placement is not None and placement.node_id == exited.node_id:
                placement.state = "exited"

    # commands -------------------------------------------------------------------------------
    def on_place(self, command: PlaceService, _envelope: Envelope) -> Placement:
        return self.place(command.spec, avoid=command.avoid)

    def on_locate(self, command: LocateService, _envelope: Envelope) -> Placement:
        with self.database.session() as session:
            row = registry.read_placement(session, command.service_id)
            return _placement(row, session.get(NodeRow, row.node_id))

    def on_unplace(self, command: UnplaceService, _envelope: Envelope) -> Placement:
        with self.database.session() as session:
            row = registry.read_placement(session, command.service_id)
            placement = _placement(row, session.get(NodeRow, row.node_id))
        try:
            self.requester.request(
                agent_topic(self.sdk.bus.topics, placement.node_id),
                StopService(service_id=command.service_id),
                ServiceStateReply,
                timeout=30,
            )
        except (NotFound, Timeout) as exc:
            log.warning("stopping %s on %s: %s", command.service_id, placement.node_id, exc)
        with self.database.session() as session:
            leftover = session.get(PlacementRow, command.service_id)
            if leftover is not None:
                session.delete(leftover)
        return placement

    def place(self, spec: ServiceSpec, avoid: list[str] | None = None) -> Placement:
        """Start ``spec`` on the least-loaded node; a service already running where allowed stays put."""
        excluded = set(avoid or [])
        with self._place_lock:
            with self.database.session() as session:
                existing = session.get(PlacementRow, spec.service_id)
                if existing is not None and existing.node_id not in excluded:
                    node = session.get(NodeRow, existing.node_id)
                    if node is not None and node.state == "up" and existing.state in ("starting", "running"):
                        return _placement(existing, node)
            while True:
                with self.database.session() as session:
                    loads = registry.node_loads(session)
                    chosen = choose_node(loads, avoid=excluded, main_only=spec.main_node_only)
                if chosen is None:
                    raise Unavailable(
                        f"no node can take {spec.service_id!r}: every node is down, full or excluded "
                        f"({', '.join(sorted(excluded)) or 'none excluded'})"
                    )
                try:
                    reply = self.requester.request(
                        agent_topic(self.sdk.bus.topics, chosen.node_id),
                        StartService(spec=spec),
                        ServiceStateReply,
                        timeout=START_TIMEOUT_S,
                    )
                except Timeout:
                    log.warning(
                        "node %s did not answer a start of %s; trying another",
                        chosen.node_id,
                        spec.service_id,
                    )
                    excluded.add(chosen.node_id)
                    with self.database.session() as session:
                        registry.set_node_state(session, chosen.node_id, "suspect")
                    continue
                with self.database.session() as session:
                    registry.save_placement(session, spec, reply.state)
                    node = session.get(NodeRow, chosen.node_id)
                    host = node.host if node is not None else ""
                    if node is not None:
                        node.services += 1  # counted now, so the next placement sees it before the next poll
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

    # control loop ---------------------------------------------------------------------------
    def _control(self) -> None:
        self._poll_loads()
        self._reconcile_roster()
        self._restore_missing()
        self._consider_scale_out()

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

    def _poll_loads(self) -> None:
        settings = self.settings.node_manager
        with self.database.session() as session:
            nodes = [(n.node_id, n.http_url, n.state, n.last_seen) for n in registry.list_nodes(session)]
        now = datetime.now(UTC)
        for node_id, url, state, last_seen in nodes:
            if state == "down":
                continue
            try:
                sample = requests.get(f"{url}/load", timeout=min(1.0, settings.poll_interval_s)).json()
            except (requests.RequestException, ValueError):
                silent = (now - last_seen).total_seconds()
                new_state = (
                    "down"
                    if silent > settings.down_after_s
                    else "suspect"
                    if silent > settings.suspect_after_s
                    else state
                )
                if new_state != state:
                    log.warning("node %s is %s (silent for %.1fs)", node_id, new_state, silent)
                    with self.database.session() as session:
                        registry.set_node_state(session, node_id, new_state)
                    if new_state == "down":
                        if self._retire_node is not None:
                            self._retire_node(node_id)
                        self._replace_services_of(node_id)
                continue
            with self.database.session() as session:
                registry.record_load(
                    session,
                    node_id,
                    cpu=sample["cpu_percent"],
                    memory_used=sample["memory_used_mb"],
                    memory_total=sample["memory_total_mb"],
                    services=sample["services"],
                )

    def _replace_services_of(self, node_id: str) -> None:
        with self.database.session() as session:
            specs = [
                ServiceSpec.model_validate_json(row.spec)
                for row in registry.list_placements(session, node_id)
            ]
        for spec in specs:
            try:
                placement = self.place(spec, avoid=[node_id])
            except PlatformError as exc:
                log.error("cannot move %s off lost node %s: %s", spec.service_id, node_id, exc)
                continue
            log.warning("moved %s from lost node %s to %s", spec.service_id, node_id, placement.node_id)
            self._report_moved(placement, f"moved off lost node {node_id}")

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
        settings = self.settings.node_manager
        with self.database.session() as session:
            known = {node.node_id: node.state for node in registry.list_nodes(session)}
            loads = [load for load in registry.node_loads(session) if load.state == "up"]
        if self._scale_out is None or not loads:
            return
        if self._pending_node is not None:
            waited = time.monotonic() - self._pending_since
            if self._pending_node not in known and waited < SCALE_OUT_JOIN_S:
                return  # one new node at a time: wait until the last one has joined
            self._pending_node = None
        now = time.monotonic()
        if not all(load.score > settings.scale_out_load for load in loads):
            self._busy_since = None
            return
        self._busy_since = self._busy_since or now
        if now - self._busy_since < settings.scale_out_after_s or len(known) >= settings.max_nodes:
            return
        scores = ", ".join(f"{load.node_id} {load.score:.2f}" for load in loads)
        log.warning(
            "every node busier than %.2f for %.0fs (%s): adding a node",
            settings.scale_out_load,
            now - self._busy_since,
            scores,
        )
        self._pending_node = self._scale_out()
        self._pending_since = now
        self._busy_since = None
        log.warning(
            "scale-out: %s",
            f"node {self._pending_node} started" if self._pending_node else "the provider added none",
        )


def _placement(row: PlacementRow, node: NodeRow | None) -> Placement:
    return Placement(
        service_id=row.service_id,
        node_id=row.node_id,
        host=node.host if node is not None else "",
        spec=ServiceSpec.model_validate_json(row.spec),
        state=registry.recorded_state(row),
    )


def main() -> None:
    settings = get_settings()
    # Scale-out asks the provider that started this platform; `aiot up` is the local one.
    from bootstrapper.local import LocalPlatform

    provider = LocalPlatform(settings)
    NodeManagerService(settings, scale_out=provider.add_node, retire_node=provider.retire_node).run()
