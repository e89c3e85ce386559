"""The ``node_layer`` benchmark: recovery, start-up, footprint and service starts of a whole platform.

One run starts its own platform with ``aiot up --detach --nodes 2`` (a subprocess of
``sys.executable -m aiot``) in a temporary AIOT_HOME, with an environment free of
any other ``AIOT_*`` variable, watches ``<prefix>.heartbeats`` from this process and
measures:

* **recovery** of the ``logger`` service: ``kill -9`` (an exit its agent reports at
  once) and ``SIGSTOP`` (a hung process only missed heartbeats reveal) → the time
  until a heartbeat of ``logger`` arrives with a new pid; p50 and p95 over N trials.
  The baseline ("bare") is the detection delay of Kubernetes' default liveness probe
  (``periodSeconds`` 10 x ``failureThreshold`` 3 = 30 s), detection only, before any
  restart. Between trials the service is left to become stable: heartbeating for
  2 s, older than the monitor's crash-loop window (so trials are not counted as a
  crash loop) and, before a ``SIGSTOP``, past the monitor's start grace of the last
  restart (during which silence is not checked);
* **start-up**: the wall clock of ``aiot up --detach --nodes 2``, and the total RSS
  (and PSS) of every process of that home a few seconds after it returned;
* **service start** through an agent: ``StartService`` sent to ``agent-node-1`` →
  the first heartbeat of the new service, for a probe that starts the SDK's
  ``PlatformRuntime`` (heartbeat + log shipping, what every model and app runs) and
  sleeps: on the process runtime without requirements, with ``["six==1.16.0"]``
  (the first creates the venv, the second reuses it), and on the docker runtime (an
  in-process ``ServiceAgent`` with ``agent.runtime=docker`` joined to the same
  platform; the first start builds the image when it is missing, the second uses
  it). The baseline of the process rows is the same probe spawned directly.

``aiot down`` always runs at the end, even on error; then no process of that home
(by ``AIOT_HOME`` in its environment, or as a descendant of a pid recorded in
``run/state.json``) and no container labelled with it may be left: the last row
counts what was, and those are killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil

from benchmarks import Options, Result, Row
from benchmarks.bus import percentile
from platform_core.nodes import ServiceSpec, ServiceStateReply, StartService, StopService, agent_topic
from platform_sdk.bus import Bus, ConsumerLoop, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.errors import PlatformError
from platform_sdk.messages import Heartbeat
from platform_sdk.runstate import RunState
from platform_sdk.settings import AgentSettings, KafkaSettings, MonitorSettings, temporary_settings

T = TypeVar("T")

AIOT = [sys.executable, "-m", "aiot"]
NODES = 2
SERVICE = "logger"
MAIN_NODE = "node-1"
DOCKER_NODE = "bench-docker"
DOCKER_PORT_RANGE = "23000-23999"  # aiot up gives node-N 20000 + (N-1)·1000 onwards
TOPIC_PREFIX: str = KafkaSettings.model_fields["topic_prefix"].default
MONITOR = MonitorSettings()  # the platform runs with defaults: its environment has no AIOT_MONITOR__*

WAIT_S = 60.0  # every wait for the platform to do something
UP_TIMEOUT_S = 240.0
DOWN_TIMEOUT_S = 180.0
LEFTOVER_WAIT_S = 30.0
VENV_START_TIMEOUT_S = 300.0  # the first start with requirements creates a venv inside the request
DOCKER_START_TIMEOUT_S = 900.0  # the first docker start may build the image inside the request
STOP_TIMEOUT_S = 30.0
FRESH_BEAT_S = 2.5  # a heartbeat this recent means the pid it names is the running copy
STABLE_AFTER_S = 2.0  # heartbeating this long after a restart before the next fault
RSS_DELAY_S = 5.0
POLL_S = 0.05

K8S_LIVENESS_DETECTION_S = 10.0 * 3  # periodSeconds x failureThreshold of the default liveness probe
TARGET_KILL_P50_S = 2.0
TARGET_HUNG_P50_S = 5.0
TARGET_UP_S = 20.0
TARGET_RSS_MB = 1024.0
MB = 1024 * 1024

# A real managed process, as small as one gets: the SDK runtime (heartbeat + logs), then idle.
PROBE = (
    "import time\n"
    "from platform_sdk.runtime import PlatformRuntime\n"
    "PlatformRuntime().start()\n"
    "while True:\n"
    "    time.sleep(60)\n"
)
PROBE_REQUIREMENTS = ["six==1.16.0"]


@dataclass(frozen=True)
class Plan:
    trials: int  # faults of each kind
    starts: int  # repeated starts where nothing is created (the median is reported)
    overload_s: float  # CPU burners on twice the cores this long: restarts counted


FULL = Plan(trials=20, starts=5, overload_s=180.0)
QUICK = Plan(trials=5, starts=2, overload_s=20.0)


def say(message: str) -> None:
    print(f"[node_layer] {message}", file=sys.stderr, flush=True)


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """The first non-None value of ``check()``; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(POLL_S)


