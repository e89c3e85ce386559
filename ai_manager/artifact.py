"""Model artifact validation: the one check behind ``aiot model pack`` and ``POST /api/models``.

A model zip is accepted when, in order:

1. the archive is safe (``platform_core.archive``: no absolute paths, ``..``, symlinks,
   encrypted or duplicate entries; bounded file count, sizes and compression ratio);
2. ``model.json`` is at its top level, is JSON, and matches ``ModelManifest``;
3. the entrypoint's module, and every ``module:function`` pre/post-process step's module,
   is a ``.py`` file or package in the zip;
4. every requirement is a valid pip requirement specifier;
5. every image file the example names is in the zip.

Every failure is a ``ValidationFailed`` whose message names the zip, the file and the
field, and whose ``details`` list every problem as ``{"file", "field", "reason"}``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import ValidationError

from platform_core.archive import Archive, ArchiveLimits, pack_directory
from platform_sdk.artifacts import BUILTIN_STEPS, MODEL_MANIFEST, ModelManifest
from platform_sdk.errors import ValidationFailed


@dataclass(frozen=True)
class ValidatedModel:
    manifest: ModelManifest
    data: bytes
    sha256: str
    files: list[str]


def _problem(file: str, field: str | None, reason: str) -> dict[str, Any]:
    return {"file": file, "field": field, "reason": reason}


def _fail(label: str, problems: list[dict[str, Any]]) -> ValidationFailed:
    first = problems[0]
    where = first["file"] + (f" field {first['field']}" if first["field"] else "")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ValidationFailed(f"{label}: {where}: {first['reason']}{more}", details=problems)


def _module_present(module: str, names: set[str]) -> bool:
    path = module.replace(".", "/")
    return f"{path}.py" in names or f"{path}/__init__.py" in names


def read_manifest(archive: Archive, label: str) -> ModelManifest:
    names = archive.names()
    if MODEL_MANIFEST not in names:
        nested = sorted(name for name in names if name.endswith("/" + MODEL_MANIFEST))
        hint = (
            f"; found {nested[0]}: zip the folder's contents, not the folder (`aiot model pack DIR`)"
            if nested
            else ""
        )
        raise _fail(label, [_problem(MODEL_MANIFEST, None, f"missing at the top level of the zip{hint}")])
    raw = archive.read(MODEL_MANIFEST)
    try:
        document = json.loads(raw.decode("utf-8-sig"))  # a BOM is how some editors save UTF-8
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = (
            f"line {exc.lineno} column {exc.colno}: {exc.msg}"
            if isinstance(exc, json.JSONDecodeError)
            else str(exc)
        )
        raise _fail(label, [_problem(MODEL_MANIFEST, None, f"is not valid JSON ({where})")]) from exc
    try:
        return ModelManifest.model_validate(document)
    except ValidationError as exc:
        problems = [
            _problem(
                MODEL_MANIFEST,
                ".".join(str(part) for part in error["loc"]) or "(document)",
                error["msg"],
            )
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise _fail(label, problems) from exc


def check_contents(manifest: ModelManifest, names: set[str]) -> list[dict[str, Any]]:
    """What the manifest names but the zip lacks, and requirements pip would refuse."""
    problems: list[dict[str, Any]] = []
    if not _module_present(manifest.entry_module, names):
        problems.append(
            _problem(
                MODEL_MANIFEST,
                "entrypoint",
                f"module {manifest.entry_module!r} is not in the zip "
                f"(expected {manifest.entry_module.replace('.', '/')}.py)",
            )
        )
    for index, endpoint in enumerate(manifest.endpoints):
        for kind in ("preprocess", "postprocess"):
            for step in getattr(endpoint, kind):
                if step in BUILTIN_STEPS:
                    continue
                module = step.split(":", 1)[0]
                if not _module_present(module, names):
                    problems.append(
                        _problem(
                            MODEL_MANIFEST,
                            f"endpoints.{index}.{kind}",
                            f"module {module!r} is not in the zip",
                        )
                    )
    for index, line in enumerate(manifest.requirements):
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            problems.append(
                _problem(MODEL_MANIFEST, f"requirements.{index}", f"{line!r} is not a pip requirement: {exc}")
            )
    example = manifest.example
    if example is not None:
        example_endpoint = manifest.endpoint(example.endpoint)
        assert example_endpoint is not None  # the manifest checked it
        for name, value in example.input.items():
            if example_endpoint.inputs[name].type == "image" and (
                not isinstance(value, str) or value not in names
            ):
                problems.append(
                    _problem(
                        MODEL_MANIFEST, f"example.input.{name}", f"image file {value!r} is not in the zip"
                    )
                )
    return problems


def validate_model_zip(data: bytes, *, label: str, limits: ArchiveLimits | None = None) -> ValidatedModel:
    """``data`` as an accepted model artifact, or ``ValidationFailed`` naming file, field and reason."""
    with Archive.open(data, label=label, limits=limits) as archive:
        manifest = read_manifest(archive, label)
        names = archive.names()
        problems = check_contents(manifest, names)
        if problems:
            raise _fail(label, problems)
        return ValidatedModel(manifest, data, hashlib.sha256(data).hexdigest(), sorted(names))


def pack_model(folder: Path) -> ValidatedModel:
    """Zip a model folder and validate the result as the AI manager will."""
    if not (folder / MODEL_MANIFEST).is_file():
        raise ValidationFailed(
            f"{folder}: no {MODEL_MANIFEST} in it; a model folder holds model.json beside its code",
            details=[_problem(MODEL_MANIFEST, None, "missing")],
        )
    return validate_model_zip(pack_directory(folder), label=str(folder))
