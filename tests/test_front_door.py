"""The real front door app through Flask's test client: the role guard on every route,
logging in and out, user management, bad input and JSON errors.

Most tests share one migrated SQLite file whose users are created once per module
(argon2 hashing is slow on purpose); each test builds its own app on it and mints
its own tokens. The login and disable flows also run on a fresh PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from platform_core.auth import Role, access_rule, allow, is_page
from platform_core.blobstore import LocalBlobStore
from platform_core.db import Database
from platform_core.http import Resources, RouteWithoutRule, create_app, resources
from platform_sdk.errors import PlatformError, Unavailable, ValidationFailed
from platform_sdk.settings import Settings, temporary_settings
from web import identity
from web.app import build_front_door

PASSWORD = "correct horse battery"
USERS = {
    "admin": Role.PLATFORM_CONFIGURER,
    "aidev": Role.AI_DEVELOPER,
    "appdev": Role.APP_DEVELOPER,
    "enduser": Role.END_USER,
}
PUBLIC_ENDPOINTS = {"identity.health", "identity.login", "openapi.openapi_document"}
# The portal's sign-in form and its CSS and script (tests/test_portal.py walks the other pages).
PUBLIC_PAGES = {"portal.sign_in", "portal.sign_in_post", "portal.static"}
IGNORED_METHODS = {"HEAD", "OPTIONS"}
INVALID_TOKEN_MESSAGE = "invalid, expired or revoked token; log in again with `aiot login`"


@dataclass(frozen=True)
class FrontDoor:
    """An app built by ``build_front_door``, its test client and the database it uses."""

    app: flask.Flask
    client: FlaskClient
    database: Database

    def token(self, username: str, name: str = "test") -> str:
        """A fresh API token of ``username`` (no password check: fast)."""
        with self.database.session() as session:
            user = identity.read_user(session, username)
            return identity.issue_token(session, user, name).secret

    def auth(self, username: str) -> dict[str, str]:
        return bearer(self.token(username))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def front_door(url: str, overrides: Mapping[str, Any] | None = None) -> Iterator[FrontDoor]:
    """The front door on database ``url``; call inside the ``settings`` fixture's context."""
    with temporary_settings({"database.url": url, **(overrides or {})}) as current:
        app = build_front_door(current)
        with app.app_context():
            database = resources().database
        try:
            yield FrontDoor(app, app.test_client(), database)
        finally:
            database.stop()


def error_of(response: TestResponse, status: int) -> dict[str, Any]:
    """The JSON error body of ``response``, checked to have ``status`` and the standard keys."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert {"type", "status", "message"} <= set(error)
    assert error["status"] == status
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def field_names(error: dict[str, Any]) -> list[str]:
    """The fields a 422's details name."""
    return [".".join(str(part) for part in detail["loc"]) for detail in error["details"]]


def json_of(response: TestResponse, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict)
    return body


@pytest.fixture(scope="module")
def shared_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite registry with one user of each role (password ``PASSWORD``)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('front-door') / 'registry.db'}"
    seed_registry(url, USERS)
    return url


def seed_registry(url: str, users: Mapping[str, Role]) -> None:
    """Migrate the database at ``url`` and create ``users`` (password ``PASSWORD``)."""
    database = Database(url)
    try:
        database.migrate()
        with database.session() as session:
            for username, role in users.items():
                identity.create_user(session, username, PASSWORD, role)
    finally:
        database.stop()


@pytest.fixture
def door(settings: Settings, shared_url: str) -> Iterator[FrontDoor]:
    with front_door(shared_url) as built:
        yield built


