"""The safe zip reader: every class of nasty archive is refused, naming the file and the reason.

Pure unit tests: the zips are built in memory, the nasty ones crafted by hand
(patched headers included), and extraction goes to ``tmp_path``.
"""

from __future__ import annotations

import io
import os
import random
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from platform_core.archive import Archive, ArchiveEntry, ArchiveLimits, pack_directory
from platform_sdk.errors import Conflict, NotFound, ValidationFailed

LABEL = "model zip cam-1.zip"
Entry = tuple[str | zipfile.ZipInfo, bytes]


def zip_of(*entries: Entry) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buffer.getvalue()


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info


def patch_header(data: bytes, name: str, *, file_size: int, crc: int | None = None) -> bytes:
    """``data`` with the uncompressed size (and CRC) of ``name`` rewritten in both headers."""
    buf = bytearray(data)
    encoded = name.encode()
    central = buf.find(b"PK\x01\x02")
    while central >= 0:
        (name_len,) = struct.unpack_from("<H", buf, central + 28)
        if bytes(buf[central + 46 : central + 46 + name_len]) == encoded:
            break
        central = buf.find(b"PK\x01\x02", central + 4)
    assert central >= 0, f"no central directory entry for {name}"
    (local,) = struct.unpack_from("<I", buf, central + 42)
    struct.pack_into("<I", buf, central + 24, file_size)
    struct.pack_into("<I", buf, local + 22, file_size)
    if crc is not None:
        struct.pack_into("<I", buf, central + 16, crc)
        struct.pack_into("<I", buf, local + 14, crc)
    return bytes(buf)


