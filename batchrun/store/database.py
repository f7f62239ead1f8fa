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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    OperationalError,
    SQLAlchemyError,
)

from batchrun.errors import DatabaseError, DatabaseUnavailableError

log = logging.getLogger(__name__)

# How long a writer waits for another process's SQLite write lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 30.0
# A pooled Postgres connection idle for longer than this is tried before it is used.
PING_IDLE_S = 1.0
_URL_FORMS = (
    "use sqlite:///path/to/file.db (a file) or postgresql+psycopg://user@host/dbname (Postgres)"
)
# Connection option that makes a SQLite transaction take the write lock at BEGIN.
WRITE_OPTION = "batchrun_write"
# The newest schema revision, the head of migrations/versions (a test checks they agree). A
# database already there is opened without loading Alembic, so every command starts fast.
SCHEMA_REVISION = "0019"
_VERSION_TABLE = "alembic_version"


def migrations_path() -> Path:
    """Where the Alembic scripts are: inside the installed wheel, or at the repository top."""
    # batchrun/store/database.py → batchrun/
    package_dir = Path(__file__).resolve().parent.parent
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
    except ArgumentError:
        raise DatabaseError(f"the database URL is not valid; {_URL_FORMS}") from None
    # Read from the name itself: asking SQLAlchemy would load (or fail to load) the driver.
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgresql":
        if not driver:
            # The driver batchrun installs; SQLAlchemy's own default is psycopg2.
            parsed = parsed.set(drivername="postgresql+psycopg")
        elif driver != "psycopg":
            raise DatabaseError(
                f"the database URL asks for the {driver} driver, which batchrun does not "
                f"use; write postgresql+psycopg://... (psycopg 3)"
            )
        try:
            import psycopg  # noqa: F401  (the engine would load it at the first connection)
        except ImportError:
            raise DatabaseError(
                "Postgres needs the psycopg driver (psycopg 3), which this installation "
                "lacks: pip install 'batchrun-llm[postgres]' (or pip install 'psycopg[binary]')"
            ) from None
        engine = create_engine(parsed)
        event.listen(engine, "checkin", _note_checkin)
        event.listen(engine, "checkout", _ping_if_idle)
        return engine
    if backend != "sqlite":
        raise DatabaseError(f"batchrun cannot keep its jobs in {backend}; {_URL_FORMS}")
    database = parsed.database
    if database is None or database in ("", ":memory:"):
        raise DatabaseError("an in-memory SQLite database cannot be shared; give a file path")
    if "timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"timeout": str(sqlite_busy_timeout_s)})
    else:
        try:
            float(str(parsed.query["timeout"]))
        except ValueError:
            raise DatabaseError(
                f"the database URL's timeout is {parsed.query['timeout']!r}; it must be a "
                "number of seconds, such as ?timeout=60"
            ) from None
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


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Make sure a Postgres connection that sat idle in the pool still works (the server
    may have restarted), as ``pool_pre_ping`` would; one busy without a pause for longer
    than :data:`PING_IDLE_S` is not pinged. Every ping is one more transaction on the
    server: a worker checks a connection out for each statement, and pinging each would
    double what it costs the server."""
    checked_in_at = record.info.get("checked_in_at")
    if checked_in_at is not None and time.monotonic() - checked_in_at < PING_IDLE_S:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()
    except Exception as exc:
        # The pool throws the connection away and checks out a new one.
        raise DisconnectionError(str(exc)) from exc


def connect(engine: Engine) -> Connection:
    """A connection of ``engine``'s pool. A server that cannot be reached gives
    `DatabaseUnavailableError` saying so (not that a connection was lost: there may never
    have been one), which the worker's database thread retries like a lost connection."""
    try:
        return engine.connect()
    except DBAPIError as exc:
        if engine.url.get_backend_name() == "sqlite":
            raise database_error(exc, engine=engine, doing="open") from None
        where = engine.url.render_as_string(hide_password=True)
        raise DatabaseUnavailableError(
            f"cannot connect to the database {where} ({_short(exc)}); check that the server "
            "is running and that the URL's host, port, user and database are right"
        ) from None


@contextmanager
def transaction(engine: Engine, *, write: bool) -> Iterator[Connection]:
    """One transaction (a write one takes SQLite's write lock at BEGIN); a driver error
    leaves as the one-line `DatabaseError` of :func:`database_error`, and a lost connection
    as `DatabaseUnavailableError`, which the worker's database thread retries. Every store
    statement runs in one of these."""
    connection = connect(engine)
    try:
        if write:
            connection = connection.execution_options(**{WRITE_OPTION: True})
        with connection as conn, conn.begin():
            yield conn
    except DBAPIError as exc:
        # One line, without the statement: a failed INSERT would print every prompt in it.
        raise database_error(exc, engine=engine, doing="write to" if write else "read") from None


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


def _alembic_config(connection: Connection | None = None) -> Any:
    # Alembic is loaded only to migrate: a database at SCHEMA_REVISION never needs it.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision of the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None for an empty database."""
    try:
        with connect(engine) as connection:
            if not inspect(connection).has_table(_VERSION_TABLE):
                return None
            found = connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}")).first()
            return None if found is None else str(found[0])
    except DBAPIError as exc:
        raise database_error(exc, engine=engine, doing="open") from exc


def upgrade_database(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to the newest schema; returns (revision before, revision after).

    A database written by a newer batchrun (a revision this one does not know) is left
    untouched and reported, rather than "upgraded" into something both versions misread.
    """
    try:
        before = current_revision(engine)
        if before == SCHEMA_REVISION:
            return before, before
        from alembic import command
        from alembic.script import ScriptDirectory

        config = _alembic_config()
        known = {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}
        if before is not None and before not in known:
            raise DatabaseError(
                f"the database is at schema revision {before!r}, written by a newer batchrun; "
                "upgrade batchrun (pip install -U batchrun-llm) to use it"
            )
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
        head = head_revision()
        log.info("database migrated from %s to %s", before or "empty", head)
        return before, head
    except DBAPIError as exc:
        raise database_error(exc, engine=engine, doing="open") from exc
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate the database: {_short(exc)}") from exc


def _short(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite database URL, or None for other databases (and URLs that do not
    parse: opening the database says what is wrong with them)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database).expanduser()


def upsert_insert(engine: Engine) -> Any:
    """The dialect's ``insert`` (which has ``on_conflict_do_nothing`` / ``_do_update``); only
    the dialect in use is loaded."""
    return dialect_insert(engine.dialect.name)


def dialect_insert(dialect: str) -> Any:
    """:func:`upsert_insert` for the dialect named ``dialect`` (``sqlite`` or ``postgresql``),
    for statements built once per dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    from sqlalchemy.dialects import sqlite

    return sqlite.insert
