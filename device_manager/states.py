"""A device's latest reading, frame or state: read from its topic on request, and kept one row per device.

Each device's newest record is the last one of its own one-partition topic: a sensor's
``Reading`` or a camera's ``Frame`` on ``<prefix>.devices.<id>.data``, a controller's
``DeviceState`` on ``<prefix>.devices.<id>.state``. Reading it (``Bus.recent(topic, 1)``: a
metadata look-up, the partition's offsets and one fetch) costs the same whatever the
device's rate or frame size, and only when someone asks. So nothing follows the devices'
streams to know their latest value:

* ``GET /api/devices/<name>`` (and each device of ``GET /api/devices``, within a time
  budget) reads the device's topic when asked (``read_latest``): always the current value,
  a controller's state right after its start or a command, and no cost while nobody looks;
* the device-manager service runs a ``StateRecorder``: every ``record_interval`` (30 s, or
  a quarter of the data topics' retention when that is shorter) it reads every device's
  newest record the same way and keeps it in ``device_states``, one row per device
  (upserted only when newer; no history). That row is what the API shows once there is
  nothing on the topic any more (a sensor that stopped more than the retention ago), or
  when the bus cannot be read; the MQTT gateway starts following a real controller from its
  state topic's newest record, else from that row.

A camera frame is summarised (content type, width, height, byte count); its image is read
once per look (one record) and never stored or returned. Records of other types on a
device's topic are skipped.

JSON of a latest value (``state_json``): ``{kind, values, units, time, source}``: ``kind``
``reading``, ``frame`` or ``state``; ``values`` the reading's values, the frame's summary or
the controller's state; ``units`` the units the device type gives its fields; ``time`` when
the device produced it; ``source`` ``bus`` (read now) or ``registry`` (the recorded row).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from device_manager import registry
from device_manager.models import DeviceRow
from platform_core.db import Database
from platform_core.service import PeriodicTask
from platform_sdk.bus import Bus
from platform_sdk.device_documents import DeviceType
from platform_sdk.device_messages import DeviceState, Frame, Reading
from platform_sdk.envelope import Envelope
from platform_sdk.errors import BadRequest, PlatformError, Unavailable
from platform_sdk.settings import Settings
from platform_sdk.topics import Topics

log = logging.getLogger(__name__)
Source = Literal["bus", "registry"]


@dataclass(frozen=True)
class Observed:
    """What a device last said: its kind (``registry.STATE_KINDS``), values and time."""

    kind: str
    values: dict[str, Any]
    time: datetime


def latest_topic(topics: Topics, device: str, kind: str) -> str:
    """The topic whose last record is a device's latest value: a sensor's data, a controller's state."""
    return topics.device_state(device) if kind == "controller" else topics.device_data(device)


def ensure_latest_topics(bus: Bus, database: Database) -> None:
    """Create every registered device's latest-value topic that is missing, so reading it never waits
    for a topic that is not there (the device-manager service does this after each device change)."""
    with database.session() as session:
        kinds = {row.name: row.kind for row in registry.list_types(session)}
        topics = [
            latest_topic(bus.topics, row.name, kinds.get(row.type, "sensor"))
            for row in registry.list_devices(session)
        ]
    bus.ensure_topics(topics)


def observed(envelope: Envelope) -> Observed | None:
    """The reading, frame summary or controller state ``envelope`` carries; None for anything else."""
    try:
        if envelope.type == Reading.message_type:
            reading = envelope.open(Reading)
            return Observed("reading", dict(reading.values), reading.time)
        if envelope.type == Frame.message_type:
            frame = envelope.open(Frame)
            summary = {
                "content_type": frame.content_type,
                "width": frame.width,
                "height": frame.height,
                "bytes": len(envelope.data or b""),
            }
            return Observed("frame", summary, frame.time)
        if envelope.type == DeviceState.message_type:
            # A rejected command's state is the controller's kept one: it is still its state.
            state = envelope.open(DeviceState)
            return Observed("state", dict(state.state), state.time)
    except BadRequest as exc:
        log.warning("a malformed %r from %r on a device topic: %s", envelope.type, envelope.source, exc)
    return None


