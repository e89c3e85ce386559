"""Drive whole platforms through the `aiot` command, as a user does, for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka.admin import AdminClient

from aiot.client import PlatformClient
from logger.store import LogQuery, LogStore
from platform_core.blobstore import LocalBlobStore
from platform_core.instances import file_under_owner, instance_loop
from platform_core.roster import DEFAULT_ROSTER
from platform_sdk.bus import Bus, ConsumerLoop, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.messages import Heartbeat
from platform_sdk.settings import temporary_settings

AIOT = [sys.executable, "-m", "aiot"]
FAILED = pytest.StashKey[bool]()  # set on a test item whose test failed (tests/conftest.py)


# The tests' brokers live for minutes and start often: C1 alone (kafka.jit "quick") brings one up
# seconds sooner than the default's C2 warm-up, and the platform behaves the same on either.
TEST_BROKER_JIT = "quick"


def worker_ports() -> dict[str, str]:
    """Service ports of this pytest-xdist worker's platforms: gw0 from 20000 (the default), gw1 from 16000...

    Two workers may start platforms at once; an agent hands out ports nobody listens on yet, so two
    platforms on one range could give the same port to two services starting together. Each worker
    below gw0 has 4000 ports (four nodes, node_manager.max_nodes), under the kernel's ephemeral ports.
    """
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    base = int(os.environ.get("AIOT_TEST_PORT_BASE", "20000"))  # another pytest run beside: its own
    return {"AIOT_NODE_MANAGER__FIRST_SERVICE_PORT": str(base - 4000 * (index % 5))}


class Platform:
    """One platform home driven through the `aiot` command."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("AIOT_")}
        self.env.update({"AIOT_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"})
        self.env.update(worker_ports())
        self.env["AIOT_KAFKA__JIT"] = TEST_BROKER_JIT
        self.up_args: tuple[str, ...] = ()

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*AIOT, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"aiot {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def up(self, *args: str) -> None:
        """`aiot up --detach` with ``args``; remembered for ``restart``."""
        self.up_args = args
        # A first docker start builds the platform's image: allow for it.
        self.run("up", "--detach", *args, "--timeout", "400", timeout=600)

    def restart(self) -> None:
        """`aiot down`, then `aiot up` as before on the same home."""
        self.run("down")
        self.up(*self.up_args)

    def down(self) -> None:
        """`aiot down`, then wait until no process of this home is left."""
        self.run("down", check=False)
        wait_until(lambda: self.processes() == [], 30, "no process of the platform left after down")

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args, "--json").stdout)

    def processes(self) -> list[psutil.Process]:
        """Every process whose environment names this home (pids from the run state would miss strays)."""
        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get("AIOT_HOME") == str(self.home) and process.pid != os.getpid():
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def troubles(self, since: str, limit: int = 80) -> str:
        """The platform's own warnings and errors (not librdkafka's) logged at or after the ISO time
        ``since`` (UTC), oldest first: what a failed end-to-end test prints to say what the platform
        saw. Read with the logger's own store and query."""
        store = LogStore(LocalBlobStore(self.home / "bucket"))
        query = LogQuery(
            since=datetime.fromisoformat(since).replace(tzinfo=UTC), level="WARNING", limit=10_000
        )
        lines = [
            f"{record.time.isoformat()[11:23]} {record.service_id} {record.level} {record.message[:240]}"
            for record in store.query(query)
            if record.logger != "librdkafka"
        ]
        return "\n".join(lines[-limit:])

    def status(self) -> dict[str, Any]:
        """What `aiot status --json` shows, made in this process with this platform's settings.

        Tests poll it in loops: a CLI process per poll cost a second of CPU and up to several of
        wall time on a loaded machine. The command itself is tested through the CLI
        (``json("status")``) where its output is what is under test.
        """
        from aiot.cli import status_document

        updates = {
            key.removeprefix("AIOT_").lower().replace("__", "."): value
            for key, value in self.env.items()
            if key.startswith("AIOT_")
        }
        with temporary_settings(updates) as settings:
            return status_document(settings)

    def bus_settings(self, broker: str | None = None) -> dict[str, Any]:
        """Settings overrides that reach this platform's bus as its owner (its secrets file's super user)."""
        return {
            "kafka.bootstrap_servers": broker or self.status()["broker"],
            "kafka.topic_prefix": "aiot",
            "kafka.secrets_file": str(self.home / "secrets" / "kafka.json"),
        }

    def admin(self) -> AdminClient:
        """An admin client of this platform's broker, as its super user."""
        with temporary_settings(self.bus_settings()) as settings:
            return Bus(settings, source="test-admin").admin()

    def service(self, service_id: str) -> dict[str, Any] | None:
        return next((s for s in self.status()["services"] if s["service_id"] == service_id), None)


