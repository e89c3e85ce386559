"""The file bucket, every behaviour against both backends: a local folder and Azurite."""

from __future__ import annotations

import contextlib
import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from platform_core.blobstore import (
    CHUNK_SIZE,
    BlobStore,
    LocalBlobStore,
    blob_store_from_settings,
)
from platform_core.blobstore_azure import AzureBlobStore
from platform_sdk.errors import BadRequest, NotFound, Unavailable
from platform_sdk.net import free_port
from platform_sdk.settings import temporary_settings
from tests.fixtures.azurite import connection_string

BIG = CHUNK_SIZE + CHUNK_SIZE // 4 + 17  # more than one chunk, not a multiple of it


class ReadRecorder(io.BytesIO):
    """An upload source that remembers the largest read asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.largest_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        whole = size is None or size < 0
        self.largest_read = max(self.largest_read, len(self.getbuffer()) if whole else size or 0)
        return super().read(size)


class DroppedUpload(io.BytesIO):
    """An upload source whose connection drops after ``fail_after`` bytes."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        super().__init__(data)
        self.fail_after = fail_after

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell() >= self.fail_after:
            raise ConnectionResetError("client went away mid-upload")
        return super().read(size)


@pytest.fixture(scope="session", params=["local", "azure"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which backend a test runs on.

    Session-scoped so that Azurite starts before the per-test leftover-process
    guard takes its snapshot, and only when an azure test is selected.
    """
    if request.param == "azure":
        request.getfixturevalue("azurite")
    backend_name: str = request.param
    return backend_name


@pytest.fixture
def store(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[BlobStore]:
    """An empty bucket: a fresh folder, or a fresh Azurite container removed afterwards."""
    if backend == "local":
        with LocalBlobStore(tmp_path / "bucket") as local:
            yield local
        return
    request.applymarker(pytest.mark.service("azurite"))
    connection: str = request.getfixturevalue("azurite")
    container = f"test-{uuid.uuid4().hex[:16]}"
    try:
        with AzureBlobStore(connection, container) as azure:
            yield azure
    finally:
        delete_container(connection, container)


def delete_container(connection: str, container: str) -> None:
    # A test that failed before the first operation never created it.
    with (
        BlobServiceClient.from_connection_string(connection) as service,
        contextlib.suppress(ResourceNotFoundError),
    ):
        service.delete_container(container)


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def test_put_then_get_returns_the_same_bytes(store: BlobStore) -> None:
    data = b"\x00binary\xffpayload\n" * 100
    info = store.put("uploads/models/cam.zip", data)
    assert info.key == "uploads/models/cam.zip"
    assert info.size == len(data)
    assert abs(info.modified - datetime.now(UTC)) < timedelta(minutes=5)
    assert info.modified.utcoffset() == timedelta(0)
    assert store.get("uploads/models/cam.zip") == data


def test_empty_blob_round_trips(store: BlobStore) -> None:
    assert store.put("empty", b"").size == 0
    assert store.get("empty") == b""
    assert store.exists("empty")


def test_streamed_put_reads_in_chunks_and_streams_back(store: BlobStore, tmp_path: Path) -> None:
    data = random_bytes(BIG)
    source = ReadRecorder(data)

    info = store.put("bundles/app.zip", source)

    assert info.size == len(data)
    assert 0 < source.largest_read <= CHUNK_SIZE, "the upload read the source whole"
    chunks = list(store.open("bundles/app.zip"))
    assert len(chunks) > 1
    assert all(len(chunk) <= CHUNK_SIZE for chunk in chunks)
    assert b"".join(chunks) == data
    target = tmp_path / "downloaded.zip"
    store.download("bundles/app.zip", target)
    assert target.read_bytes() == data
    assert store.get("bundles/app.zip") == data


def test_put_from_a_real_file(store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "collected.log"
    data = random_bytes(BIG)
    source.write_bytes(data)
    with source.open("rb") as handle:
        assert store.put("logs/node-1/collected.log", handle).size == len(data)
    assert store.get("logs/node-1/collected.log") == data


def test_list_filters_by_prefix_sorted_with_sizes(store: BlobStore) -> None:
    store.put("logs/b.txt", b"bb")
    store.put("logs/a.txt", b"a")
    store.put("logs/sub/c.txt", b"ccc")
    store.put("logsheet.csv", b"dddd")
    store.put("uploads/x", b"x")

    assert [(i.key, i.size) for i in store.list("logs/")] == [
        ("logs/a.txt", 1),
        ("logs/b.txt", 2),
        ("logs/sub/c.txt", 3),
    ]
    assert [i.key for i in store.list("logs")] == [
        "logs/a.txt",
        "logs/b.txt",
        "logs/sub/c.txt",
        "logsheet.csv",
    ]
    assert [i.key for i in store.list("logs/sub/c")] == ["logs/sub/c.txt"]
    assert [i.key for i in store.list()] == [
        "logs/a.txt",
        "logs/b.txt",
        "logs/sub/c.txt",
        "logsheet.csv",
        "uploads/x",
    ]
    assert store.list("nothing/") == []


def test_list_of_an_empty_bucket_is_empty(store: BlobStore) -> None:
    assert store.list() == []


def test_exists(store: BlobStore) -> None:
    assert not store.exists("a/b")
    store.put("a/b", b"1")
    assert store.exists("a/b")
    assert not store.exists("a"), "a folder-like prefix is not a blob"


def test_overwrite_replaces_content_and_size(store: BlobStore) -> None:
    store.put("config.json", b"first version, long")
    info = store.put("config.json", b"second")
    assert info.size == 6
    assert store.get("config.json") == b"second"
    assert [(i.key, i.size) for i in store.list()] == [("config.json", 6)]


def test_delete_then_get_is_not_found(store: BlobStore) -> None:
    store.put("uploads/tmp.bin", b"data")
    store.put("uploads/keep.bin", b"keep")
    store.delete("uploads/tmp.bin")

    assert not store.exists("uploads/tmp.bin")
    with pytest.raises(NotFound, match=r"uploads/tmp\.bin"):
        store.get("uploads/tmp.bin")
    assert [i.key for i in store.list()] == ["uploads/keep.bin"]


@pytest.mark.parametrize("operation", ["get", "open", "download", "delete"])
def test_missing_key_is_not_found(store: BlobStore, operation: str, tmp_path: Path) -> None:
    target = tmp_path / "never-written"
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: store.get("no/such/blob"),
        "open": lambda: store.open("no/such/blob"),
        "download": lambda: store.download("no/such/blob", target),
        "delete": lambda: store.delete("no/such/blob"),
    }
    with pytest.raises(NotFound, match="no/such/blob"):
        calls[operation]()
    assert not target.exists()
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "bucket"])


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("../x", "'..'"),
        ("a/../../etc/passwd", "'..'"),
        ("./a", "'.'"),
        ("/abs", "absolute"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("a\\b", "backslash"),
        ("", "empty"),
        ("a\x00b", "control"),
        ("line\nbreak", "control"),
        ("x" * 1025, "longer than"),
    ],
)
def test_bad_keys_are_rejected_naming_the_key(store: BlobStore, key: str, reason: str) -> None:
    for call in (
        lambda: store.put(key, b"data"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(BadRequest) as caught:
            call()
        assert repr(key)[:60] in str(caught.value)
        assert reason in str(caught.value)
    assert store.list() == []


def test_bad_list_prefix_is_rejected(store: BlobStore) -> None:
    with pytest.raises(BadRequest, match=r"\.\."):
        store.list("../")


def test_failed_upload_leaves_old_blob_untouched(store: BlobStore) -> None:
    store.put("bundles/app.zip", b"old version")
    data = random_bytes(BIG)
    with pytest.raises(ConnectionResetError):
        store.put("bundles/app.zip", DroppedUpload(data, fail_after=CHUNK_SIZE))
    assert store.get("bundles/app.zip") == b"old version"
    assert [(i.key, i.size) for i in store.list()] == [("bundles/app.zip", 11)]


def test_failed_upload_of_a_new_key_leaves_no_blob(store: BlobStore) -> None:
    with pytest.raises(ConnectionResetError):
        store.put("bundles/new.zip", DroppedUpload(random_bytes(BIG), fail_after=CHUNK_SIZE))
    assert not store.exists("bundles/new.zip")
    assert store.list() == []


def test_local_failed_upload_leaves_no_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    store = LocalBlobStore(root)
    store.put("bundles/keep.zip", b"keep")
    with pytest.raises(ConnectionResetError):
        store.put("bundles/app.zip", DroppedUpload(random_bytes(BIG), fail_after=CHUNK_SIZE))
    assert sorted(p.name for p in root.rglob("*")) == ["bundles", "keep.zip"]


def test_local_listing_hides_uploads_in_flight(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    store = LocalBlobStore(root)
    seen_during_upload: list[list[str]] = []

    class SlowSource(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            seen_during_upload.append([i.key for i in store.list()])
            return super().read(size)

    store.put("big.bin", SlowSource(random_bytes(BIG)))
    assert seen_during_upload
    assert all(keys == [] for keys in seen_during_upload)
    assert [i.key for i in store.list()] == ["big.bin"]


def test_local_delete_prunes_emptied_folders(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    store = LocalBlobStore(root)
    store.put("a/b/c/d.txt", b"d")
    store.put("a/keep.txt", b"k")
    store.delete("a/b/c/d.txt")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["a", "a/keep.txt"]


def test_local_store_stays_inside_its_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "bucket")
    with pytest.raises(BadRequest):
        store.put("../escaped", b"x")
    assert not (tmp_path / "escaped").exists()


def test_settings_pick_the_local_backend(tmp_path: Path) -> None:
    with temporary_settings(
        {"home": str(tmp_path), "blob.backend": "local", "blob.local_path": str(tmp_path / "b")}
    ) as settings:
        store = blob_store_from_settings(settings)
    assert isinstance(store, LocalBlobStore)
    store.put("x/y", b"z")
    assert (tmp_path / "b" / "x" / "y").read_bytes() == b"z"


def test_settings_default_local_bucket_is_under_home(tmp_path: Path) -> None:
    with temporary_settings({"home": str(tmp_path), "blob.backend": "local"}) as settings:
        store = blob_store_from_settings(settings)
    store.put("k", b"v")
    assert (settings.blob_path / "k").read_bytes() == b"v"


@pytest.mark.service("azurite")
def test_settings_pick_the_azure_backend(azurite: str) -> None:
    container = f"test-{uuid.uuid4().hex[:16]}"
    with temporary_settings(
        {
            "blob.backend": "azure",
            "blob.azure_connection_string": azurite,
            "blob.azure_container": container,
        }
    ) as settings:
        store = blob_store_from_settings(settings)
    try:
        assert isinstance(store, AzureBlobStore)
        store.put("from/settings", b"hello")
        with BlobServiceClient.from_connection_string(azurite) as service:
            blob = service.get_blob_client(container, "from/settings")
            assert blob.download_blob().readall() == b"hello"
    finally:
        store.close()
        delete_container(azurite, container)


def test_azure_backend_without_connection_string_says_what_to_set() -> None:
    with (
        temporary_settings({"blob.backend": "azure", "blob.azure_connection_string": None}) as settings,
        pytest.raises(BadRequest, match="AIOT_BLOB__AZURE_CONNECTION_STRING"),
    ):
        blob_store_from_settings(settings)


def test_azure_backend_rejects_a_malformed_connection_string() -> None:
    with pytest.raises(BadRequest, match="AIOT_BLOB__AZURE_CONNECTION_STRING"):
        AzureBlobStore("this is not a connection string", "aiot")


def test_azure_store_is_built_without_touching_the_network() -> None:
    port = free_port()
    started = time.monotonic()
    with AzureBlobStore(connection_string(port), "aiot", retries=0, timeout=2) as store:
        assert time.monotonic() - started < 1
        with pytest.raises(Unavailable, match=rf"127\.0\.0\.1:{port}") as caught:
            store.put("x", b"y")
    assert "AIOT_BLOB__AZURE_CONNECTION_STRING" in str(caught.value)
