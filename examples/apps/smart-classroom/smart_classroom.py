"""Smart Classroom: who is in and how bright it is decide the lights; the temperature decides the fan.

What it reads, decides and drives (see ``examples/apps/README.md``):

* ``camera`` frames (a stream): the newest goes to the ``faces`` model (face-detector, ``detect``)
  at most ``FACE_CHECKS_PER_S`` (1) times a second; the people count is the most faces found in
  one frame over the last ``PEOPLE_WINDOW_S`` (30 s), so a face turned away for a moment (or the
  simulator's person/empty cycle) does not empty the room;
* every ``DECIDE_EVERY_S`` (2 s) it reads the latest ``light`` and ``temperature`` readings
  (``app.get_sensor_data``: slow sensors need no stream); the lux, the people count and the local
  hour go to the ``occupancy`` model (``predict``): its ``lights_on`` is shown on the ``display``
  ("Lights on - 2 people in", yellow; "Lights off - nobody in", white), sent only when it changes;
* the temperature drives the ``fan``: speed n once the temperature reaches the n-th of
  ``FAN_STEPS_C`` (25, 27, 29, 31, 33 °C), off below 25 °C; a speed drops only once the temperature
  is ``FAN_HYSTERESIS_C`` (0.5 °C) below its step, so sensor noise does not make the fan hunt.

The decisions are pure (``RateLimiter``, ``PeopleCounter``, ``fan_speed_for``, ``display_text``);
``run(app)`` wires them to the devices, the models and a status page (``/``, ``/status.json``,
``/frame.jpg``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from platform_sdk.errors import PlatformError

if TYPE_CHECKING:
    from platform_sdk.app import App
    from platform_sdk.devices import SensorData

FACE_CHECKS_PER_S = 1.0  # face-detector calls per second at most
PEOPLE_WINDOW_S = 30.0  # the people count is the most faces seen in one frame over this long
DECIDE_EVERY_S = 2.0  # how often the occupancy model and the fan rule run
FAN_STEPS_C = (25.0, 27.0, 29.0, 31.0, 33.0)  # °C at which the fan goes to speed 1, 2, ... 5
FAN_HYSTERESIS_C = 0.5  # a speed drops only this far below its step
LIGHTS_ON_COLOUR, LIGHTS_OFF_COLOUR = "yellow", "white"
READ_TIMEOUT_S = 1.0  # how long a read of the light or temperature sensor waits for a first reading
PROBLEM_REPEAT_S = 60.0  # the same problem is logged once a minute at most
RETRY_S = 2.0
LOOP_S = 0.1
EVENTS_KEPT = 20


# decisions (pure) -----------------------------------------------------------------------------
def hour_of_day(moment: datetime) -> float:
    """Hours since midnight in ``moment``'s own time zone, e.g. 13.5 at 13:30."""
    return moment.hour + moment.minute / 60 + moment.second / 3600


class RateLimiter:
    """At most ``per_second`` events a second: ``allow(now)`` says yes at most every 1/per_second s."""

    def __init__(self, per_second: float = FACE_CHECKS_PER_S) -> None:
        if per_second <= 0:
            raise ValueError(f"per_second must be above 0, not {per_second}")
        self.interval = 1.0 / per_second
        self.last: float | None = None

    def allow(self, now: float) -> bool:
        """True (and counted) when at least ``interval`` seconds passed since the last allowed one."""
        if self.last is not None and now - self.last < self.interval:
            return False
        self.last = now
        return True


class PeopleCounter:
    """People in the room: the most faces found in one frame within the last ``window_s`` seconds."""

    def __init__(self, window_s: float = PEOPLE_WINDOW_S) -> None:
        self.window_s = window_s
        self.seen: deque[tuple[float, int]] = deque()

    def add(self, now: float, faces: int) -> None:
        self.seen.append((now, faces))
        self._forget(now)

    def count(self, now: float) -> int:
        self._forget(now)
        return max((faces for _, faces in self.seen), default=0)

    def _forget(self, now: float) -> None:
        while self.seen and now - self.seen[0][0] > self.window_s:
            self.seen.popleft()


def fan_speed_for(
    temperature: float,
    current: int = 0,
    steps: Sequence[float] = FAN_STEPS_C,
    hysteresis: float = FAN_HYSTERESIS_C,
) -> int:
    """The fan's speed at ``temperature`` when it runs at ``current``.

    Up at once to the number of ``steps`` reached; down only to the number of steps the temperature
    is still within ``hysteresis`` of; else it stays.
    """
    up = sum(temperature >= step for step in steps)
    down = sum(temperature >= step - hysteresis for step in steps)
    if up > current:
        return up
    if down < current:
        return down
    return current


