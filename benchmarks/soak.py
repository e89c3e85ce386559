"""The ``soak`` benchmark: the demo platform left running for hours, read once a minute.

``python -m benchmarks soak [--minutes N] [--broker kafka|tansu]`` (default 120 minutes on Kafka;
``--quick``: 2 minutes) starts its own platform with ``aiot up --detach --demo --broker B`` in a
fresh temporary AIOT_HOME (``benchmarks.demo_platform``: two agents, the platform's services,
the three sample models, twelve simulated devices, the three sample apps running). It starts
its watchers (below), lets the platform settle for ``SETTLE_S`` (120 s; quick: 30 s), and then
records one row per minute, on an absolute schedule (minute k ends k x 60 s after the first
reading):

* **CPU by group**, in cores: ``CpuMeter`` (CPU time, user + system, each process of the home
  used in the minute, over the minute's wall-clock length), summed per group: ``broker`` (the
  ``java`` of Apache Kafka or ``tansu``), ``platform`` (agents, node-manager, heartbeat, logger,
  web, deployer, device-manager, scheduler), ``simulators``, ``models`` (replicas), ``apps``
  (instances), and the total;
* **RSS**, in MB (MiB): summed over every process of the home at the end of the minute;
* **topics** and **partitions**: ``list_topics`` (an AdminClient of the SDK's bus) on the
  platform's broker, the broker's internal topics (``__consumer_offsets``) left out;
* **heartbeat p99** (ms): this process reads ``<prefix>.heartbeats`` with the SDK's
  ``ConsumerLoop`` (manual assignment, from the end, the platform's client settings); per
  heartbeat, its arrival in the loop's handler minus the envelope's ``time`` (stamped by the
  sender's heartbeat thread when it built the message), i.e. send → broker → a consumer that has
  decoded it. Every managed process beats once a second, so a minute has about 1,500;
* **sensor p99** and **frame p99** (ms): sensor → app. An app instance reports no latency (its
  ``SensorData`` carries no timestamp), so this process stands in for one: one ``ConsumerLoop`` in
  a consumer group of its own on every device data topic (``<prefix>.devices.<id>.data``), from
  the end, the platform's client settings, which is the path an app's ``DeviceClient`` reads by.
  Per record, its arrival in the handler (decoded) minus the ``time`` the simulator stamped on
  the ``Reading`` or ``Frame``. The demo's four numeric sensors send 1 reading/s each (sensor
  p99); its two cameras 3 frames/s of about 55 KB between them (frame p99). The real apps read
  the same topics at the same time, each in its own group;
* **restarts**: the sum of ``restarts`` over the services of ``aiot status --json`` (since the
  platform started);
* **incidents**: ``ServiceIncident``s on ``<prefix>.events.incidents`` (what the heartbeat
  monitor saw and did), read from the topic's start, so counted since the platform started;
* **machine busy**: the whole machine's busy cores in the minute (other work included).

At the end it prints the per-minute table with each column's least-squares slope per hour and
returns rows for the runner: heartbeat, sensor and frame p99 of the last W minutes against the
first W (``bare`` = first W, so ``platform/bare`` is the ratio; W = 10, or half the run when it
is shorter than 20 minutes; latencies pooled over the W minutes; the note adds each window's
median per-minute p99 and how many of its minutes had more than 0.5 cores of other work on the
machine), the total RSS of the last
minute against the first and its growth in %, mean CPU of the last W minutes against the first
W, restarts, incidents, topics at the end against the start. Targets (reported, not asserted):
on Kafka over 120 minutes no restart, p99s of the last 10 minutes within 1.5x the first 10,
RSS growth at most 10 %. The JSON keeps every minute (with CPU and RSS per group, p50s,
counts) and, per process, its mean CPU and its RSS at the first and last minute.

The benchmark's own consumers read from the same broker, so the broker's CPU includes serving
them (about 1,500 heartbeats and 420 readings and frames a minute) and one ``aiot status`` a
minute asks every agent for its load. Ctrl-C stops the recording early and still reports the
minutes recorded; ``aiot down`` always runs at the end, even on error, and then no process of the
home may be left (the last row).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import Options, Result, Row
from benchmarks.bus import percentile
from benchmarks.demo_platform import (
    GROUPS,
    CpuMeter,
    DemoPlatform,
    Interval,
    process_table,
    say,
    text_table,
)
from benchmarks.node_layer import TOPIC_PREFIX
from platform_core.nodes import ServiceIncident
from platform_sdk.bus import Bus, ConsumerLoop
from platform_sdk.device_messages import Frame, Reading
from platform_sdk.envelope import Envelope
from platform_sdk.messages import Heartbeat
from platform_sdk.settings import temporary_settings

DEFAULT_MINUTES = 120
QUICK_MINUTES = 2
DEFAULT_BROKER = "kafka"
SETTLE_S = 120.0
QUICK_SETTLE_S = 30.0
MINUTE_S = 60.0
WINDOW_MINUTES = 10
TARGET_P99_RATIO = 1.5
TARGET_RSS_GROWTH_PCT = 10.0
TARGET_RESTARTS = 0
TOPIC_TIMEOUT_S = 10.0


def _log(message: str) -> None:
    say("soak", message)


def _epoch(value: object) -> float | None:
    """A message's ``time`` (ISO text or datetime; naive means UTC) as epoch seconds."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


