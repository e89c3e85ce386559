"""The AI manager's answers on the bus: what other domains may ask about models.

The AI manager has no process of its own: its routes and these answers run in the front
door's (``web.service`` runs ``AiManagerAnswers`` on its answers loop, beside the HTTP server).

    <prefix>.commands.ai-manager (the front door's group "<prefix>.front-door-answers", request/reply)
        CheckModelUses ──▶ ModelUseProblems: the models, pinned versions (compared as PEP 440
                           versions) and endpoints an app.json names that the registry lacks
                           (the app manager asks when an app is uploaded)
        FindModelOwners ──▶ ModelOwners: the owner and name of each model asked about that
                           exists (the logger asks whose a replica's logs are)
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from ai_manager import registry
from ai_manager.messages import (
    CheckModelUses,
    FindModelOwners,
    ModelOwner,
    ModelOwners,
    ModelUseProblems,
)
from platform_core.db import Database
from platform_sdk.artifacts import ModelManifest, ModelUse, find_version, latest
from platform_sdk.bus import ConsumerLoop
from platform_sdk.envelope import Envelope

log = logging.getLogger(__name__)
Problem = dict[str, str]


def model_problems(session: Session, alias: str, use: ModelUse) -> list[Problem]:
    """What the registry lacks of the model behind ``models.<alias>``: the model, the version, endpoints."""
    field = f"models.{alias}"
    row = registry.find_model_by_name(session, use.model)
    if row is None:
        return [{"field": f"{field}.model", "reason": f"unknown model {use.model!r}; see `aiot model list`"}]
    versions = registry.list_versions(session, row.model_id)
    chosen = (
        latest(versions, lambda version: version.version)
        if use.version is None
        else find_version(versions, use.version, lambda version: version.version)
    )
    if use.version is not None and chosen is None:
        known = ", ".join(version.version for version in versions) or "none"
        reason = f"model {use.model!r} has no version {use.version!r} (it has: {known})"
        return [{"field": f"{field}.version", "reason": reason}]
    if chosen is None:  # a model is registered with its first version; be safe anyway
        return []
    endpoints = [endpoint.name for endpoint in ModelManifest.model_validate_json(chosen.manifest).endpoints]
    subject = f"model {use.model!r}" + (f" version {use.version}" if use.version is not None else "")
    return [
        {
            "field": f"{field}.endpoints.{index}",
            "reason": f"{subject} has no endpoint {endpoint!r} (it has: {', '.join(endpoints)})",
        }
        for index, endpoint in enumerate(use.endpoints)
        if endpoint not in endpoints
    ]


class AiManagerAnswers:
    """Answers the AI manager's requests from ``database``; ``add_to(loop)`` registers them."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add_to(self, loop: ConsumerLoop) -> None:
        loop.add_handler(CheckModelUses, self.on_check_model_uses)
        loop.add_handler(FindModelOwners, self.on_find_owners)

    def on_check_model_uses(self, request: CheckModelUses, _envelope: Envelope) -> ModelUseProblems:
        with self.database.session() as session:
            problems = [
                found for alias, use in request.uses.items() for found in model_problems(session, alias, use)
            ]
        return ModelUseProblems(problems=problems)

    def on_find_owners(self, request: FindModelOwners, _envelope: Envelope) -> ModelOwners:
        with self.database.session() as session:
            rows = registry.models_by_id(session, request.model_ids)
            return ModelOwners(
                models=[ModelOwner(model_id=row.model_id, name=row.name, owner=row.owner) for row in rows]
            )
