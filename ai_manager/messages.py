"""What the AI manager is asked and answers (``<prefix>.commands.ai-manager``, request/reply).

The app manager asks ``CheckModelUses`` when an app is uploaded: the models are the AI
manager's, so it is the one to say which of the models, versions and endpoints an
``app.json`` names it lacks (``ai_manager.answers``). The logger asks ``FindModelOwners``
whose the models behind replicas' logs are.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from platform_sdk.artifacts import ModelUse
from platform_sdk.envelope import Message
from platform_sdk.topics import Topics


def ai_manager_topic(topics: Topics) -> str:
    """Requests to the AI manager (answered by the front door's process, which hosts it)."""
    return topics.commands("ai-manager")


class CheckModelUses(Message):
    """What the model registry lacks of the models an app names (alias → use): each model, its
    pinned version, the endpoints the app calls."""

    message_type = "ai-manager.check-model-uses"
    uses: dict[str, ModelUse]


class ModelUseProblems(Message):
    message_type = "ai-manager.model-use-problems"
    problems: list[dict[str, str]] = Field(
        default_factory=list,
        description='{"field": "models.<alias>.model|version|endpoints.<i>", "reason"}, in the order asked.',
    )


class FindModelOwners(Message):
    """Who owns each of these models (by model id)?"""

    message_type = "ai-manager.find-model-owners"
    model_ids: list[str]


class ModelOwner(BaseModel):
    model_id: str
    name: str
    owner: str


class ModelOwners(Message):
    message_type = "ai-manager.model-owners"
    models: list[ModelOwner] = Field(
        default_factory=list, description="The models known; unknown ids left out."
    )
