"""The end user's pages (also open to app developers and configurers): schedules, instances, mail.

The schedule form is turned into the schedule document of ``docs/scheduling.md``. "Preview" sends
it to ``POST /api/schedules/preview``, which checks it as a save would (the document, the app and
the location: their devices, who may use the location, something left to run) and answers the next
runs in the location's time zone, or each field and reason, without saving; "Save" sends it to
``POST /api/schedules``. ``/schedules/live.json`` is what the
schedules page polls for its instances' progress.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import flask
from werkzeug.wrappers import Response

from platform_core.auth import ALL_ROLES, Role, allow, page
from platform_sdk.errors import PlatformError
from web.portal.core import api, blueprint, done, form_page, perform

SCHEDULERS = (Role.END_USER, Role.APP_DEVELOPER, Role.PLATFORM_CONFIGURER)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MODES = ("now", "window", "times", "every")
PREVIEW_RUNS = 5


@blueprint.app_template_filter("local")
def local_time(instant: str | None, zone: str | None) -> str:
    """An ISO instant as wall-clock time in ``zone`` (a location's), e.g. ``Mon 2026-12-07 08:00 CET``."""
    if not instant:
        return ""
    try:
        moment = datetime.fromisoformat(instant)
        shown = moment.astimezone(ZoneInfo(zone or "UTC"))
    except (ValueError, KeyError):
        return instant
    return shown.strftime("%a %Y-%m-%d %H:%M %Z")


def schedule_document(form: dict[str, Any], days: list[str]) -> dict[str, Any]:
    """The schedule document a schedule form describes (empty fields left out, as a user means)."""
    mode = form.get("mode", "")
    document: dict[str, Any] = {"app": form.get("app", ""), "location": form.get("location", "")}

    def put(key: str, value: Any) -> None:
        if value not in ("", None, []):
            document[key] = value

    if mode == "now":
        document["now"] = True
    else:
        put("start_date", form.get("start_date", ""))
        put("end_date", form.get("end_date", ""))
        if days and len(days) < len(WEEKDAYS):
            document["days"] = days
    if mode in ("window", "every") and (form.get("window_start") or form.get("window_end")):
        document["window"] = {"start": form.get("window_start", ""), "end": form.get("window_end", "")}
    if mode == "times":
        document["times"] = [part.strip() for part in form.get("times", "").split(",") if part.strip()]
    if mode == "every":
        put("every", form.get("every", "").strip())
        put("first", form.get("first", "").strip())
    if mode != "window":
        put("duration", form.get("duration", "").strip())
    if mode not in MODES:
        document.pop("start_date", None)  # let the model say a mode is missing
    return document


def preview(document: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    """The location's time zone and the next runs of ``document`` there, from
    ``POST /api/schedules/preview`` (checked as a save would be; ``ValidationFailed`` naming each
    field and reason)."""
    answer = api("POST", "/api/schedules/preview", json=document, query_string={"runs": PREVIEW_RUNS})
    return answer["timezone"], answer["runs"]


def _form_context() -> dict[str, Any]:
    apps = api("GET", "/api/apps")["apps"]
    form = flask.request.values
    return {
        "apps": apps,
        "form": form,
        "days": form.getlist("days") or list(WEEKDAYS),
        "weekdays": WEEKDAYS,
        "modes": MODES,
        "runs": [],
        "zone": "",
    }


@blueprint.route("/schedules/new", methods=["GET", "POST"])
@allow(*SCHEDULERS)
@page
def new_schedule() -> Response | tuple[str, int]:
    """The schedule form: Preview shows the next runs in the location's zone; Save creates it."""
    if flask.request.method == "GET":
        return form_page("schedule_new.html", _form_context)
    document = schedule_document(flask.request.form.to_dict(), flask.request.form.getlist("days"))
    try:
        zone, runs = preview(document)
        if flask.request.form.get("action") == "save":
            created = api("POST", "/api/schedules", json=document)
            return done("portal.schedules", f"Schedule {created['schedule_id']} of {created['app']} saved.")
    except PlatformError as error:
        return form_page("schedule_new.html", _form_context, error)
    return form_page("schedule_new.html", lambda: _form_context() | {"runs": runs, "zone": zone})


def _schedules_context() -> dict[str, Any]:
    return {
        "schedules": api("GET", "/api/schedules")["schedules"],
        "instances": api("GET", "/api/instances")["instances"],
    }


@blueprint.get("/schedules")
@allow(*SCHEDULERS)
@page
def schedules() -> tuple[str, int]:
    """My schedules with their next runs in local time, and my instances with each app's address."""
    return form_page("schedules.html", _schedules_context)


@blueprint.get("/schedules/live.json")
@allow(*SCHEDULERS)
@page
def schedules_live() -> flask.Response:
    """The caller's instances (status, node, address), for the schedules page to poll."""
    return flask.jsonify(instances=api("GET", "/api/instances")["instances"])


def _on_schedules(method: str, path: str, notice: str) -> Response | tuple[str, int]:
    """``method path`` on the API, then back to the schedules page saying ``notice``."""

    def call() -> str:
        api(method, path)
        return notice

    return perform(call, "schedules.html", _schedules_context, "portal.schedules")


def _change_schedule(schedule_id: str, action: str) -> Response | tuple[str, int]:
    if action == "cancel":
        return _on_schedules("DELETE", f"/api/schedules/{schedule_id}", f"Schedule {schedule_id} cancelled.")
    return _on_schedules(
        "POST", f"/api/schedules/{schedule_id}/{action}", f"Schedule {schedule_id}: {action}d."
    )


@blueprint.post("/schedules/<schedule_id>/pause")
@allow(*SCHEDULERS)
@page
def pause_schedule(schedule_id: str) -> Response | tuple[str, int]:
    return _change_schedule(schedule_id, "pause")


@blueprint.post("/schedules/<schedule_id>/resume")
@allow(*SCHEDULERS)
@page
def resume_schedule(schedule_id: str) -> Response | tuple[str, int]:
    return _change_schedule(schedule_id, "resume")


@blueprint.post("/schedules/<schedule_id>/cancel")
@allow(*SCHEDULERS)
@page
def cancel_schedule(schedule_id: str) -> Response | tuple[str, int]:
    """Cancel: no more runs, and its running instances stop."""
    return _change_schedule(schedule_id, "cancel")


@blueprint.post("/instances/<instance_id>/stop")
@allow(*SCHEDULERS)
@page
def stop_instance(instance_id: str) -> Response | tuple[str, int]:
    """Stop a running instance before its window ends."""
    return _on_schedules("POST", f"/api/instances/{instance_id}/stop", f"Instance {instance_id} stopping.")


@blueprint.get("/mail")
@allow(*ALL_ROLES)
@page
def mail() -> tuple[str, int]:
    """The mail the platform sent me (a configurer: all), newest first, with each app's address."""
    return form_page("mail.html", lambda: {"mails": api("GET", "/api/mails")["mails"]})
