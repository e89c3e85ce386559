"""A platform on a three-broker Kafka cluster loses a broker mid-traffic and loses nothing.

Three Apache Kafka processes on loopback form one KRaft cluster (``KafkaCluster``); a
platform runs on it (``aiot up`` with ``AIOT_KAFKA__BOOTSTRAP_SERVERS``), its topics with
three replicas and ``min.insync.replicas=2``. While simulated sensors stream, a probe sends
numbered readings through the SDK's producer (acks=all) and reads them back through an
app's sensor stream, and a model is being deployed, one broker (the probe's partition
leader) is killed with SIGKILL. The deploy completes, the model answers, the sensors keep
streaming, and every reading the cluster acknowledged arrives. The killed broker is then
started again on its log dir and rejoins: every partition is back to three in-sync replicas.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from bootstrapper.kafka import KafkaBroker, KafkaCluster, jars_dir, jars_ready, java_ok
from platform_sdk.bus import Bus, Producer
from platform_sdk.device_documents import Binding, DeviceType
from platform_sdk.device_messages import Reading
from platform_sdk.devices import DeviceClient, SensorData, SensorStream
from platform_sdk.errors import PlatformError, Unavailable
from platform_sdk.model_client import ModelClient
from platform_sdk.settings import KafkaSettings, Settings, temporary_settings
from tests.conftest import missing_component
from tests.fixtures.components import kafka_env, kafka_updates
from tests.platform_driver import AIOT, TEST_BROKER_JIT, Platform, platform_services, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.service("kafka"), pytest.mark.timeout(540)]
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "configs" / "devices" / "sample.json"
COMFORT = ROOT / "examples" / "models" / "comfort"
SENSORS = ("home-temp", "school-temp", "school-light")
HOSTS = ("sim-green-school", "sim-lake-home")  # each location's simulated devices play in one service
PROBE = "cluster-probe"
REPLICAS = 3
MIN_INSYNC = 2
START_TIMEOUT_S = 120.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KafkaCluster]:
    """Three Kafka processes (broker and controller each) on loopback, one KRaft cluster."""
    kafka = KafkaCluster(tmp_path / "kafka", size=3, kafka=KafkaSettings(jit=TEST_BROKER_JIT))
    if not java_ok(kafka.kafka):
        missing_component("kafka", f"Apache Kafka needs Java 17+ ('{kafka.kafka.java}' is missing or older)")
    if not jars_ready(kafka.kafka):
        missing_component(
            "kafka", f"the Apache Kafka jars are not in {jars_dir(kafka.kafka)} (`aiot broker fetch`)"
        )
    kafka.start(timeout=START_TIMEOUT_S)  # three JVMs at once: a busy machine takes a while
    try:
        yield kafka
    finally:
        # All at once: stopped one by one, the last two would wait out their grace for a quorum.
        for broker in kafka.brokers:
            if broker.running():
                broker.kill(signal.SIGTERM)
        kafka.stop()


@pytest.fixture
def platform(cluster: KafkaCluster, tmp_path: Path) -> Iterator[Platform]:
    """`aiot up --nodes 2` on the cluster: it starts no broker, its topics have 3 replicas, 2 in sync."""
    running = Platform(tmp_path / "home")
    running.env.update(
        {
            **kafka_env(cluster),
            "AIOT_KAFKA__REPLICATION_FACTOR": str(REPLICAS),
            "AIOT_KAFKA__MIN_INSYNC_REPLICAS": str(MIN_INSYNC),
            # Three brokers and a platform on one (shared, often busy) machine: a restarted service
            # may take longer than the default 10 s to beat, and must not be restarted meanwhile.
            "AIOT_MONITOR__START_GRACE_S": "30",
        }
    )
    try:
        began = time.monotonic()
        running.up("--nodes", "2")
        print(f"\nplatform up on the cluster in {time.monotonic() - began:.1f}s")
        yield running
    finally:
        running.down()


@pytest.fixture
def client_settings(platform: Platform, cluster: KafkaCluster) -> Iterator[Settings]:
    """The test's own clients: the platform's home, prefix and topic settings, on the cluster."""
    with temporary_settings(
        {
            "home": str(platform.home),
            **kafka_updates(cluster),
            "kafka.topic_prefix": "aiot",
            "kafka.replication_factor": REPLICAS,
            "kafka.min_insync_replicas": MIN_INSYNC,
        }
    ) as settings:
        yield settings


class Probe:
    """Numbered readings sent with acks=all through the SDK's producer, read back by an app's stream.

    ``acked`` holds the numbers whose delivery the cluster reported, ``arrived`` those the
    stream (a consumer group, as apps read sensors) received; redeliveries count once.
    """

    def __init__(self, bus: Bus, interval_s: float = 0.01) -> None:
        self.bus = bus
        self.topic = bus.topics.device_data(PROBE)
        self.interval_s = interval_s
        self.sent = 0
        self.acked: set[int] = set()
        self.failed: set[int] = set()
        self.arrived: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: SensorStream | None = None
        self._producer: Producer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stream = SensorStream(self.bus, self.topic, PROBE, group="cluster-probe", callback=self._arrive)
        self._stream.start()
        self._producer = self.bus.producer()
        self._thread = threading.Thread(target=self._send, name="test-probe-producer")
        self._thread.start()

    def counts(self) -> tuple[int, int]:
        """(acknowledged, arrived) so far."""
        with self._lock:
            return len(self.acked), len(self.arrived)

    def _arrive(self, data: SensorData) -> None:
        with self._lock:
            self.arrived.add(data.seq)

    def _report(self, seq: int, delivered: bool) -> None:
        with self._lock:
            (self.acked if delivered else self.failed).add(seq)

    def _send(self) -> None:
        producer = self._producer
        assert producer is not None
        seq = 0
        while not self._stop.is_set():
            reading = Reading(device_id=PROBE, seq=seq, values={"n": seq})
            try:
                producer.send(self.topic, reading, key=PROBE, on_delivery=partial(self._report, seq))
            except Unavailable:  # the local queue is full while the cluster elects: wait, then go on
                producer.poll(0.1)
                continue
            seq += 1
            self.sent = seq
            producer.poll(self.interval_s)

    def stop_sending(self, timeout: float = 60.0) -> int:
        """Stop the sender and wait for the outstanding delivery reports; how many are still open."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._producer is None:
            return 0
        return self._producer.flush(timeout)

    def close(self) -> None:
        self.stop_sending(10.0)
        if self._stream is not None:
            self._stream.stop()
            self._stream = None


