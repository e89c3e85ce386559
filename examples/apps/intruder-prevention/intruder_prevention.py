"""Intruder Prevention: a face on the bank's camera outside its allowed hours raises the alarm.

What it reads, decides and drives (see ``examples/apps/README.md``):

* reads every frame of ``camera`` (a stream) and keeps only the newest;
* sends the newest frame to the ``faces`` model (face-detector, endpoint ``detect``) at most
  ``MAX_DETECTIONS_PER_S`` (2) times a second — frames in between are skipped, not queued;
* a face seen at a local hour outside ``ALLOWED_HOURS`` is an intruder: the ``display`` shows
  the alert in red, the ``alarm`` (a fan played as the branch's siren) runs at speed 5, and the
  alert is logged through ``app.log`` (the platform logger collects it);
* ``CLEAR_AFTER_S`` (10 s) without an intruder clears the display and silences the alarm.

``ALLOWED_HOURS`` is empty by default: every face is an intruder at any hour, so a camera showing
a person alerts within seconds (the platform's end-to-end test counts on it). A bank would set
e.g. ``((8, 18),)``: faces between 8:00 and 18:00 at the location (its time zone) are staff.

The decisions are pure (``in_allowed_hours``, ``alert_text``, ``RateLimiter``, ``IntruderWatch``);
``run(app)`` wires them to the devices, the model and the SDK's ``StatusPage`` (``/``,
``/status.json``, ``/frame.jpg``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from platform_sdk.errors import PlatformError
from platform_sdk.status_page import StatusPage

if TYPE_CHECKING:
    from platform_sdk.app import App
    from platform_sdk.devices import SensorData

Hours = tuple[float, float]

# Local hours [start, end) in which a face is expected (staff); a window may wrap midnight, e.g.
# (22, 6). Empty: no face is ever expected, every face raises the alarm.
ALLOWED_HOURS: tuple[Hours, ...] = ()
MAX_DETECTIONS_PER_S = 2.0  # face-detector calls per second at most
CLEAR_AFTER_S = 10.0  # seconds without an intruder before the display clears and the alarm stops
ALARM_SPEED = 5  # the siren's "volume": the fan's top speed
ALERT_COLOUR = "red"
RETRY_S = 2.0  # a command a device did not take is tried again after this long
LOOP_S = 0.05


# decisions (pure) -----------------------------------------------------------------------------
def hour_of_day(moment: datetime) -> float:
    """Hours since midnight in ``moment``'s own time zone, e.g. 13.5 at 13:30."""
    return moment.hour + moment.minute / 60 + moment.second / 3600


def in_allowed_hours(hour: float, allowed: Sequence[Hours] = ALLOWED_HOURS) -> bool:
    """Whether ``hour`` (0-24) falls in one of the ``allowed`` windows ``[start, end)``.

    ``(8, 18)`` is 8:00 to 17:59; ``(22, 6)`` wraps midnight; ``(0, 24)`` is the whole day; a window
    whose start equals its end is empty.
    """
    for start, end in allowed:
        if start <= end:
            if start <= hour < end:
                return True
        elif hour >= start or hour < end:
            return True
    return False


