"""Chaos on a platform with the demo loaded: faults that must restart nothing, and faults that must heal fast.

One platform (`aiot up --nodes 2 --demo` on Apache Kafka: the platform's services, three
models, the simulated devices of three locations, three apps) takes, one after the other:

* CPU overload: burners on twice the machine's cores for three minutes → zero restarts,
  everything beating and answering afterwards;
* the broker paused (SIGSTOP) for 20 s, then continued → zero restarts, every service
  beating again within 15 s;
* kill -9 of platform services → each beating again, p50 ≤ 2 s; SIGSTOP of services →
  each replaced, p50 ≤ 8 s;
* the heartbeat monitor killed, then paused → it comes back, nothing else is restarted;
* last, the agent of the node running apps killed (the node is lost) → its apps run on the
  other node within 30 s, and their users get a mail with the new address.

"Restarts" are those `aiot status` counts and the monitor's incidents (restarted, replaced)
on the incidents topic; the injected faults' own targets are left out where they are meant
to be restarted. Every wait is for an observable event; the faults' durations are the
faults themselves.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
import requests

from aiot.client import PlatformClient
from platform_sdk.errors import PlatformError
from tests.platform_driver import (
    FAILED,
    Beats,
    Platform,
    platform_services,
    running_platform,
    wait_running,
    wait_until,
    watching_beats,
)

pytestmark = [pytest.mark.slow, pytest.mark.service("kafka"), pytest.mark.timeout(900)]
OVERLOAD_S = 180.0
BROKER_PAUSE_S = 20.0
MONITOR_PAUSE_S = 20.0
BACK_WITHIN_S = 15.0
APPS_MOVED_WITHIN_S = 30.0
END_USER = ("mia", "mia-password-1", "mia@example.com")
SAMPLE_APPS = {"smart-home": "lake-home", "smart-classroom": "green-school"}  # web apps with an address
LOST_NODE = "node-2"  # node-1 is the main node: its agent runs the node manager and the monitor
KILLED = ("logger", "scheduler", "device-manager", "deployer", "web")
STOPPED = ("logger", "scheduler", "deployer")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    # Room on either node for everything (the demo and the apps scheduled here are about 22 services,
    # more than the default capacity of 16): a lost node's services then move to the other node, as
    # the lost-node test says, instead of waiting for a node that scale-out adds (seen in CI: 30 s
    # went by before the added node joined; scale-out is node_layer's subject).
    work = tmp_path_factory.mktemp("chaos")
    config = work / "settings.toml"
    config.write_text("[agent]\ncapacity = 32\n")
    env = {"AIOT_CONFIG_FILE": str(config)}
    with running_platform(work / "home", "--nodes", "2", "--demo", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def beats(platform: Platform) -> Iterator[Beats]:
    with watching_beats(platform) as watcher:
        yield watcher


@pytest.fixture(autouse=True)
def troubles_on_failure(request: pytest.FixtureRequest, platform: Platform) -> Iterator[None]:
    """A failed test prints what the platform itself warned about meanwhile (CI shows only this)."""
    began = now_iso()
    yield
    if request.node.stash.get(FAILED, False):
        print(f"\nthe platform's warnings and errors since {began}:\n{platform.troubles(began)}")


def everyone(platform: Platform) -> set[str]:
    """Every service of the platform now: its own, the models', the simulator hosts', the apps'."""
    return {service["service_id"] for service in platform.status()["services"]}


def restarts(platform: Platform) -> dict[str, int]:
    return {service["service_id"]: service["restarts"] for service in platform.status()["services"]}


def acted_on(platform: Platform, since: str) -> list[dict[str, str]]:
    """The monitor's restarts and moves (incidents) at or after the ISO time ``since``."""
    return [
        incident
        for incident in platform.status()["incidents"]
        if incident["kind"] in ("restarted", "replaced") and incident["time"] >= since
    ]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


def healthy(platform: Platform, beats: Beats, services: set[str], since: float) -> None:
    """Every service beats again after ``since``, runs, and the front door answers."""
    beats.wait_all_heard_since(services, since, BACK_WITHIN_S, "every service beating again")
    not_running = {
        s["service_id"]: s["state"] for s in platform.status()["services"] if s["state"] != "running"
    }
    assert not_running == {}
    assert platform.run("user", "list").returncode == 0


