"""The registry database on both backends: migrations, sessions, UTC datetimes, SQLite WAL."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import web.identity  # registers the identity tables on Base.metadata
from platform_core.auth import Role
from platform_core.db import SCHEMA_HEAD, Database, UTCDateTime, load_all_models
from platform_sdk.errors import Conflict, Unavailable
from platform_sdk.net import free_port
from web.identity import ApiToken, User


def head_revision(database: Database) -> str | None:
    return ScriptDirectory.from_config(database.alembic_config()).get_current_head()


def usernames(database: Database) -> list[str]:
    with database.session() as session:
        return list(session.scalars(sa.select(User.username).order_by(User.username)))


def raw_user(username: str, **columns: object) -> User:
    """A user row straight into the table (no validation, no hashing: fast)."""
    return User(username=username, role="end_user", password_hash="not-a-real-hash", **columns)


def test_migrate_brings_an_empty_database_to_head_matching_the_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert database.current_revision() is None
        database.migrate()
        head = head_revision(database)
        assert head is not None
        assert database.current_revision() == head
        with database.engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), load_all_models())
        assert differences == [], f"migrations and models differ: {differences}"
        assert {"users", "api_tokens"} <= set(sa.inspect(database.engine).get_table_names())
    finally:
        database.stop()


def test_schema_head_is_alembics_head_and_ensure_schema_migrates_only_when_behind(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert head_revision(database) == SCHEMA_HEAD, "bump platform_core.db.SCHEMA_HEAD with the migration"
        database.ensure_schema()  # empty: migrated
        assert database.current_revision() == SCHEMA_HEAD
    finally:
        database.stop()
    # A service starting on a current schema: no Alembic in its process (about 10 MB each).
    probe = (
        "import sys; from platform_core.db import Database; d = Database(sys.argv[1]); d.ensure_schema(); "
        "d.stop(); print('alembic' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, database_url], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False", done.stderr


def test_migrating_again_is_a_no_op_that_keeps_rows(database: Database) -> None:
    with database.session() as session:
        web.identity.create_user(session, "alice", "correct horse", Role.AI_DEVELOPER)
    revision = database.current_revision()

    database.migrate()

    assert database.current_revision() == revision
    assert usernames(database) == ["alice"]
    with database.session() as session:
        web.identity.login(session, "alice", "correct horse")  # the password still works


def test_session_commits_at_the_end_and_rolls_back_on_error(database: Database) -> None:
    with database.session() as session:
        session.add(raw_user("kept"))

    def fail_midway() -> None:
        with database.session() as session:
            session.add(raw_user("dropped"))
            session.flush()  # the row reached the database inside the transaction...
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    assert usernames(database) == ["kept"]  # ...and was rolled back with it


def test_session_turns_a_unique_clash_into_conflict_and_keeps_nothing(database: Database) -> None:
    with database.session() as session:
        session.add(raw_user("taken"))

    def add_clashing() -> None:
        with database.session() as session:
            session.add(raw_user("bystander"))
            session.add(raw_user("taken"))

    with pytest.raises(Conflict, match="conflicts with existing data") as caught:
        add_clashing()
    assert caught.value.status == 409
    assert usernames(database) == ["taken"]


def test_session_turns_a_dangling_foreign_key_into_conflict(database: Database) -> None:
    # SQLite only enforces foreign keys with PRAGMA foreign_keys=ON; both backends must refuse.
    with pytest.raises(Conflict), database.session() as session:
        session.add(ApiToken(user_id=424242, name="orphan", token_hash="0" * 64))
    with database.session() as session:
        assert session.scalar(sa.select(sa.func.count(ApiToken.id))) == 0


def test_utc_datetime_reads_back_aware_utc_on_every_backend(database_url: str) -> None:
    url = sa.make_url(database_url)
    if url.get_backend_name() == "postgresql":
        # A server whose TimeZone is not UTC (the default of many installs): reads must still be UTC.
        url = url.update_query_dict({"options": "-c timezone=Asia/Tokyo"})
    database = Database(url.render_as_string(hide_password=False))
    try:
        database.migrate()
        written = datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
        with database.session() as session:
            session.add(raw_user("dated", created_at=written))
        with database.session() as session:
            read = session.scalar(sa.select(User.created_at).where(User.username == "dated"))
            defaulted = raw_user("defaulted")
            session.add(defaulted)
        with database.session() as session:
            default_read = session.scalar(sa.select(User.created_at).where(User.username == "defaulted"))

        assert read is not None
        assert read == written  # the same instant...
        assert read.tzinfo is not None
        assert read.utcoffset() == timedelta(0), f"read back {read.isoformat()}, not UTC"
        assert read.isoformat() == "2024-03-01T10:30:00+00:00"  # ...shown in UTC
        assert default_read is not None
        assert default_read.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - default_read) < timedelta(minutes=1)
    finally:
        database.stop()


def test_utc_datetime_refuses_naive_datetimes(database: Database) -> None:
    with (
        pytest.raises(sa.exc.StatementError, match="naive datetime") as caught,
        database.session() as session,
    ):
        session.add(raw_user("naive", created_at=datetime(2024, 3, 1, 12, 30)))
    assert isinstance(caught.value.orig, ValueError)
    assert usernames(database) == []
    with pytest.raises(ValueError, match="naive datetime"):
        UTCDateTime().process_bind_param(datetime(2024, 3, 1), database.engine.dialect)


def test_sqlite_files_use_wal(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "registry.db"
    database = Database(f"sqlite:///{path}")
    try:
        database.migrate()
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert path.is_file()  # its folder was created
    finally:
        database.stop()


def test_an_unreachable_database_is_unavailable() -> None:
    database = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    try:
        with pytest.raises(Unavailable, match="failed") as caught, database.session() as session:
            session.execute(sa.text("SELECT 1"))
        assert caught.value.status == 503
        with pytest.raises(Unavailable, match="cannot migrate"):
            database.migrate()
    finally:
        database.stop()
