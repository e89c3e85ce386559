"""The schedule document and its timetable (scheduler.timetable): pure computations, explicit clocks."""

from __future__ import annotations

import pickle
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.job import Job  # type: ignore[import-untyped, unused-ignore]
from pydantic import ValidationError

from scheduler.timetable import (
    Run,
    ScheduleSpec,
    ScheduleTrigger,
    format_duration,
    next_run,
    parse_duration,
    run_for_fire_time,
    runs_between,
    spec_problems,
    still_worth_starting,
    upcoming_run,
    upcoming_runs,
    validation_problems,
)

BERLIN = "Europe/Berlin"  # UTC+2 in June 2026
LONDON = "Europe/London"  # clocks forward 2026-03-29 01:00 GMT, back 2026-10-25 02:00 BST
NEW_YORK = "America/New_York"  # clocks forward 2026-03-08 02:00 EST, back 2026-11-01 02:00 EDT
CREATED = datetime(2026, 5, 20, tzinfo=UTC)  # when the triggers' schedules were made
WEEK = {"start_date": "2026-06-01", "end_date": "2026-06-07"}  # Monday to Sunday


def utc(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def spec(**fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"app": "smart-home", "location": "home", **fields})


def starts(runs: list[Run]) -> list[datetime]:
    return [run.start for run in runs]


def spans(runs: list[Run]) -> list[tuple[datetime, datetime]]:
    return [(run.start, run.end) for run in runs]


