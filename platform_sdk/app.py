"""An app instance from the inside: ``App`` is what an app's entrypoint is called with.

The deployer starts an app instance as ``python -m platform_sdk.run_app`` in its unpacked bundle:

    app.json (the developer's manifest, in the bundle every instance of the version shares)
    + AIOT_APP__INSTANCE (``AppInstanceConfig``, generated per instance: the devices bound to
      each alias at the chosen location, the model behind each alias)
        ──▶ ``PlatformRuntime`` (heartbeats, logs to the platform logger)
        ──▶ ``entrypoint(app)``: the app reads sensors, calls models and drives controllers by
            alias only — ``app.sensor_stream("camera")``, ``app.model_call("faces", "detect",
            image=...)``, ``app.send_controller("display", "show", text=...)``
        ──▶ a web app calls ``app.serve(wsgi_app, worker=loop)``: its pages on the port the
            platform gave it (``StatusPage`` is a ready-made one), the manifest's health path
            answered by the SDK, the app's loop in a thread meanwhile
    SIGTERM (the window's end, ``aiot instance stop``) ──▶ ``app.stopping`` is set, ``serve``
        returns, the entrypoint returns, the process exits.

The instance's devices are read in its own consumer group (``<prefix>.inst.<service id>.devices``
where it has its own principal, else ``<prefix>.app.<instance>``), so two instances bound to one
camera both get every frame. Commands a controller applies carry
the sending instance's service id, ``app-<instance id>`` (``DeviceState.by``), so shared
controllers say who set what.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from platform_sdk.artifacts import APP_MANIFEST, AppInstanceConfig, AppManifest, parse_manifest
from platform_sdk.devices import DeviceClient, SensorData, SensorStream
from platform_sdk.errors import BadRequest, NotFound, ValidationFailed
from platform_sdk.model_client import ModelClient
from platform_sdk.runtime import PlatformRuntime
from platform_sdk.settings import Settings

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
log = logging.getLogger(__name__)


class App:
    """One running app instance: its devices and models by alias, its port, its stop signal."""

    def __init__(
        self,
        manifest: AppManifest,
        config: AppInstanceConfig,
        runtime: PlatformRuntime,
        models: ModelClient,
    ) -> None:
        self.manifest = manifest
        self.config = config
        self.settings: Settings = runtime.settings
        topics = runtime.bus.topics
        group = (
            topics.instance_groups(topics.instance)[1]
            if topics.instance
            else f"{topics.prefix}.app.{config.instance_id}"
        )
        self.devices = DeviceClient(runtime.bus, config.devices, group=group)
        self.models = models
        self.log = logging.getLogger(f"app.{manifest.name}")
        self.stopping = threading.Event()

    # identity -----------------------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        return self.config.instance_id

    @property
    def location(self) -> str:
        return self.config.location

    @property
    def host(self) -> str:
        return self.settings.service_host

    @property
    def port(self) -> int:
        if not self.settings.port_http:
            raise BadRequest("this app instance has no HTTP port: is it a backend app?")
        return self.settings.port_http

    # devices and models -------------------------------------------------------------------
    def get_sensor_data(self, alias: str, timeout: float = 10.0) -> SensorData:
        return self.devices.get_sensor_data(alias, timeout)

    def sensor_stream(self, alias: str, callback: Callable[[SensorData], None] | None = None) -> SensorStream:
        return self.devices.sensor_stream(alias, callback)

    def send_controller(self, alias: str, command: str, **params: Any) -> dict[str, Any]:
        return self.devices.send_controller(alias, command, **params)

    def controller_state(self, alias: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.devices.controller_state(alias, timeout)

    def model_call(self, alias: str, endpoint: str | None = None, **inputs: Any) -> dict[str, Any]:
        """Call the model bound to ``alias`` (``models`` in app.json) with ``inputs``."""
        binding = self.config.models.get(alias)
        if binding is None:
            known = ", ".join(sorted(self.config.models)) or "none"
            raise NotFound(f"no model under alias {alias!r} (declared: {known})")
        return self.models.call(binding.model, endpoint, inputs, version=binding.version)

    # running ------------------------------------------------------------------------------
    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the instance is stopping (leave your loop then)."""
        return self.stopping.wait(seconds)

    def serve(self, wsgi_app: WsgiApp, *, worker: Callable[[], object] | None = None) -> None:
        """Serve ``wsgi_app`` on the instance's port until it stops; the health path is the SDK's.

        ``worker`` (the app's own loop, e.g. ``while not app.wait(1): ...``) runs meanwhile in a
        thread of its own — open sensor streams there, so the pages (and the health path the
        deployer waits for) answer while the streams join their consumer group. When serving
        ends, ``stopping`` is set and the worker joined (30 s at most); a worker that raises
        stops the instance and ``serve`` raises its error (the instance is then restarted).
        """
        failures: list[Exception] = []

        def run_worker() -> None:
            assert worker is not None
            try:
                worker()
            except Exception as exc:
                self.log.exception("the app's worker failed; stopping the instance")
                failures.append(exc)
                self.stopping.set()

        thread = None
        if worker is not None:
            thread = threading.Thread(target=run_worker, name=f"app-{self.manifest.name}-worker", daemon=True)
            thread.start()
        try:
            self._serve_http(wsgi_app)
        finally:
            if thread is not None:
                self.stopping.set()
                thread.join(timeout=30)
        if failures:
            raise failures[0]

    def _serve_http(self, wsgi_app: WsgiApp) -> None:
        health_path = self.manifest.web.health_path if self.manifest.web else "/health"
        instance_id = self.instance_id

        def with_health(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == health_path:
                body = json.dumps({"status": "ok", "instance": instance_id}).encode()
                start_response("200 OK", [("Content-Type", "application/json")])
                return [body]
            return wsgi_app(environ, start_response)

        server = make_server(
            self.host, self.port, with_health, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )

        def stop_when_told() -> None:
            self.stopping.wait()
            server.shutdown()

        stopper = threading.Thread(target=stop_when_told, name="aiot-app-http-stop", daemon=True)
        stopper.start()
        self.log.info("serving on http://%s:%d", self.host, self.port)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()

    def close(self) -> None:
        self.stopping.set()
        self.devices.close()
        self.models.close()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def load_manifest(bundle: Path) -> AppManifest:
    """The manifest of the app in ``bundle``, read as the upload read it (``parse_manifest``).

    ``BadRequest`` when it cannot be read; ``ValidationFailed`` naming the file and the field.
    """
    path = bundle / APP_MANIFEST
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"{path}: cannot read it: {exc.strerror}") from exc
    try:
        return parse_manifest(raw, AppManifest, file=APP_MANIFEST)
    except ValidationFailed as exc:
        raise ValidationFailed(f"{bundle}: {exc.message}", details=exc.details) from exc