@contextlib.contextmanager
def platform_per_runtime(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    env: dict[str, str] | None = None,
) -> Iterator[Platform]:
    """`aiot up --nodes 2` on the runtime of a `params=["process", "docker"]` fixture; `aiot down` after.

    ``env`` is added to the platform's environment (every service it starts inherits it).
    """
    runtime: str = request.param
    if runtime == "docker":
        request.applymarker(pytest.mark.service("docker"))
        request.getfixturevalue("docker_engine")
    with running_platform(
        tmp_path_factory.mktemp(f"{name}-{runtime}") / "home", "--nodes", "2", "--runtime", runtime, env=env
    ) as running:
        yield running


@contextlib.contextmanager
def running_platform(home: Path, *up_args: str, env: dict[str, str] | None = None) -> Iterator[Platform]:
    """`aiot up --detach` with ``up_args`` in ``home`` (``env`` added to its environment); down after."""
    running = Platform(home)
    running.env.update(env or {})
    running.up(*up_args)
    try:
        yield running
    finally:
        running.down()


@contextlib.contextmanager
def watching_beats(platform: Platform) -> Iterator[Beats]:
    """The platform's heartbeats, watched from this process while the block runs."""
    watcher = Beats(platform.bus_settings())
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


def platform_services() -> set[str]:
    """Every service `aiot up` runs: the roster's, the node manager and the heartbeat monitor."""
    roster = tomllib.loads(DEFAULT_ROSTER.read_text())
    return {service["service_id"] for service in roster["service"]} | {"node-manager", "heartbeat"}


class Beats:
    """Heartbeats of a running platform: per service id its latest start (instance) and when it beat."""

    def __init__(self, bus_settings: dict[str, Any]) -> None:
        self.latest: dict[str, str] = {}
        self.heard_at: dict[str, float] = {}  # time.monotonic() of its latest beat's arrival
        self.last_wait: dict[str, float] = {}  # see wait_all_heard_since
        self._lock = threading.Lock()
        with temporary_settings(bus_settings) as settings:
            self.bus = Bus(settings, source="test-watch")
            self.requester = Requester(self.bus)
            self._loop = ConsumerLoop(
                self.bus, [self.bus.topics.heartbeats], group=None, offset_reset="latest"
            )
            # Model replicas and app instances beat on their own topics, read as the monitor reads them.
            self._own_loop = instance_loop(
                self.bus,
                "heartbeats",
                group=f"{self.bus.topics.prefix}.test-watch.{uuid.uuid4().hex}",
                name="test-watch",
                listed=True,
            )
        self._loop.add_handler(Heartbeat, self._on_beat)
        file_under_owner(self._own_loop, Heartbeat, self._on_beat)

    def _on_beat(self, beat: Heartbeat, _envelope: Envelope) -> None:
        with self._lock:
            self.latest[beat.service_id] = beat.instance
            self.heard_at[beat.service_id] = time.monotonic()

    def start(self) -> None:
        self._loop.start()
        self._own_loop.start()
        self.requester.start()

    def stop(self) -> None:
        self.requester.stop()
        self._loop.stop()
        self._own_loop.stop()
        self.bus.close()

    def instance(self, service_id: str) -> str:
        wait_until(lambda: service_id in self.latest, 10, f"{service_id} heartbeating")
        with self._lock:
            return self.latest[service_id]

    def restarted(self, service_id: str, old_instance: str) -> bool:
        """Whether a new start of the service has beaten (not the old one, whatever its pid)."""
        with self._lock:
            return self.latest.get(service_id, old_instance) != old_instance

    def all_heard_since(self, services: set[str], since: float) -> bool:
        return not self.silent_since(services, since)

    def silent_since(self, services: set[str], since: float) -> list[str]:
        """The services of ``services`` not heard after ``since`` (monotonic), sorted."""
        with self._lock:
            return sorted(s for s in services if self.heard_at.get(s, 0.0) <= since)

    def wait_all_heard_since(self, services: set[str], since: float, timeout: float, what: str) -> float:
        """Seconds until every service of ``services`` beat after ``since``; a failure names the silent.

        ``self.last_wait`` keeps, per service, the seconds from ``since`` to when it was first seen
        heard (the slowest tell which part of the platform a fault held up longest).
        """
        first: dict[str, float] = {}

        def heard() -> bool:
            now = time.monotonic()
            for service in set(services) - set(first) - set(self.silent_since(services, since)):
                first[service] = round(now - since, 1)
            return len(first) == len(services)

        try:
            return wait_until(heard, timeout, what)
        except AssertionError as error:
            silent = self.silent_since(services, since)
            raise AssertionError(f"{error}; still silent: {', '.join(silent)}") from None
        finally:
            self.last_wait = dict(sorted(first.items(), key=lambda item: -item[1]))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` held; fails the test after ``timeout``."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - began


def wait_running(client: PlatformClient, schedule_id: str, timeout: float = 240) -> dict[str, Any]:
    """The first running instance of a schedule (as the client sees it); fails on a failed one."""
    found: dict[str, Any] = {}

    def running() -> bool:
        for instance in client.get(f"/api/schedules/{schedule_id}")["instances"]:
            assert instance["status"] != "failed", f"{instance['instance_id']} failed: {instance['error']}"
            if instance["status"] == "running":
                found.update(instance)
                return True
        return False

    wait_until(running, timeout, f"an instance of schedule {schedule_id} running")
    return found
