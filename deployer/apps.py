"""App instances: the deployer's app path.

    DeployApp (from the scheduler, keyed by instance id)
        ──▶ row "queued" (a redelivered request finds its row: nothing starts twice)
        ──▶ worker: BindDevices to the device manager (aliases → devices at the location)
            ──▶ each model alias resolved to a deployed model (refused when one is not deployed)
            ──▶ the instance config (``AppInstanceConfig``) in ``AIOT_APP__INSTANCE``, and its
                bus grants (``ServiceSpec.bus``: its sensors' data and controllers' state to
                read, its controllers' commands to write; the node manager grants them)
            ──▶ PlaceService ``app-<instance>`` (``python -m platform_sdk.run_app`` in the app's zip,
                the node manager picks the least-loaded node) ──▶ its health path answers
            ──▶ "running" with node and address ──▶ InstanceEvent on ``events.app-instances``
    StopInstance ──▶ UnplaceService ──▶ UnbindDevices ──▶ "stopped" ──▶ InstanceEvent
    any failure  ──▶ what was started is stopped, the binding released ──▶ "failed" ──▶ InstanceEvent
    ServiceIncident of a running ``app-<instance>`` (from the heartbeat monitor or the node manager)
        replaced ──▶ its new node and address recorded ──▶ InstanceEvent (running, moved)
        gave_up  ──▶ the binding released ──▶ "failed" with its last output ──▶ InstanceEvent

The bundle of an instance is the uploaded app zip itself (content-addressed, unpacked once
per node and shared by every instance of the version); what differs per instance travels
in its environment. The instance is a managed service like any other: heartbeats, logs,
restarts by the heartbeat monitor.

``AppInstances`` is handed what it uses by the deployer service (``deployer.service``): the
database, the placement client, the requester and producer, model resolution and the deploy
worker's queue. It does not import the service.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import sqlalchemy as sa

from app_manager.messages import AppOwners, FindAppOwners, app_manager_topic
from deployer.messages import (
    DeployApp,
    InstanceEvent,
    InstanceInfo,
    Instances,
    ListInstances,
    StopInstance,
    instance_of_service,
    instance_service_id,
)
from deployer.models import AppInstanceRow, add_stage, record_stage
from device_manager.messages import BindDevices, DeviceBindings, UnbindDevices, Unbound
from platform_core.db import Database
from platform_core.nodes import BundleRef, BusGrants, ServiceIncident, ServiceSpec
from platform_core.placement_client import PlacementClient
from platform_sdk.artifacts import AppInstanceConfig, ModelBinding
from platform_sdk.bus import Producer, Requester
from platform_sdk.device_documents import Binding
from platform_sdk.envelope import Envelope
from platform_sdk.errors import NotFound, PlatformError
from platform_sdk.model_client import ModelReplicas, ResolveModel
from platform_sdk.topics import Topics

log = logging.getLogger(__name__)
BIND_TIMEOUT_S = 30.0
ACTIVE = ("queued", "starting", "running")


class AppInstances:
    """Starts, stops and lists app instances for the deployer service."""

    def __init__(
        self,
        *,
        database: Database,
        placements: PlacementClient,
        requester: Requester,
        producer: Producer,
        resolve: Callable[[ResolveModel], ModelReplicas],
        enqueue: Callable[[DeployApp], None],
    ) -> None:
        self.database = database
        self.placements = placements
        self.requester = requester
        self.producer = producer
        self.topics = requester.bus.topics
        self._resolve = resolve
        self._enqueue = enqueue

    # handlers -----------------------------------------------------------------------------
    def on_deploy(self, request: DeployApp, _envelope: Envelope) -> None:
        with self.database.session() as session:
            row = session.get(AppInstanceRow, request.instance_id)
            if row is not None:
                log.info("instance %s is already %s; nothing to do", request.instance_id, row.status)
                return
            row = AppInstanceRow(
                instance_id=request.instance_id,
                app_id=request.app_id,
                app_name=request.manifest.name,
                version=request.version,
                location=request.location,
                schedule_id=request.schedule_id,
                owner=request.owner,
                request=request.model_dump_json(),
                stop_at=request.stop_at,
            )
            session.add(row)
            add_stage(row, "queued")
        self._enqueue(request)

    def on_stop(self, request: StopInstance, _envelope: Envelope) -> Instances:
        with self.database.session() as session:
            row = session.get(AppInstanceRow, request.instance_id)
            if row is None:
                raise NotFound(f"no app instance {request.instance_id!r}; see `aiot instance list`")
            already = row.status in ("stopped", "failed")
        if not already:
            self._stage(request.instance_id, "stopping", request.reason, status="stopping")
            self._release(request.instance_id)
            self._finish(request.instance_id, "stopped", request.reason)
        return self.on_list(ListInstances(instance_id=request.instance_id), _envelope)

    def on_list(self, request: ListInstances, _envelope: Envelope) -> Instances:
        with self.database.session() as session:
            query = sa.select(AppInstanceRow).order_by(AppInstanceRow.created_at)
            if request.owner:
                query = query.where(AppInstanceRow.owner == request.owner)
            if request.schedule_id:
                query = query.where(AppInstanceRow.schedule_id == request.schedule_id)
            if request.instance_id:
                query = query.where(AppInstanceRow.instance_id == request.instance_id)
            if request.instance_ids is not None:
                query = query.where(AppInstanceRow.instance_id.in_(request.instance_ids))
            return Instances(instances=[_info(row) for row in session.scalars(query)])

    def on_incident(self, incident: ServiceIncident, _envelope: Envelope) -> None:
        """Follows a running instance moved to another node, or given up by the heartbeat monitor."""
        instance_id = instance_of_service(incident.service_id)
        if incident.kind not in ("replaced", "gave_up") or instance_id is None:
            return
        with self.database.session() as session:
            row = session.get(AppInstanceRow, instance_id)
            if row is None or row.status != "running":
                return  # a start in progress watches its own health; a stopped one is over
        if incident.kind == "gave_up":
            self._release(instance_id)
            self._finish(
                instance_id, "failed", f"it crashed on every restart, so it was stopped: {incident.detail}"
            )
            return
        placement = self.placements.locate(incident.service_id)
        if placement is None:
            return  # unplaced meanwhile: a stop is under way
        url = placement.http_url
        with self.database.session() as session:
            row = session.get(AppInstanceRow, instance_id)
            if row is None or row.status != "running":
                return
            row.node_id, row.url = placement.node_id, url
        self._finish(
            instance_id,
            "running",
            f"moved to {placement.node_id}" + (f" at {url}" if url else ""),
            moved=True,
        )

    def unfinished(self) -> list[DeployApp]:
        """Instances a restarted deployer had queued or begun: started (again) from the top."""
        with self.database.session() as session:
            rows = session.scalars(
                sa.select(AppInstanceRow).where(AppInstanceRow.status.in_(("queued", "starting")))
            )
            return [DeployApp.model_validate_json(row.request) for row in rows]

    # deploying ----------------------------------------------------------------------------
    def deploy(self, request: DeployApp) -> None:
        instance_id = request.instance_id
        if request.stop_at is not None and request.stop_at <= datetime.now(UTC):
            self._finish(instance_id, "stopped", "its window ended before it could start")
            return
        try:
            self._deploy(request)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, PlatformError) else f"{type(exc).__name__}: {exc}"
            log.error("starting app instance %s failed: %s", instance_id, reason)
            self._release(instance_id)
            self._finish(instance_id, "failed", reason)

    def _deploy(self, request: DeployApp) -> None:
        manifest = request.manifest
        instance_id = request.instance_id
        self._stage(instance_id, "binding", f"devices at {request.location}", status="starting")
        bindings = self._bind(request)
        devices = _flatten(bindings.bindings)
        with self.database.session() as session:
            row = session.get(AppInstanceRow, instance_id)
            if row is not None:
                row.config = json.dumps({alias: binding.device_id for alias, binding in devices.items()})
        self._stage(instance_id, "models", ", ".join(use.model for use in manifest.models.values()))
        for alias, use in manifest.models.items():
            self._check_deployed(alias, use.model, use.version)
        config = AppInstanceConfig(
            instance_id=instance_id,
            app=manifest.name,
            version=request.version,
            location=request.location,
            timezone=bindings.timezone,
            owner=request.owner,
            devices=devices,
            models={
                alias: ModelBinding(model=use.model, version=use.version)
                for alias, use in manifest.models.items()
            },
        )
        spec = ServiceSpec(
            service_id=instance_service_id(instance_id),
            kind="app",
            owner=request.app_owner or self._app_owner(request.app_id),
            module="platform_sdk.run_app",
            bundle=BundleRef(key=request.artifact_key, sha256=request.artifact_sha256),
            requirements=manifest.requirements,
            ports=["http"] if manifest.kind == "web" else [],
            cpu_limit=manifest.resources.cpu,
            memory_mb=manifest.resources.memory_mb,
            env={"AIOT_APP__INSTANCE": config.model_dump_json()},
            bus=_bus_grants(self.topics, devices.values()),
        )
        self._stage(instance_id, "placing", "on the least-loaded node")
        placement = self.placements.place(spec, avoid=[])
        url = placement.http_url
        with self.database.session() as session:
            row = session.get(AppInstanceRow, instance_id)
            if row is not None:
                row.node_id, row.url = placement.node_id, url
        health = f"{url}{manifest.web.health_path}" if manifest.web is not None and url else None
        self._stage(
            instance_id, "health", f"{spec.service_id} on {placement.node_id} at {url or '(no HTTP)'}"
        )
        self.placements.wait_healthy(spec.service_id, health)
        with self.database.session() as session:
            row = session.get(AppInstanceRow, instance_id)
            stopped_meanwhile = row is None or row.status not in ACTIVE
        if stopped_meanwhile:  # a StopInstance came while it started: it must not outlive that
            self.placements.unplace(spec.service_id)
            return
        self._finish(instance_id, "running", f"on {placement.node_id}" + (f" at {url}" if url else ""))

    def _bind(self, request: DeployApp) -> DeviceBindings:
        if not request.manifest.devices:
            return DeviceBindings(
                app_instance_id=request.instance_id, timezone=request.timezone or "UTC", bindings={}
            )
        return self.requester.request(
            self.topics.device_manager,
            BindDevices(
                app_instance_id=request.instance_id, location=request.location, needs=request.manifest.devices
            ),
            DeviceBindings,
            timeout=BIND_TIMEOUT_S,
        )

    def _app_owner(self, app_id: str) -> str:
        """Who owns the app, from the app manager (a ``DeployApp`` sent before it carried ``app_owner``)."""
        answer = self.requester.request(
            app_manager_topic(self.topics), FindAppOwners(app_ids=[app_id]), AppOwners, timeout=BIND_TIMEOUT_S
        )
        owners = [app.owner for app in answer.apps if app.app_id == app_id]
        if not owners:
            raise NotFound(f"app {app_id!r} is not known to the app manager: it was deleted")
        return owners[0]

    def _check_deployed(self, alias: str, model: str, version: str | None) -> None:
        try:
            self._resolve(ResolveModel(model=model, version=version))
        except PlatformError as exc:
            raise PlatformError(f"model alias {alias!r}: {exc.message}") from exc

    def _release(self, instance_id: str) -> None:
        self.placements.unplace(instance_service_id(instance_id))
        with contextlib.suppress(PlatformError):
            self.requester.request(
                self.topics.device_manager,
                UnbindDevices(app_instance_id=instance_id),
                Unbound,
                timeout=BIND_TIMEOUT_S,
            )

    # records ------------------------------------------------------------------------------
    def _stage(self, instance_id: str, stage: str, detail: str = "", status: str | None = None) -> None:
        log.info("%s: %s %s", instance_id, stage, detail)
        record_stage(self.database, AppInstanceRow, instance_id, stage, detail, status)

    def _finish(self, instance_id: str, status: str, detail: str, *, moved: bool = False) -> None:
        with self.database.session() as session:
            row = session.get(AppInstanceRow, instance_id)
            if row is None:
                return
            row.status = status
            row.error = detail if status == "failed" else None
            add_stage(row, status, detail)
            request = DeployApp.model_validate_json(row.request)
            event = InstanceEvent(
                instance_id=instance_id,
                app=row.app_name,
                version=row.version,
                location=row.location,
                owner=row.owner,
                email=request.email,
                status=status,
                url=row.url if status == "running" else "",
                node_id=row.node_id,
                stop_at=row.stop_at,
                timezone=request.timezone,
                detail=detail,
                moved=moved,
            )
        (log.error if status == "failed" else log.info)("app instance %s %s: %s", instance_id, status, detail)
        try:
            self.producer.send(self.topics.app_instances, event, key=instance_id)
            self.producer.flush(5)
        except PlatformError as exc:
            log.warning("cannot publish %s of %s: %s", status, instance_id, exc)


def _bus_grants(topics: Topics, devices: Iterable[Binding]) -> BusGrants:
    """What an instance bound to ``devices`` may use of the bus besides its own topics: its sensors'
    data and its controllers' state to read, its controllers' commands to write."""
    read, write = [], []
    for binding in devices:
        if binding.type.kind == "sensor":
            read.append(topics.device_data(binding.device_id))
        else:
            read.append(topics.device_state(binding.device_id))
            write.append(topics.device_commands(binding.device_id))
    return BusGrants(read=sorted(set(read)), write=sorted(set(write)))


def _flatten(bindings: dict[str, list[Binding]]) -> dict[str, Binding]:
    """Aliases as app code sees them: ``cam`` for one device, ``cam.1`` … for several."""
    flat: dict[str, Binding] = {}
    for alias, bound in bindings.items():
        if len(bound) == 1:
            flat[alias] = bound[0]
        else:
            flat.update({f"{alias}.{index}": binding for index, binding in enumerate(bound, start=1)})
    return flat


def _info(row: AppInstanceRow) -> InstanceInfo:
    return InstanceInfo.model_validate(
        {
            "instance_id": row.instance_id,
            "app_id": row.app_id,
            "app": row.app_name,
            "version": row.version,
            "location": row.location,
            "schedule_id": row.schedule_id,
            "owner": row.owner,
            "status": row.status,
            "error": row.error,
            "node_id": row.node_id,
            "url": row.url,
            "devices": json.loads(row.config or "{}"),
            "stages": json.loads(row.stages),
            "stop_at": row.stop_at,
            "timezone": json.loads(row.request or "{}").get("timezone"),
            "service_id": instance_service_id(row.instance_id),
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )
