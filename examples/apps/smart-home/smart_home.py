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
wires them to the devices, the model and a status page (``/``, ``/status.json``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from platform_sdk.errors import PlatformError

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
PROBLEM_REPEAT_S = 60.0  # the same problem is logged once a minute at most
RETRY_S = 2.0
LOOP_S = 0.1
EVENTS_KEPT = 20


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
        self.zone = ZoneInfo(app.config.timezone)
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
        self.error: str | None = None
        self.logged: dict[str, float] = {}  # problem → when it was last logged
        self.events: deque[dict[str, str]] = deque(maxlen=EVENTS_KEPT)

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

    def decide(self, reading: SensorData) -> None:
        temperature = float(reading.values["temperature"])
        humidity = humidity_of(reading.values)
        try:
            comfort = self.app.model_call("comfort", "predict", temperature=temperature, humidity=humidity)
        except PlatformError as exc:
            self.problem(f"comfort: {exc}")
            return
        running = self.plan.ac_on if self.plan is not None else False
        new = plan(temperature, comfort, running)
        with self.lock:
            self.temperature, self.humidity, self.comfort = temperature, humidity, dict(comfort)
            before, self.plan = self.plan, new
            self.error = None
        if before is None or before.ac_on != new.ac_on:
            what = f"on, cooling to {new.setpoint:g} °C" if new.ac_on else "off"
            self.event(f"AC {what}: room {temperature:g} °C")

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
                self.ac = wanted_ac
            if wanted.fan_speed != self.fan and self.fan_hold.may_change(now):
                self.app.send_controller("fan", "set_speed", speed=wanted.fan_speed)
                self.fan_hold.changed(now)
                if self.fan is not None:
                    self.event(f"fan to speed {wanted.fan_speed}")
                self.fan = wanted.fan_speed
        except PlatformError as exc:
            self.retry_at = now + RETRY_S
            self.problem(f"devices: {exc}")

    def problem(self, text: str) -> None:
        """Something went wrong: shown on the page; logged (and listed) once a minute at most."""
        now = time.monotonic()
        with self.lock:
            self.error = text
            last = self.logged.get(text)
            if last is not None and now - last < PROBLEM_REPEAT_S:
                return
            self.logged[text] = now
        self.app.log.warning("%s", text)
        self.event(text)

    def event(self, text: str) -> None:
        with self.lock:
            self.events.appendleft({"time": datetime.now(self.zone).strftime("%H:%M:%S"), "text": text})

    def status(self) -> dict[str, Any]:
        moment = datetime.now(self.zone)
        with self.lock:
            wanted, ac, fan, comfort = self.plan, self.ac, self.fan, self.comfort
            if wanted is None:
                headline = {"text": "Waiting for the temperature and the model...", "colour": "white"}
            elif wanted.ac_on:
                headline = {"text": f"AC cooling to {wanted.setpoint:g} °C", "colour": "blue"}
            else:
                headline = {"text": "AC off", "colour": "green"}
            ac_text = "not set yet" if ac is None else (f"on, cool to {ac[1]:g} °C" if ac[0] else "off")
            return {
                "app": self.app.manifest.name,
                "instance": self.app.instance_id,
                "location": self.app.location,
                "local_time": moment.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "headline": headline,
                "temperature": self.temperature,
                "humidity": self.humidity,
                "comfort": comfort,
                "ac_on": None if ac is None else ac[0],
                "ac_setpoint": None if ac is None else ac[1],
                "fan_speed": fan,
                "facts": [
                    ["Temperature", "-" if self.temperature is None else f"{self.temperature:g} °C"],
                    ["Humidity", "-" if self.humidity is None else f"{self.humidity:g} %"],
                    ["Readings", str(self.readings)],
                    ["AC rule", f"on above {AC_ON_ABOVE_C:g} °C, off below {AC_OFF_BELOW_C:g} °C"],
                    ["Comfort model", "-" if comfort is None else json.dumps(comfort)],
                    ["AC", ac_text],
                    ["Fan", "not set yet" if fan is None else ("off" if fan == 0 else f"speed {fan}")],
                    ["Problem", self.error or "none"],
                ],
                "frame": None,
                "events": list(self.events),
            }


def wsgi_app(state: SmartHome) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """The status page: ``/`` (HTML) and ``/status.json``."""
    page = PAGE.replace("%TITLE%", "Smart Home").encode()

    def respond(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in ("/", "/index.html"):
            body, kind = page, "text/html; charset=utf-8"
        elif path == "/status.json":
            body, kind = json.dumps(state.status()).encode(), "application/json"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        start_response(
            "200 OK",
            [("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
        )
        return [body]

    return respond


def run(app: App) -> None:
    """The entrypoint: decide in a thread, serve the status page until the instance stops."""
    state = SmartHome(app)
    app.sensor_stream("temperature", callback=state.on_reading)
    app.log.info(
        "smart home at %s: AC on above %g °C, off below %g °C", app.location, AC_ON_ABOVE_C, AC_OFF_BELOW_C
    )
    worker = threading.Thread(target=state.loop, name="home-loop", daemon=True)
    worker.start()
    try:
        app.serve(wsgi_app(state))
    finally:
        app.stopping.set()
        worker.join(timeout=30)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#f4f5f7;color:#222}
h1{font-size:1.3rem;margin:0}h2{font-size:1rem;margin:1.2rem 0 .3rem}#sub{color:#666;margin:.2rem 0 1rem}
#headline{font-size:1.6rem;font-weight:600;padding:.8rem 1rem;border-radius:.4rem;
  margin-bottom:1rem;background:#fff}
.red{background:#c62828!important;color:#fff}.green{background:#2e7d32!important;color:#fff}
.yellow{background:#f9a825!important}.blue{background:#1565c0!important;color:#fff}
table{border-collapse:collapse;background:#fff}td{padding:.3rem .7rem;border-bottom:1px solid #eee}
td:first-child{color:#666}
ol{background:#fff;padding:.5rem 2.2rem;max-height:16rem;overflow:auto;font-size:.9rem}
</style></head><body>
<h1>%TITLE%</h1><div id="sub">connecting...</div>
<div id="headline">...</div>
<table id="facts"></table>
<h2>Events</h2><ol id="events"></ol>
<script>
const $ = (id) => document.getElementById(id);
function row(cells) {
  const tr = document.createElement('tr');
  for (const text of cells) { const td = document.createElement('td'); td.textContent = text; tr.append(td); }
  return tr;
}
async function refresh() {
  try {
    const s = await (await fetch('status.json', {cache: 'no-store'})).json();
    $('sub').textContent = s.location + ' \\u00b7 ' + s.local_time + ' \\u00b7 instance ' + s.instance;
    $('headline').textContent = s.headline.text; $('headline').className = s.headline.colour;
    $('facts').replaceChildren(...s.facts.map(row));
    $('events').replaceChildren(...s.events.map((e) => {
      const li = document.createElement('li'); li.textContent = e.time + '  ' + e.text; return li;
    }));
  } catch (error) { $('sub').textContent = 'status unavailable: ' + error; }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
