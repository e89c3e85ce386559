"""Reading collected logs through the front door (``GET /api/logs``) and printing them.

``aiot logs`` (one service or all), ``aiot model logs`` (every replica of a model) and
``aiot instance logs`` (an app instance's service) share ``print_logs`` and its options.
The logger answers one service per query: for several, each is asked and the records are
merged by time; every line names its service, or the label the caller gives it (a replica).
The front door answers only what the caller may read (``logger.scope``): a service they may
not read is a ``Forbidden`` naming it; every service's logs leave those out.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.text import Text

from aiot.client import PlatformClient
from aiot.output import out, print_json
from platform_sdk.settings import get_settings

LEVEL_STYLES = {
    "DEBUG": "dim",
    "INFO": "",
    "WARNING": "yellow",
    "ERROR": "red",
    "CRITICAL": "bold red",
}

LevelOption = Annotated[str | None, typer.Option(help="This level and above (DEBUG..CRITICAL).")]
SinceOption = Annotated[str | None, typer.Option(help="Like 10m, 2h, 1d, or an ISO time.")]
UntilOption = Annotated[str | None, typer.Option(help="Like 10m, 2h, 1d, or an ISO time.")]
GrepOption = Annotated[str | None, typer.Option(help="Only records containing this text.")]
LimitOption = Annotated[int, typer.Option(help="At most this many (the most recent).")]
FollowOption = Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records.")]


def _moment(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["time"])


def print_logs(
    client: PlatformClient,
    services: Sequence[str] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    level: str | None = None,
    since: str | None = None,
    until: str | None = None,
    grep: str | None = None,
    limit: int = 200,
    follow: bool = False,
    as_json: bool = False,
) -> None:
    """Print the records of ``services`` (None: every service's), oldest first, the last ``limit``.

    A service with a label in ``labels`` has it on its lines where its id would be, and its JSON
    records carry it as ``label``. ``follow`` keeps printing new records until interrupted.
    """
    params: dict[str, Any] = {"level": level, "since": since, "until": until, "grep": grep, "limit": limit}
    labels = labels or {}

    def read(query: dict[str, Any]) -> list[dict[str, Any]]:
        merged: list[dict[str, Any]] = []
        for service in [None] if services is None else services:
            for record in client.get("/api/logs", params={**query, "service": service})["records"]:
                label = labels.get(record["service_id"])
                merged.append({**record, "label": label} if label else record)
        if services is not None and len(services) > 1:
            merged.sort(key=_moment)
        return merged[-limit:]

    records = read(params)
    if as_json and not follow:
        print_json(records)
        return
    console = out()
    seen: set[tuple[str, str, str]] = set()

    def show(batch: list[dict[str, Any]]) -> None:
        for record in batch:
            key = (record["time"], record["service_id"], record["message"])
            if key in seen:
                continue
            seen.add(key)
            if as_json:
                sys.stdout.write(json.dumps(record) + "\n")
                continue
            name = record.get("label") or record["service_id"]
            head = f"{record['time']} {name:<12} {record['level']:<8} {record['logger']}"
            line = Text(f"{head}: {record['message']}", style=LEVEL_STYLES.get(record["level"], ""))
            console.print(line, soft_wrap=True)
            if record.get("exception"):
                console.print(record["exception"], markup=False, soft_wrap=True)

    show(records)
    while follow:
        time.sleep(get_settings().cli.follow_poll_s)
        newest = records[-1]["time"] if records else None
        records = read({**params, "since": newest or since}) or records
        show(records)
