"""What the deployer is told and what it answers (``<prefix>.commands.deployer``, ``events.deployments``).

Also how it names the services it places, which every record of theirs carries (logs,
heartbeats, incidents): replica ``n`` of a model version is ``<model_id>-v<version>-r<n>``, an
app instance ``app-<instance_id>``. ``model_of_service`` and ``instance_of_service`` read them
back (the logger asks who owns a service's logs with them).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from platform_sdk.artifacts import AppManifest, ModelManifest
from platform_sdk.envelope import Message

DeploymentStatus = Literal["queued", "deploying", "deployed", "failed", "undeploying", "undeployed"]
APP_SERVICE_PREFIX = "app-"
# A model id is ``platform_sdk.artifacts.model_id_for``'s ("m" and 11 hex digits); a version
# matches ``VERSION_PATTERN`` (lowercase ASCII letters, digits, dots and dashes).
_REPLICA_SERVICE = re.compile(r"^(?P<model_id>m[0-9a-f]{11})-v[a-z0-9.-]+-r\d+$")


def deployment_id_for(model_id: str, version: str) -> str:
    """The deployment of one model version: ``<model_id>-v<version>``."""
    return f"{model_id}-v{version}".lower()


def replica_service_id(deployment_id: str, index: int) -> str:
    """The service id of replica ``index`` of a deployment."""
    return f"{deployment_id}-r{index}"


def instance_service_id(instance_id: str) -> str:
    """The service id of an app instance."""
    return f"{APP_SERVICE_PREFIX}{instance_id}"


def model_of_service(service_id: str) -> str | None:
    """The model id whose replica runs as ``service_id``; None when it is no model replica."""
    found = _REPLICA_SERVICE.fullmatch(service_id)
    return found["model_id"] if found else None


def instance_of_service(service_id: str) -> str | None:
    """The app instance that runs as ``service_id``; None when it is no app instance."""
    instance_id = service_id.removeprefix(APP_SERVICE_PREFIX)
    return instance_id if instance_id and instance_id != service_id else None


class DeployModel(Message):
    """Deploy one model version: its artifact is in the blob store. Redelivery deploys nothing twice."""

    message_type = "deployer.deploy-model"
    model_id: str
    version: str
    artifact_key: str
    artifact_sha256: str
    manifest: ModelManifest
    owner: str = Field(
        default="",
        description="Who owns the model (its replicas run sandboxed as this owner's uid); empty: the "
        "deployer asks the AI manager.",
    )


class UndeployModel(Message):
    """Stop a model's replicas: one version, or every version when ``version`` is empty."""

    message_type = "deployer.undeploy-model"
    model_id: str
    version: str | None = None


class ListDeployments(Message):
    message_type = "deployer.list"
    model_id: str | None = None


class Stage(BaseModel):
    stage: str
    at: datetime
    detail: str = ""


class Replica(BaseModel):
    service_id: str
    node_id: str = ""
    url: str = ""


class DeploymentInfo(BaseModel):
    deployment_id: str
    model_id: str
    name: str
    version: str
    status: DeploymentStatus
    error: str | None = None
    stages: list[Stage] = Field(default_factory=list)
    replicas: list[Replica] = Field(default_factory=list)
    endpoints: list[str] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime


class Deployments(Message):
    message_type = "deployer.deployments"
    deployments: list[DeploymentInfo]


class DeploymentEvent(Message):
    """A deployment reached a status (published on ``events.deployments``)."""

    message_type = "deployer.deployment"
    deployment_id: str
    model_id: str
    version: str
    status: DeploymentStatus
    detail: str = ""


# apps ----------------------------------------------------------------------------------------
InstanceStatus = Literal["queued", "starting", "running", "failed", "stopping", "stopped"]


class DeployApp(Message):
    """Start one app instance at a location. Redelivery (same ``instance_id``) starts nothing twice."""

    message_type = "deployer.deploy-app"
    instance_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,55}$")
    app_id: str
    version: str
    artifact_key: str
    artifact_sha256: str
    manifest: AppManifest
    location: str
    owner: str
    app_owner: str = Field(
        default="",
        description="Who owns the app (its instances run sandboxed as this owner's uid; ``owner`` is who "
        "scheduled it); empty: the deployer asks the app manager.",
    )
    email: str | None = None
    schedule_id: str | None = None
    stop_at: datetime | None = Field(default=None, description="When the scheduler will stop it.")
    timezone: str | None = Field(
        default=None,
        description="The IANA time zone of the location, for showing times to people (None: UTC).",
    )


class StopInstance(Message):
    """Stop an app instance (its window ended, or on request) and release its device binding."""

    message_type = "deployer.stop-instance"
    instance_id: str
    reason: str = "stopped on request"


class ListInstances(Message):
    """The instances that match every field given (``owner``: who scheduled them)."""

    message_type = "deployer.list-instances"
    owner: str | None = None
    schedule_id: str | None = None
    instance_id: str | None = None
    instance_ids: list[str] | None = Field(default=None, description="Any of these instances.")


class InstanceInfo(BaseModel):
    instance_id: str
    app_id: str
    app: str
    version: str
    location: str
    schedule_id: str | None = None
    owner: str
    status: InstanceStatus
    error: str | None = None
    node_id: str = ""
    url: str = ""
    devices: dict[str, str] = Field(default_factory=dict, description="Alias → bound device.")
    stages: list[Stage] = Field(default_factory=list)
    stop_at: datetime | None = None
    timezone: str | None = Field(default=None, description="The location's time zone (from its DeployApp).")
    service_id: str = Field(
        default="", description="The managed service running it: its logs are under this id."
    )
    created_at: datetime
    updated_at: datetime


class Instances(Message):
    message_type = "deployer.instances"
    instances: list[InstanceInfo]


class InstanceEvent(Message):
    """An app instance reached a status (published on ``events.app-instances``); mails follow from it."""

    message_type = "deployer.instance"
    instance_id: str
    app: str
    version: str
    location: str
    owner: str
    email: str | None = None
    status: InstanceStatus
    url: str = ""
    node_id: str = ""
    stop_at: datetime | None = None
    timezone: str | None = Field(default=None, description="The location's time zone (from its DeployApp).")
    detail: str = ""
    moved: bool = Field(
        default=False,
        description="Running again on another node (moved by the monitor or node manager): a new address.",
    )
