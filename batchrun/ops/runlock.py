"""One ``batchrun run`` per SQLite database at a time; any number on Postgres.

Claims are atomic on both backends, so two runs never send the same request. On SQLite a
second run would still only slow the first down (one writer at a time), and when cron starts
a run while the last one is still busy, what the user wants is for the new one to step aside.
So ``run`` takes an exclusive ``flock`` on a file next to the database
(``batchrun.db.run-lock``): a second run exits at once with a message naming the first, or
waits for it with ``--wait``. The kernel releases the lock when the process ends, however it
ends (kill -9 included), so a stale lock file never blocks anything.

On Postgres, runs on any number of hosts share the work (``FOR UPDATE SKIP LOCKED``), and no
lock is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from batchrun.errors import RunLockedError
from batchrun.store.database import sqlite_path

LOCK_SUFFIX = ".run-lock"
# How often a waiting run tries the lock again.
WAIT_POLL_S = 0.5


def lock_path(database_url: str) -> Path | None:
    """The lock file of a SQLite database (next to it), or None for other databases."""
    database = sqlite_path(database_url)
    if database is None:
        return None
    return database.with_name(database.name + LOCK_SUFFIX)


def _holder(path: Path) -> tuple[int, str] | None:
    """Who holds the lock, as its holder wrote it: its pid and since when (an ISO time), or
    None when that cannot be read (the holder has not written it yet)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        pid, since = info["pid"], info["since"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or not isinstance(since, str):
        return None
    return pid, since


def _locked_error(path: Path) -> RunLockedError:
    """The error for a run that finds the lock taken, naming the run that holds it."""
    holder = _holder(path)
    pid = since = None
    who = ""
    if holder is not None:
        pid, written = holder
        who = f" (pid {pid}, running since {written})"
        with contextlib.suppress(ValueError):
            since = datetime.fromisoformat(written)
    return RunLockedError(
        f"another `batchrun run`{who} is using {path.with_suffix('')}; it will finish the "
        "work, so this run stops here. Pass --wait to wait for it instead",
        pid=pid,
        since=since,
    )


@asynccontextmanager
async def run_lock(
    database_url: str,
    *,
    wait: bool,
    on_wait: Callable[[str], None] | None = None,
    share: bool = False,
) -> AsyncIterator[None]:
    """Hold the database's run lock for the block (nothing to hold on Postgres).

    Without ``wait``, raises RunLockedError naming the other run when it is taken; with
    ``wait``, calls ``on_wait`` once with a message and waits (on the event loop) until it
    is free. With
    ``share`` (several workers on purpose) nothing is locked: claims are atomic, so workers
    sharing a database never send a request twice; the lock only keeps an overlapping cron
    run from starting by accident.
    """
    path = lock_path(database_url)
    if path is None or share:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        announced = False
        while True:
            try:
                _lock_now(fd)
                break
            except BlockingIOError:
                if not wait:
                    raise _locked_error(path) from None
                if not announced and on_wait is not None:
                    holder = _holder(path)
                    who = f" (pid {holder[0]}, running since {holder[1]})" if holder else ""
                    on_wait(f"waiting for another `batchrun run`{who} to finish")
                    announced = True
                await asyncio.sleep(WAIT_POLL_S)
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": since}).encode())
        yield
    finally:
        # Closing the descriptor releases the lock; the file stays, empty of meaning.
        os.close(fd)


def _lock_now(fd: int) -> None:
    """Take the lock on ``fd`` without waiting; BlockingIOError when another process has it.
    POSIX flock where there is one; on Windows, msvcrt's byte-range lock (the same promise:
    the system drops it when the process ends). Windows is not tested here."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError as exc:
            raise BlockingIOError(str(exc)) from exc
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
