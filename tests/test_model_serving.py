"""The REST wrapper and the model client over real HTTP on loopback; no Kafka.

Each sample model is loaded once per module (``LoadedModel``) and served by a
``UvicornServer`` on an ephemeral port; small models written into ``tmp_path``
cover the error paths, function entrypoints and custom pre/postprocess steps.
The client side uses ``ModelClient`` with a ``StaticResolver``.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from ai_manager.serving import MAX_BODY_BYTES, LoadedModel, PredictionApp, Receive, Scope, Send, UvicornServer
from platform_sdk.artifacts import MODEL_MANIFEST
from platform_sdk.errors import BadRequest, NotFound, PlatformError, Unavailable, ValidationFailed
from platform_sdk.model_client import EndpointInfo, ModelClient, StaticResolver
from tests.sample_images import sample_png

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"
COMFORT_INPUT = {"temperature": 30.0, "humidity": 55.0}
COMFORT_ENDPOINTS = [EndpointInfo(name="predict", inputs=["temperature", "humidity"])]


# helpers ------------------------------------------------------------------------------------
@contextmanager
def loaded(model_dir: Path) -> Iterator[LoadedModel]:
    """``LoadedModel(model_dir)``; afterwards sys.path as before and the folder's modules forgotten."""
    path_before = list(sys.path)
    modules_before = set(sys.modules)
    root = model_dir.resolve()
    try:
        yield LoadedModel(model_dir)
    finally:
        sys.path[:] = path_before
        for name in set(sys.modules) - modules_before:
            file = getattr(sys.modules.get(name), "__file__", None)
            if file is not None and Path(file).resolve().is_relative_to(root):
                del sys.modules[name]


@dataclass
class Replica:
    server: UvicornServer
    url: str


@contextmanager
def serving(app: PredictionApp) -> Iterator[Replica]:
    """``app`` served on an ephemeral loopback port until the block ends."""
    server = UvicornServer(app, "127.0.0.1", 0)
    server.start()
    try:
        yield Replica(server, f"http://127.0.0.1:{server.port}")
    finally:
        server.stop()


