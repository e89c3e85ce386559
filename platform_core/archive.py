"""The one safe reader of uploaded zip archives, and the one writer of the zips the platform packs.

Every zip that reaches the platform from outside passes through ``Archive``:
the AI manager validates model zips on upload, ``aiot model pack`` checks what
it has just packed, and the service agent unpacks deploy bundles onto a node
(app zips later take the same road). No other code opens an uploaded zip with
``zipfile`` directly.

How a zip flows through it:

1. ``Archive.open(source, label=..., limits=...)`` opens the bytes (or the
   file) and validates the central directory before any content is read:
   it is a zip at all, it has at least one file, and every entry has a safe
   relative name (no absolute path, drive letter, ``..`` component,
   backslash or control character; not longer than ``max_path_length``), is a
   regular file or a
   directory (no symlinks or other special files), is not encrypted, uses a
   compression method ``zipfile`` can read, does not appear twice, and stays
   within the size limits by its declared sizes (per entry, in total, and the
   compression ratio that gives a zip bomb away). All entry-level problems
   are collected and raised together as one ``ValidationFailed`` whose
   message names the archive label, the first offending file and the reason,
   and whose ``details`` lists every ``{"file", "field", "reason"}``.
2. ``Archive.read(name)``, ``Archive.verify()`` and ``Archive.extract_to(target)``
   stream content in chunks and enforce the sizes again on the bytes actually
   produced, since the sizes in a zip's headers are the attacker's to choose:
   an entry that yields more than it declared, fewer than it declared, or
   fails its CRC is a ``ValidationFailed`` too. ``verify`` reads every file
   to its end (and keeps nothing), so an upload check finds a damaged entry
   before anything is stored, not the deploy that unpacks it later; it
   reports every damaged entry at once.
3. ``extract_to`` writes into a fresh staging directory beside ``target`` and
   renames it into place only when every file is written, so ``target``
   either appears complete or not at all; on any error the staging directory
   is removed.

``pack_directory`` is the other direction: a deterministic zip of a directory
(sorted names, fixed timestamps), which refuses symlinks rather than follow
them. Only regular files are packed; empty directories are not kept.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import shutil
import stat
import struct
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from pydantic import BaseModel, ConfigDict, Field

from platform_sdk.errors import Conflict, NotFound, PlatformError, ValidationFailed

__all__ = ["Archive", "ArchiveEntry", "ArchiveLimits", "pack_directory"]

CHUNK_SIZE = 64 * 1024
RATIO_EXEMPT_BYTES = 1024 * 1024  # entries smaller than this (uncompressed) skip the ratio check
_MAX_COMPONENT_BYTES = 255  # NAME_MAX of every filesystem we extract onto
_FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_SKIPPED_DIRS = frozenset({"__pycache__", ".git"})
_SKIPPED_FILES = frozenset({".DS_Store"})
_SKIPPED_SUFFIXES = (".pyc",)
_DAMAGED = "the zip was damaged on its way or by the tool that wrote it; zip the folder again"
_RELATIVE = "zip the folder's contents, with paths relative to it"
_DRIVE = re.compile(r"^[A-Za-z]:")
_READABLE_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
# What zipfile and the decompressors raise on damaged input (bz2 raises OSError).
_CORRUPT = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
)


class ArchiveLimits(BaseModel):
    """How much an archive may hold; the defaults suit model zips and deploy bundles."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_files: int = Field(default=2000, gt=0)  # entries, directories included
    max_total_bytes: int = Field(default=512 * 1024 * 1024, gt=0)  # sum of uncompressed sizes
    max_file_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_ratio: float = Field(default=200.0, gt=0)  # uncompressed/compressed, per entry of >= 1 MiB
    max_path_length: int = Field(default=255, gt=0)  # characters of the whole name


@dataclass(frozen=True)
class ArchiveEntry:
    """One file in a validated archive: its normalised posix path and declared size."""

    name: str
    size: int


def _problem(file: str | None, reason: str) -> dict[str, Any]:
    return {"file": file, "field": None, "reason": reason}


