"""The OpenAPI 3.1 document of an HTTP app, made from the app itself; ``GET /api/openapi.json`` serves it.

Every route of the app's url map is an operation (``HEAD`` and ``OPTIONS`` left out), made from
what the route already holds:

* its path parameters from the url map (``<int:…>``: an integer within 64 bits; any other: a
  non-empty string without ``/``);
* who may call it from its role rule (``platform_core.auth``): ``security`` (the bearer token;
  ``[]`` for a public route) and ``x-roles``, the roles it allows (``[]``: anyone, no token);
* what it reads from its own code: the pydantic model of ``body_as(Model)`` (a JSON body) and of
  ``query_as(Model)`` (query parameters, one per field), ``uploaded_file`` (a zip as the body, or
  a multipart ``file`` field, with ``X-Filename``), and its success status from a
  ``return ..., 201``;
* what a view reads through a helper, the model it answers with, or a status its code cannot
  show, declared next to it with ``@shapes(...)`` (``platform_core.http``); an answer without a
  declared model is described as a JSON object;
* every error as the platform's one error shape (``ErrorBody``, what ``error_response`` sends).

Schemas come from the same pydantic models the routes validate with (``validation`` mode for
what a route reads, ``serialization`` for what it answers), under ``components.schemas``. The
document is made once per app, at its first request.
"""

from __future__ import annotations

import ast
import http
import inspect
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import flask
from pydantic import BaseModel, Field, JsonValue, TypeAdapter
from werkzeug.routing import IntegerConverter, Rule

from platform_core.auth import access_rule, is_page, public
from platform_core.http import RouteShapes, app_extension, route_shapes
from platform_sdk.json_numbers import MAX_INT

__all__ = ["OPENAPI_PATH", "ErrorBody", "ErrorInfo", "blueprint", "document", "make_document"]

blueprint = flask.Blueprint("openapi", __name__, url_prefix="/api")
OPENAPI_PATH = "/api/openapi.json"
_DOCUMENT_KEY = "aiot.openapi"
_REF = "#/components/schemas/{model}"
_IGNORED_METHODS = {"HEAD", "OPTIONS"}
_PARAMETER = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_BEARER = "bearer"


class ErrorInfo(BaseModel):
    """What went wrong (a 5xx hides its message and details: the cause is in the platform logs)."""

    type: str = Field(description="The error's kind: `ValidationFailed`, `NotFound`, `Forbidden`, ...")
    status: int = Field(description="The HTTP status, again.")
    message: str = Field(description="What is wrong and what to do, for people.")
    details: JsonValue = Field(
        default=None, description="Each field and reason (422), the parameter (400), the names (409)."
    )


class ErrorBody(BaseModel):
    """Every error the platform answers: ``{"error": {type, status, message, details?}}``."""

    error: ErrorInfo


@dataclass
class _Shapes:
    """What one route takes and answers: found in its code, then what it declared with ``@shapes``."""

    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    upload: bool = False
    response: Any = None
    status: int = 200

    def declared(self, shapes: RouteShapes) -> _Shapes:
        self.body = shapes.body or self.body
        self.query = shapes.query or self.query
        self.response = shapes.response if shapes.response is not None else self.response
        self.status = shapes.status or self.status
        return self


def _resolve(node: ast.expr, names: dict[str, Any]) -> Any:
    """The object a name or dotted name in a view's code stands for (None when it is neither)."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, names)
        return None if owner is None else getattr(owner, node.attr, None)
    return None


def _model(node: ast.Call, names: dict[str, Any]) -> type[BaseModel] | None:
    found = _resolve(node.args[0], names) if node.args else None
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def _found_in_code(view: Callable[..., Any]) -> _Shapes:
    """What ``view``'s own code reads (``body_as``, ``query_as``, ``uploaded_file``) and its success
    status (the ``201`` of ``return ..., 201``)."""
    function = inspect.unwrap(view)
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names: dict[str, Any] = getattr(function, "__globals__", {})
    found = _Shapes()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if called == "body_as":
                found.body = _model(node, names)
            elif called == "query_as":
                found.query = _model(node, names)
            elif called == "uploaded_file":
                found.upload = True
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            status = node.value.elts[1] if len(node.value.elts) > 1 else None
            if isinstance(status, ast.Constant) and isinstance(status.value, int) and status.value < 300:
                found.status = status.value
    return found


@dataclass(frozen=True)
class _Route:
    rule: Rule
    method: str
    view: Callable[..., Any]
    shapes: _Shapes

    @property
    def path(self) -> str:
        return _PARAMETER.sub(lambda match: "{" + match["name"] + "}", self.rule.rule)


def _routes(app: flask.Flask) -> list[_Route]:
    routes = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        view = app.view_functions[rule.endpoint]
        if is_page(view):  # the portal's pages are HTML for people, not the API
            continue
        shapes = _found_in_code(view).declared(route_shapes(view))
        for method in sorted((rule.methods or set()) - _IGNORED_METHODS):
            routes.append(_Route(rule, method, view, shapes))
    return routes


def _path_parameters(app: flask.Flask, rule: Rule) -> list[dict[str, Any]]:
    parameters = []
    for match in _PARAMETER.finditer(rule.rule):
        converter = app.url_map.converters.get(match["converter"] or "default")
        schema: dict[str, Any] = (
            {"type": "integer", "minimum": 0, "maximum": MAX_INT}
            if isinstance(converter, type) and issubclass(converter, IntegerConverter)
            else {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
        )
        parameters.append({"name": match["name"], "in": "path", "required": True, "schema": schema})
    return parameters


def _query_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """One query parameter per property of a query model's schema; an absent one is its ``None``."""
    required = set(schema.get("required", []))
    parameters = []
    for name, property_schema in schema.get("properties", {}).items():
        described = dict(property_schema)
        options = [option for option in described.pop("anyOf", []) if option != {"type": "null"}]
        if len(options) == 1:
            described |= options[0]
        elif options:
            described["anyOf"] = options
        if described.get("default", 0) is None:
            del described["default"]
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in described:
            parameter["description"] = described.pop("description")
        described.pop("title", None)
        parameters.append(parameter | {"schema": described})
    return parameters


