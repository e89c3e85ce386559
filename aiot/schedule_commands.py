"""``aiot schedule ...``, ``aiot instance ...`` and ``aiot mail ...``: run apps at locations, see what runs.

Everything goes through the front door (``/api/schedules``, ``/api/instances``,
``/api/mails``, and ``/api/logs`` for ``instance logs``); ``schedule create --now --wait``
follows the new instance until it runs and prints its address. Tables show times in the
location's time zone, named with its offset ("2026-12-06 18:30 CET (UTC+01:00)"): schedules
and instances carry the zone (``timezone``) beside their UTC instants; ``--json`` prints the
API's documents as they are (ISO 8601 instants with their offset, and ``timezone``).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from aiot.client import PlatformClient
from aiot.log_reading import (
    FollowOption,
    GrepOption,
    LevelOption,
    LimitOption,
    SinceOption,
    UntilOption,
    print_logs,
)
from aiot.output import JsonOption, out, print_json
from deployer.messages import instance_service_id
from platform_sdk.errors import BadRequest, Forbidden, PlatformError, Timeout
from platform_sdk.settings import get_settings
from scheduler.local_time import local_time_of

schedule_app = typer.Typer(help="Schedules: run an app at a location at given times.", no_args_is_help=True)
instance_app = typer.Typer(help="App instances: what runs where.", no_args_is_help=True)
mail_app = typer.Typer(
    help="Mail the platform sent you (the outbox when no SMTP is set).", no_args_is_help=True
)


def _client() -> PlatformClient:
    return PlatformClient.from_settings(get_settings())


def _split(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


def schedule_document(
    app: str,
    location: str,
    *,
    version: str | None = None,
    now: bool = False,
    duration: str | None = None,
    start: str | None = None,
    end: str | None = None,
    times: str | None = None,
    window: str | None = None,
    every: str | None = None,
    first: str | None = None,
    days: str | None = None,
) -> dict[str, Any]:
    """The schedule document the options describe (the API checks it; see docs/scheduling.md)."""
    document: dict[str, Any] = {"app": app, "location": location}
    if version:
        document["version"] = version
    if now:
        document["now"] = True
    if window:
        begin, sep, finish = window.partition("-")
        if not sep:
            raise BadRequest(f"--window {window!r}: write it as START-END, e.g. 09:00-17:00")
        document["window"] = {"start": begin.strip(), "end": finish.strip()}
    optional = {
        "duration": duration,
        "start_date": start,
        "end_date": end,
        "times": _split(times),
        "every": every,
        "first": first,
        "days": _split(days),
    }
    document.update({key: value for key, value in optional.items() if value is not None})
    return document


@schedule_app.command("create")
def schedule_create(
    app: Annotated[str, typer.Argument(help="The app's name.")],
    location: Annotated[str, typer.Option("--location", "-l", help="Where it runs (its devices).")],
    now: Annotated[bool, typer.Option("--now", help="Start one run at once (with --duration).")] = False,
    duration: Annotated[
        str | None, typer.Option(help="How long each run lasts: 90s, 10m, 2h, 1h30m.")
    ] = None,
    start: Annotated[str | None, typer.Option("--start", help="First day, YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last day, YYYY-MM-DD (inclusive).")] = None,
    times: Annotated[str | None, typer.Option(help="Start times of day, HH:MM,HH:MM.")] = None,
    window: Annotated[str | None, typer.Option(help="A daily window START-END, e.g. 09:00-17:00.")] = None,
    every: Annotated[str | None, typer.Option(help="Start every N hours or minutes: 4h, 30m.")] = None,
    first: Annotated[str | None, typer.Option(help="With --every: the first start of the day.")] = None,
    days: Annotated[str | None, typer.Option(help="Days of the week: mon,tue,…; default every day.")] = None,
    version: Annotated[str | None, typer.Option(help="Pin an app version; default the latest.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="With --now: wait until it runs.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Schedule an app at a location (times are in the location's time zone)."""
    document = schedule_document(
        app,
        location,
        version=version,
        now=now,
        duration=duration,
        start=start,
        end=end,
        times=times,
        window=window,
        every=every,
        first=first,
        days=days,
    )
    client = _client()
    schedule = client.post("/api/schedules", json=document)
    if wait and now:
        schedule = wait_running(client, schedule["schedule_id"])
    if as_json:
        print_json(schedule)
        return
    out().print(f"schedule {schedule['schedule_id']}: {schedule['app']} at {schedule['location']}")
    zone = schedule.get("timezone")
    for run in schedule.get("next_runs", []):
        out().print(f"  next run {local_time_of(run['start'], zone)} → {local_time_of(run['end'], zone)}")
    for instance in schedule.get("instances", []):
        out().print(f"  instance {instance['instance_id']} {instance['status']} {instance['url']}")


