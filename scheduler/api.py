"""``/api/schedules``, ``/api/instances`` and ``/api/mails`` (mounted on the front door).

End users schedule apps at locations and see, change and cancel their own schedules,
instances and mails (another user's schedule is a 403 naming it and its owner); platform
configurers see and manage everyone's. Creating a schedule is checked in the
request — the app and its version exist (the app manager is asked, ``PickAppVersion``), the
location exists, is open to the caller (a configurer may restrict it to some users; a
configurer may use every one) and has the device types the app needs (the device manager is
asked, ``CheckLocation``: its 403 naming the location comes through), the times are valid and
not all past — then stored and handed to the
scheduler service over Kafka; a schedule the scheduler cannot be told about is not kept.
A domain that does not answer makes the request 503. Instances belong to the deployer: these
routes ask it over Kafka.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import flask
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app_manager.messages import AppVersion, PickAppVersion, app_manager_topic
from deployer.messages import InstanceInfo, Instances, ListInstances, StopInstance
from device_manager.messages import CheckLocation, LocationCheck
from platform_core.auth import Principal, Role, allow, current_principal
from platform_core.http import ask, json_body, query_as, resources, shapes
from platform_sdk.errors import BadRequest, Forbidden, NotFound, PlatformError, ValidationFailed
from scheduler import timetable
from scheduler.mail import MailView, list_mails, local_mailbox
from scheduler.messages import ScheduleChanged
from scheduler.models import ScheduleRow

blueprint = flask.Blueprint("schedules", __name__, url_prefix="/api")
SCHEDULERS = (Role.END_USER, Role.APP_DEVELOPER, Role.PLATFORM_CONFIGURER)
ScheduleAction = Literal["created", "paused", "resumed", "cancelled"]


class InstanceList(BaseModel):
    """``GET /api/instances``."""

    instances: list[InstanceInfo]


class MailList(BaseModel):
    """``GET /api/mails``: newest first."""

    mails: list[MailView]


def _sees_all(principal: Principal) -> bool:
    return principal.role == Role.PLATFORM_CONFIGURER


def _own_schedule(schedule_id: str) -> ScheduleRow:
    principal = current_principal()
    with resources().database.session() as session:
        row = session.get(ScheduleRow, schedule_id)
        if row is None:
            raise NotFound(f"no schedule {schedule_id!r}; see `aiot schedule list`")
        if not _sees_all(principal) and row.owner != principal.username:
            raise Forbidden(
                f"schedule {schedule_id!r} belongs to {row.owner!r}: only its owner and platform "
                "configurers may see or change it (`aiot schedule list` shows yours)"
            )
        session.expunge(row)
    return row


def _schedule_json(row: ScheduleRow) -> dict[str, Any]:
    return {
        "schedule_id": row.schedule_id,
        "app": row.app_name,
        "app_id": row.app_id,
        "version": row.version,
        "location": row.location,
        "timezone": row.timezone,
        "owner": row.owner,
        "status": row.status,
        "spec": json.loads(row.spec),
        "history": json.loads(row.history),
        "next_runs": [
            {"start": run.start.isoformat(), "end": run.end.isoformat()} for run in _upcoming(row, 3)
        ]
        if row.status == "active"
        else [],
        "created_at": row.created_at.isoformat(),
    }


def _upcoming(row: ScheduleRow, count: int) -> list[timetable.Run]:
    spec = timetable.ScheduleSpec.model_validate_json(row.spec)
    return timetable.upcoming_runs(spec, row.timezone, row.created_at, datetime.now(UTC), count)


def _tell_scheduler(schedule_id: str, action: ScheduleAction) -> None:
    requester = resources().bus_requester()
    requester.send(
        requester.bus.topics.scheduler,
        ScheduleChanged(schedule_id=schedule_id, action=action),
        key=schedule_id,
    )


# schedules ---------------------------------------------------------------------------------
NOT_A_SCHEDULE = "the request body must be a JSON schedule document (see docs/scheduling.md)"


def _schedule_document() -> timetable.ScheduleSpec:
    try:
        body = json_body(NOT_A_SCHEDULE)
        if not isinstance(body, dict):
            raise BadRequest(NOT_A_SCHEDULE)
        return timetable.ScheduleSpec.model_validate(body)
    except ValidationError as exc:
        problems = timetable.validation_problems(exc)
        raise ValidationFailed(
            "invalid schedule: "
            + "; ".join(f"{problem['field']}: {problem['reason']}" for problem in problems),
            details=problems,
        ) from exc


def _checked(spec: timetable.ScheduleSpec, now: datetime) -> tuple[AppVersion, LocationCheck]:
    """The app version and location ``spec`` names, checked as a run would use them (the app's
    devices at the location, who may use it, something left to run); ``ValidationFailed`` naming
    every field and reason."""
    principal = current_principal()
    topics = resources().bus_requester().bus.topics
    app = ask(
        "the app manager",
        app_manager_topic(topics),
        PickAppVersion(app=spec.app, version=spec.version),
        AppVersion,
    )
    location = ask(
        "the device manager",
        topics.device_manager,
        CheckLocation(
            location=spec.location,
            needs=app.manifest.devices,
            user=None if _sees_all(principal) else principal.username,
        ),
        LocationCheck,
    )
    problems = [{"field": "location", "reason": problem["reason"]} for problem in location.problems]
    problems += timetable.spec_problems(spec, location.timezone, now)
    if problems:
        raise ValidationFailed(
            f"cannot schedule {app.name!r} at {location.location!r}: "
            + "; ".join(f"{problem['field']}: {problem['reason']}" for problem in problems),
            details=problems,
        )
    return app, location


class PreviewQuery(BaseModel):
    """``POST /schedules/preview``'s query: how many of the next runs to show."""

    model_config = ConfigDict(extra="forbid")

    runs: int = Field(default=5, ge=1, le=50, description="how many of the next runs")


