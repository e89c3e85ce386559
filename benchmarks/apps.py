"""The ``apps`` benchmark: from a schedule's trigger to the app answering, and to its mail.

For each runtime (``process``, then ``docker`` when a Docker engine answers and has the base
image) one run starts its own platform with ``aiot up --detach --nodes 2 --runtime R`` (a
subprocess of ``sys.executable -m aiot``, the ``BenchPlatform`` of ``benchmarks.node_layer``)
in a temporary AIOT_HOME, with an environment free of any other ``AIOT_*`` variable. It
registers the home's devices (``lake-home`` and its four devices, taken from
``configs/devices/sample.json``: the other locations' simulators, cameras among them, would
only load the machine), uploads the ``comfort`` model and three apps, and measures app starts
as an end user causes them: a ``now`` schedule (``POST /api/schedules``, ``duration`` 2m) per
sample, cancelled (``DELETE /api/schedules/<id>``, which stops its instance) once measured.

The apps:

* ``bench-mini-venv``: a minimal web app written by the benchmark (no model, one
  ``temperature`` device alias, ``app.serve`` of a tiny page) with ``requirements``
  ``["six==1.16.0"]``: on the process runtime it runs in the agent's cached venv, on the docker
  runtime in the image built for that requirement. The issue's case ("a warm venv cache", "a
  cached base image");
* ``bench-mini``: the same app without requirements (the platform's own interpreter, the
  platform's image);
* ``smart-home``: the sample app of ``examples/apps`` (the comfort model, three devices, a
  sensor stream opened before it serves), fewer samples.

Each app is started once, untimed, before the samples (the first start creates the venv or
builds the image, and unpacks the bundle); then the samples go round-robin over the apps. Per
sample, on one clock (the server's timestamps and this process's are of one machine):

* **trigger**: the ``at`` of the schedule's ``started`` history entry, the instant the
  scheduler fired the start (just before it sent ``DeployApp``);
* **health**: the first instant a ``GET <url>/health`` answered 200 with the instance's id,
  polled every 15 ms by the benchmark as soon as the instance's URL is recorded (watched in
  the registry database, read-only, every 10 ms: cheaper than asking the front door, which
  asks the deployer over Kafka);
* **running**: the deployer's ``running`` stage (its own health poll every 200 ms, then the
  row's update);
* **mail**: the ``created_at`` of the instance's mail in ``GET /api/mails``.

Reported per runtime and app: p50, p95 and max of trigger → health, trigger → running and
trigger → mail; the targets are trigger → health under 3 s on the process runtime and under
10 s on the docker runtime. ``bare`` is the same app started by hand, as the agent started the
warm-up instance (another instance id, service id and a free port): on the process runtime its
command, interpreter, working directory (the unpacked bundle) and ``AIOT_*`` variables, spawned
directly; on the docker runtime a ``docker run`` (create + start) of its container's image,
command, variables, user and limits. Start → ``/health`` answering, median of one bare start per
round, each right after the platform's sample of that app. Also a bare
``python -c "import platform_sdk.app"`` (the host's interpreter), the floor of any start. The
JSON keeps every sample with its stages, and the median of each step (create → trigger → queued
→ binding → … → running → mail).

Before each runtime the benchmark waits (up to 10 minutes) for a 1-minute load average of at
most 2.0, and records the load then and at each sample. ``aiot down`` always runs at the end of
a runtime, even on error; then no process (or container) of that home may be left: the last row
of each runtime counts what was, and those are killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil

from aiot.client import Credentials, PlatformClient
from benchmarks import Options, Result, Row
from benchmarks.bus import percentile
from benchmarks.node_layer import BenchPlatform, aiot_image_tags, clean_environment, docker_unavailable
from platform_sdk.errors import PlatformError
from platform_sdk.settings import AgentSettings

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DEVICES = ROOT / "configs" / "devices" / "sample.json"
COMFORT_MODEL = ROOT / "examples" / "models" / "comfort"
SMART_HOME = ROOT / "examples" / "apps" / "smart-home"
NODES = 2
LOCATION = "lake-home"
DURATION = "2m"

UP_TIMEOUT_S = 600.0  # a first docker `up` builds the platform's image
SETUP_TIMEOUT_S = 600.0
WARM_UP_TIMEOUT_S = 900.0  # the first start of an app may create its venv or build its image
SAMPLE_TIMEOUT_S = 120.0
BARE_TIMEOUT_S = 60.0
URL_POLL_S = 0.010
HEALTH_POLL_S = 0.015
WATCH_POLL_S = 0.05
SETTLE_S = 1.0  # after a sample is cancelled, before the next one
MAX_FAILURES = 3  # failed samples in a row before a runtime gives up

LOAD_LIMIT = 2.0
LOAD_WAIT_S = 600.0
LOAD_POLL_S = 15.0

TARGET_S = {"process": 3.0, "docker": 10.0}
STEPS = ("trigger", "queued", "binding", "models", "placing", "health", "running")

MINI_SOURCE = '''"""A minimal web app of the apps benchmark: one temperature alias, a tiny page."""

{imports}

def run(app):
    room = app.config.devices["room"].device_id
    body = (
        f"<!doctype html><title>bench</title><p>{{app.instance_id}} at {{app.location}}: "
        f"the room is {{room}}{{SUFFIX}}</p>"
    ).encode()

    def page(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body]

    app.serve(page)
'''


@dataclass(frozen=True)
class Variant:
    """One app the benchmark schedules."""

    app: str
    label: str
    samples: int  # timed samples (the warm-up start is not counted)


@dataclass(frozen=True)
class Plan:
    samples: int
    smart_home: int

    def variants(self) -> list[Variant]:
        return [
            Variant("bench-mini-venv", "mini+venv", self.samples),
            Variant("bench-mini", "mini", self.samples),
            Variant("smart-home", "smart-home", self.smart_home),
        ]


FULL = Plan(samples=10, smart_home=3)
QUICK = Plan(samples=3, smart_home=1)


def say(message: str) -> None:
    print(f"[apps] {message}", file=sys.stderr, flush=True)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_quiet_machine() -> dict[str, float]:
    """Wait (up to ``LOAD_WAIT_S``) for a 1-minute load of at most ``LOAD_LIMIT``; what it was."""
    began, first = time.monotonic(), load1()
    current = first
    while current > LOAD_LIMIT and time.monotonic() - began < LOAD_WAIT_S:
        say(f"1-minute load {current:.2f} > {LOAD_LIMIT:g}: waiting for it to drop")
        time.sleep(LOAD_POLL_S)
        current = load1()
    waited = time.monotonic() - began
    if current > LOAD_LIMIT:
        say(f"load still {current:.2f} after {waited:.0f}s: measuring anyway (recorded)")
    return {"load_before_wait": first, "load_at_start": current, "waited_s": round(waited, 1)}


def epoch(value: str) -> float:
    """An ISO timestamp of the platform as epoch seconds (naive ones are UTC, as the database keeps them)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def health_answer(url: str, instance_id: str) -> bool:
    """True when ``<url>/health`` answers 200 naming ``instance_id`` (not a stale server on the port)."""
    host, _, port = url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port or 80), timeout=1.0)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        if response.status != 200:
            return False
        return bool(json.loads(response.read()).get("instance") == instance_id)
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        connection.close()


