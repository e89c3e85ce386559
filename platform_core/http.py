"""The HTTP app factory and the production WSGI server every platform HTTP surface uses.

``create_app(blueprints, authenticate)`` builds a Flask app that mounts the
given blueprints, checks at build time that every route declares a role rule
(see ``platform_core.auth``), admits each request before its body is read (the
role rule, then the body's size: ``web.max_json_kb`` for a JSON body, else
``web.max_upload_mb``), and turns errors into JSON: a ``PlatformError``
becomes its status and message, unknown routes and wrong methods become
404/405, anything else a 500 whose details stay in the logs.

``body_as`` and ``json_body`` read a JSON body within those limits: over the
size → 413, nested deeper than ``web.max_json_depth`` → 400 (checked before it
is parsed, so nothing recurses deeply), ``NaN``/``Infinity``, a float that
overflows or an integer beyond 64 bits → 422 naming where it stands.
``query_as`` reads the query string: a malformed or out-of-range parameter
→ 400 naming it.

``HttpServer`` serves an app with waitress (threads, no Flask dev server) on
one named thread the owning service starts and stops. A request whose body has
not arrived with its headers is admitted by the same check as soon as its
headers are in (on a worker thread, while the connection reads no more): a
refused one is answered (401, 403, 413) without its body being read, an
admitted one reads on (a client that sent ``Expect: 100-continue`` is told to
go on only then), and a chunked body is cut off with 413 once it passes its
limit. After a refusal the connection stops writing, drops what input still
comes for a moment (so the client reads the answer rather than a reset) and
closes. ``<int:…>`` path parameters are bounded to 64 bits (a longer one is
404).
"""

from __future__ import annotations

import contextlib
import http
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import flask
import waitress
from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, MultiSocketServer
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import IntegerConverter, Map, RequestRedirect

from platform_core.auth import Authenticator, Principal, access_rule, check_access
from platform_core.blobstore import BlobStore
from platform_sdk import json_numbers
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
from platform_sdk.json_numbers import MAX_INT
from platform_sdk.settings import Settings, WebSettings

if TYPE_CHECKING:  # SQLAlchemy only in processes that open the database (not the agents)
    from platform_core.db import Database

log = logging.getLogger(__name__)
B = TypeVar("B", bound=BaseModel)
R = TypeVar("R", bound=Message)


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
    ``timeout`` (default ``web.ask_timeout_s``) is ``Unavailable`` (503) naming it.
    """
    found = resources()
    requester = found.bus_requester()
    wait = found.settings.web.ask_timeout_s if timeout is None else timeout
    try:
        return requester.request(topic, message, reply_cls, timeout=wait)
    except Timeout as exc:
        raise Unavailable(f"{domain} does not answer ({exc.message}); try again in a moment") from exc


def resources() -> Resources:
    """The resources of the app serving the current request."""
    found: Resources = flask.current_app.extensions[_RESOURCES_KEY]
    return found


Kept = TypeVar("Kept")


def app_extension(app: flask.Flask, key: str, make: Callable[[], Kept]) -> Kept:
    """``app``'s one object under ``key``, made by ``make`` at the first call and kept with the app.

    Two first calls at once may both make one; ``setdefault`` keeps the first stored, so every
    caller gets the same object.
    """
    found: Kept | None = app.extensions.get(key)
    if found is None:
        found = app.extensions.setdefault(key, make())
    return found


def _invalid(title: str, exc: ValidationError) -> ValidationFailed:
    # Never echo the input back: it may hold a password.
    return ValidationFailed(
        title, details=exc.errors(include_url=False, include_context=False, include_input=False)
    )


def validate_as(model: type[B], data: object) -> B:
    """``data`` as ``model``, or ``ValidationFailed`` naming each field and reason."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(f"invalid {model.__name__}", exc) from exc


NOT_A_JSON_OBJECT = "the request body must be a JSON object (Content-Type: application/json)"


def body_as(model: type[B]) -> B:
    """The request's JSON body as ``model`` (read by ``json_body``, within the limits on input)."""
    body = json_body(NOT_A_JSON_OBJECT)
    if not isinstance(body, dict):
        raise BadRequest(NOT_A_JSON_OBJECT)
    return validate_as(model, body)


def query_as(model: type[B]) -> B:
    """The request's query string as ``model``; ``BadRequest`` (400) naming each bad parameter."""
    try:
        return model.model_validate(flask.request.args.to_dict())
    except ValidationError as exc:
        details = exc.errors(include_url=False, include_context=False, include_input=False)
        named = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg'].removeprefix('Value error, ')}"
            for item in details
        )
        raise BadRequest(f"invalid query parameter {named}", details=details) from exc


