"""A database that cannot be used, through the real CLI: locked by another process, in a place
that cannot be written, or written by a newer batchrun. Each is one clear line and exit 1,
and nothing is half done."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import Result

from tests.clitools import invoke, runner, stored_batches
from tests.conftest import jsonl, request_line

# Holds SQLite's write lock (BEGIN EXCLUSIVE) until its standard input closes.
LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
connection.rollback()
"""


@contextmanager
def write_lock_held(db_path: Path) -> Iterator[None]:
    """Another process holds the database's write lock for the duration."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None and locker.stdin is not None
    try:
        assert locker.stdout.readline().strip() == "locked"
        yield
    finally:
        locker.stdin.close()
        locker.wait(timeout=10)
        locker.stdout.close()


def one_line_error(result: Result) -> str:
    """The one error line; a run's first progress line (written when it starts) may come
    before it."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if " progress: " not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def requests_file(tmp_path: Path, count: int = 3) -> Path:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request_line(f"r{i}") for i in range(count)]))
    return path


def test_a_locked_sqlite_database_fails_cleanly_and_works_once_released(tmp_path: Path) -> None:
    db_path = tmp_path / "batchrun.db"
    # The busy timeout comes from the URL, so the test waits 0.3 s rather than 30.
    cli = runner(f"sqlite:///{db_path}?timeout=0.3")
    path = requests_file(tmp_path)
    batch_id = invoke(cli, "submit", str(path), "--endpoint", "simulator").stdout.strip()

    with write_lock_held(db_path):
        started = time.monotonic()
        submitted = invoke(cli, "submit", str(path), "--endpoint", "simulator")
        ran = invoke(cli, "run", batch_id)
        elapsed_s = time.monotonic() - started
        # Readers are not blocked (WAL).
        listed = stored_batches(cli)

    for result in (submitted, ran):
        message = one_line_error(result)
        assert f"error: the database {db_path} is locked by another process" in message
        assert "held its write lock for over 0.3 s; nothing was changed" in message
        assert "add ?timeout=SECONDS to the sqlite:/// URL to wait longer" in message
    # A locked SQLite file is not retried like a lost Postgres connection.
    assert elapsed_s < 5
    assert [batch["id"] for batch in listed] == [batch_id]
    with sqlite3.connect(db_path) as connection:
        states = connection.execute("SELECT state, attempts FROM requests").fetchall()
        results = connection.execute("SELECT count(*) FROM results").fetchone()
    assert states == [("queued", 0)] * 3
    assert results == (0,)
    ran = invoke(cli, "run", batch_id)
    assert ran.exit_code == 0, ran.output
    assert stored_batches(cli)[0]["request_counts"]["succeeded"] == 3


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("/proc/batchrun-test.db", "cannot open the database /proc/batchrun-test.db (unable to "),
        ("/sys/batchrun-test.db", "cannot open the database /sys/batchrun-test.db (unable to "),
        ("/proc/no-such-dir/x.db", "cannot create the directory /proc/no-such-dir for the "),
        ("{tmp}/a-file/x.db", "cannot create the directory {tmp}/a-file for the database"),
    ],
    ids=["proc", "sys", "missing directory in proc", "directory is a file"],
)
def test_a_database_path_that_cannot_be_written_is_one_clear_line(
    tmp_path: Path, where: str, message: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    cli = runner(f"sqlite:///{where.format(tmp=tmp_path)}")

    for args in (["list"], ["submit", str(requests_file(tmp_path))], ["db", "current"]):
        stderr = one_line_error(invoke(cli, *args))
        assert stderr.startswith(f"error: {message.format(tmp=tmp_path)}"), stderr


def test_a_read_only_database_can_be_read_but_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path = tmp_path / "batchrun.db"
    writable = runner(f"sqlite:///{db_path}")
    batch_id = invoke(writable, "submit", str(requests_file(tmp_path))).stdout.strip()
    monkeypatch.chdir(tmp_path)
    # Root can write any file, so the read-only open comes from SQLite's own URI option.
    read_only = runner(f"sqlite:///file:{db_path}?mode=ro&uri=true")

    listed = stored_batches(read_only)
    refused = invoke(read_only, "cancel", batch_id)

    assert [batch["id"] for batch in listed] == [batch_id]
    stderr = one_line_error(refused)
    assert stderr.startswith(f"error: the database file:{db_path} is read-only (attempt to write")
    assert "make the file and its directory writable, or pass another --db" in stderr
    assert not (tmp_path / "file:").exists()
    assert stored_batches(writable)[0]["processing_status"] == "in_progress"


def test_a_database_from_a_newer_batchrun_is_refused_by_every_command_untouched(
    db_url: str, tmp_path: Path
) -> None:
    cli = runner(db_url)
    path = requests_file(tmp_path)
    batch_id = invoke(cli, "submit", str(path), "--endpoint", "simulator").stdout.strip()
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))

    commands = [
        ["list"],
        ["status", batch_id],
        ["submit", str(path), "--endpoint", "simulator"],
        ["run", batch_id],
        ["cancel", batch_id],
        ["results", batch_id, "--partial"],
        ["db", "upgrade"],
    ]
    for args in commands:
        stderr = one_line_error(invoke(cli, *args))
        assert (
            "is at schema revision '9999_future', written by a newer batchrun; upgrade " in stderr
        )

    with engine.connect() as connection:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        batches = connection.execute(text("SELECT id, ended_at FROM batches")).all()
        states = connection.execute(text("SELECT DISTINCT state FROM requests")).scalars().all()
    engine.dispose()
    assert revision == "9999_future"
    assert [(row.id, row.ended_at) for row in batches] == [(batch_id, None)]
    assert states == ["queued"]
    assert invoke(cli, "db", "current").stdout.strip() == "9999_future"
