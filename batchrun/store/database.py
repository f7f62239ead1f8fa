"""Opening a database: the engine, SQLite's settings, Alembic migrations, and what a failing
database means for the user.

`database_error` turns a driver error into one line that names the database (never its
password) and the fix. A lost Postgres connection becomes `DatabaseUnavailableError`, which
the dispatcher's database thread retries; a busy or read-only SQLite file does not, because
SQLite has already waited its busy timeout (the URL's ``timeout`` query parameter, which
`create_database_engine` sets from ``sqlite_busy_timeout_s``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

import batchrun
from batchrun.errors import DatabaseError, DatabaseUnavailableError

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


def create_database_engine(
    url: str, *, sqlite_busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S
) -> Engine:
    """An engine for ``url`` with batchrun's settings (SQLite: WAL, foreign keys, and a wait
    of ``sqlite_busy_timeout_s`` for another process's write lock, unless the URL sets its
    own ``timeout``)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(
            "the database URL is not valid; use sqlite:///path/to/file.db "
            "or postgresql+psycopg://user@host/dbname"
        ) from exc
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    database = parsed.database
    if database is None or database in ("", ":memory:"):
        raise DatabaseError("an in-memory SQLite database cannot be shared; give a file path")
    if "timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"timeout": str(sqlite_busy_timeout_s)})
    # A "file:..." URI (uri=true) names its file itself, with options; leave it to SQLite.
    if parsed.query.get("uri") != "true":
        _make_parent_directory(Path(database).expanduser())
    engine = create_engine(parsed)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _make_parent_directory(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is a file" if isinstance(exc, FileExistsError) else exc.strerror
        raise DatabaseError(
            f"cannot create the directory {path.parent} for the database {path} "
            f"({why}); pass a --db path in a writable directory"
        ) from None


def database_error(exc: DBAPIError, *, engine: Engine, doing: str) -> DatabaseError:
    """One line for a failed database call: what failed, on which database, and the fix.

    ``doing`` is a verb phrase such as "write to". Lost Postgres connections (and errors
    SQLAlchemy recognises as a disconnect) give `DatabaseUnavailableError`.
    """
    detail = _short(exc)
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return _sqlite_error(detail, url, doing)
    where = url.render_as_string(hide_password=True)
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return DatabaseUnavailableError(f"lost the connection to the database {where} ({detail})")
    return DatabaseError(f"cannot {doing} the database {where}: {detail}")


def _sqlite_error(detail: str, url: URL, doing: str) -> DatabaseError:
    path = url.database
    lowered = detail.lower()
    if "locked" in lowered or "busy" in lowered:
        timeout = url.query.get("timeout")
        waited_s = float(timeout) if isinstance(timeout, str) else SQLITE_BUSY_TIMEOUT_S
        return DatabaseError(
            f"the database {path} is locked by another process, which has held its write lock "
            f"for over {waited_s:g} s; nothing was changed: try again when that process is done "
            "(add ?timeout=SECONDS to the sqlite:/// URL to wait longer)"
        )
    if "readonly" in lowered or "read-only" in lowered:
        return DatabaseError(
            f"the database {path} is read-only ({detail}); make the file and its directory "
            "writable, or pass another --db"
        )
    if "unable to open" in lowered:
        return DatabaseError(
            f"cannot open the database {path} ({detail}); check that its directory exists and "
            "is writable, or pass another --db"
        )
    return DatabaseError(f"cannot {doing} the database {path}: {detail}")


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
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except DBAPIError as exc:
        raise database_error(exc, engine=engine, doing="open") from exc


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
    except DBAPIError as exc:
        raise database_error(exc, engine=engine, doing="open") from exc
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate the database: {_short(exc)}") from exc


def _short(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]
