"""What an uploaded ``app.json`` names, checked against the registries (upload only).

``validate_app_zip`` (``app_manager.artifact``) needs nothing but the zip; these checks ask
the domains that own what it names, over the bus, before anything is written:

* the AI manager (``CheckModelUses``): every model alias names a registered model
  (``models.<alias>.model``), its pinned version exists (``models.<alias>.version``, compared
  as PEP 440 versions), and that version — or, unpinned, the model's latest release — has each
  endpoint the app calls (``models.<alias>.endpoints.<i>``);
* the device manager (``CheckDeviceTypes``): every device alias names a registered device type
  (``devices.<alias>.type``).

Problems are ``{"file": "app.json", "field", "reason"}`` like the zip's own. A domain that does
not answer within ``web.ask_timeout_s`` makes the upload 503.
"""

from __future__ import annotations

from ai_manager.messages import CheckModelUses, ModelUseProblems, ai_manager_topic
from device_manager.messages import CheckDeviceTypes, DeviceTypesChecked
from platform_core.http import ask, resources
from platform_core.manifests import Problem, fail, problem
from platform_sdk.artifacts import APP_MANIFEST, AppManifest


def reference_problems(manifest: AppManifest) -> list[Problem]:
    """What ``app.json`` names that the registries lack: models, versions and endpoints, device types."""
    problems: list[Problem] = []
    if manifest.models:
        topics = resources().bus_requester().bus.topics
        models = ask(
            "the AI manager", ai_manager_topic(topics), CheckModelUses(uses=manifest.models), ModelUseProblems
        )
        problems += [problem(APP_MANIFEST, found["field"], found["reason"]) for found in models.problems]
    if manifest.devices:
        topics = resources().bus_requester().bus.topics
        types = sorted({need.type for need in manifest.devices.values()})
        checked = ask(
            "the device manager", topics.device_manager, CheckDeviceTypes(types=types), DeviceTypesChecked
        )
        unknown = set(checked.unknown)
        for alias, need in manifest.devices.items():
            if need.type in unknown:
                reason = f"unknown device type {need.type!r}; see `aiot device type list`"
                problems.append(problem(APP_MANIFEST, f"devices.{alias}.type", reason))
    return problems


def check_references(manifest: AppManifest, *, label: str) -> None:
    """``ValidationFailed`` naming every model, version, endpoint and device type the registries lack."""
    problems = reference_problems(manifest)
    if problems:
        raise fail(label, problems)