def problems_of(**fields: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    return validation_problems(caught.value)


def the_week(schedule: ScheduleSpec, tz: str = BERLIN) -> list[Run]:
    return runs_between(schedule, tz, utc(5, 25), utc(6, 15))


# --- each mode over a week ----------------------------------------------------------------------


def test_times_start_a_run_at_each_time_of_each_day() -> None:
    runs = the_week(spec(times=["20:00", "08:00"], duration="1h30m", **WEEK))
    assert len(runs) == 14
    assert spans(runs[:3]) == [
        (utc(6, 1, 6), utc(6, 1, 7, 30)),
        (utc(6, 1, 18), utc(6, 1, 19, 30)),
        (utc(6, 2, 6), utc(6, 2, 7, 30)),
    ]
    assert runs[-1].start == utc(6, 7, 18)
    assert runs[0].local_start.isoformat() == "2026-06-01T08:00:00+02:00"


def test_a_window_runs_once_a_day_and_may_close_the_next_day() -> None:
    runs = the_week(spec(window={"start": "22:00", "end": "06:00"}, **WEEK))
    assert len(runs) == 7
    assert spans(runs[:2]) == [(utc(6, 1, 20), utc(6, 2, 4)), (utc(6, 2, 20), utc(6, 3, 4))]
    # The last selected day's window opens on end_date and closes after it.
    assert spans(runs[-1:]) == [(utc(6, 7, 20), utc(6, 8, 4))]


def test_every_counts_from_midnight_each_day() -> None:
    runs = the_week(spec(every="6h", duration="1h", **WEEK))
    assert len(runs) == 28
    # 00:00, 06:00, 12:00, 18:00 in Berlin.
    assert starts(runs[:5]) == [utc(5, 31, 22), utc(6, 1, 4), utc(6, 1, 10), utc(6, 1, 16), utc(6, 1, 22)]
    assert {run.end - run.start for run in runs} == {timedelta(hours=1)}


def test_every_counts_from_first() -> None:
    runs = the_week(spec(every="8h", first="07:30", duration="10m", **WEEK))
    # 07:30, 15:30, 23:30 local: the next would be past midnight, where the day's counting restarts.
    assert [run.local_start.strftime("%H:%M") for run in runs[:4]] == ["07:30", "15:30", "23:30", "07:30"]
    assert len(runs) == 21


def test_every_inside_a_window_starts_only_inside_it() -> None:
    runs = the_week(spec(every="90m", window={"start": "09:00", "end": "12:00"}, duration="30m", **WEEK))
    # 09:00 and 10:30: 12:00 is the window's close, not inside it.
    assert spans(runs[:3]) == [
        (utc(6, 1, 7), utc(6, 1, 7, 30)),
        (utc(6, 1, 8, 30), utc(6, 1, 9)),
        (utc(6, 2, 7), utc(6, 2, 7, 30)),
    ]
    assert len(runs) == 14


def test_every_inside_a_window_past_midnight_counts_from_first() -> None:
    schedule = spec(
        every="1h", first="00:00", window={"start": "22:30", "end": "02:00"}, duration="20m", **WEEK
    )
    runs = the_week(schedule)
    # On the 00:00 grid, inside 22:30-02:00: 23:00, then 00:00 and 01:00 of the next day.
    assert [run.local_start.strftime("%d %H:%M") for run in runs[:4]] == [
        "01 23:00",
        "02 00:00",
        "02 01:00",
        "02 23:00",
    ]
    assert runs[-1].local_start.isoformat() == "2026-06-08T01:00:00+02:00"


def test_now_is_one_run_from_creation() -> None:
    schedule = spec(now=True, duration="10m")
    created = utc(6, 1, 9, 15)
    assert upcoming_run(schedule, BERLIN, created, created) == Run(
        created, created + timedelta(minutes=10), created.astimezone(ZoneInfo(BERLIN))
    )
    assert next_run(schedule, BERLIN, created - timedelta(seconds=1), created) is not None
    assert next_run(schedule, BERLIN, created, created) is None
    assert upcoming_run(schedule, BERLIN, created + timedelta(minutes=10), created) is None
    with pytest.raises(ValueError, match="created_at"):
        next_run(schedule, BERLIN, created)


# --- days and dates -----------------------------------------------------------------------------


def test_days_select_the_weekdays_with_runs() -> None:
    runs = the_week(spec(times=["12:00"], duration="1h", days=["fri", "mon", "wed"], **WEEK))
    assert [run.local_start.strftime("%a %d") for run in runs] == ["Mon 01", "Wed 03", "Fri 05"]


def test_the_dates_are_inclusive() -> None:
    schedule = spec(times=["12:00"], duration="1h", start_date="2026-06-03", end_date="2026-06-04")
    assert starts(the_week(schedule)) == [utc(6, 3, 10), utc(6, 4, 10)]
    assert next_run(schedule, BERLIN, utc(6, 4, 10)) is None
    assert next_run(schedule, BERLIN, utc(1, 1)) == the_week(schedule)[0]


def test_next_run_is_strictly_after() -> None:
    schedule = spec(times=["08:00", "20:00"], duration="1h", **WEEK)
    found = next_run(schedule, BERLIN, utc(6, 2, 6))
    assert found is not None
    assert found.start == utc(6, 2, 18)
    found = next_run(schedule, BERLIN, utc(6, 2, 5, 59))
    assert found is not None
    assert found.start == utc(6, 2, 6)


def test_upcoming_run_is_the_one_in_progress() -> None:
    schedule = spec(times=["08:00"], duration="3d", days=["mon"], **WEEK)
    in_progress = upcoming_run(schedule, BERLIN, utc(6, 3, 12))
    assert in_progress is not None
    assert (in_progress.start, in_progress.end) == (utc(6, 1, 6), utc(6, 4, 6))
    assert upcoming_run(schedule, BERLIN, utc(6, 4, 6)) is None


def test_upcoming_runs_lists_the_run_in_progress_first() -> None:
    schedule = spec(times=["08:00", "20:00"], duration="1h", **WEEK)
    runs = upcoming_runs(schedule, BERLIN, None, utc(6, 7, 6, 30), 3)
    # Sunday 08:00 is in progress and 20:00 is the last run of the week.
    assert starts(runs) == [utc(6, 7, 6), utc(6, 7, 18)]
    assert upcoming_runs(schedule, BERLIN, None, utc(6, 1), 3) == the_week(schedule)[:3]


def test_times_are_the_locations_wall_clock() -> None:
    schedule = spec(times=["08:00"], duration="1h", start_date="2026-06-01", end_date="2026-06-01")
    assert starts(runs_between(schedule, NEW_YORK, utc(6, 1), utc(6, 3))) == [utc(6, 1, 12)]
    assert starts(runs_between(schedule, "UTC", utc(6, 1), utc(6, 3))) == [utc(6, 1, 8)]


def test_naive_instants_are_refused() -> None:
    schedule = spec(times=["08:00"], duration="1h", **WEEK)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_run(schedule, BERLIN, datetime(2026, 6, 1))


# --- daylight saving ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "clock_time", "expected"),
    [
        # 02:30 does not exist in New York on 2026-03-08: the run starts at 03:00 EDT.
        (NEW_YORK, date(2026, 3, 8), "02:30", utc(3, 8, 7)),
        # 01:30 does not exist in London on 2026-03-29: the run starts at 02:00 BST.
        (LONDON, date(2026, 3, 29), "01:30", utc(3, 29, 1)),
        # 01:30 happens twice in New York on 2026-11-01: the run starts at the first, EDT.
        (NEW_YORK, date(2026, 11, 1), "01:30", utc(11, 1, 5, 30)),
        # 01:30 happens twice in London on 2026-10-25: the run starts at the first, BST.
        (LONDON, date(2026, 10, 25), "01:30", utc(10, 25, 0, 30)),
    ],
)
def test_a_daylight_saving_day_runs_each_start_once(
    tz: str, day: date, clock_time: str, expected: datetime
) -> None:
    schedule = spec(times=[clock_time], duration="20m", start_date=day.isoformat(), end_date=day.isoformat())
    runs = runs_between(schedule, tz, expected - timedelta(days=1), expected + timedelta(days=1))
    assert spans(runs) == [(expected, expected + timedelta(minutes=20))]


