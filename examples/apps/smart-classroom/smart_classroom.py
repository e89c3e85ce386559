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
``run(app)`` wires them to the devices, the models and the SDK's ``StatusPage`` (``/``,
``/status.json``, ``/frame.jpg``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from platform_sdk.errors import PlatformError
from platform_sdk.status_page import StatusPage

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
RETRY_S = 2.0  # a command a device did not take is tried again after this long
LOOP_S = 0.1


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
class SmartClassroom:
    """The app's state, shared by its loop, the camera's stream and its status page."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.limiter = RateLimiter(FACE_CHECKS_PER_S)
        self.people = PeopleCounter(PEOPLE_WINDOW_S)
        self.page = StatusPage.for_app(app, fields=self.fields)
        self.page.set_headline("Waiting for the light sensor and the model...", "white")
        self.lock = threading.Lock()
        self.newest: SensorData | None = None  # the camera's newest frame, not yet analysed
        self.frames = 0
        self.faces: int | None = None  # in the last analysed frame
        self.lux: float | None = None
        self.temperature: float | None = None
        self.decision: dict[str, Any] | None = None  # the occupancy model's last answer
        self.people_now = 0
        self.next_decision = 0.0
        self.display: tuple[str, str] | None = None  # what the display was last set to
        self.fan: int | None = None  # the speed the fan was last set to
        self.retry_at = 0.0

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
            self.page.report_problem(f"{alias}: {exc}")
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
        self.show()

    def count_faces(self, frame: SensorData, now: float) -> None:
        assert frame.image is not None
        try:
            result = self.app.model_call("faces", "detect", image=frame.image)
        except PlatformError as exc:
            self.page.report_problem(f"face-detector: {exc}")
            return
        boxes = [[int(v) for v in box] for box in result.get("boxes", [])]
        faces = int(result.get("count", len(boxes)))
        self.page.set_frame(
            frame.image, boxes=boxes, seq=frame.seq, content_type=frame.content_type or "image/jpeg"
        )
        with self.lock:
            self.people.add(now, faces)
            self.faces = faces

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
        hour = hour_of_day(self.page.now())
        try:
            decision = self.app.model_call(
                "occupancy", "predict", light_level=lux, people_count=people, hour=round(hour, 2)
            )
        except PlatformError as exc:
            self.page.report_problem(f"occupancy: {exc}")
            return
        with self.lock:
            changed = self.decision is None or bool(self.decision["lights_on"]) != bool(decision["lights_on"])
            self.decision = dict(decision)
        self.page.clear_problem()
        if changed:
            self.page.add_event(f"lights {'on' if decision['lights_on'] else 'off'}: {lux:g} lx, {people} in")

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
                self.page.add_event(f"fan to speed {wanted_fan} at {temperature:g} °C")
                self.fan = wanted_fan
        except PlatformError as exc:
            self.retry_at = now + RETRY_S
            self.page.report_problem(f"devices: {exc}")

    # the status page ---------------------------------------------------------------------------
    def show(self) -> None:
        """The headline and the facts, from the state now."""
        with self.lock:
            decision, display, fan, faces = self.decision, self.display, self.fan, self.faces
            people, frames, lux, temperature = self.people_now, self.frames, self.lux, self.temperature
        if decision is None:
            lights = "-"
        else:
            lights_on, level = bool(decision["lights_on"]), int(decision["level"])
            text, colour = display_text(lights_on, people)
            self.page.set_headline(text + (f" ({level}%)" if lights_on else ""), colour)
            lights = f"on, {level}%" if lights_on else "off"
        self.page.set_facts(
            [
                (f"People (most faces in one frame, last {PEOPLE_WINDOW_S:g} s)", str(people)),
                ("Faces in the last analysed frame", "-" if faces is None else str(faces)),
                ("Frames received", str(frames)),
                ("Light", "-" if lux is None else f"{lux:g} lx"),
                ("Lights", lights),
                ("Display", "not set yet" if display is None else display[0]),
                ("Temperature", "-" if temperature is None else f"{temperature:g} °C"),
                ("Fan", "not set yet" if fan is None else ("off" if fan == 0 else f"speed {fan}")),
                ("Fan steps", ", ".join(f"{step:g}" for step in FAN_STEPS_C) + " °C"),
            ]
        )

    def fields(self) -> dict[str, Any]:
        """The app's own fields of ``status.json``."""
        with self.lock:
            decision, display = self.decision, self.display
            return {
                "people": self.people_now,
                "lux": self.lux,
                "temperature": self.temperature,
                "lights_on": None if decision is None else bool(decision["lights_on"]),
                "level": None if decision is None else int(decision["level"]),
                "display": None if display is None else display[0],
                "fan_speed": self.fan,
            }


def run(app: App) -> None:
    """The entrypoint: decide in a thread, serve the status page until the instance stops."""
    state = SmartClassroom(app)
    app.log.info("smart classroom at %s: fan steps %s °C", app.location, FAN_STEPS_C)

    def watch() -> None:
        app.sensor_stream("camera", callback=state.on_frame)  # joins its group while the page already answers
        state.loop()

    app.serve(state.page.wsgi, worker=watch)
