"""Roles and the one guard every HTTP route goes through.

Each view declares who may call it, with ``@allow(Role...)``, ``@allow_any_role``
or ``@public``. The HTTP app factory refuses to build an app with a route that
declares nothing, and its request hook enforces the rule: no, unknown or
revoked token (logged out, or replaced by a newer login) → 401, a role not
allowed → 403. An ``/api`` route takes its token from ``Authorization: Bearer``
only; a portal page (marked ``@page``) only from the ``aiot_session`` cookie, so a
cookie never authenticates an API call (no cross-site request can ride on it).
Who a token belongs to is answered by the
``Authenticator`` the app is built with (``web.identity`` provides the
database-backed one), so this module holds the mechanism, not the users.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import flask

from platform_sdk.errors import Forbidden, Unauthorized
from platform_sdk.roles import Role

__all__ = [
    "ALL_ROLES",
    "PUBLIC",
    "Authenticator",
    "Principal",
    "Role",
    "access_rule",
    "allow",
    "allow_any_role",
    "check_access",
    "current_principal",
    "is_page",
    "page",
    "public",
    "session_token",
]

ALL_ROLES = frozenset(Role)
PUBLIC = frozenset[Role]()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request (``email``: their address, if they gave one)."""

    user_id: int
    username: str
    role: Role
    token_id: int
    email: str | None = None


Authenticator = Callable[[str], Principal | None]
View = TypeVar("View", bound=Callable[..., Any])
ACCESS_ATTR = "_aiot_access"
PAGE_ATTR = "_aiot_page"
SESSION_COOKIE = "aiot_session"


def allow(*roles: Role) -> Callable[[View], View]:
    """Only callers with one of ``roles`` may call the view."""
    if not roles:
        raise ValueError("allow() needs at least one role; use @public for open routes")

    def mark(view: View) -> View:
        setattr(view, ACCESS_ATTR, frozenset(roles))
        return view

    return mark


def allow_any_role(view: View) -> View:
    """Any authenticated caller may call the view."""
    setattr(view, ACCESS_ATTR, ALL_ROLES)
    return view


def public(view: View) -> View:
    """Anyone may call the view, without a token (health, login)."""
    setattr(view, ACCESS_ATTR, PUBLIC)
    return view


def page(view: View) -> View:
    """The view is a portal page: its caller's token is the session cookie, never a bearer header."""
    setattr(view, PAGE_ATTR, True)
    return view


def is_page(view: Callable[..., Any]) -> bool:
    return bool(getattr(view, PAGE_ATTR, False))


def session_token(request: flask.Request) -> str | None:
    """The portal session's token (an API token of the same kind, held in an HttpOnly cookie)."""
    return request.cookies.get(SESSION_COOKIE) or None


def access_rule(view: Callable[..., Any]) -> frozenset[Role] | None:
    rule: frozenset[Role] | None = getattr(view, ACCESS_ATTR, None)
    return rule


def bearer_token(request: flask.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_access(
    view: Callable[..., Any], request: flask.Request, authenticate: Authenticator
) -> Principal | None:
    """The caller of ``request`` if ``view``'s rule lets them in; raises 401/403 otherwise."""
    rule = access_rule(view)
    if rule is None:
        raise Forbidden(f"route {request.path} declares no role rule")
    if rule is PUBLIC or not rule:
        return None
    if is_page(view):
        token = session_token(request)
        if token is None:
            raise Unauthorized("not signed in: sign in at /login")
    else:
        token = bearer_token(request)
    if token is None:
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>' (see `aiot login`)")
    principal = authenticate(token)
    if principal is None:
        raise Unauthorized("invalid, expired or revoked token; log in again with `aiot login`")
    if principal.role not in rule:
        allowed = ", ".join(sorted(rule))
        raise Forbidden(
            f"role {principal.role} may not call {request.method} {request.path} (allowed: {allowed})"
        )
    return principal


def current_principal() -> Principal:
    """The authenticated caller of the current request (routes with a role rule only)."""
    principal: Principal | None = flask.g.get("principal")
    if principal is None:
        raise Unauthorized("this route needs an authenticated caller")
    return principal