def read_latest(bus: Bus, device: str, kind: str, timeout: float) -> Observed | None:
    """The newest record of ``device``'s topic, or None when it holds none (yet, or any more).

    ``Unavailable`` when the bus cannot be read within ``timeout`` (or the topic does not exist);
    callers pass ``device.state_read_timeout_s`` or what is left of a budget.
    """
    for envelope in reversed(bus.recent(latest_topic(bus.topics, device, kind), 1, timeout=timeout)):
        found = observed(envelope)
        if found is not None:
            return found
    return None


def _units(device_type: DeviceType, kind: str) -> dict[str, str]:
    fields = device_type.state if kind == "state" else device_type.outputs if kind == "reading" else {}
    return {name: spec.unit for name, spec in fields.items() if spec.unit}


def state_json(
    latest: Observed | registry.LatestState, device_type: DeviceType, source: Source
) -> dict[str, Any]:
    """The API's view of a latest value (see the module docstring)."""
    units = _units(device_type, latest.kind)
    return {
        "kind": latest.kind,
        "values": latest.values,
        "units": {name: unit for name, unit in units.items() if name in latest.values},
        "time": latest.time.isoformat(),
        "source": source,
    }


def record_interval(settings: Settings) -> float:
    """How often the recorder reads every device: well inside the data topics' retention."""
    retention_s = settings.kafka.retention.device_data.retention_ms / 1000
    return min(settings.device.state_record_interval_s, retention_s / 4)


class StateRecorder:
    """Keeps ``device_states`` at every device's newest record: one read per device and interval.

    ``record()`` does one round; ``start()`` runs one at once and then one every ``interval``
    on its own thread until ``stop()``. A device whose topic cannot be read is skipped (and
    logged) until the next round; a row is written only when the device said something newer.
    """

    def __init__(self, bus: Bus, database: Database, interval: float) -> None:
        self.bus = bus
        self.database = database
        self.interval = interval
        self.rounds = 0
        self._task: PeriodicTask | None = None

    def start(self) -> None:
        self._task = PeriodicTask("device-states", self.interval, self._scheduled_round, at_once=True)
        self._task.start()

    def stop(self) -> None:
        if self._task is not None:
            self._task.stop()
            self._task = None

    def _scheduled_round(self) -> None:
        assert self._task is not None
        self._round(self._task.stopping)

    def record(self) -> int:
        """Read every registered device's newest record and keep the newer ones; how many rows changed."""
        return self._round(None)

    def _round(self, stopping: threading.Event | None) -> int:
        with self.database.session() as session:
            kinds = {row.name: row.kind for row in registry.list_types(session)}
            devices = {row.name: kinds.get(row.type, "sensor") for row in registry.list_devices(session)}
        seen: dict[str, Observed] = {}
        unreadable: list[str] = []
        for device, kind in devices.items():
            if stopping is not None and stopping.is_set():
                return 0
            try:
                found = read_latest(self.bus, device, kind, self.bus.settings.device.state_read_timeout_s)
            except Unavailable:
                unreadable.append(device)
                continue
            if found is not None:
                seen[device] = found
        if unreadable:
            log.warning(
                "could not read the latest state of %s; trying again in %.0fs",
                ", ".join(unreadable),
                self.interval,
            )
        changed = self._keep(seen)
        self.rounds += 1
        return changed

    def _keep(self, seen: Mapping[str, Observed]) -> int:
        changed = 0
        with self.database.session() as session:
            for device, found in seen.items():
                stored = registry.read_state(session, device)
                if stored is not None and stored.time >= found.time:
                    continue
                if session.get(DeviceRow, device) is None:  # deleted since it was listed
                    continue
                when = found.time.astimezone(UTC)
                try:
                    registry.record_state(session, device, found.kind, found.values, when)
                except PlatformError as exc:
                    log.info("not recording the state of %s: %s", device, exc)
                    continue
                changed += 1
        return changed