def test_the_days_around_a_gap_keep_their_times() -> None:
    schedule = spec(times=["02:30"], duration="1h", start_date="2026-03-07", end_date="2026-03-09")
    runs = runs_between(schedule, NEW_YORK, utc(3, 1), utc(3, 15))
    assert starts(runs) == [utc(3, 7, 7, 30), utc(3, 8, 7), utc(3, 9, 6, 30)]


def test_durations_are_elapsed_time_across_a_change() -> None:
    schedule = spec(times=["01:00"], duration="3h", start_date="2026-03-08", end_date="2026-03-08")
    (run,) = runs_between(schedule, NEW_YORK, utc(3, 7), utc(3, 9))
    assert (run.start, run.end) == (utc(3, 8, 6), utc(3, 8, 9))
    assert run.end.astimezone(ZoneInfo(NEW_YORK)).strftime("%H:%M") == "05:00"


def test_a_window_keeps_its_wall_clock_ends_across_a_change() -> None:
    spring = spec(window={"start": "00:00", "end": "06:00"}, start_date="2026-03-08", end_date="2026-03-08")
    assert spans(runs_between(spring, NEW_YORK, utc(3, 7), utc(3, 9))) == [(utc(3, 8, 5), utc(3, 8, 10))]
    autumn = spec(window={"start": "00:00", "end": "06:00"}, start_date="2026-10-25", end_date="2026-10-25")
    assert spans(runs_between(autumn, LONDON, utc(10, 24), utc(10, 26))) == [
        (utc(10, 24, 23), utc(10, 25, 6))
    ]


@pytest.mark.parametrize(
    ("tz", "day", "expected"),
    [
        (NEW_YORK, "2026-03-08", [utc(3, 8, 5), utc(3, 8, 10), utc(3, 8, 16), utc(3, 8, 22)]),
        (NEW_YORK, "2026-11-01", [utc(11, 1, 4), utc(11, 1, 11), utc(11, 1, 17), utc(11, 1, 23)]),
        (LONDON, "2026-03-29", [utc(3, 29, 0), utc(3, 29, 5), utc(3, 29, 11), utc(3, 29, 17)]),
        (LONDON, "2026-10-25", [utc(10, 24, 23), utc(10, 25, 6), utc(10, 25, 12), utc(10, 25, 18)]),
    ],
)
def test_every_counts_wall_clock_hours_on_a_change_day(tz: str, day: str, expected: list[datetime]) -> None:
    schedule = spec(every="6h", duration="1h", start_date=day, end_date=day)
    runs = runs_between(schedule, tz, expected[0] - timedelta(days=1), expected[0] + timedelta(days=2))
    assert starts(runs) == expected
    assert [run.local_start.strftime("%H:%M") for run in runs] == ["00:00", "06:00", "12:00", "18:00"]


