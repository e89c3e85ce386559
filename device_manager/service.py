"""The device manager as a platform service: simulators placed and stopped, device state kept.

    <prefix>.commands.device-manager (group "device-manager")
        DeviceChanged          ──▶ (a worker) every location's simulator host brought in line:
                                   its simulated devices as registered ──▶ PlaceService(sim-<location>)
                                   on the least-loaded node; placed with other devices ──▶ Unplace, Place;
                                   none left ──▶ UnplaceService(sim-<location>)
        BindDevices            ──▶ the app instance's aliases bound to devices at its location
                                   ──▶ DeviceBindings (request/reply; the deployer asks)
        UnbindDevices          ──▶ its bindings released ──▶ Unbound
    on start ──▶ the same sync (placing a host that runs with the same devices changes nothing)
    every device's data and state topics (group "device-manager.state")
        ──▶ the latest reading / state per device in memory ──▶ device_states, once a second
    with device.mqtt_url set: the MQTT gateway (``device_manager.gateway``) bridges real devices

A location's simulator host is a managed service like any other (heartbeats, logs,
restarts), started with its location and its devices (id, type, parameters each) in
``AIOT_DEVICE__LOCATION`` and ``AIOT_DEVICE__SIMULATED``: one process per location instead
of one per device.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import TypeAdapter

from device_manager import registry
from device_manager.messages import BindDevices, DeviceBindings, DeviceChanged, UnbindDevices, Unbound
from device_manager.models import DeviceRow, DeviceTypeRow
from platform_core.db import Database
from platform_core.nodes import (
    LocateService,
    Placement,
    PlaceService,
    ServiceSpec,
    UnplaceService,
    node_manager_topic,
)
from platform_core.service import PeriodicTask, QueueWorker, Service
from platform_sdk.bus import ConsumerLoop, Requester
from platform_sdk.device_documents import Binding, DeviceInstance, DeviceType, SimulatedDevice
from platform_sdk.device_messages import DeviceState, Frame, Reading
from platform_sdk.envelope import Envelope
from platform_sdk.errors import NotFound, PlatformError
from platform_sdk.settings import get_settings

log = logging.getLogger(__name__)
PLACE_TIMEOUT_S = 120.0
FLUSH_INTERVAL_S = 1.0


def simulator_service_id(location: str) -> str:
    return f"sim-{location}"


def simulator_spec(location: str, devices: list[SimulatedDevice]) -> ServiceSpec:
    """The simulator host of ``location`` playing ``devices`` (in name order: equal lists, equal specs)."""
    played = TypeAdapter(list[SimulatedDevice]).dump_json(sorted(devices, key=lambda device: device.id))
    return ServiceSpec(
        service_id=simulator_service_id(location),
        kind="simulator",
        module="simulators",
        env={"AIOT_DEVICE__LOCATION": location, "AIOT_DEVICE__SIMULATED": played.decode()},
    )


class DeviceManagerService(Service):
    name = "device-manager"

    def on_start(self) -> None:
        bus = self.sdk.bus
        self.database = Database.from_settings(self.settings)
        self.own(self.database)
        self.database.ensure_schema()
        self.requester = Requester(bus)
        self.requester.start()
        self.own(self.requester)
        self._latest: dict[str, tuple[str, dict[str, Any], datetime]] = {}
        self._latest_lock = threading.Lock()
        self._state_loop: ConsumerLoop | None = None
        self._state_lock = threading.Lock()
        self._watch_states()
        flusher = PeriodicTask("device-states", FLUSH_INTERVAL_S, self._flush_states)
        flusher.start()
        self.own(flusher)
        # Placing simulators waits on the node manager: off the command loop, so binds answer at once.
        self.changes: QueueWorker[DeviceChanged | Literal["start"]] = QueueWorker(
            "device-changes", self.on_change
        )
        self.changes.start()
        self.own(self.changes)
        self.changes.put("start")  # the start's sync: every location's simulator host placed
        commands = ConsumerLoop(
            bus, [bus.topics.device_manager], group="device-manager", name=self.service_id
        )
        commands.add_handler(DeviceChanged, lambda change, _envelope: self.changes.put(change))
        commands.add_handler(BindDevices, self.on_bind)
        commands.add_handler(UnbindDevices, self.on_unbind)
        commands.start()
        self.own(commands)
        if self.settings.device.mqtt_url:
            from device_manager.gateway import MqttGateway  # paho-mqtt only where a gateway runs

            gateway = MqttGateway(self.settings, bus, self.database)
            gateway.start()
            self.own(gateway)

    def stop(self) -> None:
        with self._state_lock:
            loop, self._state_loop = self._state_loop, None
        if loop is not None:
            loop.stop()
        super().stop()

    # commands -----------------------------------------------------------------------------
    def on_change(self, change: DeviceChanged | Literal["start"]) -> None:
        """A device was added or removed (or the service started): sync the simulator hosts and topics."""
        if isinstance(change, DeviceChanged):
            log.info("device %s %s", change.device, change.action)
        self._sync_simulators()
        self._watch_states()

    def on_bind(self, request: BindDevices, _envelope: Envelope) -> DeviceBindings:
        needs = {alias: (need.type, need.count) for alias, need in request.needs.items()}
        with self.database.session() as session:
            chosen = registry.bind(session, request.app_instance_id, needs, request.location)
            timezone = registry.read_location(session, request.location).timezone
            types = {
                name: DeviceType.model_validate_json(registry.read_type(session, name).document)
                for name in {need.type for need in request.needs.values()}
            }
        log.info("bound %s at %s: %s", request.app_instance_id, request.location, chosen)
        return DeviceBindings(
            app_instance_id=request.app_instance_id,
            timezone=timezone,
            bindings={
                alias: [Binding(device_id=name, type=types[request.needs[alias].type]) for name in names]
                for alias, names in chosen.items()
            },
        )

    def on_unbind(self, request: UnbindDevices, _envelope: Envelope) -> Unbound:
        with self.database.session() as session:
            released = registry.unbind(session, request.app_instance_id)
        return Unbound(app_instance_id=request.app_instance_id, released=released)

    def _wanted_hosts(self) -> dict[str, ServiceSpec | None]:
        """Per location: the spec of its simulator host, or None when it has no simulated device."""
        wanted: dict[str, list[SimulatedDevice]] = {}
        with self.database.session() as session:
            types = {row.name: row for row in session.scalars(sa.select(DeviceTypeRow))}
            for location in registry.list_locations(session):
                wanted[location.name] = []
            for row in registry.list_devices(session):
                type_row = types.get(row.type)
                if not row.simulated or type_row is None:
                    continue
                instance = DeviceInstance.model_validate_json(row.document)
                device_type = DeviceType.model_validate_json(type_row.document)
                wanted.setdefault(row.location, []).append(
                    SimulatedDevice(
                        id=row.name,
                        type=device_type,
                        parameters=registry.effective_parameters(device_type, instance),
                    )
                )
        return {
            location: simulator_spec(location, devices) if devices else None
            for location, devices in wanted.items()
        }

    def _sync_simulators(self) -> None:
        """Bring every location's simulator host in line with its registered simulated devices."""
        node_manager = node_manager_topic(self.sdk.bus.topics)
        for location, spec in self._wanted_hosts().items():
            service_id = simulator_service_id(location)
            try:
                try:
                    current: Placement | None = self.requester.request(
                        node_manager, LocateService(service_id=service_id), Placement, timeout=PLACE_TIMEOUT_S
                    )
                except NotFound:
                    current = None
                if current is not None and (spec is None or current.spec != spec):
                    self.requester.request(
                        node_manager,
                        UnplaceService(service_id=service_id),
                        Placement,
                        timeout=PLACE_TIMEOUT_S,
                    )
                    log.info(
                        "stopped the simulator host of %s (%s)",
                        location,
                        "no devices" if spec is None else "devices changed",
                    )
                if spec is not None:
                    placement = self.requester.request(
                        node_manager, PlaceService(spec=spec), Placement, PLACE_TIMEOUT_S
                    )
                    if current is None or current.spec != spec:
                        devices = json.loads(spec.env["AIOT_DEVICE__SIMULATED"])
                        log.info(
                            "the simulator host of %s runs on %s: %s",
                            location, placement.node_id, ", ".join(device["id"] for device in devices),
                        )  # fmt: skip
            except PlatformError as exc:
                log.error("cannot bring the simulator host of %s in line: %s", location, exc)

    # state --------------------------------------------------------------------------------
    def _watch_states(self) -> None:
        """(Re)subscribe to the data and state topics of every registered device."""
        topics = self.sdk.bus.topics
        with self.database.session() as session:
            wanted = []
            for device in registry.list_devices(session):
                type_row = session.get(DeviceTypeRow, device.type)
                kind = type_row.kind if type_row is not None else "sensor"
                wanted.append(
                    topics.device_data(device.name) if kind == "sensor" else topics.device_state(device.name)
                )
        with self._state_lock:
            old, self._state_loop = self._state_loop, None
            if old is not None:
                old.stop()
            if not wanted:
                return
            loop = ConsumerLoop(
                self.sdk.bus,
                wanted,
                group="device-manager.state",
                name="device-states",
                offset_reset="latest",
            )
            loop.add_handler(Reading, self._on_reading)
            loop.add_handler(Frame, self._on_frame)
            loop.add_handler(DeviceState, self._on_state)
            loop.start()
            self._state_loop = loop

    def _remember(self, device: str, kind: str, values: dict[str, Any], time: datetime) -> None:
        with self._latest_lock:
            self._latest[device] = (kind, values, time)

    def _on_reading(self, reading: Reading, _envelope: Envelope) -> None:
        self._remember(reading.device_id, "reading", {"seq": reading.seq, **reading.values}, reading.time)

    def _on_frame(self, frame: Frame, envelope: Envelope) -> None:
        values = {
            "seq": frame.seq,
            "width": frame.width,
            "height": frame.height,
            "content_type": frame.content_type,
            "bytes": len(envelope.data or b""),
        }
        self._remember(frame.device_id, "frame", values, frame.time)

    def _on_state(self, state: DeviceState, _envelope: Envelope) -> None:
        if state.accepted:
            self._remember(state.device_id, "state", state.state, state.time)

    def _flush_states(self) -> None:
        with self._latest_lock:
            latest, self._latest = self._latest, {}
        if not latest:
            return
        with self.database.session() as session:
            for device, (kind, values, time) in latest.items():
                if session.get(DeviceRow, device) is not None:
                    registry.record_state(session, device, kind, values, time.astimezone(UTC))


def main() -> None:
    DeviceManagerService(get_settings()).run()
