"""``platform_sdk.StatusPage``: an app's status page, called as the WSGI server would call it."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest

from platform_sdk import StatusPage
from platform_sdk.app import App
from platform_sdk.artifacts import APP_MANIFEST, AppManifest

ROOT = Path(__file__).resolve().parents[1]


def get(page: StatusPage, path: str) -> tuple[str, dict[str, str], bytes]:
    """``GET path`` of the page: its status line, headers and body."""
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer.update(status=status, headers=dict(headers))

    body = b"".join(page.wsgi({"REQUEST_METHOD": "GET", "PATH_INFO": path}, start_response))
    return answer["status"], answer["headers"], body


def status_of(page: StatusPage) -> dict[str, Any]:
    status, headers, body = get(page, "/status.json")
    assert (status, headers["Content-Type"]) == ("200 OK", "application/json")
    result: dict[str, Any] = json.loads(body)
    return result


def test_the_page_is_html_with_its_title_that_polls_status_json() -> None:
    page = StatusPage("Fans & <Friends>")
    for path in ("/", "/index.html"):
        status, headers, body = get(page, path)
        assert status == "200 OK"
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Content-Length"] == str(len(body))
        assert headers["Cache-Control"] == "no-store"
        assert b"<title>Fans &amp; &lt;Friends&gt;</title>" in body
        assert b"fetch('status.json'" in body
        assert b"frame.jpg" in body
    assert get(page, "/nothing-here")[0] == "404 Not Found"


def test_status_json_has_the_headline_facts_events_and_the_apps_fields() -> None:
    speed = {"fan_speed": 2}
    page = StatusPage(
        "Fan keeper",
        timezone="Asia/Kolkata",
        about={"location": "lake-home", "instance": "i1"},
        fields=lambda: dict(speed),
    )
    page.set_headline("Fan at speed 2", "blue")
    page.set_fact("Temperature", "27.5 °C")
    page.set_fact("Fan", "speed 2")
    page.set_fact("Temperature", "28 °C")  # a known label keeps its place
    page.add_event("fan to speed 2")
    status = status_of(page)
    assert status["title"] == "Fan keeper"
    assert (status["location"], status["instance"]) == ("lake-home", "i1")
    assert status["headline"] == {"text": "Fan at speed 2", "colour": "blue"}
    assert status["facts"] == [["Temperature", "28 °C"], ["Fan", "speed 2"], ["Problem", "none"]]
    assert status["fan_speed"] == 2
    assert status["frame"] is None
    assert status["problem"] is None
    assert status["local_time"].endswith(" IST")
    [event] = status["events"]
    assert event["text"] == "fan to speed 2"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", event["time"])
    now = datetime.now(ZoneInfo("Asia/Kolkata"))
    assert abs(int(event["time"][:2]) - now.hour) in (0, 1, 23)

    speed["fan_speed"] = 3  # fields are asked for on every request
    page.set_facts([("Fan", "speed 3")])  # the whole table, in this order
    status = status_of(page)
    assert status["fan_speed"] == 3
    assert status["facts"] == [["Fan", "speed 3"], ["Problem", "none"]]


def test_the_apps_fields_win_over_the_pages_own() -> None:
    page = StatusPage("Home", fields=lambda: {"headline": {"text": "mine", "colour": "red"}})
    page.set_headline("the page's", "green")
    assert status_of(page)["headline"] == {"text": "mine", "colour": "red"}


def test_the_frame_is_404_before_the_first_then_the_latest_jpeg_with_its_boxes() -> None:
    page = StatusPage("Camera")
    assert get(page, "/frame.jpg")[0] == "404 Not Found"
    page.set_frame(b"\xff\xd8first", boxes=[[1, 2, 3, 4]])
    page.set_frame(b"\xff\xd8second", boxes=[[10.6, 20, 30, 40], (1, 1, 2, 2)], seq=41)
    status, headers, body = get(page, "/frame.jpg")
    assert (status, headers["Content-Type"], body) == ("200 OK", "image/jpeg", b"\xff\xd8second")
    frame = status_of(page)["frame"]
    assert frame["seq"] == 41
    assert frame["boxes"] == [[10, 20, 30, 40], [1, 1, 2, 2]]
    assert 0 <= frame["age_s"] < 5

    page.set_frame(b"PNG", content_type="image/png")
    assert get(page, "/frame.jpg")[1]["Content-Type"] == "image/png"
    assert status_of(page)["frame"]["seq"] == 3  # no seq given: the frames set so far


def test_events_are_bounded_newest_first() -> None:
    page = StatusPage("Events", events_kept=3)
    for number in range(5):
        page.add_event(f"event {number}")
    assert [event["text"] for event in status_of(page)["events"]] == ["event 4", "event 3", "event 2"]


def test_a_problem_is_shown_until_cleared_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.status_page")
    page = StatusPage("Problems", log=log, problem_repeat_s=60.0)
    with caplog.at_level(logging.WARNING, logger=log.name):
        page.report_problem("devices: refused")
        page.report_problem("devices: refused")
        page.report_problem("face-detector: timed out")
    assert [record.getMessage() for record in caplog.records] == [
        "devices: refused",
        "face-detector: timed out",
    ]
    status = status_of(page)
    assert status["problem"] == "face-detector: timed out"
    assert status["facts"][-1] == ["Problem", "face-detector: timed out"]
    assert [event["text"] for event in status["events"]] == ["face-detector: timed out", "devices: refused"]

    page.clear_problem()
    assert page.problem is None
    assert status_of(page)["facts"] == [["Problem", "none"]]

    caplog.clear()
    again = StatusPage("Problems", log=log, problem_repeat_s=0.0)
    with caplog.at_level(logging.WARNING, logger=log.name):
        again.report_problem("devices: refused")
        again.report_problem("devices: refused")
    assert len(caplog.records) == 2


def test_for_app_takes_the_title_zone_and_identity_of_the_instance() -> None:
    manifest = AppManifest.model_validate_json(
        (ROOT / "examples" / "apps" / "smart-home" / APP_MANIFEST).read_bytes()
    )
    app = SimpleNamespace(
        manifest=manifest,
        config=SimpleNamespace(timezone="America/New_York"),
        instance_id="i42",
        location="lake-home",
        log=logging.getLogger("app.smart-home"),
    )
    page = StatusPage.for_app(cast(App, app), fields=lambda: {"ac_on": False})
    assert manifest.web is not None
    assert page.title == manifest.web.title
    assert page.log is app.log
    status = status_of(page)
    assert (status["app"], status["instance"], status["location"]) == ("smart-home", "i42", "lake-home")
    assert status["ac_on"] is False
    assert status["local_time"][-3:] in ("EST", "EDT")
    assert page.now().utcoffset() == datetime.now(UTC).astimezone(ZoneInfo("America/New_York")).utcoffset()