def display_text(lights_on: bool, people: int) -> tuple[str, str]:
    """What the display shows for a decision, and in which colour."""
    who = "nobody in" if people == 0 else f"{people} {'person' if people == 1 else 'people'} in"
    if lights_on:
        return f"Lights on - {who}", LIGHTS_ON_COLOUR
    return f"Lights off - {who}", LIGHTS_OFF_COLOUR


# the running app ------------------------------------------------------------------------------
@dataclass
class Detection:
    seq: int
    image: bytes
    content_type: str
    faces: int
    boxes: list[list[int]]
    at: float


class SmartClassroom:
    """The app's state, shared by its loop, the camera's stream and its status page."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.zone = ZoneInfo(app.config.timezone)
        self.limiter = RateLimiter(FACE_CHECKS_PER_S)
        self.people = PeopleCounter(PEOPLE_WINDOW_S)
        self.lock = threading.Lock()
        self.newest: SensorData | None = None  # the camera's newest frame, not yet analysed
        self.frames = 0
        self.detection: Detection | None = None
        self.lux: float | None = None
        self.temperature: float | None = None
        self.decision: dict[str, Any] | None = None  # the occupancy model's last answer
        self.people_now = 0
        self.next_decision = 0.0
        self.display: tuple[str, str] | None = None  # what the display was last set to
        self.fan: int | None = None  # the speed the fan was last set to
        self.retry_at = 0.0
        self.error: str | None = None
        self.logged: dict[str, float] = {}  # problem → when it was last logged
        self.events: deque[dict[str, str]] = deque(maxlen=EVENTS_KEPT)

    # inputs -----------------------------------------------------------------------------------
    def on_frame(self, data: SensorData) -> None:
        if data.image is not None:
            with self.lock:
                self.newest = data
                self.frames += 1

    def read(self, alias: str, field: str) -> float | None:
        """The latest reading's ``field`` of the sensor ``alias``, or None (a problem) if there is none."""
        try:
            value = self.app.get_sensor_data(alias, timeout=READ_TIMEOUT_S).values.get(field)
        except PlatformError as exc:
            self.problem(f"{alias}: {exc}")
            return None
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def take_frame(self, now: float) -> SensorData | None:
        with self.lock:
            if self.newest is None or not self.limiter.allow(now):
                return None
            frame, self.newest = self.newest, None
            return frame

    # the loop ---------------------------------------------------------------------------------
    def loop(self) -> None:
        while not self.app.wait(LOOP_S):
            self.step(time.monotonic())

    def step(self, now: float) -> None:
        frame = self.take_frame(now)
        if frame is not None:
            self.count_faces(frame, now)
        if now >= self.next_decision:
            self.next_decision = now + DECIDE_EVERY_S
            self.decide(now)
        self.drive(now)

    def count_faces(self, frame: SensorData, now: float) -> None:
        assert frame.image is not None
        try:
            result = self.app.model_call("faces", "detect", image=frame.image)
        except PlatformError as exc:
            self.problem(f"face-detector: {exc}")
            return
        boxes = [[int(v) for v in box] for box in result.get("boxes", [])]
        faces = int(result.get("count", len(boxes)))
        with self.lock:
            self.people.add(now, faces)
            self.detection = Detection(
                frame.seq, frame.image, frame.content_type or "image/jpeg", faces, boxes, now
            )

    def decide(self, now: float) -> None:
        """The occupancy model on the latest light level and people count (if the light sensor spoke)."""
        lux, temperature = self.read("light", "lux"), self.read("temperature", "temperature")
        with self.lock:
            people = self.people.count(now)
            self.lux, self.people_now = lux, people
            if temperature is not None:
                self.temperature = temperature
        if lux is None:
            return
        hour = hour_of_day(datetime.now(self.zone))
        try:
            decision = self.app.model_call(
                "occupancy", "predict", light_level=lux, people_count=people, hour=round(hour, 2)
            )
        except PlatformError as exc:
            self.problem(f"occupancy: {exc}")
            return
        with self.lock:
            changed = self.decision is None or bool(self.decision["lights_on"]) != bool(decision["lights_on"])
            self.decision = dict(decision)
            self.error = None
        if changed:
            self.event(f"lights {'on' if decision['lights_on'] else 'off'}: {lux:g} lx, {people} in")

    def drive(self, now: float) -> None:
        """Bring the display and the fan to what the decisions want (again later if a device fails)."""
        with self.lock:
            decision, temperature, people = self.decision, self.temperature, self.people_now
        wanted_display = None if decision is None else display_text(bool(decision["lights_on"]), people)
        wanted_fan = None if temperature is None else fan_speed_for(temperature, self.fan or 0)
        if (wanted_display in (None, self.display) and wanted_fan in (None, self.fan)) or now < self.retry_at:
            return
        try:
            if wanted_display is not None and wanted_display != self.display:
                text, colour = wanted_display
                self.app.send_controller("display", "show", text=text, colour=colour)
                self.display = wanted_display
            if wanted_fan is not None and wanted_fan != self.fan:
                self.app.send_controller("fan", "set_speed", speed=wanted_fan)
                self.event(f"fan to speed {wanted_fan} at {temperature:g} °C")
                self.fan = wanted_fan
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

    # the status page ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        moment = datetime.now(self.zone)
        with self.lock:
            detection, decision, display, fan = self.detection, self.decision, self.display, self.fan
            lights_on = None if decision is None else bool(decision["lights_on"])
            level = None if decision is None else int(decision["level"])
            if decision is None:
                headline = {"text": "Waiting for the light sensor and the model...", "colour": "white"}
            else:
                text, colour = display_text(bool(lights_on), self.people_now)
                headline = {"text": text + (f" ({level}%)" if lights_on else ""), "colour": colour}
            return {
                "app": self.app.manifest.name,
                "instance": self.app.instance_id,
                "location": self.app.location,
                "local_time": moment.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "headline": headline,
                "people": self.people_now,
                "lux": self.lux,
                "temperature": self.temperature,
                "lights_on": lights_on,
                "level": level,
                "display": None if display is None else display[0],
                "fan_speed": fan,
                "facts": [
                    [f"People (most faces in one frame, last {PEOPLE_WINDOW_S:g} s)", str(self.people_now)],
                    ["Faces in the last analysed frame", "-" if detection is None else str(detection.faces)],
                    ["Frames received", str(self.frames)],
                    ["Light", "-" if self.lux is None else f"{self.lux:g} lx"],
                    ["Lights", "-" if decision is None else (f"on, {level}%" if lights_on else "off")],
                    ["Display", "not set yet" if display is None else display[0]],
                    ["Temperature", "-" if self.temperature is None else f"{self.temperature:g} °C"],
                    ["Fan", "not set yet" if fan is None else ("off" if fan == 0 else f"speed {fan}")],
                    ["Fan steps", ", ".join(f"{step:g}" for step in FAN_STEPS_C) + " °C"],
                    ["Problem", self.error or "none"],
                ],
                "frame": None
                if detection is None
                else {"seq": detection.seq, "boxes": detection.boxes, "age_s": round(now - detection.at, 1)},
                "events": list(self.events),
            }

    def frame(self) -> tuple[bytes, str] | None:
        with self.lock:
            return None if self.detection is None else (self.detection.image, self.detection.content_type)