@pytest.fixture
def fresh_door(settings: Settings, database_url: str) -> Iterator[FrontDoor]:
    """The front door on a fresh, migrated database of each backend, with no users."""
    with front_door(database_url) as built:
        built.database.migrate()
        yield built


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def concrete_requests(app: flask.Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, path) of every route in the url map, path parameters filled in."""
    adapter = app.url_map.bind("localhost")
    found = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            path = adapter.build(rule.endpoint, dict.fromkeys(rule.arguments, 1), method=method)
            found.append((rule.endpoint, method, path))
    return found


# --- every route declares who may call it ------------------------------------------------------


def test_every_route_declares_a_role_rule_and_only_health_login_and_the_api_document_are_public(
    door: FrontDoor,
) -> None:
    rules = {
        rule.endpoint: access_rule(door.app.view_functions[rule.endpoint])
        for rule in door.app.url_map.iter_rules()
    }
    assert len(rules) >= 10
    undeclared = sorted(endpoint for endpoint, rule in rules.items() if rule is None)
    assert undeclared == []
    public = {endpoint for endpoint, rule in rules.items() if rule is not None and not rule}
    # A new public route must be added here on purpose.
    assert public == PUBLIC_ENDPOINTS | PUBLIC_PAGES


def test_an_app_with_a_route_without_a_rule_is_refused(settings: Settings, tmp_path: Path) -> None:
    blueprint = flask.Blueprint("careless", __name__, url_prefix="/api/careless")

    @blueprint.get("/guarded")
    @allow(Role.END_USER)
    def guarded() -> flask.Response:
        return flask.jsonify(ok=True)

    @blueprint.get("/open/<thing>")
    def forgotten(thing: str) -> flask.Response:
        return flask.jsonify(thing=thing)

    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        with pytest.raises(RouteWithoutRule, match="routes without a role rule: /api/careless/open/<thing>"):
            create_app(
                "careless",
                [blueprint],
                lambda _token: None,
                Resources(settings, database, LocalBlobStore(tmp_path / "bucket")),
            )
    finally:
        database.stop()


def test_health_needs_no_token(door: FrontDoor) -> None:
    assert json_of(door.client.get("/api/health")) == {"status": "ok"}


def test_every_protected_route_refuses_a_missing_or_wrong_token(door: FrontDoor) -> None:
    valid = door.token("admin")
    requests = [
        (endpoint, method, path)
        for endpoint, method, path in concrete_requests(door.app)
        if endpoint not in PUBLIC_ENDPOINTS and not is_page(door.app.view_functions[endpoint])
    ]
    assert len(requests) >= 8
    for _endpoint, method, path in requests:
        where = f"{method} {path}"
        missing = error_of(door.client.open(path, method=method), 401)
        assert "missing credentials" in missing["message"], where
        assert missing["type"] == "Unauthorized", where
        for headers in (
            bearer("aiot_" + "x" * 43),
            bearer(valid + "x"),
            {"Authorization": "Bearer"},
        ):
            error = error_of(door.client.open(path, method=method, headers=headers), 401)
            assert error["type"] == "Unauthorized", where
        other_scheme = error_of(
            door.client.open(path, method=method, headers={"Authorization": f"Basic {valid}"}), 401
        )
        assert "missing credentials" in other_scheme["message"], where
    wrong = error_of(door.client.get("/api/auth/me", headers=bearer("aiot_wrong")), 401)
    assert wrong["message"] == INVALID_TOKEN_MESSAGE


# --- roles ------------------------------------------------------------------------------------


def test_a_role_not_allowed_is_forbidden_and_nothing_happens(door: FrontDoor) -> None:
    end_user = door.auth("enduser")
    newcomer = unique_name()

    listing = error_of(door.client.get("/api/users", headers=end_user), 403)
    assert listing["message"] == ("role end_user may not call GET /api/users (allowed: platform_configurer)")
    assert listing["type"] == "Forbidden"
    error_of(
        door.client.post(
            "/api/users",
            headers=end_user,
            json={"username": newcomer, "password": PASSWORD, "role": "platform_configurer"},
        ),
        403,
    )
    disabling = error_of(door.client.post("/api/users/enduser/disable", headers=door.auth("aidev")), 403)
    assert "role ai_developer may not call POST /api/users/enduser/disable" in disabling["message"]
    models = error_of(door.client.post("/api/models", headers=end_user, data=b"PK"), 403)
    assert "role end_user may not call POST /api/models" in models["message"]

    # The refused calls changed nothing: no new user, and the end user still works.
    users = json_of(door.client.get("/api/users", headers=door.auth("admin")))["users"]
    assert newcomer not in {user["username"] for user in users}
    assert json_of(door.client.get("/api/auth/me", headers=end_user))["user"]["disabled"] is False


def test_every_role_may_see_itself(door: FrontDoor) -> None:
    for username, role in USERS.items():
        me = json_of(door.client.get("/api/auth/me", headers=door.auth(username)))["user"]
        assert (me["username"], me["role"]) == (username, role.value)


# --- logging in and out, tokens ----------------------------------------------------------------


def test_login_me_tokens_and_logout(fresh_door: FrontDoor) -> None:
    client = fresh_door.client
    with fresh_door.database.session() as session:
        identity.create_user(session, "alice", PASSWORD, Role.AI_DEVELOPER, email="alice@example.com")

    wrong_password = error_of(
        client.post("/api/auth/login", json={"username": "alice", "password": "nope"}), 401
    )
    unknown_user = error_of(
        client.post("/api/auth/login", json={"username": "bob", "password": PASSWORD}), 401
    )
    assert wrong_password == unknown_user  # names don't leak

    logged_in = json_of(client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD}))
    login_token = logged_in["token"]
    assert login_token.startswith("aiot_")
    assert logged_in["user"]["username"] == "alice"
    assert logged_in["user"]["role"] == "ai_developer"
    assert "password" not in str(logged_in["user"])  # no hash, no password

    me = json_of(client.get("/api/auth/me", headers=bearer(login_token)))["user"]
    assert (me["username"], me["role"], me["email"], me["disabled"]) == (
        "alice",
        "ai_developer",
        "alice@example.com",
        False,
    )
    assert me["created_at"].endswith("+00:00")

    created = json_of(client.post("/api/auth/tokens", headers=bearer(login_token), json={"name": "ci"}), 201)
    script_token = created["token"]
    assert created["name"] == "ci"
    assert script_token not in (login_token, "")
    assert json_of(client.get("/api/auth/me", headers=bearer(script_token)))["user"]["username"] == "alice"

    listing = client.get("/api/auth/tokens", headers=bearer(script_token))
    tokens = json_of(listing)["tokens"]
    assert [(token["name"], token["revoked"]) for token in tokens] == [("login", False), ("ci", False)]
    assert all(
        set(token) == {"id", "name", "created_at", "last_used_at", "expires_at", "revoked"}
        for token in tokens
    )
    text = listing.get_data(as_text=True)
    assert login_token not in text
    assert script_token not in text

    logged_out = json_of(client.post("/api/auth/logout", headers=bearer(login_token)))
    assert logged_out == {"revoked": logged_in["token_id"]}
    after = error_of(client.get("/api/auth/me", headers=bearer(login_token)), 401)
    assert after["message"] == INVALID_TOKEN_MESSAGE
    tokens = json_of(client.get("/api/auth/tokens", headers=bearer(script_token)))["tokens"]
    assert [(token["name"], token["revoked"]) for token in tokens] == [("login", True), ("ci", False)]

    revoked = client.delete(f"/api/auth/tokens/{created['token_id']}", headers=bearer(script_token))
    assert json_of(revoked) == {"revoked": created["token_id"]}
    error_of(client.get("/api/auth/me", headers=bearer(script_token)), 401)


def test_disabling_a_user_revokes_their_tokens_for_good(fresh_door: FrontDoor) -> None:
    client = fresh_door.client
    with fresh_door.database.session() as session:
        identity.create_user(session, "root", PASSWORD, Role.PLATFORM_CONFIGURER)
        identity.create_user(session, "bob", PASSWORD, Role.END_USER)
    admin = fresh_door.auth("root")
    bob = fresh_door.auth("bob")
    assert json_of(client.get("/api/auth/me", headers=bob))["user"]["username"] == "bob"

    disabled = json_of(client.post("/api/users/bob/disable", headers=admin))["user"]
    assert (disabled["username"], disabled["disabled"]) == ("bob", True)
    error_of(client.get("/api/auth/me", headers=bob), 401)
    error_of(client.post("/api/auth/login", json={"username": "bob", "password": PASSWORD}), 401)

    itself = error_of(client.post("/api/users/root/disable", headers=admin), 422)
    assert "you cannot disable yourself" in itself["message"]
    assert json_of(client.get("/api/auth/me", headers=admin))["user"]["disabled"] is False

    missing = error_of(client.post("/api/users/ghost/disable", headers=admin), 404)
    assert missing["message"] == "no user named 'ghost'"

    enabled = json_of(client.post("/api/users/bob/enable", headers=admin))["user"]
    assert enabled["disabled"] is False
    error_of(client.get("/api/auth/me", headers=bob), 401)  # the old token stays revoked
    again = json_of(client.post("/api/auth/login", json={"username": "bob", "password": PASSWORD}))
    assert json_of(client.get("/api/auth/me", headers=bearer(again["token"])))["user"]["username"] == "bob"


def test_a_configurer_creates_and_lists_users(door: FrontDoor) -> None:
    admin = door.auth("admin")
    newcomer = unique_name("dev")
    created = json_of(
        door.client.post(
            "/api/users",
            headers=admin,
            json={"username": newcomer, "password": PASSWORD, "role": "app_developer"},
        ),
        201,
    )["user"]
    assert (created["username"], created["role"], created["disabled"]) == (newcomer, "app_developer", False)

    listing = door.client.get("/api/users", headers=admin)
    users = {user["username"]: user for user in json_of(listing)["users"]}
    assert set(USERS) | {newcomer} <= set(users)
    assert users[newcomer]["role"] == "app_developer"
    assert "argon2" not in listing.get_data(as_text=True)  # hashes never leave the server

    duplicate = error_of(
        door.client.post(
            "/api/users",
            headers=admin,
            json={"username": newcomer, "password": PASSWORD, "role": "end_user"},
        ),
        409,
    )
    assert duplicate["message"] == f"user {newcomer!r} already exists"

    logged_in = door.client.post("/api/auth/login", json={"username": newcomer, "password": PASSWORD})
    assert json_of(logged_in)["user"]["role"] == "app_developer"


# --- bad input and JSON errors ------------------------------------------------------------------


def test_a_body_that_is_not_a_json_object_is_a_bad_request(door: FrontDoor) -> None:
    for body, content_type in [
        ("username=admin&password=x", "application/x-www-form-urlencoded"),
        ('{"username": "admin",', "application/json"),
        ('["admin"]', "application/json"),
        ('{"username": "admin", "password": "x"}', "text/plain"),
    ]:
        response = door.client.post("/api/auth/login", data=body, content_type=content_type)
        error = error_of(response, 400)
        assert error["message"] == (
            "the request body must be a JSON object (Content-Type: application/json)"
        ), content_type
    error_of(door.client.post("/api/users", headers=door.auth("admin"), data="x"), 400)


def test_a_missing_field_is_unprocessable_and_named(door: FrontDoor) -> None:
    error = error_of(door.client.post("/api/auth/login", json={"username": "admin"}), 422)
    assert error["type"] == "ValidationFailed"
    assert field_names(error) == ["password"]

    error = error_of(door.client.post("/api/users", headers=door.auth("admin"), json={}), 422)
    assert field_names(error) == ["username", "password", "role"]

    error = error_of(door.client.post("/api/auth/tokens", headers=door.auth("aidev"), json={"name": ""}), 422)
    assert field_names(error) == ["name"]


def test_validation_errors_never_echo_a_password_back(door: FrontDoor) -> None:
    secret = "do-not-echo-me-123"
    response = door.client.post(
        "/api/users", headers=door.auth("admin"), json={"username": unique_name(), "password": secret}
    )
    error = error_of(response, 422)
    assert field_names(error) == ["role"]
    assert secret not in response.get_data(as_text=True)


def test_an_unknown_role_is_unprocessable_and_creates_nothing(door: FrontDoor) -> None:
    admin = door.auth("admin")
    newcomer = unique_name()
    response = door.client.post(
        "/api/users", headers=admin, json={"username": newcomer, "password": PASSWORD, "role": "wizard"}
    )
    error = error_of(response, 422)
    assert field_names(error) == ["role"]
    users = json_of(door.client.get("/api/users", headers=admin))["users"]
    assert newcomer not in {user["username"] for user in users}


def test_an_invalid_username_or_short_password_says_what_is_wrong(door: FrontDoor) -> None:
    admin = door.auth("admin")
    bad_name = error_of(
        door.client.post(
            "/api/users",
            headers=admin,
            json={"username": "Bad Name", "password": PASSWORD, "role": "end_user"},
        ),
        400,
    )
    assert "username 'Bad Name' is invalid" in bad_name["message"]
    short = error_of(
        door.client.post(
            "/api/users",
            headers=admin,
            json={"username": unique_name(), "password": "short", "role": "end_user"},
        ),
        400,
    )
    assert "password is too short" in short["message"]


def test_an_overlong_email_is_refused_on_every_backend(fresh_door: FrontDoor) -> None:
    with fresh_door.database.session() as session:
        identity.create_user(session, "root", PASSWORD, Role.PLATFORM_CONFIGURER)
    response = fresh_door.client.post(
        "/api/users",
        headers=fresh_door.auth("root"),
        json={"username": "longmail", "password": PASSWORD, "role": "end_user", "email": "a" * 300 + "@x.io"},
    )
    error = error_of(response, 422)
    assert field_names(error) == ["email"]


def test_unknown_routes_and_wrong_methods_answer_in_json(door: FrontDoor) -> None:
    not_found = error_of(door.client.get("/api/no-such-thing"), 404)
    assert not_found["type"] == "NotFound"
    error_of(door.client.get("/no-such-page"), 404)

    for method, path in [
        ("DELETE", "/api/health"),
        ("GET", "/api/auth/login"),
        ("GET", "/api/users/admin/disable"),
    ]:
        wrong = error_of(door.client.open(path, method=method), 405)
        assert wrong["type"] == "MethodNotAllowed", f"{method} {path}"


def test_a_body_over_the_upload_limit_is_too_large(settings: Settings, shared_url: str) -> None:
    two_megabytes = b'{"username": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    with front_door(shared_url, {"web.max_upload_mb": 1}) as limited:
        refused = limited.client.post("/api/auth/login", data=two_megabytes, content_type="application/json")
        error = error_of(refused, 413)
        assert error["type"] == "PayloadTooLarge"
        assert error["message"] == "request body exceeds the 1 MB limit"

        as_admin = limited.client.post(
            "/api/users", headers=limited.auth("admin"), data=two_megabytes, content_type="application/json"
        )
        error_of(as_admin, 413)

        small = limited.client.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
        assert json_of(small)["user"]["username"] == "admin"


def test_server_errors_hide_their_details_and_client_errors_show_them() -> None:
    hidden = PlatformError("secret detail: password=hunter2", details={"sql": "SELECT secret"}).to_dict()
    assert hidden == {
        "type": "PlatformError",
        "status": 500,
        "message": "internal error; see the platform logs",
    }
    unavailable = Unavailable("postgresql://admin:pw@db failed").to_dict()
    assert "pw@db" not in str(unavailable)
    assert unavailable["status"] == 503

    shown = ValidationFailed("invalid NewUser", details=[{"loc": ["role"], "msg": "bad"}]).to_dict()
    assert shown == {
        "type": "ValidationFailed",
        "status": 422,
        "message": "invalid NewUser",
        "details": [{"loc": ["role"], "msg": "bad"}],
    }


# --- logs ---------------------------------------------------------------------------------------


def test_logs_of_an_empty_bucket_are_empty_for_every_reader(door: FrontDoor) -> None:
    for reader in USERS:  # every role reads logs (each only its own: tests/test_log_scope.py)
        headers = door.auth(reader)
        assert json_of(door.client.get("/api/logs", headers=headers)) == {"records": []}
        assert json_of(door.client.get("/api/logs/services", headers=headers)) == {"services": []}
    filtered = door.client.get(
        "/api/logs?service=cam-1&level=warning&since=1h&grep=boom", headers=door.auth("admin")
    )
    assert json_of(filtered) == {"records": []}


def test_logs_refuse_an_unknown_level_naming_it(door: FrontDoor) -> None:
    response = door.client.get("/api/logs?level=nonsense", headers=door.auth("admin"))
    error = error_of(response, 400)  # a query parameter is part of the request, not its content
    assert field_names(error) == ["level"]
    assert "unknown level 'nonsense'" in error["details"][0]["msg"]

    error = error_of(door.client.get("/api/logs?limit=0", headers=door.auth("admin")), 400)
    assert field_names(error) == ["limit"]


API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
# The "who" column's words for a public route and for every role.
WHO_WORDS: dict[str, list[Role]] = {"anyone": [], "any role": sorted(Role), "every role": sorted(Role)}


def api_page_routes(page: str) -> dict[tuple[str, str], list[str]]:
    """(method, path) → the roles of each row of docs/api.md's route table (``[]``: anyone);
    what a role's parentheses say (``(own models)``) is its owner rule, not another role."""
    routes = {}
    for method, path, who in re.findall(
        r"^\| (GET|POST|PUT|PATCH|DELETE) \| `([^`]+)` \| ([^|]+) \|", page, re.M
    ):
        named = re.sub(r"\([^)]*\)", "", who).strip()
        roles = (
            WHO_WORDS[named]
            if named in WHO_WORDS
            else sorted(Role(part.strip()) for part in named.split(","))
        )
        assert (method, path) not in routes, f"{method} {path} is in docs/api.md's table twice"
        routes[(method, path)] = [role.value for role in roles]
    return routes


