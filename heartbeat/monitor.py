"""The heartbeat monitor: notices dead or hung services and brings them back.

    <prefix>.heartbeats ──▶ last-seen time and interval of every service id
    <prefix>.events.nodes ──▶ ServiceExited: an agent saw a process exit (immediate, no waiting)
                           ──▶ NodeAnnouncement: which node runs what (to find the node manager itself)
    checker, every 0.25 s ──▶ silent longer than missed_beats x interval (after its start grace),
                             counted on the bus's clock, the last heartbeat heard from anyone: while
                             the bus stalls (a Kafka broker failing over holds every write) no silence
                             grows, and when beats come back every service has its start grace again
    failure worker (one thread, one failure at a time):
        crash loop? (exited sooner than crash_loop_uptime_s, crash_loop_limit times in a row;
                     a silence between those exits neither counts nor breaks the row)
            ──▶ give up: incident with its last output; the service stays down
        LocateService at the node manager (asked again when busy; when it never answers, the
        node its agent announced) ──▶ RestartService to that node's agent
            agent gone or lost it ──▶ PlaceService elsewhere (avoiding that node)
        not placed (stopped on purpose) ──▶ forget it
    every incident (exited, failed, restarted, replaced, gave_up) ──▶ incidents table + log
        ──▶ ServiceIncident on <prefix>.events.incidents (the deployer follows app instances there)

Two layers, like a kubelet and a liveness probe: exits are reported by agents
at once; heartbeats catch what an exit cannot show (a hung process, a lost node).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from heartbeat.models import IncidentRow
from platform_core.db import Database
from platform_core.nodes import (
    IncidentKind,
    LocateService,
    NodeAnnouncement,
    Placement,
    PlaceService,
    RestartService,
    ServiceExited,
    ServiceIncident,
    ServiceStateReply,
    agent_topic,
    node_events_topic,
    node_manager_topic,
    publish_incident,
)
from platform_core.service import PeriodicTask, QueueWorker, Service
from platform_sdk.bus import ConsumerLoop, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.errors import NotFound, PlatformError, Timeout
from platform_sdk.messages import Heartbeat
from platform_sdk.settings import MonitorSettings

log = logging.getLogger(__name__)
CHECK_INTERVAL_S = 0.25
NODE_MANAGER = "node-manager"
# A restart is a stop (at most agent.stop_timeout_s) and a start; an agent silent longer is gone.
AGENT_TIMEOUT_S = 15.0
LOCATE_TIMEOUTS_S = (5.0, 10.0)


@dataclass
class Watched:
    """What the monitor knows of one service."""

    interval_s: float
    last_seen: float
    grace_until: float = 0.0
    crashes: int = 0
    given_up: bool = False
    node_id: str | None = None

    def count_failure(self, uptime_s: float | None, settings: MonitorSettings) -> bool:
        """Counts a failure towards a crash loop; whether the loop reached the limit (give up).

        Only an exit says how long the service ran: a quick one is a crash, a later one
        ends the loop. A silence says neither, so it leaves the count as it is: a crashing
        service that never beats (or restarts slowly) is also reported silent between its
        crashes, and those reports must not hide the loop.
        """
        if uptime_s is not None:
            self.crashes = self.crashes + 1 if uptime_s < settings.crash_loop_uptime_s else 0
        self.given_up = self.crashes >= settings.crash_loop_limit
        return self.given_up


@dataclass(frozen=True)
class Failure:
    service_id: str
    reason: str
    uptime_s: float | None = None
    last_output: list[str] = field(default_factory=list)
    detected_at: float = field(default_factory=time.monotonic)


class HeartbeatMonitor(Service):
    """Restarts whatever stops beating or exits."""

    name = "heartbeat"

    def on_start(self) -> None:
        bus = self.sdk.bus
        self.database = Database.from_settings(self.settings)
        self.own(self.database)
        self.database.migrate()
        bus.ensure_topics([bus.topics.incidents])
        self.producer = bus.producer()
        self._watched: dict[str, Watched] = {}
        self._last_beat = time.monotonic()  # the bus's clock: when any heartbeat (its own too) last arrived
        self._where: dict[str, str] = {}  # service id → node, from announcements
        self._lock = threading.Lock()
        self.requester = Requester(bus)
        self.requester.start()
        self.own(self.requester)
        self.failures: QueueWorker[Failure] = QueueWorker("heartbeat-failures", self.handle_failure)
        self.failures.start()
        self.own(self.failures)
        beats = ConsumerLoop(
            bus, [bus.topics.heartbeats], group=None, name="monitor-beats", offset_reset="latest"
        )
        beats.add_handler(Heartbeat, self.on_heartbeat)
        events = ConsumerLoop(
            bus, [node_events_topic(bus.topics)], group=None, name="monitor-events", offset_reset="latest"
        )
        events.add_handler(ServiceExited, self.on_exit)
        events.add_handler(NodeAnnouncement, self.on_announcement)
        for loop in (beats, events):
            loop.start()
            self.own(loop)
        checker = PeriodicTask("heartbeat-checker", CHECK_INTERVAL_S, self._check)
        checker.start()
        self.own(checker)

    # observations ---------------------------------------------------------------------------
    def on_heartbeat(self, beat: Heartbeat, _envelope: Envelope) -> None:
        now = time.monotonic()
        with self._lock:
            stalled = now - self._last_beat
            if stalled > self.settings.monitor.missed_beats * self.settings.heartbeat.interval_s:
                # Nobody was heard, this monitor neither: the bus stalled, not every service. Their
                # beats may take a moment more (a partition's new leader to find): grace for all.
                log.warning("heartbeats arrive again after %.1fs without any: the bus stalled", stalled)
                for other in self._watched.values():
                    other.grace_until = max(other.grace_until, now + self.settings.monitor.start_grace_s)
            self._last_beat = now
            watched = self._watched.get(beat.service_id)
            if watched is None:
                self._watched[beat.service_id] = Watched(interval_s=beat.interval_s, last_seen=now)
                return
            watched.interval_s, watched.last_seen = beat.interval_s, now
            if watched.given_up:
                log.info("%s beats again after it was given up", beat.service_id)
                watched.given_up, watched.crashes = False, 0

    def on_announcement(self, announcement: NodeAnnouncement, _envelope: Envelope) -> None:
        with self._lock:
            for state in announcement.services:
                self._where[state.service_id] = announcement.node_id

    def on_exit(self, exited: ServiceExited, _envelope: Envelope) -> None:
        if exited.will_restart_here:
            self.record(
                exited.service_id,
                exited.node_id,
                "exited",
                f"exit code {exited.exit_code}; its agent restarts it",
            )
            self._grant_grace(exited.service_id)
            return
        self.failures.put(
            Failure(
                exited.service_id, f"exited with code {exited.exit_code}", exited.uptime_s, exited.last_output
            )
        )

    def _check(self) -> None:
        now = time.monotonic()
        missed = self.settings.monitor.missed_beats
        silent: list[tuple[str, float]] = []
        with self._lock:
            heard = self._last_beat
            for service_id, watched in self._watched.items():
                if watched.given_up or now < watched.grace_until:
                    continue
                quiet = heard - watched.last_seen
                if quiet > missed * watched.interval_s:
                    silent.append((service_id, quiet))
                    watched.grace_until = now + self.settings.monitor.start_grace_s  # one report per silence
        for service_id, quiet in silent:
            self.failures.put(Failure(service_id, f"silent for {quiet:.1f}s"))

    def _grant_grace(self, service_id: str) -> None:
        with self._lock:
            watched = self._watched.setdefault(
                service_id, Watched(interval_s=1.0, last_seen=time.monotonic())
            )
            watched.grace_until = time.monotonic() + self.settings.monitor.start_grace_s

    # acting -----------------------------------------------------------------------------------
    def handle_failure(self, failure: Failure) -> None:
        service_id = failure.service_id
        settings = self.settings.monitor
        with self._lock:
            watched = self._watched.setdefault(
                service_id, Watched(interval_s=1.0, last_seen=time.monotonic())
            )
            if watched.given_up:
                return
            if failure.uptime_s is None and watched.last_seen > failure.detected_at:
                return  # it beat again while this report waited in the queue behind a slow one
            give_up = watched.count_failure(failure.uptime_s, settings)
        try:
            # The node manager cannot answer for itself: its own node is in the announcements.
            placement = None if service_id == NODE_MANAGER else self._locate(service_id)
            placed = placement is not None or service_id == NODE_MANAGER
        except Timeout:
            # Busy or restarting: act on where the announcements say it runs, and keep watching it.
            placement, placed = None, True
        node_id = placement.node_id if placement else self._where.get(service_id)
        if not placed:
            with self._lock:
                self._watched.pop(service_id, None)  # not placed: stopped on purpose, or never ours
            return
        self.record(service_id, node_id, "failed", failure.reason)
        if give_up:
            tail = "\n".join(failure.last_output[-10:]) or "(no output)"
            self.record(
                service_id,
                node_id,
                "gave_up",
                f"crashed {watched.crashes} times within {settings.crash_loop_uptime_s:g}s of starting; "
                f"not restarting it again. Last output:\n{tail}",
            )
            return
        self._grant_grace(service_id)
        # A silent process may be hung: it cannot be trusted to stop by itself, so it is killed.
        if node_id is not None and self._restart_on(node_id, service_id, force=failure.uptime_s is None):
            self.record(service_id, node_id, "restarted", f"restarted on {node_id} after: {failure.reason}")
            return
        if placement is None:
            return
        try:
            moved = self.requester.request(
                node_manager_topic(self.sdk.bus.topics),
                PlaceService(spec=placement.spec, avoid=[node_id] if node_id else []),
                Placement,
                timeout=150,
            )
        except PlatformError as exc:
            self.record(service_id, node_id, "failed", f"could not place it elsewhere: {exc}")
            return
        self.record(
            service_id, moved.node_id, "replaced", f"placed on {moved.node_id}; {node_id} did not restart it"
        )

    def _locate(self, service_id: str) -> Placement | None:
        """Where the node manager placed ``service_id``; None when it is not placed.

        A busy node manager is asked again, with more time; Timeout when it never answers.
        """
        for timeout in LOCATE_TIMEOUTS_S:
            try:
                return self.requester.request(
                    node_manager_topic(self.sdk.bus.topics),
                    LocateService(service_id=service_id),
                    Placement,
                    timeout=timeout,
                )
            except NotFound:
                return None
            except Timeout:
                log.warning("the node manager did not say within %gs where %s runs", timeout, service_id)
        raise Timeout(f"the node manager did not say where {service_id} runs")

    def _restart_on(self, node_id: str, service_id: str, *, force: bool) -> bool:
        try:
            self.requester.request(
                agent_topic(self.sdk.bus.topics, node_id),
                RestartService(service_id=service_id, force=force),
                ServiceStateReply,
                timeout=AGENT_TIMEOUT_S,
            )
        except (Timeout, NotFound) as exc:
            log.warning("agent of %s could not restart %s: %s", node_id, service_id, exc)
            return False
        return True

    def record(self, service_id: str, node_id: str | None, kind: IncidentKind, detail: str) -> None:
        """An incident: stored for `aiot status`, logged, and published for whoever follows the service."""
        level = logging.ERROR if kind in ("gave_up", "failed") else logging.WARNING
        log.log(level, "%s %s on %s: %s", service_id, kind, node_id or "?", detail)
        with self.database.session() as session:
            session.add(IncidentRow(service_id=service_id, node_id=node_id, kind=kind, detail=detail))
        publish_incident(
            self.producer, ServiceIncident(service_id=service_id, node_id=node_id, kind=kind, detail=detail)
        )


def main() -> None:
    HeartbeatMonitor().run()
