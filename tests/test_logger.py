"""The logger service: batching into the bucket, flush on shutdown, and queries."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from logger.service import LogBatcher, LoggerService
from logger.store import LogQuery, LogStore, parse_time
from platform_core.blobstore import LocalBlobStore
from platform_sdk.errors import BadRequest
from platform_sdk.messages import LogRecord
from platform_sdk.settings import Settings, temporary_settings
from tests.test_bus import wait_for

T0 = datetime(2026, 11, 25, 9, 59, 58, tzinfo=UTC)


def record(
    service: str, message: str, *, level: str = "INFO", at: datetime = T0, exc: str | None = None
) -> LogRecord:
    return LogRecord(service_id=service, time=at, level=level, logger="app", message=message, exception=exc)


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(LocalBlobStore(tmp_path / "bucket"))


def test_records_are_stored_as_json_lines_per_service_per_hour(store: LogStore) -> None:
    store.append(
        [
            record("web", "a", at=T0),
            record("web", "b", at=T0 + timedelta(seconds=3)),  # next hour
            record("logger", "c", at=T0),
        ]
    )
    keys = [info.key for info in store.blobs.list("logs/")]
    assert len(keys) == 3
    assert sum(key.startswith("logs/web/2026-11-25/09/") for key in keys) == 1
    assert sum(key.startswith("logs/web/2026-11-25/10/") for key in keys) == 1
    lines = store.blobs.get(next(k for k in keys if k.startswith("logs/logger/"))).decode().splitlines()
    assert [LogRecord.model_validate_json(line).message for line in lines] == ["c"]
    assert store.services() == ["logger", "web"]


def test_query_filters_by_service_level_time_and_text(store: LogStore) -> None:
    store.append(
        [
            record("web", "GET /api/health", at=T0),
            record("web", "disk almost full", level="WARNING", at=T0 + timedelta(minutes=1)),
            record(
                "logger",
                "flush failed",
                level="ERROR",
                at=T0 + timedelta(minutes=2),
                exc="OSError: Disk full",
            ),
            record("model-1", "loaded", at=T0 + timedelta(hours=3)),
        ]
    )

    def messages(**query: object) -> list[str]:
        return [r.message for r in store.query(LogQuery.model_validate(query))]

    assert messages() == ["GET /api/health", "disk almost full", "flush failed", "loaded"]
    assert messages(service="web") == ["GET /api/health", "disk almost full"]
    assert messages(level="warning") == ["disk almost full", "flush failed"]
    assert messages(grep="DISK") == ["disk almost full", "flush failed"]  # message or exception text
    assert messages(since=T0 + timedelta(minutes=1), until=T0 + timedelta(hours=1)) == [
        "disk almost full",
        "flush failed",
    ]
    assert messages(limit=2) == ["flush failed", "loaded"]  # the most recent, oldest first
    assert messages(service="nobody") == []


def test_query_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="unknown level 'LOUD'"):
        LogQuery(level="LOUD")
    with pytest.raises(ValueError, match="limit"):
        LogQuery(limit=0)
    with pytest.raises(BadRequest, match="neither like '10m'"):
        parse_time("yesterday-ish")
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert parse_time("90m", now) == now - timedelta(minutes=90)
    assert parse_time("2026-01-01T10:00:00") == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_batcher_flushes_on_its_interval(store: LogStore) -> None:
    batcher = LogBatcher(store, interval_s=0.2, batch_size=1000)
    batcher.start()
    try:
        batcher.add(record("web", "tick"))
        wait_for(lambda: batcher.written == 1, timeout=5, what="interval flush")
    finally:
        batcher.stop()
    assert [r.message for r in store.query(LogQuery())] == ["tick"]


def test_batcher_flushes_a_full_batch_early_and_everything_on_stop(store: LogStore) -> None:
    batcher = LogBatcher(store, interval_s=3600, batch_size=10)
    batcher.start()
    try:
        for n in range(10):
            batcher.add(record("web", f"r{n}"))
        wait_for(lambda: batcher.written == 10, timeout=5, what="early flush of a full batch")
        for n in range(10, 13):
            batcher.add(record("web", f"r{n}"))
    finally:
        batcher.stop()  # an hour-long interval: only the stop can have written these
    assert len(store.query(LogQuery())) == 13


def test_batcher_keeps_records_when_the_store_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "bucket"
    blocker.write_text("a file where the bucket folder should be")
    failing = LogStore(LocalBlobStore(blocker))
    batcher = LogBatcher(failing, interval_s=3600, batch_size=1000)
    batcher.add(record("web", "precious"))
    logging.getLogger("logger.service").disabled = True
    try:
        batcher.flush()
    finally:
        logging.getLogger("logger.service").disabled = False
    assert batcher.written == 0
    blocker.unlink()
    batcher.flush()
    assert batcher.written == 1
    assert [r.message for r in failing.query(LogQuery())] == ["precious"]


def log_from_another_process(settings: Settings, service_id: str, code: str) -> None:
    """Run ``code`` in a new Python process that reaches the platform through its AIOT_* environment."""
    env = {
        **os.environ,
        "AIOT_HOME": str(settings.home_dir),
        "AIOT_SERVICE_ID": service_id,
        "AIOT_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
        "AIOT_KAFKA__SECRETS_FILE": str(settings.kafka.secrets_file or ""),
        "AIOT_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
    }
    script = f"from platform_sdk import get_logger\n{code}"
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)


@pytest.mark.service("kafka")
def test_logger_service_collects_what_processes_log_and_loses_nothing_on_stop(
    kafka_settings: Settings,
) -> None:
    with temporary_settings({"logging.flush_interval_s": 3600, "service_id": "logger"}) as settings:
        service = LoggerService(settings)
        service.start()
        try:
            service.consumer.wait_assigned()
            log_from_another_process(
                settings,
                "app-42",
                "log = get_logger('smart.classroom')\n"
                "for n in range(50):\n    log.warning('occupancy %d', n)",
            )
            wait_for(lambda: service.consumer.handled >= 50, what="records consumed")
        finally:
            service.stop()  # the interval is an hour: only the shutdown flush writes them
    stored = LogStore(LocalBlobStore(settings.blob_path)).query(LogQuery(service="app-42"))
    assert [r.message for r in stored] == [f"occupancy {n}" for n in range(50)]
    assert {r.logger for r in stored} == {"smart.classroom"}


@pytest.mark.service("kafka")
def test_logger_service_flushes_within_its_interval(kafka_settings: Settings) -> None:
    with temporary_settings({"service_id": "logger"}) as settings:
        service = LoggerService(settings)
        service.start()
        store = LogStore(LocalBlobStore(settings.blob_path))
        try:
            service.consumer.wait_assigned()
            log_from_another_process(settings, "sim-cam-1", "get_logger('camera').error('lens cap on')")
            sent = time.monotonic()
            wait_for(lambda: bool(store.query(LogQuery(grep="lens cap"))), timeout=10, what="stored")
            assert time.monotonic() - sent < settings.logging.flush_interval_s + 3
        finally:
            service.stop()
    assert [r.service_id for r in store.query(LogQuery(grep="lens cap"))] == ["sim-cam-1"]
