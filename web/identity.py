"""Identity: users with roles, hashed passwords and revocable, expiring API tokens.

Layered as schema (typed tables) → CRUD functions taking a session → ``Accounts``, the
front door's object that applies the settings (token lifetimes, login throttling) with
its clock → routes (``web.identity_api``). Passwords are hashed with argon2id
(argon2-cffi); API tokens are random 256-bit secrets shown once and stored only as their
SHA-256, which is enough for a secret of that strength and keeps the per-request check
fast. Every token expires (``expires_at``): an expired one is refused with a 401 that
says so. Disabling a user revokes their tokens, so enabling them again revives none; a
password change revokes the user's other tokens, a reset by a configurer all of them. A
login may name the token it replaces (the CLI's earlier session of the same profile):
that token is revoked in the login's transaction, once the password is checked.

Failed logins are counted per username and per client address by ``LoginThrottle``
(see there for why in memory); past the limit, logins are refused with 429 and a
``Retry-After`` until the lock-out ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Mapped, Session, mapped_column

from platform_core.auth import Authenticator, Principal, Role
from platform_core.db import Base, Database, utcnow
from platform_sdk.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PlatformError,
    Unauthorized,
    ValidationFailed,
)
from platform_sdk.settings import AuthSettings

USERNAME = re.compile(r"^[a-z][a-z0-9_.-]{1,62}$")
MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "aiot_"
_hasher = PasswordHasher()
Clock = Callable[[], datetime]
"""What tells the time (UTC, aware): ``utcnow`` in service, a settable one in tests."""


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    role: Mapped[str] = mapped_column(sa.String(32))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    email: Mapped[str | None] = mapped_column(sa.String(255))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]


class UserView(BaseModel):
    """What the API shows of a user (never the hash); also the routes' declared answer."""

    model_config = ConfigDict(frozen=True)

    id: int
    username: str
    role: Role
    email: str | None
    disabled: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserView:
        return cls(
            id=user.id,
            username=user.username,
            role=Role(user.role),
            email=user.email,
            disabled=user.disabled,
            created_at=user.created_at,
        )


@dataclass(frozen=True)
class IssuedToken:
    """A new API token; ``secret`` is shown this once and never stored.

    ``replaced`` is the id of the token the login revoked in its place, if it named one that exists.
    """

    id: int
    name: str
    secret: str
    user: UserView
    expires_at: datetime
    replaced: int | None = None


def _hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_username(username: str) -> str:
    if not USERNAME.match(username):
        raise BadRequest(
            f"username {username!r} is invalid: use 2-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter"
        )
    return username


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"password is too short: use at least {MIN_PASSWORD_LENGTH} characters")
    return password


def create_user(
    session: Session, username: str, password: str, role: Role, email: str | None = None
) -> UserView:
    validate_username(username)
    validate_password(password)
    if session.scalar(sa.select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, role=role.value, password_hash=_hasher.hash(password), email=email)
    session.add(user)
    session.flush()
    return UserView.of(user)


