"""Raw bus clients for tests that check what the broker lets a principal do."""

from __future__ import annotations

import time
from typing import Any

import confluent_kafka

from platform_sdk.envelope import Envelope


def produce(config: dict[str, Any], topic: str, envelope: Envelope) -> confluent_kafka.KafkaError | None:
    """Send one record with a raw client of ``config``; the delivery error (None: delivered)."""
    outcome: list[confluent_kafka.KafkaError | None] = []
    producer = confluent_kafka.Producer({**config, "message.timeout.ms": 6000})
    value, headers = envelope.to_kafka()
    producer.produce(topic, value, headers=list(headers), on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(15)
    assert outcome, "the producer reported nothing"
    return outcome[0]


def unauthorized(error: confluent_kafka.KafkaError | None) -> bool:
    return error is not None and error.code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED


def read_error(config: dict[str, Any], topic: str, group: str) -> confluent_kafka.KafkaError | None:
    """What reading ``topic`` from its start with a raw client of ``config`` (assign-only, in
    ``group``) runs into; None: it read a record. A topic it may not even describe is refused in
    the metadata already (a fetch of it then reports nothing)."""
    consumer = confluent_kafka.Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        described: confluent_kafka.KafkaError | None = (
            consumer.list_topics(topic, timeout=10).topics[topic].error
        )
        if described is not None:
            return described
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error: confluent_kafka.KafkaError | None = message.error()
            return error
        raise AssertionError(f"reading {topic} neither succeeded nor failed")
    finally:
        consumer.close()
