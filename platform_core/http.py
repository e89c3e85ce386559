"""The HTTP app factory and the production WSGI server every platform HTTP surface uses.

``create_app(blueprints, authenticate)`` builds a Flask app that mounts the
given blueprints, checks at build time that every route declares a role rule
(see ``platform_core.auth``), enforces the rule before each request, caps the
body size, and turns errors into JSON: a ``PlatformError`` becomes its status
and message, unknown routes and wrong methods become 404/405, anything else a
500 whose details stay in the logs.

``HttpServer`` serves an app with waitress (threads, no Flask dev server) on
one named thread the owning service starts and stops.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import flask
import waitress
from pydantic import BaseModel, ValidationError
from waitress import wasyncore
from waitress.server import BaseWSGIServer, MultiSocketServer
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from platform_core.auth import Authenticator, access_rule, check_access
from platform_core.blobstore import BlobStore
from platform_sdk.bus import Requester
from platform_sdk.envelope import Message
from platform_sdk.errors import (
    BadRequest,
    PayloadTooLarge,
    PlatformError,
    Timeout,
    Unavailable,
    ValidationFailed,
)
from platform_sdk.settings import Settings

if TYPE_CHECKING:  # SQLAlchemy only in processes that open the database (not the agents)
    from platform_core.db import Database

log = logging.getLogger(__name__)
B = TypeVar("B", bound=BaseModel)
R = TypeVar("R", bound=Message)
# How long a route waits for another domain's answer on the bus before it answers 503.
ASK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Resources:
    """What route handlers may use: settings, the registry database, the blob store, the bus."""

    settings: Settings
    database: Database
    blobs: BlobStore
    requester: Requester | None = None

    def bus_requester(self) -> Requester:
        """The front door's request/reply client; ``Unavailable`` where it runs without a bus."""
        if self.requester is None:
            raise Unavailable("this front door has no Kafka connection: start it with `aiot up`")
        return self.requester


_RESOURCES_KEY = "aiot.resources"


def ask(domain: str, topic: str, message: Message, reply_cls: type[R], timeout: float | None = None) -> R:
    """The reply of ``domain`` (``"the device manager"``) to ``message`` on ``topic``.

    Its errors (``NotFound`` …) come through as they are; a domain that does not answer within
    ``timeout`` (default ``ASK_TIMEOUT_S``) is ``Unavailable`` (503) naming it.
    """
    requester = resources().bus_requester()
    try:
        return requester.request(
            topic, message, reply_cls, timeout=ASK_TIMEOUT_S if timeout is None else timeout
        )
    except Timeout as exc:
        raise Unavailable(f"{domain} does not answer ({exc.message}); try again in a moment") from exc


def resources() -> Resources:
    """The resources of the app serving the current request."""
    found: Resources = flask.current_app.extensions[_RESOURCES_KEY]
    return found


def validate_as(model: type[B], data: object) -> B:
    """``data`` as ``model``, or ``ValidationFailed`` naming each field and reason."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(
            f"invalid {model.__name__}",
            # Never echo the input back: it may hold a password.
            details=exc.errors(include_url=False, include_context=False, include_input=False),
        ) from exc


def body_as(model: type[B]) -> B:
    """The request's JSON body as ``model``."""
    body = flask.request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    return validate_as(model, body)


def query_as(model: type[B]) -> B:
    """The request's query string as ``model``."""
    return validate_as(model, flask.request.args.to_dict())


def uploaded_file(what: str) -> tuple[bytes, str]:
    """The file of an upload request: a multipart ``file`` field or the raw body (``X-Filename``)."""
    upload = flask.request.files.get("file")
    if upload is not None:
        return upload.read(), upload.filename or "upload.zip"
    data = flask.request.get_data(cache=False)
    if not data:
        raise BadRequest(f"send the {what} as the request body (Content-Type: application/zip)")
    return data, flask.request.headers.get("X-Filename", "upload.zip")


class RouteWithoutRule(RuntimeError):
    """A route was mounted without a role rule; every route must declare one."""


def error_response(error: PlatformError) -> tuple[flask.Response, int]:
    return flask.jsonify(error=error.to_dict()), error.status


