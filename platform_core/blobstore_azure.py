"""``AzureBlobStore``: the file bucket in one Azure Blob Storage container (Azurite in tests).

The Azure backend of ``platform_core.blobstore`` (whose docstring describes the interface,
keys and streaming), in a module of its own so that only a process configured for Azure
imports the Azure SDK; ``blob_store_from_settings`` imports it when ``blob.backend`` is
``azure``. Azure SDK exceptions are translated here and never escape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import BinaryIO, NoReturn

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry

from platform_core.blobstore import (
    CHUNK_SIZE,
    BlobInfo,
    BlobStore,
    _iter_chunks,
    _validate_prefix,
    validate_key,
)
from platform_sdk.errors import BadRequest, Conflict, NotFound, PlatformError, Unavailable

__all__ = ["AzureBlobStore"]

_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")


class AzureBlobStore(BlobStore):
    """Blobs in one Azure Blob Storage container, made on first use if missing.

    The constructor only parses the connection string; the first operation
    creates the container. ``retries`` and ``timeout`` (seconds) bound how long
    an unreachable account takes to turn into ``Unavailable``.
    """

    def __init__(
        self,
        connection_string: str,
        container: str,
        *,
        retries: int = 3,
        timeout: float = 20.0,
    ) -> None:
        if not _CONTAINER_NAME.match(container):
            raise BadRequest(
                f"invalid Azure container name {container!r}: use 3-63 lowercase letters, "
                "digits and single hyphens, starting and ending with a letter or digit",
                details={"container": container},
            )
        try:
            self._service = BlobServiceClient.from_connection_string(
                connection_string,
                # The SDK's default back-off (15 s, growing) leaves a user waiting
                # a minute before hearing the bucket is down.
                retry_policy=ExponentialRetry(
                    initial_backoff=1, increment_base=2, retry_total=retries, random_jitter_range=1
                ),
                connection_timeout=timeout,
                read_timeout=timeout,
                max_single_put_size=CHUNK_SIZE,
                max_block_size=CHUNK_SIZE,
                max_single_get_size=CHUNK_SIZE,
                max_chunk_get_size=CHUNK_SIZE,
            )
        except ValueError as exc:
            # The SDK's text never contains the key; the connection string does.
            raise BadRequest(
                f"the Azure Storage connection string is not valid: {exc}; "
                "set AIOT_BLOB__AZURE_CONNECTION_STRING to the account's connection string"
            ) from exc
        self.container = container
        self._container: ContainerClient = self._service.get_container_client(container)
        self._container_ready = False

    def __repr__(self) -> str:
        return f"AzureBlobStore({self._service.url!r}, container={self.container!r})"

    def ensure_container(self) -> None:
        """Create the container unless it exists; idempotent and cheap after the first call."""
        if self._container_ready:
            return
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            self._raise(exc, f"container {self.container!r}")
        self._container_ready = True

    def put(self, key: str, data: bytes | BinaryIO) -> BlobInfo:
        validate_key(key)
        self.ensure_container()
        blob = self._container.get_blob_client(key)
        if isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data)
            try:
                result = blob.upload_blob(payload, overwrite=True, length=len(payload))
            except AzureError as exc:
                self._raise(exc, key)
            size = len(payload)
        else:
            counter = _CountingChunks(data)
            # An iterator (no length, no seek) makes the SDK stage one block per
            # chunk and commit at the end instead of reading the stream whole.
            try:
                result = blob.upload_blob(counter, overwrite=True)
            except AzureError as exc:
                self._raise(exc, key)
            size = counter.count
        modified = result.get("last_modified")
        return BlobInfo(
            key=key,
            size=size,
            modified=modified if isinstance(modified, datetime) else datetime.now(UTC),
        )

    def get(self, key: str) -> bytes:
        validate_key(key)
        self.ensure_container()
        try:
            return self._container.download_blob(key).readall()
        except AzureError as exc:
            self._raise(exc, key)

    def open(self, key: str) -> Iterator[bytes]:
        validate_key(key)
        self.ensure_container()
        try:
            # download_blob fetches the first chunk now, so NotFound surfaces here.
            downloader = self._container.download_blob(key)
        except AzureError as exc:
            self._raise(exc, key)
        return self._read_chunks(key, downloader.chunks())

    def _read_chunks(self, key: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from chunks
        except AzureError as exc:
            self._raise(exc, key)

    def list(self, prefix: str = "") -> list[BlobInfo]:
        _validate_prefix(prefix)
        self.ensure_container()
        try:
            found = [
                BlobInfo(key=item.name, size=item.size, modified=item.last_modified)
                for item in self._container.list_blobs(name_starts_with=prefix or None)
            ]
        except AzureError as exc:
            self._raise(exc, f"prefix {prefix!r}")
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        validate_key(key)
        self.ensure_container()
        try:
            self._container.delete_blob(key)
        except AzureError as exc:
            self._raise(exc, key)

    def exists(self, key: str) -> bool:
        validate_key(key)
        self.ensure_container()
        try:
            return bool(self._container.get_blob_client(key).exists())
        except AzureError as exc:
            self._raise(exc, key)

    def close(self) -> None:
        self._service.close()

    def _raise(self, exc: AzureError, what: str) -> NoReturn:
        """Turn an Azure SDK exception into the platform's error for ``what``."""
        where = f"Azure Blob Storage at {self._service.url}"
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            raise Unavailable(
                f"cannot reach {where} ({type(exc).__name__}: {exc.message}); check that the "
                "storage account (or Azurite) is up and AIOT_BLOB__AZURE_CONNECTION_STRING "
                "points at it",
                details={"blob": what},
            ) from exc
        if isinstance(exc, ClientAuthenticationError):
            raise Unavailable(
                f"{where} rejected the credentials; check the account key in "
                "AIOT_BLOB__AZURE_CONNECTION_STRING",
                details={"blob": what},
            ) from exc
        if isinstance(exc, ResourceNotFoundError):
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                # Deleted behind our back: let the next operation recreate it.
                self._container_ready = False
            raise NotFound(
                f"no blob {what!r} in container {self.container!r}", details={"key": what}
            ) from exc
        if isinstance(exc, ResourceModifiedError | ResourceExistsError):
            raise Conflict(
                f"blob {what!r} changed while being used ({exc.reason}); retry",
                details={"key": what},
            ) from exc
        if isinstance(exc, HttpResponseError) and (exc.status_code or 0) >= 500:
            raise Unavailable(
                f"{where} failed with HTTP {exc.status_code} ({exc.reason}) for {what!r}; retry later",
                details={"blob": what},
            ) from exc
        raise PlatformError(
            f"{where} refused the request for {what!r}: {type(exc).__name__}: {exc.message}",
            details={"blob": what},
        ) from exc


class _CountingChunks(Iterator[bytes]):
    """A file-like's chunks, counted so ``put`` can report the size it sent."""

    def __init__(self, source: BinaryIO) -> None:
        self._chunks = _iter_chunks(source)
        self.count = 0

    def __next__(self) -> bytes:
        chunk = next(self._chunks)
        self.count += len(chunk)
        return chunk
