"""The ``model_serving`` benchmark: one small model served four ways, side by side.

The model is the numpy comfort model of ``examples/models/comfort`` (inputs
``temperature`` and ``humidity``, endpoint ``predict``), loaded through its
``model.json`` everywhere. Four contenders serve it on this machine in one run:

* **in-process**: the endpoint's method called directly, the floor (a loop for
  concurrency 1, threads for 8 and 32);
* **platform**: the platform's REST wrapper (``python -m ai_manager.serving``, with an
  embedded broker for its heartbeats and logs), called through the SDK's
  ``model_call`` path: ``ModelClient`` with a ``StaticResolver``;
* **bentoml**: BentoML 1.4 with its defaults (``bentoml serve``, a ``@bentoml.service``
  class with a ``@bentoml.api`` method), in its own venv, cached under
  ``~/.cache/aiot/bench`` and created on the first run;
* **flask**: a plain Flask app on Flask's dev server (``app.run``, threaded).

A fifth, diagnostic row, **platform-http**, drives the platform's wrapper with bare
``http.client`` like BentoML and Flask, so its difference to "platform" is the SDK
client's own cost. Each cell also records the CPU the serving processes and the client
processes spent per answer inside the window, which shows where the time goes.

Load: for concurrency c, c keep-alive connections (one per client thread) spread
over min(c, 4) client processes, so the client's GIL is not the limit. Each cell is
a warm-up, then a fixed window in which every request is timed; p50, p99 and
requests/s come from that window. Full runs do two rounds in opposite orders and
pool them; the machine is shared by clients and servers, so only the side-by-side
ratios carry over to other machines. Every server binds 127.0.0.1 and is stopped
(its process group killed) at the end, even on error.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, Protocol

import psutil

from benchmarks import Options, Result, Row
from benchmarks.bus import percentile
from benchmarks.serving_contenders.loader import load_endpoint
from bootstrapper.broker import TansuBroker
from platform_sdk.net import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONTENDERS_DIR = Path(__file__).resolve().parent / "serving_contenders"
MODEL_DIR = PROJECT_ROOT / "examples" / "models" / "comfort"
MODEL_NAME = "comfort"
ENDPOINT = "predict"
INPUTS: dict[str, Any] = {"temperature": 30.0, "humidity": 60.0}

CONCURRENCIES = (1, 8, 32)
MAX_CLIENT_PROCESSES = 4
IN_PROCESS, PLATFORM, BENTOML, FLASK = "in-process", "platform", "bentoml", "flask"
# Diagnostic: the platform's wrapper driven by bare http.client, like BentoML and Flask, so
# the difference to "platform" is the SDK client's own cost.
PLATFORM_HTTP = "platform-http"
CONTENDERS = (IN_PROCESS, PLATFORM, PLATFORM_HTTP, BENTOML, FLASK)

BENTOML_REQUIREMENT = "bentoml>=1.4,<1.5"
BENTOML_VERSION_PREFIX = "1.4."
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aiot" / "bench"
BENTOML_VENV = CACHE_DIR / "bentoml-venv"

READY_TIMEOUT_S = 120.0  # a server answering its readiness route
CLIENT_READY_TIMEOUT_S = 60.0  # every client thread's first answer
CLIENT_GRACE_S = 60.0  # past the window, before a client gives up on its own
REQUEST_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
INSTALL_TIMEOUT_S = 600.0

TARGET_P50_MS = 0.6  # platform, concurrency 1
TARGET_THROUGHPUT_X = 4.0  # platform / BentoML requests/s, concurrency 32


@dataclass(frozen=True)
class Plan:
    warm_up_s: float
    window_s: float
    rounds: int


FULL = Plan(warm_up_s=1.0, window_s=3.0, rounds=2)
QUICK = Plan(warm_up_s=0.3, window_s=0.7, rounds=1)


def progress(text: str) -> None:
    print(f"  model_serving: {text}", file=sys.stderr, flush=True)


# -- load generation ---------------------------------------------------------------------------


class Window(Protocol):
    """[start, end] in ``time.perf_counter`` seconds (CLOCK_MONOTONIC: the same in every process)."""

    def __getitem__(self, index: int, /) -> float: ...


@dataclass
class Tally:
    """What one client thread saw inside the window."""

    latencies_ms: list[float] = field(default_factory=list)
    completed: int = 0  # answers that arrived inside the window
    errors: int = 0
    failure: str = ""  # set when the thread never got a first answer


def drive(call: Callable[[], object], window: Window, ready: threading.Event, tally: Tally) -> None:
    """Call back to back until the window closes; time each call that starts and ends inside it.

    The first call must succeed (within CLIENT_READY_TIMEOUT_S) before ``ready`` is
    set: connections are open and first-request costs paid before anything counts.
    """
    give_up = time.perf_counter() + CLIENT_READY_TIMEOUT_S
    while True:
        try:
            call()
            break
        except Exception as exc:
            if time.perf_counter() > give_up:
                tally.failure = f"{type(exc).__name__}: {exc}"
                ready.set()
                return
            time.sleep(0.05)
    ready.set()
    hard_stop = time.perf_counter() + CLIENT_READY_TIMEOUT_S + CLIENT_GRACE_S
    latencies = tally.latencies_ms
    while True:
        began = time.perf_counter()
        start, end = window[0], min(window[1], hard_stop)
        if began >= end:
            return
        try:
            call()
            ok = True
        except Exception:
            ok = False
        done = time.perf_counter()
        if start <= done <= end:
            if ok:
                tally.completed += 1
                if began >= start:
                    latencies.append((done - began) * 1e3)
            else:
                tally.errors += 1


@dataclass(frozen=True)
class Target:
    """A server the client processes call: ``http`` (bare http.client) or ``sdk`` (ModelClient)."""

    kind: str
    port: int
    path: str


def make_caller(target: Target) -> Callable[[], object]:
    """A call function for one client thread (its own kept-alive connection)."""
    if target.kind == "sdk":
        return _sdk_caller(target)
    connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=REQUEST_TIMEOUT_S)
    body = json.dumps(INPUTS).encode()
    headers = {"Content-Type": "application/json"}

    def call() -> object:
        try:
            connection.request("POST", target.path, body, headers)
            response = connection.getresponse()
            payload = response.read()
        except Exception:
            connection.close()  # the next request opens a new connection
            raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
        return json.loads(payload)

    return call


_sdk_clients: dict[int, Any] = {}


def _sdk_caller(target: Target) -> Callable[[], object]:
    # ModelClient is thread-safe and keeps one connection per thread: one client per process.
    from platform_sdk.model_client import ModelClient, StaticResolver

    client = _sdk_clients.get(target.port)
    if client is None:
        client = _sdk_clients[target.port] = ModelClient(
            StaticResolver({MODEL_NAME: [f"http://127.0.0.1:{target.port}"]}), timeout=REQUEST_TIMEOUT_S
        )

    def call() -> object:
        return client.call(MODEL_NAME, ENDPOINT, INPUTS)

    return call


def sleep_until(moment: float) -> None:
    while (left := moment - time.perf_counter()) > 0:
        time.sleep(min(left, 0.5))


def window_cpu(window: Window, cpu: Callable[[], float | None]) -> float | None:
    """``cpu()`` seconds spent between the window's start and end (waits for the window to be set)."""
    hard_stop = time.perf_counter() + CLIENT_READY_TIMEOUT_S + CLIENT_GRACE_S
    while window[0] == math.inf and time.perf_counter() < hard_stop:
        time.sleep(0.001)
    sleep_until(window[0])
    began = cpu()
    sleep_until(window[1])
    ended = cpu()
    return None if began is None or ended is None else ended - began


