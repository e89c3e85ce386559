"""A run whose start fails for a passing reason is started later, not a day later.

A run's start asks the app manager (in the front door) which version to run. When nobody
answers (the front door is down, or Kafka), the scheduler tries again after
``scheduler.start_retry_s`` until the run starts or its window is over; the schedule's history
says the start was delayed, and then that it started late. Runs for real on the session's Kafka
broker: the small site of ``tests.fixtures.sites`` and the scheduler service.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from deployer.messages import DeployApp
from platform_sdk.settings import temporary_settings
from scheduler.models import ScheduleRow
from scheduler.service import SchedulerService
from tests.fixtures.sites import Site, captured, running, wait_for
from web.service import FrontDoorService

pytestmark = pytest.mark.service("kafka")


def history(site: Site, schedule_id: str) -> list[dict[str, Any]]:
    with site.database.session() as session:
        row = session.get(ScheduleRow, schedule_id)
        assert row is not None
        found: list[dict[str, Any]] = json.loads(row.history or "[]")
        return found


def test_a_run_the_app_manager_did_not_answer_for_starts_when_it_is_back(site: Site) -> None:
    created = site.aiot(
        "enduser",
        "schedule",
        "create",
        "smart-home",
        "-l",
        "lake-home",
        "--now",
        "--duration",
        "30m",
        "--json",
    )
    schedule_id = json.loads(created.stdout)["schedule_id"]
    site.front_door.stop()  # the app manager answers in the front door: nobody picks the version now
    topics = site.bus.topics
    quick = {"scheduler.app_manager_timeout_s": 1.0, "scheduler.start_retry_s": [1.0, 2.0]}
    with (
        temporary_settings(quick) as settings,
        captured(site.bus, topics.deployer, DeployApp) as deploys,
        running(SchedulerService(settings)),
    ):
        wait_for(
            lambda: any(entry["event"] == "delayed" for entry in history(site, schedule_id)),
            "the delayed start in the schedule's history",
        )
        assert not deploys
        back = FrontDoorService(settings)
        back.start()
        try:
            wait_for(lambda: bool(deploys), "the run's DeployApp once the app manager answers again")
            wait_for(
                lambda: any(entry["event"] == "started" for entry in history(site, schedule_id)),
                "the start in the schedule's history",
            )
        finally:
            back.stop()

    [request] = deploys
    assert request.schedule_id == schedule_id
    events = history(site, schedule_id)
    [delayed] = [entry for entry in events if entry["event"] == "delayed"]  # noted once, not per try
    assert "no reply to 'app-manager.pick-version'" in delayed["detail"], delayed
    [started] = [entry for entry in events if entry["event"] == "started"]
    assert started["detail"].startswith(request.instance_id)
