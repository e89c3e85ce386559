"""The node layer end to end: `aiot up --nodes 2`, placement, and recovery from every kind of fault.

Each fault test reports its measured recovery time (kill → the service heartbeating
again with a new pid) in its output and as a junit property.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import pytest

from node_manager import registry
from node_manager.placement import NodeLoad
from platform_core.db import Database
from platform_core.nodes import Placement, PlaceService, ServiceSpec, UnplaceService, node_manager_topic
from tests.platform_driver import (
    Beats,
    Platform,
    platform_per_runtime,
    platform_services,
    wait_until,
    watching_beats,
)

pytestmark = [pytest.mark.slow, pytest.mark.service("kafka"), pytest.mark.timeout(600)]
RecordProperty = Callable[[str, object], None]
# The node manager's defaults (poll every second), and what the scale-out test sets.
ANNOUNCE_INTERVAL_S = 1.0  # agent.announce_interval_s: how often the node manager hears of a node
SCALE_OUT_LOAD = 0.001
SCALE_OUT_AFTER_S = 2.0
# Every node is idle too (scores stay under 1): an added node goes once the cooldown after it
# joined has passed, long enough for the scale-out checks before it.
SCALE_IN_LOAD = 1.0
SCALE_COOLDOWN_S = 45.0
# A burner (one core of two) adds about 0.25 to its node's score; two light services placed on
# the other node add 2 x 0.3 / capacity (16) = 0.04 to that one's.
BURNER_MARGIN = 0.05
ALLOW_COMMANDS = {"AIOT_AGENT__ALLOW_COMMANDS": "true"}


@pytest.fixture(scope="module", params=["process", "docker"])
def platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One platform per runtime; every test below runs against both."""
    # The tests place plain command lines (burners, sleepers): the agents here allow them.
    with platform_per_runtime(request, tmp_path_factory, "nodes", env=ALLOW_COMMANDS) as running:
        yield running


@pytest.fixture(scope="module")
def beats(platform: Platform) -> Iterator[Beats]:
    with watching_beats(platform) as watcher:
        yield watcher


def running_pid(platform: Platform, service_id: str) -> int:
    service = platform.service(service_id)
    assert service is not None, f"{service_id} is not running"
    assert service["state"] == "running"
    pid: int = service["pid"]
    return pid


def recorded_loads(platform: Platform) -> dict[str, tuple[NodeLoad, datetime]]:
    """Each node's load as the node manager recorded it in its registry, and when it last heard of it.

    The loads are what placement and scale-out decide on, as each node's agent announced them
    every ``agent.announce_interval_s``; the time is that of the latest announcement.
    """
    database = Database(f"sqlite:///{platform.home / 'registry.db'}")
    try:
        with database.session() as session:
            polled = {node.node_id: node.last_seen for node in registry.list_nodes(session)}
            return {load.node_id: (load, polled[load.node_id]) for load in registry.node_loads(session)}
    finally:
        database.stop()


def recover(
    platform: Platform, beats: Beats, service_id: str, signum: signal.Signals, record_property: RecordProperty
) -> float:
    pid = running_pid(platform, service_id)
    old = beats.instance(service_id)
    # The whole tree: under docker the recorded pid is the container's init, the service its child.
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(ProcessLookupError):  # killing docker's init takes its child along
            os.kill(process.pid, signum)
    elapsed = wait_until(lambda: beats.restarted(service_id, old), 60, f"{service_id} back")
    record_property(f"recovery_s_{signum.name}_{service_id}", round(elapsed, 2))
    print(f"\n{service_id}: {signum.name} -> a new start heartbeating after {elapsed:.2f}s")
    wait_until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        20,
        "old copy gone",
    )
    return elapsed


def test_up_runs_every_service_spread_over_both_nodes(platform: Platform) -> None:
    status = platform.status()
    assert {node["node_id"] for node in status["nodes"] if node["reachable"]} == {"node-1", "node-2"}
    services = {s["service_id"]: s for s in status["services"]}
    assert set(services) == platform_services()
    assert all(s["state"] == "running" for s in services.values())
    assert services["node-manager"]["node_id"] == services["heartbeat"]["node_id"] == "node-1"
    assert {s["node_id"] for s in services.values()} == {"node-1", "node-2"}


def test_kill_9_of_a_service_is_restarted(
    platform: Platform, beats: Beats, record_property: RecordProperty
) -> None:
    recover(platform, beats, "logger", signal.SIGKILL, record_property)


