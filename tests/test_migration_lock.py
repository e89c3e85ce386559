"""Concurrent migrations of one database: services that start together all succeed, once.

Several services call ``Database.ensure_schema()`` (the node manager ``migrate()``) as
they start, each in its own process: on a fresh or older database they all migrate at
the same moment. ``Database.migrate()`` takes a lock first (a PostgreSQL advisory lock,
SQLite's write lock), so one migrator brings the schema to head and the others then find
it there. Each test runs on a fresh SQLite file and a fresh PostgreSQL database, with
migrators in separate processes started together (each waits on its stdin for the word).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from platform_core.db import MIGRATIONS, SCHEMA_HEAD, Database, load_all_models

MIGRATORS = 6

# One service process: imports, says it is ready, waits for the word, migrates. With a
# rendezvous folder it first holds its first CREATE until every migrator has reached its
# own (or 1.5 s passed): without a lock they all get there, having all found no schema;
# with the lock the others wait on it, so the one holding it goes on alone after 1.5 s.
MIGRATOR = """
import os, sys, time
import sqlalchemy as sa
from platform_core.db import Database

url, rendezvous, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
database = Database(url)
held = []

def hold(conn, cursor, statement, *args):
    if held or not statement.lstrip().upper().startswith("CREATE"):
        return
    held.append(statement)
    open(os.path.join(rendezvous, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 1.5
    while len(os.listdir(rendezvous)) < count and time.monotonic() < deadline:
        time.sleep(0.01)

if rendezvous:
    sa.event.listen(database.engine, "before_cursor_execute", hold)
import alembic.command  # imported before the start, so the processes meet at the database
print("ready", flush=True)
sys.stdin.readline()
try:
    database.migrate()
finally:
    database.stop()
"""


def migrate_together(url: str, rendezvous: Path | None = None) -> list[str]:
    """Start ``MIGRATORS`` processes migrating ``url`` at once; the last line of each failure."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, url, str(rendezvous or ""), str(MIGRATORS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(MIGRATORS)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready", process.communicate()[1]
        for process in processes:  # every one is waiting on its stdin: the start barrier
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    failures = []
    for process, (_, stderr) in zip(processes, results, strict=True):
        if process.returncode:
            errors = [line for line in stderr.splitlines() if "Error" in line or "Unavailable" in line]
            failures.append((errors or stderr.splitlines() or ["(no output)"])[-1])
    return failures


def previous_revision() -> str:
    """The revision before ``SCHEMA_HEAD``: a registry the platform's previous version migrated."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_revision(SCHEMA_HEAD)
    assert head is not None
    assert isinstance(head.down_revision, str)
    return head.down_revision


def prepare(url: str, revision: str | None = None) -> None:
    """The database as services find it: a registry file in WAL mode, at ``revision`` (None: empty).

    ``aiot up`` creates the SQLite file before any service starts. The first open of a
    brand-new file switches it to WAL, which SQLite refuses at once, without waiting, while
    another connection holds the file: so no test here opens a brand-new file concurrently.
    """
    database = Database(url)
    try:
        with database.engine.connect():
            pass
        if revision is not None:
            database.migrate(revision)
            assert database.current_revision() == revision
    finally:
        database.stop()


def assert_migrated_once(url: str) -> None:
    """At head, one version row, and every table of the models there."""
    database = Database(url)
    try:
        assert database.current_revision() == SCHEMA_HEAD
        with database.engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert [tuple(row) for row in rows] == [(SCHEMA_HEAD,)]
        assert set(load_all_models().tables) <= set(sa.inspect(database.engine).get_table_names())
    finally:
        database.stop()


def test_migrators_that_all_find_no_schema_at_the_same_moment_all_succeed_once(
    database_url: str, tmp_path: Path
) -> None:
    """The race made certain: no migrator creates anything until all have looked."""
    prepare(database_url)
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()

    failures = migrate_together(database_url, rendezvous)

    assert failures == [], f"{len(failures)} of {MIGRATORS} migrators failed"
    assert_migrated_once(database_url)


@pytest.mark.parametrize("upgrade", [False, True], ids=["empty", "previous-revision"])
def test_service_processes_starting_together_all_migrate_the_database_once(
    database_url: str, upgrade: bool
) -> None:
    """The race as services meet it: on a fresh database, and after an upgrade added a revision."""
    prepare(database_url, previous_revision() if upgrade else None)

    failures = migrate_together(database_url)

    assert failures == [], f"{len(failures)} of {MIGRATORS} migrators failed"
    assert_migrated_once(database_url)