class SensorWatch:
    """The simulators' readings as an app sees them: per device, when each arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[tuple[int, float]]] = {device: [] for device in SENSORS}
        self._lock = threading.Lock()

    def __call__(self, data: SensorData) -> None:
        with self._lock:
            self.arrivals[data.device_id].append((data.seq, time.monotonic()))

    def gaps(self) -> dict[str, list[tuple[int, int]]]:
        """Per device, consecutive readings with numbers skipped between them (a restart starts at 0)."""
        with self._lock:
            found = {
                device: [(a, b) for (a, _), (b, _) in itertools.pairwise(seen) if b > a + 1]
                for device, seen in self.arrivals.items()
            }
        return {device: pairs for device, pairs in found.items() if pairs}

    def since(self, moment: float) -> dict[str, int]:
        """Readings of each device that arrived after ``moment``."""
        with self._lock:
            return {
                device: sum(1 for _seq, at in seen if at > moment) for device, seen in self.arrivals.items()
            }


def register_sensors(platform: Platform, folder: Path) -> dict[str, Binding]:
    """The sample's types and locations and its sensors ``SENSORS``, registered; their bindings."""
    sample = json.loads(SAMPLE.read_text())
    sample["devices"] = [device for device in sample["devices"] if device["name"] in SENSORS]
    document = folder / "sensors.json"
    document.write_text(json.dumps(sample))
    platform.run("device", "add", str(document))
    types = {kind["name"]: DeviceType.model_validate(kind) for kind in sample["device_types"]}
    for host in HOSTS:
        wait_until(partial(_running, platform, host), 60, f"the simulator host {host} running")
    return {
        device["name"]: Binding(device_id=device["name"], type=types[device["type"]])
        for device in sample["devices"]
    }


def _running(platform: Platform, service_id: str) -> bool:
    service = platform.service(service_id)
    return service is not None and service["state"] == "running"


def _all_running(platform: Platform, wanted: set[str]) -> bool:
    running = {s["service_id"] for s in platform.status()["services"] if s["state"] == "running"}
    return wanted <= running


def partitions(admin: AdminClient) -> dict[str, Any]:
    """Every partition of the cluster by ``topic[n]``: its metadata (leader, replicas, isrs)."""
    metadata = admin.list_topics(timeout=5)
    return {
        f"{name}[{number}]": partition
        for name, topic in metadata.topics.items()
        for number, partition in topic.partitions.items()
    }


def out_of_sync(admin: AdminClient) -> list[str]:
    """Partitions with fewer in-sync replicas than replicas (empty when the metadata cannot be read)."""
    try:
        found = partitions(admin)
    except confluent_kafka.KafkaException:
        return ["(no metadata)"]
    return sorted(name for name, partition in found.items() if len(partition.isrs) < len(partition.replicas))


def holds(condition: Callable[[], bool]) -> Callable[[], bool]:
    """``condition``, with a platform or Kafka error counting as not yet."""

    def check() -> bool:
        try:
            return condition()
        except (PlatformError, confluent_kafka.KafkaException, AssertionError):
            return False

    return check