def with_bad_crc(data: bytes, name: str) -> bytes:
    """``data`` with a wrong CRC-32 recorded for ``name`` (its content and sizes untouched)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(name)
    return patch_header(data, name, file_size=info.file_size, crc=info.CRC ^ 0xFFFFFFFF)


def assert_rejected(error: ValidationFailed, file: str | None, reason: str) -> None:
    """``error`` names the archive, ``file`` and ``reason`` in its message and lists them in details."""
    assert LABEL in error.message
    if file is not None:
        assert repr(file) in error.message
    assert reason in error.message
    assert isinstance(error.details, list)
    assert any(d["file"] == file and d["field"] is None and reason in d["reason"] for d in error.details), (
        error.details
    )


def rejected_at_open(data: bytes, limits: ArchiveLimits | None = None) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        Archive.open(data, label=LABEL, limits=limits)
    return caught.value


# --- the happy path -----------------------------------------------------------------------------------


def make_tree(root: Path) -> dict[str, bytes]:
    """A model directory with files that must be packed and files that must not; returns the former."""
    wanted = {
        "model.py": b"def predict(x):\n    return x\n",
        "weights/w.bin": random.Random(0).randbytes(300_000),
        "weights/empty": b"",
        "bin/run.sh": b"#!/bin/sh\nexec python model.py\n",
        "a-b.txt": b"sorts before a/ as a name",
    }
    unwanted = {
        "__pycache__/model.cpython-311.pyc": b"\0" * 16,
        "weights/__pycache__/x.pyc": b"\0",
        "stale.pyc": b"\0",
        ".git/HEAD": b"ref: refs/heads/main\n",
        ".DS_Store": b"\0",
        "data/raw.csv": b"1,2,3\n",  # excluded by the caller
    }
    for name, data in {**wanted, **unwanted}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "bin/run.sh").chmod(0o755)
    return wanted


def test_pack_open_extract_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "model"
    wanted = make_tree(source)
    data = pack_directory(source, exclude=lambda p: p.parts[0] == "data")

    target = tmp_path / "out" / "model"
    with Archive.open(data, label=LABEL) as archive:
        assert archive.names() == set(wanted)
        assert sorted((e.name, e.size) for e in archive.entries) == sorted(
            (name, len(content)) for name, content in wanted.items()
        )
        assert archive.read("model.py") == wanted["model.py"]
        archive.extract_to(target)

    extracted = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert extracted == wanted
    assert os.access(target / "bin/run.sh", os.X_OK)
    assert not os.access(target / "model.py", os.X_OK)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]  # no staging dir left


def test_pack_directory_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    source = tmp_path / "model"
    make_tree(source)
    first = pack_directory(source)
    for path in source.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    assert pack_directory(source) == first

    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert "data/raw.csv" in names  # no exclude this time
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or ".git/" in n]
        assert ".DS_Store" not in names
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_DEFLATED}


def test_pack_directory_refuses_symlinks(tmp_path: Path) -> None:
    source = tmp_path / "model"
    make_tree(source)
    (source / "weights" / "link.bin").symlink_to("/etc/passwd")
    (source / "escape").symlink_to(tmp_path)
    with pytest.raises(ValidationFailed) as caught:
        pack_directory(source)
    message = caught.value.message
    assert "'escape'" in message
    assert "symlink" in message
    assert "2 problems" in message
    assert [d["file"] for d in caught.value.details] == ["escape", "weights/link.bin"]


def test_open_from_a_path_and_names_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "m.zip"
    path.write_bytes(zip_of(("./src//a.py", b"a"), ("src/", b""), ("b.txt", b"bb")))
    archive = Archive.open(path, label=LABEL)
    try:
        assert archive.names() == {"src/a.py", "b.txt"}
        assert ArchiveEntry("b.txt", 2) in archive.entries
        assert archive.read("src/a.py") == b"a"
        with pytest.raises(NotFound, match=r"nope\.py"):
            archive.read("nope.py")
    finally:
        archive.close()
    archive.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        archive.read("b.txt")
    with pytest.raises(NotFound):
        Archive.open(tmp_path / "missing.zip", label=LABEL)


def test_extract_to_an_existing_target_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep").write_text("mine")
    with Archive.open(zip_of(("a.py", b"a")), label=LABEL) as archive, pytest.raises(Conflict):
        archive.extract_to(target)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in target.iterdir()] == ["keep"]


# --- refused at open ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "file", "reason"),
    [
        pytest.param([("../evil.py", b"x")], "../evil.py", "'..' component", id="traversal"),
        pytest.param([("ok/../../evil.py", b"x")], "ok/../../evil.py", "'..' component", id="deep-traversal"),
        pytest.param([("/etc/passwd", b"x")], "/etc/passwd", "absolute", id="absolute"),
        pytest.param([("C:/Windows/evil.dll", b"x")], "C:/Windows/evil.dll", "drive letter", id="drive"),
        pytest.param([("dir\\evil.py", b"x")], "dir\\evil.py", "backslash", id="backslash"),
        pytest.param([("a" * 300, b"x")], "a" * 300, "path too long", id="long-path"),
        pytest.param([(symlink_entry("link"), b"/etc/passwd")], "link", "symlink", id="symlink"),
        pytest.param([("bell\a.py", b"x")], "bell\a.py", "control character (U+0007)", id="c0-control"),
        pytest.param([("del\x7f.py", b"x")], "del\x7f.py", "control character (U+007F)", id="delete"),
        pytest.param([("nel\x85.py", b"x")], "nel\x85.py", "control character (U+0085)", id="c1-control"),
    ],
)
def test_unsafe_entries_are_refused(entries: list[Entry], file: str, reason: str) -> None:
    data = zip_of(("fine.py", b"ok"), *entries)
    assert_rejected(rejected_at_open(data), file, reason)


def test_special_files_are_refused() -> None:
    fifo = zipfile.ZipInfo("pipe")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    assert_rejected(rejected_at_open(zip_of(("fine.py", b"ok"), (fifo, b""))), "pipe", "special file")


def test_not_a_zip_is_refused() -> None:
    assert_rejected(rejected_at_open(b"this is not a zip at all"), None, "not a valid zip archive")
    truncated = zip_of(("a.py", b"a" * 1000))[:-30]
    assert_rejected(rejected_at_open(truncated), None, "not a valid zip archive")


def test_empty_archive_is_refused() -> None:
    assert_rejected(rejected_at_open(zip_of()), None, "archive is empty")
    assert_rejected(rejected_at_open(zip_of(("models/", b""))), None, "archive is empty")


def test_encrypted_entries_are_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("secret.bin", b"x" * 10)
        zf.getinfo("secret.bin").flag_bits |= 0x1  # written to the central directory at close
    assert_rejected(rejected_at_open(buffer.getvalue()), "secret.bin", "encrypted")


def test_unknown_compression_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("odd.bin", b"x" * 10)
        zf.getinfo("odd.bin").compress_type = 99
    assert_rejected(rejected_at_open(buffer.getvalue()), "odd.bin", "unsupported compression method 99")


def test_duplicate_names_are_refused() -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = zip_of(("a.py", b"1"), ("a.py", b"2"))
    assert_rejected(rejected_at_open(data), "a.py", "duplicate name")
    assert_rejected(rejected_at_open(zip_of(("a.py", b"1"), ("./a.py", b"2"))), "./a.py", "duplicate name")


def test_a_path_that_is_both_file_and_directory_is_refused() -> None:
    assert_rejected(rejected_at_open(zip_of(("a", b"1"), ("a/b", b"2"))), "a", "both a file and a directory")


def test_too_many_files_are_refused() -> None:
    data = zip_of(*[(f"f{i}.txt", b"x") for i in range(5)])
    assert_rejected(rejected_at_open(data, ArchiveLimits(max_files=3)), "f3.txt", "too many entries (5 > 3)")
    assert Archive.open(data, label=LABEL, limits=ArchiveLimits(max_files=5)).names()


def test_size_limits_are_enforced_on_declared_sizes() -> None:
    big = zip_of(("small.txt", b"x"), ("big.bin", b"x" * 200))
    assert_rejected(rejected_at_open(big, ArchiveLimits(max_file_bytes=100)), "big.bin", "file too large")

    many = zip_of(*[(f"part{i}.bin", b"x" * 100) for i in range(3)])
    error = rejected_at_open(many, ArchiveLimits(max_total_bytes=250))
    assert_rejected(error, "part2.bin", "total uncompressed size exceeds 250 bytes")


def test_zip_bomb_is_refused() -> None:
    bomb = zip_of(("weights.bin", bytes(16 * 1024 * 1024)))  # ratio ~1000
    assert_rejected(rejected_at_open(bomb), "weights.bin", "compression ratio")
    # Under 1 MiB uncompressed, a high ratio is allowed (sparse small files are common).
    with Archive.open(zip_of(("small.bin", bytes(512 * 1024))), label=LABEL) as archive:
        assert archive.read("small.bin") == bytes(512 * 1024)


def test_all_problems_are_reported_together() -> None:
    data = zip_of(("../evil.py", b"x"), ("fine.py", b"ok"), ("/etc/passwd", b"x"), (symlink_entry("l"), b"/"))
    error = rejected_at_open(data)
    assert error.message.startswith(f"{LABEL}: 3 problems, first '../evil.py': ")
    assert [(d["file"], d["field"]) for d in error.details] == [
        ("../evil.py", None),
        ("/etc/passwd", None),
        ("l", None),
    ]


# --- headers that lie: refused while reading, nothing left behind --------------------------------------


def test_content_larger_than_its_header_fails_and_leaves_nothing(tmp_path: Path) -> None:
    actual = bytes(4 * 1024 * 1024)
    data = patch_header(zip_of(("model.py", b"ok"), ("weights.bin", actual)), "weights.bin", file_size=1000)
    archive = Archive.open(data, label=LABEL)  # 1000 bytes declared: passes every check at open
    assert ArchiveEntry("weights.bin", 1000) in archive.entries
    with pytest.raises(ValidationFailed) as caught:
        archive.read("weights.bin")
    assert_rejected(caught.value, "weights.bin", "does not match its header")

    target = tmp_path / "model"
    with pytest.raises(ValidationFailed) as caught:
        archive.extract_to(target)  # model.py is written first, then the lie is found
    assert_rejected(caught.value, "weights.bin", "does not match its header")
    assert list(tmp_path.iterdir()) == []  # neither target nor staging dir
    archive.close()


def test_content_larger_than_its_header_never_yields_more_than_declared() -> None:
    actual = bytes(4 * 1024 * 1024)
    data = zip_of(("weights.bin", actual))
    data = patch_header(data, "weights.bin", file_size=1000, crc=zlib.crc32(actual[:1000]))
    with Archive.open(data, label=LABEL) as archive:
        assert len(archive.read("weights.bin")) == 1000


def test_content_shorter_than_its_header_fails_and_leaves_nothing(tmp_path: Path) -> None:
    data = patch_header(zip_of(("model.py", b"x" * 100)), "model.py", file_size=5000)
    with Archive.open(data, label=LABEL) as archive:
        with pytest.raises(ValidationFailed) as caught:
            archive.read("model.py")
        assert_rejected(caught.value, "model.py", "shorter than its header says (100 < 5000 bytes)")
        with pytest.raises(ValidationFailed):
            archive.extract_to(tmp_path / "out" / "model")
    assert list((tmp_path / "out").iterdir()) == []


def test_corrupt_content_fails_at_read(tmp_path: Path) -> None:
    data = bytearray(zip_of(("model.py", random.Random(1).randbytes(5000))))
    data[100] ^= 0xFF  # inside the compressed stream of the only entry
    with Archive.open(bytes(data), label=LABEL) as archive:
        with pytest.raises(ValidationFailed) as caught:
            archive.extract_to(tmp_path / "model")
        assert_rejected(caught.value, "model.py", "corrupt")
    assert list(tmp_path.iterdir()) == []


def test_verify_reads_every_entry_and_names_each_damaged_one(tmp_path: Path) -> None:
    content = random.Random(2).randbytes(3000)
    data = zip_of(("a.py", b"fine"), ("b.bin", content), ("c.bin", content[:100]))
    with Archive.open(data, label=LABEL) as archive:
        archive.verify()  # an intact archive reads back whole
    damaged = with_bad_crc(with_bad_crc(data, "b.bin"), "c.bin")
    with Archive.open(damaged, label=LABEL) as archive:
        assert archive.read("a.py") == b"fine"  # only the damaged entries fail
        with pytest.raises(ValidationFailed) as caught:
            archive.verify()
    assert_rejected(caught.value, "b.bin", "Bad CRC-32 for file 'b.bin'")
    assert [detail["file"] for detail in caught.value.details] == ["b.bin", "c.bin"]
    assert "zip the folder again" in caught.value.message
    assert "2 problems" in caught.value.message