def wait_running(client: PlatformClient, schedule_id: str) -> dict[str, Any]:
    console = out()
    wait_s = get_settings().cli.schedule_wait_s
    deadline = time.monotonic() + wait_s
    last_stage = ""
    with console.status("waiting for the scheduler to start it…") as status:
        while time.monotonic() < deadline:
            shown = client.get(f"/api/schedules/{schedule_id}")
            for instance in shown.get("instances", []):
                stages = instance.get("stages") or [{}]
                stage = stages[-1].get("stage", "")
                if stage != last_stage:
                    status.update(f"{instance['instance_id']}: {stage} {stages[-1].get('detail', '')}")
                    last_stage = stage
                if instance["status"] == "running":
                    return dict(shown)
                if instance["status"] == "failed":
                    raise PlatformError(f"{instance['instance_id']} failed: {instance['error']}")
            time.sleep(0.5)
    raise Timeout(f"schedule {schedule_id} has no running instance after {wait_s:.0f}s")


@schedule_app.command("schema")
def schedule_schema() -> None:
    """Print the JSON Schema of a schedule document (docs/schemas/schedule.schema.json is this output)."""
    from platform_sdk.artifacts import json_schema_document
    from scheduler.timetable import ScheduleSpec

    typer.echo(json_schema_document(ScheduleSpec, "schedule"), nl=False)


@schedule_app.command("list")
def schedule_list(as_json: JsonOption = False) -> None:
    """Your schedules (a platform configurer sees everyone's)."""
    schedules = _client().get("/api/schedules")["schedules"]
    if as_json:
        print_json(schedules)
        return
    table = Table("id", "app", "location", "status", "owner", "next run")
    for item in schedules:
        upcoming = local_time_of(
            item["next_runs"][0]["start"] if item["next_runs"] else None, item["timezone"]
        )
        table.add_row(
            item["schedule_id"], item["app"], item["location"], item["status"], item["owner"], upcoming
        )
    out().print(table)


@schedule_app.command("pause")
def schedule_pause(schedule_id: str) -> None:
    """No new runs until it is resumed."""
    _client().post(f"/api/schedules/{schedule_id}/pause")
    out().print(f"paused {schedule_id}")


@schedule_app.command("resume")
def schedule_resume(schedule_id: str) -> None:
    """Run a paused schedule again, from its next start time."""
    _client().post(f"/api/schedules/{schedule_id}/resume")
    out().print(f"resumed {schedule_id}")


@schedule_app.command("cancel")
def schedule_cancel(schedule_id: str) -> None:
    """No more runs; its running instances are stopped."""
    reply = _client().delete(f"/api/schedules/{schedule_id}")
    stopped = ", ".join(reply.get("stopped", [])) or "none running"
    out().print(f"cancelled {schedule_id} (stopped: {stopped})")


@instance_app.command("list")
def instance_list(as_json: JsonOption = False) -> None:
    """App instances with their node and address."""
    instances = _client().get("/api/instances")["instances"]
    if as_json:
        print_json(instances)
        return
    table = Table("instance", "app", "location", "status", "node", "address", "until")
    for item in instances:
        table.add_row(
            item["instance_id"],
            f"{item['app']} {item['version']}",
            item["location"],
            item["status"],
            item["node_id"] or "-",
            item["url"] or "-",
            local_time_of(item["stop_at"], item.get("timezone")),
        )
    out().print(table)


@instance_app.command("stop")
def instance_stop(instance_id: str) -> None:
    """Stop an app instance before its window ends."""
    reply = _client().post(f"/api/instances/{instance_id}/stop")
    out().print(f"{instance_id}: {reply['status']}")


@instance_app.command("logs")
def instance_logs(
    instance_id: Annotated[str, typer.Argument(help="The instance id, as `aiot instance list` shows it.")],
    level: LevelOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    grep: GrepOption = None,
    limit: LimitOption = 200,
    follow: FollowOption = False,
    as_json: JsonOption = False,
) -> None:
    """Collected logs of an app instance (its service's: the app's log and output lines)."""
    client = _client()
    try:
        service_id = client.get(f"/api/instances/{instance_id}").get("service_id")
    except Forbidden:
        # Someone else's run of your app: the logs route decides whether you read it.
        service_id = instance_service_id(instance_id)
    if not service_id:
        raise PlatformError(f"the deployer did not name the service of {instance_id}: is it up to date?")
    print_logs(
        client,
        [service_id],
        level=level,
        since=since,
        until=until,
        grep=grep,
        limit=limit,
        follow=follow,
        as_json=as_json,
    )


@mail_app.command("list")
def mail_list(as_json: JsonOption = False) -> None:
    """Mails to you, newest first (a platform configurer sees all)."""
    mails = _client().get("/api/mails")["mails"]
    if as_json:
        print_json(mails)
        return
    table = Table("sent", "to", "subject", "address", "status")
    for item in mails:
        table.add_row(
            item["created_at"], item["recipient"], item["subject"], item.get("url") or "-", item["status"]
        )
    out().print(table)