def client_process(
    target: Target,
    threads: int,
    window: Window,
    ready: Queue[str],
    results: Queue[tuple[list[Tally], float | None]],
) -> None:
    """One client process: ``threads`` connections driven until the window closes.

    It reports its threads' tallies and its own CPU seconds inside the window.
    """
    tallies = [Tally() for _ in range(threads)]
    events = [threading.Event() for _ in range(threads)]
    workers = [
        threading.Thread(target=drive, args=(make_caller(target), window, event, tally), daemon=True)
        for event, tally in zip(events, tallies, strict=True)
    ]
    for worker in workers:
        worker.start()
    for event in events:
        event.wait()
    failures = "; ".join(tally.failure for tally in tallies if tally.failure)
    ready.put(failures)
    cpu = None if failures else window_cpu(window, time.process_time)
    for worker in workers:
        worker.join()
    results.put((tallies, cpu))


@dataclass
class Cell:
    """One contender at one concurrency in one round."""

    contender: str
    concurrency: int
    window_s: float
    tallies: list[Tally]
    server_cpu_s: float | None = None  # the serving processes' CPU inside the window
    client_cpu_s: float | None = None  # the client processes' CPU inside the window

    @property
    def latencies_ms(self) -> list[float]:
        return [latency for tally in self.tallies for latency in tally.latencies_ms]

    @property
    def completed(self) -> int:
        return sum(tally.completed for tally in self.tallies)

    @property
    def errors(self) -> int:
        return sum(tally.errors for tally in self.tallies)


