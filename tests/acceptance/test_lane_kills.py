"""The batch lane killed with SIGKILL in each of its phases (a create, a poll, an import),
as real processes on SQLite and Postgres: resumed, every request ends with one result and the
simulator billed each exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from tests.conftest import jsonl, request_line

pytestmark = pytest.mark.acceptance

BATCHRUN = str(Path(sys.executable).parent / "batchrun")
# What the database shows while a run is in each phase of the batch lane.
PHASES = {
    "create": "SELECT count(*) FROM provider_batches WHERE state = 'intent'",
    "poll": "SELECT count(*) FROM provider_batches WHERE state = 'created' "
    "AND status = 'in_progress'",
    "import": "SELECT count(*) FROM provider_batches WHERE state = 'created' AND status = 'ended'",
}


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    yield {
        **clean,
        "BATCHRUN_DATABASE_URL": db_url,
        "BATCHRUN_CONFIG": str(tmp_path / "batchrun.toml"),
    }


def scalar(db_url: str, sql: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def kill_in(phase: str, env: dict[str, str], db_url: str, batch_id: str) -> bool:
    """Start a run, SIGKILL it once the database shows ``phase``; whether it got there."""
    worker = subprocess.Popen(
        [BATCHRUN, "run", batch_id, "--poll-interval", "0.3s", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    reached = False
    engine = create_engine(db_url)
    try:
        while worker.poll() is None and time.monotonic() < deadline:
            try:
                with engine.connect() as connection:
                    reached = connection.execute(text(PHASES[phase])).scalar_one() > 0
            except Exception:  # the schema is not there yet, or the database is busy
                reached = False
            if reached:
                break
            time.sleep(0.003)
    finally:
        engine.dispose()
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    return reached


def test_sigkill_in_every_phase_of_the_batch_lane_pays_nothing_twice(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(SimulatorConfig(batch_processing_s=2.0))
    with running_simulator(app=app) as url:
        (tmp_path / "batchrun.toml").write_text(
            f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\nbatch_api = "anthropic"\n'
            "batch_max_requests = 50\ntimeout_s = 1\n"
        )
        path = tmp_path / "requests.jsonl"
        path.write_bytes(jsonl([request_line(f"r{i:04d}", f"question {i}") for i in range(300)]))
        batch_id = subprocess.run(
            [BATCHRUN, "submit", str(path), "--endpoint", "sim", "--lane", "batch"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        reached = [kill_in(phase, env, db_url, batch_id) for phase in ("create", "poll", "import")]
        finisher = subprocess.run(
            [BATCHRUN, "run", batch_id, "--poll-interval", "0.3s"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert reached == [True, True, True]
    assert finisher.returncode == 0, finisher.stderr
    assert scalar(db_url, "SELECT count(*) FROM results WHERE result_type = 'succeeded'") == 300
    assert scalar(db_url, "SELECT count(DISTINCT request_id) FROM results") == 300
    assert app.stats.paid_twice == 0
    assert app.stats.billed_total == 300
    assert app.stats.received == 0