def clean_environment() -> dict[str, str]:
    """This process's environment without any AIOT_* variable."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AIOT_")}


def _met(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value < target else "NOT met"


# the platform under test ----------------------------------------------------------------------------
@dataclass
class Footprint:
    rss_mb: float
    pss_mb: float | None
    by_process: dict[str, float] = field(default_factory=dict)


class BenchPlatform:
    """One platform home driven through the ``aiot`` command, as a user drives it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = clean_environment()
        self.env.update({"AIOT_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"})
        # The probe is a plain command line, which agents run only when allowed to.
        self.env["AIOT_AGENT__ALLOW_COMMANDS"] = "true"
        # (pid, create time, name) of what `aiot up` recorded, kept for the check after `down`.
        self.recorded: list[tuple[int, float, str]] = []

    def aiot(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AIOT, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def up(self, nodes: int) -> float:
        """Wall-clock seconds of ``aiot up --detach --nodes N``."""
        began = time.perf_counter()
        done = self.aiot("up", "--detach", "--nodes", str(nodes), timeout=UP_TIMEOUT_S)
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
            raise RuntimeError(f"aiot up failed ({done.returncode}) after {elapsed:.1f}s:\n{tail}")
        state = self.state()
        self.recorded = [(record.pid, record.create_time, record.name) for record in state.processes]
        return elapsed

    def state(self) -> RunState:
        return RunState.model_validate_json((self.home / "run" / "state.json").read_bytes())

    def processes(self) -> list[psutil.Process]:
        """Every live process of this home: AIOT_HOME in its environment, or below a recorded pid."""
        found: dict[int, psutil.Process] = {}
        ourselves = os.getpid()
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                if process.pid != ourselves and process.environ().get("AIOT_HOME") == str(self.home):
                    found[process.pid] = process
        for pid, create_time, _name in self.recorded:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                root = psutil.Process(pid)
                if abs(root.create_time() - create_time) <= 0.01:
                    for process in [root, *root.children(recursive=True)]:
                        found.setdefault(process.pid, process)
        alive = []
        for process in found.values():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
        return alive

    def label(self, process: psutil.Process) -> str:
        names = {pid: name for pid, _created, name in self.recorded}
        if process.pid in names:
            return names[process.pid]
        with contextlib.suppress(psutil.Error):
            service_id = process.environ().get("AIOT_SERVICE_ID")
            if service_id:
                return service_id
            return process.name()
        return str(process.pid)

    def footprint(self) -> tuple[Footprint, int]:
        rss = 0
        pss: int | None = 0
        by_process: dict[str, float] = {}
        processes = self.processes()
        for process in processes:
            process_pss: int | None
            try:
                full = process.memory_full_info()
                process_rss, process_pss = full.rss, getattr(full, "pss", None)
            except psutil.AccessDenied:
                process_rss, process_pss = process.memory_info().rss, None
            except psutil.NoSuchProcess:
                continue
            rss += process_rss
            pss = None if pss is None or process_pss is None else pss + process_pss
            name = self.label(process)
            by_process[name] = round(by_process.get(name, 0.0) + process_rss / MB, 1)
        return Footprint(rss / MB, None if pss is None else pss / MB, by_process), len(processes)

    def incidents(self, service_id: str) -> list[tuple[float, str, str]]:
        """(wall-clock epoch s, kind, detail) of every incident the monitor recorded for ``service_id``."""
        try:
            with contextlib.closing(sqlite3.connect(self.home / "registry.db", timeout=5)) as db:
                found = db.execute(
                    "SELECT at, kind, detail FROM incidents WHERE service_id = ? ORDER BY id", (service_id,)
                ).fetchall()
        except sqlite3.Error as exc:
            say(f"incidents unreadable: {exc}")
            return []
        # Stored as naive UTC (platform_core.db); a restart is recorded once the agent answered.
        return [
            (datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp(), kind, detail)
            for at, kind, detail in found
        ]

    def acted_since(self, since: float) -> list[tuple[str, str, str]]:
        """(service, kind, detail) of every restart or move the monitor recorded since epoch ``since``."""
        try:
            with contextlib.closing(sqlite3.connect(self.home / "registry.db", timeout=5)) as db:
                found = db.execute(
                    "SELECT at, service_id, kind, detail FROM incidents "
                    "WHERE kind IN ('restarted', 'replaced') ORDER BY id"
                ).fetchall()
        except sqlite3.Error as exc:
            say(f"incidents unreadable: {exc}")
            return []
        return [
            (service, kind, detail)
            for at, service, kind, detail in found
            if datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp() >= since
        ]

    def restarts(self) -> int:
        """The restarts `aiot status --json` counts over every service."""
        done = self.aiot("status", "--json", timeout=WAIT_S)
        if done.returncode != 0:
            raise RuntimeError(f"aiot status failed: {done.stderr[-500:]}")
        return sum(int(service["restarts"]) for service in json.loads(done.stdout)["services"])

    def diagnose(self, service_id: str) -> str:
        """What the platform says of ``service_id``: its last incidents and its state on its agent."""
        lines: list[str] = []
        try:
            with contextlib.closing(sqlite3.connect(self.home / "registry.db", timeout=5)) as db:
                found = db.execute(
                    "SELECT at, node_id, kind, detail FROM incidents WHERE service_id = ? "
                    "ORDER BY id DESC LIMIT 6",
                    (service_id,),
                ).fetchall()
            lines += [f"incident {at} {node} {kind}: {text[:300]}" for at, node, kind, text in found[::-1]]
        except sqlite3.Error as exc:
            lines.append(f"incidents unreadable: {exc}")
        try:
            status = json.loads(self.aiot("status", "--json", timeout=60).stdout)
            states = [s for s in status.get("services", []) if s.get("service_id") == service_id]
            lines.append(f"aiot status: {states or 'not running anywhere'}")
        except (subprocess.TimeoutExpired, ValueError) as exc:
            lines.append(f"aiot status failed: {exc}")
        return "\n".join(lines)

    def down_and_check(self) -> Row:
        """``aiot down``, then wait for no process or container of this home; kill and count leftovers."""
        say("aiot down")
        try:
            done = self.aiot("down", timeout=DOWN_TIMEOUT_S)
            if done.returncode != 0:
                say(f"aiot down failed ({done.returncode}): {(done.stdout + done.stderr).strip()[-500:]}")
        except subprocess.TimeoutExpired:
            say(f"aiot down did not return within {DOWN_TIMEOUT_S:.0f}s")
        deadline = time.monotonic() + LEFTOVER_WAIT_S
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        names = [f"{self.label(process)} ({process.pid})" for process in left]
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        containers = remove_containers_of(self.home)
        if names or containers:
            say(f"LEFT after aiot down: {names or 'no process'}; {containers} container(s); removed them")
        else:
            say("no process or container of the home left after aiot down")
        note = "none: clean" if not (names or containers) else f"{', '.join(names)}; containers: {containers}"
        return Row(
            metric="processes + containers left after down",
            unit="count",
            platform=float(len(names) + containers),
            samples=1,
            note=note,
        )


def remove_containers_of(home: Path) -> int:
    """Containers labelled with this home (0 when there is no Docker engine)."""
    try:
        from service_agent.docker_runtime import remove_containers

        return remove_containers(str(home))
    except (ImportError, PlatformError):
        return 0


# watching heartbeats --------------------------------------------------------------------------------
class Beats:
    """Heartbeats of the running platform, as they arrive here: last pid, first arrival per id and pid."""

    def __init__(self, bus: Bus) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[int, float]] = {}
        self._first: dict[str, float] = {}
        self._first_of_pid: dict[tuple[str, int], float] = {}
        self._loop = ConsumerLoop(
            bus, [bus.topics.heartbeats], group=None, name="bench-node-beats", offset_reset="latest"
        )
        # Read from the raw envelope, not validated as ``Heartbeat``: a process started from a newer
        # checkout may send fields this one does not know, and the watch must not miss its beats.
        self._loop.on_any(self._on_envelope)

    def _on_envelope(self, envelope: Envelope) -> None:
        if envelope.type != Heartbeat.message_type:
            return
        service_id, pid = envelope.payload.get("service_id"), envelope.payload.get("pid")
        if not isinstance(service_id, str) or not isinstance(pid, int):
            return
        now = time.monotonic()
        with self._lock:
            self._latest[service_id] = (pid, now)
            self._first.setdefault(service_id, now)
            self._first_of_pid.setdefault((service_id, pid), now)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def current_pid(self, service_id: str) -> int | None:
        """The pid of the copy that beat within the last ``FRESH_BEAT_S``."""
        with self._lock:
            pid, at = self._latest.get(service_id, (0, 0.0))
        return pid if pid and time.monotonic() - at <= FRESH_BEAT_S else None

    def first_beat(self, service_id: str) -> float | None:
        with self._lock:
            return self._first.get(service_id)

    def first_of_pid(self, service_id: str, pid: int) -> float | None:
        with self._lock:
            return self._first_of_pid.get((service_id, pid))

    def replaced(self, service_id: str, old_pid: int, since: float) -> tuple[int, float] | None:
        """(new pid, its first beat's arrival) once a copy other than ``old_pid`` beats after ``since``."""
        with self._lock:
            pid, at = self._latest.get(service_id, (old_pid, 0.0))
            if pid == old_pid or at <= since:
                return None
            return pid, self._first_of_pid[(service_id, pid)]


