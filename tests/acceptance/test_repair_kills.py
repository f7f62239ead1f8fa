"""A worker killed (``kill -9``) in the middle of repairs, as real processes: no row is lost,
no broken answer's cost is lost, and no request whose broken answer was stored is sent in its
original form again; only what was in flight at a kill is sent twice."""

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
from batchrun.structured.schemas import ask_for
from tests.conftest import jsonl
from tests.structured.servers import BROKEN, RepairsAnsweredWell

pytestmark = pytest.mark.acceptance

BATCHRUN = str(Path(sys.executable).parent / "batchrun")
ROWS = 120
SCHEMA = {
    "type": "object",
    "required": ["category", "priority"],
    "properties": {
        "category": {"enum": ["billing", "bug", "other"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}


@pytest.fixture
def env(db_url: str) -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    yield {**clean, "BATCHRUN_DATABASE_URL": db_url, "ANTHROPIC_API_KEY": "sk-test"}


def scalar(db_url: str, sql: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(sql)).scalar_one() or 0)
    finally:
        engine.dispose()


def test_kill_9_between_broken_answers_and_their_repairs_resumes_with_the_repairs(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    lines = []
    for i in range(ROWS):
        text_ = f"{BROKEN} ticket {i}" if i % 2 == 0 else f"ticket {i}"
        params = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 200,
            "messages": [{"role": "user", "content": text_}],
        }
        lines.append({"custom_id": f"t{i:04d}", "params": ask_for(params, SCHEMA, "native")})
    path = tmp_path / "tickets.jsonl"
    path.write_bytes(jsonl(lines))
    app = create_app(SimulatorConfig(latency_s=0.15, latency_jitter_s=0.15, seed=4))
    in_flight_at_kills = 0
    with running_simulator(app=RepairsAnsweredWell(app)) as url:  # type: ignore[arg-type]
        env = {**env, "ANTHROPIC_BASE_URL": url}
        submitted = subprocess.run(
            [BATCHRUN, "submit", str(path), "--repair", "1"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        batch_id = submitted.stdout.strip()
        for at_least in (10, 35):
            worker = subprocess.Popen(
                [BATCHRUN, "run", batch_id, "--max-concurrency", "8"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 120
            # Killed once broken answers are stored, some of them still waiting for their
            # repair: between the two.
            while scalar(db_url, "SELECT count(*) FROM answer_turns") < at_least:
                assert worker.poll() is None, worker.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.02)
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=30)
            in_flight_at_kills += scalar(
                db_url, "SELECT count(*) FROM requests WHERE state = 'running'"
            )
        waiting = scalar(
            db_url,
            "SELECT count(*) FROM requests WHERE repairs = 1 AND state IN ('queued', 'running')",
        )
        finisher = subprocess.run(
            [BATCHRUN, "run", batch_id, "--max-concurrency", "8"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert finisher.returncode == 0, finisher.stderr
    assert waiting > 0, "the kills came between broken answers and their repairs"
    succeeded = "SELECT count(*) FROM results WHERE result_type = 'succeeded'"
    assert scalar(db_url, succeeded) == ROWS
    # One broken answer per broken row, stored once, and one repair each.
    assert scalar(db_url, "SELECT count(*) FROM answer_turns") == ROWS // 2
    assert scalar(db_url, "SELECT count(*) FROM requests WHERE repairs = 1") == ROWS // 2
    assert app.stats.distinct_bodies == ROWS + ROWS // 2
    # Only what was in flight at a kill was sent twice: an original whose broken answer was
    # stored never again.
    assert app.stats.duplicate_receptions <= in_flight_at_kills
    sends = scalar(db_url, "SELECT sum(attempts) FROM requests")
    assert app.stats.received - in_flight_at_kills <= sends <= app.stats.received
    # Every answer stored is in the batch's totals: the broken ones' too.
    stored = scalar(db_url, "SELECT sum(input_tokens) FROM results") + scalar(
        db_url, "SELECT sum(input_tokens) FROM answer_turns"
    )
    assert scalar(db_url, "SELECT sum_input_tokens FROM batches") == stored
    assert scalar(db_url, "SELECT n_repairs FROM batches") == ROWS // 2