class PreviewRun(BaseModel):
    start: datetime
    end: datetime
    local_start: datetime = Field(description="the start in the location's time zone, with its offset")


class SchedulePreview(BaseModel):
    """A schedule document checked as ``POST /schedules`` checks it, with its next runs; nothing saved."""

    app: str
    version: str
    location: str
    timezone: str
    runs: list[PreviewRun]


@blueprint.post("/schedules/preview")
@allow(*SCHEDULERS)
@shapes(body=timetable.ScheduleSpec, query=PreviewQuery, response=SchedulePreview)
def preview_schedule() -> flask.Response:
    """What ``POST /schedules`` would store, checked the same way, and its next runs; nothing is saved."""
    count = query_as(PreviewQuery).runs
    spec = _schedule_document()
    now = datetime.now(UTC)
    app, location = _checked(spec, now)
    runs = timetable.upcoming_runs(spec, location.timezone, now, now, count)
    preview = SchedulePreview(
        app=app.name,
        version=app.version,
        location=location.location,
        timezone=location.timezone,
        runs=[PreviewRun(start=run.start, end=run.end, local_start=run.local_start) for run in runs],
    )
    return flask.jsonify(preview.model_dump(mode="json"))


@blueprint.post("/schedules")
@allow(*SCHEDULERS)
@shapes(body=timetable.ScheduleSpec)
def create_schedule() -> tuple[flask.Response, int]:
    """Check and store a schedule, then hand it to the scheduler service."""
    spec = _schedule_document()
    principal = current_principal()
    now = datetime.now(UTC)
    app, location = _checked(spec, now)
    with resources().database.session() as session:
        row = ScheduleRow(
            schedule_id="s" + uuid.uuid4().hex[:11],
            app_id=app.app_id,
            app_name=app.name,
            version=spec.version,
            location=location.location,
            timezone=location.timezone,
            owner=principal.username,
            email=principal.email,
            spec=spec.model_dump_json(exclude_none=True),
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        session.expunge(row)
    try:
        _tell_scheduler(row.schedule_id, "created")
    except PlatformError:
        with resources().database.session() as session:
            session.execute(sa.delete(ScheduleRow).where(ScheduleRow.schedule_id == row.schedule_id))
        raise
    return flask.jsonify(_schedule_json(row)), 201


@blueprint.get("/schedules")
@allow(*SCHEDULERS)
def list_schedules() -> flask.Response:
    principal = current_principal()
    with resources().database.session() as session:
        query = sa.select(ScheduleRow).order_by(ScheduleRow.created_at)
        if not _sees_all(principal):
            query = query.where(ScheduleRow.owner == principal.username)
        schedules = [_schedule_json(row) for row in session.scalars(query)]
    return flask.jsonify(schedules=schedules)


@blueprint.get("/schedules/<schedule_id>")
@allow(*SCHEDULERS)
def show_schedule(schedule_id: str) -> flask.Response:
    row = _own_schedule(schedule_id)
    return flask.jsonify({**_schedule_json(row), "instances": _instance_dicts(schedule_id=schedule_id)})


def _change_status(
    schedule_id: str, status: str, allowed_from: tuple[str, ...], action: ScheduleAction
) -> ScheduleRow:
    """Store the new status and tell the scheduler; when it cannot be told, the old status stays."""
    row = _own_schedule(schedule_id)
    if row.status not in allowed_from:
        raise ValidationFailed(f"schedule {schedule_id!r} is {row.status}; it cannot be made {status}")
    _store_status(schedule_id, status)
    try:
        _tell_scheduler(schedule_id, action)
    except PlatformError:
        _store_status(schedule_id, row.status)  # so the same request can be sent again
        raise
    row.status = status
    return row


def _store_status(schedule_id: str, status: str) -> None:
    with resources().database.session() as session:
        stored = session.get(ScheduleRow, schedule_id)
        if stored is not None:
            stored.status, stored.updated_at = status, datetime.now(UTC)


@blueprint.post("/schedules/<schedule_id>/pause")
@allow(*SCHEDULERS)
def pause_schedule(schedule_id: str) -> flask.Response:
    """No new instances start until it is resumed; running ones keep their window."""
    return flask.jsonify(_schedule_json(_change_status(schedule_id, "paused", ("active",), "paused")))


@blueprint.post("/schedules/<schedule_id>/resume")
@allow(*SCHEDULERS)
def resume_schedule(schedule_id: str) -> flask.Response:
    return flask.jsonify(_schedule_json(_change_status(schedule_id, "active", ("paused",), "resumed")))


@blueprint.delete("/schedules/<schedule_id>")
@allow(*SCHEDULERS)
def cancel_schedule(schedule_id: str) -> flask.Response:
    """No more starts, and its running instances are stopped (cancelling again retries the stops)."""
    allowed = ("active", "paused", "finished", "cancelled")
    row = _change_status(schedule_id, "cancelled", allowed, "cancelled")
    stopped = [
        _stop(info.instance_id, "its schedule was cancelled")
        for info in _instances(schedule_id=schedule_id)
        if info.status in ("queued", "starting", "running")
    ]
    return flask.jsonify({**_schedule_json(row), "stopped": [info.instance_id for info in stopped]})


# instances ---------------------------------------------------------------------------------
def _instances(**query: str | None) -> list[InstanceInfo]:
    requester = resources().bus_requester()
    timeout = resources().settings.web.deployer_timeout_s
    reply = requester.request(
        requester.bus.topics.deployer, ListInstances(**query), Instances, timeout=timeout
    )
    return reply.instances


def _instance_dicts(**query: str | None) -> list[dict[str, Any]]:
    return [info.model_dump(mode="json") for info in _instances(**query)]


def _stop(instance_id: str, reason: str) -> InstanceInfo:
    requester = resources().bus_requester()
    reply = requester.request(
        requester.bus.topics.deployer,
        StopInstance(instance_id=instance_id, reason=reason),
        Instances,
        timeout=resources().settings.web.deployer_stop_timeout_s,
    )
    return reply.instances[0]


@blueprint.get("/instances")
@allow(*SCHEDULERS)
@shapes(response=InstanceList)
def list_instances() -> flask.Response:
    principal = current_principal()
    owner = None if _sees_all(principal) else principal.username
    return flask.jsonify(instances=_instance_dicts(owner=owner))


def _own_instance(instance_id: str) -> InstanceInfo:
    principal = current_principal()
    found = _instances(instance_id=instance_id)
    if not found:
        raise NotFound(f"no app instance {instance_id!r}; see `aiot instance list`")
    if not _sees_all(principal) and found[0].owner != principal.username:
        raise Forbidden(f"app instance {instance_id!r} belongs to {found[0].owner!r}")
    return found[0]


@blueprint.get("/instances/<instance_id>")
@allow(*SCHEDULERS)
@shapes(response=InstanceInfo)
def show_instance(instance_id: str) -> flask.Response:
    return flask.jsonify(_own_instance(instance_id).model_dump(mode="json"))


@blueprint.post("/instances/<instance_id>/stop")
@allow(*SCHEDULERS)
@shapes(response=InstanceInfo)
def stop_instance(instance_id: str) -> flask.Response:
    _own_instance(instance_id)
    return flask.jsonify(_stop(instance_id, "stopped on request").model_dump(mode="json"))


# mail --------------------------------------------------------------------------------------
@blueprint.get("/mails")
@allow(*SCHEDULERS, Role.AI_DEVELOPER)
@shapes(response=MailList)
def list_outbox() -> flask.Response:
    """The caller's mails (a configurer: everyone's), newest first."""
    principal = current_principal()
    recipients = (
        None
        if _sees_all(principal)
        else [local_mailbox(principal.username)] + ([principal.email] if principal.email else [])
    )
    with resources().database.session() as session:
        mails = [
            MailView.model_validate(row, from_attributes=True).model_dump(mode="json")
            for row in list_mails(session, recipients=recipients)
        ]
    return flask.jsonify(mails=mails)