def clock(hour: float) -> str:
    """``8.5`` as ``08:30``."""
    minutes = round(hour * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def alert_text(faces: int, moment: datetime) -> str:
    """What the display shows: ``INTRUDER ALERT: 1 face at 23:15``."""
    noun = "face" if faces == 1 else "faces"
    return f"INTRUDER ALERT: {faces} {noun} at {moment:%H:%M}"


class RateLimiter:
    """At most ``per_second`` events a second: ``allow(now)`` says yes at most every 1/per_second s."""

    def __init__(self, per_second: float = MAX_DETECTIONS_PER_S) -> None:
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


class IntruderWatch:
    """Alert or not, from face counts over time: ``observe`` each detection, ``tick`` in between.

    Both return ``"alert"`` when an alert starts, ``"clear"`` when it ends, else None.
    """

    def __init__(self, allowed_hours: Sequence[Hours] = ALLOWED_HOURS, clear_after_s: float = CLEAR_AFTER_S):
        self.allowed_hours = tuple(allowed_hours)
        self.clear_after_s = clear_after_s
        self.alerting = False
        self.last_intruder_at: float | None = None

    def is_intruder(self, faces: int, hour: float) -> bool:
        return faces > 0 and not in_allowed_hours(hour, self.allowed_hours)

    def observe(self, faces: int, now: float, hour: float) -> str | None:
        """A detection of ``faces`` at monotonic time ``now`` and local ``hour``."""
        if self.is_intruder(faces, hour):
            self.last_intruder_at = now
            if not self.alerting:
                self.alerting = True
                return "alert"
            return None
        return self.tick(now)

    def tick(self, now: float) -> str | None:
        """Time passing: the alert ends ``clear_after_s`` after the last intruder."""
        if self.alerting and (
            self.last_intruder_at is None or now - self.last_intruder_at >= self.clear_after_s
        ):
            self.alerting = False
            return "clear"
        return None


# the running app ------------------------------------------------------------------------------
class IntruderPrevention:
    """The app's state, shared by its watch loop, the camera's stream and its status page."""

    def __init__(self, app: App, allowed_hours: Sequence[Hours] = ALLOWED_HOURS) -> None:
        self.app = app
        self.watch = IntruderWatch(allowed_hours, CLEAR_AFTER_S)
        self.limiter = RateLimiter(MAX_DETECTIONS_PER_S)
        self.page = StatusPage.for_app(app, fields=self.fields)
        self.page.set_headline("All clear", "green")
        self.lock = threading.Lock()
        self.newest: SensorData | None = None  # the camera's newest frame, not yet analysed
        self.frames = 0
        self.analysed = 0
        self.faces: int | None = None  # in the last analysed frame
        self.alert = ""
        self.shown: bool | None = None  # what the display and the alarm were last set to
        self.retry_at = 0.0

    # inputs -----------------------------------------------------------------------------------
    def on_frame(self, data: SensorData) -> None:
        if data.image is None:
            return
        with self.lock:
            self.newest = data
            self.frames += 1

    def take_frame(self, now: float) -> SensorData | None:
        """The newest unanalysed frame, if the rate limit lets one through now."""
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
        """One turn: maybe a face check of the newest frame, then the devices brought in line."""
        action: str | None = None
        frame = self.take_frame(now)
        found = None if frame is None else self.detect(frame)
        if frame is not None and found is not None:
            moment = self.page.now()
            action = self.watch.observe(found, now, hour_of_day(moment))
            if action == "alert":
                self.alert = alert_text(found, moment)
                self.app.log.warning(
                    "intruder alert at %s: %s (camera %s)", self.app.location, self.alert, frame.device_id
                )
                self.page.set_headline(self.alert, ALERT_COLOUR)
                self.page.add_event(self.alert)
        else:
            action = self.watch.tick(now)
        if action == "clear":
            quiet = self.watch.clear_after_s
            self.app.log.info("all clear at %s: no intruder for %gs", self.app.location, quiet)
            self.page.set_headline("All clear", "green")
            self.page.add_event("all clear")
        self.drive(now)
        self.show_facts(now)

    def detect(self, frame: SensorData) -> int | None:
        assert frame.image is not None
        try:
            result = self.app.model_call("faces", "detect", image=frame.image)
        except PlatformError as exc:
            self.page.report_problem(f"face-detector: {exc}")
            return None
        boxes = [[int(v) for v in box] for box in result.get("boxes", [])]
        faces = int(result.get("count", len(boxes)))
        self.page.set_frame(
            frame.image, boxes=boxes, seq=frame.seq, content_type=frame.content_type or "image/jpeg"
        )
        self.page.clear_problem()
        with self.lock:
            self.analysed += 1
            self.faces = faces
        return faces

    def drive(self, now: float) -> None:
        """Bring the display and the alarm to what the watch wants (again later if a device fails)."""
        wanted = self.watch.alerting
        if self.shown == wanted or now < self.retry_at:
            return
        try:
            if wanted:
                self.app.send_controller("display", "show", text=self.alert, colour=ALERT_COLOUR)
                self.app.send_controller("alarm", "set_speed", speed=ALARM_SPEED)
            else:
                self.app.send_controller("display", "clear")
                self.app.send_controller("alarm", "off")
        except PlatformError as exc:
            self.retry_at = now + RETRY_S
            self.page.report_problem(f"devices: {exc}")
            return
        with self.lock:
            self.shown = wanted

    # the status page ---------------------------------------------------------------------------
    def allowed_now(self) -> bool:
        return in_allowed_hours(hour_of_day(self.page.now()), self.watch.allowed_hours)

    def devices_shown(self) -> tuple[str, str]:
        """What the display and the alarm were last set to, in words."""
        with self.lock:
            shown = self.shown
        if shown is None:
            return "not set yet", "not set yet"
        return ("alert", "sounding") if shown else ("clear", "silent")

    def show_facts(self, now: float) -> None:
        allowed, (display, alarm) = self.allowed_now(), self.devices_shown()
        last = self.watch.last_intruder_at
        hours = ", ".join(f"{clock(a)}-{clock(b)}" for a, b in self.watch.allowed_hours) or "none"
        with self.lock:
            faces, frames, analysed = self.faces, self.frames, self.analysed
        self.page.set_facts(
            [
                ("Faces in the last analysed frame", "-" if faces is None else str(faces)),
                ("Frames received / analysed", f"{frames} / {analysed}"),
                ("Face checks", f"at most {MAX_DETECTIONS_PER_S:g} a second"),
                ("Allowed hours", f"{hours} (now {'allowed' if allowed else 'not allowed'})"),
                ("Last intruder", "-" if last is None else f"{now - last:.0f} s ago"),
                ("Clears after", f"{self.watch.clear_after_s:g} s without an intruder"),
                ("Display / alarm", f"{display} / {alarm}"),
            ]
        )

    def fields(self) -> dict[str, Any]:
        """The app's own fields of ``status.json``."""
        display, alarm = self.devices_shown()
        with self.lock:
            faces = self.faces
        return {
            "alert": self.watch.alerting,
            "faces": faces,
            "allowed_now": self.allowed_now(),
            "display": display,
            "alarm": alarm,
        }


def run(app: App) -> None:
    """The entrypoint: watch the camera in a thread, serve the status page until the instance stops."""
    state = IntruderPrevention(app)
    app.log.info(
        "watching the camera at %s; allowed hours: %s",
        app.location,
        list(state.watch.allowed_hours) or "none",
    )

    def watch() -> None:
        app.sensor_stream("camera", callback=state.on_frame)  # joins its group while the page already answers
        state.loop()

    app.serve(state.page.wsgi, worker=watch)