@contextlib.contextmanager
def watching(broker: str, home: Path) -> Iterator[tuple[Bus, Beats, Requester]]:
    # The platform's home: its secrets file has the bus credential of its owner.
    updates = {"home": str(home), "kafka.bootstrap_servers": broker, "kafka.topic_prefix": TOPIC_PREFIX}
    with temporary_settings(updates) as s:
        bus = Bus(s, source="bench-node-layer")
    beats = Beats(bus)
    requester = Requester(bus)
    beats.start()
    try:
        requester.start()
        try:
            yield bus, beats, requester
        finally:
            requester.stop()
    finally:
        beats.stop()


# (a) recovery --------------------------------------------------------------------------------------
def _age_s(pid: int) -> float:
    try:
        return time.time() - psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return 0.0


def _gone(pid: int, create_time: float) -> bool:
    try:
        process = psutil.Process(pid)
        return process.create_time() != create_time or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Recovery:
    """Faults of one service of the platform, and the time until it beats again with a new pid."""

    def __init__(self, platform: BenchPlatform, beats: Beats, service_id: str) -> None:
        self.platform = platform
        self.beats = beats
        self.service_id = service_id
        self.last_restart = 0.0  # monotonic time the last replacement was first heard
        self.copies_left = 0  # old copies still running after their replacement beat (killed here)
        self.faults: list[tuple[str, float]] = []  # (signal, wall time) of every fault

    def restart_delays(self) -> tuple[dict[str, list[float]], dict[str, list[int]], list[list[str]]]:
        """Per signal: fault → the monitor's first ``restarted`` incident (its restart answered), and
        how many restarts each fault took; and per fault, its incidents ("+seconds kind: detail").

        What remains of a recovery after the restart is the service's own start-up until its first
        beat; more than one restart per fault means the replacement was restarted again.
        """
        incidents = self.platform.incidents(self.service_id)
        delays: dict[str, list[float]] = {}
        restarts: dict[str, list[int]] = {}
        timeline: list[list[str]] = []
        for n, (name, at) in enumerate(self.faults):
            until = self.faults[n + 1][1] if n + 1 < len(self.faults) else float("inf")
            window = [(t, kind, detail) for t, kind, detail in incidents if at <= t < until]
            done = [t for t, kind, _detail in window if kind == "restarted"]
            if done:
                delays.setdefault(name, []).append(done[0] - at)
            restarts.setdefault(name, []).append(len(done))
            timeline.append([f"{name} +{t - at:.2f}s {kind}: {detail[:100]}" for t, kind, detail in window])
        return delays, restarts, timeline

    def target(self) -> psutil.Process:
        """The running copy, checked to be this home's ``service_id`` before it is signalled."""
        pid = wait_for(
            lambda: self.beats.current_pid(self.service_id), WAIT_S, f"{self.service_id} heartbeating"
        )
        process = psutil.Process(pid)
        env = process.environ()
        if env.get("AIOT_HOME") != str(self.platform.home) or env.get("AIOT_SERVICE_ID") != self.service_id:
            raise RuntimeError(
                f"pid {pid} is not {self.service_id} of {self.platform.home}; not signalling it"
            )
        return process

    def settle(self, *, before_hang: bool) -> None:
        """Stable: beating ≥ 2 s, older than the crash-loop window and the monitor's restart row
        (``stable_after_s``: each fault is then a first restart, without back-off), past the
        start grace if needed."""
        old_enough = max(MONITOR.crash_loop_uptime_s, MONITOR.stable_after_s) + 1.0
        grace_over = self.last_restart + MONITOR.start_grace_s + 0.5 if before_hang else 0.0

        def stable() -> bool | None:
            pid = self.beats.current_pid(self.service_id)
            first = self.beats.first_of_pid(self.service_id, pid) if pid else None
            now = time.monotonic()
            if pid is None or first is None or now - first < STABLE_AFTER_S:
                return None
            if _age_s(pid) < old_enough or now < grace_over:
                return None
            return True

        wait_for(stable, WAIT_S, f"{self.service_id} stable")

    def trial(self, signum: signal.Signals) -> float | None:
        """Seconds from the fault to a beat with a new pid; None when it did not come back in time."""
        process = self.target()
        pid, created = process.pid, process.create_time()
        began, began_wall = time.monotonic(), time.time()
        os.kill(pid, signum)
        self.faults.append((signum.name, began_wall))
        try:
            new_pid, first_at = wait_for(
                lambda: self.beats.replaced(self.service_id, pid, began),
                WAIT_S,
                f"{self.service_id} beating with a new pid after {signum.name} of {pid}",
            )
        except TimeoutError as exc:
            say(f"  FAILED: {exc}\n{self.platform.diagnose(self.service_id)}")
            return None
        self.last_restart = first_at
        say(f"  {signum.name} {self.service_id} {pid} → new pid {new_pid} after {first_at - began:.2f}s")
        try:
            wait_for(lambda: _gone(pid, created) or None, WAIT_S, f"old {self.service_id} {pid} gone")
        except TimeoutError:
            say(f"  the old copy {pid} still runs beside the new one; killing it")
            self.copies_left += 1
            with contextlib.suppress(psutil.Error):
                process.kill()
        return first_at - began

    def trials(self, signum: signal.Signals, count: int) -> Trials:
        """``count`` faults; stops early when the service does not come back at all."""
        done = Trials(signum.name)
        for n in range(count):
            try:
                self.settle(before_hang=signum == signal.SIGSTOP)
            except TimeoutError as exc:
                done.aborted = f"stopped after {n} trials: {exc}"
                say(f"  {done.aborted}\n{self.platform.diagnose(self.service_id)}")
                break
            say(f"recovery trial {n + 1}/{count}: {signum.name}")
            sample = self.trial(signum)
            if sample is None:
                done.failed += 1
            else:
                done.samples.append(sample)
        return done


