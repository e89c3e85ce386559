"""App artifact validation: the one check behind ``aiot app pack`` and ``POST /api/apps``.

An app zip is accepted when, in order:

1. the archive is safe (``platform_core.archive``: no absolute paths, ``..``, backslashes,
   drive letters, control characters, symlinks, encrypted or duplicate entries; bounded file
   count, sizes and compression ratio) and every entry reads back whole (its CRC and size);
2. ``app.json`` is at its top level, is JSON, and matches ``AppManifest``;
3. the entrypoint's module is a ``.py`` file or package in the zip;
4. every requirement is a valid pip requirement specifier;
5. its version, and every pinned model version, is a PEP 440 version (so it compares).

Those need nothing but the zip (``validate_app_zip``, also run by ``aiot app pack`` on the
developer's machine, so this module stays free of the database). On upload
``app_manager.references`` then checks what ``app.json`` names against the registry.

Every failure is a ``ValidationFailed`` whose message names the zip, the file and the
field, and whose ``details`` list every problem as ``{"file", "field", "reason"}``
(``platform_core.manifests``).
"""

from __future__ import annotations

from pathlib import Path

from platform_core.archive import ArchiveLimits
from platform_core.manifests import (
    Problem,
    Validated,
    entrypoint_problems,
    pack_folder,
    requirement_problems,
    validate_artifact,
    version_problems,
)
from platform_sdk.artifacts import APP_MANIFEST, AppManifest

ValidatedApp = Validated[AppManifest]


def check_contents(manifest: AppManifest, names: set[str]) -> list[Problem]:
    """What the manifest names but the zip lacks, requirements pip would refuse, versions that are not
    PEP 440 (the app's, and each pinned model version)."""
    versions = {"version": manifest.version} | {
        f"models.{alias}.version": use.version for alias, use in manifest.models.items()
    }
    return (
        version_problems(APP_MANIFEST, versions)
        + entrypoint_problems(APP_MANIFEST, manifest.entry_module, names)
        + requirement_problems(APP_MANIFEST, manifest.requirements)
    )


def validate_app_zip(data: bytes, *, label: str, limits: ArchiveLimits | None = None) -> ValidatedApp:
    """``data`` as an accepted app artifact, or ``ValidationFailed`` naming file, field and reason."""
    return validate_artifact(
        data,
        label=label,
        limits=limits,
        file=APP_MANIFEST,
        manifest_type=AppManifest,
        pack_command="aiot app pack DIR",
        check=check_contents,
    )


def pack_app(folder: Path) -> ValidatedApp:
    """Zip an app folder and validate the result as the app manager will (without the registry)."""
    return validate_app_zip(pack_folder(folder, APP_MANIFEST, "app"), label=str(folder))