# what this process hears ------------------------------------------------------------------------------
@dataclass
class Heard:
    """Latencies (ms) heard in one minute, and which services beat."""

    beats: list[float] = field(default_factory=list)
    readings: list[float] = field(default_factory=list)
    frames: list[float] = field(default_factory=list)
    beating: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Incident:
    arrived: float  # epoch s
    service_id: str
    kind: str
    detail: str


class Watch:
    """Heartbeats, device data and incidents of the platform, read by this process."""

    def __init__(self, bus: Bus, data_topics: Sequence[str]) -> None:
        self._lock = threading.Lock()
        self._heard = Heard()
        self.incidents: list[Incident] = []
        self.data_topics = sorted(data_topics)
        self._loops: list[ConsumerLoop] = []
        beats = ConsumerLoop(
            bus, [bus.topics.heartbeats], group=None, name="bench-soak-beats", offset_reset="latest"
        )
        # The raw envelope, not a validated Heartbeat: only its time and service id are needed.
        beats.on_any(self._on_beat)
        self._loops.append(beats)
        if self.data_topics:
            data = ConsumerLoop(
                bus,
                self.data_topics,
                group=f"{bus.topics.prefix}.bench-soak-sensors",
                name="bench-soak-sensors",
                offset_reset="latest",
            )
            data.on_any(self._on_data)
            self._loops.append(data)
        incidents = ConsumerLoop(
            bus, [bus.topics.incidents], group=None, name="bench-soak-incidents", offset_reset="earliest"
        )
        incidents.add_handler(ServiceIncident, self._on_incident)
        self._loops.append(incidents)

    def _on_beat(self, envelope: Envelope) -> None:
        arrived = time.time()
        if envelope.type != Heartbeat.message_type:
            return
        latency_ms = (arrived - envelope.time.timestamp()) * 1000
        service_id = envelope.payload.get("service_id")
        with self._lock:
            self._heard.beats.append(latency_ms)
            if isinstance(service_id, str):
                self._heard.beating.add(service_id)

    def _on_data(self, envelope: Envelope) -> None:
        arrived = time.time()
        stamped = _epoch(envelope.payload.get("time"))
        if stamped is None:
            return
        latency_ms = (arrived - stamped) * 1000
        with self._lock:
            if envelope.type == Reading.message_type:
                self._heard.readings.append(latency_ms)
            elif envelope.type == Frame.message_type:
                self._heard.frames.append(latency_ms)

    def _on_incident(self, incident: ServiceIncident, _envelope: Envelope) -> None:
        found = Incident(time.time(), incident.service_id, incident.kind, incident.detail[:300])
        with self._lock:
            self.incidents.append(found)

    def start(self) -> None:
        for loop in self._loops:
            loop.start()
        for loop in self._loops:
            if loop.group is not None:
                loop.wait_assigned()

    def stop(self) -> None:
        for loop in reversed(self._loops):
            loop.stop()

    def drain(self) -> Heard:
        """What was heard since the last drain."""
        with self._lock:
            heard, self._heard = self._heard, Heard()
        return heard

    def incident_count(self) -> int:
        with self._lock:
            return len(self.incidents)


