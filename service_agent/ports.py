"""Ports a node hands to its services: from a configured range, never one in use."""

from __future__ import annotations

import threading

from platform_sdk.errors import BadRequest, Unavailable
from platform_sdk.net import port_is_open


def parse_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    try:
        low, high = int(first), int(last)
    except ValueError:
        raise BadRequest(f"port range {text!r} is not FIRST-LAST") from None
    if not 0 < low <= high < 65536:
        raise BadRequest(f"port range {text!r} is outside 1-65535 or reversed")
    return low, high


class PortAllocator:
    """Hands out ports of ``port_range`` that nobody listens on and nobody else was given."""

    def __init__(self, port_range: str, host: str) -> None:
        self.low, self.high = parse_range(port_range)
        self.host = host
        self._given: set[int] = set()
        self._next = self.low
        self._lock = threading.Lock()

    def allocate(self) -> int:
        with self._lock:
            for _ in range(self.high - self.low + 1):
                port = self._next
                self._next = self.low if port >= self.high else port + 1
                if port not in self._given and not port_is_open(self.host, port, timeout=0.05):
                    self._given.add(port)
                    return port
        raise Unavailable(f"no free port left in {self.low}-{self.high} on this node")

    def release(self, ports: list[int]) -> None:
        with self._lock:
            self._given.difference_update(ports)
