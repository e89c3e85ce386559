"""Log shipping: a ``logging.Handler`` that sends structured records over Kafka, never blocking.

``emit()`` only turns the record into a ``LogRecord`` message and puts it on a
bounded queue; a full queue counts a drop and returns. One named shipper
thread, owned by the handler, drains the queue into a producer. When the
broker is down the producer holds records for ``message.timeout.ms`` and then
reports them failed; those count as drops too. ``close()`` (called by
``logging.shutdown`` at exit, or by the runtime) ships what is queued, within
a bounded time.

The logger service (``logger/``) consumes the records and stores them.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from datetime import UTC, datetime

from platform_sdk.bus import Bus, Producer
from platform_sdk.errors import Unavailable
from platform_sdk.messages import LogRecord
from platform_sdk.settings import Settings, get_settings

_SHIP_POLL_S = 0.2
_CLOSE_WAIT_S = 3.0
# Records older than this in the producer while the broker is away are given up (counted as drops).
_DELIVERY_TIMEOUT_MS = 30_000


class KafkaLogHandler(logging.Handler):
    """Ships log records to the platform's log topic without ever blocking the caller."""

    def __init__(self, bus: Bus, *, queue_size: int, level: int | str = logging.NOTSET) -> None:
        super().__init__(level)
        self.bus = bus
        self.service_id = bus.source
        self.dropped = 0
        self.shipped = 0
        self._queue: queue.Queue[LogRecord] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._host = socket.gethostname()

    def start(self) -> None:
        self._producer = self.bus.producer(
            config={"message.timeout.ms": _DELIVERY_TIMEOUT_MS, "linger.ms": 5}
        )
        # Daemon, because the interpreter joins non-daemon threads before logging.shutdown()
        # would ever ask this one to stop; close() still drains and joins it.
        self._thread = threading.Thread(target=self._ship, name="aiot-log-shipper", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if self._thread is None or threading.get_ident() == self._thread.ident:
            return  # records about shipping itself would loop
        try:
            entry = LogRecord(
                service_id=self.service_id,
                time=datetime.fromtimestamp(record.created, UTC),
                level=record.levelname,
                logger=record.name,
                message=record.getMessage(),
                exception=self._exception_text(record),
                host=self._host,
                pid=os.getpid(),
            )
        except Exception:
            self.handleError(record)
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1

    @staticmethod
    def _exception_text(record: logging.LogRecord) -> str | None:
        if record.exc_info:
            return logging.Formatter().formatException(record.exc_info)
        return record.exc_text or None

    def _on_delivery(self, ok: bool) -> None:
        if ok:
            self.shipped += 1
        else:
            self.dropped += 1

    def _ship(self) -> None:
        producer = self._producer
        assert producer is not None
        topic = self.bus.topics.logs
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                entry = self._queue.get(timeout=_SHIP_POLL_S)
            except queue.Empty:
                producer.poll(0)
                continue
            try:
                producer.send(topic, entry, key=self.service_id, on_delivery=self._on_delivery)
            except Unavailable:
                self.dropped += 1

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_CLOSE_WAIT_S)
            self._thread = None
        if self._producer is not None:
            self.dropped += self._producer.flush(_CLOSE_WAIT_S)
            self._producer = None
        super().close()


def install_log_handler(settings: Settings, service_id: str) -> KafkaLogHandler | None:
    """Attach one shipping handler to the root logger (idempotent); None when no bus is known."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, KafkaLogHandler):
            return handler
    bus = Bus(settings, source=service_id)
    try:
        bus.bootstrap_servers  # noqa: B018 - fails fast when no bus is known
    except Unavailable as exc:
        logging.getLogger(__name__).warning("platform logs stay local: %s", exc)
        return None
    handler = KafkaLogHandler(bus, queue_size=settings.logging.queue_size, level=settings.logging.level)
    handler.start()
    root.addHandler(handler)
    if root.level > handler.level:
        root.setLevel(handler.level)
    return handler


def get_logger(name: str) -> logging.Logger:
    """A standard logger whose records also reach the platform's logger service."""
    settings = get_settings()
    install_log_handler(settings, settings.service_id or f"process-{os.getpid()}")
    return logging.getLogger(name)
