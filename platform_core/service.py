"""The ``Service`` base every long-running platform service derives from.

A service is a few message handlers and its own domain code. The base owns the
life cycle: nothing happens in the constructor or at import; ``start()`` starts
the SDK runtime (heartbeat, log shipping) and then the service's own parts
(consumer loops, servers, threads), each registered with ``own()`` so that
``stop()`` stops them in reverse order. ``run()`` is what a service's
``python -m <package>`` calls: start, wait for SIGTERM/SIGINT, stop.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import ClassVar, Generic, Protocol, TypeVar

from platform_sdk.runtime import PlatformRuntime
from platform_sdk.settings import Settings, get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stoppable(Protocol):
    def stop(self) -> None: ...


class Service:
    """Base of a platform service: ``start()``, ``stop()``, ``run()``."""

    name: ClassVar[str]

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.service_id = self.settings.service_id or self.default_service_id()
        self.sdk = PlatformRuntime(self.settings, self.service_id)
        self._parts: list[Stoppable] = []
        self._stopped = threading.Event()

    def default_service_id(self) -> str:
        """The identity used when AIOT_SERVICE_ID is not set."""
        return self.name

    def own(self, part: Stoppable) -> None:
        """Register a started part; ``stop()`` stops parts last-started first."""
        self._parts.append(part)

    def on_start(self) -> None:
        """Start the service's own parts and ``own()`` them."""

    def start(self) -> None:
        self.sdk.start_logging()
        try:
            self.on_start()
        except BaseException:
            self.stop()
            raise
        # The first heartbeat says "ready": only now do consumers, servers and handlers run.
        self.sdk.start_heartbeat()
        log.info("%s started", self.service_id)

    def stop(self) -> None:
        while self._parts:
            part = self._parts.pop()
            try:
                part.stop()
            except Exception:
                log.exception("%s: stopping %r failed", self.service_id, part)
        log.info("%s stopped", self.service_id)
        self.sdk.stop()
        self._stopped.set()

    def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop cleanly."""

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            self._stopped.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            self._stopped.wait()
        finally:
            self._stopped.clear()
            self.stop()


class PeriodicTask:
    """Calls ``work()`` every ``interval_s`` on one named thread until ``stop()``; failures are logged.

    With ``at_once`` the first call is made as the thread starts, not after one interval.
    Long work may look at ``stopping`` to end early when ``stop()`` is called.
    """

    def __init__(
        self, name: str, interval_s: float, work: Callable[[], None], *, at_once: bool = False
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self.work = work
        self.at_once = at_once
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"aiot-{self.name}")
        self._thread.start()

    def _run(self) -> None:
        if self.at_once:
            self._call()
        while not self.stopping.wait(self.interval_s):
            self._call()

    def _call(self) -> None:
        try:
            self.work()
        except Exception:
            log.exception("%s failed; trying again in %.1fs", self.name, self.interval_s)

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class QueueWorker(Generic[T]):
    """Handles queued items one at a time on one named thread; ``stop()`` finishes the one in hand."""

    def __init__(self, name: str, handle: Callable[[T], None]) -> None:
        self.name = name
        self.handle = handle
        self._queue: queue.Queue[T | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"aiot-{self.name}")
        self._thread.start()

    def put(self, item: T) -> None:
        self._queue.put(item)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self.handle(item)
            except Exception:
                log.exception("%s failed on %r", self.name, item)

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
