"""The ``local`` provider: a whole platform on this machine under one AIOT_HOME, the production chain.

``LocalPlatform.up(nodes=N)``::

    broker configured? ── yes ─▶ check it answers
                       └─ no ──▶ start Apache Kafka (KRaft, ``bootstrapper.kafka``) on free 127.0.0.1
                                 ports, a fresh log dir under AIOT_HOME/kafka; without Java 17+
                                 (or ``--broker tansu``) the bundled Tansu instead
    registry database ─▶ migrate; create the first platform configurer if none
    N service agents ──▶ ``python -m service_agent`` each (node-1 is the main node), each with its own
                         HTTP port and port range; wait for their heartbeats
    main agent ────────▶ StartService node-manager (``bootstrapper.local_node_manager``: with this
                         provider's scale-out) and heartbeat (restart="agent": it keeps them alive)
    node manager ──────▶ places every roster service (logger, web, ...) on the least-loaded agent
    wait ──────────────▶ a heartbeat from every service, and the front door's /api/health
    record ────────────▶ AIOT_HOME/run/state.json (broker, nodes, agent pids with create times, URL)

There is no second supervisor: after ``up`` every platform process runs under an
agent, and the heartbeat monitor restarts what dies. ``down()`` stops the node
manager and the monitor first (so nothing is restarted while stopping), then
the agents (each stops its services), then sweeps any process or container left
with this AIOT_HOME, then the broker. A pid is signalled only if its create
time matches the record, so a reused pid is never hit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil
import requests

from bootstrapper.broker import TANSU_NOTE, TansuBroker, wait_for_broker
from bootstrapper.kafka import KafkaBroker, fetch_jars, jars_ready, java_ok
from platform_core.bus_access import BusAccess
from platform_core.db import Database
from platform_core.nodes import (
    PROCESS_ENVIRONMENT,
    ServiceSpec,
    ServiceStateReply,
    StartService,
    StopService,
    agent_topic,
    node_number,
)
from platform_core.roster import load_roster
from platform_sdk.bus import Bus, ConsumerLoop, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.errors import Conflict, PlatformError, Timeout, Unavailable
from platform_sdk.messages import Heartbeat
from platform_sdk.net import free_port
from platform_sdk.principals import (
    BusSecrets,
    agent_principal,
    kafka_credential,
    read_bus_secrets,
    secrets_path,
    write_bus_secrets,
)
from platform_sdk.runstate import (
    PRIVATE_UMASK,
    NodeRecord,
    ProcessRecord,
    RunState,
    clear_run_state,
    private_dir,
    read_run_state,
    write_run_state,
)
from platform_sdk.settings import Settings, temporary_settings
from platform_sdk.topics import Topics

BROKER = "broker"
UNAUTHENTICATED_NOTE = (
    "the bus is unauthenticated (Tansu, or a Kafka without SASL): the platform is single-user, "
    "anyone who reaches the broker can send anything (docs/security.md)"
)
log = logging.getLogger(__name__)
STOP_GRACE_S = 15.0
READY_TIMEOUT_S = 90.0
PORTS_PER_NODE = 1000  # from node_manager.first_service_port, node by node
Progress = Callable[[str], None]
UNSANDBOXED_NOTE = (
    "WARNING: not run as root, so models and apps run UNSANDBOXED as your user and can read "
    "whatever you can (this home's registry and sessions included): fine for one team that trusts "
    "what it uploads. Run `aiot up` as root for a sandbox per owner, or set "
    "AIOT_SANDBOX__ALLOW_UNSANDBOXED=false to refuse models and apps instead."
)
# Environment an agent gives each service; a process started from one must not inherit it.
_PER_PROCESS = ("AIOT_AGENT_PID", "AIOT_NODE_ID", "AIOT_PORT_", "AIOT_AGENT__")

# What the main node's agent runs itself and restarts when it exits: they cannot watch themselves.
# They run as host processes whatever the node's runtime: the node manager starts agents and
# retires lost nodes' processes and containers, which a container could not.
CORE_SERVICES = (
    ServiceSpec(
        service_id="node-manager",
        module="bootstrapper.local_node_manager",  # the node manager, with this provider's hooks
        restart="agent",
        main_node_only=True,
        runtime="process",
    ),
    ServiceSpec(
        service_id="heartbeat", module="heartbeat", restart="agent", main_node_only=True, runtime="process"
    ),
)


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


def alive_process(record: ProcessRecord) -> psutil.Process | None:
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


def process_record(name: str, pid: int, command: list[str], log_file: Path | None) -> ProcessRecord:
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
        # The main node's id: node-1 on one machine; a host's own name when `aiot bootstrap` installs it.
        self.main_node = settings.agent.node_id

    # what runs ---------------------------------------------------------------------------
    def status(self) -> list[ProcessStatus]:
        state = read_run_state(self.settings)
        if state is None:
            return []
        return [
            ProcessStatus(record.name, record.pid, alive_process(record) is not None, record.log_file)
            for record in state.processes
        ]

    def is_running(self) -> bool:
        return any(process.running for process in self.status())

    # up ---------------------------------------------------------------------------------------
    def up(
        self,
        progress: Progress = lambda _step: None,
        *,
        nodes: int = 2,
        runtime: str = "process",
        timeout: float = READY_TIMEOUT_S,
        broker: str | None = None,
        remote_nodes: Sequence[str] = (),
    ) -> UpResult:
        """Start everything and return once it all answers; on failure stop what was started.

        ``remote_nodes``: the nodes of other hosts that will join this platform (``join``), whose
        agents' bus principals are made here with the others."""
        if nodes < 1:
            raise Conflict("a platform needs at least one node")
        if self.is_running():
            raise Conflict(f"a platform already runs from {self.home}; stop it first with `aiot down`")
        # The home and everything in it are the owner's alone (the processes below get PRIVATE_UMASK).
        private_dir(self.home)
        private_dir(self.log_dir)
        if self._unsandboxed():
            progress(UNSANDBOXED_NOTE)
        state = RunState(
            runtime=runtime,
            agent_allow_commands=self.settings.agent.allow_commands,
            agent_allowed_modules=self.settings.agent.allowed_modules,
        )
        try:
            state.broker, secrets = self._start_broker(state, progress, broker)
            if secrets is not None:
                progress("creating the bus's principals and ACLs")
                self._add_principals(secrets, [*self._node_ids(nodes), *remote_nodes])
            elif state.broker_embedded and self.settings.kafka.secrets_file is None:
                # Tansu: the home's earlier Kafka passwords are not to be offered to it (on the same port).
                secrets_path(self.settings).unlink(missing_ok=True)
            write_run_state(self.settings, state)
            with temporary_settings({"kafka.bootstrap_servers": state.broker}) as settings:
                state.bus_authenticated = Bus(settings, source="aiot-up").credential is not None
                if not state.bus_authenticated:
                    progress(UNAUTHENTICATED_NOTE)
                    log.warning(UNAUTHENTICATED_NOTE)
                topics = Topics.from_settings(settings).platform_topics()
                Bus(settings, source="aiot-up").ensure_topics(topics)
                generated = self._prepare_database(settings, progress)
                web_port = settings.web.port or free_port(settings.web.host)
                state.web_url = f"http://{settings.web.host}:{web_port}"
                write_run_state(self.settings, state)
                bus = Bus(settings, source="aiot-up")
                with _HeartbeatWatch(bus) as beats:
                    for index, node_id in enumerate(self._node_ids(nodes), start=1):
                        progress(f"starting {node_id}")
                        self._start_agent(state, index, node_id)
                    write_run_state(self.settings, state)
                    beats.wait_for([f"agent-{node.node_id}" for node in state.nodes], state, self, timeout)
                    progress(f"starting the node manager and the heartbeat monitor on {self.main_node}")
                    self._start_core(bus)
                    progress("the node manager places the platform's services")
                    expected = [spec.service_id for spec in CORE_SERVICES] + self._roster_ids(settings)
                    beats.wait_for(expected, state, self, timeout)
                self._wait_front_door(state, timeout)
        except BaseException:
            progress("start-up failed; stopping what was started")
            self._stop_everything(state, progress)
            clear_run_state(self.settings)
            raise
        return UpResult(state, generated)

    def _node_ids(self, nodes: int) -> list[str]:
        return [self.main_node, *(f"node-{index}" for index in range(2, nodes + 1))]

    def join(self, broker: str, web_url: str, progress: Progress = lambda _step: None) -> RunState:
        """Start this host's one agent (``agent.node_id``, not the main node) for the platform whose
        broker and front door are given, and return once its HTTP answers; its bus credential is
        in this home's secrets file (``aiot bootstrap`` wrote it)."""
        if self.is_running():
            raise Conflict(f"a node already runs from {self.home}; stop it first with `aiot down`")
        private_dir(self.home)
        private_dir(self.log_dir)
        state = RunState(
            broker=broker,
            web_url=web_url,
            main=False,
            agent_allow_commands=self.settings.agent.allow_commands,
            agent_allowed_modules=self.settings.agent.allowed_modules,
        )
        try:
            progress(f"checking Kafka at {broker}")
            timeout = self.settings.bootstrap.ready_timeout_s
            wait_for_broker(broker, timeout=timeout, credential=kafka_credential(self.settings, broker))
            progress(f"starting {self.main_node}")
            node = self._start_agent(state, 1, self.main_node, main=False)
            write_run_state(self.settings, state)
            self._wait_http(state, f"{node.http_url}/load", timeout)
        except BaseException:
            progress("start-up failed; stopping what was started")
            self._stop_everything(state, progress)
            clear_run_state(self.settings)
            raise
        return state

    def _add_principals(self, secrets: BusSecrets, nodes: Sequence[str]) -> None:
        """The platform services' and the agents' principals and ACLs, their passwords in the
        home's secrets file (0600) where each process finds its own."""
        with temporary_settings({"kafka.bootstrap_servers": secrets.bootstrap}) as settings:
            write_bus_secrets(secrets_path(settings), secrets)  # the super user's, for what follows
            access = BusAccess(Bus(settings, source="aiot-up"))
            services = [spec.service_id for spec in CORE_SERVICES] + self._roster_ids(settings)
            access.add_platform(secrets, services, nodes)
            write_bus_secrets(secrets_path(settings), secrets)
            access.wait_usable(secrets, agent_principal(settings.kafka.topic_prefix, nodes[-1]))

    def _start_broker(
        self, state: RunState, progress: Progress, requested: str | None
    ) -> tuple[str, BusSecrets | None]:
        """Start (or check) the broker: its address, and the secrets to add the platform's
        principals to: the new broker's super user, or for a configured cluster the secrets file
        given for it (kafka.secrets_file naming a principal that may create others). None: Tansu,
        or a cluster reached without a secrets file (its own SASL settings, or none)."""
        configured = self.settings.kafka.bootstrap_servers
        if configured:
            progress(f"checking Kafka at {configured}")
            wait_for_broker(configured, timeout=10, credential=kafka_credential(self.settings, configured))
            given = read_bus_secrets(self.settings)
            if self.settings.kafka.sasl_username or given is None or given.bootstrap != configured:
                return configured, None
            return configured, given
        kind = self._broker_kind(requested or self.settings.kafka.broker, progress)
        state.broker_embedded = True
        state.broker_kind = kind
        if kind == "kafka":
            kafka_settings = self.settings.kafka
            if not jars_ready(kafka_settings):
                fetch_jars(kafka_settings, progress)
            progress(f"starting Apache Kafka {kafka_settings.kafka_version} (KRaft) on {kafka_settings.host}")
            kafka = KafkaBroker(self.home / "kafka", kafka_settings, log_file=self.log_dir / f"{BROKER}.out")
            kafka.start(detach=True)
            pid, command, log_file = kafka.pid, kafka.command(), kafka.log_file
            address = kafka.bootstrap_servers
            secrets: BusSecrets | None = kafka.bus_secrets()
        else:
            progress("starting the bundled Tansu broker")
            tansu = TansuBroker(log_file=self.log_dir / f"{BROKER}.out")
            tansu.start(detach=True)
            pid, command, log_file = tansu.pid, tansu.command(), tansu.log_file
            address = tansu.bootstrap_servers
            secrets = None
        assert pid is not None
        state.processes.append(process_record(BROKER, pid, command, log_file))
        return address, secrets

    def _broker_kind(self, requested: str, progress: Progress) -> Literal["kafka", "tansu"]:
        """``kafka``/``tansu`` as asked; ``auto``: Apache Kafka where Java 17+ runs, else Tansu."""
        if requested == "tansu":
            progress(TANSU_NOTE)
            return "tansu"
        if requested == "kafka" or java_ok(self.settings.kafka):
            return "kafka"
        progress(f"no Java 17+ found: {TANSU_NOTE}")
        return "tansu"

    def _prepare_database(self, settings: Settings, progress: Progress) -> str | None:
        progress("migrating the registry database")
        database = Database.from_settings(settings)
        try:
            database.migrate()
            auth = settings.auth
            password = auth.admin_password.get_secret_value() if auth.admin_password else None
            # The web package (Flask, argon2) only in the process that makes the first user,
            # not in the node manager, which imports this module for scale-out.
            from web.identity import ensure_first_configurer

            return ensure_first_configurer(database, auth.admin_username, password)
        finally:
            database.stop()

    def _roster_ids(self, settings: Settings) -> list[str]:
        return [spec.service_id for spec in load_roster(settings)]

    def _start_agent(
        self, state: RunState, index: int, node_id: str, *, main: bool | None = None, added: bool = False
    ) -> NodeRecord:
        """One more node: a service agent process with its own HTTP port and port range (the
        lowest range no node of ``state`` uses)."""
        http_port = free_port(self.settings.agent.host)
        taken = {node.port_range for node in state.nodes}
        first = self.settings.node_manager.first_service_port
        low = next(
            low
            for slot in itertools.count()
            if f"{(low := first + slot * PORTS_PER_NODE)}-{low + PORTS_PER_NODE - 1}" not in taken
        )
        node = NodeRecord(
            node_id=node_id,
            http_url=f"http://{self.settings.agent.host}:{http_port}",
            port_range=f"{low}-{low + PORTS_PER_NODE - 1}",
            added=added,
        )
        assert state.broker is not None
        assert state.web_url is not None
        env = {
            # Scale-out runs this inside the node manager: none of its own identity may leak into the agent.
            **{key: value for key, value in os.environ.items() if not key.startswith(_PER_PROCESS)},
            "AIOT_HOME": str(self.home),
            "AIOT_SERVICE_ID": f"agent-{node_id}",
            "AIOT_KAFKA__BOOTSTRAP_SERVERS": state.broker,
            "AIOT_WEB__PORT": state.web_url.rsplit(":", 1)[1],
            "AIOT_AGENT__NODE_ID": node_id,
            "AIOT_AGENT__MAIN": "true" if (index == 1 if main is None else main) else "false",
            "AIOT_AGENT__HOST": self.settings.agent.host,
            "AIOT_AGENT__HTTP_PORT": str(http_port),
            "AIOT_AGENT__PORT_RANGE": node.port_range,
            "AIOT_AGENT__RUNTIME": state.runtime,
            # Several agents share this machine: each reports the load of its own services.
            "AIOT_AGENT__LOAD_SCOPE": "services",
            # What the agent may run (the rest of this process's AIOT_AGENT__* is not the agent's).
            # From the run state: the node manager adding a node has no agent settings of its own.
            "AIOT_AGENT__ALLOW_COMMANDS": "true" if state.agent_allow_commands else "false",
            "AIOT_AGENT__ALLOWED_MODULES": json.dumps(state.agent_allowed_modules),
            "PYTHONUNBUFFERED": "1",
            **PROCESS_ENVIRONMENT,
        }
        if self._unsandboxed():
            env["AIOT_SANDBOX__ALLOW_UNSANDBOXED"] = "true"
        command = [sys.executable, "-m", "service_agent"]
        log_file = self.log_dir / f"agent-{node_id}.out"
        with open(log_file, "ab") as output:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                umask=PRIVATE_UMASK,  # what the agent and the services it runs create is private
            )
        state.nodes.append(node)
        state.nodes_started = max(state.nodes_started, index)
        state.processes.append(process_record(f"agent-{node_id}", process.pid, command, log_file))
        return node

    def _unsandboxed(self) -> bool:
        """Whether this platform's models and apps run unsandboxed: `aiot up` by a user other than root
        (who cannot run code as other uids), unless sandbox.allow_unsandboxed says otherwise."""
        sandbox = self.settings.sandbox
        return os.geteuid() != 0 and sandbox.enabled and "allow_unsandboxed" not in sandbox.model_fields_set

    def _start_core(self, bus: Bus) -> None:
        with Requester(bus) as requester:
            for spec in CORE_SERVICES:
                requester.request(
                    agent_topic(bus.topics, self.main_node),
                    StartService(spec=spec),
                    ServiceStateReply,
                    timeout=60,
                )

    def _wait_front_door(self, state: RunState, timeout: float) -> None:
        self._wait_http(state, f"{state.web_url}/api/health", timeout)

    def _wait_http(self, state: RunState, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.raise_if_exited(state)
            try:
                if requests.get(url, timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise Timeout(f"{url} did not answer within {timeout:.0f}s")
            time.sleep(0.1)

    def raise_if_exited(self, state: RunState) -> None:
        for record in state.processes:
            if alive_process(record) is None:
                raise Unavailable(
                    f"{record.name} exited during start-up; last output:\n{_tail(record.log_file)}"
                )

    # scale-out --------------------------------------------------------------------------------
    def add_node(self) -> str | None:
        """Start one more agent for this running platform (the node manager's scale-out); its node id."""
        state = read_run_state(self.settings)
        if state is None or state.broker is None:
            return None
        index = _next_index(state)
        node_id = f"node-{index}"
        secrets = read_bus_secrets(self.settings)
        if secrets is not None and secrets.bootstrap == state.broker:
            # The node manager (this process) may create principals: the new agent's, in the file.
            access = BusAccess(Bus(self.settings, source=self.settings.service_id or "aiot"))
            access.add_agent(secrets, node_id)
            write_bus_secrets(secrets_path(self.settings), secrets)
            access.wait_usable(secrets, agent_principal(self.settings.kafka.topic_prefix, node_id))
        node = self._start_agent(state, index, node_id, added=True)
        write_run_state(self.settings, state)
        return node.node_id

    def added_nodes(self) -> list[str]:
        """The nodes scale-out added (the ones scale-in may remove)."""
        state = read_run_state(self.settings)
        return [node.node_id for node in state.nodes if node.added] if state is not None else []

    def remove_node(self, node_id: str) -> None:
        """Stop a drained node's agent (and whatever of it is left), remove its bus principal, and
        forget it in the run state (scale-in). Only a node scale-out added can be removed."""
        state = read_run_state(self.settings)
        node = next((node for node in state.nodes if node.node_id == node_id), None) if state else None
        if state is None or node is None or not node.added:
            raise Conflict(f"node {node_id!r} was not added by scale-out here: it cannot be removed")
        agents = [record for record in state.processes if record.name == f"agent-{node_id}"]
        terminate_processes(agents, lambda _step: None)
        self.retire_node(node_id)
        secrets = read_bus_secrets(self.settings)
        if secrets is not None and secrets.bootstrap == state.broker:
            BusAccess(Bus(self.settings, source=self.settings.service_id or "aiot")).remove_agent(
                secrets, node_id
            )
            write_bus_secrets(secrets_path(self.settings), secrets)
        state.nodes.remove(node)
        state.processes = [record for record in state.processes if record not in agents]
        write_run_state(self.settings, state)

    def retire_node(self, node_id: str) -> None:
        """Make a lost node's loss complete: what still runs of it here is stopped.

        A real lost machine takes its services along; on one machine the processes and
        containers of a node whose agent died would run on, holding ports and beating under
        the same service ids, so the provider ends them before the node manager re-places them.
        """
        self._sweep(lambda _step: None, node_id=node_id, signum=signal.SIGKILL)
        self._remove_containers(lambda _step: None, node_id=node_id)

    # down -------------------------------------------------------------------------------------
    def down(self, progress: Progress = lambda _step: None) -> list[str]:
        """Stop every process (and container) of this home; returns the names stopped."""
        state = read_run_state(self.settings)
        if state is None:
            return [] if not self._sweep(progress) else ["leftovers"]
        stopped = self._stop_everything(state, progress)
        clear_run_state(self.settings)
        return stopped

    def _stop_everything(self, state: RunState, progress: Progress) -> list[str]:
        brokers = [record for record in state.processes if record.name == BROKER]
        agents = [record for record in state.processes if record.name != BROKER]
        if state.main and state.broker and any(alive_process(record) for record in agents):
            progress("stopping the node manager and the heartbeat monitor")
            self._stop_core(state.broker)
        stopped = terminate_processes(agents, progress)
        self._sweep(progress)
        self._remove_containers(progress)
        stopped += terminate_processes(brokers, progress)
        from service_agent.sandbox import remove_root

        remove_root(self.settings)  # the sandboxes' bundle copies, scratch folders and venvs
        return stopped

    def _stop_core(self, broker: str) -> None:
        with temporary_settings({"kafka.bootstrap_servers": broker}) as settings:
            bus = Bus(settings, source="aiot-down")
            # The broker may be gone: the agents' own stop still stops everything then.
            with contextlib.suppress(PlatformError), Requester(bus) as requester:
                for spec in reversed(CORE_SERVICES):
                    with contextlib.suppress(PlatformError):
                        requester.request(
                            agent_topic(bus.topics, self.main_node),
                            StopService(service_id=spec.service_id),
                            ServiceStateReply,
                            timeout=20,
                        )

    def _sweep(
        self, progress: Progress, *, node_id: str | None = None, signum: signal.Signals = signal.SIGTERM
    ) -> bool:
        """Stop any managed process of this home still running (a service whose agent was killed);
        with ``node_id``, only that node's: its agent and the services it started.

        Managed processes carry both AIOT_HOME and AIOT_SERVICE_ID; a user's shell that merely
        exports AIOT_HOME is left alone. An agent carries its node in AIOT_AGENT__NODE_ID, the
        services it starts in AIOT_NODE_ID.
        """
        leftovers = []
        ourselves = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
        for process in psutil.process_iter():
            try:
                env = process.environ()
                on_node = node_id is None or node_id in (
                    env.get("AIOT_NODE_ID"),
                    env.get("AIOT_AGENT__NODE_ID"),
                )
                if (
                    process.pid not in ourselves
                    and env.get("AIOT_HOME") == str(self.home)
                    and env.get("AIOT_SERVICE_ID")
                    and on_node
                ):
                    leftovers.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for process in leftovers:
            progress(f"stopping leftover process {process.pid}")
            _signal_group(process, signum)
        _gone, alive = psutil.wait_procs(leftovers, timeout=5)
        for process in alive:
            _signal_group(process, signal.SIGKILL)
        return bool(leftovers)

    def _remove_containers(self, progress: Progress, *, node_id: str | None = None) -> None:
        from service_agent.docker_runtime import remove_containers

        with contextlib.suppress(PlatformError):
            removed = remove_containers(str(self.home), node_id)
            if removed:
                progress(f"removed {removed} leftover containers")


class _HeartbeatWatch:
    """Collects the service ids that send heartbeats once it started (before anything starts)."""

    def __init__(self, bus: Bus) -> None:
        self.seen: set[str] = set()
        # From the end: on a broker that outlived an earlier start (a configured Kafka, the compose
        # deployment's) the beats of that start's agents are still there, and counting them sent
        # commands to agents not yet listening.
        self._loop = ConsumerLoop(
            bus, [bus.topics.heartbeats], group=None, name="aiot-up-heartbeats", offset_reset="latest"
        )
        self._loop.add_handler(Heartbeat, self._on_heartbeat)

    def _on_heartbeat(self, beat: Heartbeat, _envelope: Envelope) -> None:
        self.seen.add(beat.service_id)

    def __enter__(self) -> _HeartbeatWatch:
        self._loop.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.stop()

    def wait_for(
        self, service_ids: Iterable[str], state: RunState, platform: LocalPlatform, timeout: float
    ) -> None:
        expected = set(service_ids)
        deadline = time.monotonic() + timeout
        while not expected <= self.seen:
            platform.raise_if_exited(state)
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(expected - self.seen))
                raise Timeout(f"no heartbeat from {missing} within {timeout:.0f}s; see {platform.log_dir}")
            time.sleep(0.1)


def _next_index(state: RunState) -> int:
    """The number of the next node: above every node's started for this platform (a removed
    node's id is never reused)."""
    numbers = [number for node in state.nodes if (number := node_number(node.node_id)) is not None]
    return max([*numbers, state.nodes_started]) + 1


def terminate_processes(records: list[ProcessRecord], progress: Progress) -> list[str]:
    running = [(record, process) for record in records if (process := alive_process(record)) is not None]
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
    return [record.name for record, _ in running]


def _signal_group(process: psutil.Process, signum: signal.Signals) -> None:
    """Signal the process's whole session group (it started its own), so helpers it spawned go too."""
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
            return
    except (ProcessLookupError, PermissionError):
        pass
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