def _failure(label: str, problems: list[dict[str, Any]]) -> ValidationFailed:
    first = problems[0]
    where = f"{first['file']!r}: " if first["file"] is not None else ""
    if len(problems) == 1:
        message = f"{label}: {where}{first['reason']}"
    else:
        message = f"{label}: {len(problems)} problems, first {where}{first['reason']}"
    return ValidationFailed(message, details=problems)


def _name_problems(raw: str, limits: ArchiveLimits) -> list[str]:
    """Why the entry name ``raw`` is unsafe (empty when it is fine)."""
    reasons: list[str] = []
    if "\\" in raw:
        reasons.append("path contains a backslash (a zip tool on Windows? separate folders with '/')")
    if raw.startswith("/"):
        reasons.append(f"path is absolute ({_RELATIVE})")
    if _DRIVE.match(raw):
        reasons.append(f"path starts with a drive letter ({_RELATIVE})")
    if ".." in raw.split("/"):
        reasons.append(f"path has a '..' component ({_RELATIVE})")
    if len(raw) > limits.max_path_length:
        reasons.append(f"path too long ({len(raw)} > {limits.max_path_length} characters)")
    elif any(len(part.encode()) > _MAX_COMPONENT_BYTES for part in raw.split("/")):
        reasons.append(f"a path component is longer than {_MAX_COMPONENT_BYTES} bytes")
    control = next((ch for ch in raw if unicodedata.category(ch) == "Cc"), None)
    if control is not None:
        reasons.append(f"path contains a control character (U+{ord(control):04X}): rename the file")
    return reasons


def _normalise(raw: str) -> str:
    """``raw`` without empty and '.' components (only called on names that passed the checks)."""
    return "/".join(part for part in raw.split("/") if part not in ("", "."))


def _parents(name: str) -> Iterator[str]:
    parts = name.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _entry_problems(info: zipfile.ZipInfo, limits: ArchiveLimits) -> list[str]:
    """Why the entry ``info`` is unsafe, its name and duplicates aside."""
    reasons: list[str] = []
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        reasons.append("entry is a symlink (zip the file it points to instead)")
    elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        reasons.append(f"entry is a special file (mode {kind:o})")
    if info.flag_bits & 0x1:
        reasons.append("entry is encrypted")
    if info.is_dir():
        return reasons
    if info.compress_type not in _READABLE_METHODS:
        reasons.append(f"unsupported compression method {info.compress_type}")
    if info.file_size > limits.max_file_bytes:
        reasons.append(f"file too large ({info.file_size} > {limits.max_file_bytes} bytes)")
    if info.file_size >= RATIO_EXEMPT_BYTES:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            reasons.append(
                f"compression ratio {ratio:.0f} exceeds {limits.max_ratio:g} (zip bomb?): "
                f"{info.file_size} bytes from {info.compress_size}"
            )
    return reasons


