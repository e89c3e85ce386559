"""A platform across three hosts on a three-broker Kafka cluster: a host's network fails, what ran
there moves to the others, and nothing the cluster acknowledged is lost.

The hosts are network namespaces with their own sshd (``tests.fixtures.ssh_hosts``); the
inventory names all three as ``brokers`` (``bootstrapper.cluster``): each runs one Kafka broker
and controller of one KRaft cluster, every topic with three replicas, two in sync. The sample
devices' simulators, a model and an app are placed by load on the hosts other than the main one.
A probe sends numbered records (acks=all) to a topic led by the broker of the host that runs the
model; then that host's veth is taken down: its broker and agent are cut off from the others.
The node manager declares the host down and starts the model, simulators and app instance it ran
on the others, where the model and the app answer; the probe's records keep being acknowledged by
the two brokers left, and every acknowledged one is read back. The host's network comes back
before the destroy.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
import requests
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bootstrapper.cluster import ClusterIdentity, identity_path
from platform_sdk.settings import KafkaSettings, temporary_settings
from tests.fixtures.ssh_hosts import SSH_HOST_MARKS, Hosts, SshLab, host_processes, ip, need_components
from tests.platform_driver import wait_until

pytestmark = SSH_HOST_MARKS
HOSTS = ("a", "b", "c")
NODE_IDS = {"a": 1, "b": 2, "c": 3}  # the brokers' ids: their order in the inventory's brokers
PROBE_TOPIC = "cluster-probe"
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"
SAMPLE_DEVICES = ROOT / "configs" / "devices" / "sample.json"
APP = ROOT / "examples" / "apps" / "smart-home"  # the comfort model and lake-home's devices
SIMULATORS = ("sim-green-school", "sim-lake-home")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hosts, str]]:
    need_components()
    lab = SshLab(tmp_path_factory.mktemp("ssh-cluster"))
    try:
        hosts = lab.start(HOSTS, top={"brokers": list(HOSTS)})
        began = time.monotonic()
        output = hosts.aiot.run(
            "bootstrap", "--provider", "ssh", "--config", str(hosts.inventory), timeout=900
        ).stdout
        print(f"\nbootstrap of three hosts, a broker on each: {time.monotonic() - began:.0f}s")
        yield hosts, output
        for name in HOSTS:  # a host a failed test left cut off
            with contextlib.suppress(Exception):
                ip("link", "set", lab.veth(name), "up")
        hosts.aiot.run("destroy", timeout=300, check=False)
    finally:
        lab.close()


def _client_config(hosts: Hosts) -> dict[str, Any]:
    """The cluster's super user, as the bootstrapping machine keeps it."""
    with temporary_settings({"home": str(hosts.home)}) as settings:
        identity = ClusterIdentity.model_validate_json(identity_path(settings).read_bytes())
    servers = ",".join(f"{hosts.addresses[name]}:9092" for name in HOSTS)
    return {
        "bootstrap.servers": servers,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "admin",
        "sasl.password": identity.admin_password.get_secret_value(),
    }


def _nodes(hosts: Hosts) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(hosts.aiot.run("nodes", "--json").stdout)
    return found


def test_each_host_runs_a_broker_of_one_cluster(cluster: tuple[Hosts, str]) -> None:
    hosts, output = cluster
    for name in HOSTS:
        assert f"{name}: kafka: member started" in output, output
        assert f"{name}: start: started" in output, output
    assert {node["node_id"]: node["reachable"] for node in _nodes(hosts)} == dict.fromkeys(HOSTS, True)
    admin = AdminClient(_client_config(hosts))
    metadata = admin.list_topics(timeout=30)
    assert sorted(metadata.brokers) == sorted(NODE_IDS.values())
    platform = [topic for name, topic in metadata.topics.items() if name.startswith("aiot.")]
    assert platform, sorted(metadata.topics)
    for topic in platform:  # the platform's topics: three replicas each
        assert all(len(partition.replicas) == 3 for partition in topic.partitions.values()), topic.topic


class _Probe:
    """Numbered records sent with acks=all until stopped; ``acked``: the numbers the cluster confirmed."""

    def __init__(self, config: dict[str, Any]) -> None:
        # As the platform's clients: a request to a broker cut off is given up after socket_timeout_ms.
        timeout = KafkaSettings().socket_timeout_ms
        self.producer = confluent_kafka.Producer(
            {
                **config,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "socket.timeout.ms": timeout,
            },
        )
        self.acked: set[int] = set()
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, name="cluster-probe")

    def _delivered(self, error: Any, message: Any) -> None:
        if error is None:
            self.acked.add(int(message.value()))
        else:
            self.failed.append(str(error))

    def _send(self) -> None:
        for number in itertools.count():
            if self._stop.is_set():
                return
            self.producer.produce(PROBE_TOPIC, str(number).encode(), on_delivery=self._delivered)
            self.producer.poll(0.02)

    def __enter__(self) -> _Probe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.flush(120)


def _read_back(config: dict[str, Any]) -> set[int]:
    """Every record of the probe topic, read from the start through the brokers left."""
    consumer = confluent_kafka.Consumer(
        {**config, "group.id": f"probe-{time.time_ns()}", "auto.offset.reset": "earliest"}
    )
    received: set[int] = set()
    try:
        consumer.subscribe([PROBE_TOPIC])
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 15:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            received.add(int(message.value() or b"-1"))
            quiet_since = time.monotonic()
    finally:
        consumer.close()
    return received


def _running(hosts: Hosts) -> dict[str, tuple[str, str]]:
    """service id → (node, URL of its first port) of what runs on the reachable hosts."""
    found = {}
    for node in _nodes(hosts):
        if not node["reachable"]:
            continue
        for service in node["services"]:
            if service["state"] == "running":
                port = next(iter(service["ports"].values()), None)
                found[service["service_id"]] = (node["node_id"], f"http://{node['address']}:{port}")
    return found


