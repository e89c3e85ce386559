"""The docker runtime against a real Docker engine: images, containers, output, stop, cleanup.

Every container a test starts carries the test's own ``aiot.home`` label (a fresh
AIOT_HOME per test) and is removed after it; an image a test builds for its own
requirement set is removed after it too. The platform image without requirements
is shared and kept, as an agent would keep it: it is the cache every run reuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import psutil
import pytest

from platform_core.nodes import ServiceSpec
from platform_sdk.errors import BadRequest, Unavailable
from platform_sdk.net import free_port
from platform_sdk.settings import Settings, temporary_settings
from service_agent.docker_runtime import (
    LABEL_HOME,
    LABEL_PLATFORM,
    LABEL_REQUIREMENTS,
    PLATFORM_PACKAGES,
    DockerRuntime,
    remove_containers,
)
from service_agent.runtime import RunningService

# A cold machine builds the platform's image (pip-installs its dependencies) in the first test.
pytestmark = pytest.mark.timeout(300)
DOCKER = pytest.mark.service("docker")

SLEEPER = "import time; print('ready', flush=True); time.sleep(600)"


class Output:
    """Lines a service printed, as the agent's ``on_output`` receives them."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no matching line within {timeout} s; got {self.lines[-20:]}"
                self._changed.wait(remaining)

    def service_lines(self) -> list[str]:
        return [line for line in self.lines if not line.startswith("[image build]")]


