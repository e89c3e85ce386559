"""Identity's CRUD layer on both backends: users, passwords, tokens, the first configurer."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from platform_core.auth import Principal, Role
from platform_core.db import Database
from platform_sdk.errors import BadRequest, Conflict, NotFound, Unauthorized
from web import identity

PASSWORD = "correct horse battery"


def add_user(database: Database, username: str, role: Role = Role.AI_DEVELOPER) -> identity.UserView:
    with database.session() as session:
        return identity.create_user(session, username, PASSWORD, role)


def login(database: Database, username: str, password: str = PASSWORD) -> identity.IssuedToken:
    with database.session() as session:
        return identity.login(session, username, password)


def issue(database: Database, username: str) -> identity.IssuedToken:
    """A token of ``username`` without a password check (argon2 is slow on purpose)."""
    with database.session() as session:
        return identity.issue_token(session, identity.read_user(session, username), "test")


def authenticate(database: Database, secret: str) -> Principal | None:
    return identity.database_authenticator(database)(secret)


def test_create_user_and_a_duplicate_name_conflicts(database: Database) -> None:
    created = add_user(database, "alice", Role.APP_DEVELOPER)
    assert (created.username, created.role, created.disabled) == ("alice", Role.APP_DEVELOPER, False)
    assert created.created_at.tzinfo is not None

    with pytest.raises(Conflict, match="user 'alice' already exists"), database.session() as session:
        identity.create_user(session, "alice", "another password", Role.END_USER)

    with database.session() as session:
        users = identity.list_users(session)
    assert [(user.username, user.role) for user in users] == [("alice", Role.APP_DEVELOPER)]


@pytest.mark.parametrize(
    "username",
    ["", "a", "Alice", "1alice", "_alice", "al ice", "alice!", "ali/ce", "a" * 64, "élise"],
)
def test_an_invalid_username_is_a_bad_request_naming_it(username: str) -> None:
    # Validation happens before the database is touched, so no backend is needed.
    with pytest.raises(BadRequest, match=r"username .* is invalid: use 2-63 lowercase letters") as caught:
        identity.validate_username(username)
    assert repr(username) in caught.value.message


def test_create_user_refuses_a_bad_username_or_a_short_password(database: Database) -> None:
    with pytest.raises(BadRequest, match="username 'Bad Name' is invalid"), database.session() as session:
        identity.create_user(session, "Bad Name", PASSWORD, Role.END_USER)
    with (
        pytest.raises(BadRequest, match="password is too short: use at least 8"),
        database.session() as session,
    ):
        identity.create_user(session, "shorty", "1234567", Role.END_USER)
    with database.session() as session:
        assert identity.count_users(session) == 0


def test_login_failures_all_say_the_same_thing(database: Database) -> None:
    add_user(database, "alice")
    add_user(database, "bob")
    with database.session() as session:
        identity.set_disabled(session, "bob")

    messages = []
    for username, password in [("alice", "wrong password"), ("nobody", PASSWORD), ("bob", PASSWORD)]:
        with pytest.raises(Unauthorized) as caught:
            login(database, username, password)
        assert caught.value.status == 401
        messages.append(caught.value.message)
    assert messages == ["wrong username or password, or the user is disabled"] * 3

    assert login(database, "alice").user.username == "alice"


def test_passwords_are_stored_as_argon2_hashes_only(database: Database) -> None:
    add_user(database, "alice")
    with database.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM users")).mappings().all()
    assert len(rows) == 1
    stored = rows[0]["password_hash"]
    assert stored.startswith("$argon2id$")
    assert PasswordHasher().verify(stored, PASSWORD)
    assert all(PASSWORD not in str(value) for value in rows[0].values())


def test_an_issued_token_authenticates_to_its_own_user(database: Database) -> None:
    alice = add_user(database, "alice", Role.PLATFORM_CONFIGURER)
    bob = add_user(database, "bob", Role.END_USER)
    alice_token = issue(database, "alice")
    bob_token = issue(database, "bob")
    assert alice_token.secret.startswith(identity.TOKEN_PREFIX)
    assert alice_token.secret != bob_token.secret

    assert authenticate(database, alice_token.secret) == Principal(
        alice.id, "alice", Role.PLATFORM_CONFIGURER, alice_token.id
    )
    assert authenticate(database, bob_token.secret) == Principal(bob.id, "bob", Role.END_USER, bob_token.id)
    assert authenticate(database, "aiot_not-a-token") is None
    assert authenticate(database, "") is None

    with database.session() as session:
        (stored,) = identity.list_tokens(session, alice.id)
    assert stored.token_hash != alice_token.secret  # only a hash is kept
    assert alice_token.secret not in stored.token_hash
    assert stored.last_used_at is not None  # authenticating records the use


def test_a_revoked_token_stops_working_and_others_keep_working(database: Database) -> None:
    alice = add_user(database, "alice")
    first = issue(database, "alice")
    second = issue(database, "alice")
    with database.session() as session:
        identity.revoke_token(session, alice.id, first.id)

    assert authenticate(database, first.secret) is None
    assert authenticate(database, second.secret) is not None


def test_a_user_cannot_revoke_someone_elses_token(database: Database) -> None:
    add_user(database, "alice")
    mallory = add_user(database, "mallory")
    alice_token = issue(database, "alice")
    with pytest.raises(NotFound), database.session() as session:
        identity.revoke_token(session, mallory.id, alice_token.id)
    assert authenticate(database, alice_token.secret) is not None


def test_disabling_revokes_a_users_tokens_and_enabling_revives_none(database: Database) -> None:
    add_user(database, "alice")
    token = issue(database, "alice")
    with database.session() as session:
        assert identity.set_disabled(session, "alice").disabled

    assert authenticate(database, token.secret) is None

    with database.session() as session:
        identity.set_disabled(session, "alice", disabled=False)
    assert authenticate(database, token.secret) is None  # still revoked
    assert authenticate(database, login(database, "alice").secret) is not None  # a new login works


def test_first_configurer_gets_a_generated_password_shown_once(database: Database) -> None:
    generated = identity.ensure_first_configurer(database, "admin", None)
    assert generated is not None
    assert len(generated) >= identity.MIN_PASSWORD_LENGTH

    with database.session() as session:
        users = identity.list_users(session)
    assert [(user.username, user.role) for user in users] == [("admin", Role.PLATFORM_CONFIGURER)]
    assert login(database, "admin", generated).user.role is Role.PLATFORM_CONFIGURER

    assert identity.ensure_first_configurer(database, "admin", None) is None  # never shown again
    with database.session() as session:
        assert identity.count_users(session) == 1


def test_first_configurer_uses_the_configured_password(database: Database) -> None:
    assert identity.ensure_first_configurer(database, "root", "configured secret") is None
    assert login(database, "root", "configured secret").user.role is Role.PLATFORM_CONFIGURER


def test_first_configurer_does_nothing_when_users_exist(database: Database) -> None:
    add_user(database, "alice", Role.END_USER)
    assert identity.ensure_first_configurer(database, "admin", None) is None
    with database.session() as session:
        assert [user.username for user in identity.list_users(session)] == ["alice"]
