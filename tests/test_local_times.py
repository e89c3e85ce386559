"""Times are shown in the location's time zone: ``aiot schedule``, ``aiot instance list``, the mail.

People read "2026-12-06 12:30 EST (UTC-05:00)"; ``--json`` keeps ISO 8601 instants with their
offset and names the zone beside them. The zone travels with the data, so no part reads another
service's tables for it: a schedule has its location's zone; the scheduler puts it in the
``DeployApp`` of each run; the deployer keeps it with the instance (``InstanceInfo.timezone``) and
puts it in its ``InstanceEvent``s; the scheduler's mail tells the stop time in it.

Each test runs the parts it needs for real, in this process, on the session's Kafka broker: the
small site of ``tests.fixtures.sites`` (the front door on a seeded registry, the device manager's
answers, the ``aiot`` command in-process) and the scheduler or the deployer service.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from deployer.messages import DeployApp, InstanceEvent
from deployer.service import DeployerService
from platform_sdk.artifacts import AppManifest, app_id_for
from scheduler.local_time import local_time
from scheduler.service import SchedulerService
from tests.fixtures.sites import Site, captured, running, wait_for

pytestmark = pytest.mark.service("kafka")

ROOT = Path(__file__).resolve().parents[1]
SMART_HOME = ROOT / "examples" / "apps" / "smart-home" / "app.json"


def table_rows(output: str, first_cell: str) -> list[str]:
    """The lines of a printed table that hold ``first_cell``."""
    return [line for line in output.splitlines() if first_cell in line]


# --- the format -----------------------------------------------------------------------------


def test_local_time_names_the_zone_and_its_offset() -> None:
    moment = datetime(2026, 12, 6, 17, 30, tzinfo=UTC)

    assert local_time(moment, "Europe/Berlin") == "2026-12-06 18:30 CET (UTC+01:00)"
    assert local_time(moment, "America/New_York") == "2026-12-06 12:30 EST (UTC-05:00)"
    assert local_time(moment, "Asia/Kolkata") == "2026-12-06 23:00 IST (UTC+05:30)"
    assert local_time(datetime(2026, 7, 6, 17, 30, tzinfo=UTC), "Europe/Berlin") == (
        "2026-07-06 19:30 CEST (UTC+02:00)"
    )
    assert local_time(moment, "Asia/Istanbul") == "2026-12-06 20:30 UTC+03:00"  # no abbreviation
    assert local_time(moment, "UTC") == "2026-12-06 17:30 UTC"
    # A zone not named (an instance of an older scheduler), or not known here: UTC, said so.
    assert local_time(moment, None) == local_time(moment, "Nowhere/Atlantis") == "2026-12-06 17:30 UTC"
    assert local_time(moment.replace(tzinfo=None), "Europe/Berlin") == "2026-12-06 18:30 CET (UTC+01:00)"


# --- schedules --------------------------------------------------------------------------------


def test_schedule_create_and_list_show_the_runs_in_local_time_and_json_keeps_iso_instants(
    site: Site,
) -> None:
    # 08:00 at lake-home (New York) over the 2030 spring-forward day (Sunday 10 March).
    created = site.aiot(
        "enduser",
        "schedule",
        "create",
        "smart-home",
        "-l",
        "lake-home",
        "--times",
        "08:00",
        "--duration",
        "1h",
        "--start",
        "2030-03-09",
        "--end",
        "2030-03-11",
    ).output

    assert "next run 2030-03-09 08:00 EST (UTC-05:00) → 2030-03-09 09:00 EST (UTC-05:00)" in created
    assert "next run 2030-03-10 08:00 EDT (UTC-04:00) → 2030-03-10 09:00 EDT (UTC-04:00)" in created
    assert "next run 2030-03-11 08:00 EDT (UTC-04:00) → 2030-03-11 09:00 EDT (UTC-04:00)" in created
    assert "+00:00" not in created

    listed = site.aiot("enduser", "schedule", "list").output
    [row] = table_rows(listed, "smart-home")
    assert "2030-03-09 08:00 EST (UTC-05:00)" in row

    [document] = _json(site.aiot("enduser", "schedule", "list", "--json"))
    assert document["timezone"] == "America/New_York"
    starts = [datetime.fromisoformat(run["start"]) for run in document["next_runs"]]
    assert all(start.utcoffset() is not None for start in starts)  # ISO 8601 with an offset
    assert starts == [
        datetime(2030, 3, 9, 13, tzinfo=UTC),
        datetime(2030, 3, 10, 12, tzinfo=UTC),
        datetime(2030, 3, 11, 12, tzinfo=UTC),
    ]


# --- instances ----------------------------------------------------------------------------------


def test_the_scheduler_tells_the_deployer_the_zone_of_the_location(site: Site) -> None:
    topics = site.bus.topics
    with captured(site.bus, topics.deployer, DeployApp) as deploys, running(SchedulerService(site.settings)):
        before = datetime.now(UTC)
        schedule = _json(
            site.aiot(
                "enduser",
                "schedule",
                "create",
                "smart-home",
                "-l",
                "lake-home",
                "--now",
                "--duration",
                "10m",
                "--json",
            )
        )
        wait_for(lambda: bool(deploys), "the DeployApp of the run started now")

    [request] = deploys
    assert request.schedule_id == schedule["schedule_id"]
    assert (request.location, request.timezone) == ("lake-home", "America/New_York")
    assert request.stop_at is not None
    assert before + timedelta(minutes=10) - timedelta(seconds=5) <= request.stop_at


def deploy_request(instance_id: str, owner: str, timezone: str | None, stop_at: datetime) -> DeployApp:
    """A ``DeployApp`` as the scheduler sends it, for a run that ended already (so nothing is placed)."""
    return DeployApp(
        instance_id=instance_id,
        app_id=app_id_for("smart-home"),
        version="1.0.0",
        artifact_key="apps/smart-home/1.0.0.zip",
        artifact_sha256="0" * 64,
        manifest=AppManifest.model_validate_json(SMART_HOME.read_text()),
        location="lake-home",
        owner=owner,
        schedule_id="s0123456789a",
        stop_at=stop_at,
        timezone=timezone,
    )


def stopped_instance(
    site: Site, instance_id: str, owner: str, timezone: str | None, stop_at: datetime
) -> None:
    """Hand the running deployer a run whose end is past; return once it is recorded as stopped."""
    site.send(
        site.bus.topics.deployer, deploy_request(instance_id, owner, timezone, stop_at), key=instance_id
    )

    def stopped() -> bool:
        listed = _json(site.aiot("admin", "instance", "list", "--json"))
        return any(item["instance_id"] == instance_id and item["status"] == "stopped" for item in listed)

    wait_for(stopped, f"{instance_id} stopped by the deployer")


def test_the_deployer_keeps_the_zone_and_instance_list_shows_the_end_in_local_time(site: Site) -> None:
    stop_at = datetime(2026, 12, 6, 17, 30, tzinfo=UTC)
    with captured(site.bus, site.bus.topics.app_instances, InstanceEvent) as events:
        with running(DeployerService(site.settings)):
            stopped_instance(site, "s0123456789a-20261206163000", "enduser", "America/New_York", stop_at)
            stopped_instance(site, "s0123456789a-20261206163500", "enduser", None, stop_at)  # older scheduler
            listed = site.aiot("enduser", "instance", "list").output
            documents = {
                item["instance_id"]: item
                for item in _json(site.aiot("enduser", "instance", "list", "--json"))
            }
        wait_for(lambda: len(events) == 2, "the instances' events")

    [row] = table_rows(listed, "s0123456789a-20261206163000")
    assert "2026-12-06 12:30 EST (UTC-05:00)" in row
    [row] = table_rows(listed, "s0123456789a-20261206163500")
    assert "2026-12-06 17:30 UTC" in row
    header = next(line for line in listed.splitlines() if "until" in line)
    assert "address" in header

    document = documents["s0123456789a-20261206163000"]
    assert document["timezone"] == "America/New_York"
    assert datetime.fromisoformat(document["stop_at"]) == stop_at  # ISO 8601, with its offset
    assert datetime.fromisoformat(document["stop_at"]).utcoffset() is not None
    assert {event.instance_id: event.timezone for event in events} == {
        "s0123456789a-20261206163000": "America/New_York",
        "s0123456789a-20261206163500": None,
    }


# --- mail -------------------------------------------------------------------------------------


def test_the_running_mail_tells_the_stop_in_local_time_and_mail_list_shows_the_address(site: Site) -> None:
    url = "http://127.0.0.1:41234"
    event = InstanceEvent(
        instance_id="s0123456789a-20261206163000",
        app="smart-home",
        version="1.0.0",
        location="lake-home",
        owner="enduser",
        email="enduser@example.com",
        status="running",
        url=url,
        node_id="node-1",
        stop_at=datetime(2026, 12, 6, 17, 30, tzinfo=UTC),
        timezone="America/New_York",
        detail=f"on node-1 at {url}",
    )
    with running(SchedulerService(site.settings)):
        site.send(site.bus.topics.app_instances, event, key=event.instance_id)
        wait_for(lambda: bool(_json(site.aiot("enduser", "mail", "list", "--json"))), "the running mail")

    [mail] = _json(site.aiot("enduser", "mail", "list", "--json"))
    assert "It will stop at 2026-12-06 12:30 EST (UTC-05:00)." in mail["body"]
    assert mail["url"] == url
    table = site.aiot("enduser", "mail", "list").output
    assert "address" in table
    [row] = table_rows(table, "smart-home 1.0.0 is running at lake-home")
    assert url in row


def _json(result: Result) -> Any:
    return json.loads(result.stdout)