@dataclass
class Trials:
    signal_name: str
    samples: list[float] = field(default_factory=list)
    failed: int = 0
    aborted: str = ""

    def problems(self) -> str:
        said = [f"{self.failed} trial(s) not back within {WAIT_S:.0f}s"] if self.failed else []
        return "; ".join([*said, *([self.aborted] if self.aborted else [])])


def restart_row(kind: str, delays: list[float], restarts: list[int]) -> Row:
    p50 = percentile(delays, 50)
    shown = "-" if p50 is None else f"{p50:.2f}s"
    again = sum(max(0, count - 1) for count in restarts)
    say(f"  {kind}: fault → monitor's restart answered p50 {shown}; the rest is {SERVICE}'s own start-up")
    if again:
        say(f"  {kind}: {again} replacement(s) restarted again before they beat (see params)")
    return Row(
        f"recovery {kind}: fault → restart done p50",
        "s",
        p50,
        samples=len(delays),
        note=f"the monitor's 'restarted' incident (agent answered RestartService); rest: {SERVICE} start-up"
        + (f"; {again} replacement(s) restarted again" if again else ""),
    )


def recovery_rows(kind: str, trials: Trials, target_s: float) -> list[Row]:
    samples = trials.samples
    p50, p95 = percentile(samples, 50), percentile(samples, 95)
    verdict = _met(p50, target_s) if not trials.failed else "NOT met (failed trials)"
    shown = f"p50 {p50:.2f}s, p95 {p95:.2f}s" if p50 is not None and p95 is not None else "no sample"
    problems = trials.problems()
    detail = f"{shown}; {problems}" if problems else shown
    say(f"target: {kind} recovery p50 < {target_s:g}s: {verdict} ({detail})")
    bare_note = "bare: k8s default liveness probe detection delay (10s x 3), detection only, no restart"
    note = f"fault → beat with new pid; target p50 < {target_s:g}s: {verdict}; {bare_note}"
    return [
        Row(
            f"recovery {kind} {SERVICE} p50",
            "s",
            p50,
            K8S_LIVENESS_DETECTION_S,
            len(samples),
            f"{problems}; {note}" if problems else note,
        ),
        Row(f"recovery {kind} {SERVICE} p95", "s", p95, K8S_LIVENESS_DETECTION_S, len(samples), bare_note),
    ]