def wsgi_app(state: SmartClassroom) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """The status page: ``/`` (HTML), ``/status.json`` and ``/frame.jpg`` (the last analysed frame)."""
    page = PAGE.replace("%TITLE%", "Smart Classroom").encode()

    def respond(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        body: bytes
        if path in ("/", "/index.html"):
            body, kind = page, "text/html; charset=utf-8"
        elif path == "/status.json":
            body, kind = json.dumps(state.status()).encode(), "application/json"
        elif path == "/frame.jpg" and (frame := state.frame()) is not None:
            body, kind = frame
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
    state = SmartClassroom(app)
    app.sensor_stream("camera", callback=state.on_frame)
    app.log.info("smart classroom at %s: fan steps %s °C", app.location, FAN_STEPS_C)
    worker = threading.Thread(target=state.loop, name="classroom-loop", daemon=True)
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
.row{display:flex;gap:1.5rem;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse;background:#fff}td{padding:.3rem .7rem;border-bottom:1px solid #eee}
td:first-child{color:#666}canvas{max-width:480px;width:100%;border-radius:.3rem}
ol{background:#fff;padding:.5rem 2.2rem;max-height:16rem;overflow:auto;font-size:.9rem}
</style></head><body>
<h1>%TITLE%</h1><div id="sub">connecting...</div>
<div id="headline">...</div>
<div class="row"><canvas id="frame" hidden></canvas><table id="facts"></table></div>
<h2>Events</h2><ol id="events"></ol>
<script>
const $ = (id) => document.getElementById(id);
let shownFrame = null;
function row(cells) {
  const tr = document.createElement('tr');
  for (const text of cells) { const td = document.createElement('td'); td.textContent = text; tr.append(td); }
  return tr;
}
function draw(frame) {
  const img = new Image();
  img.onload = () => {
    const canvas = $('frame'), g = canvas.getContext('2d');
    canvas.width = img.width; canvas.height = img.height; canvas.hidden = false;
    g.drawImage(img, 0, 0); g.strokeStyle = '#ff1744'; g.lineWidth = 3;
    for (const [x, y, w, h] of frame.boxes) g.strokeRect(x, y, w, h);
  };
  img.src = 'frame.jpg?seq=' + frame.seq;
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
    if (s.frame && s.frame.seq !== shownFrame) { shownFrame = s.frame.seq; draw(s.frame); }
  } catch (error) { $('sub').textContent = 'status unavailable: ' + error; }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
