"""The ``local`` provider: run a whole platform on this machine under one AIOT_HOME.

``LocalPlatform.up()``::

    broker configured? ── yes ─▶ check it answers
                       └─ no ──▶ start the bundled broker on a free 127.0.0.1 port
    registry database ─▶ migrate; create the first platform configurer if none
    for each service in SERVICES ─▶ ``python -m <module>`` in its own session,
        with AIOT_HOME / AIOT_SERVICE_ID / the broker address in its environment,
        output to AIOT_HOME/logs/<service>.out
    wait ─▶ a heartbeat from every service, and the front door's /api/health
    record ─▶ AIOT_HOME/run/state.json (pids with their create times, ports, URL)

``down()`` stops the recorded processes (SIGTERM, then SIGKILL after a grace
period), services first and the broker last, and removes the run state.
A pid is only signalled if its create time matches the record, so a reused pid
is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from bootstrapper.broker import EmbeddedBroker, wait_for_broker
from platform_core.db import Database
from platform_sdk.bus import Bus, ConsumerLoop
from platform_sdk.envelope import Envelope
from platform_sdk.errors import Conflict, Timeout, Unavailable
from platform_sdk.messages import Heartbeat
from platform_sdk.net import free_port
from platform_sdk.runstate import (
    ProcessRecord,
    RunState,
    clear_run_state,
    read_run_state,
    write_run_state,
)
from platform_sdk.settings import Settings, temporary_settings
from web.identity import ensure_first_configurer

BROKER = "broker"
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
Progress = Callable[[str], None]


@dataclass(frozen=True)
class PlatformService:
    """A platform service the local provider starts: its id and its module."""

    service_id: str
    module: str


SERVICES = (PlatformService("logger", "logger"), PlatformService("web", "web"))


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int
    running: bool
    log_file: str | None


@dataclass(frozen=True)
class UpResult:
    state: RunState
    generated_password: str | None


def _alive(record: ProcessRecord) -> psutil.Process | None:
    """The recorded process if it still runs (and is the same process, not a reused pid)."""
    try:
        process = psutil.Process(record.pid)
        if abs(process.create_time() - record.create_time) > 0.01:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        return None
    return process


def _record(
    name: str, popen: subprocess.Popen[bytes] | int, command: list[str], log_file: Path | None
) -> ProcessRecord:
    pid = popen if isinstance(popen, int) else popen.pid
    return ProcessRecord(
        name=name,
        pid=pid,
        create_time=psutil.Process(pid).create_time(),
        command=command,
        log_file=str(log_file) if log_file else None,
    )


class LocalPlatform:
    """One platform on this machine, identified by its AIOT_HOME."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home_dir
        self.log_dir = self.home / "logs"

    def status(self) -> list[ProcessStatus]:
        state = read_run_state(self.settings)
        if state is None:
            return []
        return [
            ProcessStatus(record.name, record.pid, _alive(record) is not None, record.log_file)
            for record in state.processes
        ]

    def is_running(self) -> bool:
        return any(process.running for process in self.status())

    def up(self, progress: Progress = lambda _step: None, timeout: float = READY_TIMEOUT_S) -> UpResult:
        """Start everything and return once it all answers; on failure stop what was started."""
        if self.is_running():
            raise Conflict(f"a platform already runs from {self.home}; stop it first with `aiot down`")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        state = RunState()
        try:
            state.broker = self._start_broker(state, progress)
            write_run_state(self.settings, state)
            with temporary_settings({"kafka.bootstrap_servers": state.broker}) as settings:
                generated = self._prepare_database(settings, progress)
                web_port = settings.web.port or free_port(settings.web.host)
                state.web_url = f"http://{settings.web.host}:{web_port}"
                for service in SERVICES:
                    progress(f"starting {service.service_id}")
                    state.processes.append(self._start_service(service, state.broker, web_port))
                    write_run_state(self.settings, state)
                self._wait_ready(settings, state, progress, timeout)
        except BaseException:
            progress("start-up failed; stopping what was started")
            self._stop_recorded(state)
            clear_run_state(self.settings)
            raise
        return UpResult(state, generated)

    def _start_broker(self, state: RunState, progress: Progress) -> str:
        configured = self.settings.kafka.bootstrap_servers
        if configured:
            progress(f"checking Kafka at {configured}")
            wait_for_broker(configured, timeout=10)
            return configured
        progress("starting the embedded Kafka broker")
        broker = EmbeddedBroker(log_file=self.log_dir / f"{BROKER}.out")
        broker.start(detach=True)
        assert broker.pid is not None
        state.broker_embedded = True
        state.processes.append(_record(BROKER, broker.pid, broker.command(), broker.log_file))
        return broker.bootstrap_servers

    def _prepare_database(self, settings: Settings, progress: Progress) -> str | None:
        progress("migrating the registry database")
        database = Database.from_settings(settings)
        try:
            database.migrate()
            auth = settings.auth
            password = auth.admin_password.get_secret_value() if auth.admin_password else None
            return ensure_first_configurer(database, auth.admin_username, password)
        finally:
            database.stop()

    def _start_service(self, service: PlatformService, broker: str, web_port: int) -> ProcessRecord:
        env = {
            **os.environ,
            "AIOT_HOME": str(self.home),
            "AIOT_SERVICE_ID": service.service_id,
            "AIOT_KAFKA__BOOTSTRAP_SERVERS": broker,
            "AIOT_WEB__PORT": str(web_port),
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", service.module]
        log_file = self.log_dir / f"{service.service_id}.out"
        with open(log_file, "ab") as output:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return _record(service.service_id, process, command, log_file)

    def _wait_ready(self, settings: Settings, state: RunState, progress: Progress, timeout: float) -> None:
        progress("waiting for every service's heartbeat")
        expected = {service.service_id for service in SERVICES}
        seen: set[str] = set()
        bus = Bus(settings, source="aiot-up")
        watcher = ConsumerLoop(bus, [bus.topics.heartbeats], group=None, name="aiot-up-heartbeats")

        def on_heartbeat(beat: Heartbeat, _envelope: Envelope) -> None:
            seen.add(beat.service_id)

        watcher.add_handler(Heartbeat, on_heartbeat)
        watcher.start()
        deadline = time.monotonic() + timeout
        try:
            while not expected <= seen:
                self._raise_if_exited(state)
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted(expected - seen))
                    raise Timeout(f"no heartbeat from {missing} within {timeout:.0f}s; see {self.log_dir}")
                time.sleep(0.1)
        finally:
            watcher.stop()
        progress("waiting for the front door")
        assert state.web_url is not None
        while True:
            self._raise_if_exited(state)
            try:
                if requests.get(f"{state.web_url}/api/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise Timeout(f"the front door at {state.web_url} did not answer within {timeout:.0f}s")
            time.sleep(0.1)

    def _raise_if_exited(self, state: RunState) -> None:
        for record in state.processes:
            if _alive(record) is None:
                tail = _tail(record.log_file)
                raise Unavailable(f"{record.name} exited during start-up; last output:\n{tail}")

    def down(self, progress: Progress = lambda _step: None) -> list[str]:
        """Stop every recorded process of this home; returns the names stopped."""
        state = read_run_state(self.settings)
        if state is None:
            return []
        stopped = self._stop_recorded(state, progress)
        clear_run_state(self.settings)
        return stopped

    def _stop_recorded(self, state: RunState, progress: Progress = lambda _step: None) -> list[str]:
        services = [record for record in state.processes if record.name != BROKER]
        brokers = [record for record in state.processes if record.name == BROKER]
        stopped = []
        for group in (list(reversed(services)), brokers):
            running = [(record, process) for record in group if (process := _alive(record)) is not None]
            for record, process in running:
                progress(f"stopping {record.name}")
                _signal_group(process, signal.SIGTERM)
            for record, process in running:
                try:
                    process.wait(STOP_GRACE_S)
                except psutil.TimeoutExpired:
                    progress(f"{record.name} ignored SIGTERM for {STOP_GRACE_S:.0f}s; killing it")
                    _signal_group(process, signal.SIGKILL)
                    process.wait(5)
                stopped.append(record.name)
        return stopped


def _signal_group(process: psutil.Process, signum: signal.Signals) -> None:
    """Signal the process's whole session group (it started its own), so helpers it spawned go too."""
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signum)


def _tail(log_file: str | None, lines: int = 15) -> str:
    if not log_file:
        return "(no output recorded)"
    try:
        text = Path(log_file).read_text(errors="replace")
    except FileNotFoundError:
        return "(no output recorded)"
    return "\n".join(text.splitlines()[-lines:])
