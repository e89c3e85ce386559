"""Where collected log records live: JSON Lines in the blob store, one folder per service per hour.

Layout: ``logs/<service>/<YYYY-MM-DD>/<HH>/<first-record-time>-<id>.jsonl`` (UTC).
Each flush of the logger service writes one part file per service and hour
(blobs are written whole, never appended, so a reader never sees a torn
line). A query lists only the folders of the services and hours it asks for,
then filters by level, time and text.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field, field_validator

from platform_core.blobstore import BlobStore
from platform_sdk.errors import BadRequest
from platform_sdk.messages import LogRecord

ROOT = "logs/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PART = re.compile(r"^logs/(?P<service>[^/]+)/(?P<day>\d{4}-\d{2}-\d{2})/(?P<hour>\d{2})/[^/]+\.jsonl$")
_RELATIVE = re.compile(r"^(?P<amount>\d+)(?P<unit>[smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_LIMIT = 10_000


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """``"10m"``/``"2h"``/``"1d"`` ago, or an ISO 8601 time (UTC when no zone is given), in UTC.

    ``BadRequest`` for anything else, and for a time before year 1 or after year 9999 (``99999999d``).
    """
    text = value.strip()
    shown = repr(text if len(text) <= 40 else f"{text[:20]}…")
    relative = _RELATIVE.match(text)
    try:
        if relative:
            delta = timedelta(**{_UNITS[relative["unit"]]: int(relative["amount"])})
            return (now or datetime.now(UTC)) - delta
        parsed = datetime.fromisoformat(text)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError:  # also int() of a number of thousands of digits
        raise BadRequest(f"time {shown} is neither like '10m', '2h', '1d' nor ISO 8601") from None
    except OverflowError:
        raise BadRequest(f"time {shown} is out of range (years 1 to 9999)") from None


def level_rank(level: str) -> int:
    """Position in ``LEVELS``; custom levels rank with DEBUG."""
    return LEVELS.index(level) if level in LEVELS else 0


def service_folder(service_id: str) -> str:
    return _UNSAFE.sub("_", service_id) or "_"


class LogQuery(BaseModel):
    """Which records to return; every field narrows the answer."""

    service: str | None = Field(default=None, description="Only this service id.")
    level: str | None = Field(default=None, description="This level and above.")
    since: datetime | None = Field(default=None, description="At or after this time.")
    until: datetime | None = Field(default=None, description="Before this time.")
    grep: str | None = Field(
        default=None, description="Case-insensitive text in message, logger or exception."
    )
    limit: int = Field(default=1000, ge=1, le=MAX_LIMIT, description="The most recent N matches.")

    @field_validator("level")
    @classmethod
    def known_level(cls, level: str | None) -> str | None:
        if level is None:
            return None
        upper = level.upper()
        if upper not in LEVELS:
            raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
        return upper

    @field_validator("since", "until", mode="before")
    @classmethod
    def readable_time(cls, value: object) -> object:
        return parse_time(value) if isinstance(value, str) else value

    def matches(self, record: LogRecord) -> bool:
        if self.level and level_rank(record.level) < level_rank(self.level):
            return False
        if self.since and record.time < self.since:
            return False
        if self.until and record.time >= self.until:
            return False
        if self.grep:
            needle = self.grep.lower()
            haystack = f"{record.message}\n{record.logger}\n{record.exception or ''}".lower()
            if needle not in haystack:
                return False
        return True

    def wants_hour(self, hour_start: datetime) -> bool:
        hour_end = hour_start + timedelta(hours=1)
        if self.since and hour_end <= self.since:
            return False
        return not (self.until and hour_start >= self.until)


class LogStore:
    """Reads and writes collected log records in a blob store."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def append(self, records: Iterable[LogRecord]) -> int:
        """Write records as one part per service and hour; returns how many parts were written."""
        groups: dict[str, list[LogRecord]] = defaultdict(list)
        for record in records:
            hour = record.time.astimezone(UTC).strftime("%Y-%m-%d/%H")
            groups[f"{ROOT}{service_folder(record.service_id)}/{hour}/"].append(record)
        for folder, group in groups.items():
            group.sort(key=lambda record: record.time)
            first = group[0].time.astimezone(UTC).strftime("%Y%m%dT%H%M%S%f")
            body = "".join(record.model_dump_json() + "\n" for record in group)
            self.blobs.put(f"{folder}{first}-{uuid.uuid4().hex[:8]}.jsonl", body.encode())
        return len(groups)

    def services(self) -> list[str]:
        return sorted({match["service"] for match in self._parts(ROOT)})

    def _parts(self, prefix: str) -> list[re.Match[str]]:
        return [match for info in self.blobs.list(prefix) if (match := _PART.match(info.key))]

    def query(self, query: LogQuery) -> list[LogRecord]:
        """Matching records, oldest first: the most recent ``query.limit`` of them."""
        prefix = f"{ROOT}{service_folder(query.service)}/" if query.service else ROOT
        found: list[LogRecord] = []
        for part in self._parts(prefix):
            hour_start = datetime.fromisoformat(f"{part['day']}T{part['hour']}:00:00+00:00")
            if not query.wants_hour(hour_start):
                continue
            for line in self.blobs.get(part.string).splitlines():
                try:
                    record = LogRecord.model_validate_json(line)
                except ValueError:
                    logging.getLogger(__name__).warning("skipping an unreadable line in %s", part.string)
                    continue
                if query.matches(record):
                    found.append(record)
        found.sort(key=lambda record: record.time)
        return found[-query.limit :]
