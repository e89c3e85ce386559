"""`aiot bootstrap --provider ssh` on three genuine hosts (``tests.fixtures.ssh_hosts``: network
namespaces, each with its own sshd; c reached through sudo). The platform is bootstrapped once
per module (the first test times it) and destroyed at the end.

Host c is a spare (``bootstrapper.spares``): the bootstrap starts a and b; the main host's node
manager bootstraps c over SSH when every started host is busy, and stops it there when every host
has been idle past the cooldown. The tests run in this file's order, a story: the platform up, a
second bootstrap and bad inventories changing nothing, a model on b, the spare joining and taking
the next model, then (models deleted) the spare drained and removed, and the destroy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.ssh_hosts import SSH_HOST_MARKS, Hosts, SshLab, host_processes, need_components
from tests.platform_driver import wait_until

pytestmark = SSH_HOST_MARKS
HOSTS = ("a", "b", "c")
SPARE = "c"
STARTED = ("a", "b")
# Any load counts as busy (a host that runs anything: every started host once a replica runs on b),
# so the spare is added; and every host as idle, so the spare goes once the cooldown after it
# joined has passed: long enough for the test that gives it a model.
COOLDOWN_S = 90
SCALING = {
    "scale_out_load": 0.001,
    "scale_out_after_s": 2,
    "max_nodes": 3,
    "scale_in_load": 1.0,
    "scale_in_after_s": 1,
    "scale_cooldown_s": COOLDOWN_S,
}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    need_components()
    lab = SshLab(tmp_path_factory.mktemp("ssh-hosts"))
    try:
        found = lab.start(HOSTS, entries={SPARE: {"spare": True}}, settings={"node_manager": SCALING})
        yield found
        found.aiot.run("destroy", "--config", str(found.inventory), check=False, timeout=300)
    finally:
        lab.close()


@pytest.fixture(scope="module")
def bootstrapped(hosts: Hosts) -> tuple[Hosts, float, str]:
    began = time.monotonic()
    result = hosts.aiot.run("bootstrap", "--provider", "ssh", "--config", str(hosts.inventory), timeout=900)
    return hosts, time.monotonic() - began, result.stdout


def _nodes(hosts: Hosts) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(hosts.aiot.run("nodes", "--json").stdout)
    return found


def test_bootstrap_starts_two_hosts_and_hands_the_spare_to_the_main_host(
    bootstrapped: tuple[Hosts, float, str],
) -> None:
    hosts, took, output = bootstrapped
    print(f"\nbootstrap of two hosts (and a spare): {took:.0f}s")
    for name in STARTED:
        assert f"{name}: start: started" in output, output
    assert not [line for line in output.splitlines() if line.startswith(f"{SPARE}: ")], output
    assert f"a: spares: {SPARE} written" in output, output  # its key, for the main host's node manager
    assert "a: spares: hosts.json written" in output, output
    nodes = _nodes(hosts)
    assert {node["node_id"]: node["reachable"] for node in nodes} == dict.fromkeys(STARTED, True)
    main = next(node for node in nodes if node["main"])
    assert main["node_id"] == "a"
    assert {"node-manager", "heartbeat", "web"} <= {s["service_id"] for s in main["services"]}
    assert not host_processes(hosts.roots[SPARE])


def test_a_second_bootstrap_changes_nothing(bootstrapped: tuple[Hosts, float, str]) -> None:
    hosts, _took, _output = bootstrapped
    output = hosts.aiot.run(
        "bootstrap", "--provider", "ssh", "--config", str(hosts.inventory), timeout=600
    ).stdout
    lines = output.splitlines()
    for name in STARTED:
        for step in ("upload", "install", "start"):
            said = [line for line in lines if line.startswith(f"{name}: {step}: ")]
            assert said, output
            assert all("unchanged" in line for line in said), output
    assert " written" not in output, output
    assert not [line for line in lines if line.startswith(f"{SPARE}: ")], output


def _failed_bootstrap(hosts: Hosts, tmp_path: Path, host: int, **changes: str) -> str:
    """What `aiot bootstrap` says, failing, with host number ``host`` of the inventory changed."""
    inventory = json.loads(hosts.inventory.read_text())
    inventory["hosts"][host].update(changes)
    changed = tmp_path / f"inventory-{host}.json"
    changed.write_text(json.dumps(inventory))
    result = hosts.aiot.run(
        "bootstrap", "--provider", "ssh", "--config", str(changed), check=False, timeout=300
    )
    assert result.returncode != 0, result.stdout
    return result.stderr + result.stdout


def test_a_wrong_key_and_an_unreachable_host_fail_naming_host_and_step(
    bootstrapped: tuple[Hosts, float, str], tmp_path: Path
) -> None:
    hosts, _took, _output = bootstrapped
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    said = _failed_bootstrap(hosts, tmp_path, 0, key_file=str(wrong))
    assert "error: a: connect failed: " in said, said
    assert f"refused the key {wrong}" in said, said
    nowhere = hosts.addresses["b"].rsplit(".", 1)[0] + ".99"  # nobody has it
    said = _failed_bootstrap(hosts, tmp_path, 1, address=nowhere)
    assert f"error: b: connect failed: root@{nowhere}:22 is unreachable" in said, said


def _upload(hosts: Hosts, tmp_path: Path, name: str) -> str:
    """The comfort example uploaded under ``name``; its model id once deployed."""
    folder = tmp_path / name
    shutil.copytree(EXAMPLES / "comfort", folder)
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**manifest, "name": name}))
    archive = tmp_path / f"{name}.zip"
    hosts.aiot.run("model", "pack", str(folder), "-o", str(archive))
    uploaded = hosts.aiot.run("model", "upload", str(archive), timeout=600)
    model_id = uploaded.stdout.strip().splitlines()[-1]
    assert model_id.startswith("m"), uploaded.stdout
    return model_id


def _replicas(hosts: Hosts, model_id: str) -> list[dict[str, Any]]:
    document = json.loads(hosts.aiot.run("model", "show", model_id, "--json").stdout)
    return [
        replica
        for version in document["versions"]
        for replica in (version.get("deployment") or {}).get("replicas", [])
    ]


def _answers(url: str) -> dict[str, Any]:
    answer: dict[str, Any] = requests.post(
        f"{url}/predict/predict", json={"temperature": 30.0, "humidity": 55.0}, timeout=30
    ).json()
    return answer


def test_a_model_runs_on_another_host_and_answers(
    bootstrapped: tuple[Hosts, float, str], tmp_path: Path
) -> None:
    hosts, _took, _output = bootstrapped
    model_id = _upload(hosts, tmp_path, "comfort")
    replicas = _replicas(hosts, model_id)
    assert [replica["node_id"] for replica in replicas] == ["b"], replicas  # the least loaded host
    assert _answers(replicas[0]["url"])["fan_speed"] == 4


def test_the_spare_host_joins_when_every_host_is_busy_and_takes_the_next_model(
    bootstrapped: tuple[Hosts, float, str], tmp_path: Path
) -> None:
    hosts, _took, _output = bootstrapped
    began = time.monotonic()

    def spare_up() -> bool:
        return any(node["node_id"] == SPARE and node["reachable"] for node in _nodes(hosts))

    # b runs a replica now: every started host is busy, and the main host's node manager
    # bootstraps the spare over SSH (upload, offline install, join).
    wait_until(spare_up, 600, f"spare host {SPARE} added by scale-out")
    print(f"\nspare host {SPARE} up {time.monotonic() - began:.0f}s after a model ran on b")
    spare = next(node for node in _nodes(hosts) if node["node_id"] == SPARE)
    assert (spare["added"], spare["main"]) == (True, False), spare
    assert spare["address"] == hosts.addresses[SPARE], spare
    said = hosts.aiot.run("logs", "node-manager", "--grep", "scale-out").stdout
    assert f"bootstrapping spare host {SPARE} over SSH" in said, said
    model_id = _upload(hosts, tmp_path, "comfort-spare")
    replicas = _replicas(hosts, model_id)
    assert [replica["node_id"] for replica in replicas] == [SPARE], replicas  # the least loaded now
    assert _answers(replicas[0]["url"])["fan_speed"] == 4


def test_the_idle_spare_host_is_drained_and_removed(bootstrapped: tuple[Hosts, float, str]) -> None:
    hosts, _took, _output = bootstrapped
    for name in ("comfort", "comfort-spare"):  # the load goes: every host is idle
        hosts.aiot.run("model", "delete", name, timeout=300)

    def spare_gone() -> bool:
        listed = {node["node_id"] for node in _nodes(hosts)}
        return SPARE not in listed and not host_processes(hosts.roots[SPARE])

    # Once the cooldown after it joined has passed, it is drained and stopped over SSH.
    wait_until(spare_gone, COOLDOWN_S + 120, f"the idle spare host {SPARE} drained and removed")
    # The registry forgets the node just before the node manager logs it: wait for the line.
    wait_until(
        lambda: (
            f"scale-in: node {SPARE} drained and removed"
            in hosts.aiot.run("logs", "node-manager", "--grep", "scale-in").stdout
        ),
        30,
        f"the node manager's log of {SPARE}'s removal",
    )
    assert {node["node_id"] for node in _nodes(hosts)} == set(STARTED)


def test_destroy_leaves_no_process_behind(bootstrapped: tuple[Hosts, float, str]) -> None:
    hosts, _took, _output = bootstrapped
    assert all(host_processes(hosts.roots[name]) for name in STARTED)
    output = hosts.aiot.run("destroy", timeout=300).stdout
    lines = output.splitlines()
    for name in STARTED:
        assert any(line.startswith(f"{name}: stop: stopped agent-{name}") for line in lines), output
    assert f"{SPARE}: stop: nothing was running" in lines, output
    for name, root in hosts.roots.items():

        def gone(root: Path = root) -> bool:
            return not host_processes(root)

        wait_until(gone, 30, f"no process of host {name} left")