def split(total: int, parts: int) -> list[int]:
    """``total`` threads over ``parts`` processes, as evenly as possible."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by ``pid`` and its descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measure_remote(target: Target, contender: str, concurrency: int, plan: Plan, server_pid: int) -> Cell:
    """c connections over min(c, 4) client processes; the window opens once every thread has an answer."""
    # forkserver: the children start cheaply from a clean process (no broker or test threads copied).
    context = multiprocessing.get_context("forkserver")
    window = context.RawArray("d", [math.inf, math.inf])
    ready: Queue[str] = context.Queue()
    results: Queue[tuple[list[Tally], float | None]] = context.Queue()
    processes = [
        context.Process(
            target=client_process,
            args=(target, threads, window, ready, results),
            name=f"bench-client-{contender}-{index}",
            daemon=True,
        )
        for index, threads in enumerate(split(concurrency, min(concurrency, MAX_CLIENT_PROCESSES)))
    ]
    try:
        for process in processes:
            process.start()
        failures = [ready.get(timeout=CLIENT_READY_TIMEOUT_S + 30) for _ in processes]
        if any(failures):
            raise RuntimeError(f"{contender} never answered a client: {'; '.join(filter(None, failures))}")
        start = time.perf_counter() + plan.warm_up_s
        window[1] = start + plan.window_s
        window[0] = start
        server_cpu = window_cpu(window, lambda: tree_cpu(server_pid))
        reports = [results.get(timeout=CLIENT_GRACE_S) for _ in processes]
        tallies = [tally for report, _ in reports for tally in report]
        client_cpus = [cpu for _, cpu in reports]
        client_cpu = None if None in client_cpus else sum(cpu or 0.0 for cpu in client_cpus)
        for process in processes:
            process.join(STOP_TIMEOUT_S)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(STOP_TIMEOUT_S)
    return Cell(contender, concurrency, plan.window_s, tallies, server_cpu, client_cpu)


def measure_in_process(predict: Callable[..., object], concurrency: int, plan: Plan) -> Cell:
    """The floor: the endpoint's method called back to back, by c threads of this process."""
    window = [math.inf, math.inf]
    tallies = [Tally() for _ in range(concurrency)]
    events = [threading.Event() for _ in range(concurrency)]

    def call() -> object:
        return predict(**INPUTS)

    workers = [
        threading.Thread(target=drive, args=(call, window, event, tally), daemon=True)
        for event, tally in zip(events, tallies, strict=True)
    ]
    for worker in workers:
        worker.start()
    for event in events:
        event.wait()
    start = time.perf_counter() + plan.warm_up_s
    window[1] = start + plan.window_s
    window[0] = start
    cpu = window_cpu(window, time.process_time)
    for worker in workers:
        worker.join()
    failures = [tally.failure for tally in tallies if tally.failure]
    if failures:
        raise RuntimeError(f"the model failed in-process: {failures[0]}")
    return Cell(IN_PROCESS, concurrency, plan.window_s, tallies, server_cpu_s=cpu)


# -- servers -----------------------------------------------------------------------------------


def _run(argv: list[str], what: str) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def uv_command() -> list[str]:
    probe = subprocess.run(
        ["python3", "-m", "uv", "--version"], capture_output=True, stdin=subprocess.DEVNULL, check=False
    )
    if probe.returncode == 0:
        return ["python3", "-m", "uv"]
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("BentoML's venv needs uv: neither `python3 -m uv` nor `uv` works here")
    return [uv]


def bentoml_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import bentoml, numpy; print(bentoml.__version__)"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    version = probe.stdout.strip()
    return version if probe.returncode == 0 and version.startswith(BENTOML_VERSION_PREFIX) else None