def request(
    url: str, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """One HTTP request on a fresh connection: the status and the decoded JSON body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post_json(url: str, path: str, payload: Any) -> tuple[int, Any]:
    return request(url, "POST", path, json.dumps(payload).encode())


def client_expected(url: str, inputs: dict[str, Any]) -> Any:
    """What the replica at ``url`` answers to ``inputs`` on its ``predict`` endpoint."""
    return post_json(url, "/predict/predict", inputs)[1]


@contextmanager
def model_client(resolver: StaticResolver) -> Iterator[ModelClient]:
    """``with ModelClient(resolver) as client``: its kept-alive connections close with it."""
    with ModelClient(resolver) as client:
        yield client


def client_sockets(port: int) -> list[Any]:
    """This process's open TCP sockets to ``port`` on loopback."""
    return [
        connection
        for connection in psutil.Process().net_connections(kind="tcp")
        if connection.raddr and connection.raddr.port == port
    ]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def fields(details: list[dict[str, str]]) -> set[str]:
    return {detail["field"] for detail in details}


def unique_module() -> str:
    """A module name of its own, so that no two tests share an entry of sys.modules."""
    return f"tiny_{uuid.uuid4().hex[:12]}"


def write_model(
    folder: Path,
    code: str,
    endpoints: list[dict[str, Any]],
    *,
    entry: str = "Model",
    module: str | None = None,
) -> Path:
    """A model folder with ``model.json`` and one module (of a name unique to the test)."""
    module = module or unique_module()
    folder.mkdir(parents=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(code))
    manifest = {"name": "tiny", "version": "0.1.0", "entrypoint": f"{module}:{entry}", "endpoints": endpoints}
    (folder / MODEL_MANIFEST).write_text(json.dumps(manifest))
    return folder


def endpoint(name: str = "predict", **extra: Any) -> dict[str, Any]:
    return {"name": name, "inputs": {"x": {"type": "float"}}, "outputs": {"y": {"type": "float"}}, **extra}


class CountingApp(PredictionApp):
    """The wrapper, counting the HTTP requests it answers."""

    def __init__(self, model: LoadedModel, service_id: str) -> None:
        super().__init__(model, service_id)
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests += 1
        await super().__call__(scope, receive, send)


class OverloadedApp(CountingApp):
    """A replica that answers every request with 503."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"message": "busy"}'})


# fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comfort_model() -> Iterator[LoadedModel]:
    with loaded(MODELS / "comfort") as model:
        yield model


@pytest.fixture(scope="module")
def comfort(comfort_model: LoadedModel) -> Iterator[str]:
    with serving(PredictionApp(comfort_model, "test")) as replica:
        yield replica.url


@pytest.fixture(scope="module")
def face() -> Iterator[str]:
    with loaded(MODELS / "face-detector") as model, serving(PredictionApp(model, "test")) as replica:
        yield replica.url


@pytest.fixture(scope="module")
def astronaut_png() -> bytes:
    return sample_png("astronaut")


@pytest.fixture(scope="module")
def coffee_png() -> bytes:
    return sample_png("coffee")


@pytest.fixture
def serve_folder() -> Iterator[Callable[[Path], str]]:
    """Serves model folders for one test; stops them and forgets their modules afterwards."""
    with ExitStack() as stack:

        def serve(folder: Path) -> str:
            model = stack.enter_context(loaded(folder))
            return stack.enter_context(serving(PredictionApp(model, "test"))).url

        yield serve


# the wrapper: comfort -----------------------------------------------------------------------
def test_comfort_predicts_typed_outputs(comfort: str) -> None:
    status, body = post_json(comfort, "/predict/predict", COMFORT_INPUT)
    assert status == 200, body
    assert set(body) == {"fan_speed", "ac_on", "ac_setpoint"}
    assert type(body["fan_speed"]) is int
    assert type(body["ac_on"]) is bool
    assert type(body["ac_setpoint"]) is float
    # The manifest's example, within its tolerance.
    assert body["fan_speed"] == 4
    assert body["ac_on"] is True
    assert body["ac_setpoint"] == pytest.approx(22.9, rel=0.01)


def test_comfort_accepts_integers_for_floats(comfort: str) -> None:
    status, body = post_json(comfort, "/predict/predict", {"temperature": 30, "humidity": 55})
    assert status == 200, body
    assert body == post_json(comfort, "/predict/predict", COMFORT_INPUT)[1]


def test_health_names_model_and_version(comfort: str) -> None:
    status, body = request(comfort, "GET", "/health")
    assert status == 200
    assert body == {
        "status": "ok",
        "service_id": "test",
        "model": "comfort",
        "version": "1.0.0",
        "endpoints": ["predict"],
    }


def test_schema_gives_json_schemas_of_inputs_and_outputs(comfort: str) -> None:
    status, body = request(comfort, "GET", "/schema")
    assert status == 200
    assert body["name"] == "comfort"
    assert body["version"] == "1.0.0"
    predict = body["endpoints"]["predict"]
    assert predict["description"].startswith("Comfort settings")
    assert predict["raw_image_input"] is None
    inputs, outputs = predict["input"], predict["output"]
    assert inputs["type"] == "object"
    assert {name: spec["type"] for name, spec in inputs["properties"].items()} == {
        "temperature": "number",
        "humidity": "number",
    }
    assert sorted(inputs["required"]) == ["humidity", "temperature"]
    assert inputs["additionalProperties"] is False
    assert {name: spec["type"] for name, spec in outputs["properties"].items()} == {
        "fan_speed": "integer",
        "ac_on": "boolean",
        "ac_setpoint": "number",
    }


# the wrapper: bad requests ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b'{"temperature": "warm", "humidity": 55.0}', {"temperature"}, id="string-for-float"),
        pytest.param(b'{"temperature": 30.0}', {"humidity"}, id="missing"),
        pytest.param(b'{"temperature": 30.0, "humidity": 55.0, "wind": 3}', {"wind"}, id="extra"),
        pytest.param(b'{"temperature": "warm"}', {"temperature", "humidity"}, id="every-field"),
        pytest.param(b'{"temperature": 30.0,', {"(body)"}, id="invalid-json"),
        pytest.param(b"[30.0, 55.0]", {"(body)"}, id="not-an-object"),
        pytest.param(b"", {"(body)"}, id="empty"),
    ],
)
def test_invalid_input_is_422_naming_each_field(comfort: str, body: bytes, expected: set[str]) -> None:
    status, answer = request(comfort, "POST", "/predict/predict", body)
    assert status == 422, answer
    assert answer["type"] == "ValidationFailed"
    assert answer["status"] == 422
    assert "predict" in answer["message"]
    assert fields(answer["details"]) == expected
    assert all(detail["reason"] for detail in answer["details"])
    assert "warm" not in json.dumps(answer)  # the input is never echoed


def test_unknown_endpoint_is_404_naming_the_endpoints(comfort: str) -> None:
    status, body = post_json(comfort, "/predict/forecast", COMFORT_INPUT)
    assert status == 404
    assert body["type"] == "NotFound"
    assert "'forecast'" in body["message"]
    assert "endpoints: predict" in body["message"]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nowhere"), ("GET", "/predict/predict"), ("POST", "/health")]
)
def test_unknown_route_is_404(comfort: str, method: str, path: str) -> None:
    status, body = request(comfort, method, path, b"{}" if method == "POST" else None)
    assert status == 404
    assert body["type"] == "NotFound"
    assert f"{method} {path}" in body["message"]


def test_raw_bytes_to_a_json_endpoint_is_400(comfort: str) -> None:
    status, body = request(comfort, "POST", "/predict/predict", b"\x89PNG", "image/png")
    assert status == 400
    assert body["type"] == "BadRequest"
    assert "JSON object" in body["message"]


def test_an_oversized_body_is_413(comfort: str) -> None:
    status, body = request(comfort, "POST", "/predict/predict", b" " * (MAX_BODY_BYTES + 1))
    assert status == 413
    assert body["type"] == "PayloadTooLarge"


# the wrapper: face-detector -----------------------------------------------------------------
def test_face_detector_schema_takes_raw_images(face: str) -> None:
    status, body = request(face, "GET", "/schema")
    assert status == 200
    assert body["endpoints"]["detect"]["raw_image_input"] == "image"


def test_face_in_base64_json(face: str, astronaut_png: bytes) -> None:
    status, body = post_json(face, "/predict/detect", {"image": b64(astronaut_png)})
    assert status == 200, body
    assert body["count"] == 1
    [box] = body["boxes"]
    assert len(box) == 4
    assert all(type(value) is int for value in box)


def test_face_in_raw_body(face: str, astronaut_png: bytes) -> None:
    status, body = request(face, "POST", "/predict/detect", astronaut_png, "image/png")
    assert status == 200, body
    assert body["count"] == 1


def test_face_in_raw_body_with_content_type_parameters(face: str, astronaut_png: bytes) -> None:
    status, body = request(face, "POST", "/predict/detect", astronaut_png, "Image/PNG; name=astronaut.png")
    assert status == 200, body
    assert body["count"] == 1


def test_no_face_in_coffee(face: str, coffee_png: bytes) -> None:
    status, body = request(face, "POST", "/predict/detect", coffee_png, "image/png")
    assert status == 200, body
    assert body == {"count": 0, "boxes": []}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b"this is not an image", "image/jpeg", id="raw"),
        pytest.param(b"this is not an image", "application/octet-stream", id="octet-stream"),
        pytest.param(
            json.dumps({"image": b64(b"this is not an image")}).encode(), "application/json", id="base64"
        ),
        pytest.param(b'{"image": "not base64!"}', "application/json", id="bad-base64"),
    ],
)
def test_not_an_image_is_422_naming_the_field(face: str, body: bytes, content_type: str) -> None:
    status, answer = request(face, "POST", "/predict/detect", body, content_type)
    assert status == 422, answer
    assert answer["type"] == "ValidationFailed"
    assert fields(answer["details"]) == {"image"}


# the wrapper: models written for the test ---------------------------------------------------
RAISING = """
    class Model:
        def predict(self, x):
            raise ZeroDivisionError("x / 0")
"""
MISSING_OUTPUT = """
    class Model:
        def predict(self, x):
            return {"z": x}
"""
NOT_JSON = """
    class Model:
        def predict(self, x):
            return {"y": object()}
"""
NAN = """
    class Model:
        def predict(self, x):
            return {"y": float("nan")}
"""
FAILURES = [
    pytest.param(RAISING, "the model failed: ZeroDivisionError: x / 0", id="raises"),
    pytest.param(MISSING_OUTPUT, "the model's 'predict' did not return y", id="missing-output"),
    pytest.param(NOT_JSON, "the model failed: TypeError: output of type object", id="not-json"),
    pytest.param(NAN, "the model failed: ValueError", id="nan"),
]


@pytest.mark.parametrize(("code", "cause"), FAILURES)
def test_a_failing_model_is_500_and_logged(
    tmp_path: Path,
    serve_folder: Callable[[Path], str],
    caplog: pytest.LogCaptureFixture,
    code: str,
    cause: str,
) -> None:
    url = serve_folder(write_model(tmp_path / "failing", code, [endpoint()]))
    with caplog.at_level(logging.ERROR, logger="ai_manager.serving"):
        status, body = post_json(url, "/predict/predict", {"x": 1.0})
    assert status == 500
    assert body["type"] == "PlatformError"
    assert body["status"] == 500
    assert cause.rsplit(": ", maxsplit=1)[-1] in caplog.text
    # The replica keeps serving.
    assert request(url, "GET", "/health")[0] == 200


@pytest.mark.parametrize(("code", "cause"), FAILURES)
def test_a_failing_model_is_500_saying_why(
    tmp_path: Path, serve_folder: Callable[[Path], str], code: str, cause: str
) -> None:
    url = serve_folder(write_model(tmp_path / "failing", code, [endpoint()]))
    status, body = post_json(url, "/predict/predict", {"x": 1.0})
    assert status == 500
    assert cause in body["message"]


FUNCTION = """
    import numpy as np

    def double(x, scale=None):
        return {"y": np.float64(x * 2 * (scale or 1))}
"""


def test_a_function_entrypoint_serves_one_endpoint(
    tmp_path: Path, serve_folder: Callable[[Path], str]
) -> None:
    spec = endpoint()
    spec["inputs"]["scale"] = {"type": "int", "required": False}
    folder = write_model(tmp_path / "function", FUNCTION, [spec], entry="double")
    url = serve_folder(folder)
    assert post_json(url, "/predict/predict", {"x": 1.5}) == (200, {"y": 3.0})
    assert post_json(url, "/predict/predict", {"x": 1.5, "scale": 2}) == (200, {"y": 6.0})


def test_a_function_entrypoint_cannot_serve_two_endpoints(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "two", FUNCTION, [endpoint("one"), endpoint("two")], entry="double")
    with pytest.raises(BadRequest, match="function: it can serve one endpoint"), loaded(folder):
        pass


def test_a_class_without_the_endpoints_method_is_refused(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "nomethod", RAISING, [endpoint("other", method="other")])
    with pytest.raises(BadRequest, match="no method 'other'"), loaded(folder):
        pass


STEPS = """
    class Model:
        def scaled(self, x):
            return {"y": x * 10, "trace": ["model"]}

    def add_one(inputs):
        return {**inputs, "x": inputs["x"] + 1}

    def negate(outputs):
        return {**outputs, "y": -outputs["y"], "trace": outputs["trace"] + ["post"]}
"""


def test_preprocess_and_postprocess_functions_are_applied(
    tmp_path: Path, serve_folder: Callable[[Path], str]
) -> None:
    module = unique_module()
    spec = endpoint(method="scaled", preprocess=[f"{module}:add_one"], postprocess=[f"{module}:negate"])
    folder = write_model(tmp_path / "steps", STEPS, [spec], module=module)
    url = serve_folder(folder)
    # (2 + 1) * 10, negated; extra output fields are passed through.
    assert post_json(url, "/predict/predict", {"x": 2.0}) == (200, {"y": -30.0, "trace": ["model", "post"]})


# the client ---------------------------------------------------------------------------------
def test_client_calls_a_model_by_name(comfort: str) -> None:
    with model_client(StaticResolver({"comfort": [comfort]})) as client:
        result = client.call("comfort", "predict", COMFORT_INPUT)
    assert result == client_expected(comfort, COMFORT_INPUT)
    assert result["fan_speed"] == 4


def test_client_maps_positional_params_to_inputs_in_order(comfort: str) -> None:
    with model_client(StaticResolver({"comfort": [comfort]}, endpoints=COMFORT_ENDPOINTS)) as client:
        positional = client.call("comfort", "predict", params=[30.0, 55.0])
        swapped = client.call("comfort", "predict", params=[55.0, 30.0])
        by_name = client.call("comfort", "predict", {"humidity": 30.0, "temperature": 55.0})
    assert positional == client_expected(comfort, COMFORT_INPUT)
    assert swapped == by_name


def test_client_refuses_too_many_positional_params(comfort: str) -> None:
    with (
        model_client(StaticResolver({"comfort": [comfort]}, endpoints=COMFORT_ENDPOINTS)) as client,
        pytest.raises(BadRequest, match="3 positional params"),
    ):
        client.call("comfort", "predict", params=[30.0, 55.0, 1.0])


def test_client_defaults_to_the_first_endpoint(comfort: str) -> None:
    with model_client(StaticResolver({"comfort": [comfort]}, endpoints=COMFORT_ENDPOINTS)) as client:
        assert client.call("comfort", params=[30.0, 55.0]) == client_expected(comfort, COMFORT_INPUT)
        assert client.call("comfort", None, COMFORT_INPUT)["fan_speed"] == 4


def test_client_without_endpoints_needs_the_endpoint_named(comfort: str) -> None:
    with (
        model_client(StaticResolver({"comfort": [comfort]})) as client,
        pytest.raises(BadRequest, match="name the endpoint"),
    ):
        client.call("comfort", params=COMFORT_INPUT)


def test_client_raises_validation_failed_with_details(comfort: str) -> None:
    with (
        model_client(StaticResolver({"comfort": [comfort]})) as client,
        pytest.raises(ValidationFailed) as caught,
    ):
        client.call("comfort", "predict", {"temperature": "warm", "wind": 3})
    assert caught.value.status == 422
    assert fields(caught.value.details) == {"temperature", "humidity", "wind"}


def test_client_raises_not_found(comfort: str) -> None:
    with model_client(StaticResolver({"comfort": [comfort]})) as client:
        with pytest.raises(NotFound, match="no model 'weather'"):
            client.call("weather", "predict", COMFORT_INPUT)
        with pytest.raises(NotFound, match="endpoints: predict"):
            client.call("comfort", "forecast", COMFORT_INPUT)


def test_client_raises_a_model_failure_without_retrying(
    tmp_path: Path, serve_folder: Callable[[Path], str]
) -> None:
    folder = write_model(tmp_path / "raising", RAISING, [endpoint()])
    url = serve_folder(folder)
    with model_client(StaticResolver({"tiny": [url]})) as client, pytest.raises(PlatformError) as caught:
        client.call("tiny", "predict", {"x": 1.0})
    assert type(caught.value) is PlatformError
    assert caught.value.status == 500


def test_client_sends_bytes_as_base64(face: str, astronaut_png: bytes, coffee_png: bytes) -> None:
    with model_client(StaticResolver({"face-detector": [face]})) as client:
        assert client.call("face-detector", "detect", {"image": astronaut_png})["count"] == 1
        assert client.call("face-detector", "detect", {"image": bytearray(coffee_png)})["count"] == 0


def test_client_fails_over_to_the_live_replica(comfort_model: LoadedModel) -> None:
    first, second = CountingApp(comfort_model, "one"), CountingApp(comfort_model, "two")
    with (
        serving(first) as one,
        serving(second) as two,
        model_client(StaticResolver({"comfort": [one.url, two.url]})) as client,
    ):
        for _ in range(4):
            assert client.call("comfort", "predict", COMFORT_INPUT)["fan_speed"] == 4
        assert (first.requests, second.requests) == (2, 2)  # round robin
        one.server.stop()
        for _ in range(6):
            assert client.call("comfort", "predict", COMFORT_INPUT)["fan_speed"] == 4
        assert (first.requests, second.requests) == (2, 8)


def test_client_with_every_replica_down_raises_unavailable(comfort_model: LoadedModel) -> None:
    with (
        serving(PredictionApp(comfort_model, "one")) as one,
        serving(PredictionApp(comfort_model, "two")) as two,
    ):
        urls = [one.url, two.url]
    with model_client(StaticResolver({"comfort": urls})) as client, pytest.raises(Unavailable) as caught:
        client.call("comfort", "predict", COMFORT_INPUT)
    message = str(caught.value)
    assert "no replica answered" in message
    assert all(url in message for url in urls)
    assert caught.value.status == 503


def test_client_skips_a_replica_answering_503(comfort_model: LoadedModel) -> None:
    busy, fine = OverloadedApp(comfort_model, "busy"), CountingApp(comfort_model, "fine")
    with (
        serving(busy) as one,
        serving(fine) as two,
        model_client(StaticResolver({"comfort": [one.url, two.url]})) as client,
    ):
        for _ in range(4):
            assert client.call("comfort", "predict", COMFORT_INPUT)["fan_speed"] == 4
    assert fine.requests == 4
    assert busy.requests == 2  # tried in its turn (calls 1 and 3), then skipped


def test_client_with_only_503_replicas_raises_unavailable(comfort_model: LoadedModel) -> None:
    busy = OverloadedApp(comfort_model, "busy")
    with (
        serving(busy) as one,
        model_client(StaticResolver({"comfort": [one.url]})) as client,
        pytest.raises(Unavailable, match="HTTP 503"),
    ):
        client.call("comfort", "predict", COMFORT_INPUT)
    assert busy.requests == 2  # once, then once more after resolving again


def test_client_close_closes_its_connections(comfort: str) -> None:
    port = urlsplit(comfort).port
    assert port is not None
    with ModelClient(StaticResolver({"comfort": [comfort]})) as client:
        client.call("comfort", "predict", COMFORT_INPUT)
        assert len(client_sockets(port)) == 1  # kept alive between calls
    assert client_sockets(port) == []
