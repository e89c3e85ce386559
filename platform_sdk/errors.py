"""The platform's error tree: one root, ``PlatformError``, and one subclass per HTTP status.

Each subclass also inherits the matching built-in (``NotFound`` is a
``LookupError``), so callers can catch either. Servers turn them into JSON
bodies (``{"error": {"type", "message", "status", "details"}}``) and hide the
text of 5xx errors; clients turn a status back into the typed exception with
``error_from_status``. Third-party exceptions are translated at the adapter
that meets them and never reach a user as they are.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PlatformError(Exception):
    """Root of every error the platform raises on purpose."""

    status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self, *, expose: bool | None = None) -> dict[str, Any]:
        """The JSON body a server sends; 5xx messages are hidden unless ``expose``."""
        show = self.status < 500 if expose is None else expose
        body: dict[str, Any] = {
            "type": type(self).__name__,
            "status": self.status,
            "message": self.message if show else "internal error; see the platform logs",
        }
        if show and self.details is not None:
            body["details"] = self.details
        return body


class BadRequest(PlatformError, ValueError):
    """The request is malformed: missing field, wrong type, unsafe content."""

    status = 400


class Unauthorized(PlatformError, PermissionError):
    """No valid credentials: log in or pass a valid token."""

    status = 401


class Forbidden(PlatformError, PermissionError):
    """Authenticated, but the role does not allow this."""

    status = 403


class NotFound(PlatformError, LookupError):
    """The named thing does not exist."""

    status = 404


class Conflict(PlatformError, ValueError):
    """The request clashes with what exists (a duplicate name, a stale state)."""

    status = 409


class PayloadTooLarge(PlatformError, ValueError):
    """The upload is larger than the platform accepts."""

    status = 413


class ValidationFailed(PlatformError, ValueError):
    """The content is well-formed but invalid; ``details`` lists each field and reason."""

    status = 422


class Unavailable(PlatformError, ConnectionError):
    """A component the request needs (broker, database, bucket) cannot be reached."""

    status = 503


class Timeout(PlatformError, TimeoutError):
    """No answer came within the time allowed."""

    status = 504


_BY_STATUS: dict[int, type[PlatformError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        ValidationFailed,
        Unavailable,
        Timeout,
    )
}


def error_from_status(status: int, message: str, details: Any = None) -> PlatformError:
    """The typed error for an HTTP status (or a reply's status) and its message."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = BadRequest if 400 <= status < 500 else PlatformError
    return cls(message, details=details)
