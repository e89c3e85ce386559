"""`aiot up / status / logs / user / down` as a user runs them: real processes, real broker, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from bootstrapper.kafka import KafkaBroker
from tests.fixtures.components import kafka_env
from tests.platform_driver import AIOT, Platform, platform_services, wait_until

# Whole platforms start and stop here: more than the default per-test timeout on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.service("kafka"), pytest.mark.timeout(400)]


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    home = tmp_path / "home-a"
    running = Platform(home)
    yield running
    running.run("down", check=False)


def _topics(admin: AdminClient, prefix: str = "aiot") -> dict[str, int]:
    """The platform's topics on ``bootstrap`` with their partition counts."""
    metadata = admin.list_topics(timeout=10)
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if name.startswith(f"{prefix}.")
    }


def check_the_bus_keeps_its_secrets_and_bounds_its_topics(platform: Platform) -> None:
    """The bus's passwords are in the home's secrets file (0600) only, never in a log; every topic
    the platform made has its class's retention; restarts and CLI requests make no new topic."""
    secrets_file = platform.home / "secrets" / "kafka.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    passwords = set(json.loads(secrets_file.read_text())["principals"].values())
    assert len(passwords) >= 10  # admin, node manager, monitor, 5 roster services, platform, node-1, ...
    written = [path for folder in ("logs", "bucket") for path in (platform.home / folder).rglob("*")]
    logged = "".join(path.read_text(errors="replace") for path in written if path.is_file())
    assert not [password for password in passwords if password in logged]

    admin = platform.admin()
    heartbeats = ConfigResource("topic", "aiot.heartbeats")
    configs = admin.describe_configs([heartbeats])[heartbeats].result()
    assert int(configs["retention.ms"].value) <= 10 * 60 * 1000
    assert int(configs["retention.bytes"].value) > 0

    before = _topics(admin)
    assert before["aiot.replies"] == 8
    assert not [name for name in before if name.startswith("aiot.replies.")]
    # Restarts (each a new process with its own request/reply client) and CLI requests: no new topic.
    for service in ("web", "deployer", "scheduler", "web", "deployer"):
        platform.run("restart", service)
    wait_until(lambda: (platform.service("web") or {}).get("state") == "running", 60, "web running")
    after = _topics(admin)
    assert after == before, f"topics appeared: {sorted(set(after) - set(before))}"


def check_users_are_added_and_listed(platform: Platform) -> None:
    """A user is added and listed; adding one again is a one-line error."""
    platform.run("user", "add", "ada", "--role", "ai_developer", "--password", "correct horse")
    users = platform.json("user", "list")
    assert isinstance(users, list)
    assert {(u["username"], u["role"]) for u in users} == {
        ("admin", "platform_configurer"),
        ("ada", "ai_developer"),
    }
    duplicate = platform.run(
        "user", "add", "ada", "--role", "end_user", "--password", "whatever1", check=False
    )
    assert duplicate.returncode == 1
    assert "user 'ada' already exists" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr


def test_up_logs_users_and_down(platform: Platform) -> None:
    """One platform on Apache Kafka, two nodes: what `aiot up` says and starts, its bus (passwords,
    bounded topics, no topic per restart), logs, users, a second `up` refused, and `down`."""
    up = platform.run("up", "--detach")
    assert "platform up" in up.stdout
    assert "password, shown once" in up.stdout
    status = platform.json("status")
    assert isinstance(status, dict)
    assert status["running"] is True
    assert {p["name"] for p in status["processes"]} == {"broker", "agent-node-1", "agent-node-2"}
    assert {s["service_id"] for s in status["services"]} == platform_services()
    # It says where the portal is, and the portal's sign-in page answers there.
    assert f"portal      {status['web_url']}/" in up.stdout
    sign_in = requests.get(f"{status['web_url']}/", timeout=10)
    assert sign_in.url.endswith("/login?next=/")
    assert "Sign in" in sign_in.text

    assert "Apache Kafka" in up.stdout
    broker = platform.json("broker")
    assert isinstance(broker, dict)
    assert (broker["kind"], broker["embedded"], broker["reachable"]) == ("kafka", True, True)
    assert status["bus_authenticated"] is True
    assert "unauthenticated" not in up.stdout
    check_the_bus_keeps_its_secrets_and_bounds_its_topics(platform)

    # A separate process logs through the SDK; the record is queryable within 5 s.
    snippet = 'import platform_sdk; platform_sdk.get_logger("x").warning("marker-7f3a")'
    subprocess.run([sys.executable, "-c", snippet], env=platform.env, check=True, timeout=60)
    deadline = time.monotonic() + 5
    found = ""
    while time.monotonic() < deadline and "marker-7f3a" not in found:
        found = platform.run("logs", "--grep", "marker-7f3a").stdout
        time.sleep(0.2)
    assert "marker-7f3a" in found
    records = platform.json("logs", "--grep", "marker-7f3a")
    assert isinstance(records, list)
    assert records[0]["level"] == "WARNING"

    check_users_are_added_and_listed(platform)

    again = platform.run("up", "--detach", check=False)
    assert again.returncode == 1
    assert "already runs" in again.stderr

    platform.run("down")
    deadline = time.monotonic() + 10
    while platform.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert platform.processes() == []
    after = platform.run("logs", check=False)
    assert after.returncode == 1
    assert "error:" in after.stderr
    assert "aiot up" in after.stderr or "does not answer" in after.stderr