# --- limits on input ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InputLimits:
    """How big and how deep a request body may be (``web.max_json_kb``, ``web.max_json_depth``,
    ``web.max_upload_mb``)."""

    max_upload_mb: int
    max_json_kb: int
    max_json_depth: int

    @classmethod
    def of(cls, web: WebSettings) -> InputLimits:
        return cls(web.max_upload_mb, web.max_json_kb, web.max_json_depth)

    def body_limit(self, request: flask.Request) -> tuple[int, str]:
        """The most bytes ``request``'s body may have, and the message of a 413 past it.

        A JSON body (``Content-Type: application/json``) is bounded by the JSON limit, any other
        (an upload) by the upload limit; whichever is smaller wins.
        """
        upload = self.max_upload_mb * 1024 * 1024, f"request body exceeds the {self.max_upload_mb} MB limit"
        if not request.is_json or self.max_json_kb * 1024 >= upload[0]:
            return upload
        return (
            self.max_json_kb * 1024,
            f"a JSON request body may be at most {self.max_json_kb} KiB (AIOT_WEB__MAX_JSON_KB)",
        )


_LIMITS_KEY = "aiot.input-limits"
_ADMIT_KEY = "aiot.admit"
_NAMED_AT_MOST = 10  # bad numbers a 422 names
# What a depth check has to look at: brackets, and strings (whose brackets do not count).
_JSON_TOKENS = re.compile(r'[\[\]{}]|"[^"\\]*(?:\\.[^"\\]*)*"?')


class _Int64Converter(IntegerConverter):
    """``<int:…>`` path parameters within 64 bits: a longer number matches no route (404) instead
    of overflowing the database's integers."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_INT)
        super().__init__(url_map, *args, **kwargs)


def _limits() -> InputLimits:
    found: InputLimits = flask.current_app.extensions[_LIMITS_KEY]
    return found


def _too_deep(text: str, limit: int) -> bool:
    """Whether arrays and objects in ``text`` nest deeper than ``limit``: one pass, no recursion."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        bracket = token[0]
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        elif bracket in "]}":
            depth -= 1
    return False


def _bad_numbers(document: Any) -> list[InitErrorDetails]:
    """Where ``document`` holds a number no field can hold, in document order, as pydantic errors
    (with why, never the number's text: it might be a password)."""
    return [
        InitErrorDetails(
            type=PydanticCustomError("json_number", "{reason}", {"reason": bad.reason}), loc=path, input=None
        )
        for path, bad in json_numbers.bad_numbers(document)
    ]


def parse_json(data: bytes, max_depth: int, not_json: str) -> Any:
    """``data`` parsed as JSON: ``BadRequest(not_json)`` when it is not JSON text, ``BadRequest``
    when it nests deeper than ``max_depth``; ``ValidationFailed`` naming where each ``NaN``,
    ``Infinity``, overflowing float or integer beyond 64 bits stands."""
    try:
        text = data.decode(json.detect_encoding(data))
    except UnicodeDecodeError:
        raise BadRequest(not_json, details=[{"loc": [], "msg": "not UTF-8 text"}]) from None
    if _too_deep(text, max_depth):
        raise BadRequest(
            f"the JSON body nests arrays and objects deeper than {max_depth} levels "
            "(AIOT_WEB__MAX_JSON_DEPTH)"
        )
    try:
        document = json_numbers.loads(text)
    except ValueError as exc:
        raise BadRequest(not_json, details=[{"loc": [], "msg": str(exc)}]) from None
    if bad := _bad_numbers(document):
        error = ValidationError.from_exception_data("JSON body", bad[:_NAMED_AT_MOST])
        where = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or '(body)'}: {item['msg']}" for item in error.errors()
        )
        more = f" (and {len(bad) - _NAMED_AT_MOST} more)" if len(bad) > _NAMED_AT_MOST else ""
        raise _invalid(f"numbers the platform cannot hold: {where}{more}", error)
    return document


def json_body(not_json: str = NOT_A_JSON_OBJECT) -> Any:
    """The request's JSON body, read within the limits on input.

    ``BadRequest(not_json)`` without a JSON content type or for text that is not JSON;
    ``PayloadTooLarge`` past ``web.max_json_kb``; ``BadRequest`` past ``web.max_json_depth``;
    ``ValidationFailed`` for numbers (see ``parse_json``).
    """
    request = flask.request
    if not request.is_json:
        raise BadRequest(not_json)
    limits = _limits()
    limit, too_large = limits.body_limit(request)  # a declared length past it was refused already
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(too_large)
    return parse_json(data, limits.max_json_depth, not_json)


