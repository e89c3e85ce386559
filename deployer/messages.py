"""What the deployer is told and what it answers (``<prefix>.commands.deployer``, ``events.deployments``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from platform_sdk.artifacts import ModelManifest
from platform_sdk.envelope import Message

DeploymentStatus = Literal["queued", "deploying", "deployed", "failed", "undeploying", "undeployed"]


class DeployModel(Message):
    """Deploy one model version: its artifact is in the blob store. Redelivery deploys nothing twice."""

    message_type = "deployer.deploy-model"
    model_id: str
    version: str
    artifact_key: str
    artifact_sha256: str
    manifest: ModelManifest


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
