"""The heartbeat monitor's silence rule: a stalled bus is not a silent service.

Silence is counted on the bus's clock (the last heartbeat heard from anyone, the monitor's
own included): when a Kafka broker fails over, every write waits until the cluster has
fenced it, and no service may be restarted for that. When beats come back, every service
has its start grace to be heard again; one that stays silent after it is reported.

Asking before killing, holding still when blind, and backing off: the monitor decides with the
agent's answers (``ProbeService``) scripted, the node manager always placing the service on
node-1, and every incident collected. The probes themselves run on real processes (a child
stopped with SIGSTOP, one burning CPU, one sleeping, one gone).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from heartbeat import monitor as monitor_module
from heartbeat.monitor import Failure, HeartbeatMonitor
from platform_core.nodes import (
    LocateService,
    Placement,
    ProbeService,
    RestartService,
    ServiceProbe,
    ServiceSpec,
    ServiceState,
    ServiceStateReply,
)
from platform_sdk.envelope import Envelope, Message
from platform_sdk.errors import Timeout
from platform_sdk.messages import Heartbeat
from platform_sdk.settings import Settings
from service_agent.supervisor import probe_tree

SERVICES = ("heartbeat", "web", "deployer")
SIX = ("heartbeat", "web", "deployer", "logger", "scheduler", "device-manager")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Reports:
    """Stands in for the monitor's failure worker: what it would have acted on."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def put(self, failure: Failure) -> None:
        self.failures.append(failure)

    def services(self) -> list[str]:
        return [failure.service_id for failure in self.failures]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(monitor_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def monitor(
    settings: Settings, clock: Clock, reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> HeartbeatMonitor:
    """A monitor's observing half (what ``on_start`` sets up before its loops), not started."""
    watcher = HeartbeatMonitor(settings)
    watcher.prepare_view()
    monkeypatch.setattr(watcher, "failures", reports, raising=False)
    return watcher


def beat(monitor: HeartbeatMonitor, *services: str) -> None:
    for service in services:
        message = Heartbeat(service_id=service, seq=0, instance="i", pid=1, host="h", interval_s=1.0)
        monitor.on_heartbeat(message, Envelope.wrap(message, source=service))


def run(monitor: HeartbeatMonitor, clock: Clock, seconds: float, *beating: str) -> None:
    """``seconds`` in quarter steps (the checker's pace); ``beating`` beat once a second."""
    for step in range(int(seconds * 4)):
        clock.now += 0.25
        if step % 4 == 3:
            beat(monitor, *beating)
        monitor._check()


def test_a_silent_service_is_reported_while_the_others_beat(
    monitor: HeartbeatMonitor, clock: Clock, reports: Reports
) -> None:
    run(monitor, clock, 2, *SERVICES)
    run(monitor, clock, 6, "heartbeat", "deployer")
    assert reports.services() == ["web"]


def test_a_stalled_bus_reports_nobody(monitor: HeartbeatMonitor, clock: Clock, reports: Reports) -> None:
    run(monitor, clock, 2, *SERVICES)
    run(monitor, clock, 12)  # a broker failing over: no heartbeat reaches anyone, the monitor's neither
    run(monitor, clock, 8, *SERVICES)
    assert reports.failures == []


def test_after_a_stall_every_service_has_its_grace_and_one_still_silent_is_reported(
    monitor: HeartbeatMonitor, clock: Clock, reports: Reports, settings: Settings
) -> None:
    run(monitor, clock, 2, *SERVICES)
    run(monitor, clock, 12)
    run(monitor, clock, settings.monitor.start_grace_s - 1, "heartbeat", "deployer")
    assert reports.failures == [], "web's beats may still be finding its partition's new leader"
    run(monitor, clock, 2, "heartbeat", "deployer")
    assert reports.services() == ["web"]


# asking before killing, blindness, back-off ----------------------------------------------------
class Agent:
    """Stands in for the requester: the node manager's and the agent's answers, and what was asked."""

    def __init__(self) -> None:
        self.probes: dict[str, list[ServiceProbe]] = {}
        self.restarted: list[str] = []
        self.probed: list[str] = []
        self.silent_agent = False

    def request(self, _topic: str, message: Message, _reply: type[Any], timeout: float = 0.0) -> Message:
        if isinstance(message, LocateService):
            spec = ServiceSpec(service_id=message.service_id, module="x")
            return Placement(service_id=message.service_id, node_id="node-1", spec=spec)
        if isinstance(message, ProbeService):
            self.probed.append(message.service_id)
            if self.silent_agent:
                raise Timeout("no answer")
            queue = self.probes[message.service_id]
            return queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(message, RestartService):
            self.restarted.append(message.service_id)
            state = ServiceState(
                service_id=message.service_id, node_id="node-1", state="running", runtime="p"
            )
            return ServiceStateReply(state=state)
        raise AssertionError(f"unexpected request {message!r}")


@pytest.fixture
def agent() -> Agent:
    return Agent()


@pytest.fixture
def incidents() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def deciding(
    settings: Settings,
    clock: Clock,
    agent: Agent,
    incidents: list[tuple[str, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> HeartbeatMonitor:
    """A monitor's deciding half too, not started: failures handled at once, on the calling thread."""
    watcher = HeartbeatMonitor(settings)
    watcher.prepare_view()
    monkeypatch.setattr(watcher, "requester", agent, raising=False)
    monkeypatch.setattr(watcher, "failures", SimpleNamespace(put=watcher.handle_failure), raising=False)
    monkeypatch.setattr(
        watcher, "record", lambda service, _node, kind, detail: incidents.append((service, kind, detail))
    )
    return watcher


def probe(state: str, cpu_s: float) -> ServiceProbe:
    return ServiceProbe(service_id="web", state=state, cpu_s=cpu_s)


def kinds(incidents: list[tuple[str, str, str]], service: str = "web") -> list[str]:
    return [kind for who, kind, _detail in incidents if who == service]


def others(service: str = "web") -> tuple[str, ...]:
    return tuple(s for s in SIX if s != service)


def test_a_stopped_process_is_restarted_at_once(
    deciding: HeartbeatMonitor, clock: Clock, agent: Agent, incidents: list[tuple[str, str, str]]
) -> None:
    agent.probes["web"] = [probe("stopped", 3.0)]
    run(deciding, clock, 2, *SIX)
    run(deciding, clock, 4, *others())
    assert agent.restarted == ["web"]
    assert kinds(incidents) == ["failed", "restarted"]
    assert "its process is stopped" in incidents[0][2]


def test_a_busy_process_that_cannot_beat_is_left_running(
    deciding: HeartbeatMonitor, clock: Clock, agent: Agent, incidents: list[tuple[str, str, str]]
) -> None:
    cpu = iter(range(100))
    agent.probes["web"] = [probe("running", float(next(cpu))) for _ in range(100)]
    run(deciding, clock, 2, *SIX)
    run(deciding, clock, 60, *others())  # a minute silent, its CPU time growing at every look
    assert agent.restarted == []
    assert set(kinds(incidents)) == {"slow"}
    assert "making progress" in incidents[0][2]


def test_a_process_alive_without_progress_is_restarted_after_the_hang_timeout(
    deciding: HeartbeatMonitor, clock: Clock, agent: Agent, settings: Settings
) -> None:
    agent.probes["web"] = [probe("sleeping", 5.0)]
    run(deciding, clock, 2, *SIX)
    silent_for = settings.monitor.missed_beats + 1
    run(deciding, clock, silent_for + settings.monitor.hang_timeout_s - 2, *others())
    assert agent.restarted == [], "alive and not yet stuck for the hang timeout"
    assert len(agent.probed) >= 3  # looked at again every probe_interval_s
    run(deciding, clock, 4, *others())
    assert agent.restarted == ["web"]


def test_when_the_agent_does_not_answer_the_service_is_restarted_as_before(
    deciding: HeartbeatMonitor, clock: Clock, agent: Agent, incidents: list[tuple[str, str, str]]
) -> None:
    agent.silent_agent = True
    run(deciding, clock, 2, *SIX)
    run(deciding, clock, 4, *others())
    assert agent.restarted == ["web"]
    assert "did not say how it is" in incidents[0][2]


def test_many_services_silent_at_once_blind_the_monitor_and_it_restarts_nothing(
    deciding: HeartbeatMonitor, clock: Clock, agent: Agent, incidents: list[tuple[str, str, str]]
) -> None:
    for service in SIX:
        agent.probes[service] = [probe("stopped", 1.0)]
    run(deciding, clock, 2, *SIX)
    run(deciding, clock, 20, "heartbeat", "logger")  # four of six silent: the view, not four services
    assert agent.restarted == []
    assert [kind for _who, kind, _detail in incidents] == ["blind"]
    assert "4 of 6 services silent at once" in incidents[0][2]
    run(deciding, clock, 3, *SIX)  # they beat again: the view is fresh, nobody was touched
    run(deciding, clock, 20, *SIX)
    assert agent.restarted == []


def test_a_lagging_view_blinds_the_monitor(
    deciding: HeartbeatMonitor, clock: Clock, agent: Agent, incidents: list[tuple[str, str, str]]
) -> None:
    agent.probes["web"] = [probe("stopped", 1.0)]
    run(deciding, clock, 2, *SIX)
    for _second in range(6):  # the beats it reads now were sent 12 s ago: its consumer lags
        for service in others():
            message = Heartbeat(service_id=service, seq=0, instance="i", pid=1, host="h", interval_s=1.0)
            sent = Envelope.wrap(message, source=service)
            deciding.on_heartbeat(
                message, sent.model_copy(update={"time": sent.time - timedelta(seconds=12)})
            )
        run(deciding, clock, 1)
    assert agent.restarted == []
    assert [kind for _who, kind, _detail in incidents] == ["blind"]
    assert "lags 12.0s behind" in incidents[0][2]


def test_restarts_in_a_row_back_off_and_a_nodes_budget_defers_the_rest(
    settings: Settings,
    clock: Clock,
    agent: Agent,
    incidents: list[tuple[str, str, str]],
    deciding: HeartbeatMonitor,
) -> None:
    backoff = settings.monitor.restart_backoff_s
    deciding._watched["web"] = monitor_module.Watched(interval_s=1.0, last_seen=clock.now)
    for n in range(3):
        deciding.handle_failure(Failure("web", "exited with code 1", uptime_s=60.0))
        if n:
            assert kinds(incidents)[-1] == "deferred", f"restart {n + 1} waits {backoff[n]}s"
            clock.now += backoff[n]
            run(deciding, clock, 0.5)  # the checker hands the deferred failure back when due
    assert agent.restarted == ["web"] * 3
    # The node's budget: at most node_restart_budget restarts a minute, whoever they are.
    budget = settings.monitor.node_restart_budget
    for n in range(budget):
        service = f"svc-{n}"
        deciding._watched[service] = monitor_module.Watched(interval_s=1.0, last_seen=clock.now)
        deciding.handle_failure(Failure(service, "exited with code 1", uptime_s=60.0))
    assert len(agent.restarted) == budget, "3 of web's and the others until the budget ran out"
    assert kinds(incidents, f"svc-{budget - 1}")[-1] == "deferred"


# the agent's side: probes of real processes ---------------------------------------------------
@contextlib.contextmanager
def child(code: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait()


def test_probe_tells_stopped_busy_sleeping_and_gone_apart() -> None:
    with child("import time\nwhile True: time.sleep(1)") as sleeper:
        os.kill(sleeper.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while probe_tree("s", sleeper.pid).state != "stopped" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probe_tree("s", sleeper.pid).state == "stopped"
        os.kill(sleeper.pid, signal.SIGCONT)
        # Continued, it may pass through running or a short uninterruptible wait (io_wait, seen on
        # a busy machine) before it is back in its sleep.
        deadline = time.monotonic() + 5
        while (state := probe_tree("s", sleeper.pid).state) != "sleeping" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state == "sleeping"
    with child("while True: pass") as burner:
        first = probe_tree("b", burner.pid).cpu_s
        deadline = time.monotonic() + 5
        while probe_tree("b", burner.pid).cpu_s <= first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probe_tree("b", burner.pid).cpu_s > first
    assert probe_tree("g", burner.pid).state == "gone"
    assert probe_tree("n", None).state == "gone"


def test_a_restart_deferred_while_the_monitor_is_blind_is_made_once_it_sees_again(
    deciding: HeartbeatMonitor, clock: Clock, agent: Agent, incidents: list[tuple[str, str, str]]
) -> None:
    run(deciding, clock, 2, *SIX)
    due = clock.now + 5  # after four of six have been silent long enough to blind it
    deciding._deferred.append((due, Failure("web", "exited with code 1", uptime_s=60.0)))
    run(deciding, clock, 10, "heartbeat", "logger")  # blind, past the deferred restart's due time
    assert agent.restarted == []
    run(deciding, clock, 2, *SIX)  # it sees again; the restart it deferred is not forgotten
    assert agent.restarted == ["web"]
