"""The SDK inside a managed process: heartbeats at their interval, log shipping that never blocks."""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Iterator

import pytest

from platform_sdk.bus import Bus, ConsumerLoop
from platform_sdk.heartbeat import HeartbeatClient
from platform_sdk.log import KafkaLogHandler
from platform_sdk.messages import Heartbeat, LogRecord
from platform_sdk.net import free_port
from platform_sdk.runtime import PlatformRuntime
from platform_sdk.settings import Settings, temporary_settings
from tests.test_bus import wait_for


@pytest.fixture
def heartbeats(kafka_settings: Settings) -> Iterator[list[tuple[float, Heartbeat]]]:
    """Heartbeats as they arrive, with the time their sender stamped on them (seconds)."""
    bus = Bus(kafka_settings, source="watcher")
    beats: list[tuple[float, Heartbeat]] = []
    loop = ConsumerLoop(bus, [bus.topics.heartbeats], group=None)
    loop.add_handler(Heartbeat, lambda beat, envelope: beats.append((envelope.time.timestamp(), beat)))
    loop.start()
    yield beats
    loop.stop()


@pytest.fixture
def log_records(kafka_settings: Settings) -> Iterator[list[LogRecord]]:
    bus = Bus(kafka_settings, source="watcher")
    records: list[LogRecord] = []
    loop = ConsumerLoop(bus, [bus.topics.logs], group=None)
    loop.add_handler(LogRecord, lambda record, _envelope: records.append(record))
    loop.start()
    yield records
    loop.stop()


@pytest.mark.service("kafka")
def test_heartbeats_arrive_at_the_configured_interval(
    kafka_settings: Settings, heartbeats: list[tuple[float, Heartbeat]]
) -> None:
    client = HeartbeatClient(Bus(kafka_settings, source="svc-a"), interval_s=0.2)
    client.start()
    try:
        wait_for(lambda: len(heartbeats) >= 11, what="eleven heartbeats")
    finally:
        client.stop()
    beats = [beat for _, beat in heartbeats]
    assert {beat.service_id for beat in beats} == {"svc-a"}
    assert [beat.seq for beat in beats[:11]] == list(range(11))
    assert beats[0].interval_s == 0.2
    # Spacing as sent: a busy consumer may receive several at once, which says nothing of the client.
    sent = [stamped for stamped, _ in heartbeats[:11]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert 0.15 < statistics.median(gaps) < 0.3


@pytest.mark.service("kafka")
def test_heartbeat_thread_is_named_and_stops(kafka_settings: Settings) -> None:
    import threading

    client = HeartbeatClient(Bus(kafka_settings, source="svc-b"), interval_s=60)
    client.start()
    names = [thread.name for thread in threading.enumerate()]
    client.stop()
    assert "aiot-heartbeat-svc-b" in names
    assert "aiot-heartbeat-svc-b" not in [thread.name for thread in threading.enumerate()]


@pytest.mark.service("kafka")
def test_runtime_ships_structured_records_and_heartbeats(
    kafka_settings: Settings, log_records: list[LogRecord], heartbeats: list[tuple[float, Heartbeat]]
) -> None:
    with PlatformRuntime(kafka_settings, service_id="model-7"):
        logger = logging.getLogger("tests.shipping")
        logger.warning("disk at %d%%", 91)
        try:
            raise KeyError("gone")
        except KeyError:
            logger.exception("lookup failed")
        wait_for(lambda: len(log_records) >= 2 and heartbeats != [], what="records and a heartbeat")
    warning = next(record for record in log_records if record.message == "disk at 91%")
    assert (warning.service_id, warning.level, warning.logger) == ("model-7", "WARNING", "tests.shipping")
    failure = next(record for record in log_records if record.message == "lookup failed")
    assert failure.level == "ERROR"
    assert failure.exception is not None
    assert "KeyError: 'gone'" in failure.exception
    assert heartbeats[0][1].service_id == "model-7"
    assert not any(isinstance(handler, KafkaLogHandler) for handler in logging.getLogger().handlers)


def test_log_handler_never_blocks_when_the_broker_is_down(settings: Settings) -> None:
    dead_address = f"127.0.0.1:{free_port()}"  # nothing listens here
    with temporary_settings({"kafka.bootstrap_servers": dead_address}) as current:
        handler = KafkaLogHandler(Bus(current, source="offline"), queue_size=100)
        handler.start()
        logger = logging.getLogger("tests.offline")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            began = time.perf_counter()
            for n in range(20_000):
                logger.error("record %d", n)
            elapsed = time.perf_counter() - began
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
            handler.close()
    # 20,000 records into a 100-slot queue with no broker: every emit returned at once,
    # and what could not be shipped is counted, not waited for.
    assert elapsed < 10
    assert handler.dropped >= 20_000 - 100 - 1000
    assert handler.shipped == 0


@pytest.mark.service("kafka")
def test_close_ships_what_is_queued(kafka_settings: Settings, log_records: list[LogRecord]) -> None:
    handler = KafkaLogHandler(Bus(kafka_settings, source="closer"), queue_size=10_000)
    handler.start()
    logger = logging.getLogger("tests.close")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for n in range(500):
            logger.warning("burst %d", n)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()
    assert handler.dropped == 0
    assert handler.shipped == 500
    wait_for(lambda: len(log_records) == 500, what="all 500 records consumed")
