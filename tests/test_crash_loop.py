"""The heartbeat monitor's crash-loop rule: quick exits in a row give up, whatever comes between."""

from __future__ import annotations

from heartbeat.monitor import Watched
from platform_sdk.settings import MonitorSettings

RULE = MonitorSettings(crash_loop_uptime_s=5.0, crash_loop_limit=3)


def watched() -> Watched:
    return Watched(interval_s=1.0, last_seen=0.0)


def test_three_quick_exits_in_a_row_give_up() -> None:
    service = watched()
    assert [service.count_failure(1.2, RULE) for _ in range(3)] == [False, False, True]
    assert service.given_up
    assert service.crashes == 3


def test_silences_between_quick_exits_neither_count_nor_break_the_row() -> None:
    # A crashing service that never beats (or restarts slowly) is also reported silent between
    # its crashes: the row of quick exits still reaches the limit.
    service = watched()
    verdicts = [service.count_failure(uptime, RULE) for uptime in (1.0, None, 2.0, None, None, 0.5)]
    assert verdicts == [False, False, False, False, False, True]


def test_an_exit_after_running_a_while_starts_the_count_again() -> None:
    service = watched()
    verdicts = [service.count_failure(uptime, RULE) for uptime in (1.0, 2.0, 60.0, 1.0, 1.0)]
    assert verdicts == [False, False, False, False, False]
    assert service.crashes == 2


def test_silences_alone_never_give_up() -> None:
    service = watched()
    assert not any(service.count_failure(None, RULE) for _ in range(10))
    assert service.crashes == 0
