"""Validating an uploaded artifact's manifest: the steps model zips and app zips share.

The AI manager (``model.json``) and the app manager (``app.json``) accept a zip the same
way: ``validate_artifact`` opens it safely (``platform_core.archive``: every entry's name,
kind and declared sizes), reads every entry to its end (its CRC and true size, so a damaged
entry is refused before anything is stored, not found by the deploy), reads the manifest
from its top level with the one reader the runtime uses (``platform_sdk.artifacts.parse_manifest``),
then runs the artifact's own content checks. Every problem is a ``{"file", "field",
"reason"}`` dict (``problem``); ``fail`` turns a list of them into one
``ValidationFailed`` whose message names the zip, the first problem's file and field and
its reason, and whose ``details`` list them all. The content checks both kinds need —
the entrypoint's module is in the zip, every requirement is a pip specifier — live here
too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel

from platform_core.archive import Archive, ArchiveLimits, pack_directory
from platform_sdk.artifacts import parse_manifest, parse_version
from platform_sdk.errors import ValidationFailed

__all__ = [
    "Problem",
    "Validated",
    "entrypoint_problems",
    "fail",
    "module_present",
    "pack_folder",
    "problem",
    "read_manifest",
    "requirement_problems",
    "validate_artifact",
    "version_problems",
]

M = TypeVar("M", bound=BaseModel)
Problem = dict[str, Any]


@dataclass(frozen=True)
class Validated(Generic[M]):
    """An accepted artifact: its manifest, its bytes, their SHA-256 and the files in it."""

    manifest: M
    data: bytes
    sha256: str
    files: list[str]


def problem(file: str, field: str | None, reason: str) -> Problem:
    return {"file": file, "field": field, "reason": reason}


def fail(label: str, problems: list[Problem]) -> ValidationFailed:
    """One error for ``problems``: ``<label>: <file> field <field>: <reason> (and N more)``."""
    first = problems[0]
    where = first["file"] + (f" field {first['field']}" if first["field"] else "")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ValidationFailed(f"{label}: {where}: {first['reason']}{more}", details=problems)


def module_present(module: str, names: set[str]) -> bool:
    """Whether the dotted ``module`` is a ``.py`` file or a package among the zip's ``names``."""
    path = module.replace(".", "/")
    return f"{path}.py" in names or f"{path}/__init__.py" in names


def entrypoint_problems(file: str, module: str, names: set[str]) -> list[Problem]:
    """The entrypoint's ``module`` missing from the zip, as a problem of ``file``'s ``entrypoint``."""
    if module_present(module, names):
        return []
    expected = module.replace(".", "/")
    return [problem(file, "entrypoint", f"module {module!r} is not in the zip (expected {expected}.py)")]


def requirement_problems(file: str, requirements: list[str]) -> list[Problem]:
    """Each line pip would refuse, as a problem of ``requirements.<index>``."""
    problems = []
    for index, line in enumerate(requirements):
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            problems.append(
                problem(file, f"requirements.{index}", f"{line!r} is not a pip requirement: {exc}")
            )
    return problems


def version_problems(file: str, versions: dict[str, str | None]) -> list[Problem]:
    """Each version (by field) that PEP 440 cannot read: a new artifact's versions must compare.

    Manifests stored before this check are still read as they are (their versions sort below
    every valid one, ``platform_sdk.artifacts.version_key``).
    """
    problems = []
    for field, version in versions.items():
        if version is not None:
            try:
                parse_version(version)
            except ValueError as exc:
                problems.append(problem(file, field, str(exc)))
    return problems


def read_manifest(archive: Archive, label: str, file: str, manifest_type: type[M], pack_command: str) -> M:
    """``file`` from the top level of ``archive``, read as where the artifact runs reads it.

    ``platform_sdk.artifacts.parse_manifest`` is that one reader (UTF-8 with or without a
    byte-order mark, JSON, ``manifest_type``): each schema error becomes a problem whose
    field is the dotted path of the value (``endpoints.0.inputs.x.type``). A manifest found
    only in a folder gets a hint to zip the folder's contents (``pack_command``, e.g.
    ``aiot model pack DIR``).
    """
    names = archive.names()
    if file not in names:
        nested = sorted(name for name in names if name.endswith("/" + file))
        hint = (
            f"; found {nested[0]}: zip the folder's contents, not the folder (`{pack_command}`)"
            if nested
            else ""
        )
        raise fail(label, [problem(file, None, f"missing at the top level of the zip{hint}")])
    raw = archive.read(file)
    try:
        return parse_manifest(raw, manifest_type, file=file)
    except ValidationFailed as exc:  # the zip's label in front, as for every other problem
        raise fail(label, exc.details) from exc


def validate_artifact(
    data: bytes,
    *,
    label: str,
    limits: ArchiveLimits | None,
    file: str,
    manifest_type: type[M],
    pack_command: str,
    check: Callable[[M, set[str]], list[Problem]],
) -> Validated[M]:
    """``data`` as an accepted artifact, or ``ValidationFailed`` naming file, field and reason.

    In order: the archive is safe (names, kinds, declared sizes), every entry reads back
    whole (CRC, true size), ``file`` is a valid ``manifest_type`` at its top level, and
    ``check`` finds nothing the manifest names missing from the zip.
    """
    with Archive.open(data, label=label, limits=limits) as archive:
        archive.verify()
        manifest = read_manifest(archive, label, file, manifest_type, pack_command)
        names = archive.names()
        problems = check(manifest, names)
        if problems:
            raise fail(label, problems)
        return Validated(manifest, data, hashlib.sha256(data).hexdigest(), sorted(names))


def pack_folder(folder: Path, file: str, kind: str) -> bytes:
    """The zip of a ``kind`` folder (``model``, ``app``) that holds its manifest ``file``."""
    if not (folder / file).is_file():
        raise ValidationFailed(
            f"{folder}: no {file} in it; a {kind} folder holds {file} beside its code",
            details=[problem(file, None, "missing")],
        )
    return pack_directory(folder)
