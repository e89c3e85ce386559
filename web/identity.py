"""Identity: users with roles, hashed passwords and revocable API tokens.

Layered as schema (typed tables) → CRUD functions taking a session → routes
(``web.identity_api``). Passwords are hashed with argon2id (argon2-cffi);
API tokens are random 256-bit secrets shown once and stored only as their
SHA-256, which is enough for a secret of that strength and keeps the
per-request check fast. A disabled user's tokens stop working at once. A login
may name the token it replaces (the CLI's earlier session of the same profile):
that token is revoked in the login's transaction, once the password is checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Mapped, Session, mapped_column

from platform_core.auth import Authenticator, Principal, Role
from platform_core.db import Base, Database, utcnow
from platform_sdk.errors import BadRequest, Conflict, NotFound, Unauthorized

USERNAME = re.compile(r"^[a-z][a-z0-9_.-]{1,62}$")
MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "aiot_"
_hasher = PasswordHasher()


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


@dataclass(frozen=True)
class UserView:
    """What the API shows of a user (never the hash)."""

    id: int
    username: str
    role: Role
    email: str | None
    disabled: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserView:
        return cls(user.id, user.username, Role(user.role), user.email, user.disabled, user.created_at)


@dataclass(frozen=True)
class IssuedToken:
    """A new API token; ``secret`` is shown this once and never stored.

    ``replaced`` is the id of the token the login revoked in its place, if it named one that exists.
    """

    id: int
    name: str
    secret: str
    user: UserView
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
    user = read_user(session, username)
    user.disabled = disabled
    return UserView.of(user)


def issue_token(session: Session, user: User, name: str) -> IssuedToken:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, name=name, token_hash=_hash_token(secret))
    session.add(token)
    session.flush()
    return IssuedToken(token.id, name, secret, UserView.of(user))


def login(
    session: Session, username: str, password: str, token_name: str = "login", replaces: str | None = None
) -> IssuedToken:
    """Check a password and issue a token; the same error for every failure, so names don't leak.

    ``replaces``, the secret of the token this login takes the place of, is revoked once the
    password is checked (a failed login leaves it working).
    """
    failure = Unauthorized("wrong username or password, or the user is disabled")
    user = session.scalar(sa.select(User).where(User.username == username))
    if user is None or user.disabled:
        _hasher.hash(password)  # spend the same time as a real check
        raise failure
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise failure from None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    issued = issue_token(session, user, token_name)
    if replaces:
        issued = dataclasses.replace(issued, replaced=revoke_secret(session, replaces))
    return issued


def authenticate(session: Session, secret: str) -> Principal | None:
    """The caller a token belongs to, or None for an unknown, revoked or disabled one."""
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
    token.last_used_at = utcnow()
    return Principal(user.id, user.username, Role(user.role), token.id, user.email)


def revoke_token(session: Session, user_id: int, token_id: int) -> None:
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != user_id:
        raise NotFound(f"no token {token_id} of this user")
    token.revoked_at = token.revoked_at or utcnow()


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
    def check(secret: str) -> Principal | None:
        with database.session() as session:
            return authenticate(session, secret)

    return check


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
