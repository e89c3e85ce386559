"""The file bucket: where the platform keeps uploads, bundles and collected logs.

One interface, ``BlobStore``, and two backends chosen by settings
(``blob.backend``): ``LocalBlobStore`` keeps each blob as a file under a
directory (the embedded default, ``AIOT_HOME/bucket``) and ``AzureBlobStore``
(``platform_core.blobstore_azure``, imported only when chosen) keeps them in one
Azure Blob Storage container (production; Azurite in tests).
Callers get a store from ``blob_store_from_settings`` and never learn which.

Keys are '/'-separated relative paths (``uploads/models/cam-1.zip``), checked
by ``validate_key`` before any backend sees them, so a key that works on one
backend works on the other.

A put streams: a file-like source is read ``CHUNK_SIZE`` bytes at a time. The
local backend writes the chunks to a hidden temporary file next to the target
and renames it into place, so readers see the old blob or the new one and
never a half-written file; the Azure backend stages the chunks as blocks and
commits them at the end, which gives the same guarantee. A get or ``open``
streams back in chunks of at most ``CHUNK_SIZE``. Errors reach callers as
``platform_sdk.errors`` types only: ``BadRequest`` (bad key or settings),
``NotFound`` (no such blob), ``Conflict``, ``Unavailable`` (Azure cannot be
reached); Azure SDK exceptions are translated here and never escape.
"""

from __future__ import annotations

import abc
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from platform_sdk.errors import BadRequest, Conflict, NotFound
from platform_sdk.settings import Settings

__all__ = [
    "CHUNK_SIZE",
    "BlobInfo",
    "BlobStore",
    "LocalBlobStore",
    "blob_store_from_settings",
    "validate_key",
]

CHUNK_SIZE = 4 * 1024 * 1024
"""Bytes read, written, sent or received at a time: bounds a transfer's memory."""

MAX_KEY_LENGTH = 1024  # Azure's limit; enforced for both backends so keys stay portable.

