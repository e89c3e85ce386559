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
import signal
import threading
from types import FrameType
from typing import ClassVar, Protocol

from platform_sdk.runtime import PlatformRuntime
from platform_sdk.settings import Settings, get_settings

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    def stop(self) -> None: ...


class Service:
    """Base of a platform service: ``start()``, ``stop()``, ``run()``."""

    name: ClassVar[str]

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.service_id = self.settings.service_id or self.name
        self.runtime = PlatformRuntime(self.settings, self.service_id)
        self._parts: list[Stoppable] = []
        self._stopped = threading.Event()

    def own(self, part: Stoppable) -> None:
        """Register a started part; ``stop()`` stops parts last-started first."""
        self._parts.append(part)

    def on_start(self) -> None:
        """Start the service's own parts and ``own()`` them."""

    def start(self) -> None:
        self.runtime.start()
        try:
            self.on_start()
        except BaseException:
            self.stop()
            raise
        log.info("%s started", self.service_id)

    def stop(self) -> None:
        while self._parts:
            part = self._parts.pop()
            try:
                part.stop()
            except Exception:
                log.exception("%s: stopping %r failed", self.service_id, part)
        log.info("%s stopped", self.service_id)
        self.runtime.stop()
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
