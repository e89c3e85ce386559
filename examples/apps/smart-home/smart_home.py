"""Smart Home: the room temperature decides the AC; the comfort model gives its set-point and the fan.

What it reads, decides and drives (see ``examples/apps/README.md``):

* every reading of ``temperature`` (a stream; ``humidity`` too when the sensor reports it, else
  ``DEFAULT_HUMIDITY``, 50 %) goes to the ``comfort`` model (``predict``);
* the AC runs when the temperature is above ``AC_ON_ABOVE_C`` (22.0 °C) and stops when it falls
  below ``AC_OFF_BELOW_C`` (21.5 °C); in between it stays as it is (so sensor noise at the
  threshold does not toggle it). Running, it cools (``mode`` cool) to the model's ``ac_setpoint``
  rounded to ``SETPOINT_STEP_C`` (0.5 °C): at 50 % humidity 23.5 °C, where the AC starts at 24.0;
* the ``fan`` runs at the model's ``fan_speed`` (0-5), changed at most every ``FAN_HOLD_S``
  (10 s) so that a reading near one of the model's steps does not make it hunt.

The sample home (``lake-home``'s ``home-temp``: 21 ± 3 °C, coolest at 5:00, warmest at 15:00)
crosses 22.0 °C on the way up at about 11:05 and falls below 21.5 °C at about 21:15 (simulated
time; ``settings.device.time_scale`` makes the day pass faster).

The decisions are pure (``ac_should_run``, ``ac_setpoint``, ``plan``, ``FanHold``); ``run(app)``
wires them to the devices, the model and the SDK's ``StatusPage`` (``/``, ``/status.json``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from platform_sdk.errors import PlatformError
from platform_sdk.status_page import StatusPage

if TYPE_CHECKING:
    from platform_sdk.app import App
    from platform_sdk.devices import SensorData

AC_ON_ABOVE_C = 22.0  # the AC starts above this room temperature
AC_OFF_BELOW_C = 21.5  # and stops below this one
DEFAULT_HUMIDITY = 50.0  # % when the sensor reports no humidity
SETPOINT_STEP_C = 0.5  # the model's set-point is rounded to this
SETPOINT_RANGE = (16.0, 30.0)  # what the AC accepts
AC_MODE = "cool"
FAN_HOLD_S = 10.0  # the fan's speed changes at most this often
RETRY_S = 2.0  # a command a device did not take is tried again after this long
LOOP_S = 0.1


# decisions (pure) -----------------------------------------------------------------------------
def ac_should_run(temperature: float, running: bool) -> bool:
    """On above ``AC_ON_ABOVE_C``, off below ``AC_OFF_BELOW_C``, unchanged in between."""
    if temperature > AC_ON_ABOVE_C:
        return True
    if temperature < AC_OFF_BELOW_C:
        return False
    return running


def ac_setpoint(model_setpoint: float, step: float = SETPOINT_STEP_C) -> float:
    """The model's set-point rounded to ``step`` and kept within what the AC accepts."""
    low, high = SETPOINT_RANGE
    return min(max(round(model_setpoint / step) * step, low), high)


def humidity_of(values: Mapping[str, Any]) -> float:
    """The reading's humidity, or ``DEFAULT_HUMIDITY`` when the sensor reports none."""
    humidity = values.get("humidity")
    return (
        float(humidity)
        if isinstance(humidity, int | float) and not isinstance(humidity, bool)
        else DEFAULT_HUMIDITY
    )


@dataclass(frozen=True)
class Plan:
    """What the home should do: the AC on or off (and its set-point), the fan's speed."""

    ac_on: bool
    setpoint: float
    fan_speed: int


def plan(temperature: float, comfort: Mapping[str, Any], ac_running: bool) -> Plan:
    """The plan for ``temperature`` given the comfort model's answer and whether the AC runs now."""
    return Plan(
        ac_on=ac_should_run(temperature, ac_running),
        setpoint=ac_setpoint(float(comfort["ac_setpoint"])),
        fan_speed=max(0, min(5, int(comfort["fan_speed"]))),
    )


class FanHold:
    """Lets the fan's speed change at most every ``hold_s`` seconds (the first change at once)."""

    def __init__(self, hold_s: float = FAN_HOLD_S) -> None:
        self.hold_s = hold_s
        self.changed_at: float | None = None

    def may_change(self, now: float) -> bool:
        return self.changed_at is None or now - self.changed_at >= self.hold_s

    def changed(self, now: float) -> None:
        self.changed_at = now