def ensure_bentoml_venv(venv: Path = BENTOML_VENV) -> tuple[Path, str]:
    """BentoML's own venv (outside the project's), created on first use and reused after."""
    python = venv / "bin" / "python"
    version = bentoml_version(python)
    if version is not None:
        progress(f"BentoML {version} from {venv}")
        return venv, version
    uv = uv_command()
    progress(f"creating BentoML's venv at {venv} (first run only) ...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    _run([*uv, "venv", "--clear", "--python", python_version, str(venv)], "uv venv")
    progress(f"installing {BENTOML_REQUIREMENT} and numpy into it ...")
    _run([*uv, "pip", "install", "--python", str(python), BENTOML_REQUIREMENT, "numpy"], "uv pip install")
    version = bentoml_version(python)
    if version is None:
        raise RuntimeError(f"{venv} has no importable BentoML {BENTOML_VERSION_PREFIX}x after installing")
    progress(f"BentoML {version} installed")
    return venv, version


def base_env() -> dict[str, str]:
    """This environment without the platform's settings or the project's venv."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIOT_", "BENTOML_")) and key not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }


def http_status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_file: Path

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before it was ready:\n{self.tail()}"
                )
            if http_status(self.port, path) == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready on {path} within {READY_TIMEOUT_S:g}s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL what is left; then any descendant outside the group.

        BentoML's supervisor starts its worker in a session of the worker's own, so the
        descendants are listed first and swept after the group is gone.
        """
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # members that outlived the leader
        _, alive = psutil.wait_procs(descendants, timeout=STOP_TIMEOUT_S)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def serving(
    name: str, argv: list[str], env: dict[str, str], cwd: Path, port: int, ready_path: str, logs: Path
) -> Iterator[Server]:
    """Start a server in its own process group, wait for ``ready_path``, stop it after the block."""
    log_file = logs / f"{name}.log"
    with log_file.open("ab") as output:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, port, process, log_file)
    try:
        server.wait_ready(ready_path)
        progress(f"{name} ready on 127.0.0.1:{port} (pid {process.pid})")
        yield server
    finally:
        server.stop()


