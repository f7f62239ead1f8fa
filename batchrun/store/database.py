"""Opening a database: the engine, SQLite's settings, and Alembic migrations."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

import batchrun
from batchrun.errors import DatabaseError

log = logging.getLogger(__name__)

# How long a writer waits for another process's SQLite write lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 30.0
# Connection option that makes a SQLite transaction take the write lock at BEGIN.
WRITE_OPTION = "batchrun_write"


def migrations_path() -> Path:
    """Where the Alembic scripts are: inside the installed wheel, or at the repository top."""
    package_dir = Path(batchrun.__file__).resolve().parent
    for candidate in (package_dir / "migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise DatabaseError("batchrun's migration scripts are missing; reinstall batchrun")


def create_database_engine(url: str) -> Engine:
    """An engine for ``url`` with batchrun's settings (SQLite: WAL, foreign keys, busy wait)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(
            "the database URL is not valid; use sqlite:///path/to/file.db "
            "or postgresql+psycopg://user@host/dbname"
        ) from exc
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        raise DatabaseError("an in-memory SQLite database cannot be shared; give a file path")
    Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the sqlite3 module so BEGIN happens where SQLAlchemy
    # says (the module otherwise begins lazily and never before a SELECT).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers (status, results) work while a worker writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed result survives a power cut, not only a killed process.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_sqlite_transaction(connection: Connection) -> None:
    # A write transaction takes the lock at BEGIN, so it waits (busy timeout) instead of
    # failing later when a read lock cannot be upgraded.
    if connection.get_execution_options().get(WRITE_OPTION):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision this batchrun knows."""
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_database(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to the newest schema; returns (revision before, revision after).

    A database written by a newer batchrun (a revision this one does not know) is left
    untouched and reported, rather than "upgraded" into something both versions misread.
    """
    try:
        before = current_revision(engine)
        head = head_revision()
        if before == head:
            return before, head
        config = Config()
        config.set_main_option("script_location", str(migrations_path()))
        known = {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}
        if before is not None and before not in known:
            raise DatabaseError(
                f"the database is at schema revision {before!r}, written by a newer batchrun; "
                "upgrade batchrun (pip install -U batchrun) to use it"
            )
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
        log.info("database migrated from %s to %s", before or "empty", head)
        return before, head
    except OperationalError as exc:
        raise DatabaseError(f"cannot open the database: {_short(exc)}") from exc
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate the database: {_short(exc)}") from exc


def _short(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]
