"""``POST /api/devices/<name>/commands``: platform configurers command controllers through the front door.

Real parts, as in ``tests/test_device_state.py`` (whose ``serve`` builds them): the front door with
its bus, served by waitress on a migrated registry holding the sample bundle, the session's Kafka
broker, and ``aiot`` run in its own process. The fan is the SDK's ``ControllerEndpoint`` playing
the fan simulator's model in the test's process, as ``sim-lake-home`` plays it; it records every
command it is sent, so a refused request is shown not to have reached it by the next command that
does (one partition per device: commands arrive in the order they were sent).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from platform_core.auth import Role
from platform_sdk.device_messages import DeviceState
from platform_sdk.devices import ControllerEndpoint
from platform_sdk.errors import ValidationFailed
from platform_sdk.settings import Settings
from simulators.models import FanSim
from tests.test_device_state import Door, sample_types, serve
from web import identity

pytestmark = pytest.mark.service("kafka")

PASSWORD = "a long test password"
OTHER_ROLES = {"enduser": Role.END_USER, "ada": Role.AI_DEVELOPER, "appdev": Role.APP_DEVELOPER}
OVERHEAT = "the motor is too hot for speed 5"


@dataclass
class Fan:
    """The fan's model behind a ``ControllerEndpoint``, with the commands it was sent."""

    model: FanSim
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, command: str, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.received.append((command, dict(params)))
        if params.get("speed") == 5:  # the device's own rejection, beyond what its type says
            raise ValidationFailed(OVERHEAT)
        return self.model.apply(command, params)

    def commands(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def door(kafka_settings: Settings, tmp_path: Path) -> Iterator[Door]:
    yield from serve(kafka_settings, f"sqlite:///{tmp_path / 'registry.db'}", tmp_path)


@pytest.fixture
def tokens(door: Door) -> dict[str, str]:
    """A token per user: the configurer ``admin`` and one user of every other role."""
    found = {"admin": door.token}
    with door.database.session() as session:
        for username, role in OTHER_ROLES.items():
            identity.create_user(session, username, PASSWORD, role)
            user = identity.read_user(session, username)
            found[username] = identity.issue_token(session, user, "test").secret
    return found


@pytest.fixture
def fan(door: Door) -> Iterator[Fan]:
    fan = Fan(FanSim(sample_types()["fan"]))
    endpoint = ControllerEndpoint(door.bus, "home-fan", fan.handle, fan.model.state)
    endpoint.start()
    yield fan
    endpoint.stop()


def command(door: Door, token: str, device: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{door.url}/api/devices/{device}/commands",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def error_of(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_a_configurer_commands_a_controller_and_gets_its_new_state(door: Door, fan: Fan) -> None:
    response = command(door, door.token, "home-fan", {"command": "set_speed", "params": {"speed": 3}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["device"], answer["command"], answer["state"]) == (
        "home-fan",
        "set_speed",
        {"on": True, "speed": 3},
    )
    assert answer["by"] == door.bus.source  # the front door sent it, over the bus
    assert fan.commands() == [("set_speed", {"speed": 3})]
    # The state was published before the answer: the device's page shows it at once.
    assert door.state("home-fan")["values"] == {"on": True, "speed": 3}
    off = command(door, door.token, "home-fan", {"command": "off"})
    assert off.json()["state"] == {"on": False, "speed": 0}


@pytest.mark.parametrize("username", sorted(OTHER_ROLES))
def test_other_roles_are_refused_and_the_device_does_not_change(
    door: Door, fan: Fan, tokens: dict[str, str], username: str
) -> None:
    error = error_of(
        command(door, tokens[username], "home-fan", {"command": "set_speed", "params": {"speed": 4}}),
        403,
    )
    assert error["type"] == "Forbidden"
    assert "platform_configurer" in error["message"]
    assert door.state("home-fan")["values"] == {"on": False, "speed": 0}
    # The configurer's command is the first the fan gets: the refused one was never sent.
    command(door, tokens["admin"], "home-fan", {"command": "on"})
    assert fan.commands() == [("on", {})]


def test_a_bad_command_is_422_naming_the_parameter_and_is_not_sent(door: Door, fan: Fan) -> None:
    too_fast = error_of(
        command(door, door.token, "home-fan", {"command": "set_speed", "params": {"speed": 9}}), 422
    )
    assert too_fast["details"] == [{"field": "speed", "reason": "9 is above the maximum 5"}]
    assert "'home-fan' (fan) cannot set_speed: speed: 9 is above the maximum 5" in too_fast["message"]
    unknown = error_of(command(door, door.token, "home-fan", {"command": "spin"}), 422)
    assert unknown["details"][0]["field"] == "command"
    assert "fan has no command 'spin' (it has: off, on, set_speed)" in unknown["message"]
    missing = error_of(command(door, door.token, "home-fan", {"command": "set_speed"}), 422)
    assert missing["details"] == [{"field": "speed", "reason": "missing"}]
    no_body = error_of(command(door, door.token, "home-fan", {"params": {}}), 422)
    assert [detail["loc"] for detail in no_body["details"]] == [["command"]]
    sensor = error_of(command(door, door.token, "home-temp", {"command": "on"}), 422)
    assert sensor["details"] == [
        {"field": "device", "reason": "'home-temp' is a sensor (temperature); only controllers take commands"}
    ]
    error_of(command(door, door.token, "no-such-fan", {"command": "on"}), 404)
    assert fan.commands() == []  # none of them reached the device
    command(door, door.token, "home-fan", {"command": "on"})
    assert fan.commands() == [("on", {})]


def test_the_devices_rejection_is_422_with_its_reason(door: Door, fan: Fan) -> None:
    error = error_of(
        command(door, door.token, "home-fan", {"command": "set_speed", "params": {"speed": 5}}), 422
    )
    assert error["message"] == f"home-fan rejected set_speed: {OVERHEAT}"
    assert fan.commands() == [("set_speed", {"speed": 5})]
    assert door.state("home-fan")["values"] == {"on": False, "speed": 0}


def test_a_device_that_does_not_answer_is_504_saying_what_to_check(
    door: Door, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No endpoint plays home-ac; the route waits ``device.command_timeout_s`` (10 s), shortened here."""
    monkeypatch.setattr(door.bus.settings.device, "command_timeout_s", 1.0)
    error = error_of(command(door, door.token, "home-ac", {"command": "off"}), 504)
    assert error["type"] == "Timeout"
    assert error["message"] == (
        "home-ac did not answer 'off' within 1s: its simulator runs in sim-lake-home (`aiot status`); "
        "`aiot device show home-ac` shows when it last reported. Send it again once it runs."
    )


def test_the_cli_commands_through_the_front_door(door: Door, fan: Fan, tokens: dict[str, str]) -> None:
    printed = door.ok("device", "command", "home-fan", "set_speed", "speed=2")
    assert json.loads(printed) == {"on": True, "speed": 2}
    assert fan.commands() == [("set_speed", {"speed": 2})]
    # Sent by the front door, not by a producer of the CLI's own: the state names the front door.
    latest = door.bus.latest(door.bus.topics.device_state("home-fan"), 10)
    assert latest is not None
    assert latest.open(DeviceState).by == door.bus.source
    # An end user's CLI gets the front door's 403.
    (door.home / "profiles").mkdir(mode=0o700)
    (door.home / "profiles" / "enduser.json").write_text(
        json.dumps({"url": door.url, "username": "enduser", "token": tokens["enduser"]})
    )
    refused = door.aiot("--as", "enduser", "device", "command", "home-fan", "off")
    assert refused.returncode == 1
    assert "platform_configurer" in refused.stderr
    command(door, door.token, "home-fan", {"command": "on"})
    assert fan.commands() == [("set_speed", {"speed": 2}), ("on", {})]