_BINARY = {"type": "string", "format": "binary"}


def _upload_body() -> dict[str, Any]:
    return {
        "required": True,
        "description": "A zip: the raw body (`Content-Type: application/zip`, its name in `X-Filename`) "
        "or a multipart field `file`.",
        "content": {
            "application/zip": {"schema": _BINARY},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]},
                "encoding": {"file": {"contentType": "application/zip"}},
            },
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=ErrorBody.__name__)}}},
    }


def _responses(route: _Route, answer: dict[str, Any], guarded: bool) -> dict[str, Any]:
    status = route.shapes.status
    responses: dict[str, Any] = {
        str(status): {
            "description": http.HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": answer}},
        }
    }
    if guarded:
        responses["401"] = _error("No token, or an unknown, expired or revoked one.")
        responses["403"] = _error("The caller's role may not call this route, or an owner rule refuses it.")
    if route.shapes.body or route.shapes.upload:
        responses["413"] = _error("The body is over its limit (`web.max_json_kb`, `web.max_upload_mb`).")
        responses["422"] = _error("A field is invalid: `details` names each field and reason.")
    responses["default"] = _error("Any other error, in the platform's one error shape.")
    return responses


def _docstring(view: Callable[..., Any]) -> dict[str, str]:
    text = inspect.getdoc(view)
    if not text:
        return {}
    summary, _, rest = text.partition("\n\n")
    described = {"summary": " ".join(summary.split())}
    return described | ({"description": rest.strip()} if rest.strip() else {})


def _version() -> str:
    try:
        return metadata.version("aiot-platform")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+source"


def make_document(app: flask.Flask, title: str = "AIoT platform API") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of ``app``."""
    routes = _routes(app)
    adapters: list[tuple[tuple[str, str], Any, TypeAdapter[Any]]] = [
        (("error", ""), "serialization", TypeAdapter(ErrorBody))
    ]
    for route in routes:
        key = f"{route.method} {route.rule.rule}"
        if route.shapes.body is not None:
            adapters.append((("body", key), "validation", TypeAdapter(route.shapes.body)))
        if route.shapes.query is not None:
            adapters.append((("query", key), "validation", TypeAdapter(route.shapes.query)))
        if route.shapes.response is not None:
            adapters.append((("response", key), "serialization", TypeAdapter(route.shapes.response)))
    schemas, definitions = TypeAdapter.json_schemas(adapters, ref_template=_REF)
    components: dict[str, Any] = dict(definitions.get("$defs", {}))

    def schema_of(kind: str, key: str, mode: str) -> dict[str, Any]:
        found: dict[str, Any] = schemas[((kind, key), mode)]  # type: ignore[index]
        return found

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        key = f"{route.method} {route.rule.rule}"
        roles = access_rule(route.view) or frozenset()
        endpoint = route.rule.endpoint
        several = len((route.rule.methods or set()) - _IGNORED_METHODS) > 1
        operation: dict[str, Any] = {
            "operationId": f"{endpoint}.{route.method.lower()}" if several else endpoint,
            "tags": [route.rule.endpoint.partition(".")[0]],
            **_docstring(route.view),
            "security": [{_BEARER: []}] if roles else [],
            "x-roles": sorted(role.value for role in roles),
        }
        parameters = _path_parameters(app, route.rule)
        if route.shapes.query is not None:
            query = schema_of("query", key, "validation")
            if "$ref" in query:
                query = components[query["$ref"].rpartition("/")[2]]
            parameters += _query_parameters(query)
        if route.shapes.upload:
            parameters.append(
                {
                    "name": "X-Filename",
                    "in": "header",
                    "required": False,
                    "description": "The zip's file name, named in errors (a raw body only).",
                    "schema": {"type": "string", "maxLength": 255},
                }
            )
            operation["requestBody"] = _upload_body()
        elif route.shapes.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of("body", key, "validation")}},
            }
        if parameters:
            operation["parameters"] = parameters
        answer = (
            {"type": "object"}
            if route.shapes.response is None
            else schema_of("response", key, "serialization")
        )
        operation["responses"] = _responses(route, answer, guarded=bool(roles))
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": _version(),
            "description": "Every route of the front door, who may call it (`x-roles`) and what it takes "
            "and answers. Authenticate with `Authorization: Bearer <token>` (`POST /api/auth/login`). "
            "See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                _BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token from `POST /api/auth/login` or `POST /api/auth/tokens`.",
                }
            },
        },
    }


def document(app: flask.Flask) -> dict[str, Any]:
    """``app``'s document, made at the first call and kept with the app (its routes do not change)."""
    return app_extension(app, _DOCUMENT_KEY, lambda: make_document(app))


@blueprint.get("/openapi.json")
@public
def openapi_document() -> flask.Response:
    """This document: every route, who may call it, what it takes and what it answers."""
    return flask.jsonify(document(flask.current_app))
