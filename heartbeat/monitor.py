"""The heartbeat monitor: notices dead or hung services and brings them back, without storms.

    <prefix>.heartbeats (read in batches of monitor.beats_batch_ms) ──▶ last-seen time and interval
                             of every service id; how far its view lags
    <prefix>.inst.*.heartbeats (topics listed, no group) ──▶ the same, under the
                             service id the topic names (``platform_core.instances``)
    <prefix>.events.nodes ──▶ ServiceExited: an agent saw a process exit (immediate, no waiting)
                           ──▶ NodeAnnouncement: which node runs what (to find the node manager itself)
    checker, every monitor.check_interval_s ──▶ silent longer than missed_beats x interval (after its
                             grace), counted on the bus's clock, the last heartbeat heard from anyone:
                             while the bus stalls no silence grows, and when beats come back every
                             service has its start grace again
        blind? (blind_min_silent and blind_fraction of the services silent at once, or the view of
                the heartbeats lagging) ──▶ "blind" incident; nobody is reported until it clears
    failure worker (one thread, one failure at a time):
        a silence: ProbeService to its agent first (ask before killing)
            stopped (SIGSTOP), zombie or gone ──▶ restart at once
            alive, CPU time advancing or in I/O wait ──▶ "slow" incident; left running (slow_grace_s)
            alive without progress ──▶ looked at again every probe_interval_s; hang_timeout_s ──▶ restart
            agent does not answer ──▶ restart or place elsewhere, as for a lost node
        crash loop? (exited sooner than crash_loop_uptime_s, crash_loop_limit times in a row;
                     a silence between those exits neither counts nor breaks the row)
            ──▶ give up: incident with its last output; the service stays down
        back-off (restart_backoff_s per restart in a row) and the node's budget (node_restart_budget
                  a minute) ──▶ "deferred" incident; the failure waits and is handled again when due
        LocateService at the node manager (asked again when busy; when it never answers, the
        node its agent announced) ──▶ RestartService to that node's agent
            agent gone or lost it ──▶ PlaceService elsewhere (avoiding that node)
        not placed (stopped on purpose) ──▶ forget it
    every incident (exited, failed, slow, blind, deferred, restarted, replaced, gave_up)
        ──▶ incidents table (the newest monitor.incidents_kept) + log
        ──▶ ServiceIncident on <prefix>.events.incidents (the deployer follows app instances there)

Two layers, like a kubelet and a liveness probe: exits are reported by agents
at once; heartbeats catch what an exit cannot show (a hung process, a lost node),
and a silence is only a question to the process's node until its answer says hung.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from heartbeat.models import IncidentRow
from platform_core.db import Database
from platform_core.instances import file_under_owner, instance_loop
from platform_core.nodes import (
    IncidentKind,
    LocateService,
    NodeAnnouncement,
    Placement,
    PlaceService,
    ProbeService,
    RestartService,
    ServiceExited,
    ServiceIncident,
    ServiceProbe,
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
NODE_MANAGER = "node-manager"
BUDGET_WINDOW_S = 60.0  # node_restart_budget counts restarts in this window
PRUNE_EVERY_S = 600.0
BEATS_BATCH_BYTES = 64 * 1024  # a fetch of heartbeats is answered early only when this much waits
Verdict = Literal["dead", "hung", "slow", "wait", "unknown"]


@dataclass
class Watched:
    """What the monitor knows of one service."""

    interval_s: float
    last_seen: float
    grace_until: float = 0.0
    crashes: int = 0
    given_up: bool = False
    node_id: str | None = None
    probe_cpu_s: float | None = None  # CPU time at the last probe of this silence
    stuck_since: float | None = None  # when a probe first found it alive without progress
    restarts_in_row: int = 0  # restarts by the monitor since it last ran stable_after_s
    last_restart: float = 0.0

    def heard(self, now: float, interval_s: float, stable_after_s: float) -> None:
        """A heartbeat: the silence (if any) is over; a restart row ends once it has run long enough."""
        self.interval_s, self.last_seen = interval_s, now
        self.probe_cpu_s = self.stuck_since = None
        if self.restarts_in_row and now - self.last_restart >= stable_after_s:
            self.restarts_in_row = 0

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
        self.database.ensure_schema()
        bus.ensure_topics([bus.topics.incidents])
        self.producer = bus.producer()
        self.prepare_view()
        self.requester = Requester(bus)
        self.requester.start()
        self.own(self.requester)
        self.failures: QueueWorker[Failure] = QueueWorker("heartbeat-failures", self.handle_failure)
        self.failures.start()
        self.own(self.failures)
        batch_ms = self.settings.monitor.beats_batch_ms
        batching: dict[str, Any] = (
            {"fetch.wait.max.ms": batch_ms, "fetch.min.bytes": BEATS_BATCH_BYTES} if batch_ms else {}
        )
        beats = ConsumerLoop(
            bus,
            [bus.topics.heartbeats],
            group=None,
            name="monitor-beats",
            offset_reset="latest",
            **batching,
        )
        beats.add_handler(Heartbeat, self.on_heartbeat)
        # Model replicas and app instances with principals beat on their own topics: filed by topic.
        # Listed, without a group (on Kafka): after a broker pause no rejoin to wait for.
        own_beats = instance_loop(
            bus,
            "heartbeats",
            group=f"{bus.topics.prefix}.heartbeat.instances",
            name="monitor-own-beats",
            listed=True,
        )
        file_under_owner(own_beats, Heartbeat, self.on_heartbeat)
        events = ConsumerLoop(
            bus, [node_events_topic(bus.topics)], group=None, name="monitor-events", offset_reset="latest"
        )
        events.add_handler(ServiceExited, self.on_exit)
        events.add_handler(NodeAnnouncement, self.on_announcement)
        for loop in (beats, own_beats, events):
            loop.start()
            self.own(loop)
        checker = PeriodicTask("heartbeat-checker", self.settings.monitor.check_interval_s, self._check)
        checker.start()
        self.own(checker)
        pruner = PeriodicTask("heartbeat-incidents", PRUNE_EVERY_S, self.prune_incidents)
        pruner.start()
        self.own(pruner)

    def prepare_view(self) -> None:
        """What the monitor knows, empty: every service unheard, nothing deferred (``on_start`` calls it)."""
        self._watched: dict[str, Watched] = {}
        self._last_beat = time.monotonic()  # the bus's clock: when any heartbeat (its own too) last arrived
        self._where: dict[str, str] = {}  # service id → node, from announcements
        self._lag_s = 0.0  # how far behind the newest heartbeat read was sent
        self._blind: str | None = None  # why the monitor cannot trust its view, while it cannot
        self._deferred: list[tuple[float, Failure]] = []  # failures waiting for back-off or budget
        self._node_restarts: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    # observations ---------------------------------------------------------------------------
    def on_heartbeat(self, beat: Heartbeat, envelope: Envelope) -> None:
        now = time.monotonic()
        with self._lock:
            self._lag_s = max(0.0, (datetime.now(UTC) - envelope.time).total_seconds())
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
            watched.heard(now, beat.interval_s, self.settings.monitor.stable_after_s)
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
        settings = self.settings.monitor
        missed = settings.missed_beats
        silent: list[tuple[str, float]] = []
        due: list[Failure] = []
        with self._lock:
            heard = self._last_beat
            active = 0
            for service_id, watched in self._watched.items():
                if watched.given_up:
                    continue
                active += 1
                quiet = heard - watched.last_seen
                if quiet > missed * watched.interval_s:
                    silent.append((service_id, quiet))
            blind = self._blindness(len(silent), active)
            was_blind, self._blind = self._blind, blind
            if blind is not None:
                silent = []  # nobody is reported, and deferred restarts wait too
            elif was_blind is not None:
                silent = []
                for watched in self._watched.values():  # it sees again: heard or not, each gets its grace
                    watched.grace_until = max(watched.grace_until, now + settings.start_grace_s)
            else:
                due = [failure for at, failure in self._deferred if at <= now]
                self._deferred = [(at, failure) for at, failure in self._deferred if at > now]
                silent = [(s, q) for s, q in silent if now >= self._watched[s].grace_until]
                for service_id, _quiet in silent:
                    self._watched[service_id].grace_until = now + settings.start_grace_s  # one report each
        if blind is not None and was_blind is None:
            self.record(self.service_id, None, "blind", f"monitor blind: {blind}; restarting nothing")
        elif blind is None and was_blind is not None:
            log.warning("monitor sees again (it was blind: %s)", was_blind)
        for failure in due:
            self.failures.put(failure)
        for service_id, quiet in silent:
            self.failures.put(Failure(service_id, f"silent for {quiet:.1f}s"))

    def _blindness(self, silent: int, active: int) -> str | None:
        """Why the monitor's view cannot be trusted now, or None (call with the lock held)."""
        settings = self.settings.monitor
        lag_limit = settings.missed_beats * self.settings.heartbeat.interval_s
        if self._lag_s > lag_limit:
            return f"its view of the heartbeats lags {self._lag_s:.1f}s behind"
        if silent >= settings.blind_min_silent and silent >= settings.blind_fraction * active:
            return f"{silent} of {active} services silent at once"
        return None

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
        silence = failure.uptime_s is None
        with self._lock:
            watched = self._watched.setdefault(
                service_id, Watched(interval_s=1.0, last_seen=time.monotonic())
            )
            if watched.given_up or self._blind is not None:
                return
            if silence and watched.last_seen > failure.detected_at:
                return  # it beat again while this report waited in the queue behind a slow one
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
        reason = failure.reason
        if silence and node_id is not None:
            verdict, seen = self._judge(service_id, node_id)
            if verdict == "wait":
                return  # alive: looked at again after probe_interval_s, restarted if it stays stuck
            if verdict == "slow":
                self.record(service_id, node_id, "slow", f"{reason}, but {seen}; left running")
                return
            reason = f"{reason}; {seen}"
        delay = self._restart_delay(service_id, node_id)
        if delay > 0:
            with self._lock:
                self._deferred.append((time.monotonic() + delay, failure))
                watched.grace_until = max(watched.grace_until, time.monotonic() + delay)
            self.record(service_id, node_id, "deferred", f"{reason}; restarting it in {delay:.1f}s")
            return
        with self._lock:
            give_up = watched.count_failure(failure.uptime_s, settings)
        self.record(service_id, node_id, "failed", reason)
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
        self._count_restart(service_id, node_id)
        # A silent process may be hung: it cannot be trusted to stop by itself, so it is killed.
        if node_id is not None and self._restart_on(node_id, service_id, force=silence):
            self.record(service_id, node_id, "restarted", f"restarted on {node_id} after: {reason}")
            return
        if placement is None:
            return
        try:
            moved = self.requester.request(
                node_manager_topic(self.sdk.bus.topics),
                # Refused at once when no node has room: the monitor's decisions wait for no scale-out.
                PlaceService(spec=placement.spec, avoid=[node_id] if node_id else [], wait_for_room=False),
                Placement,
                timeout=self.settings.monitor.move_wait_s,
            )
        except PlatformError as exc:
            self.record(service_id, node_id, "failed", f"could not place it elsewhere: {exc}")
            return
        self.record(
            service_id, moved.node_id, "replaced", f"placed on {moved.node_id}; {node_id} did not restart it"
        )

    def _judge(self, service_id: str, node_id: str) -> tuple[Verdict, str]:
        """Ask the service's agent how its processes are; the verdict and what was seen.

        dead: stopped, zombie or gone (restart now); slow: alive and making progress (leave it);
        wait: alive, no progress seen yet (look again); hung: no progress for hang_timeout_s;
        unknown: the agent did not answer (restart, or place elsewhere, as before probes).
        """
        settings = self.settings.monitor
        try:
            probe = self.requester.request(
                agent_topic(self.sdk.bus.topics, node_id),
                ProbeService(service_id=service_id),
                ServiceProbe,
                timeout=settings.agent_timeout_s,
            )
        except (Timeout, NotFound) as exc:
            return "unknown", f"its agent on {node_id} did not say how it is ({exc})"
        if probe.state in ("stopped", "zombie", "gone"):
            return "dead", f"its process is {probe.state}"
        now = time.monotonic()
        with self._lock:
            watched = self._watched[service_id]
            before = watched.probe_cpu_s
            watched.probe_cpu_s = probe.cpu_s
            used = probe.cpu_s - before if before is not None else 0.0
            if probe.state == "io_wait" or used > 0.0:
                watched.stuck_since = None
                watched.grace_until = now + settings.slow_grace_s
                doing = "waiting on I/O" if probe.state == "io_wait" else f"it used {used:.2f}s of CPU since"
                return "slow", f"its process is alive and making progress ({doing})"
            if watched.stuck_since is None:
                watched.stuck_since = now
            stuck = now - watched.stuck_since
            if stuck < settings.hang_timeout_s:
                watched.grace_until = now + settings.probe_interval_s
                return "wait", f"its process is {probe.state}, no progress for {stuck:.1f}s"
        return "hung", f"its process is {probe.state} without progress for {stuck:.1f}s: hung"

    def _restart_delay(self, service_id: str, node_id: str | None) -> float:
        """Seconds until a restart of ``service_id`` is due: its back-off, then its node's budget."""
        settings = self.settings.monitor
        now = time.monotonic()
        with self._lock:
            watched = self._watched[service_id]
            due = now
            if watched.restarts_in_row:
                steps = settings.restart_backoff_s
                due = watched.last_restart + steps[min(watched.restarts_in_row, len(steps) - 1)]
            recent = self._node_restarts.get(node_id or "?")
            if recent is not None:
                while recent and recent[0] <= now - BUDGET_WINDOW_S:
                    recent.popleft()
                if len(recent) >= settings.node_restart_budget:
                    due = max(due, recent[0] + BUDGET_WINDOW_S)
        return max(0.0, due - now)

    def _count_restart(self, service_id: str, node_id: str | None) -> None:
        now = time.monotonic()
        with self._lock:
            watched = self._watched[service_id]
            watched.restarts_in_row += 1
            watched.last_restart = now
            self._node_restarts.setdefault(node_id or "?", collections.deque()).append(now)

    def _locate(self, service_id: str) -> Placement | None:
        """Where the node manager placed ``service_id``; None when it is not placed.

        A busy node manager is asked again, with more time; Timeout when it never answers.
        """
        for timeout in self.settings.monitor.locate_timeouts_s:
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
                timeout=self.settings.monitor.agent_timeout_s,
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

    def prune_incidents(self) -> None:
        """Keep the newest ``monitor.incidents_kept`` incidents: the table is bounded."""
        kept = self.settings.monitor.incidents_kept
        with self.database.session() as session:
            newest = session.scalars(
                sa.select(IncidentRow.id).order_by(IncidentRow.id.desc()).offset(kept).limit(1)
            ).first()
            if newest is not None:
                session.execute(sa.delete(IncidentRow).where(IncidentRow.id <= newest))


def main() -> None:
    HeartbeatMonitor().run()