def uploaded_file(what: str) -> tuple[bytes, str]:
    """The file of an upload request: a multipart ``file`` field or the raw body (``X-Filename``)."""
    upload = flask.request.files.get("file")
    if upload is not None:
        return upload.read(), upload.filename or "upload.zip"
    data = flask.request.get_data(cache=False)
    if not data:
        raise BadRequest(f"send the {what} as the request body (Content-Type: application/zip)")
    return data, flask.request.headers.get("X-Filename", "upload.zip")


# --- what a route takes and answers, for the OpenAPI document (``platform_core.openapi``) -------


@dataclass(frozen=True)
class RouteShapes:
    """What a route takes and answers where its code does not show it to the OpenAPI document.

    The document finds ``body_as(Model)``, ``query_as(Model)`` and ``uploaded_file`` in a view's
    own code and its success status in a ``return ..., 201``; ``@shapes`` names what a view reads
    through a helper (``body``, ``query``), the model its answer is (``response``: a pydantic model
    or any type a ``TypeAdapter`` takes, e.g. a ``TypedDict``) or a status it cannot show.
    """

    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int | None = None


SHAPES_ATTR = "_aiot_shapes"
View = TypeVar("View", bound=Callable[..., Any])


def shapes(
    *,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: Any = None,
    status: int | None = None,
) -> Callable[[View], View]:
    """Declare what a view takes and answers for the OpenAPI document (see ``RouteShapes``)."""

    def mark(view: View) -> View:
        setattr(view, SHAPES_ATTR, RouteShapes(body, query, response, status))
        return view

    return mark


def route_shapes(view: Callable[..., Any]) -> RouteShapes:
    """What ``view`` declared with ``@shapes`` (nothing: an empty ``RouteShapes``)."""
    declared: RouteShapes = getattr(view, SHAPES_ATTR, RouteShapes())
    return declared


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
    """A Flask app with ``blueprints`` mounted behind the role guard and the limits on input."""
    app = _base_app(name, blueprints, InputLimits.of(resources.settings.web), authenticate)
    app.extensions[_RESOURCES_KEY] = resources
    return app


def create_internal_app(
    name: str, blueprints: Iterable[flask.Blueprint], max_upload_mb: int = 16
) -> flask.Flask:
    """An app for node-internal HTTP (an agent's /load, a model replica), bound to the node's own address.

    It has no users, so every route must be ``@public``; anything else is refused at build time.
    """
    web = WebSettings(max_upload_mb=max_upload_mb)
    app = _base_app(name, blueprints, InputLimits.of(web), lambda _token: None)
    guarded = sorted(
        rule.rule for rule in app.url_map.iter_rules() if access_rule(app.view_functions[rule.endpoint])
    )
    if guarded:
        raise RouteWithoutRule(f"an internal app serves public routes only, not {', '.join(guarded)}")
    return app


def _admit(
    request: flask.Request, view: Callable[..., Any] | None, authenticate: Authenticator, limits: InputLimits
) -> Principal | None:
    """The caller of ``request`` if its route's rule lets them in and its body is within its limit.

    Raises 401/403 (``check_access``), then 413 for a declared length past the limit; reads no body.
    An unknown route (``view`` None) is left to the app's 404/405.
    """
    principal = None if view is None else check_access(view, request, authenticate)
    limit, too_large = limits.body_limit(request)
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(too_large)
    return principal


def _base_app(
    name: str, blueprints: Iterable[flask.Blueprint], limits: InputLimits, authenticate: Authenticator
) -> flask.Flask:
    """Blueprints mounted, every route checked for a role rule, requests admitted, errors as JSON."""
    app = flask.Flask(name, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = limits.max_upload_mb * 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[_LIMITS_KEY] = limits
    app.url_map.converters["int"] = _Int64Converter
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    unguarded = sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if access_rule(app.view_functions[rule.endpoint]) is None
    )
    if unguarded:
        raise RouteWithoutRule(f"routes without a role rule: {', '.join(unguarded)}")

    @app.before_request
    def guard() -> None:
        view = app.view_functions.get(flask.request.endpoint or "")
        flask.g.principal = _admit(flask.request, view, authenticate, limits)

    def admit_early(environ: dict[str, Any]) -> PlatformError | tuple[int, str]:
        """The refusal of a request whose headers are in, else its body's limit and the 413 past it."""
        request = flask.Request(environ)
        try:
            endpoint, _ = app.url_map.bind_to_environ(environ).match()
            view = app.view_functions.get(endpoint)
        except (NotFound, MethodNotAllowed, RequestRedirect):
            view = None
        try:
            _admit(request, view, authenticate, limits)
        except PlatformError as error:
            return error
        return limits.body_limit(request)

    app.extensions[_ADMIT_KEY] = admit_early

    @app.errorhandler(PlatformError)
    def platform_error(error: PlatformError) -> tuple[flask.Response, int]:
        if error.status >= 500:
            log.error("%s %s failed: %s", flask.request.method, flask.request.path, error.message)
        return error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error: RequestEntityTooLarge) -> tuple[flask.Response, int]:
        return error_response(PayloadTooLarge(limits.body_limit(flask.request)[1]))

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