def read_user(session: Session, username: str) -> User:
    user = session.scalar(sa.select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def list_users(session: Session) -> list[UserView]:
    return [UserView.of(user) for user in session.scalars(sa.select(User).order_by(User.id))]


def count_users(session: Session) -> int:
    return session.scalar(sa.select(sa.func.count(User.id))) or 0


def set_disabled(session: Session, username: str, disabled: bool = True) -> UserView:
    """Disable (revoking every token of the user: enabling them again revives none) or enable."""
    user = read_user(session, username)
    user.disabled = disabled
    if disabled:
        revoke_all(session, user.id)
    return UserView.of(user)


def set_role(session: Session, username: str, role: Role) -> UserView:
    """Give a user another role; it applies to their next request (tokens carry no role: every
    request reads it with the user), so their sessions and tokens stay."""
    user = read_user(session, username)
    user.role = role.value
    return UserView.of(user)


def default_expiry() -> datetime:
    """When a token issued now expires by the default of ``auth.token_lifetime_s`` (for callers
    without settings, such as tests; the front door's ``Accounts`` applies the configured one)."""
    return utcnow() + timedelta(seconds=AuthSettings().token_lifetime_s)


def issue_token(session: Session, user: User, name: str, expires_at: datetime | None = None) -> IssuedToken:
    """A new token of ``user``, valid until ``expires_at`` (default: ``default_expiry()``)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = expires_at or default_expiry()
    token = ApiToken(user_id=user.id, name=name, token_hash=_hash_token(secret), expires_at=expires)
    session.add(token)
    session.flush()
    return IssuedToken(token.id, name, secret, UserView.of(user), expires)


LOGIN_FAILURE = "wrong username or password, or the user is disabled"


def _check_password(user: User | None, password: str) -> User:
    """``user`` when ``password`` is theirs and they are enabled; else the same 401 for every cause."""
    if user is None or user.disabled:
        _hasher.hash(password)  # spend the same time as a real check
        raise Unauthorized(LOGIN_FAILURE)
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise Unauthorized(LOGIN_FAILURE) from None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def login(
    session: Session,
    username: str,
    password: str,
    token_name: str = "login",
    replaces: str | None = None,
    expires_at: datetime | None = None,
) -> IssuedToken:
    """Check a password and issue a token; the same error for every failure, so names don't leak.

    ``replaces``, the secret of the token this login takes the place of, is revoked once the
    password is checked (a failed login leaves it working).
    """
    user = _check_password(session.scalar(sa.select(User).where(User.username == username)), password)
    issued = issue_token(session, user, token_name, expires_at)
    if replaces:
        issued = dataclasses.replace(issued, replaced=revoke_secret(session, replaces))
    return issued


def authenticate(session: Session, secret: str, now: datetime | None = None) -> Principal | None:
    """The caller a token belongs to, or None for an unknown, revoked or disabled one.

    An expired token raises ``Unauthorized`` saying so, and when: its holder logs in again.
    """
    row = session.execute(
        sa.select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == _hash_token(secret))
    ).first()
    if row is None:
        return None
    token, user = row
    if token.revoked_at is not None or user.disabled:
        return None
    now = now or utcnow()
    if token.expires_at <= now:
        raise Unauthorized(
            f"token expired at {token.expires_at.isoformat(timespec='seconds')}: log in again with "
            "`aiot login` (a script's API token: create a new one, POST /api/auth/tokens)"
        )
    token.last_used_at = now
    return Principal(user.id, user.username, Role(user.role), token.id, user.email)


def revoke_token(session: Session, user_id: int, token_id: int) -> None:
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != user_id:
        raise NotFound(f"no token {token_id} of this user")
    token.revoked_at = token.revoked_at or utcnow()


def revoke_all(session: Session, user_id: int, keep: int | None = None) -> int:
    """Revoke every live token of a user but ``keep`` (a token id); how many were revoked."""
    query = sa.update(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
    if keep is not None:
        query = query.where(ApiToken.id != keep)
    result = session.execute(
        query.values(revoked_at=utcnow()), execution_options={"synchronize_session": False}
    )
    return int(getattr(result, "rowcount", 0) or 0)


def set_password(user: User, password: str) -> None:
    user.password_hash = _hasher.hash(validate_password(password))


def change_password(session: Session, user_id: int, token_id: int, current: str, new: str) -> int:
    """A user changes their own password (``current`` checked); their tokens but ``token_id`` are
    revoked. How many were revoked."""
    user = _check_password(session.get(User, user_id), current)
    if current == new:
        raise ValidationFailed("the new password is the current one: choose another")
    set_password(user, new)
    return revoke_all(session, user.id, keep=token_id)


def reset_password(session: Session, username: str, password: str) -> int:
    """A configurer sets another user's password; every token of that user is revoked (how many)."""
    user = read_user(session, username)
    set_password(user, password)
    return revoke_all(session, user.id)


def revoke_secret(session: Session, secret: str) -> int | None:
    """Revoke the token with this secret, whoever it belongs to (holding it is the right to end it).

    Its id, or None when no token has this secret.
    """
    token = session.scalar(sa.select(ApiToken).where(ApiToken.token_hash == _hash_token(secret)))
    if token is None:
        return None
    token.revoked_at = token.revoked_at or utcnow()
    return token.id


def list_tokens(session: Session, user_id: int) -> list[ApiToken]:
    return list(session.scalars(sa.select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)))