def poll_health(
    url: str, instance_id: str, timeout: float, gone: Callable[[], str | None] | None = None
) -> tuple[float, int]:
    """(epoch seconds of the first 200, polls made), polling every ``HEALTH_POLL_S``.

    ``gone`` (checked every 20 polls) says why there is nothing left to wait for, or None.
    """
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        due = time.monotonic() + HEALTH_POLL_S
        polls += 1
        if health_answer(url, instance_id):
            return time.time(), polls
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not answer 200 within {timeout:.0f}s")
        if gone is not None and polls % 20 == 0 and (reason := gone()) is not None:
            raise TimeoutError(f"{url}/health will not answer: {reason}")
        time.sleep(max(0.0, due - time.monotonic()))


def wait_for(check: Callable[[], T | None], timeout: float, what: str, poll: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(poll)


# apps and devices the benchmark writes --------------------------------------------------------------
def write_mini_app(folder: Path, name: str, requirements: list[str]) -> Path:
    module = name.replace("-", "_")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": name,
        "version": "1.0.0",
        "description": "The apps benchmark's minimal web app.",
        "author": "benchmarks",
        "entrypoint": f"{module}:run",
        "kind": "web",
        "web": {"health_path": "/health", "title": "Bench"},
        "requirements": requirements,
        "resources": {"cpu": 0.5, "memory_mb": 256},
        "devices": {"room": {"type": "temperature", "count": 1}},
    }
    (folder / "app.json").write_text(json.dumps(manifest, indent=2) + "\n")
    imports = 'import six\n\nSUFFIX = f" (six {six.__version__})"\n' if requirements else 'SUFFIX = ""\n'
    (folder / f"{module}.py").write_text(MINI_SOURCE.format(imports=imports))
    return folder


