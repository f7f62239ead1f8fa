"""Shared fixtures: a real SQLite file per test, the simulator, and request-file builders."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import tracemalloc
import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from batchrun.input.ingest import submit_requests
from batchrun.store.store import Store

# Headless Chromium and the screenshot folder, for the tests of web pages.
from tests.browsing import artifacts, browser  # noqa: F401
from tests.counters import assert_counters_agree

POSTGRES_URL_VARIABLE = "BATCHRUN_TEST_POSTGRES_URL"
# Variables that choose or reach an endpoint, which a developer's shell may set.
ENDPOINT_VARIABLES = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "LANGDOCK_API_KEY",
    "AIMLAPI_API_KEY",
    "BATCHRUN_CONFIG",
    "BATCHRUN_ENDPOINT",
    "XDG_CONFIG_HOME",
)


def _postgres_admin_url() -> str:
    """The Postgres server for tests; without one, Postgres tests skip locally but fail
    under CI=true, so a CI run can never pass by silently not testing Postgres."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if url:
        return url
    message = f"set {POSTGRES_URL_VARIABLE}=postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"Postgres tests must run under CI: {message}")
    pytest.skip(f"no Postgres: {message}")


@contextmanager
def fresh_postgres_database(template: str = "template0") -> Iterator[str]:
    """A new Postgres database for one test, a copy of ``template`` (by default empty);
    dropped afterwards."""
    admin_url = make_url(_postgres_admin_url())
    name = f"batchrun_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# ``db_url`` is a database already at the newest schema, copied from one migrated once per
# test process: a copy takes milliseconds where Alembic takes 0.07 s (SQLite) to 0.2 s
# (Postgres) per database on an idle machine, several times that on a busy one. Acceptance
# tests, and tests marked ``empty_database`` (whose subject is what the first command does to
# a new database), get an empty one, as a new user's first command does. ``sqlite_url`` is
# always a new file.


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest schema, migrated once per test process; copy it with
    :func:`copy_sqlite_file`, never open it."""
    path = tmp_path_factory.mktemp("migrated") / "batchrun.db"
    Store.open(f"sqlite:///{path}").close()
    return path


def copy_sqlite_file(source: Path, target: Path) -> None:
    """Copy a closed SQLite database (and its write-ahead log, if one was left)."""
    shutil.copyfile(source, target)
    wal = source.with_name(source.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, target.with_name(target.name + "-wal"))


@pytest.fixture(scope="session")
def migrated_postgres_template() -> Iterator[str]:
    """The name of a Postgres database at the newest schema, migrated once per test process
    and left without connections, so that CREATE DATABASE ... TEMPLATE can copy it."""
    with fresh_postgres_database() as url:
        Store.open(url).close()
        name = make_url(url).database
        assert name is not None
        yield name


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL per backend: a real SQLite file, and a fresh Postgres database, at the
    newest schema unless the test is an acceptance test or marked ``empty_database``."""
    migrated = not any(request.node.get_closest_marker(m) for m in ("acceptance", "empty_database"))
    if request.param == "sqlite":
        path = tmp_path / "batchrun.db"
        if migrated:
            copy_sqlite_file(request.getfixturevalue("migrated_sqlite_file"), path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("migrated_postgres_template") if migrated else "template0"
    with fresh_postgres_database(template) as url:
        yield url


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``pytest.mark.sqlite_only`` (on a test or in a module's ``pytestmark``): its
    ``db_url``, and so its ``store``, is the SQLite file only. For loop logic whose subject
    is not SQL; the store, shared limits, clusters, lease loss, recovery and acceptance keep
    both backends. It turns into a direct parametrization, which pytest lets win over the
    fixture's own params; a test of the module that uses no database is left alone."""
    if "db_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("sqlite_only"):
        # First among the test's parametrizations, as the fixture's own is: same test ids.
        metafunc.definition.add_marker(
            pytest.mark.parametrize("db_url", ["sqlite"], indirect=True), append=False
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """For tests about SQLite itself (files, WAL, several processes on one machine)."""
    return f"sqlite:///{tmp_path / 'batchrun.db'}"


@pytest.fixture
def sqlite_store(tmp_path: Path, migrated_sqlite_file: Path) -> Iterator[Store]:
    """A store for tests whose subject is not the database (one backend is enough), a copy
    of the migrated file. It lives in memory-backed /dev/shm where there is one: these tests
    commit a result per virtual second, and a disk's fsync per commit would make them slow
    on a busy machine."""
    shm = Path("/dev/shm")
    directory = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path
    copy_sqlite_file(migrated_sqlite_file, directory / "batchrun.db")
    opened = Store.open(f"sqlite:///{directory / 'batchrun.db'}")
    yield opened
    opened.close()
    if directory != tmp_path:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def counters_agree(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test with a database (``db_url``, ``sqlite_store``): each batch's
    maintained counters equal the aggregate over its rows (tests/counters.py)."""
    url: str | None = None
    if "db_url" in request.fixturenames:
        url = request.getfixturevalue("db_url")
    elif "sqlite_store" in request.fixturenames:
        url = request.getfixturevalue("sqlite_store").engine.url.render_as_string(
            hide_password=False
        )
    yield
    if url is not None:
        assert_counters_agree(url)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store.open(db_url)
    yield opened
    opened.close()


def cli_env(db_url: str, home: Path) -> dict[str, str | None]:
    """A CliRunner environment without the endpoint variables and with ``home`` as HOME,
    so that no config file of the machine running the tests is found (run it in an empty
    working directory too)."""
    env: dict[str, str | None] = dict.fromkeys(ENDPOINT_VARIABLES)
    return env | {"BATCHRUN_DATABASE_URL": db_url, "HOME": str(home)}


def request_line(
    custom_id: str,
    text: str = "Hello",
    *,
    model: str = "claude-sonnet-4-5",
    max_tokens: int = 256,
    **params: Any,
) -> dict[str, Any]:
    """One request in Anthropic's batch format."""
    return {
        "custom_id": custom_id,
        "params": {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}],
            **params,
        },
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def submit(store: Store, lines: list[dict[str, Any]], *, endpoint: str = "simulator") -> str:
    """Store ``lines`` as a batch the way `batchrun submit` does; returns its id."""
    return submit_requests(
        store,
        io.BytesIO(jsonl(lines)),
        source="test.jsonl",
        endpoint=endpoint,
        now=datetime.now(UTC),
    )


async def memory_grown_by(work: Awaitable[None], *, after: Awaitable[None]) -> int:
    """Bytes of Python memory that ``work`` left allocated (tracemalloc), once ``after`` has
    brought things to their steady state. Both run traced, so what ``work`` frees of what
    ``after`` allocated counts against what it allocates: a bounded window shows ~0."""
    tracemalloc.start()
    try:
        await after
        before = tracemalloc.get_traced_memory()[0]
        await work
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