def _answers(url: str, path: str = "/predict/predict") -> bool:
    with contextlib.suppress(requests.RequestException, ValueError):
        if path != "/predict/predict":
            return requests.get(f"{url}{path}", timeout=10).ok
        answer = requests.post(
            f"{url}{path}", json={"temperature": 30.0, "humidity": 55.0}, timeout=10
        ).json()
        return bool(answer["fan_speed"] == 4)
    return False


@dataclass
class Spread:
    """What the test placed: the model's id, the app instance's service id, where each ran."""

    model_id: str
    app: str
    nodes: dict[str, str]  # service id → node

    def model(self) -> str:
        return next(service for service in self.nodes if service.startswith(self.model_id))


@pytest.fixture(scope="module")
def spread(cluster: tuple[Hosts, str], tmp_path_factory: pytest.TempPathFactory) -> Spread:
    """The sample devices (two simulators), the comfort model and the smart-home app running."""
    hosts, _output = cluster
    work = tmp_path_factory.mktemp("uploads")
    hosts.aiot.run("device", "add", str(SAMPLE_DEVICES), timeout=120)
    hosts.aiot.run("model", "pack", str(EXAMPLES / "comfort"), "-o", str(work / "comfort.zip"))
    uploaded = hosts.aiot.run("model", "upload", str(work / "comfort.zip"), timeout=600)
    model_id = uploaded.stdout.strip().splitlines()[-1]
    hosts.aiot.run("app", "pack", str(APP), "-o", str(work / "app.zip"))
    hosts.aiot.run("app", "upload", str(work / "app.zip"), timeout=300)
    hosts.aiot.run(
        "schedule", "create", "smart-home", "-l", "lake-home", "--now", "--duration", "30m", "--wait",
        timeout=400,
    )  # fmt: skip
    instances = json.loads(hosts.aiot.run("instance", "list", "--json").stdout)
    app = next(f"app-{item['instance_id']}" for item in instances if item["status"] == "running")
    wanted = [*SIMULATORS, app]

    def all_running() -> bool:
        running = _running(hosts)
        return all(name in running for name in wanted) and any(s.startswith(model_id) for s in running)

    wait_until(all_running, 120, "the simulators, the model and the app running")
    nodes = {service: node for service, (node, _url) in _running(hosts).items()}
    placed = {
        service: node for service, node in nodes.items() if service in wanted or service.startswith(model_id)
    }
    return Spread(model_id, app, placed)


def test_simulators_models_and_apps_are_placed_on_the_hosts_by_load(spread: Spread) -> None:
    print(f"\nplaced: {spread.nodes}")
    assert "a" not in spread.nodes.values(), spread.nodes  # the main host runs the core services
    assert set(spread.nodes.values()) == {"b", "c"}, spread.nodes


def test_a_host_cut_off_loses_nothing_acknowledged_and_its_services_move(
    cluster: tuple[Hosts, str], spread: Spread
) -> None:
    hosts, _output = cluster
    lost = spread.nodes[spread.model()]
    moving = sorted(service for service, node in spread.nodes.items() if node == lost)
    config = _client_config(hosts)
    admin = AdminClient(config)
    # Led by the lost host's broker (preferred leader first): cutting it off moves its leadership.
    replicas = [NODE_IDS[lost], *(NODE_IDS[name] for name in HOSTS if name != lost)]
    created = admin.create_topics(
        [NewTopic(PROBE_TOPIC, 1, replica_assignment=[replicas], config={"min.insync.replicas": "2"})]
    )
    created[PROBE_TOPIC].result(60)

    with _Probe(config) as probe:
        wait_until(lambda: len(probe.acked) >= 200, 60, "the probe's first records acknowledged")
        ip("link", "set", hosts.lab.veth(lost), "down")
        cut = time.monotonic()
        acked_at_cut = len(probe.acked)

        def moved_and_answering() -> bool:
            running = _running(hosts)
            if any(running.get(service, (lost, ""))[0] == lost for service in moving):
                return False
            model = next((url for s, (_n, url) in running.items() if s.startswith(spread.model_id)), None)
            app = running.get(spread.app)
            return model is not None and _answers(model) and app is not None and _answers(app[1], "/health")

        wait_until(
            moved_and_answering, 240, f"{', '.join(moving)} moved off {lost}, the model and app answering"
        )
        took = time.monotonic() - cut
        print(f"\n{', '.join(moving)} running elsewhere {took:.1f}s after {lost} was cut off")
        wait_until(
            lambda: len(probe.acked) >= acked_at_cut + 200,
            120,
            "records acknowledged by the two brokers left",
        )
        print(f"records acknowledged again {time.monotonic() - cut:.1f}s after the cut")
        said = hosts.aiot.run("logs", "node-manager", check=False).stdout.splitlines()
        words = ("down", "moved", "moving", "scale")
        print("\n".join(line for line in said if any(word in line for word in words))[-3000:])
    assert not probe.failed, probe.failed[:5]
    received = _read_back(config)
    missing = probe.acked - received
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {sorted(missing)[:10]}"
    print(f"{len(probe.acked)} records acknowledged, every one read back")
    statuses = {node["node_id"]: node["reachable"] for node in _nodes(hosts)}
    assert statuses == {name: name != lost for name in HOSTS}, statuses
    instances = json.loads(hosts.aiot.run("instance", "list", "--json").stdout)
    running = [item for item in instances if item["status"] == "running"]
    assert [item["node_id"] for item in running] != [lost], running
    ip("link", "set", hosts.lab.veth(lost), "up")
    assert all(host_processes(hosts.roots[name]) for name in HOSTS)
