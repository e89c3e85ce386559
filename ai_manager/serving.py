"""The REST wrapper: one replica of one model, served over HTTP (``python -m ai_manager.serving``).

The deployer starts it through a node's agent in the model's unpacked bundle
(``AIOT_BUNDLE_DIR``, or ``AIOT_MODEL__DIR`` to serve a folder by hand), with
``AIOT_PORT_HTTP`` (the port the agent allocated), ``AIOT_SERVICE_HOST`` and the
usual identity and bus settings. On start it reads ``model.json`` (with the upload's reader,
``platform_sdk.artifacts.parse_manifest``), imports the entrypoint, calls ``load(model_dir)``
once and builds, per endpoint, a pydantic validator of its inputs; only then does it listen
and start its heartbeat (ready).

    POST /predict/<endpoint>   JSON object of input fields (images as base64 strings),
                               or the raw image bytes (Content-Type image/*) when the
                               endpoint takes exactly one image
        ──▶ validate (422 naming each field) ──▶ preprocess steps ──▶ the model's method
        ──▶ postprocess steps ──▶ 200 JSON object of output fields
    GET /health                200 {"status": "ok", ...} once loaded
    GET /schema                each endpoint's input and output JSON Schema

It is a bare ASGI callable under uvicorn (uvloop + httptools): nothing per request but
parsing, validating, the model and JSON, so the wrapper adds well under a millisecond.
The model runs on the event loop's thread: one request at a time per replica, which is
what a CPU-bound model on a small node wants; more throughput comes from replicas.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import Base64Bytes, BaseModel, ConfigDict, ValidationError, create_model

from platform_core.service import Service
from platform_sdk.artifacts import MODEL_MANIFEST, EndpointSpec, FieldSpec, ModelManifest, parse_manifest
from platform_sdk.errors import BadRequest, NotFound, PayloadTooLarge, PlatformError, ValidationFailed
from platform_sdk.settings import get_settings

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 32 * 1024 * 1024
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Step = Callable[[dict[str, Any]], dict[str, Any]]
CONTENT_TYPE_JSON = (b"content-type", b"application/json")


def python_type(field: FieldSpec) -> Any:
    """The Python type pydantic validates a field against."""
    if field.type == "list":
        assert field.items is not None
        return list[python_type(field.items)]  # type: ignore[misc]
    return {
        "int": int,
        "float": float,
        "bool": bool,
        "string": str,
        "image": Base64Bytes,
        "object": dict[str, Any],
    }[field.type]


def fields_model(name: str, fields: dict[str, FieldSpec], *, inputs: bool) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for field_name, field in fields.items():
        annotation = python_type(field)
        if inputs and not field.required:
            definitions[field_name] = (annotation | None, None)
        else:
            definitions[field_name] = (annotation, ...)
    model: type[BaseModel] = create_model(
        name, __config__=ConfigDict(extra="forbid" if inputs else "allow"), **definitions
    )
    return model


def _decode_images(fields: dict[str, FieldSpec], flags: int) -> Step:
    import cv2
    import numpy as np

    image_fields = [name for name, field in fields.items() if field.type == "image"]

    def decode(inputs: dict[str, Any]) -> dict[str, Any]:
        for name in image_fields:
            data = inputs.get(name)
            if data is None:
                continue
            array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            if array is None:
                raise ValidationFailed(
                    f"input {name!r} is not a JPEG or PNG image",
                    details=[{"field": name, "reason": "not a decodable image"}],
                )
            inputs[name] = array
        return inputs

    return decode


def _field_error(error: Any) -> dict[str, str]:
    return {"field": ".".join(str(part) for part in error["loc"]) or "(body)", "reason": error["msg"]}


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (and anything with ``tolist``) as plain JSON."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"output of type {type(value).__name__} is not JSON serialisable")


class EndpointRunner:
    """One endpoint: validate, preprocess, predict, postprocess."""

    def __init__(self, spec: EndpointSpec, target: Callable[..., Any], resolve: Callable[[str], Any]) -> None:
        self.spec = spec
        self.target = target
        self.input_model = fields_model(f"{spec.name}_input", spec.inputs, inputs=True)
        self.output_model = fields_model(f"{spec.name}_output", spec.outputs, inputs=False)
        images = [name for name, field in spec.inputs.items() if field.type == "image"]
        self.raw_image_field = images[0] if len(images) == 1 and len(spec.inputs) == 1 else None
        self.preprocess = [self._step(step, resolve) for step in spec.preprocess]
        self.postprocess = [self._step(step, resolve) for step in spec.postprocess]
        self.outputs = list(spec.outputs)

    def _step(self, step: str, resolve: Callable[[str], Any]) -> Step:
        if step == "decode_image":
            import cv2

            return _decode_images(self.spec.inputs, cv2.IMREAD_COLOR)
        if step == "decode_image_gray":
            import cv2

            return _decode_images(self.spec.inputs, cv2.IMREAD_GRAYSCALE)
        function: Step = resolve(step)
        return function

    def parse(self, body: bytes, content_type: str) -> dict[str, Any]:
        if content_type.startswith("image/") or content_type == "application/octet-stream":
            if self.raw_image_field is None:
                raise BadRequest(
                    f"endpoint {self.spec.name!r} takes a JSON object of its inputs, not raw bytes"
                )
            return {self.raw_image_field: body}
        try:
            validated = self.input_model.model_validate_json(body)
        except ValidationError as exc:
            raise ValidationFailed(
                f"invalid input for {self.spec.name!r}",
                details=[_field_error(error) for error in exc.errors(include_url=False, include_input=False)],
            ) from exc
        return dict(validated)

    def run(self, inputs: dict[str, Any]) -> bytes:
        for step in self.preprocess:
            inputs = step(inputs)
        outputs = self.target(**inputs)
        for step in self.postprocess:
            outputs = step(outputs)
        if not isinstance(outputs, dict) or any(name not in outputs for name in self.outputs):
            missing = [name for name in self.outputs if not isinstance(outputs, dict) or name not in outputs]
            raise PlatformError(f"the model's {self.spec.name!r} did not return {', '.join(missing)}")
        return json.dumps(outputs, default=_json_default, allow_nan=False).encode()

    def schema(self) -> dict[str, Any]:
        return {
            "description": self.spec.description,
            "input": self.input_model.model_json_schema(),
            "output": self.output_model.model_json_schema(),
            "raw_image_input": self.raw_image_field,
        }


class LoadedModel:
    """A model directory imported and loaded: its manifest and one runner per endpoint."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir.resolve()
        manifest_path = self.model_dir / MODEL_MANIFEST
        try:
            raw = manifest_path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{manifest_path} does not exist: is AIOT_MODEL__DIR a model folder?") from exc
        try:  # read as the upload read it
            self.manifest = parse_manifest(raw, ModelManifest, file=MODEL_MANIFEST)
        except ValidationFailed as exc:
            raise ValidationFailed(f"{self.model_dir}: {exc.message}", details=exc.details) from exc
        # The model's own modules come first, as they would for `python model.py` in its folder.
        sys.path.insert(0, str(self.model_dir))
        entry = self.resolve(self.manifest.entrypoint)
        if isinstance(entry, type):
            instance = entry()
            load = getattr(instance, "load", None)
            if callable(load):
                load(self.model_dir)
            targets = {
                spec.name: getattr(instance, spec.method or "predict", None)
                for spec in self.manifest.endpoints
            }
        elif len(self.manifest.endpoints) == 1:
            targets = {self.manifest.endpoints[0].name: entry}
        else:
            raise BadRequest(
                f"entrypoint {self.manifest.entrypoint} is a function: it can serve one endpoint"
            )
        self.endpoints: dict[str, EndpointRunner] = {}
        for spec in self.manifest.endpoints:
            target = targets[spec.name]
            if not callable(target):
                raise BadRequest(
                    f"{self.manifest.entrypoint} has no method {spec.method or 'predict'!r} "
                    f"for endpoint {spec.name!r}"
                )
            self.endpoints[spec.name] = EndpointRunner(spec, target, self.resolve)

    @staticmethod
    def resolve(reference: str) -> Any:
        module_name, attribute = reference.split(":", 1)
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attribute)
        except AttributeError as exc:
            raise BadRequest(f"{module_name} has no {attribute!r} (named by {reference})") from exc

    def schema(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "endpoints": {name: runner.schema() for name, runner in self.endpoints.items()},
        }


