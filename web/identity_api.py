"""Routes of identity: log in and out, API tokens, and user management (configurers only)."""

from __future__ import annotations

import flask
from pydantic import BaseModel, Field

from platform_core.auth import Role, allow, allow_any_role, current_principal, public
from platform_core.http import body_as, resources
from platform_sdk.errors import ValidationFailed
from web import identity

blueprint = flask.Blueprint("identity", __name__, url_prefix="/api")


class LoginRequest(BaseModel):
    username: str
    password: str
    token_name: str = Field(default="login", max_length=64)
    # The token this login takes the place of (a CLI profile's earlier session): revoked on success.
    replaces: str | None = Field(default=None, max_length=256)


class NewUser(BaseModel):
    username: str
    password: str
    role: Role
    email: str | None = Field(default=None, max_length=255)


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=64)


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
def health() -> flask.Response:
    """Liveness of the front door."""
    return flask.jsonify(status="ok")


@blueprint.post("/auth/login")
@public
def login() -> flask.Response:
    """Exchange a username and password for an API token, revoking the token it ``replaces``."""
    body = body_as(LoginRequest)
    with resources().database.session() as session:
        issued = identity.login(session, body.username, body.password, body.token_name, body.replaces)
    return flask.jsonify(
        token=issued.secret, token_id=issued.id, user=_user_json(issued.user), replaced=issued.replaced
    )


@blueprint.post("/auth/logout")
@allow_any_role
def logout() -> flask.Response:
    """Revoke the token this request came with."""
    principal = current_principal()
    with resources().database.session() as session:
        identity.revoke_token(session, principal.user_id, principal.token_id)
    return flask.jsonify(revoked=principal.token_id)


@blueprint.get("/auth/me")
@allow_any_role
def me() -> flask.Response:
    """Who the token belongs to."""
    principal = current_principal()
    with resources().database.session() as session:
        user = identity.UserView.of(identity.read_user(session, principal.username))
    return flask.jsonify(user=_user_json(user))


@blueprint.get("/auth/tokens")
@allow_any_role
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
                "revoked": token.revoked_at is not None,
            }
            for token in tokens
        ]
    return flask.jsonify(tokens=rows)


@blueprint.post("/auth/tokens")
@allow_any_role
def create_token() -> tuple[flask.Response, int]:
    """A new named API token for scripts; its secret is shown once."""
    body = body_as(NewToken)
    principal = current_principal()
    with resources().database.session() as session:
        issued = identity.issue_token(session, identity.read_user(session, principal.username), body.name)
    return flask.jsonify(token=issued.secret, token_id=issued.id, name=issued.name), 201


@blueprint.delete("/auth/tokens/<int:token_id>")
@allow_any_role
def revoke_token(token_id: int) -> flask.Response:
    """Revoke one of the caller's tokens."""
    principal = current_principal()
    with resources().database.session() as session:
        identity.revoke_token(session, principal.user_id, token_id)
    return flask.jsonify(revoked=token_id)


@blueprint.get("/users")
@allow(Role.PLATFORM_CONFIGURER)
def list_users() -> flask.Response:
    """Every user."""
    with resources().database.session() as session:
        users = identity.list_users(session)
    return flask.jsonify(users=[_user_json(user) for user in users])


@blueprint.post("/users")
@allow(Role.PLATFORM_CONFIGURER)
def create_user() -> tuple[flask.Response, int]:
    """Register a user with a role."""
    body = body_as(NewUser)
    with resources().database.session() as session:
        user = identity.create_user(session, body.username, body.password, body.role, body.email)
    return flask.jsonify(user=_user_json(user)), 201


@blueprint.post("/users/<username>/disable")
@allow(Role.PLATFORM_CONFIGURER)
def disable_user(username: str) -> flask.Response:
    """Disable a user; their tokens stop working at once."""
    if username == current_principal().username:
        raise ValidationFailed("you cannot disable yourself; ask another platform configurer")
    with resources().database.session() as session:
        user = identity.set_disabled(session, username, disabled=True)
    return flask.jsonify(user=_user_json(user))


@blueprint.post("/users/<username>/enable")
@allow(Role.PLATFORM_CONFIGURER)
def enable_user(username: str) -> flask.Response:
    """Enable a disabled user again."""
    with resources().database.session() as session:
        user = identity.set_disabled(session, username, disabled=False)
    return flask.jsonify(user=_user_json(user))