def test_a_hung_service_is_detected_and_replaced(
    platform: Platform, beats: Beats, record_property: RecordProperty
) -> None:
    recover(platform, beats, "web", signal.SIGSTOP, record_property)
    assert platform.run("user", "list").returncode == 0  # the new front door answers
    # The monitor asked web's agent first: stopped, so restarted at once; `aiot status` shows why.
    incidents = [i for i in platform.status()["incidents"] if i["service_id"] == "web"]
    restarted = [i for i in incidents if i["kind"] == "restarted"]
    assert restarted, incidents
    assert "its process is stopped" in restarted[-1]["detail"]
    assert "recent incidents" in platform.run("status").stdout


def test_node_manager_and_monitor_come_back(
    platform: Platform, beats: Beats, record_property: RecordProperty
) -> None:
    recover(platform, beats, "node-manager", signal.SIGKILL, record_property)
    recover(platform, beats, "heartbeat", signal.SIGKILL, record_property)


def test_restart_command(platform: Platform, beats: Beats) -> None:
    old = beats.instance("logger")
    platform.run("restart", "logger")
    wait_until(lambda: beats.restarted("logger", old), 30, "logger restarted")
    unknown = platform.run("restart", "nope", check=False)
    assert unknown.returncode == 1
    assert "no service 'nope'" in unknown.stderr


def test_new_services_avoid_a_cpu_loaded_node(platform: Platform, beats: Beats) -> None:
    burner = ServiceSpec(service_id="burner", command=["{python}", "-c", "while True: pass"])
    placed = beats.requester.request(
        node_manager_topic(beats.bus.topics), PlaceService(spec=burner), Placement, timeout=60
    )

    def burner_seen() -> bool:  # by the node manager: more than two light services' worth above the rest
        loads = recorded_loads(platform)
        burning = loads[placed.node_id][0].score
        return all(
            burning > load.score + BURNER_MARGIN
            for node_id, (load, _) in loads.items()
            if node_id != placed.node_id and load.state == "up"
        )

    try:
        wait_until(burner_seen, 30, f"the node manager seeing the burner's CPU on {placed.node_id}")
        for n in range(2):
            light = ServiceSpec(
                service_id=f"light-{n}", command=["{python}", "-c", "import time; time.sleep(600)"]
            )
            other = beats.requester.request(
                node_manager_topic(beats.bus.topics), PlaceService(spec=light), Placement, timeout=60
            )
            assert other.node_id != placed.node_id
    finally:
        for service_id in ("burner", "light-0", "light-1"):
            beats.requester.request(
                node_manager_topic(beats.bus.topics),
                UnplaceService(service_id=service_id),
                Placement,
                timeout=60,
            )


def test_lost_agent_moves_its_services(
    platform: Platform, beats: Beats, record_property: RecordProperty
) -> None:
    status = platform.status()
    agent = next(p for p in status["processes"] if p["name"] == "agent-node-2")
    moved = {
        s["service_id"]: beats.instance(s["service_id"])
        for s in status["services"]
        if s["node_id"] == "node-2"
    }
    assert moved
    os.kill(agent["pid"], signal.SIGKILL)

    def all_back_on_node_1() -> bool:
        services = {s["service_id"]: s for s in platform.status()["services"]}
        placed = all(services.get(sid, {}).get("node_id") == "node-1" for sid in moved)
        return placed and all(beats.restarted(sid, old) for sid, old in moved.items())

    elapsed = wait_until(all_back_on_node_1, 90, f"{sorted(moved)} running and beating on node-1")
    record_property("recovery_s_lost_agent", round(elapsed, 2))
    print(f"\nagent of node-2 killed: {sorted(moved)} heartbeating on node-1 after {elapsed:.2f}s")


def reachable_nodes(platform: Platform) -> set[str]:
    return {node["node_id"] for node in platform.status()["nodes"] if node["reachable"]}