def test_two_homes_run_side_by_side(tmp_path: Path) -> None:
    first, second = Platform(tmp_path / "one"), Platform(tmp_path / "two")
    try:
        with ThreadPoolExecutor(2) as both:  # brought up at the same time: neither waits for the other
            ups = [both.submit(home.run, "up", "--detach", "--nodes", "1") for home in (first, second)]
            for up in ups:
                up.result()
        one, two = first.json("status"), second.json("status")
        assert isinstance(one, dict)
        assert isinstance(two, dict)
        assert one["web_url"] != two["web_url"]
        assert one["broker"] != two["broker"]
        first.run("down")
        assert second.json("status")["running"] is True  # type: ignore[index]
        assert second.run("user", "list").returncode == 0
    finally:
        first.run("down", check=False)
        second.run("down", check=False)
    assert first.processes() == []
    assert second.processes() == []


def test_errors_are_one_line_and_debug_shows_the_traceback(platform: Platform) -> None:
    plain = platform.run("user", "list", check=False)
    assert plain.returncode == 1
    assert plain.stderr.strip().startswith("error:")
    assert len(plain.stderr.strip().splitlines()) == 1
    debug = platform.run("--debug", "user", "list", check=False)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


def test_foreground_up_stops_everything_on_ctrl_c(platform: Platform) -> None:
    process = subprocess.Popen(
        [*AIOT, "up", "--nodes", "1"],
        env=platform.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "press Ctrl-C to stop" in line:
                break
        else:
            raise AssertionError(f"aiot up ended early with {process.wait()}")
        assert platform.json("status")["running"] is True  # type: ignore[index]
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert platform.processes() == []


def test_with_a_kafka_address_given_no_broker_is_started(
    platform: Platform, kafka_broker: KafkaBroker
) -> None:
    platform.env.update(kafka_env(kafka_broker))
    platform.env["AIOT_KAFKA__TOPIC_PREFIX"] = f"ext{os.getpid()}"
    platform.run("up", "--detach", "--nodes", "1")
    status = platform.json("status")
    assert isinstance(status, dict)
    assert {p["name"] for p in status["processes"]} == {"agent-node-1"}
    assert status["broker"] == kafka_broker.bootstrap_servers
    broker = platform.json("broker")
    assert broker == {
        "bootstrap_servers": kafka_broker.bootstrap_servers,
        "embedded": False,
        "kind": "kafka",
        "reachable": True,
    }
    platform.run("down")
    assert kafka_broker.pid is not None
    assert psutil.pid_exists(kafka_broker.pid)  # the external broker is not ours to stop


def test_the_bundled_tansu_broker_still_runs_the_platform(platform: Platform) -> None:
    """The fallback where Java is missing: `aiot up --broker tansu` says what it is, and works."""
    up = platform.run("up", "--detach", "--nodes", "1", "--broker", "tansu")
    assert "keeps everything in memory and suits short sessions only" in up.stdout
    assert "the bus is unauthenticated" in up.stdout  # Tansu has no SASL: single-user, and said so
    assert platform.status()["bus_authenticated"] is False
    assert "the bus is unauthenticated" in platform.run("status").stdout
    broker = platform.json("broker")
    assert isinstance(broker, dict)
    assert (broker["kind"], broker["reachable"]) == ("tansu", True)
    assert {s["service_id"] for s in platform.status()["services"]} == platform_services()
    snippet = 'import platform_sdk; platform_sdk.get_logger("x").warning("tansu-marker-51")'
    subprocess.run([sys.executable, "-c", snippet], env=platform.env, check=True, timeout=60)
    wait_until(
        lambda: "tansu-marker-51" in platform.run("logs", "--grep", "tansu-marker-51").stdout,
        10,
        "the log record collected",
    )
    platform.run("down")
    assert platform.processes() == []
