"""Apache Kafka as `aiot up` starts it: its log dir, and the JVM options the settings choose.

The log dir is formatted whatever its random cluster id looks like.

A KRaft cluster id is 22 URL-safe base64 characters, so one in 64 begins with ``-``; the
storage tool took such an id for an option and ``aiot up`` failed. Both a leading ``-`` and
a leading ``_`` are formatted, and the log dir records the id given.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest

from bootstrapper.kafka import GC_FLAGS, KafkaBroker, Voter, jars_dir, jars_ready, java_ok, new_cluster_id
from platform_sdk.settings import KafkaSettings
from tests.conftest import missing_component

pytestmark = pytest.mark.service("kafka")


@pytest.mark.parametrize("first", ["-", "_"])
def test_a_cluster_id_that_looks_like_an_option_is_formatted(tmp_path: Path, first: str) -> None:
    cluster_id = first + new_cluster_id()[1:]
    broker = KafkaBroker(tmp_path / "kafka", cluster_id=cluster_id)
    if not java_ok(broker.kafka):
        missing_component("kafka", f"Apache Kafka needs Java 17+ ('{broker.kafka.java}')")
    if not jars_ready(broker.kafka):
        missing_component("kafka", f"the Apache Kafka jars are not in {jars_dir(broker.kafka)}")
    broker.prepare()
    meta = (broker.data_dir / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}\n" in meta


@pytest.mark.parametrize("gc", sorted(GC_FLAGS))
def test_every_garbage_collector_the_settings_offer_runs_on_this_java(tmp_path: Path, gc: str) -> None:
    settings = KafkaSettings.model_validate({"gc": gc})
    broker = KafkaBroker(tmp_path / "kafka", settings)
    if not java_ok(broker.kafka):
        missing_component("kafka", f"Apache Kafka needs Java 17+ ('{broker.kafka.java}')")
    command = broker.command()
    assert GC_FLAGS[gc] in command
    # The JVM refuses a collector it was built without (some builds lack Shenandoah).
    java = subprocess.run(
        [command[0], GC_FLAGS[gc], "-version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert java.returncode == 0, java.stderr


def test_a_lone_broker_outlasts_a_pause_and_a_cluster_member_keeps_kafkas_session(tmp_path: Path) -> None:
    """Alone, the broker's own controller fenced it when the process continued after a pause of
    more than Kafka's 9 s session (seen after the chaos test's 20 s SIGSTOP on a busy machine: every
    partition without a leader, model replicas' and apps' heartbeats reaching nobody for 15 s and
    more). A lone broker now takes ``kafka.lone_broker_session_ms``; a cluster's member keeps 9 s,
    how soon a lost broker's partitions move to the others."""
    settings = KafkaSettings.model_validate({"lone_broker_session_ms": 45_000})
    lone = KafkaBroker(tmp_path / "lone", settings).properties()
    assert lone["broker.session.timeout.ms"] == "45000"
    voters = [Voter(1, 9001, 9101), Voter(2, 9002, 9102), Voter(3, 9003, 9103)]
    member = KafkaBroker(tmp_path / "member", settings, node_id=2, voters=voters).properties()
    assert "broker.session.timeout.ms" not in member


def test_the_default_broker_compiles_with_c2_and_the_tests_quick_one_with_c1_only(tmp_path: Path) -> None:
    """The default JIT is the JVM's full tiered one (C1 only cost the device path's tail twice
    over, docs/benchmarks.md); "quick" stops at C1. Either JVM command line runs on this Java: the
    native-heap trim is skipped by a JVM that lacks it."""
    default = KafkaBroker(tmp_path / "default", KafkaSettings())
    quick = KafkaBroker(tmp_path / "quick", KafkaSettings(jit="quick"))
    if not java_ok(default.kafka):
        missing_component("kafka", f"Apache Kafka needs Java 17+ ('{default.kafka.java}')")
    assert not any(flag.startswith("-XX:TieredStopAtLevel") for flag in default.command())
    assert "-XX:TieredStopAtLevel=1" in quick.command()
    for broker in (default, quick):
        command = broker.command()
        options = command[: command.index("-cp")]
        assert "-XX:TrimNativeHeapInterval=5000" in options
        java = subprocess.run([*options, "-version"], capture_output=True, text=True, timeout=60, check=False)
        assert java.returncode == 0, java.stderr


def test_the_broker_runs_with_two_malloc_arenas(kafka_broker: KafkaBroker) -> None:
    """As every Python process of the platform (``PROCESS_ENVIRONMENT``): the JVM's many threads'
    native buffers otherwise stay resident in up to eight arenas per core."""
    assert kafka_broker.pid is not None
    assert psutil.Process(kafka_broker.pid).environ().get("MALLOC_ARENA_MAX") == "2"