def test_scale_out_adds_a_node_when_every_node_is_busy_and_scale_in_removes_it_when_idle(
    tmp_path: Path,
) -> None:
    busy = Platform(tmp_path / "scaling")
    # Any load counts as busy here, so the scale-out path runs without burning the CPU; and as idle,
    # so the added node is drained and removed once the cooldown has passed.
    busy.env.update(
        {
            "AIOT_NODE_MANAGER__SCALE_OUT_LOAD": str(SCALE_OUT_LOAD),
            "AIOT_NODE_MANAGER__SCALE_OUT_AFTER_S": str(SCALE_OUT_AFTER_S),
            "AIOT_NODE_MANAGER__MAX_NODES": "2",
            "AIOT_NODE_MANAGER__SCALE_IN_LOAD": str(SCALE_IN_LOAD),
            "AIOT_NODE_MANAGER__SCALE_IN_AFTER_S": "1",
            "AIOT_NODE_MANAGER__SCALE_COOLDOWN_S": str(SCALE_COOLDOWN_S),
            **ALLOW_COMMANDS,
        }
    )
    try:
        busy.run("up", "--detach", "--nodes", "1")
        wait_until(
            lambda: reachable_nodes(busy) == {"node-1", "node-2"}, 60, "a second node started by scale-out"
        )
        # max_nodes is 2: no third node however busy. The new node runs nothing (not busy) until a
        # service is placed there; then both are, and a scale-out is due SCALE_OUT_AFTER_S later.
        with watching_beats(busy) as beats:
            sleeper = ServiceSpec(
                service_id="sleeper", command=["{python}", "-c", "import time; time.sleep(600)"]
            )
            beats.requester.request(
                node_manager_topic(beats.bus.topics),
                PlaceService(spec=sleeper, avoid=["node-1"]),
                Placement,
                timeout=60,
            )
        both_busy: list[datetime] = []

        def every_node_busy() -> bool:
            loads = recorded_loads(busy).values()
            if len(loads) == 2 and all(load.score > SCALE_OUT_LOAD for load, _ in loads):
                both_busy.append(max(polled for _, polled in loads))
            return bool(both_busy)

        wait_until(every_node_busy, 30, "the node manager seeing both nodes busy")
        # The control round that would add a node (SCALE_OUT_AFTER_S after the first that saw
        # both busy) has run once the node manager has heard of both nodes a few announcements later.
        due = both_busy[0] + timedelta(seconds=SCALE_OUT_AFTER_S + 3 * ANNOUNCE_INTERVAL_S)
        wait_until(
            lambda: all(polled >= due for _, polled in recorded_loads(busy).values()),
            30,
            "the node manager's control rounds past the scale-out that max_nodes forbids",
        )
        assert len(busy.status()["nodes"]) == 2
        found = busy.run("logs", "node-manager", "--grep", "adding a node").stdout
        assert found.count("adding a node") == 1, found
        assert "every node busier than" in found

        # Scale-in: after the cooldown, node-2 is drained (the sleeper starts on node-1 before it
        # stops there) and removed: its agent ends, the platform forgets it.
        def sleeper_moved_and_node_2_gone() -> bool:
            moved = busy.service("sleeper") or {}
            return (
                moved.get("node_id") == "node-1"
                and moved.get("state") == "running"
                and "node-2" not in {node["node_id"] for node in busy.status()["nodes"]}
            )

        wait_until(sleeper_moved_and_node_2_gone, SCALE_COOLDOWN_S + 60, "node-2 drained and removed")
        assert "agent-node-2" not in {p["name"] for p in busy.status()["processes"]}
        # The run state forgets node-2 before the node manager logs the removal: wait for the line.
        wait_until(
            lambda: (
                "scale-in: node node-2 drained and removed"
                in busy.run("logs", "node-manager", "--grep", "scale-in").stdout
            ),
            30,
            "the node manager's log of node-2's removal",
        )
        # Busy again on one node: the next node added is node-3 (a removed node's id is not reused).
        wait_until(lambda: "node-3" in reachable_nodes(busy), 60, "node-3 added by the next scale-out")
    finally:
        busy.run("down", check=False)
    wait_until(lambda: busy.processes() == [], 20, "no process left after down")


def test_a_crash_loop_is_given_up_with_its_last_output(platform: Platform, beats: Beats) -> None:
    crasher = ServiceSpec(
        service_id="crasher",
        command=["{python}", "-c", "import sys; print('missing model file', flush=True); sys.exit(2)"],
    )
    beats.requester.request(
        node_manager_topic(beats.bus.topics), PlaceService(spec=crasher), Placement, timeout=60
    )

    incidents: list[str] = []  # the monitor's incidents of the crasher, oldest first: "KIND on NODE: ..."

    def given_up() -> bool:
        records = platform.json("logs", "heartbeat", "--grep", "crasher ", "--limit", "1000")
        assert isinstance(records, list)
        incidents[:] = [
            str(record["message"]).removeprefix("crasher ")
            for record in records
            if str(record["message"]).startswith("crasher ")
        ]
        return any(incident.startswith("gave_up ") for incident in incidents)

    wait_until(given_up, 60, "the monitor gives up on the crash loop")
    assert incidents[-1].startswith("gave_up "), incidents
    assert "crashed 3 times" in incidents[-1], incidents
    assert "missing model file" in incidents[-1], incidents  # its last output is in the incident
    # No further restarts: the monitor handles one failure at a time and gives up instead of
    # restarting, so every restart it made is logged before the give-up (and the logger stores a
    # service's records in order). After it nothing is restarted: no process runs to exit again,
    # and a given-up service's silence is not looked at. The agent ran it exactly that often.
    after = platform.service("crasher")
    assert after is not None
    restarted = sum(incident.startswith("restarted ") for incident in incidents)
    assert (after["restarts"], after["state"]) == (restarted, "exited"), incidents
