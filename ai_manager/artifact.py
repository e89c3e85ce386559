"""Model artifact validation: the one check behind ``aiot model pack`` and ``POST /api/models``.

A model zip is accepted when, in order:

1. the archive is safe (``platform_core.archive``: no absolute paths, ``..``, backslashes,
   drive letters, control characters, symlinks, encrypted or duplicate entries; bounded file
   count, sizes and compression ratio) and every entry reads back whole (its CRC and size);
2. ``model.json`` is at its top level, is JSON, and matches ``ModelManifest``;
3. the entrypoint's module, and every ``module:function`` pre/post-process step's module,
   is a ``.py`` file or package in the zip;
4. every requirement is a valid pip requirement specifier;
5. every image file the example names is in the zip;
6. the version is a PEP 440 version (``2.1-rc1`` is; ``1.0-foo`` is not), so it compares.

Every failure is a ``ValidationFailed`` whose message names the zip, the file and the
field, and whose ``details`` list every problem as ``{"file", "field", "reason"}``. The steps
model and app zips share (safe archive, manifest, entrypoint, requirements) are
``platform_core.manifests``.
"""

from __future__ import annotations

from pathlib import Path

from platform_core.archive import ArchiveLimits
from platform_core.manifests import (
    Problem,
    Validated,
    entrypoint_problems,
    module_present,
    pack_folder,
    problem,
    requirement_problems,
    validate_artifact,
    version_problems,
)
from platform_sdk.artifacts import BUILTIN_STEPS, MODEL_MANIFEST, ModelManifest

ValidatedModel = Validated[ModelManifest]


def check_contents(manifest: ModelManifest, names: set[str]) -> list[Problem]:
    """What the manifest names but the zip lacks, requirements pip would refuse, a non-PEP 440 version."""
    problems = version_problems(MODEL_MANIFEST, {"version": manifest.version})
    problems += entrypoint_problems(MODEL_MANIFEST, manifest.entry_module, names)
    for index, endpoint in enumerate(manifest.endpoints):
        for kind in ("preprocess", "postprocess"):
            for step in getattr(endpoint, kind):
                if step in BUILTIN_STEPS:
                    continue
                module = step.split(":", 1)[0]
                if not module_present(module, names):
                    problems.append(
                        problem(
                            MODEL_MANIFEST,
                            f"endpoints.{index}.{kind}",
                            f"module {module!r} is not in the zip",
                        )
                    )
    problems += requirement_problems(MODEL_MANIFEST, manifest.requirements)
    example = manifest.example
    if example is not None:
        example_endpoint = manifest.endpoint(example.endpoint)
        assert example_endpoint is not None  # the manifest checked it
        for name, value in example.input.items():
            if example_endpoint.inputs[name].type == "image" and (
                not isinstance(value, str) or value not in names
            ):
                problems.append(
                    problem(
                        MODEL_MANIFEST, f"example.input.{name}", f"image file {value!r} is not in the zip"
                    )
                )
    return problems


def validate_model_zip(data: bytes, *, label: str, limits: ArchiveLimits | None = None) -> ValidatedModel:
    """``data`` as an accepted model artifact, or ``ValidationFailed`` naming file, field and reason."""
    return validate_artifact(
        data,
        label=label,
        limits=limits,
        file=MODEL_MANIFEST,
        manifest_type=ModelManifest,
        pack_command="aiot model pack DIR",
        check=check_contents,
    )


def pack_model(folder: Path) -> ValidatedModel:
    """Zip a model folder and validate the result as the AI manager will."""
    return validate_model_zip(pack_folder(folder, MODEL_MANIFEST, "model"), label=str(folder))