def _error_body(error: PlatformError, *, expose: bool) -> bytes:
    return json.dumps(error.to_dict(expose=expose)).encode()


class PredictionApp:
    """The ASGI callable: routes three paths, no framework in between."""

    def __init__(self, model: LoadedModel, service_id: str) -> None:
        self.model = model
        self.health = json.dumps(
            {
                "status": "ok",
                "service_id": service_id,
                "model": model.manifest.name,
                "version": model.manifest.version,
                "endpoints": list(model.endpoints),
            }
        ).encode()
        self.schema = json.dumps(model.schema()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status, body = await self._respond(scope, receive)
        headers = [CONTENT_TYPE_JSON, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _respond(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path.startswith("/predict/") and method == "POST":
                name = path[len("/predict/") :]
                runner = self.model.endpoints.get(name)
                if runner is None:
                    raise NotFound(f"no endpoint {name!r}; endpoints: {', '.join(self.model.endpoints)}")
                body = await _read_body(receive)
                content_type = _header(scope, b"content-type")
                return 200, runner.run(runner.parse(body, content_type))
            if path == "/health" and method == "GET":
                return 200, self.health
            if path == "/schema" and method == "GET":
                return 200, self.schema
            raise NotFound(f"{method} {path} is not a route (POST /predict/NAME, GET /health, /schema)")
        except PlatformError as error:
            if error.status >= 500:
                log.error("%s %s: %s", method, path, error)
            # The model's developer is the caller here: what went wrong in it is theirs to see.
            return error.status, _error_body(error, expose=True)
        except Exception as exc:
            log.exception("%s %s failed in the model", method, path)
            failure = PlatformError(f"the model failed: {type(exc).__name__}: {exc}")
            return 500, _error_body(failure, expose=True)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return decoded
    return "application/json"


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body over {MAX_BODY_BYTES // 2**20} MB")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class UvicornServer:
    """A uvicorn server on a named thread, owned like any other part of a service."""

    def __init__(self, app: PredictionApp, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_keep_alive=60,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="aiot-model-http")

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise BadRequest("the model's HTTP server did not start (port in use?); see its log")
            if time.monotonic() > deadline:
                raise PlatformError(f"the model's HTTP server did not start within {timeout:.0f}s")
            time.sleep(0.02)

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                port: int = sock.getsockname()[1]
                return port
        raise PlatformError("the model's HTTP server is not listening")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


class ModelServer(Service):
    """Loads the model, then serves it; heartbeats start once it answers."""

    name = "model"

    def on_start(self) -> None:
        settings = self.settings
        model_dir = settings.model.dir or settings.bundle_dir
        if model_dir is None:
            raise BadRequest(
                "neither AIOT_MODEL__DIR nor AIOT_BUNDLE_DIR is set: which model should this serve?"
            )
        model = LoadedModel(model_dir)
        self.server = UvicornServer(
            PredictionApp(model, self.service_id), settings.service_host, settings.port_http or 0
        )
        self.server.start()
        self.own(self.server)
        log.info(
            "serving %s %s (%s) at http://%s:%d",
            model.manifest.name,
            model.manifest.version,
            ", ".join(model.endpoints),
            settings.service_host,
            self.server.port,
        )


def main() -> None:
    ModelServer(get_settings()).run()


if __name__ == "__main__":
    main()