def as_written(parameter: re.Match[str]) -> str:
    """A path parameter as docs/api.md writes it: ``<id>`` for any ``…_id``, else ``<name>``."""
    return "<id>" if parameter[1].endswith("_id") else f"<{parameter[1]}>"


def test_the_api_page_route_table_is_the_openapi_document(tmp_path: Path) -> None:
    """Each row of docs/api.md's table (method, path, roles) is an operation of the served OpenAPI
    document with those roles, and each operation of the document (which covers the url map,
    ``tests/test_openapi.py``) a row of the table."""
    with temporary_settings(
        {"home": str(tmp_path), "database.url": f"sqlite:///{tmp_path / 'r.db'}"}
    ) as current:
        database = Database(current.database_url)
        try:
            app = build_front_door(current, database)
            document = json_of(app.test_client().get("/api/openapi.json"))
        finally:
            database.stop()
    served = {
        (method.upper(), re.sub(r"{(\w+)}", as_written, path)): operation["x-roles"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    page = {
        route: roles
        for route, roles in api_page_routes(API_PAGE.read_text()).items()
        if route[1].startswith("/api/")
    }
    assert sorted(set(served) - set(page)) == [], "operations missing from docs/api.md's route table"
    assert sorted(set(page) - set(served)) == [], "rows of docs/api.md's route table the API does not have"
    wrong = {route: (page[route], roles) for route, roles in served.items() if page[route] != roles}
    assert wrong == {}, "docs/api.md's roles (first) differ from the document's x-roles"
    assert len(served) >= 45
