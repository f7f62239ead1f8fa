"""A run whose Postgres connections are killed in the middle of statements reconnects and
goes on: every request ends with exactly one result, none is lost and none is sent twice.

The server itself stays up (others use it): the test terminates the backends of its own
database, the way an administrator or a failover would. To make sure a statement is in
flight when that happens, it first locks the requests table, waits until the worker's next
statement is blocked on the lock, and only then terminates the worker's connections.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from batchrun.simulator import create_app, running_simulator
from tests.acceptance.servers import announcing
from tests.acceptance.waits import wait_until_received
from tests.clitools import BATCHRUN, clean_env, invoke, runner
from tests.conftest import POSTGRES_URL_VARIABLE, fresh_postgres_database, jsonl, request_line

pytestmark = [pytest.mark.acceptance, pytest.mark.postgres]

REQUESTS = 400


def terminate_mid_statement(db_url: str, watcher: Engine, table: str) -> int:
    """Kill every connection of the database while one of them waits on a lock on ``table``;
    returns how many were killed."""
    database = make_url(db_url).database
    holder = create_engine(db_url)
    try:
        with holder.connect() as connection, connection.begin():
            connection.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            holder_pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
            with watcher.connect() as watching:
                deadline = time.monotonic() + 30
                blocked = 0
                while not blocked:
                    assert time.monotonic() < deadline, "no statement ever waited on the lock"
                    time.sleep(0.01)
                    blocked = watching.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                            "AND pid <> :holder AND wait_event_type = 'Lock'"
                        ),
                        {"db": database, "holder": holder_pid},
                    ).scalar_one()
                killed: int = watching.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> :holder"
                    ),
                    {"db": database, "holder": holder_pid},
                ).scalar_one()
        return killed
    finally:
        holder.dispose()


@pytest.mark.parametrize(
    ("table", "flags"),
    [("requests", []), ("rate_buckets", ["--rpm", "3000"])],
    ids=["claims-and-results", "shared-rate-buckets"],
)
def test_a_run_reconnects_when_its_postgres_connections_are_terminated(
    tmp_path: Path, table: str, flags: list[str]
) -> None:
    with fresh_postgres_database() as db_url:
        cli = runner(db_url)
        path = tmp_path / "requests.jsonl"
        path.write_bytes(jsonl([request_line(f"r{i:03d}", f"q {i}") for i in range(REQUESTS)]))
        batch_id = invoke(cli, "submit", str(path)).stdout.strip()
        watcher = create_engine(os.environ[POSTGRES_URL_VARIABLE], isolation_level="AUTOCOMMIT")
        app = create_app(announcing(latency_s=0.1))
        with running_simulator(app=app) as url:
            env = clean_env(db_url, ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-test")
            worker = subprocess.Popen(
                [BATCHRUN, "-v", "run", batch_id, "--max-concurrency", "8", *flags],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                killed = []
                for threshold in (REQUESTS // 4, REQUESTS // 2):
                    wait_until_received(app, threshold, worker)
                    killed.append(terminate_mid_statement(db_url, watcher, table))
                _, stderr = worker.communicate(timeout=120)
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.communicate()
                watcher.dispose()

        assert all(count >= 1 for count in killed), killed
        assert worker.returncode == 0, stderr
        assert "lost the connection to the database" in stderr
        assert "terminating connection due to administrator command" in stderr
        assert "retrying in 0.5 s" in stderr
        status = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
        assert status["processing_status"] == "ended"
        assert status["request_counts"]["succeeded"] == REQUESTS
        exported = invoke(cli, "results", batch_id).stdout.splitlines()
        custom_ids = [json.loads(row)["custom_id"] for row in exported]
        assert custom_ids == [f"r{i:03d}" for i in range(REQUESTS)]
        assert app.stats.received == REQUESTS
        assert app.stats.duplicate_receptions == 0
