"""The portal's front: the home page, signing in and out, and changing one's password.

Signing in goes through ``web.identity.Accounts.login`` (argon2 check, throttle per user and
address, the login token lifetime) and keeps the issued token's secret in the session cookie;
signing out revokes that token through ``POST /api/auth/logout``; a password change is
``POST /api/auth/password`` (the user's other sessions and tokens end, this one stays).
"""

from __future__ import annotations

import flask
from pydantic import Field
from werkzeug.wrappers import Response

from platform_core.auth import SESSION_COOKIE, allow_any_role, page, public, session_token
from platform_sdk.errors import PlatformError, ValidationFailed
from web import identity
from web.identity_api import MAX_PASSWORD_LENGTH, accounts
from web.portal.core import (
    Model,
    api,
    blueprint,
    current,
    done,
    ensure_presession,
    form_as,
    form_page,
    render,
    safe_next,
    set_cookie,
)

PORTAL_TOKEN_NAME = "portal"


class SignIn(Model):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class NewPassword(Model):
    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    new_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    repeat: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


@blueprint.get("/")
@allow_any_role
@page
def home() -> tuple[str, int]:
    """What the signed-in user may do, as cards."""
    return render("home.html", principal_role=current().role.value)


WHY = {
    "signed-out": "Your session ended (signed out, expired or disabled): sign in again.",
    "bye": "You are signed out.",
}


@blueprint.get("/login")
@public
@page
def sign_in() -> Response | tuple[str, int]:
    """The sign-in form (a signed-in browser goes on to the portal)."""
    token = session_token(flask.request)
    if token and accounts().authenticate(token) is not None:
        return flask.redirect(safe_next(flask.request.args.get("next")), 303)
    ensure_presession()
    return _sign_in_page(None)


def _sign_in_page(error: PlatformError | None, username: str = "") -> tuple[str, int]:
    def build() -> dict[str, object]:
        return {
            "next": flask.request.values.get("next", ""),
            "username": username,
            "why": WHY.get(flask.request.args.get("why", ""), ""),
        }

    return form_page("sign_in.html", build, error)


@blueprint.post("/login")
@public
@page
def sign_in_post() -> Response | tuple[str, int]:
    """Check the password (throttled) and start a session; a failure re-renders the form saying why."""
    ensure_presession()
    username = flask.request.form.get("username", "")[:64]
    try:
        form = form_as(SignIn, flask.request.form.to_dict())
        issued = accounts().login(
            form.username, form.password, flask.request.remote_addr or "unknown", PORTAL_TOKEN_NAME
        )
    except PlatformError as error:
        response_body, status = _sign_in_page(error, username)
        refused = flask.make_response(response_body, status)
        if isinstance(error, identity.LoginThrottled):
            refused.headers["Retry-After"] = str(error.retry_after_s)
        return refused
    response: Response = flask.redirect(safe_next(flask.request.form.get("next")), 303)
    lifetime = int((issued.expires_at - accounts().clock()).total_seconds())
    set_cookie(response, SESSION_COOKIE, issued.secret, max(lifetime, 0))
    return response


@blueprint.post("/logout")
@allow_any_role
@page
def sign_out() -> Response:
    """Revoke the session's token and forget the cookie."""
    api("POST", "/api/auth/logout")
    response = flask.redirect(flask.url_for("portal.sign_in", why="bye"), 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@blueprint.get("/account/password")
@allow_any_role
@page
def password() -> tuple[str, int]:
    return render("password.html")


@blueprint.post("/account/password")
@allow_any_role
@page
def password_post() -> Response | tuple[str, int]:
    """Change one's own password; the other sessions of the user end."""
    try:
        form = form_as(NewPassword, flask.request.form.to_dict())
        if form.new_password != form.repeat:
            raise ValidationFailed(
                "the new password and its repetition differ",
                details=[{"field": "repeat", "reason": "differs from the new password"}],
            )
        answer = api(
            "POST",
            "/api/auth/password",
            json={"current_password": form.current_password, "new_password": form.new_password},
        )
    except PlatformError as error:
        return form_page("password.html", dict, error)
    return done("portal.password", f"Password changed; {answer['revoked_tokens']} other session(s) ended.")