# (b) start-up and footprint --------------------------------------------------------------------------
def startup_rows(up_s: float, footprint: Footprint, processes: int) -> list[Row]:
    up_verdict = _met(up_s, TARGET_UP_S)
    rss_verdict = _met(footprint.rss_mb, TARGET_RSS_MB)
    say(f"target: aiot up < {TARGET_UP_S:g}s: {up_verdict} ({up_s:.1f}s)")
    say(f"target: total RSS < {TARGET_RSS_MB:g} MB: {rss_verdict} ({footprint.rss_mb:.0f} MB)")
    say(f"  RSS by process (MB): {footprint.by_process}")
    return [
        Row(
            f"aiot up --detach --nodes {NODES}",
            "s",
            up_s,
            samples=1,
            note=f"wall clock to ready; target < {TARGET_UP_S:g}s: {up_verdict}",
        ),
        Row(
            "total RSS of the platform",
            "MB",
            footprint.rss_mb,
            samples=processes,
            note=f"{processes} processes, {RSS_DELAY_S:g}s after ready; target < 1 GB: {rss_verdict}",
        ),
        Row(
            "total PSS of the platform",
            "MB",
            footprint.pss_mb,
            samples=processes,
            note="shared pages split between the processes sharing them",
        ),
    ]


# (c) service starts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartTiming:
    first_beat_s: float
    reply_s: float


