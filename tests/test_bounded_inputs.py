"""Limits on input: whatever a caller sends, the front door answers with a clear 4xx, never a 500.

* JSON bodies: deeper than ``web.max_json_depth`` → 400 before parsing (100,000 nested ``[``
  included, on every JSON route, the anonymous login too); over ``web.max_json_kb`` → 413.
* Numbers: ``NaN``, ``Infinity``, a float that overflows (``1e400``), an integer beyond 64 bits
  → 422 naming where it stands; nothing is stored. The models refuse non-finite floats too
  (``allow_inf_nan=False``), and a controller command with a ``NaN`` parameter is refused.
* Schedules: at most 1,440 ``times`` and 7 ``days``; dates from 2000 to 9998; durations and
  steps too long for any clock → 422 naming the field, answered at once.
* Query parameters: ``since=99999999d`` and every other malformed or out-of-range value → 400
  naming the parameter.
* Every route: a bounded generated fuzz (hostile path values, query parameters and bodies)
  gets no 500; an id beyond 64 bits in a path is 404.
* The real server (waitress): an anonymous request is refused (401) as soon as its headers
  are in, without its body being read; a body whose declared length is over its limit gets
  413 the same way, and a chunked one once it passes the limit. Authorised bodies still arrive,
  and ``Expect: 100-continue`` is answered only once the request is let in.
* Manifests (``model.json`` in an upload): ``NaN``, infinities, overflowing floats and deep
  nesting are refused naming the file.

Each test builds the real front door (``tests.test_front_door``) on one migrated SQLite file
with a user of each role; the server tests serve it with ``HttpServer`` and speak HTTP over a
socket, so a request is shown to be answered while most of its body was never sent.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from platform_core.http import HttpServer
from platform_sdk.artifacts import ModelManifest, parse_manifest
from platform_sdk.device_documents import DeviceType
from platform_sdk.errors import ValidationFailed
from platform_sdk.settings import Settings
from tests.test_front_door import (
    PASSWORD,
    USERS,
    FrontDoor,
    error_of,
    field_names,
    front_door,
    json_of,
    seed_registry,
)
from tests.test_schedule_api import GOOD

COMFORT = Path(__file__).resolve().parents[1] / "examples" / "models" / "comfort" / "model.json"
# Every route that reads a JSON body, with who may call it.
JSON_ROUTES = [
    ("/api/auth/login", None),
    ("/api/auth/tokens", "aidev"),
    ("/api/users", "admin"),
    ("/api/devices/types", "admin"),
    ("/api/devices/locations", "admin"),
    ("/api/devices", "admin"),
    ("/api/devices/bulk", "admin"),
    ("/api/schedules", "enduser"),
]
FAN = {
    "name": "test-fan",
    "kind": "controller",
    "commands": {"set_speed": {"params": {"speed": {"type": "int", "min": 0, "max": 3}}}},
    "state": {"speed": {"type": "int"}},
}
SCHEDULE = GOOD  # a schedule document the front door takes (when the registry has its app)


@pytest.fixture(scope="module")
def shared_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('bounded-inputs') / 'registry.db'}"
    seed_registry(url, USERS)
    return url


@pytest.fixture
def door(settings: Settings, shared_url: str) -> Iterator[FrontDoor]:
    with front_door(shared_url) as built:
        yield built


def post_raw(door: FrontDoor, path: str, body: str | bytes, username: str | None = "admin") -> Any:
    headers = door.auth(username) if username else {}
    return door.client.post(path, data=body, content_type="application/json", headers=headers)


def fan_with(**speed: Any) -> str:
    """The fan type's JSON with ``speed``'s spec changed; values are JSON literals (``NaN``)."""
    text = json.dumps(FAN | {"name": "odd-fan"})
    spec = ", ".join(f'"{key}": {value}' for key, value in speed.items())
    return text.replace(
        '"speed": {"type": "int", "min": 0, "max": 3}', '"speed": {"type": "int", ' + spec + "}"
    )


# --- (a) depth and size of JSON bodies -------------------------------------------------------------


@pytest.mark.parametrize(("path", "username"), JSON_ROUTES)
def test_a_hundred_thousand_nested_arrays_are_refused_at_once_on_every_json_route(
    door: FrontDoor, path: str, username: str | None
) -> None:
    started = time.monotonic()
    error = error_of(post_raw(door, path, "[" * 100_000, username), 400)
    assert error["message"] == (
        "the JSON body nests arrays and objects deeper than 32 levels (AIOT_WEB__MAX_JSON_DEPTH)"
    )
    assert time.monotonic() - started < 5
    balanced = "[" * 5000 + "]" * 5000
    assert "deeper than 32 levels" in error_of(post_raw(door, path, balanced, username), 400)["message"]


def test_the_depth_limit_is_a_setting_and_brackets_in_strings_do_not_count(
    settings: Settings, shared_url: str
) -> None:
    with front_door(shared_url, {"web.max_json_depth": 3}) as door:
        deep = {"username": [[["admin"]]], "password": PASSWORD}  # 4 levels with the object
        error = error_of(door.client.post("/api/auth/login", json=deep), 400)
        assert "deeper than 3 levels" in error["message"]
        shallow = {"username": [["admin"]], "password": PASSWORD}
        assert field_names(error_of(door.client.post("/api/auth/login", json=shallow), 422)) == ["username"]
        bracketed = {"username": "admin", "password": "[{" * 500 + '\\"]'}
        wrong = error_of(door.client.post("/api/auth/login", json=bracketed), 401)
        assert wrong["type"] == "Unauthorized"


def test_a_json_body_over_its_limit_is_too_large_and_the_limit_is_a_setting(
    settings: Settings, shared_url: str
) -> None:
    with front_door(shared_url, {"web.max_json_kb": 4}) as door:
        big = {"username": "admin", "password": "x" * 5000}
        error = error_of(door.client.post("/api/auth/login", json=big), 413)
        assert error["message"] == "a JSON request body may be at most 4 KiB (AIOT_WEB__MAX_JSON_KB)"
        admin = door.auth("admin")
        bundle = {"device_types": [FAN | {"description": "d" * 1000}] * 4}
        assert error_of(door.client.post("/api/devices/bulk", json=bundle, headers=admin), 413)
        ok = door.client.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
        assert json_of(ok)["user"]["username"] == "admin"


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\xfa not text",
        b'{"username": "admin", "password": "\xc3"}',
        b"",
        b"   ",
        b'{"a": 1} trailing',
        b"[" * 33 + b"]" * 33,
        b'{"x": ' * 40 + b"1" + b"}" * 40,
        b'"' + b"\\" * 99 + b'"',
        b'{"username": "admin", "password": ' + b"9" * 5000 + b"}",
        b'{"username": "admin", "password": 1' + b"0" * 400 + b".5e99999}",
    ],
)
def test_hostile_json_bodies_get_a_4xx_on_every_json_route(door: FrontDoor, body: bytes) -> None:
    for path, username in JSON_ROUTES:
        response = post_raw(door, path, body, username)
        assert 400 <= response.status_code < 500, (path, body[:40], response.get_data(as_text=True))
        error_of(response, response.status_code)


# --- (c) numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "reason"),
    [
        ("NaN", "NaN is not a number: JSON has no NaN or Infinity"),
        ("Infinity", "Infinity is not a number: JSON has no NaN or Infinity"),
        ("-Infinity", "-Infinity is not a number: JSON has no NaN or Infinity"),
        ("1e400", "a number too large for a 64-bit float"),
        ("-1e400", "a number too large for a 64-bit float"),
        ("9223372036854775808", "an integer beyond the 64-bit range (±9223372036854775807)"),
        ("1" + "0" * 1000, "an integer beyond the 64-bit range (±9223372036854775807)"),
    ],
)
def test_a_bound_that_is_no_number_is_refused_naming_it_and_nothing_is_stored(
    door: FrontDoor, literal: str, reason: str
) -> None:
    admin = door.auth("admin")
    response = post_raw(door, "/api/devices/types", fan_with(min=0, max=literal))
    error = error_of(response, 422)
    assert error["type"] == "ValidationFailed"
    assert field_names(error) == ["commands.set_speed.params.speed.max"]
    assert error["details"][0]["msg"] == reason
    assert (
        error["message"] == f"numbers the platform cannot hold: commands.set_speed.params.speed.max: {reason}"
    )
    error_of(door.client.get("/api/devices/types/odd-fan", headers=admin), 404)


def test_a_bad_number_is_refused_on_the_anonymous_login_and_in_schedules(door: FrontDoor) -> None:
    error = error_of(post_raw(door, "/api/auth/login", '{"username": "admin", "password": NaN}', None), 422)
    assert field_names(error) == ["password"]
    secret = "12345678901234567890123"  # a password sent as a number is not echoed back
    response = post_raw(door, "/api/auth/login", f'{{"username": "admin", "password": {secret}}}', None)
    assert field_names(error_of(response, 422)) == ["password"]
    assert secret not in response.get_data(as_text=True)
    schedule = json.dumps(SCHEDULE)[:-1] + ', "now": Infinity, "extra": [1, -Infinity]}'
    error = error_of(post_raw(door, "/api/schedules", schedule, "enduser"), 422)
    assert field_names(error) == ["now", "extra.1"]


def test_many_bad_numbers_are_counted_not_all_named(door: FrontDoor) -> None:
    body = '{"username": "admin", "password": [' + ", ".join(["NaN"] * 10_000) + "]}"
    error = error_of(post_raw(door, "/api/auth/login", body, None), 422)
    assert len(error["details"]) == 10
    assert error["message"].endswith("(and 9990 more)")


def test_the_device_models_refuse_non_finite_floats_and_commands_refuse_them_too() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        spec = FAN["commands"]["set_speed"]["params"]["speed"] | {"max": bad}  # type: ignore[index]
        document = FAN | {"commands": {"set_speed": {"params": {"speed": spec}}}}
        with pytest.raises(ValueError, match="finite number"):
            DeviceType.model_validate(document)
    thermostat = DeviceType.model_validate(
        FAN | {"commands": {"set": {"params": {"target": {"type": "float", "min": 5, "max": 30}}}}}
    )
    assert thermostat.command_problems("set", {"target": float("nan")}) == [
        {"field": "target", "reason": "nan is not a finite number"}
    ]
    assert thermostat.command_problems("set", {"target": 10**30}) == [
        {"field": "target", "reason": "a number beyond the 64-bit range is not accepted"}
    ]
    assert thermostat.command_problems("set", {"target": 21.5}) == []


def test_a_device_parameter_that_is_no_number_is_refused(door: FrontDoor) -> None:
    body = '{"name": "cam-x", "type": "camera", "location": "city-bank", "parameters": {"fps": Infinity}}'
    error = error_of(post_raw(door, "/api/devices", body), 422)
    assert field_names(error) == ["parameters.fps"]


# --- (b) lists and values in schedules -----------------------------------------------------------


def schedule_problems(door: FrontDoor, document: dict[str, Any]) -> dict[str, str]:
    """The fields and reasons of a schedule the front door refuses (before asking any service)."""
    error = error_of(door.client.post("/api/schedules", json=document, headers=door.auth("enduser")), 422)
    return {problem["field"]: problem["reason"] for problem in error["details"]}


def test_a_hundred_thousand_times_are_refused_at_once(door: FrontDoor) -> None:
    times = [f"{minute // 60 % 24:02d}:{minute % 60:02d}" for minute in range(100_000)]
    started = time.monotonic()
    problems = schedule_problems(door, SCHEDULE | {"times": times})
    assert time.monotonic() - started < 5
    assert problems == {"times": "List should have at most 1440 items after validation, not 100000"}


def test_every_minute_of_a_day_is_the_most_times_a_schedule_has(door: FrontDoor) -> None:
    every_minute = [f"{minute // 60:02d}:{minute % 60:02d}" for minute in range(1440)]
    problems = schedule_problems(door, SCHEDULE | {"times": every_minute})
    assert list(problems) == ["duration"]  # 1440 times are allowed; a 1h run overlaps the next
    problems = schedule_problems(door, SCHEDULE | {"times": [*every_minute, "00:00"]})
    assert problems == {"times": "List should have at most 1440 items after validation, not 1441"}


def test_days_dates_durations_and_steps_are_bounded(door: FrontDoor) -> None:
    assert schedule_problems(door, SCHEDULE | {"days": ["mon"] * 8}) == {
        "days": "List should have at most 7 items after validation, not 8"
    }
    problems = schedule_problems(door, SCHEDULE | {"start_date": "0001-01-01", "end_date": "9999-12-31"})
    assert problems == {
        "start_date": "Input should be greater than or equal to 2000-01-01",
        "end_date": "Input should be less than or equal to 9998-12-31",
    }
    problems = schedule_problems(door, SCHEDULE | {"duration": "99999999999999999999d"})
    assert problems == {"duration": '"99999999999999999999d" is longer than any duration'}
    problems = schedule_problems(door, SCHEDULE | {"duration": "9" * 5000 + "d"})
    assert problems["duration"].startswith('"9999999999999999…" is not a duration')
    every = SCHEDULE | {"times": None, "every": "9" * 5000 + "h"}
    assert schedule_problems(door, every) == {"every": "at most 24h (runs are counted within each day)"}


# --- (e) query parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "parameter", "reason"),
    [
        ("since=99999999d", "since", "time '99999999d' is out of range (years 1 to 9999)"),
        ("until=" + "9" * 5000 + "s", "until", "is neither like '10m', '2h', '1d' nor ISO 8601"),
        ("since=0001-01-01T00:00:00%2B14:00", "since", "is out of range (years 1 to 9999)"),
        ("until=9999-12-31T23:59:59-05:00", "until", "is out of range (years 1 to 9999)"),
        ("since=yesterday", "since", "is neither like '10m', '2h', '1d' nor ISO 8601"),
        ("limit=" + "9" * 40, "limit", "less than or equal to 10000"),
        ("limit=-1", "limit", "greater than or equal to 1"),
        ("limit=1e400", "limit", "valid integer"),
        ("limit=nan", "limit", "valid integer"),
        ("level=loud", "level", "unknown level 'loud'"),
    ],
)
def test_a_bad_query_parameter_is_a_bad_request_naming_it(
    door: FrontDoor, query: str, parameter: str, reason: str
) -> None:
    error = error_of(door.client.get(f"/api/logs?{query}", headers=door.auth("admin")), 400)
    assert error["type"] == "BadRequest"
    assert field_names(error) == [parameter]
    assert error["message"].startswith(f"invalid query parameter {parameter}: ")
    assert reason in error["message"]


def test_the_widest_valid_time_range_reads_the_logs(door: FrontDoor) -> None:
    query = "since=0001-01-02T00:00:00Z&until=9999-12-30T00:00:00Z&limit=10000"
    assert json_of(door.client.get(f"/api/logs?{query}", headers=door.auth("admin"))) == {"records": []}


# --- every route ------------------------------------------------------------------------------------

HOSTILE_PATH_VALUES = ("x", "9" * 30, "%ff%00")
HOSTILE_QUERIES = ("", "since=99999999d&until=-1&limit=1e400&level=%00&force=maybe&location=%ff")
HOSTILE_BODIES = (
    b"[" * 100_000,
    b'{"name": NaN, "app": 1e400, "n": 99999999999999999999}',
    b"\xff\xfe[",
    b"[]",
)


def test_no_route_answers_hostile_input_with_a_server_error(door: FrontDoor) -> None:
    """A bounded generated fuzz of every route as a configurer: path values, query parameters and
    bodies no route expects get a 4xx (503 is this test's missing bus), never a 500; an /api route's
    is a JSON error (a portal page answers an HTML page)."""
    seen: set[int] = set()
    for rule in door.app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            headers = door.auth("admin")  # fresh: POST /api/auth/logout revokes the one it is sent with
            values = HOSTILE_PATH_VALUES if "<" in rule.rule else ("",)
            for value in values:
                path = re.sub(r"<[^>]+>", value, rule.rule)
                for query in HOSTILE_QUERIES:
                    for body in HOSTILE_BODIES:
                        response = door.client.open(
                            f"{path}?{query}",
                            method=method,
                            data=body,
                            content_type="application/json",
                            headers=headers,
                        )
                        seen.add(response.status_code)
                        assert response.status_code < 500 or response.status_code == 503, (
                            method,
                            path,
                            query,
                            body[:20],
                        )
                        # A portal page answers an HTML page (its own tests check those); an
                        # /api route a JSON error. (308: a path that wants its trailing slash)
                        if response.status_code >= 400 and path.startswith("/api"):
                            error_of(response, response.status_code)
    assert {400, 404, 422} <= seen


def test_an_id_beyond_64_bits_in_a_path_is_not_found(door: FrontDoor) -> None:
    response = door.client.delete("/api/auth/tokens/" + "9" * 30, headers=door.auth("aidev"))
    assert error_of(response, 404)["type"] == "NotFound"


# --- (d) the real server: refused before the body is read -----------------------------------------


@contextmanager
def serving(door: FrontDoor) -> Iterator[HttpServer]:
    server = HttpServer(door.app, "127.0.0.1", 0, threads=2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def exchange(
    server: HttpServer, request_line: str, *headers: str, body_start: bytes = b""
) -> tuple[int, dict[str, Any], str]:
    """Send a request's line, headers and the start of its body, never the rest; the server's answer.

    Returns the status, the JSON body and the raw head of the answer; a server that waited for
    the rest of the body would time out here.
    """
    head = "".join(f"{line}\r\n" for line in (f"{request_line} HTTP/1.1", "Host: 127.0.0.1", *headers))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(head.encode() + b"\r\n" + body_start)
        answer = b""
        while chunk := connection.recv(65536):  # the server closes the connection after answering
            answer += chunk
    raw_head, _, body = answer.partition(b"\r\n\r\n")
    status = int(raw_head.split(b" ", 2)[1])
    return status, json.loads(body), raw_head.decode()


ZIP = "Content-Type: application/zip"
JSON = "Content-Type: application/json"
CHUNKED = "Transfer-Encoding: chunked"
HUGE = f"Content-Length: {300 * 2**20}"


def test_an_anonymous_300_mb_upload_is_refused_before_its_body_is_read(door: FrontDoor) -> None:
    with serving(door) as server:
        status, body, raw = exchange(
            server, "POST /api/models", ZIP, HUGE, body_start=b"PK\x03\x04" + b"\0" * 1000
        )
        assert status == 401
        assert body["error"]["type"] == "Unauthorized"
        assert body["error"]["message"].startswith("missing credentials")
        assert "Connection: close" in raw

        forged = "Authorization: Bearer forged"
        status, body, _ = exchange(
            server, "POST /api/models", forged, CHUNKED, body_start=b"10000\r\n" + b"\0" * 1000
        )
        assert status == 401
        assert body["error"]["message"].startswith("invalid, expired or revoked token")

        status, body, _ = exchange(
            server, "POST /api/models", f"Authorization: Bearer {door.token('enduser')}", HUGE
        )
        assert status == 403
        assert body["error"]["type"] == "Forbidden"

        status, body, raw = exchange(server, "POST /api/models", ZIP, HUGE, "Expect: 100-continue")
        assert status == 401  # and no "100 Continue" first, which would ask for the body


def test_a_declared_length_over_the_limit_is_too_large_before_the_body_is_read(door: FrontDoor) -> None:
    with serving(door) as server:
        status, body, _ = exchange(
            server, "POST /api/models", f"Authorization: Bearer {door.token('admin')}", HUGE
        )
        assert status == 413
        assert body["error"]["message"] == "request body exceeds the 200 MB limit"

        two_mb = f"Content-Length: {2 * 2**20}"
        status, body, _ = exchange(server, "POST /api/auth/login", JSON, two_mb, body_start=b'{"username": "')
        assert status == 413
        assert (
            body["error"]["message"] == "a JSON request body may be at most 1024 KiB (AIOT_WEB__MAX_JSON_KB)"
        )


def test_a_chunked_json_body_is_cut_off_once_past_its_limit(settings: Settings, shared_url: str) -> None:
    with front_door(shared_url, {"web.max_json_kb": 16}) as door, serving(door) as server:
        piece = b"x" * 4096
        chunks = (b"%x\r\n" % len(piece) + piece + b"\r\n") * 8  # 32 KiB, never terminated
        status, body, _ = exchange(server, "POST /api/auth/login", JSON, CHUNKED, body_start=chunks)
        assert status == 413
        assert body["error"]["message"] == "a JSON request body may be at most 16 KiB (AIOT_WEB__MAX_JSON_KB)"

        # Just under the limit, in small chunks: their framing does not count.
        # Padded with whitespace: a password that long is refused on its own (the accounts' limit).
        wrong = json.dumps({"username": "admin", "password": "wrong"})
        login = (wrong[:-1] + " " * (16 * 1024 - 40 - len(wrong)) + "}").encode()
        small = b"".join(b"%x\r\n" % len(part) + part + b"\r\n" for part in _pieces(login, 10))
        status, body, _ = exchange(
            server,
            "POST /api/auth/login",
            JSON,
            CHUNKED,
            "Connection: close",
            body_start=small + b"0\r\n\r\n",
        )
        assert status == 401, body  # read whole, and the password is wrong


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def test_bodies_that_are_let_in_still_arrive_whole(door: FrontDoor) -> None:
    close = "Connection: close"
    with serving(door) as server:
        garbage = b"not a zip" * 20_000  # 180 KB: most of it arrives after the head was admitted
        admin = f"Authorization: Bearer {door.token('admin')}"
        length = f"Content-Length: {len(garbage)}"
        status, body, _ = exchange(server, "POST /api/models", admin, ZIP, length, close, body_start=garbage)
        assert status == 422, body

        login = json.dumps({"username": "admin", "password": PASSWORD}).encode()
        chunked = b"%x\r\n" % len(login) + login + b"\r\n0\r\n\r\n"
        status, body, _ = exchange(server, "POST /api/auth/login", JSON, CHUNKED, close, body_start=chunked)
        assert status == 200, body
        assert body["user"]["username"] == "admin"


def test_a_client_that_expects_100_continue_is_told_to_go_on_once_admitted(door: FrontDoor) -> None:
    garbage = b"not a zip" * 1000
    head = (
        "POST /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {door.token('admin')}\r\n{ZIP}\r\n"
        f"Content-Length: {len(garbage)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    with (
        serving(door) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection,
    ):
        connection.sendall(head.encode())
        assert connection.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.sendall(garbage)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 422 "), answer[:200]


# --- manifests: the JSON inside an uploaded zip ---------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ('"tolerance": Infinity', "Infinity is not a number JSON allows"),
        ('"tolerance": NaN', "NaN is not a number JSON allows"),
        ('"tolerance": 1e400', "a number too large for a 64-bit float"),
        ('"deep": ' + "[" * 100_000, "nested too deeply"),
    ],
)
def test_a_model_manifest_with_a_number_json_cannot_hold_is_refused_naming_the_file(
    change: str, reason: str
) -> None:
    raw = COMFORT.read_text().replace("{", "{" + change + ", ", 1).encode()
    with pytest.raises(ValidationFailed) as refused:
        parse_manifest(raw, ModelManifest, file="model.json")
    assert refused.value.message.startswith("model.json: is not valid JSON")
    assert reason in refused.value.message


def test_manifest_floats_are_finite() -> None:
    comfort = json.loads(COMFORT.read_text())
    with pytest.raises(ValueError, match="finite number"):
        ModelManifest.model_validate(comfort | {"example": comfort["example"] | {"tolerance": float("inf")}})
