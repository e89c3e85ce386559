"""`aiot bootstrap --provider ssh` on three genuine hosts: network namespaces, each with its own sshd.

The module's hosts: three network namespaces joined by veth pairs to a bridge in the root
namespace (10.X.Y.0/24, the bridge .1, the hosts .11-.13), each running its own sshd with a
generated host key and one user key; a and b are reached as root, c as an admin user through
passwordless sudo (as an Azure VM's). The shared bucket the hosts' agents fetch bundles from is
an Azurite on the bridge's address (several hosts need one: ``bootstrapper.remote``). The
platform is bootstrapped once per module (the first test times it) and destroyed at the end;
namespaces, bridge, sshds and install roots go whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.conftest import missing_component
from tests.fixtures.azurite import ACCOUNT, ACCOUNT_KEY, find_azurite
from tests.fixtures.sudo_user import admin_user, need_sudo
from tests.platform_driver import Platform, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.service("sshd"),
    pytest.mark.service("kafka"),
    pytest.mark.service("azurite"),
    pytest.mark.timeout(900),
]
SSHD = "/usr/sbin/sshd"
HOSTS = ("a", "b", "c")
# Host c is reached as an admin user through passwordless sudo, as an Azure VM is; a and b as root.
ADMIN_USER = "aiot-test-admin"
USERS = {"c": ADMIN_USER}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _wait_port(address: str, port: int, timeout: float) -> None:
    def answers() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            return True
        return False

    wait_until(answers, timeout, f"{address}:{port} answering")


@dataclass
class Hosts:
    """The namespace hosts, their inventory and the control machine's home."""

    inventory: Path
    home: Path
    roots: dict[str, Path]
    addresses: dict[str, str]
    user_key: Path
    aiot: Platform


