"""Instants as people at a location read them: "2026-12-06 18:30 CET (UTC+01:00)".

The platform keeps and exchanges instants in UTC (the API's JSON gives them in ISO 8601 with
their offset); what it shows people — the ``aiot`` tables and the mails — is the wall-clock
time of the location's time zone, named, with its offset. A schedule carries the zone of its
location (``timezone``), and so do the app instances it starts and their events. Standard
library only, so the ``aiot`` command can import it at no cost.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone_or_utc(timezone: str | None) -> ZoneInfo:
    """The zone named ``timezone`` (IANA), or UTC when none is named or the name is unknown here."""
    if timezone:
        try:
            return ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def _offset(delta: timedelta | None) -> str:
    minutes = int((delta or timedelta(0)).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{rest:02d}"


def local_time(moment: datetime, timezone: str | None) -> str:
    """``moment`` in the zone ``timezone``: date, time to the minute, the zone's abbreviation, its offset.

    "2026-12-06 18:30 CET (UTC+01:00)"; in UTC itself "2026-12-06 17:30 UTC"; a zone whose
    abbreviation is only a number gets the offset alone ("2026-12-06 20:30 UTC+03:00"). A naive
    ``moment`` is taken as UTC; an unknown or missing ``timezone`` shows UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(zone_or_utc(timezone))
    offset = _offset(local.utcoffset())
    name = local.tzname() or ""
    shown = f"{local:%Y-%m-%d %H:%M}"
    if name == "UTC" and offset == "UTC+00:00":
        return f"{shown} UTC"
    if not name or name[0] in "+-" or name.isdigit():
        return f"{shown} {offset}"
    return f"{shown} {name} ({offset})"


def local_time_of(value: str | None, timezone: str | None, missing: str = "-") -> str:
    """``local_time`` of an ISO 8601 instant as the API gives it; ``missing`` for none."""
    if not value:
        return missing
    return local_time(datetime.fromisoformat(value), timezone)
