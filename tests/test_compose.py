"""The compose deployment (docker-compose.yml) end to end, on the real Docker engine.

Its images are built here from this checkout (on the local base image) and tagged ``test``; they
stay after the test, so the engine's layer cache makes the next run's build seconds. A project
of its own is brought up with a generated env file and a free front-door port in 33000-34000
(other platforms hold 8000-32000), and the test waits for the main node's health event (the
engine's ``health_status``, no sleeps). Then an AI developer's model and an app developer's app
go through it with the ``aiot`` command and the HTTP API from outside the containers: the
comfort model deploys and answers, the lake home's devices are registered, Smart Home is
scheduled now and runs, its decisions on the home's readings reach the collected logs. The main
node is restarted (an upgrade's restart, on the same volumes and the same broker) and the model
answers again. ``docker-compose down -v`` must leave no container, volume or network of the
project behind.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from aiot.client import PlatformClient
from platform_sdk.errors import Timeout, Unavailable
from tests.conftest import missing_component
from tests.platform_driver import Platform, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.service("docker"), pytest.mark.timeout(1500)]
ROOT = Path(__file__).resolve().parents[1]
COMPOSE_PORTS = (33000, 34000)
PROJECT_LABEL = "com.docker.compose.project"
SERVICES = ("kafka", "postgres", "azurite", "main")
VOLUMES = ("kafka", "postgres", "bucket", "home")
HEALTHY_TIMEOUT_S = 300.0


def free_port_between(low: int, high: int) -> int:
    """A port in [low, high) that nothing on this host listens on now (tried from a random one)."""
    ports = list(range(low, high))
    start = random.randrange(len(ports))
    for port in ports[start:] + ports[:start]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {low}-{high - 1}")


class ComposeProject:
    """One `docker-compose -p PROJECT` of this checkout's docker-compose.yml, with its env file."""

    def __init__(self, name: str, env_file: Path) -> None:
        self.name = name
        self.env_file = env_file
        command = shutil.which("docker-compose")
        if command is None:
            missing_component("docker", "docker-compose is not installed; run `bash .ci/docker-setup.sh`")
        self.command = [str(command), "--env-file", str(env_file), "-p", name]

    def run(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [*self.command, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{self.diagnosis()}"
            )
        return result.stdout

    def diagnosis(self) -> str:
        """The services' last output and the main node's agent log, for a failure's message."""
        logs = subprocess.run(
            [*self.command, "logs", "--tail", "40", "--no-color"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        agent = subprocess.run(
            [*self.command, "exec", "-T", "main", "tail", "-n", "40", "/var/lib/aiot/logs/agent-node-1.out"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return f"--- services' output\n{logs.stdout}\n--- main node's agent\n{agent.stdout}{agent.stderr}"

    def leftovers(self, engine: Any) -> dict[str, list[str]]:
        """What of this project the engine still has: containers (running or not), volumes, networks."""
        label = {"label": f"{PROJECT_LABEL}={self.name}"}
        return {
            "containers": [container.name for container in engine.containers.list(all=True, filters=label)],
            "volumes": [volume.name for volume in engine.volumes.list(filters=label)],
            "networks": [network.name for network in engine.networks.list(filters=label)],
        }

    def wait_healthy(self, engine: Any, service: str, since: int, timeout: float) -> None:
        """Until the engine reports ``service`` healthy (its events since ``since``); fails when it
        dies after starting (a death before its start is a restart's stop)."""
        until = int(time.time() + timeout) + 1
        events = engine.events(
            since=since,
            until=until,
            decode=True,
            filters={
                "type": "container",
                "label": [f"{PROJECT_LABEL}={self.name}", f"com.docker.compose.service={service}"],
            },
        )
        started = False
        try:
            for event in events:
                status = str(event.get("status", ""))
                started = started or status == "start"
                if started and status == "health_status: healthy":
                    return
                if started and status in ("health_status: unhealthy", "die"):
                    raise AssertionError(f"{service} reported {status!r}\n{self.diagnosis()}")
        finally:
            events.close()
        raise AssertionError(f"{service} was not healthy within {timeout:.0f}s\n{self.diagnosis()}")


@contextmanager
def timed(what: str) -> Iterator[None]:
    began = time.monotonic()
    yield
    print(f"\n{what}: {time.monotonic() - began:.1f}s")


def home_devices(folder: Path) -> Path:
    """The lake home of the sample devices (its types, the location, its four devices), as a file."""
    sample = json.loads((ROOT / "configs" / "devices" / "sample.json").read_text())
    devices = [device for device in sample["devices"] if device["location"] == "lake-home"]
    types = {device["type"] for device in devices}
    document = {
        "device_types": [kind for kind in sample["device_types"] if kind["name"] in types],
        "locations": [location for location in sample["locations"] if location["name"] == "lake-home"],
        "devices": devices,
    }
    path = folder / "lake-home.json"
    path.write_text(json.dumps(document))
    return path


def model_answers(client: PlatformClient) -> bool:
    """Whether the comfort model answers its example through the front door (503: no replica yet)."""
    try:
        answer = client.post(
            "/api/models/comfort/call",
            json={"endpoint": "predict", "inputs": {"temperature": 30.0, "humidity": 55.0}},
        )
    except (Unavailable, Timeout):  # no replica placed yet, or not answering yet
        return False
    return bool(answer["output"]["ac_on"] is True)


def test_the_compose_deployment_runs_a_model_and_an_app_and_leaves_nothing_behind(
    docker_engine: Any, tmp_path: Path
) -> None:
    port = free_port_between(*COMPOSE_PORTS)
    admin_password = secrets.token_hex(12)
    env_file = tmp_path / "compose.env"
    env_file.write_text(
        "\n".join(
            [
                f"AIOT_COMPOSE_ADMIN_PASSWORD={admin_password}",
                f"AIOT_COMPOSE_KAFKA_PASSWORD={secrets.token_hex(12)}",
                f"AIOT_COMPOSE_POSTGRES_PASSWORD={secrets.token_hex(12)}",
                f"AIOT_COMPOSE_WEB_PORT={port}",
                f"AIOT_COMPOSE_ENV_FILE={env_file}",
                "AIOT_COMPOSE_TAG=test",
            ]
        )
        + "\n"
    )
    project = ComposeProject(f"aiottest{uuid.uuid4().hex[:8]}", env_file)
    with timed("docker-compose build (the engine's layer cache decides cold or warm)"):
        project.run("build", timeout=1200)
    since = int(time.time()) - 1
    try:
        with timed("docker-compose up -d, until the main node is healthy"):
            project.run("up", "-d", timeout=HEALTHY_TIMEOUT_S)
            project.wait_healthy(docker_engine, "main", since, HEALTHY_TIMEOUT_S)
        made = project.leftovers(docker_engine)
        assert sorted(made["volumes"]) == sorted(f"{project.name}_{volume}" for volume in VOLUMES)
        assert len(made["containers"]) == len(SERVICES)

        url = f"http://127.0.0.1:{port}"
        cli = Platform(tmp_path / "cli")
        cli.env["AIOT_WEB__URL"] = url
        cli.run("login", "admin", "--password", admin_password)
        with timed("the comfort model uploaded and deployed"):
            cli.run("model", "upload", str(ROOT / "examples" / "models" / "comfort"), timeout=300)
        token = json.loads((tmp_path / "cli" / "credentials.json").read_text())["token"]
        assert model_answers(PlatformClient(url, token))

        cli.run("device", "add", str(home_devices(tmp_path)))
        cli.run("app", "upload", str(ROOT / "examples" / "apps" / "smart-home"))
        with timed("Smart Home scheduled now, until it runs"):
            cli.run(
                "schedule", "create", "smart-home", "--location", "lake-home",
                "--now", "--duration", "10m", "--wait",
                timeout=300,
            )  # fmt: skip
        instances = cli.json("instance", "list")
        assert isinstance(instances, list)
        [instance] = instances
        assert instance["app"] == "smart-home"
        assert instance["status"] == "running"
        assert instance["node_id"] == "node-1"

        def decided() -> bool:  # the app read the home's temperature and switched the AC
            records = cli.json("instance", "logs", instance["instance_id"], "--grep", "room")
            assert isinstance(records, list)
            return any(str(record["message"]).startswith("AC ") for record in records)

        wait_until(decided, 60, "Smart Home's first AC decision in the collected logs")

        # An upgrade's restart: the main node comes back on its volumes, and so does the model.
        since = int(time.time()) - 1
        with timed("docker-compose restart main, until healthy and the model answers again"):
            project.run("restart", "main", timeout=HEALTHY_TIMEOUT_S)
            project.wait_healthy(docker_engine, "main", since, HEALTHY_TIMEOUT_S)
            client = PlatformClient(url, token)
            wait_until(lambda: model_answers(client), 120, "the comfort model answering after the restart")
    finally:
        with timed("docker-compose down -v"):
            project.run("down", "-v", "--timeout", "60", timeout=300)
    assert project.leftovers(docker_engine) == {"containers": [], "volumes": [], "networks": []}