def agent_env(settings: Settings, service_id: str, **extra: str) -> dict[str, str]:
    """The environment an agent hands a runtime: its own, plus the service's identity and ports."""
    env = dict(os.environ)
    env.update(
        {
            "AIOT_HOME": str(settings.home_dir),
            "AIOT_SERVICE_ID": service_id,
            "AIOT_NODE_ID": settings.agent.node_id,
            "AIOT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "AIOT_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def wait_exit(handle: RunningService, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (code := handle.exit_code()) is None:
        assert time.monotonic() < deadline, f"still running after {timeout} s"
        time.sleep(0.1)
    return code


def containers_of(engine: Any, home: Path) -> list[Any]:
    return list(
        engine.containers.list(all=True, filters={"label": [f"{LABEL_HOME}={home}", f"{LABEL_PLATFORM}=1"]})
    )


def gone(engine: Any, container_id: str | None) -> bool:
    assert container_id is not None
    try:
        engine.containers.get(container_id)
    except docker.errors.NotFound:
        return True
    return False


@pytest.fixture
def runtime(settings: Settings, docker_engine: Any) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(settings)
    yield runtime
    remove_containers(str(settings.home_dir))
    runtime.close()
    assert not containers_of(docker_engine, settings.home_dir)


@pytest.fixture
def started(
    runtime: DockerRuntime, settings: Settings
) -> Iterator[Callable[..., tuple[RunningService, Output]]]:
    """Start a spec through the runtime; whatever is still running is stopped after the test."""
    handles: list[RunningService] = []

    def start(spec: ServiceSpec, **extra_env: str) -> tuple[RunningService, Output]:
        output = Output()
        handle = runtime.start(spec, agent_env(settings, spec.service_id, **extra_env), output)
        handles.append(handle)
        return handle, output

    yield start
    for handle in handles:
        handle.stop(5)


@DOCKER
def test_a_service_runs_in_a_labelled_host_network_container_with_its_limits(
    started: Callable[..., tuple[RunningService, Output]], settings: Settings, docker_engine: Any
) -> None:
    port = free_port()
    server = (
        "import os, socket, time\n"
        "home = os.environ['AIOT_HOME']\n"
        "open(os.path.join(home, 'written-in-container'), 'w').write(os.environ['AIOT_SERVICE_ID'])\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['AIOT_PORT_HTTP']))); s.listen()\n"
        "print('listening on', os.environ['AIOT_PORT_HTTP'], flush=True)\n"
        "c, _ = s.accept(); c.sendall(b'hello from the container'); c.close()\n"
        "time.sleep(600)\n"
    )
    spec = ServiceSpec(service_id="greeter", command=["{python}", "-c", server], cpu_limit=0.5, memory_mb=128)
    handle, output = started(spec, AIOT_PORT_HTTP=str(port))

    output.wait_for(lambda line: line == f"listening on {port}")
    assert handle.exit_code() is None
    # Host networking: the service's 127.0.0.1 port is the host's.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        assert client.recv(100) == b"hello from the container"
    # AIOT_HOME is the host's, read-write, at the same path.
    assert (settings.home_dir / "written-in-container").read_text() == "greeter"

    container = docker_engine.containers.get(handle.container_id)
    labels = container.labels
    assert labels["aiot.service_id"] == "greeter"
    assert labels["aiot.home"] == str(settings.home_dir)
    assert labels["aiot.node_id"] == settings.agent.node_id
    assert labels["aiot.platform"] == "1"
    assert container.name.startswith(f"aiot-{settings.agent.node_id}-greeter-")
    host_config = container.attrs["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Memory"] == 128 * 1024 * 1024
    assert handle.pid is not None
    assert handle.pid == container.attrs["State"]["Pid"]
    assert psutil.pid_exists(handle.pid)

    started_at = time.monotonic()
    handle.stop(5)
    assert time.monotonic() - started_at < 5, "a service that acts on SIGTERM stops at once"
    assert handle.exit_code() is not None
    assert gone(docker_engine, handle.container_id)
    assert not containers_of(docker_engine, settings.home_dir)


@DOCKER
def test_a_service_that_exits_reports_its_code_and_leaves_no_container(
    started: Callable[..., tuple[RunningService, Output]], docker_engine: Any
) -> None:
    spec = ServiceSpec(
        service_id="quitter",
        command=["{python}", "-c", "import sys; print('partial', end=''); print(' line'); sys.exit(3)"],
    )
    handle, output = started(spec)

    assert wait_exit(handle) == 3
    # Every line is delivered before the exit is reported, the unterminated one included.
    assert output.service_lines() == ["partial line"]
    assert handle.pid is None
    assert gone(docker_engine, handle.container_id)


@DOCKER
@pytest.mark.parametrize("freeze", ["docker pause", "kill -STOP"])
def test_a_frozen_service_still_stops_within_the_timeout(
    started: Callable[..., tuple[RunningService, Output]], docker_engine: Any, freeze: str
) -> None:
    handle, output = started(ServiceSpec(service_id="frozen", command=["{python}", "-c", SLEEPER]))
    output.wait_for(lambda line: line == "ready")
    container = docker_engine.containers.get(handle.container_id)
    host_pids = [int(row[1]) for row in container.top()["Processes"]]
    if freeze == "docker pause":
        container.pause()
    else:
        for pid in host_pids:
            os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not all(psutil.Process(pid).status() == psutil.STATUS_STOPPED for pid in host_pids):
            assert time.monotonic() < deadline, [psutil.Process(pid).status() for pid in host_pids]
            time.sleep(0.02)

    started_at = time.monotonic()
    handle.stop(3)
    took = time.monotonic() - started_at

    assert took < 3 + 2, f"stop took {took:.1f} s"
    assert handle.exit_code() is not None
    assert gone(docker_engine, handle.container_id)
    assert not any(psutil.pid_exists(pid) for pid in host_pids)


@DOCKER
@pytest.mark.slow
def test_an_image_is_built_once_per_requirement_set_and_reused(
    settings: Settings, docker_engine: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    requirements = ["six==1.16.0"]
    selector = {"label": [f"{LABEL_REQUIREMENTS}={json.dumps(requirements)}"]}

    def drop_images() -> None:
        for image in docker_engine.images.list(filters=selector):
            docker_engine.images.remove(image.id, force=True)

    drop_images()  # the first start must really build
    spec = ServiceSpec(
        service_id="with-six",
        requirements=requirements,
        command=[
            "{python}",
            "-c",
            "import six, time; print('six', six.__version__, flush=True); time.sleep(600)",
        ],
    )
    timings: dict[str, float] = {}
    try:
        # Two agents in turn (two runtimes): the cache is the engine's, not one agent's memory.
        for attempt in ("first", "second"):
            runtime = DockerRuntime(settings)
            output = Output()
            began = time.monotonic()
            handle = runtime.start(spec, agent_env(settings, spec.service_id), output)
            try:
                timings[f"{attempt} start"] = time.monotonic() - began
                output.wait_for(lambda line: line == "six 1.16.0", timeout=60)
                timings[f"{attempt} output"] = time.monotonic() - began
                built = any(line.startswith("[image build]") for line in output.lines)
                assert built == (attempt == "first"), output.lines[-20:]
            finally:
                handle.stop(5)
                runtime.close()
            assert len(docker_engine.images.list(filters=selector)) == 1
    finally:
        drop_images()
    with capsys.disabled():
        print(
            "\n  docker runtime: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items())
        )
    assert timings["second start"] < timings["first start"]


@DOCKER
def test_platform_code_runs_inside_the_container(
    started: Callable[..., tuple[RunningService, Output]], settings: Settings
) -> None:
    reader = (
        "from platform_sdk.settings import get_settings\n"
        "s = get_settings()\n"
        "print('service', s.service_id, 'home', s.home_dir, 'bus', s.kafka.bootstrap_servers)\n"
    )
    handle, output = started(ServiceSpec(service_id="reader", command=["{python}", "-c", reader]))
    assert wait_exit(handle) == 0
    assert output.service_lines() == [f"service reader home {settings.home_dir} bus 127.0.0.1:9"]

    # A bare `python` is the image's venv, not whatever the host's PATH names.
    bare, bare_output = started(
        ServiceSpec(service_id="bare-python", command=["python", "-c", "import sys; print(sys.prefix)"])
    )
    assert wait_exit(bare) == 0
    assert bare_output.service_lines() == ["/opt/aiot/venv"]

    as_module, _ = started(ServiceSpec(service_id="as-module", module="platform_sdk.net"))
    assert wait_exit(as_module) == 0
    missing, missing_output = started(ServiceSpec(service_id="no-module", module="no_such_module"))
    assert wait_exit(missing) == 1
    assert any("No module named no_such_module" in line for line in missing_output.lines)


@DOCKER
def test_remove_containers_removes_only_that_platforms_containers(
    started: Callable[..., tuple[RunningService, Output]],
    settings: Settings,
    docker_engine: Any,
    tmp_path: Path,
) -> None:
    ours = [started(ServiceSpec(service_id=f"s{i}", command=["{python}", "-c", SLEEPER])) for i in range(2)]
    other_home = tmp_path / "other-platform"
    other_home.mkdir()
    other, other_output = started(
        ServiceSpec(service_id="other", command=["{python}", "-c", SLEEPER]), AIOT_HOME=str(other_home)
    )
    for _handle, output in [*ours, (other, other_output)]:
        output.wait_for(lambda line: line == "ready")

    assert remove_containers(str(settings.home_dir)) == 2

    assert not containers_of(docker_engine, settings.home_dir)
    for handle, _output in ours:
        assert wait_exit(handle) == -1  # removed behind the handle's back
        handle.stop(1)  # and stopping it is harmless
    assert other.exit_code() is None, "another platform's container is left alone"
    assert remove_containers(str(other_home)) == 1
    assert remove_containers(str(other_home)) == 0


@DOCKER
def test_errors_say_what_to_do(
    settings: Settings, docker_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ServiceSpec(service_id="errors", command=["{python}", "-c", "print(1)"])
    env = agent_env(settings, spec.service_id)
    noop = Output()

    with (
        temporary_settings({"agent.docker_base_image": "aiot-base:no-such-tag"}) as missing_base,
        contextlib.closing(DockerRuntime(missing_base)) as runtime,
        pytest.raises(Unavailable, match=r"aiot-base:no-such-tag is missing.*\.ci/docker-setup\.sh"),
    ):
        runtime.start(spec, env, noop)

    with contextlib.closing(DockerRuntime(settings)) as runtime:
        with pytest.raises(BadRequest, match="cannot install the requirements"):
            runtime.start(spec.model_copy(update={"requirements": ["six >= = 1"]}), env, noop)
        # The failed build leaves its last good layer untagged; the platform's label finds it.
        docker_engine.images.prune(filters={"dangling": True, "label": f"{LABEL_PLATFORM}=1"})
        with pytest.raises(BadRequest, match="refused"):
            runtime.start(spec.model_copy(update={"cpu_limit": 512.0}), env, noop)
    assert not containers_of(docker_engine, settings.home_dir)

    monkeypatch.setenv("DOCKER_HOST", f"unix://{settings.home_dir}/no-engine.sock")
    with (
        contextlib.closing(DockerRuntime(settings)) as runtime,
        pytest.raises(Unavailable, match="start dockerd"),
    ):
        runtime.start(spec, env, noop)
    assert remove_containers(str(settings.home_dir)) == 0


def test_platform_packages_match_the_wheel() -> None:
    """The packages copied into images are the packages the platform's wheel ships."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert set(PLATFORM_PACKAGES) == set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