class Starter:
    """Starts probe services through one agent and times request → first heartbeat."""

    def __init__(self, requester: Requester, beats: Beats, topic: str) -> None:
        self.requester = requester
        self.beats = beats
        self.topic = topic

    def timed(self, spec: ServiceSpec, timeout: float) -> StartTiming:
        began = time.monotonic()
        try:
            self.requester.request(self.topic, StartService(spec=spec), ServiceStateReply, timeout=timeout)
            replied = time.monotonic() - began
            first = wait_for(
                lambda: self.beats.first_beat(spec.service_id), WAIT_S, f"first beat of {spec.service_id}"
            )
        finally:
            self.stop(spec.service_id)
        timing = StartTiming(first - began, replied)
        say(f"  {spec.service_id}: first beat {timing.first_beat_s:.2f}s (reply {timing.reply_s:.2f}s)")
        return timing

    def stop(self, service_id: str) -> None:
        try:
            self.requester.request(
                self.topic, StopService(service_id=service_id), ServiceStateReply, timeout=STOP_TIMEOUT_S
            )
        except PlatformError as exc:
            say(f"  stopping {service_id}: {exc}")


def probe_spec(service_id: str, requirements: list[str] | None = None) -> ServiceSpec:
    return ServiceSpec(
        service_id=service_id,
        kind="app",
        owner="bench",
        command=["{python}", "-c", PROBE],
        requirements=requirements or [],
    )


def bare_start(platform: BenchPlatform, broker: str, beats: Beats, service_id: str) -> float:
    """The probe spawned directly (same interpreter, same variables): request-less baseline."""
    env = clean_environment()
    env.update(
        {
            "AIOT_HOME": str(platform.home),
            "AIOT_SERVICE_ID": service_id,
            "AIOT_KAFKA__BOOTSTRAP_SERVERS": broker,
            "AIOT_KAFKA__TOPIC_PREFIX": TOPIC_PREFIX,
            "PYTHONUNBUFFERED": "1",
        }
    )
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", PROBE],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        first = wait_for(lambda: beats.first_beat(service_id), WAIT_S, f"first beat of {service_id}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    say(f"  {service_id} (spawned directly): first beat {first - began:.2f}s")
    return first - began


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _spread(values: list[float]) -> str:
    return f"median of {len(values)}, {min(values):.2f}-{max(values):.2f}s" if len(values) > 1 else "1 start"


