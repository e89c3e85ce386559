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
``run(app)`` wires them to the devices, the model and a status page (``/``, ``/status.json``,
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

Hours = tuple[float, float]

# Local hours [start, end) in which a face is expected (staff); a window may wrap midnight, e.g.
# (22, 6). Empty: no face is ever expected, every face raises the alarm.
ALLOWED_HOURS: tuple[Hours, ...] = ()
MAX_DETECTIONS_PER_S = 2.0  # face-detector calls per second at most
CLEAR_AFTER_S = 10.0  # seconds without an intruder before the display clears and the alarm stops
ALARM_SPEED = 5  # the siren's "volume": the fan's top speed
ALERT_COLOUR = "red"
PROBLEM_REPEAT_S = 60.0  # the same problem is logged once a minute at most
RETRY_S = 2.0  # a command a device did not take is tried again after this long
LOOP_S = 0.05
EVENTS_KEPT = 20


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
@dataclass
class Detection:
    seq: int
    image: bytes
    content_type: str
    faces: int
    boxes: list[list[int]]
    at: float


class IntruderPrevention:
    """The app's state, shared by its watch loop, the camera's stream and its status page."""

    def __init__(self, app: App, allowed_hours: Sequence[Hours] = ALLOWED_HOURS) -> None:
        self.app = app
        self.zone = ZoneInfo(app.config.timezone)
        self.watch = IntruderWatch(allowed_hours, CLEAR_AFTER_S)
        self.limiter = RateLimiter(MAX_DETECTIONS_PER_S)
        self.lock = threading.Lock()
        self.newest: SensorData | None = None  # the camera's newest frame, not yet analysed
        self.frames = 0
        self.analysed = 0
        self.detection: Detection | None = None
        self.alert = ""
        self.shown: bool | None = None  # what the display and the alarm were last set to
        self.retry_at = 0.0
        self.error: str | None = None
        self.logged: dict[str, float] = {}  # problem → when it was last logged
        self.events: deque[dict[str, str]] = deque(maxlen=EVENTS_KEPT)

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
        found = None if frame is None else self.detect(frame, now)
        if frame is not None and found is not None:
            moment = datetime.now(self.zone)
            action = self.watch.observe(found, now, hour_of_day(moment))
            if action == "alert":
                self.alert = alert_text(found, moment)
                self.app.log.warning(
                    "intruder alert at %s: %s (camera %s)", self.app.location, self.alert, frame.device_id
                )
                self.event(self.alert)
        else:
            action = self.watch.tick(now)
        if action == "clear":
            quiet = self.watch.clear_after_s
            self.app.log.info("all clear at %s: no intruder for %gs", self.app.location, quiet)
            self.event("all clear")
        self.drive(now)

    def detect(self, frame: SensorData, now: float) -> int | None:
        assert frame.image is not None
        try:
            result = self.app.model_call("faces", "detect", image=frame.image)
        except PlatformError as exc:
            self.problem(f"face-detector: {exc}")
            return None
        boxes = [[int(v) for v in box] for box in result.get("boxes", [])]
        faces = int(result.get("count", len(boxes)))
        with self.lock:
            self.analysed += 1
            self.detection = Detection(
                frame.seq, frame.image, frame.content_type or "image/jpeg", faces, boxes, now
            )
            self.error = None
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
            self.problem(f"devices: {exc}")
            return
        with self.lock:
            self.shown = wanted

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
            detection, shown = self.detection, self.shown
            alerting, last = self.watch.alerting, self.watch.last_intruder_at
            allowed = in_allowed_hours(hour_of_day(moment), self.watch.allowed_hours)
            hours = ", ".join(f"{clock(a)}-{clock(b)}" for a, b in self.watch.allowed_hours) or "none"
            display = "not set yet" if shown is None else ("alert" if shown else "clear")
            alarm = "not set yet" if shown is None else ("sounding" if shown else "silent")
            headline = (
                {"text": self.alert, "colour": "red"}
                if alerting
                else {"text": "All clear", "colour": "green"}
            )
            return {
                "app": self.app.manifest.name,
                "instance": self.app.instance_id,
                "location": self.app.location,
                "local_time": moment.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "headline": headline,
                "alert": alerting,
                "faces": detection.faces if detection else None,
                "allowed_now": allowed,
                "display": display,
                "alarm": alarm,
                "facts": [
                    ["Faces in the last analysed frame", "-" if detection is None else str(detection.faces)],
                    ["Frames received / analysed", f"{self.frames} / {self.analysed}"],
                    ["Face checks", f"at most {MAX_DETECTIONS_PER_S:g} a second"],
                    ["Allowed hours", f"{hours} (now {'allowed' if allowed else 'not allowed'})"],
                    ["Last intruder", "-" if last is None else f"{now - last:.0f} s ago"],
                    ["Clears after", f"{self.watch.clear_after_s:g} s without an intruder"],
                    ["Display / alarm", f"{display} / {alarm}"],
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


def wsgi_app(state: IntruderPrevention) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """The status page: ``/`` (HTML), ``/status.json`` and ``/frame.jpg`` (the last analysed frame)."""
    page = PAGE.replace("%TITLE%", "Intruder Prevention").encode()

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
    """The entrypoint: watch the camera in a thread, serve the status page until the instance stops."""
    state = IntruderPrevention(app)
    app.sensor_stream("camera", callback=state.on_frame)
    app.log.info(
        "watching the camera at %s; allowed hours: %s",
        app.location,
        list(state.watch.allowed_hours) or "none",
    )
    watcher = threading.Thread(target=state.loop, name="intruder-watch", daemon=True)
    watcher.start()
    try:
        app.serve(wsgi_app(state))
    finally:
        app.stopping.set()
        watcher.join(timeout=30)


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
