"""The portal's machinery: its blueprint, the session cookie, CSRF tokens, calls to the API, pages.

Owns the ``portal`` blueprint every page module adds its routes to, and what they share:

- **Session**: signing in (``web.identity.Accounts.login``, with its throttle) issues an API token
  of the same kind as ``POST /api/auth/login`` and keeps its secret in the ``aiot_session`` cookie
  (HttpOnly, SameSite=Lax, Secure when the request came over TLS). Every page is marked ``@page``
  (``platform_core.auth``): the front door's guard reads that page's token from the cookie (never
  from a bearer header) and applies the page's role rule as for any route, so an expired token, a
  revoked one or a disabled user ends the session at the next page. ``/api`` routes never read the
  cookie, so a cross-site request cannot ride on it there.
- **CSRF**: every form carries ``csrf_token``, the SHA-256 of a secret only this browser holds in an
  HttpOnly cookie (the session's token; before signing in, the ``aiot_presession`` cookie the
  sign-in page sets). A POST to a page without the matching token is refused with a 403 page.
- **The API**: pages do what the ``/api`` routes do by calling them in this process (``api``): the
  same route functions, validation, owner rules and bus requests, as the signed-in user (their
  session token as the bearer). An API error comes back as the ``PlatformError`` it was, so a
  page shows its message and the fields its details name.
- **Errors**: a page that is not signed in redirects to the sign-in page; a wrong role, a refused
  form or any other error renders the error page with its status (never a JSON body, never a 500
  with details). The ``*.json`` endpoints pages poll answer errors as the API does.

A request flows: the front door's guard (session cookie → ``Principal``, role rule) → the CSRF check
of a POST (``_check_csrf``) → the page function → ``api(...)`` calls → ``render(template, ...)``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import flask
import werkzeug.test
from pydantic import BaseModel, ValidationError
from werkzeug.wrappers import Response

from platform_core.auth import SESSION_COOKIE, Principal, access_rule, is_page, page, public, session_token
from platform_core.http import error_response
from platform_sdk.errors import Forbidden, PlatformError, Unauthorized, ValidationFailed, error_from_status
from web.identity_api import accounts

HERE = Path(__file__).resolve().parent
PRESESSION_COOKIE = "aiot_presession"
CSRF_FIELD = "csrf_token"
CSRF_REFUSED = (
    "this form did not carry the portal's security token (CSRF): it did not come from a portal page "
    "of this browser session; reload the page and send it again"
)

blueprint = flask.Blueprint("portal", __name__, template_folder="templates")


@blueprint.get("/static/<path:filename>")
@public
@page
def static(filename: str) -> Response:
    """The portal's CSS and script, served from the package (no CDN)."""
    return flask.send_from_directory(HERE / "static", filename, max_age=300)


# --- session and CSRF ----------------------------------------------------------------------------


def csrf_token() -> str:
    """The token this browser's forms carry: derived from its HttpOnly session (or pre-session) secret."""
    secret = session_token(flask.request) or flask.g.get("presession") or ""
    return _csrf_of(secret) if secret else ""


def _csrf_of(secret: str) -> str:
    return hashlib.sha256(b"aiot-portal-csrf:" + secret.encode()).hexdigest()


def _secure() -> bool:
    return flask.request.is_secure


def set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, httponly=True, samesite="Lax", secure=_secure(), path="/"
    )


def ensure_presession() -> str:
    """The pre-session secret of this browser (made now if it has none; ``after_request`` sets it)."""
    found = flask.request.cookies.get(PRESESSION_COOKIE) or flask.g.get("presession")
    if not found:
        found = secrets.token_urlsafe(32)
        flask.g.new_presession = found
    flask.g.presession = found
    return found


@blueprint.after_request
def _cookies(response: Response) -> Response:
    fresh = flask.g.get("new_presession")
    if fresh:
        set_cookie(response, PRESESSION_COOKIE, fresh, None)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    )
    return response


@blueprint.before_request
def _check_csrf() -> None:
    """A POST to a page must carry the CSRF token of this browser's session (or pre-session)."""
    if flask.request.method != "POST":
        return
    view = flask.current_app.view_functions.get(flask.request.endpoint or "")
    if view is None or not is_page(view):
        return
    secret = (
        session_token(flask.request) if access_rule(view) else flask.request.cookies.get(PRESESSION_COOKIE)
    )
    sent = flask.request.form.get(CSRF_FIELD, "")
    if not secret or not sent or not hmac.compare_digest(sent, _csrf_of(secret)):
        raise Forbidden(CSRF_REFUSED)


# --- calling the API as the signed-in user -------------------------------------------------------


def api(method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer of ``method path`` on this front door's own API, as the signed-in user.

    ``kwargs`` go to the request (``json=``, ``data=``, ``headers=``, ``query_string=``). An error
    answer is raised as its ``PlatformError`` (``ValidationFailed`` with its ``details`` ...).
    """
    app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
    token = session_token(flask.request) or flask.g.get("issued_token") or ""
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    environ = {"REMOTE_ADDR": flask.request.remote_addr or "unknown"}
    with app.app_context():  # its own flask.g: the page's is left alone
        response = werkzeug.test.Client(app).open(
            path, method=method, headers=headers, environ_base=environ, **kwargs
        )
    body = response.get_json(silent=True)
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise error_from_status(
            response.status_code, str(error.get("message") or response.status), error.get("details")
        )
    return body


def form_as(model: type[Any], data: dict[str, Any]) -> Any:
    """``data`` (from a form) as ``model``; ``ValidationFailed`` naming each field and reason."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(
            f"invalid {model.__name__}",
            details=exc.errors(include_url=False, include_context=False, include_input=False),
        ) from exc


