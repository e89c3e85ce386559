"""A smart app's status page: what the app sees and decides, in a browser, with no web framework.

``StatusPage`` holds what the page shows and serves it as a WSGI callable for ``app.serve``:

    page = StatusPage.for_app(app, fields=lambda: {"fan_speed": speed})
    page.set_headline("Fan at speed 2", "blue")       # the big coloured line at the top
    page.set_fact("Temperature", "27.5 °C")           # a row of the facts table (label → value)
    page.add_event("fan to speed 2")                  # the newest first, the last 20 kept
    page.set_frame(jpeg, boxes=[[x, y, w, h]])        # a camera frame, the boxes drawn on it
    page.report_problem("devices: ...")               # shown; logged once a minute at most
    app.serve(page.wsgi)

``/`` is one HTML page (no external assets) that fetches ``status.json`` every second;
``/status.json`` is the page's state as JSON (``app``, ``instance``, ``location``, ``local_time``,
``headline`` ``{text, colour}``, ``facts`` as ``[label, value]`` pairs, ``events``
``[{time, text}]``, ``frame`` ``{seq, boxes, age_s}`` or null, ``problem``) merged with the
app's own fields, which ``fields()`` returns on each request; ``/frame.jpg`` is the latest frame
(404 before the first). The page uses relative addresses, so it also works behind a path prefix.

Every method may be called from any thread. ``fields`` is called without the page's lock held,
so it may take the app's own lock (and the app may call the page while holding it).
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from platform_sdk.app import App

#: Headline colours the page knows; any other name shows on the page's plain background.
COLOURS = ("white", "red", "green", "yellow", "blue")
EVENTS_KEPT = 20
PROBLEM_REPEAT_S = 60.0


@dataclass(frozen=True)
class _Frame:
    image: bytes
    content_type: str
    seq: int
    boxes: list[list[int]]
    at: float


class StatusPage:
    """The state of an app's status page and the WSGI callable that serves it (``wsgi``).

    ``title`` heads the page; ``timezone`` (a name or a ``tzinfo``) is the one of ``local_time``
    and of the events' times; ``about`` are fixed fields of ``status.json`` (``for_app`` puts
    ``app``, ``instance`` and ``location`` there); ``fields`` returns the app's own fields on each
    request (they win over the page's on a name clash); ``log`` is where ``report_problem`` logs.
    """

    def __init__(
        self,
        title: str,
        *,
        timezone: str | tzinfo = "UTC",
        about: Mapping[str, Any] | None = None,
        fields: Callable[[], Mapping[str, Any]] | None = None,
        log: logging.Logger | None = None,
        events_kept: int = EVENTS_KEPT,
        problem_repeat_s: float = PROBLEM_REPEAT_S,
    ) -> None:
        self.title = title
        self.zone = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self.about = dict(about or {})
        self.fields = fields
        self.log = log or logging.getLogger(__name__)
        self.problem_repeat_s = problem_repeat_s
        self._lock = threading.Lock()
        self._headline = {"text": "Starting...", "colour": "white"}
        self._facts: dict[str, str] = {}
        self._events: deque[dict[str, str]] = deque(maxlen=events_kept)
        self._frame: _Frame | None = None
        self._frames_set = 0
        self._problem: str | None = None
        self._problem_logged: dict[str, float] = {}  # problem → when it was last logged
        self._html = PAGE.replace("%TITLE%", html.escape(title)).encode()

    @classmethod
    def for_app(
        cls,
        app: App,
        *,
        title: str | None = None,
        fields: Callable[[], Mapping[str, Any]] | None = None,
        events_kept: int = EVENTS_KEPT,
    ) -> StatusPage:
        """The page of a running app instance: its title (app.json's ``web.title``, else its name),
        its location's time zone, ``app``/``instance``/``location`` in ``status.json``, ``app.log``."""
        manifest = app.manifest
        return cls(
            title or (manifest.web.title if manifest.web and manifest.web.title else manifest.name),
            timezone=app.config.timezone,
            about={"app": manifest.name, "instance": app.instance_id, "location": app.location},
            fields=fields,
            log=app.log,
            events_kept=events_kept,
        )

    # what the page shows --------------------------------------------------------------------------
    def now(self) -> datetime:
        """The time now in the page's time zone."""
        return datetime.now(self.zone)

    def set_headline(self, text: str, colour: str = "white") -> None:
        """The line at the top, on a background of ``colour`` (one of ``COLOURS``)."""
        with self._lock:
            self._headline = {"text": text, "colour": colour}

    def set_fact(self, label: str, value: str) -> None:
        """One row of the facts table: a new label goes last, a known one keeps its place."""
        with self._lock:
            self._facts[label] = value

    def set_facts(self, facts: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """The whole facts table, in this order (rows not named are dropped)."""
        rows = dict(facts)
        with self._lock:
            self._facts = rows

    def add_event(self, text: str) -> None:
        """An event at the local time now; the list keeps the newest ``events_kept``, newest first."""
        event = {"time": self.now().strftime("%H:%M:%S"), "text": text}
        with self._lock:
            self._events.appendleft(event)

    def set_frame(
        self,
        image: bytes,
        *,
        boxes: Iterable[Sequence[float]] = (),
        seq: int | None = None,
        content_type: str = "image/jpeg",
    ) -> None:
        """The latest camera frame (``/frame.jpg``), with ``boxes`` (``[x, y, w, h]``) drawn on it.

        ``seq`` tells the page a new frame from an old one (the sensor's ``seq``; by default a count).
        """
        with self._lock:
            self._frames_set += 1
            self._frame = _Frame(
                image,
                content_type,
                self._frames_set if seq is None else seq,
                [[int(v) for v in box] for box in boxes],
                time.monotonic(),
            )

    def report_problem(self, text: str) -> None:
        """Something went wrong: shown (the ``Problem`` fact) until ``clear_problem``; logged at
        WARNING and listed as an event at most once every ``problem_repeat_s`` for the same text."""
        now = time.monotonic()
        with self._lock:
            self._problem = text
            last = self._problem_logged.get(text)
            if last is not None and now - last < self.problem_repeat_s:
                return
            self._problem_logged[text] = now
        self.log.warning("%s", text)
        self.add_event(text)

    def clear_problem(self) -> None:
        """The problem shown is over (the app did what failed before)."""
        with self._lock:
            self._problem = None

    @property
    def problem(self) -> str | None:
        with self._lock:
            return self._problem

    # what the page serves -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``status.json``: the page's state, then the app's ``fields()``."""
        extra = dict(self.fields()) if self.fields is not None else {}
        moment = self.now()
        with self._lock:
            frame = self._frame
            status: dict[str, Any] = {
                "title": self.title,
                **self.about,
                "local_time": moment.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "headline": dict(self._headline),
                "facts": [[label, value] for label, value in self._facts.items()]
                + [["Problem", self._problem or "none"]],
                "events": list(self._events),
                "frame": None
                if frame is None
                else {
                    "seq": frame.seq,
                    "boxes": frame.boxes,
                    "age_s": round(time.monotonic() - frame.at, 1),
                },
                "problem": self._problem,
            }
        return status | extra

    def frame(self) -> tuple[bytes, str] | None:
        """The latest frame and its content type, or None before the first."""
        with self._lock:
            return None if self._frame is None else (self._frame.image, self._frame.content_type)

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI callable: ``/`` (or ``/index.html``), ``/status.json``, ``/frame.jpg``; else 404."""
        path = environ.get("PATH_INFO") or "/"
        body: bytes
        if path in ("/", "/index.html"):
            body, kind = self._html, "text/html; charset=utf-8"
        elif path == "/status.json":
            body, kind = json.dumps(self.status()).encode(), "application/json"
        elif path == "/frame.jpg" and (frame := self.frame()) is not None:
            body, kind = frame
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        start_response(
            "200 OK",
            [("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
        )
        return [body]


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
    const where = [s.location, s.local_time, s.instance && 'instance ' + s.instance];
    $('sub').textContent = where.filter(Boolean).join(' \\u00b7 ');
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
