"""What `aiot model` and `aiot app` share: writing a packed zip; reading a zip or a folder to upload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiot.output import out
from platform_core.manifests import Validated
from platform_sdk.errors import BadRequest

Packer = Callable[[Path], Validated[Any]]


def write_packed(packed: Validated[Any], output: Path | None) -> None:
    """Write ``packed`` to ``output`` (default ``<name>-<version>.zip``) and say what was written."""
    manifest = packed.manifest
    target = output or Path(f"{manifest.name}-{manifest.version}.zip")
    target.write_bytes(packed.data)
    out().print(
        f"packed {manifest.name} {manifest.version}: {len(packed.files)} files, "
        f"{len(packed.data) / 1024:.1f} KiB → {target}"
    )


def upload_source(source: Path, pack: Packer) -> tuple[bytes, str]:
    """The bytes and file name to upload: a zip as it is, or a folder packed first with ``pack``."""
    if source.is_dir():
        packed = pack(source)
        return packed.data, f"{packed.manifest.name}-{packed.manifest.version}.zip"
    if source.is_file():
        return source.read_bytes(), source.name
    raise BadRequest(f"{source} does not exist")
