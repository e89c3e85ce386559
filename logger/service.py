"""The logger service: consumes every process's log records and stores them in batches.

    SDK log handler ──Kafka <prefix>.logs──▶ ConsumerLoop (group <prefix>.logger)
    an instance's ──<prefix>.inst.<id>.logs──▶ ConsumerLoop (group <prefix>.logger.instances),
        filed under <id> whatever the record claims (``platform_core.instances``)
        ──▶ LogBatcher.add ──(every flush_interval_s, or batch_size records)──▶ LogStore.append
        ──▶ blob store: logs/<service>/<day>/<hour>/<part>.jsonl

On a clean stop the consumer loop stops first, then the batcher writes what it
holds, so nothing accepted is lost. A blob store that fails keeps the batch
in memory for the next flush. Queries are answered by ``logger.api`` on the
front door, straight from the blob store.
"""

from __future__ import annotations

import logging
import threading

from logger.store import LogStore
from platform_core.blobstore import blob_store_from_settings
from platform_core.instances import file_under_owner, instance_loop
from platform_core.service import Service
from platform_sdk.bus import ConsumerLoop
from platform_sdk.envelope import Envelope
from platform_sdk.messages import LogRecord

log = logging.getLogger(__name__)


class LogBatcher:
    """Holds records and writes them to the store at least every ``interval_s``."""

    def __init__(self, store: LogStore, *, interval_s: float, batch_size: int) -> None:
        self.store = store
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.written = 0
        self._pending: list[LogRecord] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, record: LogRecord, _envelope: Envelope | None = None) -> None:
        with self._lock:
            self._pending.append(record)
            full = len(self._pending) >= self.batch_size
        if full:
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aiot-log-batcher")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self.store.append(batch)
        except Exception:
            log.exception("writing %d log records failed; keeping them for the next flush", len(batch))
            with self._lock:
                self._pending[:0] = batch
            return
        self.written += len(batch)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()


class LoggerService(Service):
    """Collects the platform's logs into the file bucket."""

    name = "logger"

    def on_start(self) -> None:
        settings = self.settings
        self.batcher = LogBatcher(
            LogStore(blob_store_from_settings(settings)),
            interval_s=settings.logging.flush_interval_s,
            batch_size=settings.logging.batch_size,
        )
        self.batcher.start()
        self.own(self.batcher)
        bus = self.sdk.bus
        self.consumer = ConsumerLoop(
            bus, [bus.topics.logs], group=f"{bus.topics.prefix}.logger", name="logger"
        )
        self.consumer.add_handler(LogRecord, self.batcher.add)
        self.consumer.start()
        self.own(self.consumer)
        # From its first record: a new instance's topic may join after its first lines were sent.
        own_logs = instance_loop(
            bus,
            "logs",
            group=f"{bus.topics.prefix}.logger.instances",
            name="logger-instances",
            offset_reset="earliest",
        )
        file_under_owner(own_logs, LogRecord, self.batcher.add)
        own_logs.start()
        self.own(own_logs)