def _validate(label: str, infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> dict[str, zipfile.ZipInfo]:
    """Check every entry; return the files by normalised name or raise one ``ValidationFailed``."""
    if len(infos) > limits.max_files:
        offender = infos[limits.max_files].filename
        reason = f"too many entries ({len(infos)} > {limits.max_files})"
        raise _failure(label, [_problem(offender, reason)])
    problems: list[dict[str, Any]] = []
    files: dict[str, zipfile.ZipInfo] = {}
    dirs: set[str] = set()
    total = 0
    total_reported = False
    for info in infos:
        raw = info.filename
        reasons = _name_problems(raw, limits) + _entry_problems(info, limits)
        problems.extend(_problem(raw, reason) for reason in reasons)
        if reasons:
            continue
        name = _normalise(raw)
        if info.is_dir():
            dirs.add(name)  # '' for a './' entry: harmless
            dirs.update(_parents(name))
            continue
        if not name:
            problems.append(_problem(raw, "path is empty"))
            continue
        dirs.update(_parents(name))
        if name in files:
            problems.append(_problem(raw, f"duplicate name (another entry is also {name!r}): keep one"))
            continue
        files[name] = info
        total += info.file_size
        if total > limits.max_total_bytes and not total_reported:
            total_reported = True
            reason = f"total uncompressed size exceeds {limits.max_total_bytes} bytes ({total} so far)"
            problems.append(_problem(raw, reason))
    for name, info in files.items():
        if name in dirs:
            problems.append(_problem(info.filename, "path is both a file and a directory"))
    if problems:
        raise _failure(label, problems)
    if not files:
        raise _failure(label, [_problem(None, "archive is empty (no files)")])
    return files


class Archive:
    """A validated zip, opened from bytes or a path; read files or extract them all.

    Build one with ``Archive.open``. Close it (or use it as a context manager)
    to release the file it was opened from.
    """

    def __init__(
        self,
        zf: zipfile.ZipFile,
        stream: IO[bytes],
        files: dict[str, zipfile.ZipInfo],
        *,
        label: str,
        limits: ArchiveLimits,
    ) -> None:
        self._zf = zf
        self._stream = stream  # ZipFile does not close a stream it was handed
        self._files = files
        self._closed = False
        self.label = label
        self.limits = limits
        self.entries = [ArchiveEntry(name, info.file_size) for name, info in files.items()]

    @classmethod
    def open(cls, source: bytes | Path, *, label: str, limits: ArchiveLimits | None = None) -> Archive:
        """Open and validate ``source``; ``label`` names it in every error (``model zip cam-1.zip``).

        Raises ``ValidationFailed`` for anything unsafe or corrupt, ``NotFound``
        when ``source`` is a path that does not exist.
        """
        limits = limits or ArchiveLimits()
        stream: IO[bytes]
        if isinstance(source, Path):
            try:
                stream = source.open("rb")
            except FileNotFoundError as exc:
                raise NotFound(f"{label}: no such file {str(source)!r}") from exc
        else:
            stream = io.BytesIO(source)
        try:
            try:
                zf = zipfile.ZipFile(stream)
            except _CORRUPT as exc:
                raise _failure(label, [_problem(None, f"not a valid zip archive ({exc})")]) from exc
            try:
                files = _validate(label, zf.infolist(), limits)
            except BaseException:
                zf.close()
                raise
        except BaseException:
            stream.close()
            raise
        return cls(zf, stream, files, label=label, limits=limits)

    def names(self) -> set[str]:
        """The normalised names of the files (directories excluded)."""
        return set(self._files)

    def read(self, name: str) -> bytes:
        """The content of file ``name``; its actual size is checked against its header and the limits."""
        return b"".join(self._chunks(name))

    def verify(self) -> None:
        """Read every file to its end: ``ValidationFailed`` listing each one that is damaged.

        Damaged means a CRC that does not match, content longer or shorter than its header
        says, or a compressed stream that does not decompress; the reading is bounded by the
        limits the archive was opened with, and nothing read is kept.
        """
        problems: list[dict[str, Any]] = []
        for name in self._files:
            try:
                for _chunk in self._chunks(name):
                    pass
            except ValidationFailed as exc:
                problems.extend(exc.details)
        if problems:
            raise _failure(self.label, problems)

    def extract_to(self, target: Path) -> None:
        """Write every file under ``target``, which must not exist yet; all or nothing.

        The files go to a fresh staging directory beside ``target`` (parents
        are created), which is renamed to ``target`` once complete and removed
        on any error. Raises ``Conflict`` when ``target`` exists.
        """
        self._check_open()
        if target.exists() or target.is_symlink():
            raise Conflict(f"{self.label}: cannot extract to {str(target)!r}: it already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
        try:
            root = staging.resolve()
            total = 0
            for name, info in self._files.items():
                total += self._extract_one(name, info, root, self.limits.max_total_bytes - total)
            staging.chmod(0o755)
            if target.exists() or target.is_symlink():
                raise Conflict(f"{self.label}: cannot extract to {str(target)!r}: it already exists")
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _extract_one(self, name: str, info: zipfile.ZipInfo, root: Path, budget: int) -> int:
        """Write one file under ``root``; return its size. ``budget`` is what the total may still take."""
        dest = root.joinpath(*name.split("/"))
        if not dest.resolve().is_relative_to(root):  # validated at open; defence in depth
            raise _failure(self.label, [_problem(info.filename, "path escapes the target directory")])
        dest.parent.mkdir(parents=True, exist_ok=True)
        unix_mode = info.external_attr >> 16
        mode = 0o755 if unix_mode & 0o111 else 0o644
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        written = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in self._chunks(name):
                written += len(chunk)
                if written > budget:
                    reason = f"total uncompressed size exceeds {self.limits.max_total_bytes} bytes"
                    raise _failure(self.label, [_problem(info.filename, reason)])
                out.write(chunk)
        os.chmod(dest, mode)  # the umask may have narrowed it
        return written

    def _chunks(self, name: str) -> Iterator[bytes]:
        """The content of ``name`` in chunks; ``ValidationFailed`` when it lies about its size."""
        self._check_open()
        info = self._files.get(name)
        if info is None:
            raise NotFound(f"{self.label}: no file {name!r} in the archive")
        limit = min(info.file_size, self.limits.max_file_bytes)
        produced = 0
        try:
            with self._zf.open(info) as member:
                while chunk := member.read(CHUNK_SIZE):
                    produced += len(chunk)
                    if produced > limit:
                        reason = (
                            f"content is larger than its header says ({produced} > {limit} bytes): {_DAMAGED}"
                        )
                        raise _failure(self.label, [_problem(info.filename, reason)])
                    yield chunk
        except PlatformError:
            raise
        except _CORRUPT as exc:
            reason = f"content is corrupt or does not match its header ({exc}): {_DAMAGED}"
            raise _failure(self.label, [_problem(info.filename, reason)]) from exc
        if produced != info.file_size:
            reason = (
                f"content is shorter than its header says ({produced} < {info.file_size} bytes): {_DAMAGED}"
            )
            raise _failure(self.label, [_problem(info.filename, reason)])

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.label}: the archive is closed")

    def close(self) -> None:
        """Release the archive (and the file it was opened from); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._zf.close()
        self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Archive({self.label!r}, {len(self.entries)} files)"


def _skipped(relative: Path, is_dir: bool) -> bool:
    if is_dir:
        return relative.name in _SKIPPED_DIRS
    return relative.name in _SKIPPED_FILES or relative.name.endswith(_SKIPPED_SUFFIXES)


def pack_directory(source: Path, *, exclude: Callable[[Path], bool] | None = None) -> bytes:
    """A deterministic zip of the regular files under ``source``.

    Names are sorted '/'-separated paths relative to ``source``; every entry
    has the timestamp 1980-01-01 00:00, mode 0644 (0755 when the file is
    executable by its owner) and ``ZIP_DEFLATED``, so the same tree packs to
    the same bytes. ``__pycache__``, ``.git``, ``*.pyc`` and ``.DS_Store``
    are skipped, and so is every path (relative to ``source``, directories
    included) for which ``exclude`` returns true. A symlink or other special
    file anywhere else is refused with ``ValidationFailed`` naming each one.
    """
    if not source.is_dir():
        raise NotFound(f"cannot pack {str(source)!r}: not a directory")
    files: list[tuple[str, Path]] = []
    problems: list[dict[str, Any]] = []

    def walk(directory: Path) -> None:
        for path in sorted(directory.iterdir(), key=lambda p: p.name):
            relative = path.relative_to(source)
            mode = path.lstat().st_mode
            is_dir = stat.S_ISDIR(mode)
            if _skipped(relative, is_dir) or (exclude is not None and exclude(relative)):
                continue
            if stat.S_ISLNK(mode):
                problems.append(_problem(relative.as_posix(), "is a symlink"))
            elif is_dir:
                walk(path)
            elif stat.S_ISREG(mode):
                files.append((relative.as_posix(), path))
            else:
                problems.append(_problem(relative.as_posix(), "is not a regular file"))

    walk(source)
    if problems:
        raise _failure(f"cannot pack {str(source)!r}", problems)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, path in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_FIXED_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever packs it
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            size = path.stat().st_size
            with path.open("rb") as src, zf.open(info, "w", force_zip64=size >= zipfile.ZIP64_LIMIT) as dst:
                shutil.copyfileobj(src, dst, CHUNK_SIZE)
    return buffer.getvalue()