def write_home_devices(path: Path) -> Path:
    """The sample file reduced to ``LOCATION``, its devices and their types."""
    sample = json.loads(SAMPLE_DEVICES.read_text())
    devices = [device for device in sample["devices"] if device["location"] == LOCATION]
    types = {device["type"] for device in devices}
    reduced = {
        "device_types": [kind for kind in sample["device_types"] if kind["name"] in types],
        "locations": [location for location in sample["locations"] if location["name"] == LOCATION],
        "devices": devices,
    }
    path.write_text(json.dumps(reduced, indent=2) + "\n")
    return path


# one platform -----------------------------------------------------------------------------------------
class AppsPlatform(BenchPlatform):
    """A platform home on one runtime, with the front door client of its admin."""

    def __init__(self, home: Path, runtime: str) -> None:
        super().__init__(home)
        self.runtime = runtime
        self._client: PlatformClient | None = None
        self._db: sqlite3.Connection | None = None

    def run_aiot(self, *args: str, timeout: float = SETUP_TIMEOUT_S) -> str:
        done = self.aiot(*args, timeout=timeout)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
            raise RuntimeError(f"aiot {' '.join(args)} failed ({done.returncode}):\n{tail}")
        return done.stdout

    def up_runtime(self) -> float:
        """Wall-clock seconds of ``aiot up --detach --nodes 2 --runtime R``."""
        began = time.perf_counter()
        self.run_aiot(
            "up", "--detach", "--nodes", str(NODES), "--runtime", self.runtime, "--timeout", "500",
            timeout=UP_TIMEOUT_S,
        )  # fmt: skip
        elapsed = time.perf_counter() - began
        self.recorded = [(record.pid, record.create_time, record.name) for record in self.state().processes]
        return elapsed

    @property
    def client(self) -> PlatformClient:
        if self._client is None:
            saved = Credentials.model_validate_json((self.home / "credentials.json").read_bytes())
            self._client = PlatformClient(saved.url, saved.token, timeout=130.0)
        return self._client

    @property
    def db(self) -> sqlite3.Connection:
        """The registry, read-only: only to see cheaply when something is there to ask the API for."""
        if self._db is None:
            path = self.home / "registry.db"
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def instance_row(self, schedule_id: str) -> tuple[str, str, str, str] | None:
        """(instance id, url, status, error) of the schedule's instance, once it has one."""
        try:
            row = self.db.execute(
                "SELECT instance_id, url, status, coalesce(error, '') FROM app_instances "
                "WHERE schedule_id = ?",
                (schedule_id,),
            ).fetchone()
        except sqlite3.OperationalError:  # the table is busy or not there yet
            return None
        return None if row is None else (str(row[0]), str(row[1] or ""), str(row[2]), str(row[3]))

    def has_mail(self, instance_id: str) -> bool:
        with contextlib.suppress(sqlite3.OperationalError):
            found = self.db.execute("SELECT 1 FROM mails WHERE instance_id = ?", (instance_id,)).fetchone()
            return found is not None
        return False


