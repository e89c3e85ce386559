"""The heartbeat client: proof of life from every managed process.

A named thread sends a ``Heartbeat`` on the heartbeats topic right away and
then once per interval until ``stop()``. A process started by a service agent
also checks that the agent is still its parent; when the agent is gone (its
node is lost) the process stops itself, as it would with its node. The heartbeat monitor (``heartbeat/``)
keeps the last-seen time of each service id and restarts what falls silent.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid

from platform_sdk.bus import Bus, Producer
from platform_sdk.errors import Unavailable
from platform_sdk.messages import Heartbeat


class HeartbeatClient:
    """Sends this process's heartbeat every ``interval_s`` seconds on its own thread."""

    def __init__(self, bus: Bus, *, interval_s: float, parent_pid: int | None = None) -> None:
        self.bus = bus
        self.interval_s = interval_s
        self.parent_pid = parent_pid
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None

    def start(self) -> None:
        self._producer = self.bus.producer()
        self._thread = threading.Thread(target=self._beat, name=f"aiot-heartbeat-{self.bus.source}")
        self._thread.start()

    def _beat(self) -> None:
        producer = self._producer
        assert producer is not None
        host, pid, instance = socket.gethostname(), os.getpid(), uuid.uuid4().hex
        seq = 0
        while not self._stop.is_set():
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                # Our agent died (its node is gone): stop like the rest of that node, not beat on alone.
                os.kill(os.getpid(), signal.SIGTERM)
                return
            beat = Heartbeat(
                service_id=self.bus.source,
                seq=seq,
                instance=instance,
                pid=pid,
                host=host,
                interval_s=self.interval_s,
            )
            try:
                producer.send(self.bus.topics.heartbeats, beat, key=self.bus.source)
                self.sent += 1
            except Unavailable:
                pass  # the monitor will notice the silence; nothing to do here
            seq += 1
            self._stop.wait(self.interval_s)
            producer.poll(0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._producer is not None:
            self._producer.flush(2)
            self._producer = None