class _Lab:
    """Creates the namespaces, bridge, sshds and Azurite; ``close`` removes every one of them."""

    def __init__(self, work: Path) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.subnet = f"10.{random.randint(100, 250)}.{random.randint(1, 250)}"
        self.work = work
        self.bridge = f"aiotbr{self.tag}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.install = Path(f"/tmp/aiot-ssh-{self.tag}")
        self.forward: list[str] = []
        self.users = contextlib.ExitStack()

    def namespace(self, name: str) -> str:
        return f"aiot-{self.tag}-{name}"

    def start(self) -> Hosts:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        # Docker's FORWARD policy (DROP) also filters bridged traffic: let the hosts reach each other.
        if shutil.which("iptables"):
            rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
            subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
            self.forward = rule
        keys = self.work / "keys"
        keys.mkdir()
        user_key = keys / "user"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(user_key)], check=True)
        self.install.mkdir(mode=0o755)
        self.install.chmod(0o755)
        # sshd reads it as the user logging in (host c's admin user too): in a folder others can enter.
        authorized = self.install / "authorized_keys"
        shutil.copy(keys / "user.pub", authorized)
        authorized.chmod(0o644)
        self.users.enter_context(admin_user(ADMIN_USER))
        addresses, roots = {}, {}
        Path("/run/sshd").mkdir(exist_ok=True)
        for index, name in enumerate(HOSTS):
            namespace = self.namespace(name)
            address = f"{self.subnet}.{11 + index}"
            outer, inner = f"v{self.tag}{name}", f"v{self.tag}{name}p"
            _ip("netns", "add", namespace)
            self.namespaces.append(namespace)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", namespace)
            _ip("link", "set", outer, "master", self.bridge, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "link", "set", inner, "name", "eth0")
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            # No default route: the hosts reach their subnet only, and a DNS query (Kafka's SASL looks
            # its peers' names up) fails at once instead of waiting for a resolver it cannot reach.
            host_key = keys / f"host-{name}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
            log = open(self.work / f"sshd-{name}.log", "ab")  # noqa: SIM115  # the child holds it
            self.processes.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        namespace,
                        SSHD,
                        "-D",
                        "-e",
                        "-p",
                        "22",
                        "-o",
                        f"ListenAddress={address}",
                        "-h",
                        str(host_key),
                        "-o",
                        f"AuthorizedKeysFile={authorized}",
                        "-o",
                        "StrictModes=no",
                        "-o",
                        f"PidFile={self.work / f'sshd-{name}.pid'}",
                        "-o",
                        "PermitRootLogin=prohibit-password",
                        "-o",
                        "UsePAM=no",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
            addresses[name] = address
            roots[name] = self.install / name
        for address in addresses.values():
            _wait_port(address, 22, 20)
        bucket = self._azurite()
        home = self.work / "control-home"
        home.mkdir()
        inventory = self.work / "inventory.json"
        inventory.write_text(
            json.dumps(
                {
                    "main": "a",
                    "hosts": [
                        {
                            "name": name,
                            "address": addresses[name],
                            "user": USERS.get(name, "root"),
                            "key_file": str(user_key),
                            "python": "/usr/bin/python3",
                            "root": str(roots[name]),
                        }
                        for name in HOSTS
                    ],
                    "settings": {"blob": {"backend": "azure", "azure_connection_string": bucket}},
                }
            )
        )
        return Hosts(inventory, home, roots, addresses, user_key, Platform(home))

    def _azurite(self) -> str:
        binary = find_azurite()
        assert binary is not None
        address = f"{self.subnet}.1"
        data = self.work / "azurite"
        data.mkdir()
        log = open(self.work / "azurite.log", "ab")  # noqa: SIM115
        self.processes.append(
            subprocess.Popen(
                [
                    binary,
                    "--blobHost",
                    address,
                    "--blobPort",
                    "10000",
                    "--location",
                    str(data),
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--silent",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()
        _wait_port(address, 10000, 30)
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://{address}:10000/{ACCOUNT};"
        )

    def close(self) -> None:
        for namespace in self.namespaces:  # whatever still runs in a host: its sshd, a platform left over
            pids = subprocess.run(
                ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
            ).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM) if os.getpgid(
                    process.pid
                ) == process.pid else process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()
                process.wait()
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        if self.forward:
            subprocess.run(["iptables", "-D", *self.forward], capture_output=True, check=False)
        shutil.rmtree(self.install, ignore_errors=True)
        self.users.close()


def _components() -> None:
    if not Path(SSHD).is_file():
        missing_component("sshd", f"{SSHD} is missing (apt-get install -y openssh-server)")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or os.geteuid() != 0:
        missing_component("sshd", "network namespaces need root and iproute2 (`ip netns`)")
    if find_azurite() is None:
        missing_component("azurite", "azurite-blob is not installed (npm install)")
    need_sudo()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    _components()
    lab = _Lab(tmp_path_factory.mktemp("ssh-hosts"))
    try:
        found = lab.start()
        yield found
        found.aiot.run("destroy", "--config", str(found.inventory), check=False, timeout=300)
    finally:
        lab.close()


@pytest.fixture(scope="module")
def bootstrapped(hosts: Hosts) -> tuple[Hosts, float, str]:
    began = time.monotonic()
    result = hosts.aiot.run("bootstrap", "--provider", "ssh", "--config", str(hosts.inventory), timeout=900)
    return hosts, time.monotonic() - began, result.stdout


def _host_processes(root: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            if process.environ().get("AIOT_HOME", "").startswith(str(root)):
                found.append(process)
    return found


def test_bootstrap_brings_up_three_hosts(bootstrapped: tuple[Hosts, float, str]) -> None:
    hosts, took, output = bootstrapped
    print(f"\nbootstrap of three hosts: {took:.0f}s")
    for name in HOSTS:
        assert f"{name}: start: started" in output, output
    nodes = json.loads(hosts.aiot.run("nodes", "--json").stdout)
    assert {node["node_id"]: node["reachable"] for node in nodes} == dict.fromkeys(HOSTS, True)
    main = next(node for node in nodes if node["main"])
    assert main["node_id"] == "a"
    assert {"node-manager", "heartbeat", "web"} <= {s["service_id"] for s in main["services"]}


def test_a_model_runs_on_another_host_and_answers(
    bootstrapped: tuple[Hosts, float, str], tmp_path: Path
) -> None:
    hosts, _took, _output = bootstrapped
    archive = tmp_path / "comfort.zip"
    hosts.aiot.run("model", "pack", str(EXAMPLES / "comfort"), "-o", str(archive))
    uploaded = hosts.aiot.run("model", "upload", str(archive), timeout=600)
    model_id = uploaded.stdout.strip().splitlines()[-1]
    assert model_id.startswith("m"), uploaded.stdout
    nodes = json.loads(hosts.aiot.run("nodes", "--json").stdout)
    replicas = [
        (node, service)
        for node in nodes
        for service in node["services"]
        if service["service_id"].startswith(model_id) and service["state"] == "running"
    ]
    assert replicas, nodes
    assert all(not node["main"] for node, _service in replicas), "the replica runs on the main host"
    node, service = replicas[0]
    port = next(iter(service["ports"].values()))
    answer: dict[str, Any] = requests.post(
        f"http://{node['address']}:{port}/predict/predict",
        json={"temperature": 30.0, "humidity": 55.0},
        timeout=30,
    ).json()
    assert answer["fan_speed"] == 4


def test_a_second_bootstrap_changes_nothing(bootstrapped: tuple[Hosts, float, str]) -> None:
    hosts, _took, _output = bootstrapped
    output = hosts.aiot.run(
        "bootstrap", "--provider", "ssh", "--config", str(hosts.inventory), timeout=600
    ).stdout
    lines = output.splitlines()
    for name in HOSTS:
        for step in ("upload", "install", "start"):
            said = [line for line in lines if line.startswith(f"{name}: {step}: ")]
            assert said, output
            assert all("unchanged" in line for line in said), output
    assert " written" not in output, output


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


def test_destroy_leaves_no_process_behind(bootstrapped: tuple[Hosts, float, str]) -> None:
    hosts, _took, _output = bootstrapped
    assert all(_host_processes(root) for root in hosts.roots.values())
    output = hosts.aiot.run("destroy", timeout=300).stdout
    lines = output.splitlines()
    for name in HOSTS:
        assert any(line.startswith(f"{name}: stop: stopped agent-{name}") for line in lines), output
    for name, root in hosts.roots.items():

        def gone(root: Path = root) -> bool:
            return not _host_processes(root)

        wait_until(gone, 30, f"no process of host {name} left")
