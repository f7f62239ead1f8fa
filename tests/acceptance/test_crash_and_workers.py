"""Killed workers, stopped workers, and several workers on one database, as real processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from batchrun.simulator import create_app, running_simulator
from tests.acceptance.servers import announcing
from tests.acceptance.waits import wait_until_received
from tests.conftest import jsonl, request_line

pytestmark = pytest.mark.acceptance

BATCHRUN = str(Path(sys.executable).parent / "batchrun")


@pytest.fixture
def env(db_url: str) -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    yield {**clean, "BATCHRUN_DATABASE_URL": db_url, "ANTHROPIC_API_KEY": "sk-test"}


def submit(env: dict[str, str], path: Path, count: int) -> str:
    path.write_bytes(jsonl([request_line(f"r{i:05d}", f"question {i}") for i in range(count)]))
    done = subprocess.run(
        [BATCHRUN, "submit", str(path)], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def start_run(env: dict[str, str], batch_id: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [BATCHRUN, "run", batch_id, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def scalar(db_url: str, sql: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=0.2, latency_jitter_s=0.2, seed=3))
    rng = random.Random(11)
    in_flight_at_kills = 0
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url}
        batch_id = submit(env, tmp_path / "requests.jsonl", 1000)
        for _ in range(4):
            worker = start_run(env, batch_id, "--max-concurrency", "32")
            time.sleep(rng.uniform(1.5, 4.0))
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=30)
            in_flight_at_kills += scalar(
                db_url, "SELECT count(*) FROM requests WHERE state = 'running'"
            )
        finisher = start_run(env, batch_id, "--max-concurrency", "32")
        _, stderr = finisher.communicate(timeout=300)

    assert finisher.returncode == 0, stderr
    assert scalar(db_url, "SELECT count(*) FROM results WHERE result_type = 'succeeded'") == 1000
    assert scalar(db_url, "SELECT count(DISTINCT custom_id) FROM results") == 1000
    assert app.stats.distinct_bodies == 1000
    # Only requests in flight at a kill could have been sent twice.
    assert app.stats.duplicate_receptions <= in_flight_at_kills
    # Their attempts show it: attempts count sends, not claims. A claim that a kill cut off
    # before its send counts nothing; only a send in flight at a kill may go uncounted.
    resent = scalar(db_url, "SELECT count(*) FROM requests WHERE attempts > 1")
    assert resent <= app.stats.duplicate_receptions
    sends = scalar(db_url, "SELECT sum(attempts) FROM requests")
    assert app.stats.received - in_flight_at_kills <= sends <= app.stats.received


def test_kill_9_under_a_limit_pays_twice_at_most_the_group_commit_window(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    # Under a limit a worker spends capacity taken in blocks and commits its results in
    # groups (at most GROUP_WRITES waiting, or GROUP_WINDOW_S): a kill -9 then costs the
    # answers received but not yet committed, which the next worker pays for again.
    app = create_app(announcing(latency_s=0.05, latency_jitter_s=0.1, seed=5))
    rng = random.Random(12)
    kills = 4
    in_flight_at_kills = 0
    unanswered_at_kills = 0
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url}
        batch_id = submit(env, tmp_path / "requests.jsonl", 1200)
        for _ in range(kills):
            worker = start_run(env, batch_id, "--rpm", "6000")
            wait_until_received(app, app.stats.received + 50, worker)
            time.sleep(rng.uniform(0.5, 2.0))
            # Sent and not yet answered: what any kill may cost twice.
            unanswered = app.stats.received - sum(app.stats.by_status.values())
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=30)
            unanswered_at_kills += unanswered
            in_flight_at_kills += scalar(
                db_url, "SELECT count(*) FROM requests WHERE state = 'running'"
            )
        finisher = start_run(env, batch_id, "--rpm", "6000")
        _, stderr = finisher.communicate(timeout=300)

    assert finisher.returncode == 0, stderr
    assert scalar(db_url, "SELECT count(DISTINCT custom_id) FROM results") == 1200
    assert app.stats.duplicate_receptions <= in_flight_at_kills
    # Beyond the sends that had no answer yet, what was sent again had its answer made but
    # not committed: answers the worker had not read yet, fewer than GROUP_WRITES waiting
    # for the window, and the group being committed. 10 a kill or fewer on a quiet machine
    # (docs/workers.md); up to 14 measured with the machine's load average at 25, and 15.25
    # in CI (three test processes on two cores: a starved worker reads its answers late).
    # The bound checked here is that CI figure with room; issue 27's 10 is not yet robust.
    assert app.stats.duplicate_receptions - unanswered_at_kills <= 20 * kills


def test_sigterm_records_requests_in_flight_and_the_next_run_finishes(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=1.0))
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url}
        batch_id = submit(env, tmp_path / "requests.jsonl", 300)
        worker = start_run(env, batch_id, "--max-concurrency", "10")
        # Once answers are being recorded the run's signal handlers are in place (a fixed
        # sleep could end before the process finished starting on a loaded machine).
        wait_until_received(app, 15, worker)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
        recorded = scalar(db_url, "SELECT count(*) FROM results")
        received = app.stats.received
        finisher = start_run(env, batch_id)
        _, finisher_stderr = finisher.communicate(timeout=120)

    assert worker.returncode == 130
    assert "interrupted by SIGTERM" in stderr
    assert "continues where this stopped" in stderr
    assert recorded == received  # every request sent before the stop was recorded
    assert finisher.returncode == 0, finisher_stderr
    assert app.stats.duplicate_receptions == 0
    assert scalar(db_url, "SELECT count(*) FROM results WHERE result_type = 'succeeded'") == 300


def test_three_workers_share_a_batch_and_one_rate_limit(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=0.5, latency_jitter_s=0.5, seed=5))
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url}
        batch_id = submit(env, tmp_path / "requests.jsonl", 800)
        workers = [start_run(env, batch_id, "--rpm", "2400", "--share") for _ in range(3)]
        outputs = [worker.communicate(timeout=180)[1] for worker in workers]

    assert [worker.returncode for worker in workers] == [0, 0, 0], outputs
    assert app.stats.received == app.stats.distinct_bodies == 800
    assert app.stats.duplicate_receptions == 0
    assert scalar(db_url, "SELECT count(DISTINCT request_id) FROM results") == 800
    per_second = app.stats.admitted_by_second
    seconds = sorted(per_second)
    counts = [per_second.get(s, [0])[0] for s in range(seconds[0], seconds[-1] + 1)]
    # 2400 a minute is 40 a second; every 10 s window stays under 400 + one second of burst.
    windows = [sum(counts[i : i + 10]) for i in range(len(counts) - 9)]
    assert max(windows) <= 400 + 40
    steady = counts[5:-5]
    assert sum(steady) / len(steady) >= 0.9 * 40
