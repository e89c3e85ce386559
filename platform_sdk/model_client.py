"""``model_call``: call a deployed model by id or name from any process of the platform.

    model_call("face-detector", "detect", {"image": jpeg_bytes})
    model_call("m1a2b3c4d5e6", params=[24.5, 60.0])      # the seed's short form: inputs in order

Life of a call: the ``ModelClient`` resolves the model (id or name, optional version;
the latest deployed version otherwise) to its live replicas by asking the deployer over
Kafka (``ResolveModel`` → ``ModelReplicas`` on ``<prefix>.commands.deployer``), keeps
the answer for ``model.resolve_ttl_s``, and sends the request to the next replica in
turn over a kept-alive ``http.client`` connection of the calling thread. A replica that
cannot be reached, or answers 502/503/504, is skipped and the call goes to the next; when
every replica failed the client resolves again once (replicas move when a node goes)
before raising ``Unavailable``. A 4xx answer is the caller's mistake and raises the
matching ``PlatformError`` subclass (``ValidationFailed`` with the field errors for 422).

Images are sent as base64 strings (``bytes`` values are encoded for you); numpy values
are sent as lists or numbers.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import http.client
import itertools
import json
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
    """Asks the deployer over Kafka; its requester starts on first use and stops on ``close()``."""

    def __init__(self, settings: Settings, source: str = "model-client") -> None:
        self.bus = Bus(settings, source=settings.service_id or source)
        self._requester: Requester | None = None
        self._lock = threading.Lock()

    def resolve(self, model: str, version: str | None) -> ModelReplicas:
        with self._lock:
            if self._requester is None:
                requester = Requester(self.bus)
                requester.start()
                self._requester = requester
        return self._requester.request(
            self.bus.topics.deployer, ResolveModel(model=model, version=version), ModelReplicas
        )

    def close(self) -> None:
        with self._lock:
            if self._requester is not None:
                self._requester.stop()
                self._requester = None


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
        self._connections: list[http.client.HTTPConnection] = []
        self._connections_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ModelClient:
        settings = settings or get_settings()
        return cls(
            BusResolver(settings), timeout=settings.model.call_timeout_s, ttl=settings.model.resolve_ttl_s
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

    def _connection(self, url: str) -> http.client.HTTPConnection:
        connections: dict[str, http.client.HTTPConnection] | None = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        connection = connections.get(url)
        if connection is None:
            parts = urlsplit(url)
            connection = http.client.HTTPConnection(
                parts.hostname or "127.0.0.1", parts.port, timeout=self.timeout
            )
            connections[url] = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _drop(self, url: str) -> None:
        connections: dict[str, http.client.HTTPConnection] = getattr(self._local, "connections", {})
        connection = connections.pop(url, None)
        if connection is not None:
            connection.close()
            with self._connections_lock, contextlib.suppress(ValueError):
                self._connections.remove(connection)

    def _post(self, url: str, path: str, body: bytes) -> dict[str, Any]:
        for reuse in (True, False):
            connection = self._connection(url)
            try:
                connection.request("POST", path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop(url)
                if reuse:
                    continue  # the server closed an idle kept-alive connection: one fresh try
                raise _ReplicaDown(str(exc) or type(exc).__name__) from exc
            except OSError as exc:
                self._drop(url)
                raise _ReplicaDown(str(exc) or type(exc).__name__) from exc
            if response.status == 200:
                result: dict[str, Any] = json.loads(payload)
                return result
            if response.status in RETRYABLE_STATUSES:
                raise _ReplicaDown(f"HTTP {response.status}")
            raise _error(response.status, payload)
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
    """This process's client for ``model_call``, made on first use and closed at exit."""
    client = ModelClient.from_settings()
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