def test_starts_moved_onto_one_instant_by_a_gap_run_once() -> None:
    schedule = spec(
        times=["01:15", "01:45", "02:00"], duration="10m", start_date="2026-03-29", end_date="2026-03-29"
    )
    # 01:15 and 01:45 do not exist: both move to 02:00 BST, which is also the third start.
    assert spans(runs_between(schedule, LONDON, utc(3, 28), utc(3, 30))) == [
        (utc(3, 29, 1), utc(3, 29, 1, 10))
    ]


def test_a_run_ends_when_the_next_starts_on_a_short_day() -> None:
    schedule = spec(times=["00:30", "01:30"], duration="1h", start_date="2026-03-29", end_date="2026-03-29")
    # 01:30 moves to 02:00 BST (01:00 UTC), half an hour into the 00:30 GMT run: that run ends there.
    assert spans(runs_between(schedule, LONDON, utc(3, 28), utc(3, 30))) == [
        (utc(3, 29, 0, 30), utc(3, 29, 1)),
        (utc(3, 29, 1), utc(3, 29, 2)),
    ]


def test_a_window_wholly_in_the_skipped_hour_does_not_run_that_day() -> None:
    schedule = spec(window={"start": "01:10", "end": "01:50"}, start_date="2026-03-28", end_date="2026-03-30")
    runs = runs_between(schedule, LONDON, utc(3, 27), utc(3, 31))
    assert [run.local_start.strftime("%d %H:%M") for run in runs] == ["28 01:10", "30 01:10"]


# --- documents that are refused -----------------------------------------------------------------


