"""``model_call``: call a deployed model by id or name from any process of the platform.

    model_call("face-detector", "detect", {"image": jpeg_bytes})
    model_call("m1a2b3c4d5e6", params=[24.5, 60.0])      # the seed's short form: inputs in order

Life of a call: the ``ModelClient`` resolves the model (id or name, optional version;
the latest deployed version otherwise) to its live replicas by asking the deployer over
Kafka (``ResolveModel`` → ``ModelReplicas`` on ``<prefix>.commands.deployer``), keeps
the answer for ``model.resolve_ttl_s``, and sends the request to the next replica in
turn over a kept-alive HTTP/1.1 connection of the calling thread. A replica that
cannot be reached, or answers 502/503/504, is skipped and the call goes to the next; when
every replica failed the client resolves again once (replicas move when a node goes)
before raising ``Unavailable``. A 4xx answer is the caller's mistake and raises the
matching ``PlatformError`` subclass (``ValidationFailed`` with the field errors for 422).

Images are sent as base64 strings (``bytes`` values are encoded for you); numpy values
are sent as lists or numbers.

Life of a client: resolving starts a Kafka reply consumer (a ``Requester``, on its own
thread) on first use, and ``close()`` stops it. A client you make is yours to close
(``with ModelClient.from_settings() as client``); its thread keeps the process alive
until you do, like every loop a service owns and stops in order. ``model_call``'s client
(``default_client()``) is made on first use and closed by ``atexit``, so nobody closes it
before exit: its reply consumer runs on a *daemon* thread. Python runs atexit handlers
only after every non-daemon thread has ended, so a non-daemon consumer would keep a
finished script waiting forever for a close that comes after it; as a daemon the thread
does not hold the interpreter, the script's own threads still end first (and may call
models until then), and then atexit stops the consumer and closes its Kafka client.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import itertools
import json
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from platform_sdk.bus import Bus, Requester
from platform_sdk.envelope import Message
from platform_sdk.errors import BadRequest, PlatformError, Unavailable, error_from_status
from platform_sdk.settings import Settings, get_settings

RETRYABLE_STATUSES = frozenset({502, 503, 504})


class EndpointInfo(BaseModel):
    name: str
    inputs: list[str] = Field(default_factory=list, description="Input field names, in manifest order.")


class ModelReplicas(Message):
    """Where a model version answers now."""

    message_type = "deployer.replicas"
    model_id: str
    name: str
    version: str
    urls: list[str]
    endpoints: list[EndpointInfo]


class ResolveModel(Message):
    """Which replicas serve ``model`` (id or name) at ``version`` (latest deployed when empty)?"""

    message_type = "deployer.resolve"
    model: str
    version: str | None = None


class Resolver(Protocol):
    def resolve(self, model: str, version: str | None) -> ModelReplicas: ...


class StaticResolver:
    """Fixed replica addresses (benchmarks, tests, a model served outside the platform)."""

    def __init__(self, replicas: Mapping[str, Sequence[str]], endpoints: Sequence[EndpointInfo] = ()) -> None:
        self.replicas = replicas
        self.endpoints = list(endpoints)

    def resolve(self, model: str, version: str | None) -> ModelReplicas:
        if model not in self.replicas:
            raise error_from_status(404, f"no model {model!r}")
        return ModelReplicas(
            model_id=model,
            name=model,
            version=version or "",
            urls=list(self.replicas[model]),
            endpoints=self.endpoints,
        )


class BusResolver:
    """Asks the deployer over Kafka; its requester starts on first use and stops on ``close()``.

    ``daemon``: the requester's thread does not keep the process alive (for a resolver
    closed by ``atexit``; see the module docstring).
    """

    def __init__(self, settings: Settings, source: str = "model-client", *, daemon: bool = False) -> None:
        self.bus = Bus(settings, source=settings.service_id or source)
        self.daemon = daemon
        self._requester: Requester | None = None
        self._lock = threading.Lock()

    def resolve(self, model: str, version: str | None) -> ModelReplicas:
        with self._lock:
            if self._requester is None:
                requester = Requester(self.bus, daemon=self.daemon)
                try:
                    requester.start()
                except BaseException:
                    requester.stop()  # a half-started requester still holds a consumer
                    raise
                self._requester = requester
        return self._requester.request(
            self.bus.topics.deployer, ResolveModel(model=model, version=version), ModelReplicas
        )

    def close(self) -> None:
        with self._lock:
            if self._requester is not None:
                self._requester.stop()
                self._requester = None


class _Connection:
    """One kept-alive HTTP/1.1 connection to a replica, with nothing per request but the bytes.

    ``http.client`` parses every response's headers through the ``email`` package, about
    0.2 ms of CPU per call; here reading a response is a status line, a few headers and
    ``Content-Length`` bytes (what a replica sends), or chunks.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self._host_header = f"{host}:{port}".encode()
        self._sock: socket.socket | None = None
        self._buffer = b""

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._sock is None:
            self._sock = socket.create_connection(self.address, self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = b""
        head = (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (
                path.encode(),
                self._host_header,
                len(body),
            )
        )
        self._sock.sendall(head + body)
        return self._response(self._sock)

    def _response(self, sock: socket.socket) -> tuple[int, bytes]:
        end = self._fill_until(sock, b"\r\n\r\n", 0)
        lines = self._buffer[:end].decode("latin-1").split("\r\n")
        self._buffer = self._buffer[end + 4 :]
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            payload = self._take(sock, int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            payload = self._chunked(sock)
        else:
            raise ConnectionResetError("the replica answered with neither Content-Length nor chunks")
        if headers.get("connection") == "close":
            self.close()
        return status, payload

    def _fill_until(self, sock: socket.socket, marker: bytes, start: int) -> int:
        while (found := self._buffer.find(marker, start)) < 0:
            self._buffer += self._receive(sock)
        return found

    def _take(self, sock: socket.socket, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += self._receive(sock)
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    def _chunked(self, sock: socket.socket) -> bytes:
        parts: list[bytes] = []
        while True:
            line_end = self._fill_until(sock, b"\r\n", 0)
            size = int(self._buffer[:line_end].split(b";", 1)[0], 16)
            self._buffer = self._buffer[line_end + 2 :]
            if size == 0:
                self._buffer = self._buffer[self._fill_until(sock, b"\r\n", 0) + 2 :]  # no trailers sent
                return b"".join(parts)
            parts.append(self._take(sock, size))
            self._take(sock, 2)

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the replica closed the connection")
        return chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Resolved:
    def __init__(self, replicas: ModelReplicas, expires: float) -> None:
        self.replicas = replicas
        self.expires = expires
        self.turn = itertools.count()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode()
    tolist = getattr(value, "tolist", None)
    return tolist() if tolist is not None else value


class ModelClient:
    """Calls models through their replicas; thread-safe; one kept-alive connection per replica and thread."""

    def __init__(self, resolver: Resolver, *, timeout: float = 30.0, ttl: float = 30.0) -> None:
        self.resolver = resolver
        self.timeout = timeout
        self.ttl = ttl
        self._cache: dict[tuple[str, str | None], _Resolved] = {}
        self._local = threading.local()
        # Every thread's connections, so close() can close them all.
        self._connections: list[_Connection] = []
        self._connections_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, daemon: bool = False) -> ModelClient:
        """A client resolving through the deployer; ``daemon``: see ``BusResolver``."""
        settings = settings or get_settings()
        return cls(
            BusResolver(settings, daemon=daemon),
            timeout=settings.model.call_timeout_s,
            ttl=settings.model.resolve_ttl_s,
        )

    def call(
        self,
        model: str,
        endpoint: str | None = None,
        params: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Run ``endpoint`` (the model's first when None) of ``model`` on ``params``; the output fields."""
        resolved = self._resolve(model, version, refresh=False)
        for attempt in range(2):
            replicas = resolved.replicas
            path, body = self._request(replicas, endpoint, params)
            urls = replicas.urls
            start = next(resolved.turn)
            failures: list[str] = []
            for offset in range(len(urls)):
                url = urls[(start + offset) % len(urls)]
                try:
                    return self._post(url, path, body)
                except _ReplicaDown as down:
                    failures.append(f"{url}: {down}")
            if attempt == 0:
                resolved = self._resolve(model, version, refresh=True)
        raise Unavailable(
            f"model {model!r}: no replica answered ({'; '.join(failures) or 'none deployed'}); "
            "see `aiot model show` and the model's logs"
        )

    def close(self) -> None:
        """Close every kept-alive connection (of every thread) and the resolver."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()
        close = getattr(self.resolver, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # internals ----------------------------------------------------------------------------
    def _resolve(self, model: str, version: str | None, *, refresh: bool) -> _Resolved:
        key = (model, version)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is None or refresh or now >= cached.expires:
            cached = _Resolved(self.resolver.resolve(model, version), now + self.ttl)
            self._cache[key] = cached
        return cached

    @staticmethod
    def _request(
        replicas: ModelReplicas, endpoint: str | None, params: Mapping[str, Any] | Sequence[Any] | None
    ) -> tuple[str, bytes]:
        names = {info.name: info for info in replicas.endpoints}
        if endpoint is None:
            if not replicas.endpoints:
                raise BadRequest(f"model {replicas.name!r}: name the endpoint to call")
            endpoint = replicas.endpoints[0].name
        if isinstance(params, Mapping) or params is None:
            fields = {name: _jsonable(value) for name, value in (params or {}).items()}
        else:
            info = names.get(endpoint)
            if info is None or len(params) > len(info.inputs):
                expected = ", ".join(info.inputs) if info else "unknown"
                raise BadRequest(
                    f"model {replicas.name!r} endpoint {endpoint!r}: {len(params)} positional "
                    f"params for inputs ({expected})"
                )
            fields = {name: _jsonable(value) for name, value in zip(info.inputs, params, strict=False)}
        return f"/predict/{endpoint}", json.dumps(fields).encode()

    def _connection(self, url: str) -> _Connection:
        connections: dict[str, _Connection] | None = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        connection = connections.get(url)
        if connection is None:
            parts = urlsplit(url)
            connection = _Connection(parts.hostname or "127.0.0.1", parts.port or 80, self.timeout)
            connections[url] = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _drop(self, url: str) -> None:
        connections: dict[str, _Connection] = getattr(self._local, "connections", {})
        connection = connections.pop(url, None)
        if connection is not None:
            connection.close()
            with self._connections_lock, contextlib.suppress(ValueError):
                self._connections.remove(connection)

    def _post(self, url: str, path: str, body: bytes) -> dict[str, Any]:
        for reuse in (True, False):
            try:
                status, payload = self._connection(url).post(path, body)
            except (ConnectionResetError, BrokenPipeError) as exc:
                self._drop(url)
                if reuse:
                    continue  # the replica closed an idle kept-alive connection: one fresh try
                raise _ReplicaDown(str(exc) or type(exc).__name__) from exc
            except (OSError, ValueError, IndexError) as exc:  # refused, timed out, garbled
                self._drop(url)
                raise _ReplicaDown(str(exc) or type(exc).__name__) from exc
            if status == 200:
                result: dict[str, Any] = json.loads(payload)
                return result
            if status in RETRYABLE_STATUSES:
                raise _ReplicaDown(f"HTTP {status}")
            raise _error(status, payload)
        raise _ReplicaDown("connection closed")


class _ReplicaDown(Exception):
    """This replica did not answer; the next one may."""


def _error(status: int, payload: bytes) -> PlatformError:
    try:
        body = json.loads(payload)
        return error_from_status(status, str(body.get("message", "")), body.get("details"))
    except (ValueError, AttributeError):
        return error_from_status(status, payload.decode(errors="replace")[:500])


@functools.cache
def default_client() -> ModelClient:
    """This process's client for ``model_call``, made on first use and closed at exit.

    Its reply consumer is a daemon thread, so a script that is done exits and the
    ``atexit`` handler closes the client (the module docstring says why).
    """
    client = ModelClient.from_settings(daemon=True)
    atexit.register(client.close)
    return client


def model_call(
    model: str,
    endpoint: str | None = None,
    params: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    version: str | None = None,
) -> dict[str, Any]:
    """Call ``endpoint`` of ``model`` (id or name) with ``params``; see ``ModelClient.call``."""
    return default_client().call(model, endpoint, params, version=version)