def process_start_rows(
    platform: BenchPlatform, broker: str, bus: Bus, beats: Beats, requester: Requester, plan: Plan
) -> tuple[list[Row], dict[str, list[float]]]:
    token = secrets.token_hex(3)
    starter = Starter(requester, beats, agent_topic(bus.topics, MAIN_NODE))
    say(f"service starts on {MAIN_NODE} (process runtime)")
    bare: list[float] = []
    plain: list[StartTiming] = []
    for n in range(plan.starts):  # alternated, so both see the same load
        bare.append(bare_start(platform, broker, beats, f"bench-bare{n}-{token}"))
        plain.append(starter.timed(probe_spec(f"bench-plain{n}-{token}"), WAIT_S))
    first = starter.timed(probe_spec(f"bench-venv-{token}", PROBE_REQUIREMENTS), VENV_START_TIMEOUT_S)
    cached = [
        starter.timed(probe_spec(f"bench-venv{n}-{token}", PROBE_REQUIREMENTS), WAIT_S)
        for n in range(plan.starts)
    ]
    plain_s = [t.first_beat_s for t in plain]
    cached_s = [t.first_beat_s for t in cached]
    bare_note = f"bare: the probe spawned directly ({_spread(bare)})"
    reqs = ",".join(PROBE_REQUIREMENTS)
    rows = [
        Row(
            "start: process, no requirements",
            "s",
            _median(plain_s),
            _median(bare),
            len(plain_s),
            f"StartService → first beat, {_spread(plain_s)}; {bare_note}",
        ),
        Row(
            f"start: process, {reqs}, new venv",
            "s",
            first.first_beat_s,
            samples=1,
            note=f"venv created by uv inside the request (agent reply {first.reply_s:.2f}s)",
        ),
        Row(
            f"start: process, {reqs}, cached venv",
            "s",
            _median(cached_s),
            _median(bare),
            len(cached_s),
            f"{_spread(cached_s)}; {bare_note}",
        ),
    ]
    samples = {"bare": bare, "plain": plain_s, "venv_first": [first.first_beat_s], "venv_cached": cached_s}
    return rows, samples


