"""The registry database: engine, sessions, declarative base and migrations.

One SQLAlchemy 2.0 engine per process, on a SQLite file in WAL mode by default
(``AIOT_HOME/registry.db``, its owner's alone: 0600, as its ``-wal`` and ``-shm``) or
PostgreSQL by URL. Each service declares its
own typed models on ``Base`` in its own package and reaches other services'
data only through their APIs or events. The schema is owned by the Alembic
history in ``platform_core/migrations``; ``Database.migrate()`` brings any
database to head, so an upgrade keeps data. Services that start together may all
migrate at once: ``migrate()`` holds the database's migration lock (a PostgreSQL
advisory lock, SQLite's write lock) for the whole upgrade, so one of them migrates and
the others then find the schema at head.

Database errors are translated here: a session that cannot reach the
database raises ``Unavailable``; a unique-constraint clash raises ``Conflict``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from platform_sdk.errors import BadRequest, Conflict, Unavailable
from platform_sdk.runstate import private_dir, private_file
from platform_sdk.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
SCHEMA_HEAD = "0007_mqtt_credentials"
"""The newest migration's revision (a test checks it is Alembic's head): bump it with every migration."""
SQLITE_SIDE_FILES = ("-wal", "-shm")
MIGRATION_LOCK_KEY = 0x6169_6F74_6D69_6772  # "aiotmigr"
"""The PostgreSQL advisory lock a migration holds; advisory locks are per database, so other
databases on the same server migrate freely."""
# Every module that declares tables, by name so this module depends on none of them.
MODEL_MODULES = (
    "web.identity",
    "node_manager.models",
    "heartbeat.models",
    "ai_manager.models",
    "deployer.models",
    "device_manager.models",
    "app_manager.models",
    "scheduler.models",
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        # PostgreSQL answers in the session's time zone; the platform speaks UTC everywhere.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every service's tables."""

    type_annotation_map = {datetime: UTCDateTime}


def load_all_models() -> sa.MetaData:
    """Import every service's table declarations; ``Base.metadata`` then describes the whole schema."""
    for module in MODEL_MODULES:
        importlib.import_module(module)
    return Base.metadata


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # A process that hangs holding SQLite's one write lock keeps it until the heartbeat monitor
    # kills it (a few seconds): writers wait that out instead of failing. Set first, so the
    # switch to WAL below waits too when several processes open a new file at once.
    cursor.execute("PRAGMA busy_timeout=15000")
    # WAL is a property of the file, kept once set: only the first connection switches it.
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get their folder, WAL and foreign keys, and are private."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_sqlite_file(Path(parsed.database))
        engine = sa.create_engine(url, echo=echo, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, echo=echo, pool_pre_ping=True)


def _private_sqlite_file(path: Path) -> None:
    """The database file made (or narrowed to) 0600 before SQLite opens it, in a new folder made 0700.

    SQLite gives the ``-wal`` and ``-shm`` files it creates the database file's mode; ones an
    older version left open to others are narrowed here too.
    """
    if not path.parent.exists():
        private_dir(path.parent)
    private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            private_file(side)


class Database:
    """Engine + session factory of the registry database."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = create_engine(url, echo=echo)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.database_url, echo=settings.database.echo)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on any error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except sa.exc.IntegrityError as exc:
            session.rollback()
            raise Conflict(f"conflicts with existing data: {exc.orig}") from exc
        except sa.exc.DataError as exc:
            session.rollback()
            raise BadRequest(f"value does not fit the database: {exc.orig}") from exc
        except sa.exc.OperationalError as exc:
            session.rollback()
            raise Unavailable(f"database {self.engine.url.render_as_string()} failed: {exc.orig}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def alembic_config(self) -> Config:
        # Alembic (about 10 MB) is imported by the process that migrates, when it does.
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        return config

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision``, keeping the data; one migrator at a time.

        The upgrade runs in one transaction that first takes the database's migration lock
        (``_lock_for_migration``), so concurrent migrators (services starting together, each
        with its own engine) wait for each other, and each one looks at the schema only once
        it holds the lock: whoever comes second finds it at head and changes nothing.
        """
        from alembic import command

        config = self.alembic_config()
        try:
            with self.engine.connect() as connection:
                if connection.dialect.name == "postgresql":
                    # Each statement sees what committed before it: after the lock, the schema
                    # a migrator we waited for left (not the snapshot of a stricter isolation).
                    connection.execution_options(isolation_level="READ COMMITTED")
                with connection.begin():
                    _lock_for_migration(connection)
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
        except sa.exc.OperationalError as exc:
            raise Unavailable(f"cannot migrate {self.engine.url.render_as_string()}: {exc.orig}") from exc

    def current_revision(self) -> str | None:
        """The schema's revision, read without Alembic (None: never migrated)."""
        try:
            with self.engine.connect() as connection:
                found = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except sa.exc.DatabaseError:
            return None  # no alembic_version table yet (or no database: migrate() says which)
        return str(found) if found is not None else None

    def ensure_schema(self) -> None:
        """Migrate when the schema is behind ``SCHEMA_HEAD``; a service calls this as it starts.

        ``aiot up`` migrates before it starts any service, so a service normally finds the
        schema current and never imports Alembic (about 10 MB in each of four processes).
        """
        if self.current_revision() != SCHEMA_HEAD:
            self.migrate()

    def stop(self) -> None:
        """Close every pooled connection (the ``Service`` base calls this on stop)."""
        self.engine.dispose()


def _lock_for_migration(connection: sa.Connection) -> None:
    """Take the database's migration lock; ``connection``'s transaction holds it until it ends.

    PostgreSQL: a transaction-level advisory lock (``MIGRATION_LOCK_KEY``), released by the
    commit or rollback, or by the server when the migrator's connection dies. SQLite: the
    file's write lock, taken at once with ``BEGIN IMMEDIATE`` (the driver itself begins only
    before an INSERT, UPDATE or DELETE: Alembic's reads and DDL would each run on their
    own); a waiter retries for the connection's busy timeout, then fails ``Unavailable``.
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:  # the registry runs on these two; a third would need its own lock here
        raise NotImplementedError(f"no migration lock for {dialect}")