def test_a_valid_document_has_no_problems() -> None:
    schedule = spec(times=["08:00"], duration="1h", **WEEK)
    assert spec_problems(schedule, BERLIN, utc(6, 1)) == []
    assert spec_problems(spec(now=True, duration="10m"), BERLIN, utc(6, 1)) == []


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        (
            {"window": {"start": "08:00", "end": "08:00"}, **WEEK},
            "window.end",
            "must differ from window.start",
        ),
        ({"window": {"start": "8:00", "end": "09:00"}, **WEEK}, "window.start", '"8:00" is not HH:MM'),
        (
            {
                "times": ["08:00", "09:00"],
                "duration": "1h",
                "start_date": "2026-06-02",
                "end_date": "2026-06-01",
            },
            "end_date",
            "before start_date",
        ),
        ({"times": ["08:00", "25:00"], "duration": "1h", **WEEK}, "times[1]", '"25:00" is not HH:MM'),
        (
            {"times": ["08:00", "20:00", "08:00"], "duration": "1h", **WEEK},
            "times[2]",
            '"08:00" repeats times[0]',
        ),
        ({"times": [], "duration": "1h", **WEEK}, "times", "must list at least one time"),
        ({**WEEK}, "(schedule)", "give one of now, window, times or every"),
        (
            {"times": ["08:00"], "every": "2h", "duration": "1h", **WEEK},
            "every",
            "cannot be combined with times",
        ),
        (
            {"times": ["08:00"], "window": {"start": "08:00", "end": "09:00"}, "duration": "1h", **WEEK},
            "window",
            "cannot be combined with times",
        ),
        ({"now": True, "duration": "1h", "start_date": "2026-06-01"}, "start_date", "not used with now"),
        ({"now": True, "duration": "1h", "days": ["mon"]}, "days", "not used with now"),
        ({"now": True}, "duration", "required with now"),
        ({"times": ["08:00"], **WEEK}, "duration", "required with times"),
        ({"every": "1h", **WEEK}, "duration", "required with every"),
        (
            {"window": {"start": "08:00", "end": "09:00"}, "duration": "1h", **WEEK},
            "duration",
            "not used with window: a window run lasts from window.start to window.end",
        ),
        (
            {"times": ["08:00"], "duration": "1h", "end_date": "2026-06-07"},
            "start_date",
            "required with times",
        ),
        (
            {"times": ["08:00"], "duration": "1h", "start_date": "2026-06-07"},
            "end_date",
            "required with times",
        ),
        (
            {"times": ["08:00"], "duration": "ten minutes", **WEEK},
            "duration",
            '"ten minutes" is not a duration',
        ),
        ({"times": ["08:00"], "duration": "5s", **WEEK}, "duration", "at least 10s"),
        ({"times": ["08:00"], "duration": "7d1s", "days": ["mon"], **WEEK}, "duration", "at most 7d"),
        ({"every": "5x", "duration": "1h", **WEEK}, "every", '"5x" is not <N>h or <N>m'),
        ({"every": "0h", "duration": "1h", **WEEK}, "every", '"0h" is not <N>h or <N>m'),
        ({"every": "25h", "duration": "1h", **WEEK}, "every", "at most 24h"),
        (
            {
                "every": "2h",
                "first": "00:00",
                "window": {"start": "09:00", "end": "09:30"},
                "duration": "10m",
                **WEEK,
            },
            "every",
            "no run starts inside the window 09:00-09:30 (every 2h from 00:00)",
        ),
        ({"times": ["08:00"], "first": "08:00", "duration": "1h", **WEEK}, "first", "only used with every"),
        ({"times": ["08:00"], "duration": "1h", "days": [], **WEEK}, "days", "must name at least one day"),
        (
            {"times": ["08:00"], "duration": "1h", "days": ["mon", "mon"], **WEEK},
            "days[1]",
            '"mon" repeats days[0]',
        ),
        (
            {
                "times": ["08:00"],
                "duration": "1h",
                "days": ["sat"],
                "start_date": "2026-06-01",
                "end_date": "2026-06-05",
            },
            "days",
            "no selected day falls between start_date and end_date",
        ),
        (
            {"times": ["08:00"], "duration": "1h", "hours": 3, **WEEK},
            "hours",
            "Extra inputs are not permitted",
        ),
    ],
)
def test_a_bad_document_names_the_field_and_the_reason(
    fields: dict[str, Any], field: str, reason: str
) -> None:
    problems = problems_of(**fields)
    assert any(problem["field"] == field and reason in problem["reason"] for problem in problems), problems


def test_the_validation_error_itself_names_the_field_and_the_reason() -> None:
    with pytest.raises(ValidationError) as caught:
        spec(window={"start": "08:00", "end": "08:00"}, **WEEK)
    assert "window.end\n  must differ from window.start" in str(caught.value)


def test_a_bad_name_is_refused() -> None:
    (problem,) = problems_of(times=["08:00"], duration="1h", app="Smart Home", **WEEK)
    assert problem["field"] == "app"
    assert "should match pattern" in problem["reason"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        # Two runs an hour apart cannot last two hours.
        (
            {"times": ["08:00", "09:00"], "duration": "2h"},
            "2h is longer than the 1h between the runs starting",
        ),
        # 20:00 to the next day's 00:00 is 4h.
        (
            {"every": "5h", "duration": "5h"},
            "5h is longer than the 4h between the runs starting Mon 20:00 and Tue 00:00",
        ),
        # Daily at 08:00 for a day and a half.
        ({"times": ["08:00"], "duration": "1d12h"}, "1d12h is longer than the 1d between the runs"),
    ],
)
def test_overlapping_runs_are_refused_on_duration(fields: dict[str, Any], reason: str) -> None:
    (problem,) = problems_of(**fields, **WEEK)
    assert problem["field"] == "duration"
    assert reason in problem["reason"]


def test_runs_may_follow_each_other_without_a_gap() -> None:
    every_hour = spec(every="1h", duration="1h", **WEEK)
    assert len(the_week(every_hour)) == 7 * 24
    # Weekly for a week: the selected days leave the room.
    weekly = spec(
        times=["08:00"], duration="7d", days=["mon"], start_date="2026-06-01", end_date="2026-06-30"
    )
    assert the_week(weekly)[0].end == utc(6, 8, 6)


