"""What the benchmark scripts share: the batchrun command, a simulator process, a scratch
Postgres database and the machine's CPU counters.

The scripts run as `python bench/NAME.py`, which puts this folder on the import path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

BATCHRUN = str(Path(sys.executable).parent / "batchrun")
# How long to wait for the workers' Postgres sessions to end (their statistics are written
# when they do).
SESSIONS_END_S = 10.0
ADMIN_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# /proc/stat and /proc/PID/stat count in clock ticks.
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class Simulator:
    """`batchrun simulate` in its own process on 127.0.0.1; ``args`` go to the command."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [BATCHRUN, "simulate", "--port", "0", *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError("the simulator did not start")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.url}/_simulator/stats", timeout=30).json()
        return stats

    def cpu_s(self) -> float:
        """CPU seconds the simulator process has used so far."""
        return process_cpu_s(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A new, empty Postgres database for one measurement; dropped afterwards."""
    admin = os.environ.get("BATCHRUN_TEST_POSTGRES_URL", ADMIN_POSTGRES_URL)
    name = f"batchrun_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


def committed(db_url: str) -> int:
    """Transactions the database of ``db_url`` committed so far, once no session is open on
    it (a session's statistics count when it ends); read from the admin database, so the
    reading is not counted."""
    name = make_url(db_url).database
    admin: Engine = create_engine(
        os.environ.get("BATCHRUN_TEST_POSTGRES_URL", ADMIN_POSTGRES_URL),
        isolation_level="AUTOCOMMIT",
    )
    query = text("SELECT numbackends, xact_commit FROM pg_stat_database WHERE datname = :name")
    try:
        deadline = time.monotonic() + SESSIONS_END_S
        with admin.connect() as connection:
            while True:
                sessions, count = connection.execute(query, {"name": name}).one()
                if sessions == 0 or time.monotonic() > deadline:
                    return int(count)
                time.sleep(0.05)
    finally:
        admin.dispose()


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a running process."""
    # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks[:8]) - idle) / TICKS_PER_S, sum(ticks[:8]) / TICKS_PER_S