def serve_bentoml(venv: Path, model_dir: Path, home: Path) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    env = {
        **base_env(),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENTOML_HOME": str(home / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "AIOT_BENCH_MODEL_DIR": str(model_dir),
        "AIOT_BENCH_ENDPOINT": ENDPOINT,
    }
    argv = [
        str(venv / "bin" / "bentoml"), "serve", "bento_service:ComfortService",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return serving(BENTOML, argv, env, CONTENDERS_DIR, port, "/readyz", home)


def serve_flask(model_dir: Path, home: Path) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    env = {
        **base_env(),
        "PYTHONPATH": str(PROJECT_ROOT),
        "AIOT_BENCH_MODEL_DIR": str(model_dir),
        "AIOT_BENCH_ENDPOINT": ENDPOINT,
    }
    argv = [sys.executable, "-m", "benchmarks.serving_contenders.flask_app", str(port)]
    return serving(FLASK, argv, env, PROJECT_ROOT, port, "/health", home)


def serve_platform(model_dir: Path, home: Path, bootstrap: str) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    env = {
        **base_env(),
        "PYTHONPATH": str(PROJECT_ROOT),
        "AIOT_HOME": str(home / "aiot"),
        "AIOT_MODEL__DIR": str(model_dir),
        "AIOT_PORT_HTTP": str(port),
        "AIOT_SERVICE_ID": "bench-comfort",
        "AIOT_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
    }
    argv = [sys.executable, "-m", "ai_manager.serving"]
    return serving(PLATFORM, argv, env, PROJECT_ROOT, port, "/health", home)


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    p50_ms: float | None
    p99_ms: float | None
    rps: float | None
    requests: int
    errors: int
    server_cpu_us: float | None  # CPU of the serving processes (in-process: this process) per answer
    client_cpu_us: float | None  # CPU of the client processes per answer

    def value(self, metric: str) -> float | None:
        return {"p50": self.p50_ms, "p99": self.p99_ms, "rps": self.rps}[metric]


def _cpu_per_answer(seconds: list[float | None], completed: int) -> float | None:
    if not completed or any(value is None for value in seconds):
        return None
    return sum(value or 0.0 for value in seconds) / completed * 1e6


def pooled(cells: list[Cell]) -> Stats:
    """One contender at one concurrency over every round: latencies pooled, rate over the total window."""
    latencies = [latency for cell in cells for latency in cell.latencies_ms]
    window_s = sum(cell.window_s for cell in cells)
    completed = sum(cell.completed for cell in cells)
    return Stats(
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        rps=completed / window_s if window_s else None,
        requests=len(latencies),
        errors=sum(cell.errors for cell in cells),
        server_cpu_us=_cpu_per_answer([cell.server_cpu_s for cell in cells], completed),
        client_cpu_us=_cpu_per_answer([cell.client_cpu_s for cell in cells], completed),
    )


def ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


Matrix = dict[str, dict[int, Stats]]
METRICS = (("p50", "latency p50", "ms"), ("p99", "latency p99", "ms"), ("rps", "throughput", "req/s"))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def target_notes(matrix: Matrix) -> dict[tuple[int, str], str]:
    notes = {}
    p50 = matrix[PLATFORM][1].p50_ms
    if p50 is not None:
        verdict = "met" if p50 <= TARGET_P50_MS else "MISSED"
        notes[(1, "p50")] = f"target platform <= {TARGET_P50_MS} ms: {verdict}"
    times = ratio(matrix[PLATFORM][32].rps, matrix[BENTOML][32].rps)
    if times is not None:
        verdict = "met" if times >= TARGET_THROUGHPUT_X else "MISSED"
        notes[(32, "rps")] = f"target platform >= {TARGET_THROUGHPUT_X:g}x bentoml: {verdict} ({times:.1f}x)"
    return notes


def rows(matrix: Matrix) -> list[Row]:
    """Per concurrency and metric: platform against BentoML (the ratio column), the rest in the note."""
    targets = target_notes(matrix)
    result = []
    for concurrency in CONCURRENCIES:
        for key, label, unit in METRICS:
            stats = {name: matrix[name][concurrency] for name in CONTENDERS}
            platform, floor = stats[PLATFORM].value(key), stats[IN_PROCESS].value(key)
            parts = [
                f"in-process {_fmt(floor)}",
                f"flask {_fmt(stats[FLASK].value(key))}",
                f"platform/in-process {_fmt(ratio(platform, floor))}",
            ]
            errors = {name: s.errors for name, s in stats.items() if s.errors}
            if errors:
                parts.append(f"errors {errors}")
            if (concurrency, key) in targets:
                parts.append(targets[(concurrency, key)])
            result.append(
                Row(
                    f"c={concurrency} {label}",
                    unit,
                    platform,
                    stats[BENTOML].value(key),
                    samples=stats[PLATFORM].requests,
                    note="; ".join(parts),
                )
            )
    return result


MATRIX_HEADER = (
    "contender", "c", "p50 ms", "p99 ms", "req/s",
    "p50 /in-proc", "p50 /bentoml", "req/s /bentoml", "server CPU us/req", "client CPU us/req",
)  # fmt: skip


def matrix_lines(matrix: Matrix) -> list[tuple[str, ...]]:
    """Every contender at every concurrency, with its ratios to in-process and to BentoML."""
    lines: list[tuple[str, ...]] = []
    for concurrency in CONCURRENCIES:
        floor, bento = matrix[IN_PROCESS][concurrency], matrix[BENTOML][concurrency]
        for name in CONTENDERS:
            stats = matrix[name][concurrency]
            lines.append(
                (
                    name,
                    str(concurrency),
                    _fmt(stats.p50_ms),
                    _fmt(stats.p99_ms),
                    _fmt(stats.rps),
                    _fmt(ratio(stats.p50_ms, floor.p50_ms)),
                    _fmt(ratio(stats.p50_ms, bento.p50_ms)),
                    _fmt(ratio(stats.rps, bento.rps)),
                    _fmt(stats.server_cpu_us),
                    _fmt(stats.client_cpu_us),
                )
            )
    return lines


def matrix_table(matrix: Matrix) -> str:
    lines = [MATRIX_HEADER, *matrix_lines(matrix)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(MATRIX_HEADER))]
    rendered = [
        "  ".join(
            cell.rjust(width) if index else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def as_json(matrix: Matrix, cells: dict[str, dict[int, list[Cell]]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, by_concurrency in matrix.items():
        out[name] = {}
        for concurrency, stats in by_concurrency.items():
            floor, bento = matrix[IN_PROCESS][concurrency], matrix[BENTOML][concurrency]
            out[name][str(concurrency)] = {
                **asdict(stats),
                "p50_vs_in_process": ratio(stats.p50_ms, floor.p50_ms),
                "p99_vs_in_process": ratio(stats.p99_ms, floor.p99_ms),
                "rps_vs_in_process": ratio(stats.rps, floor.rps),
                "p50_vs_bentoml": ratio(stats.p50_ms, bento.p50_ms),
                "p99_vs_bentoml": ratio(stats.p99_ms, bento.p99_ms),
                "rps_vs_bentoml": ratio(stats.rps, bento.rps),
                "rounds": [asdict(pooled([cell])) for cell in cells[name][concurrency]],
            }
    return out


# -- the run -----------------------------------------------------------------------------------


def run(options: Options) -> Result:
    plan = QUICK if options.quick else FULL
    model_dir = MODEL_DIR
    if not (model_dir / "model.json").exists():
        raise FileNotFoundError(f"{model_dir / 'model.json'} is missing: the benchmark serves that model")
    venv, bento_version = ensure_bentoml_venv()
    predict = load_endpoint(model_dir, ENDPOINT)
    cells: dict[str, dict[int, list[Cell]]] = {name: {c: [] for c in CONCURRENCIES} for name in CONTENDERS}
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aiot-bench-serving-")))
        broker = TansuBroker(log_file=home / "tansu.log")
        broker.start()
        stack.callback(broker.stop)
        servers = {
            PLATFORM: stack.enter_context(serve_platform(model_dir, home, broker.bootstrap_servers)),
            BENTOML: stack.enter_context(serve_bentoml(venv, model_dir, home)),
            FLASK: stack.enter_context(serve_flask(model_dir, home)),
        }
        remote = {
            PLATFORM: (Target("sdk", servers[PLATFORM].port, f"/predict/{ENDPOINT}"), servers[PLATFORM]),
            PLATFORM_HTTP: (
                Target("http", servers[PLATFORM].port, f"/predict/{ENDPOINT}"),
                servers[PLATFORM],
            ),
            BENTOML: (Target("http", servers[BENTOML].port, f"/{ENDPOINT}"), servers[BENTOML]),
            FLASK: (Target("http", servers[FLASK].port, f"/predict/{ENDPOINT}"), servers[FLASK]),
        }
        for number in range(plan.rounds):
            # Alternate the order, so drift on a shared machine does not favour one contender.
            order = CONTENDERS if number % 2 == 0 else CONTENDERS[::-1]
            for concurrency in CONCURRENCIES:
                for name in order:
                    if name == IN_PROCESS:
                        cell = measure_in_process(predict, concurrency, plan)
                    else:
                        target, server = remote[name]
                        cell = measure_remote(target, name, concurrency, plan, server.process.pid)
                    cells[name][concurrency].append(cell)
                    stats = pooled([cell])
                    progress(
                        f"round {number + 1}/{plan.rounds} c={concurrency:<2} {name:<13} "
                        f"p50 {_fmt(stats.p50_ms):>6} ms  {_fmt(stats.rps):>6} req/s"
                        + (f"  {cell.errors} errors" if cell.errors else "")
                    )
        server_logs = {name: server.tail(5) for name, server in servers.items()}
    matrix: Matrix = {name: {c: pooled(cells[name][c]) for c in CONCURRENCIES} for name in CONTENDERS}
    print(matrix_table(matrix), file=sys.stderr, flush=True)
    return Result(
        name="model_serving",
        rows=rows(matrix),
        params={
            "model": str(model_dir.relative_to(PROJECT_ROOT)),
            "endpoint": ENDPOINT,
            "inputs": INPUTS,
            "concurrency": list(CONCURRENCIES),
            "client_processes": {str(c): min(c, MAX_CLIENT_PROCESSES) for c in CONCURRENCIES},
            "warm_up_s": plan.warm_up_s,
            "window_s": plan.window_s,
            "rounds": plan.rounds,
            "bare": "bentoml",
            "bentoml": bento_version,
            "bentoml_venv": str(venv),
            "flask": importlib.metadata.version("flask"),
            "elapsed_measuring_s": round(time.perf_counter() - began, 1),
            "load_average_end": [round(load, 2) for load in os.getloadavg()],
            "matrix": [dict(zip(MATRIX_HEADER, line, strict=True)) for line in matrix_lines(matrix)],
            "contenders": as_json(matrix, cells),
            "server_log_tails": server_logs,
        },
    )