# one minute -----------------------------------------------------------------------------------------
@dataclass
class Minute:
    index: int
    end_s: float  # since the first reading
    interval: Interval
    heard: Heard
    topics: int | None
    partitions: int | None
    restarts: int | None
    services: int | None
    not_running: list[str]
    incidents: int  # since the platform started
    load1: float

    def value(self, column: str) -> float | None:
        if column.startswith("cpu_"):
            group = column.removeprefix("cpu_")
            return self.interval.cores(None if group == "total" else group)
        simple: dict[str, Callable[[], float | None]] = {
            "rss_mb": self.interval.rss_mb,
            "topics": lambda: _float(self.topics),
            "partitions": lambda: _float(self.partitions),
            "hb_p99_ms": lambda: percentile(self.heard.beats, 99),
            "sensor_p99_ms": lambda: percentile(self.heard.readings, 99),
            "frame_p99_ms": lambda: percentile(self.heard.frames, 99),
            "restarts": lambda: _float(self.restarts),
            "incidents": lambda: float(self.incidents),
            "machine_busy": lambda: self.interval.machine_busy_cores,
        }
        return simple[column]()

    def to_dict(self) -> dict[str, Any]:
        return {
            "minute": self.index,
            "end_s": round(self.end_s, 1),
            **{column: _round(self.value(column), digits) for column, _header, digits in COLUMNS},
            "cpu_cores_by_group": {g: round(v, 4) for g, v in self.interval.cores_by_group().items()},
            "rss_mb_by_group": {g: round(v, 1) for g, v in self.interval.rss_by_group().items()},
            "processes": len(self.interval.processes),
            "processes_ended": self.interval.ended,
            "hb_p50_ms": _round(percentile(self.heard.beats, 50), 2),
            "hb_max_ms": _round(max(self.heard.beats, default=None), 2),
            "heartbeats": len(self.heard.beats),
            "beating_services": len(self.heard.beating),
            "sensor_p50_ms": _round(percentile(self.heard.readings, 50), 2),
            "readings": len(self.heard.readings),
            "frame_p50_ms": _round(percentile(self.heard.frames, 50), 2),
            "frames": len(self.heard.frames),
            "services": self.services,
            "not_running": self.not_running,
            "load1": round(self.load1, 2),
        }


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# (column, printed header, digits)
COLUMNS: list[tuple[str, str, int]] = [
    *[(f"cpu_{group}", "sims" if group == "simulators" else group, 3) for group in GROUPS],
    ("cpu_total", "total", 3),
    ("rss_mb", "RSS MB", 0),
    ("topics", "topics", 0),
    ("partitions", "parts", 0),
    ("hb_p99_ms", "hb p99", 1),
    ("sensor_p99_ms", "sensor p99", 1),
    ("frame_p99_ms", "frame p99", 1),
    ("restarts", "restarts", 0),
    ("incidents", "incidents", 0),
    ("machine_busy", "machine", 2),
]


