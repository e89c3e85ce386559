"""The scheduler's timetable: what an end user's schedule document says, and when its runs are.

This module owns the schedule document (``ScheduleSpec``, published as a JSON Schema, described
in ``docs/scheduling.md``) and every computation of run times from it. It is pure: no database,
no bus, no clock (every function takes the instant it reasons about), so the service and the
front door use the same rules and the tests pin them down.

* ``ScheduleSpec.model_validate(document)`` checks a document on its own, its lists and dates
  bounded (at most ``MAX_TIMES`` times, seven days, dates from ``FIRST_DATE`` to ``LAST_DATE``,
  durations and steps that no clock overflows); ``validation_problems``
  turns the ``ValidationError`` into ``{"field", "reason"}`` entries (``times[1]``, ``window.end``).
* ``spec_problems(spec, tz, now)`` adds the checks that need the location's time zone and the
  clock (an unknown zone, a schedule whose last run is already over).
* ``next_run``, ``upcoming_run(s)``, ``runs_between`` and ``run_for_fire_time`` compute ``Run``s:
  UTC instants, with the daylight-saving rule of ``docs/scheduling.md`` applied.
* ``ScheduleTrigger`` is the APScheduler 3 trigger of a schedule's start job: its fire times are
  run starts; it pickles as plain data for the SQLAlchemy job store.
* ``still_worth_starting`` is the misfire policy: a start fired late still deploys while its run
  has not ended.

Times of day are wall-clock times of the location's time zone; durations are elapsed time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from itertools import islice, pairwise
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger  # type: ignore[import-untyped, unused-ignore]
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from platform_sdk.artifacts import VERSION_PATTERN
from platform_sdk.device_documents import DEVICE_NAME_PATTERN

APP_NAME_PATTERN = r"^[a-z][a-z0-9-]{1,47}$"
CLOCK_TIME_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d$"
# Units largest first, each at most once: "90s", "10m", "2h", "1h30m", "7d".
DURATION_PATTERN = r"^(?=\d)(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$"
EVERY_PATTERN = r"^([1-9]\d*)([hm])$"
MIN_DURATION = timedelta(seconds=10)
MAX_DURATION = timedelta(days=7)
# Bounds of the document's lists and dates (published in its JSON Schema): a time a minute is
# every start a day can have, and the dates leave room for a window past midnight.
MAX_TIMES = 24 * 60
FIRST_DATE = date(2000, 1, 1)
LAST_DATE = date(9998, 12, 31)
# Runs of `every` are counted within each day, so a step longer than a day would never repeat.
MAX_EVERY = timedelta(hours=24)

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_DAY_MINUTES = 24 * 60
# A run's start lies on its day or, for a window past midnight, the next one: looking two local
# days back from an instant finds every run that starts after it.
_START_LOOKBACK = timedelta(days=2)
# A run in progress may have started up to the longest duration before.
_RUN_LOOKBACK = MAX_DURATION + _START_LOOKBACK
_WHOLE_DOCUMENT = "(schedule)"


# --- the document -------------------------------------------------------------------------------


def _error(reason: str) -> PydanticCustomError:
    # The reason goes in as context, so braces in a user's value are not read as a template.
    return PydanticCustomError("schedule", "{reason}", {"reason": reason})


def parse_duration(text: str) -> timedelta:
    """``"1h30m"`` as a timedelta; ``ValueError`` when it is not that format."""
    match = re.fullmatch(DURATION_PATTERN, text)
    if match is None or len(text) > 32:
        raise ValueError(f"{_shown(text)} is not a duration like 90s, 10m, 2h or 1h30m")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"{_shown(text)} is longer than any duration") from None


def _shown(text: str) -> str:
    return '"' + (text if len(text) <= 32 else text[:16] + "…") + '"'


def format_duration(span: timedelta) -> str:
    """A timedelta in the duration format, e.g. ``1h30m`` (``0s`` for nothing)."""
    seconds = int(span.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _every_step(text: str) -> timedelta:
    match = re.fullmatch(EVERY_PATTERN, text)
    if match is None:
        raise ValueError(f"{_shown(text)} is not <N>h or <N>m")
    digits = match.group(1)
    count = int(digits) if len(digits) <= 6 else 10**6  # past MAX_EVERY either way
    return timedelta(hours=count) if match.group(2) == "h" else timedelta(minutes=count)


def _minutes(clock_time: str) -> int:
    hours, minutes = clock_time.split(":")
    return int(hours) * 60 + int(minutes)


def _check_clock_time(value: str) -> str:
    if re.fullmatch(CLOCK_TIME_PATTERN, value) is None:
        raise _error(f"{_shown(value)} is not HH:MM")
    return value


def _check_duration(value: str) -> str:
    try:
        span = parse_duration(value)
    except ValueError as exc:
        raise _error(str(exc)) from exc
    if span < MIN_DURATION:
        raise _error(f"at least {format_duration(MIN_DURATION)}")
    if span > MAX_DURATION:
        raise _error(f"at most {format_duration(MAX_DURATION)}")
    return value


def _check_every(value: str) -> str:
    try:
        step = _every_step(value)
    except ValueError as exc:
        raise _error(str(exc)) from exc
    if step > MAX_EVERY:
        raise _error("at most 24h (runs are counted within each day)")
    return value


_Problem = tuple[tuple[str | int, ...], str, Any]


def _fail(problems: list[_Problem]) -> None:
    """Raise the problems as one ``ValidationError``, each at its field's location.

    pydantic merges a ``ValidationError`` raised in a validator into the outer one, prefixing the
    locations, so ``end`` of the window is reported as ``window.end``.
    """
    raise ValidationError.from_exception_data(
        "ScheduleSpec",
        [InitErrorDetails(type=_error(reason), loc=loc, input=value) for loc, reason, value in problems],
    )


# The patterns are published in the JSON Schema; the validators enforce them with a reason that
# names the value, which a bare pattern mismatch would not.
ClockTime = Annotated[
    str, AfterValidator(_check_clock_time), Field(json_schema_extra={"pattern": CLOCK_TIME_PATTERN})
]
DurationText = Annotated[
    str, AfterValidator(_check_duration), Field(json_schema_extra={"pattern": DURATION_PATTERN})
]
EveryText = Annotated[str, AfterValidator(_check_every), Field(json_schema_extra={"pattern": EVERY_PATTERN})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Window(_Strict):
    """A span of each selected day, in the location's wall-clock time."""

    start: ClockTime = Field(description="Local time the window opens, HH:MM.")
    end: ClockTime = Field(
        description="Local time the window closes, HH:MM; earlier than start means the next day."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        if self.end == self.start:
            _fail([(("end",), "must differ from window.start", self.end)])
        return self

    def minutes(self) -> tuple[int, int]:
        """Opening and closing minute after the day's midnight; a close past midnight is >= 1440."""
        start, end = _minutes(self.start), _minutes(self.end)
        return start, end + _DAY_MINUTES if end < start else end


Mode = Literal["now", "window", "times", "every"]


class ScheduleSpec(_Strict):
    """An end user's schedule of an app on a location (docs/scheduling.md)."""

    app: str = Field(pattern=APP_NAME_PATTERN, description="The app's name.")
    version: str | None = Field(
        default=None,
        pattern=VERSION_PATTERN,
        max_length=32,
        description="The app version to run; the newest version at each start when omitted.",
    )
    location: str = Field(
        pattern=DEVICE_NAME_PATTERN,
        description="The location the app runs for; its time zone is the schedule's time zone.",
    )
    now: bool = Field(
        default=False,
        strict=True,
        description="Mode `now`: one run, starting when the schedule is created and lasting `duration`.",
    )
    window: Window | None = Field(
        default=None,
        description="Mode `window`: one run per selected day from window.start to window.end. "
        "With `every`: runs start inside the window only.",
    )
    times: list[ClockTime] | None = Field(
        default=None,
        max_length=MAX_TIMES,
        description="Mode `times`: a run starts at each of these local times of day, "
        'e.g. ["08:00", "20:00"].',
    )
    every: EveryText | None = Field(
        default=None,
        description='Mode `every`: runs start every "<N>h" or "<N>m" from `first`, counted in each '
        "selected day's wall-clock time.",
    )
    first: ClockTime | None = Field(
        default=None,
        description="With `every`: the first start of each day, HH:MM (default window.start, else 00:00).",
    )
    duration: DurationText | None = Field(
        default=None,
        description='How long each run lasts: "90s", "10m", "2h", "1h30m", "1d" (10s to 7d). '
        "Required with now, times and every; a window run lasts the window.",
    )
    start_date: date | None = Field(
        default=None,
        ge=FIRST_DATE,
        le=LAST_DATE,
        description="First day with runs, YYYY-MM-DD (required except with `now`).",
    )
    end_date: date | None = Field(
        default=None,
        ge=FIRST_DATE,
        le=LAST_DATE,
        description="Last day with runs, inclusive, YYYY-MM-DD (required except with `now`).",
    )
    days: list[Weekday] | None = Field(
        default=None,
        max_length=len(WEEKDAYS),
        description="The days of the week with runs, of mon..sun (default all; not used with `now`).",
    )

    @property
    def mode(self) -> Mode:
        """The mode the document is in (``every`` when it also has a window)."""
        if self.now:
            return "now"
        if self.every is not None:
            return "every"
        if self.times is not None:
            return "times"
        return "window"

    @model_validator(mode="after")
    def _consistent(self) -> ScheduleSpec:
        problems = self._mode_problems() or self._field_problems()
        if not problems and not self.now:  # a `now` run has no timetable to check
            problems = self._timetable_problems()
        if problems:
            _fail(problems)
        return self

    def _mode_problems(self) -> list[_Problem]:
        """Which mode the document is in, and the fields that mode requires or excludes."""
        if self.now:
            problems: list[_Problem] = [
                ((name,), "not used with now", getattr(self, name))
                for name in ("window", "times", "every", "first", "start_date", "end_date", "days")
                if getattr(self, name) is not None
            ]
            if self.duration is None:
                problems.append((("duration",), "required with now", None))
            return problems
        if self.window is None and self.times is None and self.every is None:
            return [((), "give one of now, window, times or every", None)]
        problems = []
        if self.times is not None and self.every is not None:
            problems.append((("every",), "cannot be combined with times", self.every))
        if self.times is not None and self.window is not None:
            problems.append((("window",), "cannot be combined with times", None))
        if self.first is not None and self.every is None:
            problems.append((("first",), "only used with every", self.first))
        mode = self.mode
        if mode == "window" and self.duration is not None:
            reason = "not used with window: a window run lasts from window.start to window.end"
            problems.append((("duration",), reason, self.duration))
        if mode != "window" and self.duration is None:
            problems.append((("duration",), f"required with {mode}", None))
        problems.extend(
            ((name,), f"required with {mode}", None)
            for name in ("start_date", "end_date")
            if getattr(self, name) is None
        )
        return problems

    def _field_problems(self) -> list[_Problem]:
        """The dates, days and times, each on its own terms."""
        problems: list[_Problem] = []
        if self.start_date is not None and self.end_date is not None and self.end_date < self.start_date:
            problems.append((("end_date",), "before start_date", self.end_date.isoformat()))
        if self.days is not None:
            if not self.days:
                problems.append((("days",), "must name at least one day", self.days))
            problems.extend(_repeats("days", self.days))
        if self.times is not None:
            if not self.times:
                problems.append((("times",), "must list at least one time", self.times))
            problems.extend(_repeats("times", self.times))
        return problems

    def _timetable_problems(self) -> list[_Problem]:
        """Checks of the wall-clock timetable; they assume the fields are consistent."""
        if self.every is not None and not _offsets(self):
            window = self.window
            assert window is not None  # only a window can leave no start in a day
            reason = f"no run starts inside the window {window.start}-{window.end} ({_every_text(self)})"
            return [(("every",), reason, self.every)]
        first_day, last_day = _date_range(self)
        # Two weeks hold every pair of consecutive starts a weekly pattern can have.
        horizon = min(last_day, first_day + timedelta(days=14))
        starts = [start for day in _days(first_day, horizon) for start in _wall_starts(self, day)]
        if not starts:
            return [(("days",), "no selected day falls between start_date and end_date", self.days)]
        if self.mode == "window":
            return []  # a window is shorter than a day, so it ends before the next day's opens
        duration = _duration(self)
        for earlier, later in pairwise(starts):
            if later - earlier < duration:
                reason = (
                    f"{format_duration(duration)} is longer than the {format_duration(later - earlier)} "
                    f"between the runs starting {earlier:%a %H:%M} and {later:%a %H:%M}; "
                    "a run must end before the next one starts"
                )
                return [(("duration",), reason, self.duration)]
        return []


def _repeats(name: str, values: Sequence[str]) -> list[_Problem]:
    problems: list[_Problem] = []
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            reason = f'"{value}" repeats {name}[{first[value]}]'
            problems.append(((name, index), reason, value))
        else:
            first[value] = index
    return problems


def validation_problems(error: ValidationError) -> list[dict[str, str]]:
    """A ``ValidationError`` of a schedule as ``{"field", "reason"}`` entries.

    Fields are paths into the document: ``window.end``, ``times[1]``; a problem of the whole
    document (no mode given) has the field ``(schedule)``.
    """
    problems = []
    for item in error.errors(include_url=False):
        field = ""
        for part in item["loc"]:
            if isinstance(part, int):
                field += f"[{part}]"
            else:
                field += f".{part}" if field else part
        reason = item["msg"].removeprefix("Value error, ")
        problems.append({"field": field or _WHOLE_DOCUMENT, "reason": reason})
    return problems


# --- the wall-clock timetable --------------------------------------------------------------------


def _date_range(spec: ScheduleSpec) -> tuple[date, date]:
    if spec.start_date is None or spec.end_date is None:
        raise ValueError("a `now` schedule has no dates")
    return spec.start_date, spec.end_date


def _duration(spec: ScheduleSpec) -> timedelta:
    if spec.duration is None:
        raise ValueError("a window schedule has no duration: its runs last the window")
    return parse_duration(spec.duration)


def _every_text(spec: ScheduleSpec) -> str:
    return f"every {spec.every} from {spec.first or (spec.window.start if spec.window else '00:00')}"


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def _offsets(spec: ScheduleSpec) -> list[int]:
    """The minutes after a selected day's local midnight at which its runs start, ascending.

    Wall-clock minutes: a window past midnight gives starts of 1440 and more (the next day).
    """
    if spec.times is not None:
        return sorted(_minutes(clock_time) for clock_time in spec.times)
    window = spec.window.minutes() if spec.window is not None else None
    if spec.every is None:
        assert window is not None  # the mode checks leave a window as the only other mode
        return [window[0]]
    step = int(_every_step(spec.every).total_seconds()) // 60
    low, high = window if window is not None else (0, _DAY_MINUTES)
    first = _minutes(spec.first) if spec.first is not None else low
    # The grid first, first + step, ... restricted to [low, high).
    skipped = max(0, -(-(low - first) // step))
    return list(range(first + skipped * step, high, step))


def _wall_starts(spec: ScheduleSpec, day: date) -> list[datetime]:
    """The naive local start times of the runs that belong to ``day``."""
    first_day, last_day = _date_range(spec)
    if not first_day <= day <= last_day or WEEKDAYS[day.weekday()] not in (spec.days or WEEKDAYS):
        return []
    midnight = datetime(day.year, day.month, day.day)
    return [midnight + timedelta(minutes=offset) for offset in _offsets(spec)]


# --- instants ------------------------------------------------------------------------------------


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r} (IANA names like Europe/Berlin)") from exc


def _aware(instant: datetime, name: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {instant!r}")
    return instant.astimezone(UTC)


def local_to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """The instant a naive wall-clock time of ``zone`` names, by the daylight-saving rule.

    An ambiguous time (the hour repeated when clocks go back) is its first occurrence; a time
    that does not exist (the hour skipped when clocks go forward) is the first instant after
    the gap, e.g. 02:30 on the spring-forward day in New York is 03:00 EDT.
    """
    instant = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == local:
        return instant
    # In a gap, fold=0 reads the time with the offset from before the transition (an instant past
    # it) and fold=1 with the offset after (an instant before it): the transition lies between.
    before = int(local.replace(tzinfo=zone, fold=1).timestamp())
    after = int(instant.timestamp())
    offset_after = datetime.fromtimestamp(after, zone).utcoffset()
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset_after:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


@dataclass(frozen=True)
class Run:
    """One run of a schedule: its app instance is live from ``start`` until ``end``."""

    start: datetime  # UTC, aware
    end: datetime  # UTC, aware
    local_start: datetime  # the same instant in the location's time zone, for people


def _natural_runs(spec: ScheduleSpec, zone: ZoneInfo, from_day: date) -> Iterator[tuple[datetime, datetime]]:
    """(start, end) of the runs of the days from ``from_day`` on, before overlaps are settled."""
    first_day, last_day = _date_range(spec)
    # A window closes at its wall-clock time, so it is an hour shorter or longer on a
    # daylight-saving day; the other modes last their duration of elapsed time.
    wall_length = None
    if spec.mode == "window" and spec.window is not None:
        opens, closes = spec.window.minutes()
        wall_length = timedelta(minutes=closes - opens)
    duration = _duration(spec) if wall_length is None else timedelta(0)
    for day in _days(max(from_day, first_day), last_day):
        for local in _wall_starts(spec, day):
            start = local_to_utc(local, zone)
            end = local_to_utc(local + wall_length, zone) if wall_length is not None else start + duration
            yield start, end


def _runs(spec: ScheduleSpec, zone: ZoneInfo, since: datetime, lookback: timedelta) -> Iterator[Run]:
    """The runs in start order, from those of the local day ``lookback`` before ``since``.

    The daylight-saving rule can move starts onto one instant (several times in the skipped
    hour) or bring a start before the previous run's end (the day is an hour short): a start
    runs once, and a run ends no later than the next one starts.
    """
    from_day = (since - lookback).astimezone(zone).date()
    pending: Run | None = None
    for start, end in _natural_runs(spec, zone, from_day):
        if end <= start:
            continue  # a window that lies wholly in a skipped hour
        if pending is not None:
            if start <= pending.start:
                continue
            yield replace(pending, end=min(pending.end, start))
        pending = Run(start=start, end=end, local_start=start.astimezone(zone))
    if pending is not None:
        yield pending


def _now_run(spec: ScheduleSpec, zone: ZoneInfo, created_at: datetime | None) -> Run:
    if created_at is None:
        raise ValueError("a `now` schedule runs from its creation: pass created_at")
    start = _aware(created_at, "created_at")
    return Run(start=start, end=start + _duration(spec), local_start=start.astimezone(zone))


def _timetable(
    spec: ScheduleSpec, zone: ZoneInfo, since: datetime, lookback: timedelta, created_at: datetime | None
) -> Iterator[Run]:
    if spec.now:
        return iter([_now_run(spec, zone, created_at)])
    return _runs(spec, zone, since, lookback)


# --- the public timetable -------------------------------------------------------------------------


def next_run(spec: ScheduleSpec, tz: str, after: datetime, created_at: datetime | None = None) -> Run | None:
    """The first run whose start is strictly after ``after``; None when the schedule is over.

    ``created_at`` is the schedule's creation, the start of a ``now`` schedule's only run; the
    other modes ignore it.
    """
    after = _aware(after, "after")
    return next(
        (run for run in _timetable(spec, _zone(tz), after, _START_LOOKBACK, created_at) if run.start > after),
        None,
    )


def _unended(spec: ScheduleSpec, tz: str, now: datetime, created_at: datetime | None) -> Iterator[Run]:
    now = _aware(now, "now")
    return (run for run in _timetable(spec, _zone(tz), now, _RUN_LOOKBACK, created_at) if run.end > now)


def upcoming_run(
    spec: ScheduleSpec, tz: str, now: datetime, created_at: datetime | None = None
) -> Run | None:
    """The run in progress at ``now`` (started, not ended), else the next one; None when over."""
    return next(_unended(spec, tz, now, created_at), None)


def upcoming_runs(
    spec: ScheduleSpec, tz: str, created_at: datetime | None, now: datetime, count: int
) -> list[Run]:
    """Up to ``count`` runs that have not ended at ``now``, the one in progress first."""
    return list(islice(_unended(spec, tz, now, created_at), count))


def runs_between(
    spec: ScheduleSpec, tz: str, start: datetime, end: datetime, created_at: datetime | None = None
) -> list[Run]:
    """The runs that start in [``start``, ``end``), in start order."""
    start, end = _aware(start, "start"), _aware(end, "end")
    found = []
    for run in _timetable(spec, _zone(tz), start, _START_LOOKBACK, created_at):
        if run.start >= end:
            break
        if run.start >= start:
            found.append(run)
    return found


def run_for_fire_time(
    spec: ScheduleSpec, tz: str, fire_time: datetime, created_at: datetime | None = None
) -> Run:
    """The run that starts at ``fire_time`` (a fire time of the schedule's trigger).

    ``ValueError`` when no run starts then: the schedule was changed since the time was planned.
    """
    fire_time = _aware(fire_time, "fire_time")
    for run in _timetable(spec, _zone(tz), fire_time, _START_LOOKBACK, created_at):
        if run.start == fire_time:
            return run
        if run.start > fire_time:
            break
    raise ValueError(f"no run of this schedule starts at {fire_time.isoformat()}")


def still_worth_starting(run: Run, now: datetime) -> bool:
    """The misfire policy: a start fired late still deploys while its run has not ended."""
    return _aware(now, "now") < run.end


def spec_problems(spec: ScheduleSpec, tz: str, now: datetime) -> list[dict[str, str]]:
    """What is wrong with a valid document at a location of zone ``tz`` at ``now``.

    An unknown time zone (field ``location``), or nothing left to run: the last run has ended
    (field ``end_date``). A ``now`` schedule is created at ``now``, so its run is ahead.
    """
    try:
        zone = _zone(tz)
    except ValueError as exc:
        return [{"field": "location", "reason": f"its time zone: {exc}"}]
    if spec.now or upcoming_run(spec, tz, now) is not None:
        return []
    _, last_day = _date_range(spec)
    # The last selected day is at most a week before end_date; its run may end the day after.
    end_of_range = local_to_utc(datetime(last_day.year, last_day.month, last_day.day), zone)
    last = None
    for run in _runs(spec, zone, end_of_range, timedelta(days=8)):
        last = run
    if last is None:
        return [{"field": "end_date", "reason": "nothing is left to run"}]
    ended = last.end.astimezone(zone)
    return [
        {
            "field": "end_date",
            "reason": f"the last run ended {ended:%Y-%m-%d %H:%M} ({tz}): nothing is left to run",
        }
    ]


# --- the APScheduler trigger ----------------------------------------------------------------------


class ScheduleTrigger(BaseTrigger):  # type: ignore[misc]
    """Fires at the starts of a schedule's runs (APScheduler 3).

    Holds only plain data (the document as JSON, the zone's name, the creation instant), so a
    job pickled into the SQLAlchemy job store loads again under a newer version of this module.
    Added (or resumed) while a run is in progress, it fires at that run's start, which is past:
    the scheduler fires it at once, and ``still_worth_starting`` decides.
    """

    __slots__ = ("_created_at", "_spec", "_spec_json", "_tz")
    _STATE_VERSION = 1

    def __init__(self, spec_json: str, tz: str, created_at: datetime) -> None:
        self._load(spec_json, tz, created_at)

    def _load(self, spec_json: str, tz: str, created_at: datetime) -> None:
        self._spec = ScheduleSpec.model_validate_json(spec_json)
        _zone(tz)  # an unknown zone fails here, not at the first fire time
        self._spec_json = spec_json
        self._tz = tz
        self._created_at = _aware(created_at, "created_at")

    @property
    def spec(self) -> ScheduleSpec:
        return self._spec

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is None:
            run = upcoming_run(self._spec, self._tz, now, self._created_at)
        else:
            run = next_run(self._spec, self._tz, previous_fire_time, self._created_at)
        return None if run is None else run.start

    def __getstate__(self) -> dict[str, object]:
        return {
            "version": self._STATE_VERSION,
            "spec": self._spec_json,
            "tz": self._tz,
            "created_at": self._created_at,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("version", 1) > self._STATE_VERSION:
            raise ValueError(
                f"a ScheduleTrigger of state version {state['version']} was stored by a newer "
                f"scheduler; this one reads version {self._STATE_VERSION}"
            )
        self._load(state["spec"], state["tz"], state["created_at"])

    def __str__(self) -> str:
        return f"schedule[{self._spec.mode}, {self._tz}]"

    def __repr__(self) -> str:
        return f"<ScheduleTrigger ({self._spec.mode}, tz={self._tz!r})>"