# the running app ------------------------------------------------------------------------------
class SmartHome:
    """The app's state, shared by its loop, the sensor's stream and its status page."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.page = StatusPage.for_app(app, fields=self.fields)
        self.page.set_headline("Waiting for the temperature and the model...", "white")
        self.lock = threading.Lock()
        self.newest: SensorData | None = None  # the newest reading, not yet acted on
        self.readings = 0
        self.temperature: float | None = None
        self.humidity: float | None = None
        self.comfort: dict[str, Any] | None = None
        self.plan: Plan | None = None
        self.ac: tuple[bool, float | None] | None = None  # what the AC was last set to
        self.fan: int | None = None  # the speed the fan was last set to
        self.fan_hold = FanHold(FAN_HOLD_S)
        self.retry_at = 0.0

    def on_reading(self, data: SensorData) -> None:
        if isinstance(data.values.get("temperature"), int | float):
            with self.lock:
                self.newest = data
                self.readings += 1

    def loop(self) -> None:
        while not self.app.wait(LOOP_S):
            self.step(time.monotonic())

    def step(self, now: float) -> None:
        with self.lock:
            reading, self.newest = self.newest, None
        if reading is not None:
            self.decide(reading)
        self.drive(now)
        self.show_facts()

    def decide(self, reading: SensorData) -> None:
        temperature = float(reading.values["temperature"])
        humidity = humidity_of(reading.values)
        try:
            comfort = self.app.model_call("comfort", "predict", temperature=temperature, humidity=humidity)
        except PlatformError as exc:
            self.page.report_problem(f"comfort: {exc}")
            return
        running = self.plan.ac_on if self.plan is not None else False
        new = plan(temperature, comfort, running)
        with self.lock:
            self.temperature, self.humidity, self.comfort = temperature, humidity, dict(comfort)
            before, self.plan = self.plan, new
        self.page.clear_problem()
        if new.ac_on:
            self.page.set_headline(f"AC cooling to {new.setpoint:g} °C", "blue")
        else:
            self.page.set_headline("AC off", "green")
        if before is None or before.ac_on != new.ac_on:
            what = f"on, cooling to {new.setpoint:g} °C" if new.ac_on else "off"
            self.page.add_event(f"AC {what}: room {temperature:g} °C")

    def drive(self, now: float) -> None:
        """Bring the AC and the fan to the plan (again later if a device fails)."""
        wanted = self.plan
        if wanted is None or now < self.retry_at:
            return
        wanted_ac = (True, wanted.setpoint) if wanted.ac_on else (False, None)
        try:
            if self.ac != wanted_ac:
                if wanted.ac_on:
                    self.app.send_controller("ac", "set", setpoint=wanted.setpoint, mode=AC_MODE)
                    if self.ac is None or not self.ac[0]:
                        self.app.send_controller("ac", "on")
                    self.app.log.info(
                        "AC on, cooling to %g °C (room %s °C)", wanted.setpoint, self.temperature
                    )
                else:
                    self.app.send_controller("ac", "off")
                    self.app.log.info("AC off (room %s °C)", self.temperature)
                with self.lock:
                    self.ac = wanted_ac
            if wanted.fan_speed != self.fan and self.fan_hold.may_change(now):
                self.app.send_controller("fan", "set_speed", speed=wanted.fan_speed)
                self.fan_hold.changed(now)
                if self.fan is not None:
                    self.page.add_event(f"fan to speed {wanted.fan_speed}")
                with self.lock:
                    self.fan = wanted.fan_speed
        except PlatformError as exc:
            self.retry_at = now + RETRY_S
            self.page.report_problem(f"devices: {exc}")

    # the status page ---------------------------------------------------------------------------
    def show_facts(self) -> None:
        with self.lock:
            temperature, humidity, comfort = self.temperature, self.humidity, self.comfort
            ac, fan, readings = self.ac, self.fan, self.readings
        self.page.set_facts(
            [
                ("Temperature", "-" if temperature is None else f"{temperature:g} °C"),
                ("Humidity", "-" if humidity is None else f"{humidity:g} %"),
                ("Readings", str(readings)),
                ("AC rule", f"on above {AC_ON_ABOVE_C:g} °C, off below {AC_OFF_BELOW_C:g} °C"),
                ("Comfort model", "-" if comfort is None else json.dumps(comfort)),
                ("AC", "not set yet" if ac is None else (f"on, cool to {ac[1]:g} °C" if ac[0] else "off")),
                ("Fan", "not set yet" if fan is None else ("off" if fan == 0 else f"speed {fan}")),
            ]
        )

    def fields(self) -> dict[str, Any]:
        """The app's own fields of ``status.json``."""
        with self.lock:
            ac = self.ac
            return {
                "temperature": self.temperature,
                "humidity": self.humidity,
                "comfort": self.comfort,
                "ac_on": None if ac is None else ac[0],
                "ac_setpoint": None if ac is None else ac[1],
                "fan_speed": self.fan,
            }


def run(app: App) -> None:
    """The entrypoint: decide in a thread, serve the status page until the instance stops."""
    state = SmartHome(app)
    app.log.info(
        "smart home at %s: AC on above %g °C, off below %g °C", app.location, AC_ON_ABOVE_C, AC_OFF_BELOW_C
    )

    def watch() -> None:
        app.sensor_stream(
            "temperature", callback=state.on_reading
        )  # joins its group while the page already answers
        state.loop()

    app.serve(state.page.wsgi, worker=watch)