@contextlib.contextmanager
def burners(count: int) -> Iterator[None]:
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def pause(pid: int, seconds: float) -> float:
    """SIGSTOP ``pid`` for ``seconds`` (the fault itself), then SIGCONT; when it continued (monotonic)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        threading.Event().wait(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
    return time.monotonic()


def test_cpu_overload_restarts_nothing(platform: Platform, beats: Beats) -> None:
    services = everyone(platform)
    before, since = restarts(platform), now_iso()
    cores = os.cpu_count() or 1
    with burners(2 * cores):
        threading.Event().wait(OVERLOAD_S)  # the fault itself: three minutes of a saturated machine
    healthy(platform, beats, services, time.monotonic())
    assert restarts(platform) == before
    assert acted_on(platform, since) == []


def test_a_paused_broker_restarts_nothing(platform: Platform, beats: Beats) -> None:
    services = everyone(platform)
    before, since = restarts(platform), now_iso()
    broker = next(p for p in platform.status()["processes"] if p["name"] == "broker")
    resumed = pause(broker["pid"], BROKER_PAUSE_S)
    elapsed = beats.wait_all_heard_since(services, resumed, BACK_WITHIN_S, "every service beating")
    print(
        f"\nbroker paused {BROKER_PAUSE_S:g}s: every service beating again {elapsed:.1f}s after it "
        f"continued; slowest: {list(beats.last_wait.items())[:5]}"
    )
    healthy(platform, beats, services, resumed)
    assert restarts(platform) == before
    assert acted_on(platform, since) == []


def recovery(platform: Platform, beats: Beats, service_id: str, signum: signal.Signals) -> float:
    """Seconds from ``signum`` to the whole tree of ``service_id`` to a new start of it beating."""
    service = platform.service(service_id)
    assert service is not None, f"{service_id} is not placed"
    assert service["state"] == "running", service
    old = beats.instance(service_id)
    root = psutil.Process(service["pid"])
    tree = [root, *root.children(recursive=True)]
    began = time.monotonic()
    for process in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
    wait_until(lambda: beats.restarted(service_id, old), 60, f"{service_id} back after {signum.name}")
    elapsed = time.monotonic() - began
    for process in tree:  # a stopped copy is killed by its restart; continue whatever is left
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
    return elapsed


def test_killed_services_beat_again_fast_and_stopped_ones_are_replaced(
    platform: Platform, beats: Beats, record_property: Callable[[str, object], None]
) -> None:
    killed = [recovery(platform, beats, service, signal.SIGKILL) for service in KILLED]
    stopped = [recovery(platform, beats, service, signal.SIGSTOP) for service in STOPPED]
    record_property("kill_9_recovery_p50_s", round(statistics.median(killed), 2))
    record_property("sigstop_recovery_p50_s", round(statistics.median(stopped), 2))
    print(f"\nkill -9: {[round(s, 2) for s in killed]}; SIGSTOP: {[round(s, 2) for s in stopped]}")
    assert statistics.median(killed) <= 2.0
    assert statistics.median(stopped) <= 8.0


def test_the_monitor_killed_or_paused_restarts_nothing_else_and_comes_back(
    platform: Platform, beats: Beats
) -> None:
    others = everyone(platform) - {"heartbeat"}
    before, since = restarts(platform), now_iso()
    recovery(platform, beats, "heartbeat", signal.SIGKILL)
    monitor = platform.service("heartbeat")
    assert monitor is not None
    old = beats.instance("heartbeat")
    resumed = pause(monitor["pid"], MONITOR_PAUSE_S)
    # Paused, it is restarted by nobody (its agent sees it alive) and beats again as it was.
    beats.wait_all_heard_since({"heartbeat"}, resumed, BACK_WITHIN_S, "the monitor beating")
    assert beats.latest["heartbeat"] == old
    healthy(platform, beats, others | {"heartbeat"}, resumed)
    after = restarts(platform)
    assert {s: n for s, n in after.items() if s != "heartbeat"} == {
        s: n for s, n in before.items() if s != "heartbeat"
    }
    assert [i for i in acted_on(platform, since) if i["service_id"] != "heartbeat"] == []
    assert platform_services() <= everyone(platform)


def reachable(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def test_a_lost_node_running_apps_has_them_running_elsewhere_and_their_users_mailed(
    platform: Platform, beats: Beats, record_property: Callable[[str, object], None]
) -> None:
    name, password, email = END_USER
    platform.run("user", "add", name, "--role", "end_user", "--password", password, "--email", email)
    url = platform.status()["web_url"]
    token = PlatformClient(url).post("/api/auth/login", json={"username": name, "password": password})
    user = PlatformClient(url, token["token"])
    # The user's apps are scheduled now, one after the other, until two run on the node to lose
    # (the least-loaded node takes each: the two nodes alternate as their service counts grow).
    mine: dict[str, dict[str, Any]] = {}
    for app, location in itertools.islice(itertools.cycle(SAMPLE_APPS.items()), 8):
        schedule = user.post(
            "/api/schedules", json={"app": app, "location": location, "now": True, "duration": "1h"}
        )
        instance = wait_running(user, schedule["schedule_id"])
        mine[instance["instance_id"]] = instance
        if sum(i["node_id"] == LOST_NODE for i in mine.values()) == 2:
            break
    moving = {i: instance for i, instance in mine.items() if instance["node_id"] == LOST_NODE}
    assert moving, f"none of {len(mine)} instances was placed on {LOST_NODE}"
    old = {i: beats.instance(f"app-{i}") for i in moving}
    agent = next(p for p in platform.status()["processes"] if p["name"] == f"agent-{LOST_NODE}")
    os.kill(agent["pid"], signal.SIGKILL)

    def running_elsewhere() -> bool:
        try:  # the front door itself ran on the lost node: it is unreachable until it moved too
            now = {i["instance_id"]: i for i in user.get("/api/instances")["instances"]}
        except PlatformError:
            return False
        placed = all(now[i]["status"] == "running" and now[i]["node_id"] != LOST_NODE for i in moving)
        moving.update({i: now[i] for i in moving})
        return placed and all(beats.restarted(f"app-{i}", old[i]) for i in moving)

    elapsed = wait_until(
        running_elsewhere, APPS_MOVED_WITHIN_S, f"{sorted(moving)} running and beating off {LOST_NODE}"
    )
    record_property("lost_node_apps_moved_s", round(elapsed, 2))
    print(f"\nagent of {LOST_NODE} killed: {sorted(moving)} running elsewhere after {elapsed:.1f}s")

    def told(instance_id: str) -> bool:
        """The user has a mail saying the instance moved, with its new address."""
        new_url = moving[instance_id]["url"]
        return any(
            mail["instance_id"] == instance_id
            and mail["recipient"] == email
            and f" moved to {new_url}" in mail["subject"]
            and new_url in mail["body"]
            for mail in user.get("/api/mails")["mails"]
        )

    wait_until(lambda: all(told(i) for i in moving), BACK_WITHIN_S, "a mail about each move")
    for instance_id, instance in moving.items():
        new_url = instance["url"]
        wait_until(functools.partial(reachable, new_url), BACK_WITHIN_S, f"{instance_id} at {new_url}")
