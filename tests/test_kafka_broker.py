"""Apache Kafka's log dir is formatted whatever its random cluster id looks like.

A KRaft cluster id is 22 URL-safe base64 characters, so one in 64 begins with ``-``; the
storage tool took such an id for an option and ``aiot up`` failed. Both a leading ``-`` and
a leading ``_`` are formatted, and the log dir records the id given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrapper.kafka import KafkaBroker, jars_dir, jars_ready, java_ok, new_cluster_id
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