def docker_unavailable(base_image: str) -> str | None:
    """Why the docker runtime cannot be measured here, or None."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            client.ping()
            client.images.get(base_image)
        finally:
            client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return None


def aiot_image_tags() -> set[str]:
    import docker

    client = docker.from_env(timeout=30)
    try:
        images = client.images.list(filters={"label": "aiot.platform=1"})
        return {tag for image in images for tag in image.tags}
    finally:
        client.close()


@contextlib.contextmanager
def docker_agent(platform: BenchPlatform, broker: str) -> Iterator[None]:
    """A ServiceAgent with the docker runtime, in this process, joined to the platform as one more node."""
    from service_agent.agent import ServiceAgent

    updates: dict[str, Any] = {
        "home": str(platform.home),
        "config_file": None,
        "service_id": f"agent-{DOCKER_NODE}",
        "agent_pid": None,
        "kafka.bootstrap_servers": broker,
        "kafka.topic_prefix": TOPIC_PREFIX,
        "agent.node_id": DOCKER_NODE,
        "agent.main": False,
        "agent.runtime": "docker",
        "agent.http_port": 0,
        "agent.port_range": DOCKER_PORT_RANGE,
        "agent.load_scope": "services",
        "agent.allow_commands": True,  # the probe is a plain command line
    }
    with temporary_settings(updates) as settings:
        agent = ServiceAgent(settings)
    root = logging.getLogger()
    level = root.level  # the agent's log handler lowers it; the runner's console stays as it was
    agent.start()
    try:
        yield
    finally:
        agent.stop()
        root.setLevel(level)


def docker_start_rows(
    platform: BenchPlatform, broker: str, bus: Bus, beats: Beats, requester: Requester, plan: Plan
) -> tuple[list[Row], dict[str, list[float]]]:
    names = ("start: docker, first", "start: docker, cached image")
    reason = docker_unavailable(AgentSettings().docker_base_image)
    if reason is not None:
        say(f"docker runtime skipped: {reason}")
        return [Row(name, "s", None, samples=0, note=f"skipped: {reason}") for name in names], {}
    token = secrets.token_hex(3)
    say(f"service starts on {DOCKER_NODE} (docker runtime, agent in this process)")
    before = aiot_image_tags()
    with docker_agent(platform, broker):
        starter = Starter(requester, beats, agent_topic(bus.topics, DOCKER_NODE))
        first = starter.timed(probe_spec(f"bench-docker-{token}"), DOCKER_START_TIMEOUT_S)
        built = sorted(aiot_image_tags() - before)
        cached = [
            starter.timed(probe_spec(f"bench-docker{n}-{token}"), WAIT_S).first_beat_s
            for n in range(plan.starts)
        ]
    image = f"built {built[0]} in the request" if built else "image already there, nothing built"
    rows = [
        Row(
            names[0],
            "s",
            first.first_beat_s,
            samples=1,
            note=f"StartService → first beat; {image}; agent reply {first.reply_s:.2f}s",
        ),
        Row(names[1], "s", _median(cached), samples=len(cached), note=_spread(cached)),
    ]
    return rows, {"docker_first": [first.first_beat_s], "docker_cached": cached}


def overload_row(platform: BenchPlatform, plan: Plan, params: dict[str, Any]) -> Row:
    """Burners on twice the cores for ``plan.overload_s``: every restart or move meanwhile is false."""
    cores = os.cpu_count() or 1
    before, since = platform.restarts(), time.time()
    say(f"overload: {2 * cores} CPU burners for {plan.overload_s:g}s; counting restarts")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * cores)]
    try:
        time.sleep(plan.overload_s)  # the fault itself: a saturated machine
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    time.sleep(MONITOR.start_grace_s)  # what the monitor decided late (a deferred restart) counts too
    acted = platform.acted_since(since)
    restarted = platform.restarts() - before
    false = max(restarted, len(acted))
    verdict = "met" if false == 0 else "NOT met"
    who = ", ".join(sorted({service for service, _kind, _detail in acted})) or "none"
    params["overload"] = {
        "seconds": plan.overload_s,
        "burners": 2 * cores,
        "restarts": restarted,
        "acted": acted,
    }
    return Row(
        f"false restarts under CPU overload ({2 * cores} burners, {plan.overload_s:g}s)",
        "count",
        float(false),
        samples=1,
        note=f"target 0: {verdict}; restarted or moved: {who}",
    )


# the run --------------------------------------------------------------------------------------------------
def measure(platform: BenchPlatform, plan: Plan, params: dict[str, Any]) -> list[Row]:
    say(f"aiot up --detach --nodes {NODES} in {platform.home}")
    up_s = platform.up(NODES)
    say(f"platform up in {up_s:.1f}s; measuring its footprint in {RSS_DELAY_S:g}s")
    time.sleep(RSS_DELAY_S)
    footprint, processes = platform.footprint()
    params["rss_mb_by_process"] = footprint.by_process
    rows = startup_rows(up_s, footprint, processes)
    broker = platform.state().broker
    if broker is None:
        raise RuntimeError("the run state names no broker")
    with watching(broker, platform.home) as (bus, beats, requester):
        recovery = Recovery(platform, beats, SERVICE)
        killed = recovery.trials(signal.SIGKILL, plan.trials)
        hung = recovery.trials(signal.SIGSTOP, plan.trials)
        params["recovery_s"] = {
            trials.signal_name: [round(sample, 3) for sample in trials.samples] for trials in (killed, hung)
        }
        params["recovery_failed_trials"] = {trials.signal_name: trials.failed for trials in (killed, hung)}
        params["old_copies_left_running"] = recovery.copies_left
        delays, restarts, timeline = recovery.restart_delays()
        params["restart_done_s"] = {name: [round(d, 3) for d in found] for name, found in delays.items()}
        params["restarts_per_fault"] = restarts
        params["incidents_per_fault"] = timeline
        rows += recovery_rows("kill -9", killed, TARGET_KILL_P50_S)
        rows.append(restart_row("kill -9", delays.get("SIGKILL", []), restarts.get("SIGKILL", [])))
        rows += recovery_rows("SIGSTOP", hung, TARGET_HUNG_P50_S)
        rows.append(restart_row("SIGSTOP", delays.get("SIGSTOP", []), restarts.get("SIGSTOP", [])))
        rows.append(overload_row(platform, plan, params))
        process_rows, process_samples = process_start_rows(platform, broker, bus, beats, requester, plan)
        docker_rows, docker_samples = docker_start_rows(platform, broker, bus, beats, requester, plan)
        rows += process_rows + docker_rows
        params["start_s"] = {
            name: [round(sample, 3) for sample in samples]
            for name, samples in {**process_samples, **docker_samples}.items()
        }
    return rows


def run(options: Options) -> Result:
    plan = QUICK if options.quick else FULL
    scratch = Path(tempfile.mkdtemp(prefix="aiot-bench-nodes-")).resolve()
    platform = BenchPlatform(scratch / "home")
    params: dict[str, Any] = {
        "nodes": NODES,
        "trials": plan.trials,
        "starts": plan.starts,
        "service": SERVICE,
        "k8s_liveness_detection_s": K8S_LIVENESS_DETECTION_S,
        "targets": {
            "kill9_p50_s": TARGET_KILL_P50_S,
            "sigstop_p50_s": TARGET_HUNG_P50_S,
            "up_s": TARGET_UP_S,
            "rss_mb": TARGET_RSS_MB,
        },
    }
    rows: list[Row] = []
    failed = True
    try:
        rows = measure(platform, plan, params)
        failed = False
    finally:
        rows.append(platform.down_and_check())
        if failed:
            say(f"kept {platform.home} for its logs (logs/*.out, registry.db incidents)")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return Result(name="node_layer", rows=rows, params=params)