def slope_per_hour(points: Sequence[tuple[float, float | None]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour; None with fewer than two values."""
    known = [(t / 3600.0, v) for t, v in points if v is not None]
    if len(known) < 2:
        return None
    mean_t = sum(t for t, _ in known) / len(known)
    mean_v = sum(v for _, v in known) / len(known)
    spread = sum((t - mean_t) ** 2 for t, _ in known)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in known) / spread


def _cell(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def live_line(cells: Sequence[str]) -> str:
    """One row of the per-minute table as it is logged while the soak runs (fixed widths)."""
    widths = [len("slope/h"), *(max(len(header), 7) for _c, header, _d in COLUMNS)]
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))


def minute_header() -> tuple[str, ...]:
    return ("min", *(header for _column, header, _digits in COLUMNS))


def minute_cells(minute: Minute) -> tuple[str, ...]:
    return (str(minute.index), *(_cell(minute.value(c), d) for c, _h, d in COLUMNS))


def slopes(minutes: Sequence[Minute]) -> dict[str, float | None]:
    return {
        column: slope_per_hour([(m.end_s, m.value(column)) for m in minutes]) for column, _h, _d in COLUMNS
    }


def minute_table(minutes: Sequence[Minute], title: str) -> str:
    per_hour = slopes(minutes)
    rows = [minute_cells(minute) for minute in minutes]
    rows.append(("slope/h", *(_cell(per_hour[c], max(d, 2) if c != "rss_mb" else 1) for c, _h, d in COLUMNS)))
    right = range(len(COLUMNS) + 1)
    return f"{title}\n{text_table(minute_header(), rows, right=right)}"


# the platform's broker --------------------------------------------------------------------------------
def count_topics(bus: Bus) -> tuple[int | None, int | None]:
    """(topics, partitions) on the broker, its internal topics left out; (None, None) if it did not answer."""
    try:
        metadata = bus.admin().list_topics(timeout=TOPIC_TIMEOUT_S)
    except Exception as exc:  # KafkaException: the broker did not answer in time
        _log(f"list_topics failed: {exc}")
        return None, None
    names = [name for name in metadata.topics if not name.startswith("__")]
    return len(names), sum(len(metadata.topics[name].partitions) for name in names)


def data_topics(bus: Bus) -> list[str]:
    metadata = bus.admin().list_topics(timeout=TOPIC_TIMEOUT_S)
    prefix = f"{bus.topics.prefix}.devices."
    return sorted(name for name in metadata.topics if name.startswith(prefix) and name.endswith(".data"))


def platform_bus(platform: DemoPlatform) -> Bus:
    """A bus on the platform's broker with the platform's client settings (read from its home)."""
    updates = {
        "home": str(platform.home),
        "kafka.bootstrap_servers": platform.broker_address(),
        "kafka.topic_prefix": TOPIC_PREFIX,
    }
    with temporary_settings(updates) as settings:
        return Bus(settings, source="bench-soak")


# the results --------------------------------------------------------------------------------------------
def _pooled(minutes: Sequence[Minute], pick: Callable[[Heard], list[float]]) -> list[float]:
    return [latency for minute in minutes for latency in pick(minute.heard)]


def _ratio_note(first: float | None, last: float | None, window: int) -> str:
    if first is None or last is None or first <= 0:
        return f"bare = first {window} min; not measured"
    ratio = last / first
    verdict = "met" if ratio <= TARGET_P99_RATIO else "NOT met"
    return f"bare = first {window} min; target last ≤ {TARGET_P99_RATIO:g}x first: {verdict}"


BUSY_OTHERS_CORES = 0.5  # a minute with more other work than this on the machine is "busy"


def _others(minute: Minute) -> float:
    """Other work on the machine in the minute: its busy cores minus the platform's."""
    return max(0.0, minute.interval.machine_busy_cores - minute.interval.cores())


def _context(window: Sequence[Minute], pick: Callable[[Heard], list[float]]) -> str:
    """The median of the window's per-minute p99s (a few starved minutes move it less than the
    pooled p99) and how many of its minutes shared the machine with other work."""
    p99s = [p for p in (percentile(pick(m.heard), 99) for m in window) if p is not None]
    median = f"{statistics.median(p99s):.1f}" if p99s else "-"
    busy = sum(1 for m in window if _others(m) > BUSY_OTHERS_CORES)
    return f"median per-minute p99 {median}, {busy}/{len(window)} min with other work > {BUSY_OTHERS_CORES:g}"


def latency_rows(minutes: Sequence[Minute], window: int) -> list[Row]:
    first, last = minutes[:window], minutes[-window:]
    rows = []
    picks: list[tuple[str, Callable[[Heard], list[float]]]] = [
        ("heartbeat e2e", lambda heard: heard.beats),
        ("sensor reading → consumer", lambda heard: heard.readings),
        ("camera frame → consumer", lambda heard: heard.frames),
    ]
    for name, pick in picks:
        before, after = _pooled(first, pick), _pooled(last, pick)
        p99_before, p99_after = percentile(before, 99), percentile(after, 99)
        rows.append(
            Row(
                metric=f"{name} p99, last {window} min",
                unit="ms",
                platform=p99_after,
                bare=p99_before,
                samples=len(after),
                note=f"{_ratio_note(p99_before, p99_after, window)}; first: {_context(first, pick)}; "
                f"last: {_context(last, pick)}",
            )
        )
    return rows


def rss_growth(minutes: Sequence[Minute]) -> float | None:
    first, last = minutes[0].interval.rss_mb(), minutes[-1].interval.rss_mb()
    return None if first <= 0 else (last - first) / first * 100


def per_process(minutes: Sequence[Minute]) -> dict[str, dict[str, Any]]:
    """Per process label: mean CPU over the run, RSS at the first and the last minute."""
    seconds = sum(minute.interval.seconds for minute in minutes)
    found: dict[str, dict[str, Any]] = {}
    for minute in minutes:
        for use in minute.interval.processes:
            entry = found.setdefault(use.label, {"group": use.group, "cpu_s": 0.0, "pids": set()})
            entry["cpu_s"] += use.cpu_s
            entry["pids"].add(use.pid)
    first = {use.label: use.rss_mb for use in minutes[0].interval.processes}
    last = {use.label: use.rss_mb for use in minutes[-1].interval.processes}
    return {
        label: {
            "group": entry["group"],
            "cpu_cores_mean": round(entry["cpu_s"] / seconds, 4) if seconds else None,
            "rss_mb_first": _round(first.get(label), 1),
            "rss_mb_last": _round(last.get(label), 1),
            "pids": sorted(entry["pids"]),
        }
        for label, entry in sorted(found.items(), key=lambda item: -float(item[1]["cpu_s"]))
    }


def result_rows(minutes: Sequence[Minute], watch: Watch, window: int) -> list[Row]:
    processes = per_process(minutes)
    rows = latency_rows(minutes, window)
    first_rss, last_rss = minutes[0].interval.rss_mb(), minutes[-1].interval.rss_mb()
    growth = rss_growth(minutes)
    growers = sorted(
        (
            (info["rss_mb_last"] - info["rss_mb_first"], label)
            for label, info in processes.items()
            if info["rss_mb_first"] is not None and info["rss_mb_last"] is not None
        ),
        reverse=True,
    )
    grown = ", ".join(f"{label} {delta:+.1f}" for delta, label in growers[:3])
    growth_verdict = (
        "not measured" if growth is None else ("met" if growth <= TARGET_RSS_GROWTH_PCT else "NOT met")
    )
    rows += [
        Row(
            metric="total RSS, last minute",
            unit="MB",
            platform=last_rss,
            bare=first_rss,
            samples=len(minutes[-1].interval.processes),
            note="bare = first minute",
        ),
        Row(
            metric="total RSS growth, first → last minute",
            unit="%",
            platform=growth,
            samples=len(minutes),
            note=f"target ≤ {TARGET_RSS_GROWTH_PCT:g} %: {growth_verdict}; most grown (MB): {grown}",
        ),
    ]
    cpu_first = sum(m.interval.cores() for m in minutes[:window]) / len(minutes[:window])
    cpu_last = sum(m.interval.cores() for m in minutes[-window:]) / len(minutes[-window:])
    by_group = {
        group: sum(m.interval.cores(group) for m in minutes[-window:]) / len(minutes[-window:])
        for group in GROUPS
    }
    rows.append(
        Row(
            metric=f"CPU of all processes, mean of the last {window} min",
            unit="cores",
            platform=cpu_last,
            bare=cpu_first,
            samples=window,
            note=f"bare = first {window} min; " + ", ".join(f"{g} {v:.3f}" for g, v in by_group.items() if v),
        )
    )
    restarts = minutes[-1].restarts
    restarted = sorted({i.service_id for i in watch.incidents if i.kind in ("restarted", "replaced")})
    rows.append(
        Row(
            metric="restarts (aiot status, since up)",
            unit="count",
            platform=_float(restarts),
            samples=minutes[-1].services or 0,
            note=f"target {TARGET_RESTARTS}: "
            + ("not measured" if restarts is None else "met" if restarts <= TARGET_RESTARTS else "NOT met")
            + (f"; restarted or moved per incidents: {', '.join(restarted)}" if restarted else ""),
        )
    )
    kinds: dict[str, int] = {}
    for incident in watch.incidents:
        kinds[incident.kind] = kinds.get(incident.kind, 0) + 1
    rows.append(
        Row(
            metric="incidents (events.incidents, since up)",
            unit="count",
            platform=float(len(watch.incidents)),
            samples=len(minutes),
            note=", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())),
        )
    )
    rows.append(
        Row(
            metric="topics on the broker, end",
            unit="count",
            platform=_float(minutes[-1].topics),
            bare=_float(minutes[0].topics),
            samples=len(minutes),
            note=f"bare = first minute; partitions {minutes[0].partitions} → {minutes[-1].partitions}",
        )
    )
    return rows


# the run ------------------------------------------------------------------------------------------------
def record(platform: DemoPlatform, bus: Bus, watch: Watch, count: int, minutes: list[Minute]) -> bool:
    """Read ``count`` minutes into ``minutes``; False when Ctrl-C stopped it early."""
    meter = CpuMeter(platform)
    meter.start()
    watch.drain()
    began = time.monotonic()
    _log(live_line(minute_header()))
    try:
        for index in range(1, count + 1):
            time.sleep(max(0.0, began + index * MINUTE_S - time.monotonic()))
            interval = meter.read()
            heard = watch.drain()
            end_s = time.monotonic() - began
            topics, partitions = count_topics(bus)
            status = platform.status()
            services = status["services"] if status else None
            minute = Minute(
                index=index,
                end_s=end_s,
                interval=interval,
                heard=heard,
                topics=topics,
                partitions=partitions,
                restarts=None if services is None else sum(int(s.get("restarts") or 0) for s in services),
                services=None if services is None else len(services),
                not_running=[]
                if services is None
                else [s["service_id"] for s in services if s.get("state") != "running"],
                incidents=watch.incident_count(),
                load1=os.getloadavg()[0],
            )
            minutes.append(minute)
            _log(live_line(minute_cells(minute)))
    except KeyboardInterrupt:
        _log(f"interrupted after {len(minutes)} minute(s); reporting those")
        return False
    return True


def measure(platform: DemoPlatform, count: int, settle_s: float, params: dict[str, Any]) -> Result:
    """Up, settle, ``count`` minutes, the tables and rows (without the row of ``aiot down``)."""
    broker = platform.broker
    _log(f"aiot up --detach --demo --broker {broker} in {platform.home}")
    up_s = platform.up_demo()
    params["up_s"] = round(up_s, 2)
    bus = platform_bus(platform)
    topics = data_topics(bus)
    params["data_topics"] = topics
    watch = Watch(bus, topics)
    minutes: list[Minute] = []
    watch.start()
    try:
        _log(f"up in {up_s:.1f}s; watching {len(topics)} data topics; settling for {settle_s:.0f}s")
        time.sleep(settle_s)
        _log(f"recording {count} minute(s), one row a minute")
        params["complete"] = record(platform, bus, watch, count, minutes)
    finally:
        watch.stop()
    params["minutes_recorded"] = len(minutes)
    if not minutes:
        raise RuntimeError("no minute was recorded")
    window = min(WINDOW_MINUTES, max(1, len(minutes) // 2))
    params["window_minutes"] = window
    params["minutes"] = [minute.to_dict() for minute in minutes]
    params["slopes_per_hour"] = {c: _round(v, 4) for c, v in slopes(minutes).items()}
    params["rss_growth_pct"] = _round(rss_growth(minutes), 2)
    params["per_process"] = per_process(minutes)
    params["incidents"] = [vars(incident) for incident in watch.incidents]
    title = (
        f"soak, {broker}: {len(minutes)} minute(s) after {settle_s:.0f}s settling; CPU in cores "
        "(broker … total), RSS MB, p99s in ms, restarts and incidents since up, machine = its busy cores"
    )
    tables = [
        minute_table(minutes, title),
        process_table(minutes[-1].interval, f"soak, {broker}: the last minute, per process"),
    ]
    return Result(name="soak", rows=result_rows(minutes, watch, window), params=params, tables=tables)


def run(options: Options) -> Result:
    count = max(1, options.minutes or (QUICK_MINUTES if options.quick else DEFAULT_MINUTES))
    broker = options.broker or DEFAULT_BROKER
    settle_s = QUICK_SETTLE_S if options.quick else SETTLE_S
    scratch = Path(tempfile.mkdtemp(prefix=f"aiot-bench-soak-{broker}-")).resolve()
    platform = DemoPlatform(scratch / "home", broker)
    params: dict[str, Any] = {
        "broker": broker,
        "minutes_planned": count,
        "settle_s": settle_s,
        "home": str(platform.home),
        "targets": {
            "restarts": TARGET_RESTARTS,
            "p99_last_over_first": TARGET_P99_RATIO,
            "rss_growth_pct": TARGET_RSS_GROWTH_PCT,
        },
    }
    result = Result(name="soak", params=params)
    failed = True
    try:
        result = measure(platform, count, settle_s, params)
        failed = False
    finally:
        result.rows.append(platform.down_and_check())
        if failed:
            _log(f"kept {platform.home} for its logs")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return result