def test_an_unknown_time_zone_is_a_problem_of_the_location() -> None:
    schedule = spec(times=["08:00"], duration="1h", **WEEK)
    (problem,) = spec_problems(schedule, "Mars/Olympus", utc(6, 1))
    assert problem["field"] == "location"
    assert "unknown time zone 'Mars/Olympus'" in problem["reason"]
    with pytest.raises(ValueError, match="unknown time zone"):
        next_run(schedule, "Mars/Olympus", utc(6, 1))


def test_a_schedule_whose_last_run_ended_has_nothing_to_run() -> None:
    schedule = spec(times=["08:00"], duration="1h", days=["wed"], **WEEK)
    # The last run is Wednesday 3 June 08:00-09:00 Berlin.
    assert spec_problems(schedule, BERLIN, utc(6, 3, 6, 59)) == []
    assert spec_problems(schedule, BERLIN, utc(6, 3, 7)) == [
        {
            "field": "end_date",
            "reason": "the last run ended 2026-06-03 09:00 (Europe/Berlin): nothing is left to run",
        }
    ]


# --- the trigger, fire times and misfires --------------------------------------------------------


def trigger_for(schedule: ScheduleSpec, tz: str = BERLIN, created: datetime = CREATED) -> ScheduleTrigger:
    return ScheduleTrigger(schedule.model_dump_json(), tz, created)


def fire_times(trigger: ScheduleTrigger, now: datetime, count: int) -> list[datetime]:
    times: list[datetime] = []
    fire_time = trigger.get_next_fire_time(None, now)
    while fire_time is not None and len(times) < count:
        times.append(fire_time)
        fire_time = trigger.get_next_fire_time(fire_time, fire_time)
    return times


def test_the_triggers_fire_times_are_the_run_starts() -> None:
    schedule = spec(times=["08:00", "20:00"], duration="1h", days=["mon", "thu"], **WEEK)
    trigger = trigger_for(schedule)
    assert fire_times(trigger, utc(5, 20), 100) == starts(the_week(schedule))
    assert trigger.get_next_fire_time(utc(6, 4, 18), utc(6, 4, 18)) is None


def test_the_trigger_fires_a_run_in_progress_at_once() -> None:
    schedule = spec(window={"start": "09:00", "end": "17:00"}, **WEEK)
    trigger = trigger_for(schedule)
    # Added at noon: today's run started at 09:00 and is still open.
    assert trigger.get_next_fire_time(None, utc(6, 2, 10)) == utc(6, 2, 7)
    assert trigger.get_next_fire_time(None, utc(6, 2, 15)) == utc(6, 3, 7)


def test_a_now_trigger_fires_once_at_creation() -> None:
    created = utc(6, 1, 9, 15)
    trigger = trigger_for(spec(now=True, duration="10m"), created=created)
    assert trigger.get_next_fire_time(None, created + timedelta(seconds=2)) == created
    assert trigger.get_next_fire_time(created, created + timedelta(seconds=2)) is None


def test_the_trigger_survives_pickling() -> None:
    schedule = spec(every="6h", duration="1h", **WEEK)
    trigger = trigger_for(schedule, LONDON)
    restored = pickle.loads(pickle.dumps(trigger))
    assert isinstance(restored, ScheduleTrigger)
    assert restored.spec == schedule
    assert str(restored) == "schedule[every, Europe/London]"
    assert fire_times(restored, utc(5, 20), 50) == fire_times(trigger, utc(5, 20), 50)
    assert trigger.__getstate__() == {
        "version": 1,
        "spec": schedule.model_dump_json(),
        "tz": LONDON,
        "created_at": CREATED,
    }


def _start_job(schedule_id: str) -> None:
    """What the stored job names; never called here."""