# Temporary files of in-flight local puts start with this; keys may not, so that a
# listing can skip them without hiding a real blob.
_TEMP_PREFIX = ".~aiot-tmp-"

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class BlobInfo(BaseModel):
    """What the bucket knows about one blob."""

    model_config = ConfigDict(frozen=True)

    key: str
    size: int = Field(ge=0, description="Length in bytes.")
    modified: AwareDatetime = Field(description="Last write, in UTC.")

    @field_validator("modified")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe, portable blob key; else raise ``BadRequest``.

    Both backends call this, so the rules (and the error text) are the same
    everywhere: the local backend relies on it to stay inside its directory.
    """
    reason = _key_problem(key)
    if reason is not None:
        raise BadRequest(f"invalid blob key {key!r}: {reason}", details={"key": key})
    return key


def _key_problem(key: str) -> str | None:
    if not isinstance(key, str):
        return "a key must be a string"
    if not key:
        return "the key is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"longer than {MAX_KEY_LENGTH} characters"
    if _CONTROL_CHARS.search(key):
        return "contains a NUL or control character"
    if "\\" in key:
        return "contains a backslash; separate parts with '/'"
    if key.startswith("/"):
        return "is absolute; keys are relative paths"
    for segment in key.split("/"):
        if not segment:
            return "has an empty path segment ('//' or a trailing '/')"
        if segment in (".", ".."):
            return f"has a {segment!r} path segment"
        if segment.startswith(_TEMP_PREFIX):
            return f"path segments starting with {_TEMP_PREFIX!r} are reserved"
    return None


def _validate_prefix(prefix: str) -> str:
    """A listing prefix is a key, or the start of one ('logs/', 'log')."""
    if prefix:
        body = prefix.removesuffix("/")
        reason = _key_problem(body) if body else "is only '/'"
        if reason is not None:
            raise BadRequest(f"invalid blob prefix {prefix!r}: {reason}", details={"prefix": prefix})
    return prefix


def _iter_chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(CHUNK_SIZE):
        yield chunk


class BlobStore(abc.ABC):
    """The file bucket. Keys are '/'-separated relative paths (see ``validate_key``)."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes | BinaryIO) -> BlobInfo:
        """Store ``data`` under ``key``, replacing any blob there.

        A file-like is read in chunks, never whole. Readers see the old blob
        or the new one, never a part; if ``data`` fails mid-way, its error
        propagates and the old blob (or its absence) stays.
        """

    def get(self, key: str) -> bytes:
        """The whole blob; raise ``NotFound`` if there is none."""
        return b"".join(self.open(key))

    @abc.abstractmethod
    def open(self, key: str) -> Iterator[bytes]:
        """The blob as chunks of at most ``CHUNK_SIZE`` bytes.

        ``NotFound`` is raised by this call, not by the first ``next``.
        """

    def download(self, key: str, path: Path) -> None:
        """Stream the blob into the file ``path``, which is replaced atomically.

        The folder of ``path`` must exist. ``NotFound`` leaves ``path`` untouched.
        """
        write_atomically(Path(path), self.open(key))

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[BlobInfo]:
        """Blobs whose key starts with ``prefix`` (a plain string prefix), sorted by key."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob; raise ``NotFound`` if there is none."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        return None  # a backend without connections has nothing to release

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_atomically(target: Path, chunks: Iterable[bytes], *, make_folder: bool = False) -> int:
    """Write to a temp file beside ``target``, then rename; return the byte count.

    The temp file lives in the target's folder because ``os.replace`` is only
    atomic within one filesystem.
    """
    fd, temp_name = _open_temp(target.parent, make_folder=make_folder)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += out.write(chunk)
            out.flush()
            # Without fsync a crash after the rename can leave an empty "complete" file.
            os.fsync(out.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return size


def _open_temp(folder: Path, *, make_folder: bool) -> tuple[int, str]:
    if make_folder:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return tempfile.mkstemp(dir=folder, prefix=_TEMP_PREFIX, suffix=".part")
        except FileNotFoundError:
            # A concurrent delete pruned the folder we just made; make it once more.
            folder.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=folder, prefix=_TEMP_PREFIX, suffix=".part")


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root``; the directory is made on the first put."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _info(self, key: str, path: Path) -> BlobInfo:
        stat = path.stat()
        return BlobInfo(key=key, size=stat.st_size, modified=datetime.fromtimestamp(stat.st_mtime, UTC))

    def put(self, key: str, data: bytes | BinaryIO) -> BlobInfo:
        path = self._path(key)
        chunks: Iterable[bytes] = (
            [bytes(data)] if isinstance(data, bytes | bytearray | memoryview) else _iter_chunks(data)
        )
        try:
            write_atomically(path, chunks, make_folder=True)
        except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
            raise Conflict(
                f"cannot store blob {key!r}: a blob or folder in its path clashes with it "
                "(the local bucket cannot hold both 'a' and 'a/b')",
                details={"key": key},
            ) from exc
        return self._info(key, path)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise _not_found(key) from exc

    def open(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise _not_found(key)
        # The file is opened inside the generator so that an iterator dropped
        # before its first next() holds no file handle.
        return self._read_chunks(key, path)

    def _read_chunks(self, key: str, path: Path) -> Iterator[bytes]:
        try:
            source = path.open("rb")
        except FileNotFoundError as exc:
            raise _not_found(key) from exc
        with source:
            yield from _iter_chunks(source)

    def list(self, prefix: str = "") -> list[BlobInfo]:
        _validate_prefix(prefix)
        # Only the folder the prefix names needs walking, not the whole bucket.
        folder = self.root.joinpath(*prefix.split("/")[:-1])
        found: list[BlobInfo] = []
        for dirpath, _dirnames, filenames in os.walk(folder):
            for name in filenames:
                if name.startswith(_TEMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    found.append(self._info(key, path))
                except FileNotFoundError:
                    continue  # deleted while we walked
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise _not_found(key) from exc
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Remove folders emptied by a delete, so listings do not walk dead branches."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or already gone): leave it
            folder = folder.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def _not_found(key: str) -> NotFound:
    return NotFound(f"no blob {key!r} in the bucket", details={"key": key})


def blob_store_from_settings(settings: Settings) -> BlobStore:
    """The bucket the settings name: ``blob.backend`` is ``local`` or ``azure``."""
    if settings.blob.backend == "local":
        return LocalBlobStore(settings.blob_path)
    secret = settings.blob.azure_connection_string
    if secret is None or not secret.get_secret_value().strip():
        raise BadRequest(
            "the azure blob backend needs a connection string: set "
            "AIOT_BLOB__AZURE_CONNECTION_STRING (or blob.azure_connection_string in the "
            "settings file), or set AIOT_BLOB__BACKEND=local"
        )
    # The Azure SDK (about 20 MB in every process that imports it) only where it is used.
    from platform_core.blobstore_azure import AzureBlobStore

    return AzureBlobStore(secret.get_secret_value(), settings.blob.azure_container)