def test_a_killed_broker_loses_nothing_acknowledged_and_rejoins(
    cluster: KafkaCluster, platform: Platform, client_settings: Settings, tmp_path: Path
) -> None:
    bindings = register_sensors(platform, tmp_path)
    bus = Bus(client_settings, source="test-cluster")
    admin = bus.admin()
    watch = SensorWatch()
    probe = Probe(bus)
    with contextlib.ExitStack() as stack:
        devices = stack.enter_context(DeviceClient(bus, bindings, group="cluster-watch"))
        devices.sensor_streams(SENSORS, watch)
        stack.callback(probe.close)
        probe.start()
        wait_until(lambda: min(probe.counts()) >= 100, 60, "the probe's first readings acknowledged and read")
        wait_until(lambda: min(watch.since(0).values()) >= 1, 30, "a reading from every simulator")
        assert_replicated(admin, probe.topic)

        upload, model_id = start_upload(platform, stack, tmp_path / "upload.err")
        leader = partitions(admin)[f"{probe.topic}[0]"].leader
        victim: KafkaBroker = next(broker for broker in cluster.brokers if broker.node_id == leader)
        acked_before = probe.counts()[0]
        victim.kill(signal.SIGKILL)
        killed, killed_at = time.monotonic(), datetime.now(UTC)
        print(f"broker {leader} (the probe's leader) killed mid-deploy; {acked_before} readings acknowledged")

        assert upload.wait(240) == 0, f"the deploy failed:\n{(tmp_path / 'upload.err').read_text()}"
        print(f"the deploy finished {time.monotonic() - killed:.1f}s after the kill")
        shown = platform.json("model", "show", model_id)
        assert isinstance(shown, dict)
        stages = {stage["stage"]: stage["at"] for stage in shown["versions"][0]["deployment"]["stages"]}
        assert datetime.fromisoformat(stages["deployed"]) > killed_at, "the deploy was under way at the kill"
        with ModelClient.from_settings(client_settings) as models:
            wait_until(holds(partial(_comfort_answers, models)), 60, "the deployed model answering a call")
        wait_until(
            lambda: probe.counts()[0] >= acked_before + 500, 90, "readings acknowledged after the kill"
        )
        wait_until(
            lambda: min(watch.since(killed).values()) >= 3, 60, "every simulator streaming after the kill"
        )
        print(
            f"after the kill: {probe.counts()[0] - acked_before} more readings acknowledged, "
            f"simulators {watch.since(killed)}"
        )

        began = time.monotonic()
        cluster.restart(victim, timeout=START_TIMEOUT_S)
        wait_until(lambda: not out_of_sync(admin), 120, "every partition back to 3 in-sync replicas")
        print(f"broker {leader} restarted; every partition in sync after {time.monotonic() - began:.1f}s")

        assert probe.stop_sending() == 0, "readings left without a delivery report"
        assert probe.failed == set(), f"{len(probe.failed)} readings failed"
        assert len(probe.acked) == probe.sent
        wait_until(lambda: probe.acked <= probe.arrived, 60, "every acknowledged reading arrived")
        print(f"{probe.sent} readings sent, all acknowledged, all arrived")
        assert watch.gaps() == {}, "a simulator's readings went missing"

    # The platform still runs all of itself: its services, the simulators and the replica.
    wanted = platform_services() | set(HOSTS) | {f"{model_id}-v1.0.0-r0"}
    wait_until(partial(_all_running, platform, wanted), 60, "every service of the platform running")
    restarts = {s["service_id"]: s["restarts"] for s in platform.status()["services"] if s["restarts"]}
    print(f"services restarted during the test: {restarts or 'none'}")


def assert_replicated(admin: AdminClient, topic: str) -> None:
    """Every platform topic has three replicas, and ``topic`` needs two of them for a write."""
    ours = {name: p for name, p in partitions(admin).items() if name.startswith("aiot.")}
    assert ours
    assert {name: len(p.replicas) for name, p in ours.items()} == dict.fromkeys(ours, REPLICAS)
    described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    configs = next(iter(described.values())).result(10)
    assert configs["min.insync.replicas"].value == str(MIN_INSYNC)


def start_upload(
    platform: Platform, stack: contextlib.ExitStack, errors: Path
) -> tuple[subprocess.Popen[str], str]:
    """`aiot model upload` of the comfort model, once it printed the model id (the deploy runs)."""
    upload = subprocess.Popen(
        [*AIOT, "model", "upload", str(COMFORT), "--timeout", "180"],
        env=platform.env,
        stdout=subprocess.PIPE,
        stderr=stack.enter_context(errors.open("w")),
        text=True,
    )
    stack.callback(_reap, upload)
    assert upload.stdout is not None
    model_id = upload.stdout.readline().strip()
    assert model_id.startswith("m"), f"no model id from the upload: {model_id!r}"
    return upload, model_id


def _comfort_answers(models: ModelClient) -> bool:
    answer = models.call("comfort", "predict", {"temperature": 30.0, "humidity": 55.0})
    return bool(answer["fan_speed"] == 4 and answer["ac_on"])


def _reap(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()