def problems(error: PlatformError) -> list[tuple[str, str]]:
    """(field, reason) of each problem an error's details name (pydantic's or the platform's)."""
    details = error.details
    if isinstance(details, dict):
        details = details.get("problems") or details.get("errors") or [details]
    found = []
    for item in details if isinstance(details, list) else []:
        if not isinstance(item, dict):
            continue
        if "loc" in item:
            field = ".".join(str(part) for part in item["loc"])
            found.append((field or "(document)", str(item.get("msg", "")).removeprefix("Value error, ")))
        elif "reason" in item or "field" in item:
            where = " / ".join(str(item[key]) for key in ("file", "field") if item.get(key))
            found.append((where or "(document)", str(item.get("reason", ""))))
    return found


# --- rendering -----------------------------------------------------------------------------------

NAVIGATION: tuple[tuple[str, str], ...] = (
    ("portal.home", "Home"),
    ("portal.users", "Users"),
    ("portal.devices", "Devices"),
    ("portal.nodes", "Nodes"),
    ("portal.models", "Models"),
    ("portal.device_types", "Device types"),
    ("portal.apps", "Apps"),
    ("portal.schedules", "Schedules"),
    ("portal.new_schedule", "Schedule an app"),
    ("portal.mail", "Mail"),
    ("portal.logs", "Logs"),
    ("portal.password", "Password"),
)


def current() -> Principal:
    principal: Principal | None = flask.g.get("principal")
    if principal is None:
        raise Unauthorized("not signed in: sign in at /login")
    return principal


def may(endpoint: str, principal: Principal | None = None) -> bool:
    """Whether the signed-in user's role may open ``endpoint`` (its own role rule decides)."""
    who = principal or flask.g.get("principal")
    view = flask.current_app.view_functions.get(endpoint)
    rule = access_rule(view) if view is not None else None
    return who is not None and rule is not None and who.role in rule


def navigation() -> list[tuple[str, str, bool]]:
    """(url, label, current?) of the pages the signed-in role may open."""
    here = flask.request.endpoint
    return [
        (flask.url_for(endpoint), label, endpoint == here) for endpoint, label in NAVIGATION if may(endpoint)
    ]


def render(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    principal = flask.g.get("principal")
    context.setdefault("notice", flask.request.args.get("notice", "")[:300])
    page_html = flask.render_template(
        template,
        principal=principal,
        nav=navigation() if principal else [],
        csrf=csrf_token(),
        csrf_field=CSRF_FIELD,
        may=may,
        **context,
    )
    return page_html, status


def done(endpoint: str, notice: str, **values: Any) -> Response:
    """Back to ``endpoint`` after a form succeeded (POST/redirect/GET), saying what happened."""
    return flask.redirect(flask.url_for(endpoint, notice=notice, **values), 303)


def safe_next(target: str | None) -> str:
    """``target`` when it is a path of this site, else the home page (no open redirect)."""
    # "//host" and "/\\host" are other sites to a browser; a control character could hide either.
    target = target or ""
    local = target.startswith("/") and not target.startswith("//")
    if local and target.isprintable() and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return flask.url_for("portal.home")


def _signed_in() -> Principal | None:
    """The session's user, for an error page's navigation (None when there is none)."""
    token = session_token(flask.request)
    if not token:
        return None
    try:
        principal: Principal | None = accounts().authenticate(token)
    except PlatformError:
        return None
    return principal


@blueprint.errorhandler(PlatformError)
def _page_error(error: PlatformError) -> Response | tuple[str, int] | tuple[flask.Response, int]:
    if flask.request.path.endswith(".json"):
        return error_response(error)
    if isinstance(error, Unauthorized):
        target = flask.request.full_path.rstrip("?") if flask.request.method == "GET" else None
        ended = session_token(flask.request) is not None  # a session that expired or was revoked
        why = "signed-out" if ended else None
        response = flask.redirect(flask.url_for("portal.sign_in", next=target, why=why), 303)
        if ended:
            response.delete_cookie(SESSION_COOKIE, path="/")
        return response
    if flask.g.get("principal") is None:  # refused by the guard: still show who is signed in
        flask.g.principal = _signed_in()
    message = error.message if error.status < 500 else "something went wrong on the platform; it is logged"
    return render("error.html", error.status, message=message, problems=problems(error), code=error.status)


def form_page(
    template: str, build: Callable[[], dict[str, Any]], error: PlatformError | None = None, **extra: Any
) -> tuple[str, int]:
    """Render a page with forms: with an error, at its status, naming each field and reason."""
    status = error.status if error is not None else 200
    context = build()
    if error is not None:
        context |= {"error": error.message, "problems": problems(error)}
    return render(template, status, **context, **extra)


def perform(
    action: Callable[[], str], template: str, build: Callable[[], dict[str, Any]], back: str, **values: Any
) -> Response | tuple[str, int]:
    """Run a form's ``action`` (its notice on success): then back to ``back``, or the ``template``
    page again with the error naming each field and reason."""
    try:
        notice = action()
    except PlatformError as error:
        return form_page(template, build, error)
    return done(back, notice, **values)


class Model(BaseModel):
    """Base of the portal's form models: unknown fields (the CSRF token, buttons) are ignored."""
