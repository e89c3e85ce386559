"""Routes of identity: log in and out, API tokens, passwords, and user management (configurers only).

Routes reach the front door's ``identity.Accounts`` (throttle, clock, token lifetimes) through
``accounts()``; ``web.app.build_front_door`` installs it with ``install_accounts``.
"""

from __future__ import annotations

from datetime import datetime

import flask
from pydantic import BaseModel, Field

from platform_core.auth import Role, allow, allow_any_role, current_principal, public
from platform_core.http import body_as, error_response, resources, shapes
from platform_sdk.errors import ValidationFailed
from web import identity

blueprint = flask.Blueprint("identity", __name__, url_prefix="/api")
_ACCOUNTS_KEY = "aiot.accounts"
MAX_PASSWORD_LENGTH = 1024


def install_accounts(app: flask.Flask, accounts: identity.Accounts) -> None:
    app.extensions[_ACCOUNTS_KEY] = accounts


def accounts() -> identity.Accounts:
    """The accounts of the app serving the current request."""
    found: identity.Accounts = flask.current_app.extensions[_ACCOUNTS_KEY]
    return found


def _client_address() -> str:
    return flask.request.remote_addr or "unknown"


class LoginRequest(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=MAX_PASSWORD_LENGTH)
    token_name: str = Field(default="login", max_length=64)
    # The token this login takes the place of (a CLI profile's earlier session): revoked on success.
    replaces: str | None = Field(default=None, max_length=256)


class NewUser(BaseModel):
    username: str
    password: str = Field(max_length=MAX_PASSWORD_LENGTH)
    role: Role
    email: str | None = Field(default=None, max_length=255)


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    # Seconds the token is valid; default auth.api_token_lifetime_s, at most auth.api_token_max_lifetime_s.
    expires_in_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=MAX_PASSWORD_LENGTH)
    new_password: str = Field(max_length=MAX_PASSWORD_LENGTH)


class RoleChange(BaseModel):
    role: Role


class PasswordReset(BaseModel):
    password: str = Field(max_length=MAX_PASSWORD_LENGTH)


# --- what the routes answer (declared for the OpenAPI document) ---------------------------------


class UserAnswer(BaseModel):
    user: identity.UserView


class UserList(BaseModel):
    users: list[identity.UserView]


class LoginAnswer(BaseModel):
    token: str = Field(description="The new token's secret, shown this once.")
    token_id: int
    user: identity.UserView
    replaced: int | None = Field(description="The id of the token `replaces` named, if there was one.")
    expires_at: datetime


class TokenJson(BaseModel):
    """One of the caller's tokens, never its secret."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime
    revoked: bool


class TokenList(BaseModel):
    tokens: list[TokenJson]


class NewTokenAnswer(BaseModel):
    token: str = Field(description="The secret, shown this once.")
    token_id: int
    name: str
    expires_at: datetime


class Revoked(BaseModel):
    revoked: int = Field(description="The id of the token revoked.")


class PasswordChanged(BaseModel):
    changed: bool
    revoked_tokens: int = Field(description="How many of the caller's other tokens were revoked.")


class PasswordResetAnswer(BaseModel):
    user: identity.UserView
    revoked_tokens: int = Field(description="How many of the user's tokens were revoked.")


class Health(BaseModel):
    status: str


def _user_json(user: identity.UserView) -> dict[str, object]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role.value,
        "email": user.email,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat(),
    }


@blueprint.get("/health")
@public
@shapes(response=Health)
def health() -> flask.Response:
    """Liveness of the front door."""
    return flask.jsonify(status="ok")


@blueprint.post("/auth/login")
@public
@shapes(response=LoginAnswer)
def login() -> flask.Response | tuple[flask.Response, int]:
    """Exchange a username and password for an API token, revoking the token it ``replaces``.

    Too many failures for the username or from the address: 429 with ``Retry-After``.
    """
    body = body_as(LoginRequest)
    try:
        issued = accounts().login(
            body.username, body.password, _client_address(), body.token_name, body.replaces
        )
    except identity.LoginThrottled as throttled:
        return _throttled(throttled)
    return flask.jsonify(
        token=issued.secret,
        token_id=issued.id,
        user=_user_json(issued.user),
        replaced=issued.replaced,
        expires_at=issued.expires_at.isoformat(),
    )


def _throttled(throttled: identity.LoginThrottled) -> tuple[flask.Response, int]:
    response, status = error_response(throttled)
    response.headers["Retry-After"] = str(throttled.retry_after_s)
    return response, status


@blueprint.post("/auth/password")
@allow_any_role
@shapes(response=PasswordChanged)
def change_password() -> flask.Response | tuple[flask.Response, int]:
    """Change the caller's own password (the current one checked); their other tokens are revoked."""
    body = body_as(PasswordChange)
    principal = current_principal()
    try:
        revoked = accounts().change_password(
            principal, _client_address(), body.current_password, body.new_password
        )
    except identity.LoginThrottled as throttled:
        return _throttled(throttled)
    return flask.jsonify(changed=True, revoked_tokens=revoked)