# --- admitting a request before its body is read (waitress) -----------------------------------

AdmitEarly = Callable[[dict[str, Any]], PlatformError | tuple[int, str]]


class _Refusal:
    """The answer waitress sends for a request it does not hand to the app (its ``ErrorTask`` asks
    ``to_response``): the error as the app's JSON body; waitress then closes the connection."""

    def __init__(self, error: PlatformError) -> None:
        self.error = error

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        status = http.HTTPStatus(self.error.status)
        body = json.dumps({"error": self.error.to_dict()}).encode()
        return f"{status.value} {status.phrase}", [("Content-Type", "application/json")], body


def _environ(parser: Any) -> dict[str, Any]:
    """A WSGI environ of what a waitress parser has read so far: the request line and headers."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": parser.command,
        "PATH_INFO": parser.path,
        "QUERY_STRING": parser.query,
        "SERVER_NAME": "aiot",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": f"HTTP/{parser.version}",
        "wsgi.url_scheme": parser.url_scheme,
        "wsgi.input": io.BytesIO(),
    }
    for key, value in parser.headers.items():
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    return environ


class _AdmittingParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's request parser, holding a request's body until the app has admitted its headers.

    A body that came whole with its headers is left to the app's own check (nothing is saved by
    refusing it earlier). Otherwise the parser waits (``awaiting``) while ``_AdmittingChannel``
    asks the app on a worker thread; what arrives meanwhile is held, and the channel reads no
    more. A refused request is completed with its refusal and the rest of its body never read; a
    chunked body is cut off once it passes its limit.
    """

    expect_continue: bool  # waitress's: the client sent "Expect: 100-continue"
    awaiting = False
    asked = False
    held = b""
    wants_continue = False
    _limit: tuple[int, str] | None = None

    def received(self, data: bytes) -> int:
        if self.awaiting:
            self.held += data  # at most one read: the channel is not readable meanwhile
            return len(data)
        consumed: int = super().received(data)
        if self.completed or not self.headers_finished:
            return consumed
        if self._limit is None:
            if not self.chunked and len(data) - consumed >= self.content_length:
                self._limit = (self.content_length, "")  # here already: the app checks it
            else:  # no "100 Continue" before the app has said yes
                self.awaiting, self.wants_continue, self.expect_continue = True, self.expect_continue, False
        elif self.chunked and len(self.body_rcv) > self._limit[0]:  # the body so far, unchunked
            self.refuse(PayloadTooLarge(self._limit[1]))
            return len(data)  # what else came with it is dropped, and nothing more is read
        return consumed

    def refuse(self, error: PlatformError) -> None:
        self.error = _Refusal(error)
        self.completed = True
        self.connection_close = True
        self.awaiting = self.expect_continue = False
        self.held = b""


class _Admission:
    """A task for waitress's worker threads: ask the app about a request whose headers are in,
    then hand the answer to its channel on the I/O thread (through the server's trigger)."""

    def __init__(self, channel: _AdmittingChannel, request: _AdmittingParser) -> None:
        self.channel = channel
        self.request = request

    def service(self) -> None:
        answer: PlatformError | tuple[int, str]
        try:
            answer = self.channel.admit_early(_environ(self.request))
        except Exception:  # the app checks it again once the body is in
            log.exception("could not admit %s %s before its body", self.request.command, self.request.path)
            answer = (MAX_INT, "")
        with contextlib.suppress(OSError):  # the server stopped meanwhile
            self.channel.server.trigger.pull_trigger(lambda: self.channel.admitted(self.request, answer))

    def cancel(self) -> None:
        """The server is stopping: nothing to answer."""


