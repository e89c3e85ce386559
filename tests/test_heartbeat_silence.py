"""The heartbeat monitor's silence rule: a stalled bus is not a silent service.

Silence is counted on the bus's clock (the last heartbeat heard from anyone, the monitor's
own included): when a Kafka broker fails over, every write waits until the cluster has
fenced it, and no service may be restarted for that. When beats come back, every service
has its start grace to be heard again; one that stays silent after it is reported.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from heartbeat import monitor as monitor_module
from heartbeat.monitor import Failure, HeartbeatMonitor
from platform_sdk.envelope import Envelope
from platform_sdk.messages import Heartbeat
from platform_sdk.settings import Settings

SERVICES = ("heartbeat", "web", "deployer")


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
    watcher._watched = {}
    watcher._last_beat = clock.now
    watcher._lock = threading.Lock()
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