def test_a_job_with_the_trigger_round_trips_the_way_the_job_store_stores_it() -> None:
    schedule = spec(times=["08:00"], duration="1h", **WEEK)
    trigger = trigger_for(schedule)
    job = Job(
        SimpleNamespace(timezone=UTC),  # all a job asks of its scheduler while it is built
        id="start-s1",
        func=f"{__name__}:_start_job",
        args=["s1"],
        kwargs={},
        trigger=trigger,
        executor="default",
        name="smart-home at home",
        misfire_grace_time=None,
        coalesce=True,
        max_instances=1,
        next_run_time=trigger.get_next_fire_time(None, utc(5, 20)),
    )
    # SQLAlchemyJobStore stores pickle.dumps(job.__getstate__()) and loads it into a bare Job.
    restored = Job.__new__(Job)
    restored.__setstate__(pickle.loads(pickle.dumps(job.__getstate__(), pickle.HIGHEST_PROTOCOL)))
    assert restored.next_run_time == utc(6, 1, 6)
    assert restored.trigger.get_next_fire_time(utc(6, 1, 6), utc(6, 1, 6)) == utc(6, 2, 6)


def test_a_state_from_a_newer_version_is_refused() -> None:
    trigger = trigger_for(spec(times=["08:00"], duration="1h", **WEEK))
    state = trigger.__getstate__() | {"version": 2}
    with pytest.raises(ValueError, match="state version 2"):
        ScheduleTrigger.__new__(ScheduleTrigger).__setstate__(state)


def test_run_for_fire_time_is_the_run_that_starts_then() -> None:
    schedule = spec(times=["08:00", "20:00"], duration="2h", **WEEK)
    assert run_for_fire_time(schedule, BERLIN, utc(6, 2, 18)) == the_week(schedule)[3]
    with pytest.raises(ValueError, match="no run of this schedule starts at"):
        run_for_fire_time(schedule, BERLIN, utc(6, 2, 19))
    created = utc(6, 1, 9, 15)
    now_run = run_for_fire_time(spec(now=True, duration="10m"), BERLIN, created, created)
    assert (now_run.start, now_run.end) == (created, created + timedelta(minutes=10))


def test_a_late_start_is_worth_it_until_its_run_ends() -> None:
    run = Run(utc(6, 1, 6), utc(6, 1, 7), utc(6, 1, 6))
    assert still_worth_starting(run, utc(6, 1, 6))
    assert still_worth_starting(run, utc(6, 1, 6, 59))
    assert not still_worth_starting(run, utc(6, 1, 7))


# --- the document's formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("90s", timedelta(seconds=90)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ],
)
def test_the_duration_format(text: str, span: timedelta) -> None:
    assert parse_duration(text) == span


@pytest.mark.parametrize("text", ["", "h", "30m1h", "1.5h", "PT10M", "10 m", "-5m"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_durations_format_back() -> None:
    assert format_duration(timedelta(seconds=90)) == "1m30s"
    assert format_duration(timedelta(days=7)) == "7d"
    assert parse_duration(format_duration(timedelta(hours=26, seconds=5))) == timedelta(hours=26, seconds=5)


@pytest.mark.parametrize(
    "fields",
    [
        {"now": True, "duration": "10m"},
        {"window": {"start": "22:00", "end": "06:00"}, "days": ["mon"], **WEEK},
        {"times": ["08:00"], "duration": "1h", "version": "1.2.0", **WEEK},
        {
            "every": "2h",
            "first": "01:00",
            "window": {"start": "00:00", "end": "12:00"},
            "duration": "1h",
            **WEEK,
        },
    ],
)
@pytest.mark.parametrize("exclude_none", [False, True])
def test_a_stored_document_reads_back_the_same(fields: dict[str, Any], exclude_none: bool) -> None:
    schedule = spec(**fields)
    assert ScheduleSpec.model_validate_json(schedule.model_dump_json(exclude_none=exclude_none)) == schedule


def test_every_field_of_the_published_schema_is_described() -> None:
    schema = ScheduleSpec.model_json_schema()
    described = [schema["properties"], schema["$defs"]["Window"]["properties"]]
    assert all("description" in field for properties in described for field in properties.values())
    assert schema["additionalProperties"] is False