# After a refusal, what of the body is still on its way is read and dropped for this long at
# most, so the client gets the answer instead of a reset (a close with unread input resets).
_LINGER_S = 2.0
_LINGER_BYTES = 4 * 1024 * 1024


class _AdmittingChannel(HTTPChannel):  # type: ignore[misc]
    """waitress's connection, parsing with ``_AdmittingParser`` and having a request admitted
    before its body is read; after a refusal it closes gently: its answer sent, it stops writing
    and drops what still comes (``_LINGER_S``, ``_LINGER_BYTES``) before it closes."""

    admit_early: AdmitEarly
    request: Any  # waitress's: the request being read (an ``_AdmittingParser``), or None
    _refused = False
    _linger_until: float | None = None
    _dropped = 0

    def received(self, data: bytes) -> bool:
        went_on: bool = super().received(data)
        request = self.request
        if isinstance(request, _AdmittingParser) and request.awaiting and not request.asked:
            request.asked = True
            self.server.add_task(_Admission(self, request))
        return went_on

    def readable(self) -> bool:
        request = self.request
        waiting = isinstance(request, _AdmittingParser) and request.awaiting
        return bool(super().readable()) and not waiting

    def admitted(self, request: _AdmittingParser, answer: PlatformError | tuple[int, str]) -> None:
        """The app's answer about ``request`` (on the I/O thread): refuse it, or read on."""
        if request is not self.request or not self.connected:
            return
        if isinstance(answer, PlatformError):
            request.refuse(answer)
            with self.requests_lock:
                self.requests.append(request)
                if len(self.requests) == 1:
                    self.server.add_task(self)
                self.request = None
        else:
            request._limit = answer
            request.awaiting, request.expect_continue = False, request.wants_continue
            held, request.held = request.held, b""
            if held:
                self.received(held)
            elif request.expect_continue and not self.requests and not self.sent_continue:
                self.send_continue()

    def service(self) -> None:
        """Answer the next request (on a worker thread); a refusal makes the close gentle."""
        self._refused = self._refused or isinstance(self.requests[0].error, _Refusal)
        super().service()

    def handle_close(self) -> None:
        if self._refused and self._linger_until is None and self.connected:
            self._linger_until = time.monotonic() + _LINGER_S
            self.will_close = self.close_when_flushed = False
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_WR)
                return
        super().handle_close()

    def handle_read(self) -> None:
        if self._linger_until is None:
            super().handle_read()
            return
        try:
            data = self.recv(65536)  # b"" once the client hangs up: recv() has closed then
        except OSError:
            super().handle_close()
            return
        self._dropped += len(data)
        if data and (self._dropped > _LINGER_BYTES or time.monotonic() > self._linger_until):
            super().handle_close()


def _admitting_channel(admit_early: AdmitEarly) -> type[Any]:
    namespace = {"admit_early": staticmethod(admit_early), "parser_class": _AdmittingParser}
    channel: type[Any] = type("AdmittingChannel", (_AdmittingChannel,), namespace)
    return channel


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
        limits: InputLimits | None = self.app.extensions.get(_LIMITS_KEY)
        self._server = waitress.create_server(
            self.app,
            host=self.host,
            port=self.port,
            threads=self.threads,
            ident="aiot",
            clear_untrusted_proxy_headers=True,
            # waitress's own (plain-text) bound, behind the app's: it never answers first.
            **({"max_request_body_size": 2 * limits.max_upload_mb * 1024 * 1024 + 1} if limits else {}),
        )
        admit_early: AdmitEarly | None = self.app.extensions.get(_ADMIT_KEY)
        if admit_early is not None:
            channel = _admitting_channel(admit_early)
            servers = (
                [self._server] if isinstance(self._server, BaseWSGIServer) else self._server.map.values()
            )
            for server in servers:
                if isinstance(server, BaseWSGIServer):
                    server.channel_class = channel
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
            # A closed trigger pipe (OSError): the loop cannot be woken; it has ended or ends on its
            # next select, and the sockets are closed below.
            with contextlib.suppress(OSError):
                server.trigger.pull_trigger(lambda: wasyncore.close_all(sockets))
        else:
            server.close()
        server.task_dispatcher.shutdown()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)
        ended = thread is None or not thread.is_alive()
        # The loop had ended before its trigger was pulled: nobody ran the thunk. (While the loop
        # still runs, it alone closes its sockets: closing them here too could close a number
        # the process has since given to another file.)
        if isinstance(server, BaseWSGIServer) and server._map and ended:
            wasyncore.close_all(server._map)