def create_app(
    name: str,
    blueprints: Iterable[flask.Blueprint],
    authenticate: Authenticator,
    resources: Resources,
) -> flask.Flask:
    """A Flask app with ``blueprints`` mounted behind the role guard."""
    app = _base_app(name, blueprints, resources.settings.web.max_upload_mb)
    app.extensions[_RESOURCES_KEY] = resources

    @app.before_request
    def guard() -> None:
        view = app.view_functions.get(flask.request.endpoint or "")
        if view is not None:
            flask.g.principal = check_access(view, flask.request, authenticate)

    return app


def create_internal_app(
    name: str, blueprints: Iterable[flask.Blueprint], max_upload_mb: int = 16
) -> flask.Flask:
    """An app for node-internal HTTP (an agent's /load, a model replica), bound to the node's own address.

    It has no users, so every route must be ``@public``; anything else is refused at build time.
    """
    app = _base_app(name, blueprints, max_upload_mb)
    guarded = sorted(
        rule.rule for rule in app.url_map.iter_rules() if access_rule(app.view_functions[rule.endpoint])
    )
    if guarded:
        raise RouteWithoutRule(f"an internal app serves public routes only, not {', '.join(guarded)}")
    return app


def _base_app(name: str, blueprints: Iterable[flask.Blueprint], max_upload_mb: int) -> flask.Flask:
    """Blueprints mounted, every route checked for a role rule, errors as JSON."""
    app = flask.Flask(name, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_mb * 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    unguarded = sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if access_rule(app.view_functions[rule.endpoint]) is None
    )
    if unguarded:
        raise RouteWithoutRule(f"routes without a role rule: {', '.join(unguarded)}")

    @app.errorhandler(PlatformError)
    def platform_error(error: PlatformError) -> tuple[flask.Response, int]:
        if error.status >= 500:
            log.error("%s %s failed: %s", flask.request.method, flask.request.path, error.message)
        return error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error: RequestEntityTooLarge) -> tuple[flask.Response, int]:
        return error_response(PayloadTooLarge(f"request body exceeds the {max_upload_mb} MB limit"))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[flask.Response, int, dict[str, str]]:
        status = error.code or 500
        body = {"type": type(error).__name__, "status": status, "message": error.description}
        headers = {key: value for key, value in error.get_headers() if key.lower() != "content-type"}
        return flask.jsonify(error=body), status, headers

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[flask.Response, int]:
        log.exception("%s %s failed", flask.request.method, flask.request.path)
        return error_response(PlatformError(str(error)))

    return app


class HttpServer:
    """A waitress server for one WSGI app, on a thread owned by the caller."""

    def __init__(self, app: flask.Flask, host: str, port: int, *, threads: int = 8) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.threads = threads
        self._server: BaseWSGIServer | MultiSocketServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Bind (a port of 0 becomes a free one, see ``port``) and serve on a named thread."""
        self._server = waitress.create_server(
            self.app,
            host=self.host,
            port=self.port,
            threads=self.threads,
            ident="aiot",
            clear_untrusted_proxy_headers=True,
        )
        self.port = int(self._server.effective_port)
        self._thread = threading.Thread(target=self._serve, name=f"aiot-http-{self.app.name}")
        self._thread.start()

    def _serve(self) -> None:
        assert self._server is not None
        with contextlib.suppress(OSError):  # raised when stop() closes the listening socket
            self._server.run()

    def stop(self) -> None:
        """Close the listening socket and every open connection, then end the serving thread.

        A kept-alive client connection would keep waitress's loop running after its listening
        socket is closed (until the client hangs up or ``channel_timeout`` passes), so every
        socket is closed on the loop's own thread, through its trigger.
        """
        server, self._server = self._server, None
        if server is None:
            return
        if isinstance(server, BaseWSGIServer):
            sockets = server._map
            server.trigger.pull_trigger(lambda: wasyncore.close_all(sockets))
        else:
            server.close()
        server.task_dispatcher.shutdown()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if isinstance(server, BaseWSGIServer) and server._map:  # the loop had ended: nobody ran the thunk
            wasyncore.close_all(server._map)