# samples ----------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One start of one app: every instant in epoch seconds, on the machine's clock."""

    app: str
    warm_up: bool
    load: float
    schedule_id: str = ""
    instance_id: str = ""
    node_id: str = ""
    posted: float = 0.0  # just before the POST
    created: float = 0.0  # the schedule's created_at
    trigger: float = 0.0
    url_seen: float = 0.0
    health: float = 0.0
    health_polls: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    mail: float = 0.0
    error: str = ""

    def since_trigger(self, instant: float) -> float | None:
        return instant - self.trigger if instant and self.trigger else None

    def to_dict(self) -> dict[str, Any]:
        base = self.trigger
        return {
            "app": self.app,
            "warm_up": self.warm_up,
            "load1": self.load,
            "schedule_id": self.schedule_id,
            "instance_id": self.instance_id,
            "node_id": self.node_id,
            "error": self.error,
            "trigger_at": datetime.fromtimestamp(base, UTC).isoformat() if base else None,
            "created_to_trigger_s": round(base - self.created, 3) if base and self.created else None,
            "post_to_trigger_s": round(base - self.posted, 3) if base and self.posted else None,
            "health_s": _rounded(self.since_trigger(self.health)),
            "running_s": _rounded(self.since_trigger(self.stages.get("running", 0.0))),
            "mail_s": _rounded(self.since_trigger(self.mail)),
            "url_seen_s": _rounded(self.since_trigger(self.url_seen)),
            "health_polls": self.health_polls,
            "stages_s": {stage: round(at - base, 3) for stage, at in self.stages.items()} if base else {},
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Sampler:
    """Schedules an app now, times its start from the trigger, cancels it."""

    def __init__(self, platform: AppsPlatform) -> None:
        self.platform = platform
        self.client = platform.client

    def start(
        self, app: str, *, warm_up: bool, while_running: Callable[[Sample], None] | None = None
    ) -> Sample:
        """One start of ``app``; ``while_running`` is called before the cancel. A failure is in ``error``."""
        timeout = WARM_UP_TIMEOUT_S if warm_up else SAMPLE_TIMEOUT_S
        sample = Sample(app=app, warm_up=warm_up, load=load1())
        sample.posted = time.time()
        schedule = self.client.post(
            "/api/schedules", json={"app": app, "location": LOCATION, "now": True, "duration": DURATION}
        )
        sample.schedule_id = schedule["schedule_id"]
        sample.created = epoch(schedule["created_at"])
        try:
            self._follow(sample, timeout)
            if while_running is not None:
                while_running(sample)
        except (TimeoutError, PlatformError, RuntimeError) as exc:
            sample.error = f"{type(exc).__name__}: {exc}"
            say(f"  {app}: FAILED: {sample.error}")
        finally:
            self.cancel(sample.schedule_id)
        return sample

    def _follow(self, sample: Sample, timeout: float) -> None:
        platform = self.platform

        def url_known() -> tuple[str, str] | None:
            row = platform.instance_row(sample.schedule_id)
            if row is None:
                return None
            instance_id, url, status, error = row
            if status == "failed":
                raise RuntimeError(f"{instance_id} failed: {error}")
            return (instance_id, url) if url else None

        instance_id, url = wait_for(url_known, timeout, f"an address for {sample.schedule_id}", URL_POLL_S)
        sample.instance_id, sample.url_seen = instance_id, time.time()
        sample.health, sample.health_polls = poll_health(url, instance_id, timeout)

        def running_and_mailed() -> bool | None:
            row = platform.instance_row(sample.schedule_id)
            if row is not None and row[2] == "failed":
                raise RuntimeError(f"{instance_id} failed: {row[3]}")
            return (
                True if row is not None and row[2] == "running" and platform.has_mail(instance_id) else None
            )

        wait_for(running_and_mailed, timeout, f"{instance_id} running, with its mail", WATCH_POLL_S)
        shown = self.client.get(f"/api/schedules/{sample.schedule_id}")
        started = [entry for entry in shown["history"] if entry["event"] == "started"]
        if not started:
            raise RuntimeError(f"schedule {sample.schedule_id} has no 'started' entry: {shown['history']}")
        sample.trigger = epoch(started[0]["at"])
        instance = next(item for item in shown["instances"] if item["instance_id"] == instance_id)
        sample.node_id = instance.get("node_id") or ""
        for stage in instance["stages"]:
            sample.stages.setdefault(stage["stage"], epoch(stage["at"]))
        mails = self.client.get("/api/mails")["mails"]
        mail = next(item for item in mails if item["instance_id"] == instance_id)
        sample.mail = epoch(mail["created_at"])
        running = sample.stages["running"] - sample.trigger
        say(
            f"  {sample.app} {instance_id} on {sample.node_id}: trigger → health "
            f"{sample.health - sample.trigger:.2f}s, running {running:.2f}s, "
            f"mail {sample.mail - sample.trigger:.2f}s (load {sample.load:.2f})"
        )

    def cancel(self, schedule_id: str) -> None:
        try:
            self.client.delete(f"/api/schedules/{schedule_id}")
        except PlatformError as exc:
            say(f"  cancelling {schedule_id}: {exc}")


# the same app process by hand -------------------------------------------------------------------------
@dataclass(frozen=True)
class BareCommand:
    """How the agent started an app, to start it again by hand: a process, or a container."""

    how: str  # what the bare start is, for the notes
    argv: list[str]  # the command (inside the container on the docker runtime)
    cwd: str
    variables: dict[str, str]  # the AIOT_* ones (all of the container's), per-process ones left out
    container: dict[str, Any] | None = None  # image, user and limits of the agent's container


PER_PROCESS = ("AIOT_AGENT_PID", "AIOT_SERVICE_ID", "AIOT_NODE_ID")


def capture_command(platform: AppsPlatform, instance_id: str) -> BareCommand:
    """The command line, folder and variables of the running instance (its container's, on docker)."""
    if platform.runtime == "docker":
        return capture_container(platform, instance_id)
    service_id = f"app-{instance_id}"

    def found() -> psutil.Process | None:
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                env = process.environ()
                ours = env.get("AIOT_SERVICE_ID") == service_id and env.get("AIOT_HOME") == str(platform.home)
                if ours and process.cmdline()[1:3] == ["-m", "platform_sdk.run_app"]:
                    return process
        return None

    process = wait_for(found, 30, f"the process of {service_id}", 0.2)
    variables = {
        key: value
        for key, value in process.environ().items()
        if key.startswith("AIOT_") and key not in PER_PROCESS and not key.startswith("AIOT_PORT_")
    }
    return BareCommand(
        "the agent's command, interpreter and variables, spawned directly",
        process.cmdline(),
        variables.get("AIOT_BUNDLE_DIR") or process.cwd(),
        variables,
    )


def capture_container(platform: AppsPlatform, instance_id: str) -> BareCommand:
    import docker

    client = docker.from_env(timeout=60)
    try:
        found = client.containers.list(filters={"label": f"aiot.service_id=app-{instance_id}"})
        if not found:
            raise RuntimeError(f"no container of app-{instance_id}")
        attrs = found[0].attrs
    finally:
        client.close()
    config, host = attrs["Config"], attrs["HostConfig"]
    environment = dict(line.split("=", 1) for line in config["Env"] or [])
    variables = {
        key: value
        for key, value in environment.items()
        if key not in PER_PROCESS and not key.startswith("AIOT_PORT_")
    }
    return BareCommand(
        "docker run by hand: the agent's image, command, variables, user and limits",
        list(config["Cmd"]),
        config["WorkingDir"],
        variables,
        {
            "image": config["Image"],
            "user": config.get("User") or None,
            "nano_cpus": host.get("NanoCpus") or None,
            "mem_limit": host.get("Memory") or None,
        },
    )


def bare_start(platform: AppsPlatform, command: BareCommand, name: str) -> float:
    """Start → ``/health`` answering, for the app started by hand as the agent started it."""
    token = f"bare-{name}-{secrets.token_hex(3)}"
    config = json.loads(command.variables["AIOT_APP__INSTANCE"])
    config["instance_id"] = token
    port = free_port()
    variables = {
        **command.variables,
        "AIOT_APP__INSTANCE": json.dumps(config),
        "AIOT_SERVICE_ID": f"app-{token}",
        "AIOT_PORT_HTTP": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    url = f"http://127.0.0.1:{port}"
    if command.container is not None:
        return bare_container(platform, command, variables, url, token)
    began = time.time()
    process = subprocess.Popen(
        command.argv,
        cwd=command.cwd,
        env={**clean_environment(), **variables},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def exited() -> str | None:
        code = process.poll()
        return None if code is None else f"the process exited with {code}"

    try:
        answered, _polls = poll_health(url, token, BARE_TIMEOUT_S, exited)
    finally:
        stop_process(process)
    return answered - began


def bare_container(
    platform: AppsPlatform, command: BareCommand, variables: dict[str, str], url: str, token: str
) -> float:
    """``docker run`` (create + start) of the app's image by hand → ``/health`` answering."""
    import docker

    assert command.container is not None
    home = str(platform.home)
    limits = {key: command.container[key] for key in ("nano_cpus", "mem_limit") if command.container[key]}
    client = docker.from_env(timeout=60)
    container: Any = None
    try:
        began = time.time()
        container = client.containers.create(
            command.container["image"],
            command.argv,
            environment=variables,
            labels={"aiot.platform": "1", "aiot.home": home, "aiot.service_id": f"app-{token}"},
            network_mode="host",
            volumes={home: {"bind": home, "mode": "rw"}},
            working_dir=command.cwd,
            user=command.container["user"],
            init=True,
            **limits,
        )
        container.start()

        def exited() -> str | None:
            container.reload()
            status = container.status
            return None if status in ("created", "running") else f"the container is {status}"

        answered, _polls = poll_health(url, token, BARE_TIMEOUT_S, exited)
        return answered - began
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        client.close()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def bare_import(python: str) -> float:
    began = time.perf_counter()
    subprocess.run(
        [python, "-c", "import platform_sdk.app"], env=clean_environment(), check=True, capture_output=True
    )
    return time.perf_counter() - began


# rows ---------------------------------------------------------------------------------------------------
def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value < target else "NOT met"


def variant_rows(
    runtime: str, variant: Variant, samples: list[Sample], bare: list[float], bare_how: str
) -> list[Row]:
    """p50, p95 and max of trigger → health, → running stage, → mail; bare: the process by hand."""
    done = [sample for sample in samples if not sample.error]
    failed = len(samples) - len(done)
    bare_value = _median(bare)
    target = TARGET_S[runtime]
    measures: dict[str, Callable[[Sample], float]] = {
        "health": lambda s: s.health - s.trigger,
        "running stage": lambda s: s.stages["running"] - s.trigger,
        "mail": lambda s: s.mail - s.trigger,
    }
    rows: list[Row] = []
    for what, measure in measures.items():
        values = [measure(sample) for sample in done]
        shown = {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": _max(values)}
        for name, value in shown.items():
            notes = []
            if what == "health" and name != "max":
                notes.append(f"target < {target:g}s: {_verdict(value, target)}")
            if name == "p50":
                notes.append(f"bare: start → /health, median of {len(bare)}, {bare_how}")
                if failed:
                    notes.append(f"{failed} sample(s) failed (see params)")
            rows.append(
                Row(
                    f"{runtime} {variant.label}: trigger → {what} {name}",
                    "s",
                    value,
                    bare_value,
                    len(values),
                    "; ".join(notes),
                )
            )
        if what == "health":
            say(
                f"target: {runtime} {variant.label} trigger → health < {target:g}s: "
                f"p50 {_verdict(shown['p50'], target)} ({_show(shown['p50'])}), "
                f"p95 {_verdict(shown['p95'], target)} ({_show(shown['p95'])})"
            )
    return rows


def _max(values: list[float]) -> float | None:
    return max(values) if values else None


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def step_medians(samples: list[Sample]) -> dict[str, float | None]:
    """Median seconds of each step, trigger → queued → … → running → mail, over good samples."""
    done = [sample for sample in samples if not sample.error]
    medians: dict[str, float | None] = {
        "create → trigger": _median([s.trigger - s.created for s in done]),
    }
    for earlier, later in itertools.pairwise(STEPS):
        values = []
        for sample in done:
            stages = {"trigger": sample.trigger, **sample.stages}
            if earlier in stages and later in stages:
                values.append(stages[later] - stages[earlier])
        medians[f"{earlier} → {later}"] = _median(values)
    medians["placing → url seen"] = _median([s.url_seen - s.stages["placing"] for s in done])
    medians["url seen → health answered"] = _median([s.health - s.url_seen for s in done])
    medians["health answered → running stage"] = _median([s.stages["running"] - s.health for s in done])
    medians["running stage → mail"] = _median([s.mail - s.stages["running"] for s in done])
    return {name: _rounded(value) for name, value in medians.items()}


# a runtime ------------------------------------------------------------------------------------------------
def setup(platform: AppsPlatform, scratch: Path, variants: list[Variant]) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    devices = write_home_devices(scratch / "lake-home.json")
    folders = {
        "bench-mini-venv": write_mini_app(scratch / "bench-mini-venv", "bench-mini-venv", ["six==1.16.0"]),
        "bench-mini": write_mini_app(scratch / "bench-mini", "bench-mini", []),
        "smart-home": SMART_HOME,
    }
    if any(variant.app == "smart-home" for variant in variants):
        say("aiot model upload examples/models/comfort")
        platform.run_aiot("model", "upload", str(COMFORT_MODEL))
    say(f"aiot device add ({LOCATION} of {SAMPLE_DEVICES.name})")
    platform.run_aiot("device", "add", str(devices))
    for variant in variants:
        platform.run_aiot("app", "upload", str(folders[variant.app]))
    say(f"uploaded {', '.join(variant.app for variant in variants)}")


@dataclass
class Measured:
    """What one runtime's samples gave, per app."""

    warm: dict[str, Sample] = field(default_factory=dict)
    commands: dict[str, BareCommand] = field(default_factory=dict)
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    bare: dict[str, list[float]] = field(default_factory=dict)
    imports: list[float] = field(default_factory=list)
    first_start: dict[str, str] = field(default_factory=dict)  # what the warm-up start created


def warm_up(sampler: Sampler, variants: list[Variant], measured: Measured) -> None:
    """One untimed start per app (venv, image, bundle); the agent's command for the bare starts."""
    runtime = sampler.platform.runtime
    for variant in variants:
        say(f"{runtime}: warm-up start of {variant.app} (untimed: creates the venv or image, the bundle)")

        def capture(sample: Sample, app: str = variant.app) -> None:
            measured.commands[app] = capture_command(sampler.platform, sample.instance_id)

        before = aiot_image_tags() if runtime == "docker" else set()
        venvs = set((sampler.platform.home / "venvs").glob("*"))
        sample = sampler.start(variant.app, warm_up=True, while_running=capture)
        if sample.error:
            raise RuntimeError(f"{runtime}: the warm-up start of {variant.app} failed: {sample.error}")
        if runtime == "docker":
            built = sorted(aiot_image_tags() - before)
            measured.first_start[variant.app] = (
                f"built {', '.join(built)}" if built else "its image was there already (no build)"
            )
        else:
            created = set((sampler.platform.home / "venvs").glob("*")) - venvs
            measured.first_start[variant.app] = "created its venv (uv)" if created else "no venv"
        measured.first_start[variant.app] += "; unpacked its bundle"
        measured.warm[variant.app] = sample
        time.sleep(SETTLE_S)


def sample_rounds(sampler: Sampler, variants: list[Variant], measured: Measured) -> None:
    """Rounds of one timed start per app, each followed by the same app started by hand."""
    runtime = sampler.platform.runtime
    failures = 0
    rounds = max(variant.samples for variant in variants)
    for n in range(rounds):
        say(f"{runtime}: round {n + 1}/{rounds} (load {load1():.2f})")
        for variant in variants:
            if n >= variant.samples:
                continue
            sample = sampler.start(variant.app, warm_up=False)
            measured.samples.setdefault(variant.app, []).append(sample)
            failures = failures + 1 if sample.error else 0
            if failures >= MAX_FAILURES:
                raise RuntimeError(f"{runtime}: {failures} samples in a row failed; last: {sample.error}")
            time.sleep(SETTLE_S)
            bare = measured.bare.setdefault(variant.app, [])
            try:
                bare.append(
                    bare_start(sampler.platform, measured.commands[variant.app], _slug(variant.label))
                )
            except TimeoutError as exc:
                say(f"  bare {variant.app}: {exc}")
        measured.imports.append(bare_import(sys.executable))


def _slug(label: str) -> str:
    return label.replace("+", "-")


def runtime_rows(runtime: str, variants: list[Variant], measured: Measured) -> list[Row]:
    rows: list[Row] = []
    for variant in variants:
        rows += variant_rows(
            runtime,
            variant,
            measured.samples.get(variant.app, []),
            measured.bare.get(variant.app, []),
            measured.commands[variant.app].how,
        )
    every = [sample for found in measured.samples.values() for sample in found if not sample.error]
    create = [sample.trigger - sample.created for sample in every]
    rows.append(
        Row(
            f"{runtime}: create → trigger p50",
            "s",
            _median(create),
            samples=len(create),
            note="the schedule's created_at (POST) → its 'started' (ScheduleChanged over Kafka, APScheduler)",
        )
    )
    for variant in variants:
        first = measured.warm[variant.app]
        rows.append(
            Row(
                f"{runtime} {variant.label}: first start, trigger → health",
                "s",
                _rounded(first.since_trigger(first.health)),
                samples=1,
                note=f"the untimed warm-up: {measured.first_start[variant.app]}",
            )
        )
    imports = measured.imports
    rows.append(
        Row(
            f"{runtime}: bare python -c 'import platform_sdk.app'",
            "s",
            _median(imports),
            samples=len(imports),
            note=f"median, {_spread(imports)}; the host's interpreter",
        )
    )
    return rows


def measure_runtime(platform: AppsPlatform, scratch: Path, plan: Plan, params: dict[str, Any]) -> list[Row]:
    runtime = platform.runtime
    variants = plan.variants()
    say(f"{runtime}: aiot up --detach --nodes {NODES} --runtime {runtime} in {platform.home}")
    up_s = platform.up_runtime()
    params["up_s"] = round(up_s, 1)
    say(f"{runtime}: up in {up_s:.1f}s")
    setup(platform, scratch, variants)
    sampler = Sampler(platform)
    measured = Measured()
    warm_up(sampler, variants, measured)
    params["load_before_samples"] = load1()
    sample_rounds(sampler, variants, measured)
    params["load_after_samples"] = load1()
    rows = runtime_rows(runtime, variants, measured)
    params["bare_command"] = {
        app: {"how": command.how, "argv": command.argv, "cwd": command.cwd, "container": command.container}
        for app, command in measured.commands.items()
    }
    params["steps_median_s"] = {app: step_medians(found) for app, found in measured.samples.items()}
    for app, steps in params["steps_median_s"].items():
        say(f"  {runtime} {app} steps (median s): {steps}")
    params["bare_spawn_to_health_s"] = {
        app: [round(value, 3) for value in values] for app, values in measured.bare.items()
    }
    params["bare_import_s"] = [round(value, 3) for value in measured.imports]
    params["warm_up"] = [sample.to_dict() for sample in measured.warm.values()]
    params["samples"] = [sample.to_dict() for found in measured.samples.values() for sample in found]
    return rows


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}s" if values else "none"


def run_runtime(runtime: str, plan: Plan, scratch: Path) -> tuple[list[Row], dict[str, Any]]:
    params: dict[str, Any] = {"load": wait_for_quiet_machine()}
    scratch.mkdir(parents=True, exist_ok=True)
    platform = AppsPlatform(scratch / f"home-{runtime}", runtime)
    rows: list[Row] = []
    failed = True
    try:
        rows = measure_runtime(platform, scratch, plan, params)
        failed = False
    finally:
        platform.close()
        left = platform.down_and_check()
        rows.append(dataclasses.replace(left, metric=f"{runtime}: {left.metric}"))
        params["load_at_end"] = load1()
        if failed:
            say(f"kept {platform.home} for its logs (logs/*.out, registry.db)")
    return rows, params


def docker_skip_reason() -> str | None:
    image = AgentSettings().docker_base_image
    reason = docker_unavailable(image)
    if reason is None:
        return None
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except Exception:
        return f"no engine ({reason})"
    return f"no base image {image} ({reason})"


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    scratch = Path(tempfile.mkdtemp(prefix="aiot-bench-apps-")).resolve()
    keep = True
    try:
        yield scratch
        keep = False
    finally:
        if keep:
            say(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def run(options: Options) -> Result:
    plan = QUICK if options.quick else FULL
    params: dict[str, Any] = {
        "nodes": NODES,
        "location": LOCATION,
        "samples": {variant.app: variant.samples for variant in plan.variants()},
        "targets_s": TARGET_S,
        "health_poll_s": HEALTH_POLL_S,
        "load_limit": LOAD_LIMIT,
        "runtimes": {},
    }
    rows: list[Row] = []
    errors: list[str] = []
    with scratch_folder() as scratch:
        for runtime in ("process", "docker"):
            if runtime == "docker":
                reason = docker_skip_reason()
                if reason is not None:
                    say(f"docker: skipped, {reason}")
                    params["runtimes"]["docker"] = {"skipped": reason}
                    rows.append(Row("docker: skipped", "s", None, note=reason))
                    continue
            try:
                runtime_rows, runtime_params = run_runtime(runtime, plan, scratch / runtime)
            except Exception as exc:  # the other runtime still runs; the benchmark fails at the end
                errors.append(f"{runtime}: {type(exc).__name__}: {exc}")
                say(f"{runtime}: FAILED: {exc}")
                continue
            rows += runtime_rows
            params["runtimes"][runtime] = runtime_params
        if errors:  # the scratch folder (the failed homes) is kept
            raise RuntimeError("; ".join(errors))
    return Result(name="apps", rows=rows, params=params)
