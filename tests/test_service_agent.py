"""A service agent in this process, driven over the real bus like the node manager drives it."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from platform_core.nodes import (
    ListServices,
    NodeAnnouncement,
    RestartService,
    ServiceExited,
    ServiceSpec,
    ServiceStateReply,
    ServiceStates,
    StartService,
    StopService,
    agent_topic,
    node_events_topic,
)
from platform_sdk.bus import Bus, ConsumerLoop, Requester
from platform_sdk.errors import NotFound
from platform_sdk.messages import LogRecord
from platform_sdk.settings import Settings, temporary_settings
from service_agent.agent import ServiceAgent
from service_agent.runtime import VenvCache
from service_agent.sandbox import Sandbox
from service_agent.supervisor import Supervisor
from tests.test_bus import wait_for

pytestmark = pytest.mark.service("kafka")

SLEEPER = [
    "{python}",
    "-c",
    "import os, time; print('ready on', os.environ['AIOT_PORT_HTTP'], flush=True); time.sleep(120)",
]


class Observed:
    def __init__(self) -> None:
        self.exits: list[ServiceExited] = []
        self.announcements: list[NodeAnnouncement] = []
        self.logs: list[LogRecord] = []


@pytest.fixture
def agent(kafka_settings: Settings) -> Iterator[tuple[ServiceAgent, Requester, Observed, Bus]]:
    with temporary_settings(
        {
            "agent.node_id": "t-node",
            "agent.allow_commands": True,  # the tests run plain command lines
            "agent.port_range": "31000-31099",
            "agent.announce_interval_s": 0.3,
            "agent.stop_timeout_s": 1.0,
        }
    ) as settings:
        service = ServiceAgent(settings)
        service.start()
        bus = Bus(settings, source="test-node-manager")
        requester = Requester(bus)
        requester.start()
        observed = Observed()
        events = ConsumerLoop(bus, [node_events_topic(bus.topics), bus.topics.logs], group=None)
        events.add_handler(ServiceExited, lambda message, _e: observed.exits.append(message))
        events.add_handler(NodeAnnouncement, lambda message, _e: observed.announcements.append(message))
        events.add_handler(LogRecord, lambda message, _e: observed.logs.append(message))
        events.start()
        try:
            yield service, requester, observed, bus
        finally:
            events.stop()
            requester.stop()
            service.stop()


def start(requester: Requester, bus: Bus, spec: ServiceSpec) -> ServiceStateReply:
    return requester.request(
        agent_topic(bus.topics, "t-node"), StartService(spec=spec), ServiceStateReply, timeout=30
    )


def test_start_is_idempotent_and_the_service_gets_its_identity_and_port(
    agent: tuple[ServiceAgent, Requester, Observed, Bus],
) -> None:
    service, requester, observed, bus = agent
    spec = ServiceSpec(service_id="sleeper", command=SLEEPER, ports=["http"])
    first = start(requester, bus, spec).state
    again = start(requester, bus, spec).state
    assert first.state == "running"
    assert first.pid is not None
    assert again.pid == first.pid  # a retried start starts nothing new
    assert 31000 <= first.ports["http"] <= 31099
    wait_for(
        lambda: any(r.message == f"ready on {first.ports['http']}" for r in observed.logs),
        what="output shipped",
    )
    shipped = next(r for r in observed.logs if r.message.startswith("ready on"))
    assert (shipped.service_id, shipped.logger) == ("sleeper", "stdout")
    listed = requester.request(agent_topic(bus.topics, "t-node"), ListServices(), ServiceStates, timeout=10)
    assert [s.service_id for s in listed.services] == ["sleeper"]
    wait_for(lambda: any(a.services for a in observed.announcements), what="announcement with the service")
    announced = next(a for a in observed.announcements if a.services)
    assert announced.load is not None, "the node manager places by the load each announcement carries"
    assert (announced.load.node_id, announced.load.services) == ("t-node", 1)
    assert announced.load.memory_total_mb > 0
    load = requests.get(f"{service.server.url}/load", timeout=5).json()
    assert load["node_id"] == "t-node"
    assert load["services"] == 1
    services = requests.get(f"{service.server.url}/services", timeout=5).json()["services"]
    assert services[0]["pid"] == first.pid


def test_stop_and_restart(agent: tuple[ServiceAgent, Requester, Observed, Bus]) -> None:
    _service, requester, observed, bus = agent
    first = start(requester, bus, ServiceSpec(service_id="sleeper", command=SLEEPER, ports=["http"])).state
    restarted = requester.request(
        agent_topic(bus.topics, "t-node"), RestartService(service_id="sleeper"), ServiceStateReply, timeout=30
    ).state
    assert restarted.pid != first.pid
    assert restarted.restarts == 1
    stopped = requester.request(
        agent_topic(bus.topics, "t-node"), StopService(service_id="sleeper"), ServiceStateReply, timeout=30
    ).state
    assert stopped.state == "stopped"
    assert observed.exits == []  # stopping on purpose is not an exit to report
    with pytest.raises(NotFound, match="does not run on node t-node"):
        requester.request(
            agent_topic(bus.topics, "t-node"), StopService(service_id="sleeper"), ServiceStateReply
        )


def test_an_exit_is_reported_at_once_with_the_last_output(
    agent: tuple[ServiceAgent, Requester, Observed, Bus],
) -> None:
    _service, requester, observed, bus = agent
    crash = ["{python}", "-c", "import sys; print('config missing', flush=True); sys.exit(3)"]
    start(requester, bus, ServiceSpec(service_id="crasher", command=crash))
    wait_for(lambda: bool(observed.exits), timeout=10, what="exit report")
    exited = observed.exits[0]
    assert (exited.service_id, exited.exit_code, exited.will_restart_here) == ("crasher", 3, False)
    assert "config missing" in exited.last_output


def test_agent_restarts_its_own_services_with_back_off(
    agent: tuple[ServiceAgent, Requester, Observed, Bus],
) -> None:
    service, requester, observed, bus = agent
    crash = ["{python}", "-c", "import sys; sys.exit(1)"]
    start(requester, bus, ServiceSpec(service_id="core", command=crash, restart="agent"))
    wait_for(lambda: len(observed.exits) >= 3, timeout=20, what="three local restarts")
    assert all(exited.will_restart_here for exited in observed.exits)
    state = service.supervisor.states()[0]
    assert state.restarts >= 2


def test_a_hung_process_is_killed_when_it_ignores_stop(
    agent: tuple[ServiceAgent, Requester, Observed, Bus],
) -> None:
    _service, requester, observed, bus = agent
    stubborn = [
        "{python}",
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('deaf', flush=True); time.sleep(120)",
    ]
    start(requester, bus, ServiceSpec(service_id="stubborn", command=stubborn))
    wait_for(lambda: any(r.message == "deaf" for r in observed.logs), what="SIGTERM ignored from now on")
    stopped = requester.request(
        agent_topic(bus.topics, "t-node"), StopService(service_id="stubborn"), ServiceStateReply, timeout=30
    ).state
    assert stopped.exit_code == -9  # killed after the 1 s stop timeout


@pytest.mark.slow
def test_venv_cache_installs_once_per_requirements_set(tmp_path: Path) -> None:
    cache = VenvCache(tmp_path / "venvs")
    assert cache.python([]) == sys.executable
    first = cache.python(["six==1.16.0"])
    assert cache.python([" six==1.16.0 ", ""]) == first  # same set, same venv, nothing installed
    assert VenvCache.key(["a", "b"]) == VenvCache.key(["b", "a"])
    # A service with requirements still reaches the platform: its SDK and the SDK's dependencies.
    probe = "import six, platform_sdk, confluent_kafka; print(six.__version__)"
    found = subprocess.run([first, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert found.stdout.strip() == "1.16.0"


class _Held:
    """A started service as a runtime returns it: alive until stopped."""

    pid = None
    container_id = None

    def exit_code(self) -> int | None:
        return None

    def stop(self, timeout: float) -> None:
        pass


class HeldRuntime:
    """A runtime whose start takes until released, as a first docker start building an image does."""

    name = "process"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def start(
        self,
        spec: ServiceSpec,
        env: dict[str, str],
        on_output: Any,
        workdir: Path | None = None,
        sandbox: Sandbox | None = None,
    ) -> _Held:
        self.entered.set()
        self.release.wait(30)
        return _Held()


def test_a_slow_start_does_not_hold_up_what_the_node_says_it_runs(kafka_settings: Settings) -> None:
    runtime = HeldRuntime()
    bus = Bus(kafka_settings, source="slow-start-test")
    allowing = kafka_settings.model_copy(
        update={"agent": kafka_settings.agent.model_copy(update={"allow_commands": True})}
    )
    supervisor = Supervisor(allowing, bus, runtime, lambda: "http://127.0.0.1:1")
    spec = ServiceSpec(service_id="slow", command=SLEEPER)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(supervisor.start_service, spec)
        assert runtime.entered.wait(10)
        # While the start builds, the node's states (its announcements) are answered at once.
        states = pool.submit(supervisor.states).result(timeout=2)
        assert [(state.service_id, state.state) for state in states] == [("slow", "starting")]
        assert supervisor.start_service(spec).state == "starting"  # a second start starts nothing
        runtime.release.set()
        assert first.result(timeout=10).state == "running"
    bus.close()