def database_authenticator(database: Database) -> Authenticator:
    """Token checks on ``database`` by the real clock (the front door uses ``Accounts.authenticate``)."""

    def check(secret: str) -> Principal | None:
        with database.session() as session:
            return authenticate(session, secret)

    return check


class LoginThrottled(PlatformError):
    """Too many failed logins for a username or from an address: try again after ``retry_after_s``."""

    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, details={"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


@dataclass
class _Failures:
    limit: int
    since: datetime
    count: int = 0
    locked_until: datetime | None = None


class LoginThrottle:
    """Failed logins per username and per client address, and the lock-outs they earn.

    Kept in memory, in a table of at most ``auth.login_tracked`` keys owned by the front
    door's ``Accounts`` (no module state), rather than in the database: the front door runs
    as one process (the roster places one ``web``), so one table sees every login; a wrong
    password then costs no database write; and a restart that forgets the counts gives a
    guesser one more window at most. The table is ordered by last attempt: keys whose window
    and lock-out have passed are dropped first, and when it is full the least recently
    failing key goes, so neither a flood of usernames nor of addresses grows it.

    A username is locked after ``auth.login_attempts`` failures within ``auth.login_window_s``,
    an address after ``auth.login_address_attempts``, each for ``auth.login_lockout_s``; a
    locked login is refused before its password is checked. Each attempt counts as a failure
    from the moment it is let through (``attempt``), so logins checked at once on the server's
    threads cannot exceed the limit; a success then clears the username's count and takes the
    attempt back from the address's (one's own account must not wash away guesses at others),
    and an attempt that ended for another reason (the database down) is taken back (``refund``).
    """

    def __init__(self, settings: AuthSettings, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _keys(self, username: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("user", username), ("address", address)

    def attempt(self, username: str, address: str) -> None:
        """Let a login through, counted as failed until it succeeds; ``LoginThrottled`` while the
        username or the address is locked out."""
        now = self.clock()
        user_key, address_key = self._keys(username, address)
        with self._lock:
            self._refuse_if_locked(user_key, f"user {username!r}", now)
            self._refuse_if_locked(address_key, "this address", now)
            self._prune(now)
            self._count(user_key, self.settings.login_attempts, now)
            self._count(address_key, self.settings.login_address_attempts, now)

    def succeeded(self, username: str, address: str) -> None:
        user_key, address_key = self._keys(username, address)
        with self._lock:
            self._entries.pop(user_key, None)
            self._take_back(address_key)

    def refund(self, username: str, address: str) -> None:
        """Take back an attempt that ended neither in success nor in a wrong password."""
        with self._lock:
            for key in self._keys(username, address):
                self._take_back(key)

    def _refuse_if_locked(self, key: tuple[str, str], what: str, now: datetime) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.locked_until is None:
            return
        if entry.locked_until <= now:
            del self._entries[key]  # served its time: a fresh window
            return
        wait = max(1, math.ceil((entry.locked_until - now).total_seconds()))
        raise LoginThrottled(
            f"too many failed logins for {what}: try again in {wait} s "
            f"(after {entry.locked_until.isoformat(timespec='seconds')})",
            wait,
        )

    def _count(self, key: tuple[str, str], limit: int, now: datetime) -> None:
        window = timedelta(seconds=self.settings.login_window_s)
        entry = self._entries.pop(key, None)
        if entry is None or now - entry.since >= window:
            entry = _Failures(limit, now)
        entry.count += 1
        if entry.count >= limit:
            entry.locked_until = now + timedelta(seconds=self.settings.login_lockout_s)
        while len(self._entries) >= self.settings.login_tracked:
            self._entries.popitem(last=False)
        self._entries[key] = entry

    def _take_back(self, key: tuple[str, str]) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.count -= 1
        if entry.count < entry.limit:
            entry.locked_until = None
        if entry.count <= 0:
            del self._entries[key]

    def _prune(self, now: datetime) -> None:
        """Drop the oldest keys while their window and lock-out are over."""
        window = timedelta(seconds=self.settings.login_window_s)
        while self._entries:
            entry = next(iter(self._entries.values()))
            if now - entry.since < window or (entry.locked_until is not None and entry.locked_until > now):
                return
            self._entries.popitem(last=False)


class Accounts:
    """The front door's accounts: token checks, logins and passwords under ``auth`` settings.

    Holds the clock every expiry is measured with and the ``LoginThrottle``; one per front
    door app (``web.app.build_front_door``), reached by routes through
    ``web.identity_api.accounts()``.
    """

    def __init__(self, database: Database, settings: AuthSettings, clock: Clock = utcnow) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self.throttle = LoginThrottle(settings, clock)

    def authenticate(self, secret: str) -> Principal | None:
        """The ``Authenticator`` of the front door (see ``authenticate``)."""
        with self.database.session() as session:
            return authenticate(session, secret, self.clock())

    def login(
        self,
        username: str,
        password: str,
        address: str,
        token_name: str = "login",
        replaces: str | None = None,
    ) -> IssuedToken:
        """``login`` behind the throttle, issuing a token of ``auth.token_lifetime_s``."""
        expires = self.clock() + timedelta(seconds=self.settings.token_lifetime_s)
        with self._throttled(username, address), self.database.session() as session:
            return login(session, username, password, token_name, replaces, expires)

    def issue_named(self, principal: Principal, name: str, expires_in_s: float | None) -> IssuedToken:
        """A named API token of the caller for ``expires_in_s`` (default ``auth.api_token_lifetime_s``)."""
        longest = self.settings.api_token_max_lifetime_s
        lifetime = min(self.settings.api_token_lifetime_s, longest) if expires_in_s is None else expires_in_s
        if lifetime > longest:
            raise ValidationFailed(
                f"expires_in_s {expires_in_s:g} is longer than the longest lifetime allowed, "
                f"{longest:g} s (auth.api_token_max_lifetime_s): ask for less"
            )
        expires = self.clock() + timedelta(seconds=lifetime)
        with self.database.session() as session:
            return issue_token(session, read_user(session, principal.username), name, expires)

    def change_password(self, principal: Principal, address: str, current: str, new: str) -> int:
        """``change_password`` behind the throttle: a wrong current password counts as a failed login."""
        try:
            with self._throttled(principal.username, address), self.database.session() as session:
                return change_password(session, principal.user_id, principal.token_id, current, new)
        except Unauthorized:
            raise ValidationFailed(
                "the current password is wrong: give the one you log in with "
                "(forgotten? a platform configurer can reset it)"
            ) from None

    @contextlib.contextmanager
    def _throttled(self, username: str, address: str) -> Iterator[None]:
        """A password check as one throttled attempt: ``Unauthorized`` leaves it counted as failed."""
        self.throttle.attempt(username, address)
        try:
            yield
        except Unauthorized:
            raise
        except BaseException:
            self.throttle.refund(username, address)
            raise
        self.throttle.succeeded(username, address)


def ensure_first_configurer(database: Database, username: str, password: str | None) -> str | None:
    """Create the first platform configurer when there are no users.

    Returns the generated password when none was configured (the caller prints it once),
    else None. Does nothing when any user exists.
    """
    with database.session() as session:
        if count_users(session):
            return None
        generated = None if password else secrets.token_urlsafe(12)
        create_user(session, username, password or generated or "", Role.PLATFORM_CONFIGURER)
        return generated