@blueprint.post("/auth/logout")
@allow_any_role
@shapes(response=Revoked)
def logout() -> flask.Response:
    """Revoke the token this request came with."""
    principal = current_principal()
    with resources().database.session() as session:
        identity.revoke_token(session, principal.user_id, principal.token_id)
    return flask.jsonify(revoked=principal.token_id)


@blueprint.get("/auth/me")
@allow_any_role
@shapes(response=UserAnswer)
def me() -> flask.Response:
    """Who the token belongs to."""
    principal = current_principal()
    with resources().database.session() as session:
        user = identity.UserView.of(identity.read_user(session, principal.username))
    return flask.jsonify(user=_user_json(user))


@blueprint.get("/auth/tokens")
@allow_any_role
@shapes(response=TokenList)
def list_tokens() -> flask.Response:
    """The caller's tokens (never their secrets)."""
    principal = current_principal()
    with resources().database.session() as session:
        tokens = identity.list_tokens(session, principal.user_id)
        rows = [
            {
                "id": token.id,
                "name": token.name,
                "created_at": token.created_at.isoformat(),
                "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
                "expires_at": token.expires_at.isoformat(),
                "revoked": token.revoked_at is not None,
            }
            for token in tokens
        ]
    return flask.jsonify(tokens=rows)


@blueprint.post("/auth/tokens")
@allow_any_role
@shapes(response=NewTokenAnswer)
def create_token() -> tuple[flask.Response, int]:
    """A new named API token for scripts, valid ``expires_in_s`` (capped); its secret is shown once."""
    body = body_as(NewToken)
    issued = accounts().issue_named(current_principal(), body.name, body.expires_in_s)
    return flask.jsonify(
        token=issued.secret, token_id=issued.id, name=issued.name, expires_at=issued.expires_at.isoformat()
    ), 201


@blueprint.delete("/auth/tokens/<int:token_id>")
@allow_any_role
@shapes(response=Revoked)
def revoke_token(token_id: int) -> flask.Response:
    """Revoke one of the caller's tokens."""
    principal = current_principal()
    with resources().database.session() as session:
        identity.revoke_token(session, principal.user_id, token_id)
    return flask.jsonify(revoked=token_id)


@blueprint.get("/users")
@allow(Role.PLATFORM_CONFIGURER)
@shapes(response=UserList)
def list_users() -> flask.Response:
    """Every user."""
    with resources().database.session() as session:
        users = identity.list_users(session)
    return flask.jsonify(users=[_user_json(user) for user in users])


@blueprint.post("/users")
@allow(Role.PLATFORM_CONFIGURER)
@shapes(response=UserAnswer)
def create_user() -> tuple[flask.Response, int]:
    """Register a user with a role."""
    body = body_as(NewUser)
    with resources().database.session() as session:
        user = identity.create_user(session, body.username, body.password, body.role, body.email)
    return flask.jsonify(user=_user_json(user)), 201


@blueprint.post("/users/<username>/disable")
@allow(Role.PLATFORM_CONFIGURER)
@shapes(response=UserAnswer)
def disable_user(username: str) -> flask.Response:
    """Disable a user; their tokens are revoked at once (enabling them again revives none)."""
    if username == current_principal().username:
        raise ValidationFailed("you cannot disable yourself; ask another platform configurer")
    with resources().database.session() as session:
        user = identity.set_disabled(session, username, disabled=True)
    return flask.jsonify(user=_user_json(user))


@blueprint.post("/users/<username>/enable")
@allow(Role.PLATFORM_CONFIGURER)
@shapes(response=UserAnswer)
def enable_user(username: str) -> flask.Response:
    """Enable a disabled user again; they log in anew (their old tokens stay revoked)."""
    with resources().database.session() as session:
        user = identity.set_disabled(session, username, disabled=False)
    return flask.jsonify(user=_user_json(user))


@blueprint.post("/users/<username>/password")
@allow(Role.PLATFORM_CONFIGURER)
@shapes(response=PasswordResetAnswer)
def reset_password(username: str) -> flask.Response:
    """Set another user's password; every token of theirs is revoked."""
    if username == current_principal().username:
        raise ValidationFailed(
            "reset another user's password, not your own: change yours with POST /api/auth/password "
            "(`aiot password`)"
        )
    body = body_as(PasswordReset)
    with resources().database.session() as session:
        revoked = identity.reset_password(session, username, body.password)
        user = identity.UserView.of(identity.read_user(session, username))
    return flask.jsonify(user=_user_json(user), revoked_tokens=revoked)


@blueprint.post("/users/<username>/role")
@allow(Role.PLATFORM_CONFIGURER)
@shapes(response=UserAnswer)
def change_role(username: str) -> flask.Response:
    """Give another user another role, from their next request on (not yourself)."""
    if username == current_principal().username:
        raise ValidationFailed(
            "you cannot change your own role; ask another platform configurer",
            details=[{"field": "role", "reason": "not your own"}],
        )
    body = body_as(RoleChange)
    with resources().database.session() as session:
        user = identity.set_role(session, username, body.role)
    return flask.jsonify(user=_user_json(user))
