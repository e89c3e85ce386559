"""The device manager as a platform service: simulators placed and stopped, device state kept.

    <prefix>.commands.device-manager (group "device-manager")
        DeviceChanged          ──▶ (a worker) every location's simulator host brought in line:
                                   its simulated devices as registered ──▶ PlaceService(sim-<location>)
                                   on the least-loaded node; placed with other devices ──▶ Unplace, Place;
                                   none left ──▶ UnplaceService(sim-<location>)
        BindDevices            ──▶ the app instance's aliases bound to devices at its location
                                   ──▶ DeviceBindings (request/reply; the deployer asks)
        UnbindDevices          ──▶ its bindings released ──▶ Unbound
        FindLocations, CheckLocation, CheckDeviceTypes ──▶ what the registry holds, for the front
                                   door (``device_manager.answers``; request/reply)
    on start ──▶ the same sync (placing a host that runs with the same devices changes nothing)
    each sync, first ──▶ every registered device's topic that holds its latest value exists
    StateRecorder (``device_manager.states``), at start and every 30 s: each device's newest
        record (Bus.recent, one record per device: no stream followed, no camera's every frame)
        ──▶ device_states, one row per device, written when newer
    with device.mqtt_url set: the MQTT gateway (``device_manager.gateway``) bridges real devices
    with device.mqtt_password_file and device.mqtt_acl_file set: at start and on every DeviceChanged
        (``credentials`` too) Mosquitto's password and ACL files are rewritten from the registry
        and Mosquitto reloaded (``device_manager.mqtt_auth``)

A location's simulator host is a managed service like any other (heartbeats, logs,
restarts), started with its location and its devices (id, type, parameters each) in
``AIOT_DEVICE__LOCATION`` and ``AIOT_DEVICE__SIMULATED``: one process per location instead
of one per device.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

import sqlalchemy as sa
from pydantic import TypeAdapter

from device_manager import registry
from device_manager.answers import DeviceManagerAnswers
from device_manager.messages import BindDevices, DeviceBindings, DeviceChanged, UnbindDevices, Unbound
from device_manager.models import DeviceTypeRow
from device_manager.mqtt_auth import MqttAuthFiles
from device_manager.states import StateRecorder, ensure_latest_topics, record_interval
from platform_core.db import Database
from platform_core.nodes import (
    LocateService,
    Placement,
    PlaceService,
    ServiceSpec,
    UnplaceService,
    node_manager_topic,
)
from platform_core.service import QueueWorker, Service
from platform_sdk.bus import ConsumerLoop, Requester
from platform_sdk.device_documents import Binding, DeviceInstance, DeviceType, SimulatedDevice
from platform_sdk.envelope import Envelope
from platform_sdk.errors import NotFound, PlatformError
from platform_sdk.settings import get_settings

log = logging.getLogger(__name__)


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
        self._ensure_device_topics()  # before the recorder's first round reads them
        self.mqtt_files = MqttAuthFiles.from_settings(self.settings, self.database)
        recorder = StateRecorder(bus, self.database, record_interval(self.settings))
        recorder.start()
        self.own(recorder)
        # Placing simulators waits on the node manager: off the command loop, so binds answer at once.
        self.changes: QueueWorker[DeviceChanged | Literal["start"]] = QueueWorker(
            "device-changes", self.on_change
        )
        self.changes.start()
        self.own(self.changes)
        self.changes.put("start")  # the start's sync: every location's simulator host placed
        commands = ConsumerLoop(
            bus,
            [bus.topics.device_manager],
            group=f"{bus.topics.prefix}.device-manager",
            name=self.service_id,
        )
        commands.add_handler(DeviceChanged, lambda change, _envelope: self.changes.put(change))
        commands.add_handler(BindDevices, self.on_bind)
        commands.add_handler(UnbindDevices, self.on_unbind)
        DeviceManagerAnswers(self.database).add_to(commands)
        commands.start()
        self.own(commands)
        if self.settings.device.mqtt_url:
            from device_manager.gateway import MqttGateway  # paho-mqtt only where a gateway runs

            gateway = MqttGateway(self.settings, bus, self.database)
            gateway.start()
            self.own(gateway)

    # commands -----------------------------------------------------------------------------
    def on_change(self, change: DeviceChanged | Literal["start"]) -> None:
        """A device was added or removed (or the service started): Mosquitto's files (when kept), then
        the simulator hosts and topics; new credentials: the files only."""
        if isinstance(change, DeviceChanged):
            log.info("device %s %s", change.device, change.action)
        self._write_mqtt_files()
        if isinstance(change, DeviceChanged) and change.action == "credentials":
            return
        self._ensure_device_topics()  # first: placing hosts may take a while
        self._sync_simulators()

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
        # Its first look may come before the node manager answers at all: it waits as long as a placement.
        waits = self.settings.node_manager
        for location, spec in self._wanted_hosts().items():
            service_id = simulator_service_id(location)
            try:
                try:
                    current: Placement | None = self.requester.request(
                        node_manager, LocateService(service_id=service_id), Placement, waits.place_wait_s
                    )
                except NotFound:
                    current = None
                if current is not None and (spec is None or current.spec != spec):
                    self.requester.request(
                        node_manager,
                        UnplaceService(service_id=service_id),
                        Placement,
                        timeout=waits.unplace_wait_s,
                    )
                    log.info(
                        "stopped the simulator host of %s (%s)",
                        location,
                        "no devices" if spec is None else "devices changed",
                    )
                if spec is not None:
                    placement = self.requester.request(
                        node_manager, PlaceService(spec=spec), Placement, waits.place_wait_s
                    )
                    if current is None or current.spec != spec:
                        devices = json.loads(spec.env["AIOT_DEVICE__SIMULATED"])
                        log.info(
                            "the simulator host of %s runs on %s: %s",
                            location, placement.node_id, ", ".join(device["id"] for device in devices),
                        )  # fmt: skip
            except PlatformError as exc:
                log.error("cannot bring the simulator host of %s in line: %s", location, exc)

    def _write_mqtt_files(self) -> None:
        if self.mqtt_files is None:
            return
        try:
            self.mqtt_files.write()
        except (OSError, PlatformError) as exc:
            log.error("cannot write Mosquitto's password and ACL files: %s", exc)

    # state --------------------------------------------------------------------------------
    def _ensure_device_topics(self) -> None:
        try:
            ensure_latest_topics(self.sdk.bus, self.database)
        except PlatformError as exc:
            log.warning("cannot create the devices' topics: %s", exc)


def main() -> None:
    DeviceManagerService(get_settings()).run()
