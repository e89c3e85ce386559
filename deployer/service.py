"""The deployer as a platform service: deploy requests in, running and checked replicas out.

    <prefix>.commands.deployer (group "deployer")
        DeployApp, StopInstance, ListInstances ──▶ app instances (``deployer.apps``)
        DeployModel    ──▶ record "queued" (a redelivered request finds its row: nothing twice)
                       ──▶ deploy worker: fetch the artifact ──▶ build the bundle ──▶ for each replica
                           PlaceService to the node manager (a different node where there is one)
                           ──▶ wait for /health ──▶ run the manifest's example ──▶ "deployed"
        UndeployModel  ──▶ its bundle's zip leaves the blob store ──▶ UnplaceService for each
                           replica (each node removes its unpacked copy as the last replica
                           there stops, the zip being gone) ──▶ "undeployed" (request/reply)
        ResolveModel   ──▶ the live replicas of a model version (``model_call``) (request/reply)
    <prefix>.inst.*.requests (group "deployer.instances"; ``platform_core.instances``)
        ResolveModel from a model replica or app instance with its own principal; anything else
                       ──▶ refused (an error reply, or the dead-letter topic)
        ListDeployments ──▶ deployments with their stages                     (request/reply)
    <prefix>.events.incidents (group "deployer")
        ServiceIncident of an app instance ──▶ moved (new address) or given up (failed) (``deployer.apps``)
    <prefix>.events.deployments ◀── DeploymentEvent when a deployment is deployed, failed or undeployed

It owns the ``deployments`` and ``app_instances`` tables and the ``bundles/`` prefix of the blob store. Every
stage is recorded as it starts, so ``aiot model show`` follows a deploy; a deployer that
restarts resumes the deployments it had queued or begun. Replicas and app instances are
placed, found, stopped and health-checked through one ``PlacementClient``
(``platform_core.placement_client``), which this module hands to ``deployer.apps`` with the
rest of what an app start needs; ``deployer.apps`` does not import this module.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import zipfile
from typing import Any

import requests
import sqlalchemy as sa

from ai_manager.messages import FindModelOwners, ModelOwners, ai_manager_topic
from deployer.apps import AppInstances
from deployer.messages import (
    DeployApp,
    DeploymentEvent,
    DeploymentInfo,
    Deployments,
    DeployModel,
    ListDeployments,
    ListInstances,
    Replica,
    StopInstance,
    UndeployModel,
    deployment_id_for,
    replica_service_id,
)
from deployer.models import DeploymentRow, add_stage, record_stage
from platform_core.archive import Archive
from platform_core.blobstore import BlobStore, blob_store_from_settings
from platform_core.db import Database
from platform_core.instances import instance_loop
from platform_core.nodes import BundleRef, ServiceIncident, ServiceSpec
from platform_core.placement_client import PlacementClient
from platform_core.service import QueueWorker, Service
from platform_sdk.artifacts import ModelManifest, find_version, latest
from platform_sdk.bus import ConsumerLoop, Producer, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.errors import BadRequest, NotFound, PlatformError, Unavailable
from platform_sdk.model_client import EndpointInfo, ModelReplicas, ResolveModel
from platform_sdk.settings import get_settings

log = logging.getLogger(__name__)
DEPLOY_CONFIG = "aiot-deploy.json"


def _refused_from_an_instance(envelope: Envelope) -> None:
    raise BadRequest(
        f"an instance may ask the deployer {ResolveModel.message_type!r} only, not {envelope.type!r}"
    )


class DeployerService(Service):
    name = "deployer"

    def on_start(self) -> None:
        bus = self.sdk.bus
        self.database = Database.from_settings(self.settings)
        self.own(self.database)
        self.database.ensure_schema()
        self.blobs: BlobStore = blob_store_from_settings(self.settings)
        bus.ensure_topics(
            [bus.topics.deployer, bus.topics.deployments, bus.topics.app_instances, bus.topics.incidents]
        )
        self.producer: Producer = bus.producer()
        self.requester = Requester(bus)
        self.requester.start()
        self.own(self.requester)
        self.placements = PlacementClient(self.requester, self.settings)
        self.worker: QueueWorker[DeployModel | DeployApp] = QueueWorker("deploy", self.deploy)
        self.apps = AppInstances(
            database=self.database,
            placements=self.placements,
            requester=self.requester,
            producer=self.producer,
            resolve=self.resolve,
            enqueue=self.worker.put,
        )
        self.worker.start()
        self.own(self.worker)
        for model_request in self._unfinished():
            self.worker.put(model_request)
        for app_request in self.apps.unfinished():
            self.worker.put(app_request)
        commands = ConsumerLoop(
            bus, [bus.topics.deployer], group=f"{bus.topics.prefix}.deployer", name=self.service_id
        )
        commands.add_handler(DeployModel, self.on_deploy)
        commands.add_handler(UndeployModel, self.on_undeploy)
        commands.add_handler(ResolveModel, self.on_resolve)
        commands.add_handler(ListDeployments, self.on_list)
        commands.add_handler(DeployApp, self.apps.on_deploy)
        commands.add_handler(StopInstance, self.apps.on_stop)
        commands.add_handler(ListInstances, self.apps.on_list)
        commands.start()
        self.own(commands)
        # A model replica's or app instance's own requests topic: ResolveModel only.
        instance_requests = instance_loop(
            bus,
            "requests",
            group=f"{bus.topics.prefix}.deployer.instances",
            name=f"{self.service_id}-instances",
            offset_reset="earliest",
        )
        instance_requests.add_handler(ResolveModel, self.on_resolve)
        instance_requests.on_any(_refused_from_an_instance)
        instance_requests.start()
        self.own(instance_requests)
        incidents = ConsumerLoop(
            bus,
            [bus.topics.incidents],
            group=f"{bus.topics.prefix}.deployer",
            name=f"{self.service_id}-incidents",
        )
        incidents.add_handler(ServiceIncident, self.apps.on_incident)
        incidents.start()
        self.own(incidents)

    # handlers -----------------------------------------------------------------------------
    def on_deploy(self, request: DeployModel, _envelope: Envelope) -> None:
        deployment_id = deployment_id_for(request.model_id, request.version)
        with self.database.session() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is not None and row.status in ("queued", "deploying", "deployed"):
                log.info("%s is already %s; nothing to do", deployment_id, row.status)
                return
            if row is None:
                row = DeploymentRow(deployment_id=deployment_id, model_id=request.model_id)
                session.add(row)
            row.name, row.version = request.manifest.name, request.version
            row.status, row.error, row.stages, row.replicas = "queued", None, "[]", "[]"
            row.request = request.model_dump_json()
            add_stage(row, "queued")
        self.worker.put(request)

    def on_undeploy(self, request: UndeployModel, _envelope: Envelope) -> Deployments:
        with self.database.session() as session:
            query = sa.select(DeploymentRow).where(DeploymentRow.model_id == request.model_id)
            if request.version:
                query = query.where(DeploymentRow.version == request.version)
            ids = [row.deployment_id for row in session.scalars(query)]
        if not ids:
            which = f" of version {request.version}" if request.version else ""
            raise NotFound(f"model {request.model_id!r} has no deployment{which}")
        for deployment_id in ids:
            self._drop_bundle(deployment_id)  # first: a node keeps a folder whose zip is still there
            self._stop_replicas(deployment_id)
            self._finish(deployment_id, "undeployed", "stopped on request")
        return self.on_list(ListDeployments(model_id=request.model_id), _envelope)

    def on_list(self, request: ListDeployments, _envelope: Envelope) -> Deployments:
        with self.database.session() as session:
            query = sa.select(DeploymentRow).order_by(DeploymentRow.created_at)
            if request.model_id:
                query = query.where(DeploymentRow.model_id == request.model_id)
            return Deployments(deployments=[_info(row) for row in session.scalars(query)])

    def on_resolve(self, request: ResolveModel, _envelope: Envelope) -> ModelReplicas:
        return self.resolve(request)

    def resolve(self, request: ResolveModel) -> ModelReplicas:
        """The live replicas of the model version asked for (the latest deployed when none is)."""
        with self.database.session() as session:
            query = sa.select(DeploymentRow).where(
                DeploymentRow.status == "deployed",
                sa.or_(DeploymentRow.model_id == request.model, DeploymentRow.name == request.model),
            )
            rows = list(session.scalars(query))
            row = (
                find_version(rows, request.version, _version_of)
                if request.version
                else latest(rows, _version_of)
            )
            if row is None:
                which = f" version {request.version}" if request.version else ""
                raise NotFound(f"model {request.model!r}{which} is not deployed; see `aiot model list`")
            deploy = DeployModel.model_validate_json(row.request)
            service_ids = [Replica.model_validate(item).service_id for item in json.loads(row.replicas)]
        urls = [url for url in (self._replica_url(service_id) for service_id in service_ids) if url]
        if not urls:
            raise Unavailable(f"model {request.model!r}: no replica is placed right now; try again shortly")
        return ModelReplicas(
            model_id=deploy.model_id,
            name=deploy.manifest.name,
            version=deploy.version,
            urls=urls,
            endpoints=[
                EndpointInfo(name=endpoint.name, inputs=list(endpoint.inputs))
                for endpoint in deploy.manifest.endpoints
            ],
        )

    # deploying ----------------------------------------------------------------------------
    def deploy(self, request: DeployModel | DeployApp) -> None:
        if isinstance(request, DeployApp):
            self.apps.deploy(request)
            return
        deployment_id = deployment_id_for(request.model_id, request.version)
        try:
            self._deploy(deployment_id, request)
        except PlatformError as exc:
            log.error("deploying %s failed: %s", deployment_id, exc)
            self._stop_replicas(deployment_id)
            self._finish(deployment_id, "failed", str(exc))
        except Exception as exc:
            log.exception("deploying %s failed", deployment_id)
            self._stop_replicas(deployment_id)
            self._finish(deployment_id, "failed", f"{type(exc).__name__}: {exc}")

    def _deploy(self, deployment_id: str, request: DeployModel) -> None:
        manifest = request.manifest
        self._stage(deployment_id, "fetching", request.artifact_key, status="deploying")
        artifact = self.blobs.get(request.artifact_key)
        if hashlib.sha256(artifact).hexdigest() != request.artifact_sha256:
            raise PlatformError(f"artifact {request.artifact_key} changed since upload: upload it again")
        self._stage(deployment_id, "bundling")
        bundle = self._bundle(artifact, deployment_id, request)
        owner = request.owner or self._model_owner(request.model_id)
        replicas: list[Replica] = []
        for index in range(manifest.replicas):
            spec = ServiceSpec(
                service_id=replica_service_id(deployment_id, index),
                kind="model",
                owner=owner,
                module="ai_manager.serving",
                bundle=bundle,
                requirements=manifest.requirements,
                ports=["http"],
                cpu_limit=manifest.resources.cpu,
                memory_mb=manifest.resources.memory_mb,
                env={"AIOT_MODEL__ID": request.model_id, "AIOT_MODEL__VERSION": request.version},
            )
            self._stage(deployment_id, "placing", f"replica {index}")
            placement = self.placements.place(spec, avoid=[replica.node_id for replica in replicas])
            replica = Replica(service_id=spec.service_id, node_id=placement.node_id, url=placement.http_url)
            replicas.append(replica)
            self._record_replicas(deployment_id, replicas)
            self._stage(
                deployment_id, "health", f"{replica.service_id} on {replica.node_id} at {replica.url}"
            )
            self.placements.wait_healthy(replica.service_id, f"{replica.url}/health")
        if manifest.example is not None:
            self._stage(deployment_id, "smoke-test", f"example on {manifest.example.endpoint}")
            self._smoke_test(replicas[0].url, manifest, Archive.open(artifact, label=request.artifact_key))
        with self.database.session() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is not None:
                row.endpoints = json.dumps([endpoint.name for endpoint in manifest.endpoints])
        self._finish(deployment_id, "deployed", f"{len(replicas)} replica(s)")

    def _model_owner(self, model_id: str) -> str:
        """Who owns the model, from the AI manager (a ``DeployModel`` sent before it carried ``owner``)."""
        answer = self.requester.request(
            ai_manager_topic(self.sdk.bus.topics),
            FindModelOwners(model_ids=[model_id]),
            ModelOwners,
            timeout=self.settings.kafka.request_timeout_s,
        )
        owners = [model.owner for model in answer.models if model.model_id == model_id]
        if not owners:
            raise NotFound(f"model {model_id!r} is not known to the AI manager: it was deleted")
        return owners[0]

    def _bundle(self, artifact: bytes, deployment_id: str, request: DeployModel) -> BundleRef:
        """The artifact's files plus the generated deploy config, as one zip in the blob store."""
        config = {
            "deployment_id": deployment_id,
            "model_id": request.model_id,
            "version": request.version,
            "service_module": "ai_manager.serving",
        }
        output = io.BytesIO()
        with (
            Archive.open(artifact, label=request.artifact_key) as archive,
            zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as bundle,
        ):
            for entry in sorted(archive.entries, key=lambda item: item.name):
                info = zipfile.ZipInfo(entry.name, date_time=(1980, 1, 1, 0, 0, 0))
                bundle.writestr(info, archive.read(entry.name), zipfile.ZIP_DEFLATED)
            info = zipfile.ZipInfo(DEPLOY_CONFIG, date_time=(1980, 1, 1, 0, 0, 0))
            bundle.writestr(info, json.dumps(config, indent=2, sort_keys=True), zipfile.ZIP_DEFLATED)
        data = output.getvalue()
        sha256 = hashlib.sha256(data).hexdigest()
        key = f"bundles/{sha256}.zip"
        if not self.blobs.exists(key):
            self.blobs.put(key, data)
        with self.database.session() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is not None:
                row.bundle_key, row.bundle_sha256 = key, sha256
        return BundleRef(key=key, sha256=sha256)

    def _drop_bundle(self, deployment_id: str) -> None:
        """Remove the bundle zip of a deployment being stopped (a new deploy builds it again), unless
        another live deployment has the same one."""
        with self.database.session() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is None or row.bundle_key is None:
                return
            key = row.bundle_key
            shared = session.scalar(
                sa.select(sa.func.count())
                .select_from(DeploymentRow)
                .where(
                    DeploymentRow.bundle_key == key,
                    DeploymentRow.deployment_id != deployment_id,
                    DeploymentRow.status.in_(("queued", "deploying", "deployed")),
                )
            )
            row.bundle_key, row.bundle_sha256 = None, None
        if shared:
            return
        try:
            self.blobs.delete(key)
        except NotFound:
            pass  # removed already
        except PlatformError as exc:
            log.warning("cannot remove bundle %s of %s: %s", key, deployment_id, exc)

    def _smoke_test(self, url: str, manifest: ModelManifest, archive: Archive) -> None:
        example = manifest.example
        assert example is not None
        endpoint = manifest.endpoint(example.endpoint)
        assert endpoint is not None
        payload: dict[str, Any] = {}
        for name, value in example.input.items():
            if endpoint.inputs[name].type == "image" and isinstance(value, str) and value in archive.names():
                payload[name] = base64.b64encode(archive.read(value)).decode()
            else:
                payload[name] = value
        archive.close()
        try:
            response = requests.post(
                f"{url}/predict/{example.endpoint}",
                json=payload,
                timeout=self.settings.deployer.smoke_timeout_s,
            )
        except requests.RequestException as exc:
            raise PlatformError(f"smoke test: the replica did not answer: {exc}") from exc
        if response.status_code != 200:
            raise PlatformError(
                f"smoke test: {example.endpoint} answered {response.status_code}: {response.text[:300]}"
            )
        mismatches = _mismatches(example.output, response.json(), example.tolerance)
        if mismatches:
            raise PlatformError(f"smoke test: the example's output differs: {'; '.join(mismatches)}")

    # records ------------------------------------------------------------------------------
    def _replica_url(self, service_id: str) -> str | None:
        placement = self.placements.locate(service_id)
        if (
            placement is None
            or placement.state is None
            or placement.state.state not in ("starting", "running")
        ):
            return None
        return placement.http_url or None

    def _stop_replicas(self, deployment_id: str) -> None:
        with self.database.session() as session:
            row = session.get(DeploymentRow, deployment_id)
            replicas = [Replica.model_validate(item) for item in json.loads(row.replicas)] if row else []
        for replica in replicas:
            self.placements.unplace(replica.service_id)

    def _record_replicas(self, deployment_id: str, replicas: list[Replica]) -> None:
        with self.database.session() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is not None:
                row.replicas = json.dumps([replica.model_dump() for replica in replicas])

    def _stage(self, deployment_id: str, stage: str, detail: str = "", status: str | None = None) -> None:
        log.info("%s: %s %s", deployment_id, stage, detail)
        record_stage(self.database, DeploymentRow, deployment_id, stage, detail, status)

    def _finish(self, deployment_id: str, status: str, detail: str) -> None:
        with self.database.session() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is None:
                return
            row.status = status
            row.error = detail if status == "failed" else None
            add_stage(row, status, detail)
            event = DeploymentEvent(
                deployment_id=deployment_id,
                model_id=row.model_id,
                version=row.version,
                status=status,
                detail=detail,
            )
        (log.error if status == "failed" else log.info)("%s %s: %s", deployment_id, status, detail)
        try:
            self.producer.send(self.sdk.bus.topics.deployments, event, key=deployment_id)
            self.producer.flush(5)
        except PlatformError as exc:
            log.warning("cannot publish %s of %s: %s", status, deployment_id, exc)

    def _unfinished(self) -> list[DeployModel]:
        with self.database.session() as session:
            rows = session.scalars(
                sa.select(DeploymentRow).where(DeploymentRow.status.in_(("queued", "deploying")))
            )
            return [DeployModel.model_validate_json(row.request) for row in rows]


def _info(row: DeploymentRow) -> DeploymentInfo:
    return DeploymentInfo.model_validate(
        {
            "deployment_id": row.deployment_id,
            "model_id": row.model_id,
            "name": row.name,
            "version": row.version,
            "status": row.status,
            "error": row.error,
            "stages": json.loads(row.stages),
            "replicas": json.loads(row.replicas),
            "endpoints": json.loads(row.endpoints),
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )


def _version_of(row: DeploymentRow) -> str:
    return row.version


def _mismatches(expected: dict[str, Any], actual: dict[str, Any], tolerance: float) -> list[str]:
    problems: list[str] = []
    for name, want in expected.items():
        if name not in actual:
            problems.append(f"{name} missing")
            continue
        got = actual[name]
        if isinstance(want, int | float) and not isinstance(want, bool) and isinstance(got, int | float):
            if abs(got - want) > tolerance * max(1.0, abs(want)):
                problems.append(f"{name}: expected {want}, got {got}")
        elif got != want:
            problems.append(f"{name}: expected {want!r}, got {got!r}")
    return problems


def main() -> None:
    DeployerService(get_settings()).run()
