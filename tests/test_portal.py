"""The portal's pages through Flask's test client: sessions, CSRF and every page's role rule.

Runs on the front door app alone (a migrated SQLite registry, no bus), so it costs seconds;
the browser walks of each role's flow are in ``tests/test_portal_e2e.py`` on the shared platform.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from platform_core.auth import SESSION_COOKIE, Role, access_rule, is_page
from platform_sdk.errors import ValidationFailed
from platform_sdk.settings import Settings
from tests.test_front_door import (
    API_PAGE,
    PASSWORD,
    PUBLIC_PAGES,
    USERS,
    FrontDoor,
    api_page_routes,
    as_written,
    concrete_requests,
    front_door,
    seed_registry,
    unique_name,
)
from web import identity
from web.portal.core import PRESESSION_COOKIE
from web.portal.developer import try_inputs


@pytest.fixture(scope="module")
def portal_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('portal') / 'registry.db'}"
    seed_registry(url, USERS)
    return url


@pytest.fixture
def door(settings: Settings, portal_url: str) -> Iterator[FrontDoor]:
    with front_door(portal_url) as built:
        yield built


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, html
    return found[1]


def sign_in(client: FlaskClient, username: str, password: str = PASSWORD) -> str:
    """Sign in through the form; the CSRF token of the signed-in pages."""
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert response.status_code == 303, response.get_data(as_text=True)
    return csrf_of(client.get("/account/password").get_data(as_text=True))


def new_user(door: FrontDoor, role: Role) -> str:
    """A new user of ``role`` (password ``PASSWORD``) that no other test signs in."""
    name = unique_name()
    with door.database.session() as session:
        identity.create_user(session, name, PASSWORD, role)
    return name


def page_requests(door: FrontDoor) -> list[tuple[str, str, str]]:
    return [
        request
        for request in concrete_requests(door.app)
        if is_page(door.app.view_functions[request[0]]) and request[0] not in PUBLIC_PAGES
    ]


def test_sign_in_sets_an_httponly_samesite_session_cookie_and_shows_the_role_navigation(
    door: FrontDoor,
) -> None:
    client = door.client
    page = client.get("/login")
    assert page.status_code == 200
    assert "HttpOnly" in page.headers["Set-Cookie"]
    assert PRESESSION_COOKIE in page.headers["Set-Cookie"]
    token = csrf_of(page.get_data(as_text=True))
    response = client.post("/login", data={"username": "enduser", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 303
    cookie = next(
        value for value in response.headers.getlist("Set-Cookie") if value.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    home = client.get("/").get_data(as_text=True)
    assert "Schedule an app" in home
    assert "Mail" in home
    assert "Users" not in home
    assert "Devices" not in home


def test_over_tls_the_session_cookie_is_secure(door: FrontDoor) -> None:
    client = door.client
    page = client.get("/login", base_url="https://portal.example")
    token = csrf_of(page.get_data(as_text=True))
    response = client.post(
        "/login",
        data={"username": "aidev", "password": PASSWORD, "csrf_token": token},
        base_url="https://portal.example",
    )
    cookie = next(
        value for value in response.headers.getlist("Set-Cookie") if value.startswith(SESSION_COOKIE)
    )
    assert "Secure" in cookie


def test_a_wrong_password_is_said_on_the_form_and_no_session_starts(door: FrontDoor) -> None:
    client = door.client
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", data={"username": "enduser", "password": "nope-nope", "csrf_token": token}
    )
    assert response.status_code == 401
    assert identity.LOGIN_FAILURE in response.get_data(as_text=True)
    assert client.get("/").status_code == 303


def test_every_page_sends_an_anonymous_caller_to_sign_in(door: FrontDoor) -> None:
    requests = page_requests(door)
    assert len(requests) >= 20
    for _endpoint, method, path in requests:
        response = door.client.open(path, method=method)
        if path.endswith(".json"):
            assert response.status_code == 401, path
            continue
        assert response.status_code == 303, f"{method} {path}"
        assert response.headers["Location"].startswith("/login"), f"{method} {path}"


def test_every_page_refuses_a_role_it_does_not_allow_with_a_403_page(door: FrontDoor) -> None:
    for username, role in USERS.items():
        client = door.app.test_client()
        csrf = sign_in(client, username)
        for endpoint, method, path in page_requests(door):
            rule = access_rule(door.app.view_functions[endpoint])
            if rule is None or role in rule:
                continue
            response = client.open(path, method=method, data={"csrf_token": csrf})
            assert response.status_code == 403, f"{username} {method} {path}"
            if not path.endswith(".json"):
                text = response.get_data(as_text=True)
                assert "Not allowed" in text, path
                assert f"role {role.value} may not" in text, path


def test_a_form_without_its_csrf_token_is_refused_with_a_403_page(door: FrontDoor) -> None:
    client = door.app.test_client()
    csrf = sign_in(client, "admin")
    newcomer = unique_name()
    form = {"username": newcomer, "password": "long enough password", "role": "end_user"}
    for sent in ({}, {"csrf_token": "0" * 64}):
        refused = client.post("/users", data=form | sent)
        assert refused.status_code == 403
        assert "CSRF" in refused.get_data(as_text=True)
    assert newcomer not in client.get("/users").get_data(as_text=True)
    created = client.post("/users", data=form | {"csrf_token": csrf})
    assert created.status_code == 303
    assert newcomer in client.get(created.headers["Location"]).get_data(as_text=True)
    # Signing in needs the pre-session's token too (no login CSRF).
    anonymous = door.app.test_client()
    assert anonymous.post("/login", data={"username": "admin", "password": PASSWORD}).status_code == 403


def test_bad_input_names_the_field_and_reason_on_the_page(door: FrontDoor) -> None:
    client = door.app.test_client()
    csrf = sign_in(client, "admin")
    response = client.post(
        "/users", data={"username": "Bad Name", "password": "short", "role": "wizard", "csrf_token": csrf}
    )
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    assert "<code>role</code>" in text
    assert "Input should be" in text


def test_the_api_never_takes_the_session_cookie(door: FrontDoor) -> None:
    client = door.app.test_client()
    sign_in(client, "admin")
    assert client.get("/api/auth/me").status_code == 401
    assert (
        client.post(
            "/api/users", json={"username": unique_name(), "password": "x" * 12, "role": "end_user"}
        ).status_code
        == 401
    )


def test_disabling_a_user_or_signing_out_ends_the_session(door: FrontDoor) -> None:
    name = new_user(door, Role.END_USER)
    client = door.app.test_client()
    sign_in(client, name)
    assert client.get("/mail").status_code == 200
    with door.database.session() as session:
        identity.set_disabled(session, name)
    ended = client.get("/mail")
    assert ended.status_code == 303
    assert "why=signed-out" in ended.headers["Location"]

    admin = door.app.test_client()
    csrf = sign_in(admin, "admin")
    assert admin.post("/logout", data={"csrf_token": csrf}).status_code == 303
    assert admin.get("/users").status_code == 303


def test_a_password_change_keeps_this_session_and_reports_the_others_ended(door: FrontDoor) -> None:
    name = new_user(door, Role.APP_DEVELOPER)
    other = door.app.test_client()
    sign_in(other, name)
    client = door.app.test_client()
    csrf = sign_in(client, name)
    new = "a brand new password"
    mismatch = client.post(
        "/account/password",
        data={"current_password": PASSWORD, "new_password": new, "repeat": "other", "csrf_token": csrf},
    )
    assert mismatch.status_code == 422
    assert "<code>repeat</code>" in mismatch.get_data(as_text=True)
    changed = client.post(
        "/account/password",
        data={"current_password": PASSWORD, "new_password": new, "repeat": new, "csrf_token": csrf},
        follow_redirects=True,
    )
    assert "Password changed; 1 other session(s) ended." in changed.get_data(as_text=True)
    assert other.get("/apps").status_code == 303
    assert client.get("/account/password").status_code == 200


def test_the_static_files_are_served_without_a_session(door: FrontDoor) -> None:
    for name, expected in (("portal.css", "max-width"), ("portal.js", "data-poll")):
        with door.client.get(f"/static/{name}") as served:
            assert served.status_code == 200
            assert expected in served.get_data(as_text=True)
    with door.client.get("/static/../app.py") as outside:
        assert outside.status_code == 404


def test_a_schedule_preview_names_each_field_the_scheduler_refuses(door: FrontDoor) -> None:
    client = door.app.test_client()
    csrf = sign_in(client, "enduser")
    form = {
        "app": "some-app",
        "location": "home",
        "mode": "times",
        "times": "08:00, 25:00",
        "csrf_token": csrf,
    }
    response = client.post("/schedules/new", data=form | {"action": "preview"})
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    assert "<code>times[1]</code>" in text
    assert "25:00" in text
    assert 'value="08:00, 25:00"' in text  # what was typed stays in the form


def test_the_page_table_of_docs_api_md_is_the_pages_served(door: FrontDoor) -> None:
    """Each row of docs/api.md's page table (method, path, roles) is a page route with that role rule,
    and each page route a row."""
    served = {}
    for rule in door.app.url_map.iter_rules():
        view = door.app.view_functions[rule.endpoint]
        if not is_page(view):
            continue
        rule_roles = access_rule(view)
        assert rule_roles is not None
        path = re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", as_written, rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            served[(method, path)] = sorted(role.value for role in rule_roles)
    documented = {
        route: roles
        for route, roles in api_page_routes(API_PAGE.read_text()).items()
        if not route[1].startswith("/api/")
    }
    assert sorted(set(served) - set(documented)) == [], "pages missing from docs/api.md's page table"
    assert sorted(set(documented) - set(served)) == [], (
        "rows of docs/api.md's page table the portal does not have"
    )
    assert {route: roles for route, roles in served.items() if documented[route] != roles} == {}


def test_the_try_it_form_parses_inputs_by_their_type_and_names_what_does_not_parse() -> None:
    spec = {
        "temperature": {"type": "float"},
        "count": {"type": "int"},
        "on": {"type": "bool"},
        "tags": {"type": "list"},
        "note": {"type": "string"},
        "image": {"type": "image"},
    }
    form = {"input.temperature": "21.5", "input.count": "3", "input.on": "on", "input.tags": '["a"]'}
    assert try_inputs(spec, form, {}) == {"temperature": 21.5, "count": 3, "on": True, "tags": ["a"]}
    with pytest.raises(ValidationFailed) as refused:
        try_inputs(spec, {"input.temperature": "warm", "input.count": "2.5"}, {})
    assert [problem["field"] for problem in refused.value.details] == ["inputs.temperature", "inputs.count"]
    assert refused.value.details[0]["reason"] == "not a float: 'warm'"


def test_signing_in_goes_on_to_a_page_of_the_portal_only(door: FrontDoor) -> None:
    for target, landing in (
        ("/mail", "/mail"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/\tevil", "/"),
    ):
        client = door.app.test_client()
        token = csrf_of(client.get("/login").get_data(as_text=True))
        form = {"username": "enduser", "password": PASSWORD, "csrf_token": token, "next": target}
        response = client.post("/login", data=form)
        assert response.status_code == 303, target
        assert response.headers["Location"] == landing, target


def test_a_configurer_changes_a_role_and_it_applies_to_the_users_next_page(door: FrontDoor) -> None:
    name = new_user(door, Role.END_USER)
    theirs = door.app.test_client()
    sign_in(theirs, name)
    assert theirs.get("/models").status_code == 403
    admin = door.app.test_client()
    csrf = sign_in(admin, "admin")
    changed = admin.post(f"/users/{name}/role", data={"role": "app_developer", "csrf_token": csrf})
    assert changed.status_code == 303
    assert f"User {name} now has the role app developer." in admin.get(changed.headers["Location"]).get_data(
        as_text=True
    )
    assert theirs.get("/models").status_code == 200  # the same session, the new role
    unknown = admin.post(f"/users/{name}/role", data={"role": "wizard", "csrf_token": csrf})
    assert unknown.status_code == 422
    assert "<code>role</code>" in unknown.get_data(as_text=True)
    yourself = door.client.post(
        "/api/users/admin/role",
        json={"role": "end_user"},
        headers={"Authorization": f"Bearer {door.token('admin')}"},
    )
    assert yourself.status_code == 422
    assert "your own role" in yourself.get_data(as_text=True)
