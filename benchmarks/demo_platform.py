"""A demo platform in a home of its own, and what each of its processes costs (``idle``, ``soak``).

``DemoPlatform`` drives one platform through the ``aiot`` command, as a user does:
``aiot up --detach --demo --broker kafka|tansu`` (a subprocess of ``sys.executable -m aiot``) in
a fresh ``AIOT_HOME`` with an environment free of any other ``AIOT_*`` variable, so the platform
runs with its default settings; ``aiot status --json``; ``aiot down`` with the check that nothing
of the home is left (``BenchPlatform`` of ``benchmarks.node_layer``).

A process belongs to the platform when its environment has ``AIOT_HOME`` = that home, or when it
descends from a pid ``aiot up`` recorded in ``run/state.json`` (the broker, the agents). Each is
put in one group (``classify``):

* ``broker``: the process ``aiot up`` recorded as ``broker`` (Apache Kafka's ``java``, or
  ``tansu``), or any ``java``/``tansu`` process of the home without a service id;
* ``simulators``: ``python -m simulators`` (service ids ``sim-<location>``);
* ``models``: model replicas, ``python -m ai_manager.serving`` (``<model id>-v<version>-r<n>``);
* ``apps``: app instances, ``python -m platform_sdk.run_app`` (``app-<instance id>``);
* ``platform``: every other process with an ``AIOT_SERVICE_ID``: the agents (``agent-node-N``),
  node-manager, heartbeat, logger, web, deployer, device-manager, scheduler;
* ``other``: anything else of the home (none is expected).

``CpuMeter`` reads each process's CPU time (``psutil`` ``cpu_times``: user + system) at two
instants; the difference over the wall-clock time between them is the CPU it used, in cores. A
process that started in between counts from its start; one that ended in between loses what it
used since the previous reading. The meter also reads the whole machine's busy CPU
(``psutil.cpu_times()``: everything but idle and iowait) over the same interval, which shows what
other work shared the machine. RSS is read at the second instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.node_layer import BenchPlatform

GROUPS = ("broker", "platform", "simulators", "models", "apps", "other")
BROKERS = ("kafka", "tansu")
UP_TIMEOUT_S = 600.0  # the demo deploys three models and starts three apps after the platform is up
UP_SERVICES_TIMEOUT_S = 300  # `aiot up --timeout`: for every service to answer (default 90 s)
STATUS_TIMEOUT_S = 60.0
MB = 1024 * 1024

_GROUP_OF_MODULE = {
    "simulators": "simulators",
    "ai_manager.serving": "models",
    "platform_sdk.run_app": "apps",
}
_BROKER_NAMES = ("java", "tansu")


def say(benchmark: str, message: str) -> None:
    print(f"[{benchmark}] {message}", file=sys.stderr, flush=True)


def module_of(cmdline: Sequence[str]) -> str | None:
    """The module a ``python -m MODULE`` command line runs."""
    for index, part in enumerate(cmdline[:-1]):
        if part == "-m":
            return cmdline[index + 1]
    return None


def classify(label: str, service_id: str | None, cmdline: Sequence[str]) -> str:
    """The group (one of ``GROUPS``) of one process of the platform."""
    module = module_of(cmdline)
    if module in _GROUP_OF_MODULE:
        return _GROUP_OF_MODULE[module]
    if service_id:
        if service_id.startswith("sim-"):
            return "simulators"
        if service_id.startswith("app-"):
            return "apps"
        return "platform"
    executable = Path(cmdline[0]).name if cmdline else ""
    if label == "broker" or executable in _BROKER_NAMES:
        return "broker"
    return "other"


class DemoPlatform(BenchPlatform):
    """One demo platform (``aiot up --detach --demo``) on one broker, in its own home."""

    def __init__(self, home: Path, broker: str) -> None:
        if broker not in BROKERS:
            raise ValueError(f"unknown broker {broker!r}: one of {', '.join(BROKERS)}")
        super().__init__(home)
        self.broker = broker

    def up_demo(self) -> float:
        """Wall-clock seconds of ``aiot up --detach --demo --broker B``; raises if it failed."""
        began = time.perf_counter()
        done = self.aiot(
            "up", "--detach", "--demo", "--broker", self.broker, "--timeout", str(UP_SERVICES_TIMEOUT_S),
            timeout=UP_TIMEOUT_S,
        )  # fmt: skip
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise RuntimeError(f"aiot up --demo failed ({done.returncode}) after {elapsed:.1f}s:\n{tail}")
        state = self.state()
        if state.broker_kind != self.broker:
            raise RuntimeError(f"asked for --broker {self.broker}, the platform runs {state.broker_kind}")
        self.recorded = [(record.pid, record.create_time, record.name) for record in state.processes]
        return elapsed

    def broker_address(self) -> str:
        address = self.state().broker
        if not address:
            raise RuntimeError("the run state names no broker")
        return address

    def status(self) -> dict[str, Any] | None:
        """``aiot status --json``, or None when it failed (the reason goes to stderr)."""
        try:
            done = self.aiot("status", "--json", timeout=STATUS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            say("demo", f"aiot status did not answer within {STATUS_TIMEOUT_S:.0f}s")
            return None
        if done.returncode != 0:
            say("demo", f"aiot status failed ({done.returncode}): {(done.stdout + done.stderr)[-300:]}")
            return None
        try:
            document: dict[str, Any] = json.loads(done.stdout)
        except ValueError as exc:
            say("demo", f"aiot status printed no JSON: {exc}")
            return None
        return document


# what the processes cost ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessUse:
    """One process over one interval: CPU seconds it used, and its RSS at the end."""

    pid: int
    label: str
    group: str
    cpu_s: float
    rss_mb: float
    new: bool = False  # started during the interval (counted from its start)

    def to_dict(self, seconds: float) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "label": self.label,
            "group": self.group,
            "cpu_cores": round(self.cpu_s / seconds, 4) if seconds > 0 else None,
            "rss_mb": round(self.rss_mb, 1),
            "new": self.new,
        }


@dataclass
class Interval:
    """What every process of the platform used between two readings of a ``CpuMeter``."""

    seconds: float
    processes: list[ProcessUse]
    machine_busy_cores: float  # the whole machine, other work included
    ended: int = 0  # processes seen at the previous reading and gone at this one

    def cores(self, group: str | None = None) -> float:
        used = sum(p.cpu_s for p in self.processes if group is None or p.group == group)
        return used / self.seconds if self.seconds > 0 else 0.0

    def rss_mb(self, group: str | None = None) -> float:
        return sum(p.rss_mb for p in self.processes if group is None or p.group == group)

    def cores_by_group(self) -> dict[str, float]:
        return {group: self.cores(group) for group in GROUPS}

    def rss_by_group(self) -> dict[str, float]:
        return {group: self.rss_mb(group) for group in GROUPS}

    def by_cpu(self) -> list[ProcessUse]:
        return sorted(self.processes, key=lambda p: (-p.cpu_s, -p.rss_mb, p.label))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "cpu_cores": round(self.cores(), 4),
            "cpu_cores_by_group": {g: round(v, 4) for g, v in self.cores_by_group().items()},
            "rss_mb": round(self.rss_mb(), 1),
            "rss_mb_by_group": {g: round(v, 1) for g, v in self.rss_by_group().items()},
            "machine_busy_cores": round(self.machine_busy_cores, 3),
            "processes_ended": self.ended,
            "processes": [p.to_dict(self.seconds) for p in self.by_cpu()],
        }


@dataclass
class _Known:
    label: str
    group: str
    cpu_s: float


def _busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


@dataclass
class CpuMeter:
    """CPU seconds and RSS of each process of ``platform`` between successive ``read()`` calls."""

    platform: DemoPlatform
    _known: dict[tuple[int, float], _Known] = field(default_factory=dict)
    _at: float = 0.0
    _busy: float = 0.0

    def start(self) -> None:
        """The first reading: what every process has used so far is the baseline."""
        self._at, self._busy = time.monotonic(), _busy_s()
        self._known = {}
        for _process, key, known in self._processes():
            self._known[key] = known

    def read(self) -> Interval:
        """What each process used since the previous reading (``start()`` or ``read()``)."""
        if not self._at:
            raise RuntimeError("CpuMeter.read() before start()")
        previous_at = self._at
        seconds_epoch_previous = time.time() - (time.monotonic() - previous_at)
        now, busy = time.monotonic(), _busy_s()
        used: list[ProcessUse] = []
        seen: dict[tuple[int, float], _Known] = {}
        for process, key, known in self._processes():
            before = self._known.get(key)
            new = before is None and key[1] >= seconds_epoch_previous
            if before is not None:
                cpu_s = max(0.0, known.cpu_s - before.cpu_s)
            elif new:
                cpu_s = known.cpu_s  # started during the interval: all it used is in it
            else:
                cpu_s = 0.0  # older but not seen before (its environment was unreadable): baseline now
            try:
                rss = process.memory_info().rss / MB
            except psutil.Error:
                continue
            seen[key] = known
            used.append(ProcessUse(process.pid, known.label, known.group, cpu_s, rss, new=new))
        ended = len(set(self._known) - set(seen))
        seconds = now - previous_at
        machine = (busy - self._busy) / seconds if seconds > 0 else 0.0
        self._known, self._at, self._busy = seen, now, busy
        return Interval(seconds=seconds, processes=used, machine_busy_cores=machine, ended=ended)

    def _processes(self) -> Iterable[tuple[psutil.Process, tuple[int, float], _Known]]:
        ourselves = os.getpid()
        for process in self.platform.processes():
            with contextlib.suppress(psutil.Error):
                if process.ppid() == ourselves:
                    continue  # an `aiot` command this benchmark runs (status), not the platform
                key = (process.pid, process.create_time())
                times = process.cpu_times()
                cpu_s = times.user + times.system
                known = self._known.get(key)
                if known is None:
                    label = self.platform.label(process)
                    service_id = process.environ().get("AIOT_SERVICE_ID")
                    group = classify(label, service_id, process.cmdline())
                else:
                    label, group = known.label, known.group
                yield process, key, _Known(label, group, cpu_s)


@dataclass(frozen=True)
class Quiet:
    """How long ``wait_until_quiet`` waited, and the other work it saw last (cores)."""

    waited_s: float
    others_cores: float
    quiet: bool


def wait_until_quiet(
    platform: DemoPlatform,
    benchmark: str,
    *,
    limit_cores: float = 0.3,
    probe_s: float = 10.0,
    timeout_s: float = 600.0,
) -> Quiet:
    """Wait until the rest of the machine is quiet: over a probe of ``probe_s``, the machine's busy
    cores minus the platform's at most ``limit_cores``; gives up (and says so) after ``timeout_s``.

    Other sessions share this machine; CPU time is less disturbed by them than wall-clock time,
    but a starved platform does less (fewer polls, fewer model calls), so its idle cost reads low.
    """
    began = time.monotonic()
    while True:
        meter = CpuMeter(platform)
        meter.start()
        time.sleep(probe_s)
        probe = meter.read()
        others = max(0.0, probe.machine_busy_cores - probe.cores())
        waited = time.monotonic() - began
        if others <= limit_cores:
            return Quiet(waited, others, quiet=True)
        if waited >= timeout_s:
            say(benchmark, f"other work still {others:.2f} cores after {waited:.0f}s: measuring anyway")
            return Quiet(waited, others, quiet=False)
        say(benchmark, f"other work on the machine {others:.2f} cores > {limit_cores:g}: waiting")


def pss_mb(platform: DemoPlatform) -> dict[str, float] | None:
    """PSS (shared pages divided among the processes sharing them) per process label, or None
    when some process's ``smaps`` is unreadable."""
    found: dict[str, float] = {}
    ourselves = os.getpid()
    for process in platform.processes():
        try:
            if process.ppid() == ourselves:
                continue
            pss = getattr(process.memory_full_info(), "pss", None)
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            return None
        if pss is None:
            return None
        label = platform.label(process)
        found[label] = found.get(label, 0.0) + pss / MB
    return found


# printing ---------------------------------------------------------------------------------------------
def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    """A plain-text table; columns whose index is in ``right`` are right-aligned."""
    lines = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    aligned = set(right)
    rendered = [
        "  ".join(
            cell.rjust(width) if i in aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def process_table(interval: Interval, title: str) -> str:
    """Every process of the interval, the busiest first, then each group's sum and the total."""
    rows = [
        (p.label, p.group, str(p.pid), f"{p.cpu_s / interval.seconds:.3f}", f"{p.rss_mb:.1f}")
        for p in interval.by_cpu()
    ]
    rows += [
        (f"= {group}", "", str(sum(1 for p in interval.processes if p.group == group)),
         f"{interval.cores(group):.3f}", f"{interval.rss_mb(group):.1f}")
        for group in GROUPS
        if any(p.group == group for p in interval.processes)
    ]  # fmt: skip
    rows.append(
        ("= total", "", str(len(interval.processes)), f"{interval.cores():.3f}", f"{interval.rss_mb():.1f}")
    )
    table = text_table(("process", "group", "pid / n", "CPU cores", "RSS MB"), rows, right=(2, 3, 4))
    return f"{title}\n{table}"
