"""``batchrun run --processes N`` as a user meets it: real processes, the simulator on a socket,
a SQLite file and a Postgres database. Every request gets exactly one result, a limit binds
the workers together, Ctrl-C and kill -9 (of the parent or of a worker) lose nothing and leave
no worker behind, bad values are clear errors."""

from __future__ import annotations

import json
import os
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
from tests.webhooks import running_webhook_receiver

pytestmark = pytest.mark.acceptance

BATCHRUN = str(Path(sys.executable).parent / "batchrun")
# What every worker process of `run --processes` runs (batchrun.ops.processes).
WORKER_MARK = b"batchrun.ops.worker_process"


@pytest.fixture
def env(db_url: str) -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    yield {**clean, "BATCHRUN_DATABASE_URL": db_url, "ANTHROPIC_API_KEY": "sk-test"}


def submit(env: dict[str, str], path: Path, count: int, *args: str) -> str:
    path.write_bytes(jsonl([request_line(f"r{i:05d}", f"question {i}") for i in range(count)]))
    done = subprocess.run(
        [BATCHRUN, "submit", str(path), *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def start_run(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [BATCHRUN, "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scalar(db_url: str, sql: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(sql)).scalar_one() or 0)
    finally:
        engine.dispose()


def worker_pids(db_url: str) -> list[int]:
    """The worker processes of `run --processes` on this database that are alive now."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if WORKER_MARK not in (entry / "cmdline").read_bytes():
                continue
            if db_url.encode() not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def wait_for_workers(db_url: str, count: int, run: subprocess.Popen[str]) -> list[int]:
    deadline = time.monotonic() + 60
    while len(pids := worker_pids(db_url)) < count:
        if run.poll() is not None:
            pytest.fail(f"the run stopped early: {run.communicate()[1]}")
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return pids


def senders(db_url: str, batch_id: str) -> int:
    """How many runs (one per worker process) sent requests of the batch."""
    return scalar(
        db_url,
        "SELECT count(DISTINCT run_id) FROM batch_limits "
        f"WHERE batch_id = '{batch_id}' AND source = 'sent'",
    )


def test_two_processes_send_every_request_once_and_share_a_binding_limit(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=0.5, latency_jitter_s=0.5, seed=5))
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url}
        batch_id = submit(env, tmp_path / "requests.jsonl", 800)
        run = start_run(env, batch_id, "--rpm", "2400", "--processes", "2", "--json")
        stdout, stderr = run.communicate(timeout=180)

    assert run.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert app.stats.received == app.stats.distinct_bodies == 800
    assert app.stats.duplicate_receptions == 0
    assert scalar(db_url, "SELECT count(DISTINCT request_id) FROM results") == 800
    assert senders(db_url, batch_id) == 2
    # One summary for the whole run: both processes' sends, the batch as it ended.
    summary = json.loads(stdout)
    assert summary["exit_code"] == 0
    assert summary["run"]["sent"] == summary["run"]["succeeded"] == 800
    assert summary["batches"][0]["request_counts"]["succeeded"] == 800
    assert summary["batches"][0]["processing_status"] == "ended"
    per_second = app.stats.admitted_by_second
    seconds = sorted(per_second)
    counts = [per_second.get(s, [0])[0] for s in range(seconds[0], seconds[-1] + 1)]
    # 2400 a minute is 40 a second; every 10 s window stays under 400 + one second of burst.
    windows = [sum(counts[i : i + 10]) for i in range(len(counts) - 9)]
    assert max(windows) <= 400 + 40
    steady = counts[5:-5]
    assert sum(steady) / len(steady) >= 0.9 * 40
    assert worker_pids(db_url) == []


def test_ctrl_c_of_the_parent_drains_every_worker_and_the_next_run_finishes(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=1.0))
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url}
        batch_id = submit(env, tmp_path / "requests.jsonl", 400)
        run = start_run(env, batch_id, "--max-concurrency", "8", "--processes", "2")
        wait_for_workers(db_url, 2, run)
        wait_until_received(app, 24, run)
        # The parent holds the SQLite run lock for its workers: another run steps aside.
        other = None
        if db_url.startswith("sqlite"):
            other = subprocess.run(
                [BATCHRUN, "run", batch_id], env=env, capture_output=True, text=True, timeout=60
            )
        # The parent only, as a terminal's Ctrl-C: the workers run in sessions of their own.
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
        recorded = scalar(db_url, "SELECT count(*) FROM results")
        received = app.stats.received
        left = worker_pids(db_url)
        finisher = start_run(env, batch_id)
        _, finisher_stderr = finisher.communicate(timeout=180)

    assert run.returncode == 130, stderr
    assert "interrupted by Ctrl-C" in stderr
    # Each worker logs that it stops; the run logs it once, in its own format.
    assert stderr.count("stopping; requests in flight are being recorded") == 1
    assert "WARNING batchrun.dispatch.dispatcher: interrupted by Ctrl-C: stopping" in stderr
    assert "Traceback" not in stderr
    if other is not None:
        assert other.returncode == 6, other.stderr
        assert f"(pid {run.pid}," in other.stderr
    assert left == []
    assert recorded == received  # both workers recorded every request they had sent
    assert recorded < 400
    assert finisher.returncode == 0, finisher_stderr
    assert app.stats.duplicate_receptions == 0
    assert scalar(db_url, "SELECT count(*) FROM results WHERE result_type = 'succeeded'") == 400


def test_a_second_ctrl_c_stops_every_worker_at_once(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=30.0))
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url}
        batch_id = submit(env, tmp_path / "requests.jsonl", 100)
        run = start_run(env, batch_id, "--max-concurrency", "4", "--processes", "2")
        wait_for_workers(db_url, 2, run)
        wait_until_received(app, 8, run)
        run.send_signal(signal.SIGINT)
        time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, stderr = run.communicate(timeout=60)
        took_s = time.monotonic() - started

    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert took_s < 20  # not the 30 s the requests in flight would take
    assert worker_pids(db_url) == []
    assert scalar(db_url, "SELECT count(*) FROM results") == 0


def test_a_killed_parent_leaves_no_worker_running_and_nothing_is_lost_or_sent_twice(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=1.0))
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url}
        batch_id = submit(env, tmp_path / "requests.jsonl", 400)
        run = start_run(env, batch_id, "--max-concurrency", "8", "--processes", "2")
        wait_for_workers(db_url, 2, run)
        wait_until_received(app, 24, run)
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
        # The workers notice the parent is gone, record what they sent, and stop.
        deadline = time.monotonic() + 60
        while worker_pids(db_url):
            assert time.monotonic() < deadline, "workers outlived their parent"
            time.sleep(0.1)
        recorded = scalar(db_url, "SELECT count(*) FROM results")
        received = app.stats.received
        finisher = start_run(env, batch_id)
        _, finisher_stderr = finisher.communicate(timeout=180)

    assert recorded == received
    assert recorded < 400
    assert finisher.returncode == 0, finisher_stderr
    assert app.stats.duplicate_receptions == 0
    assert scalar(db_url, "SELECT count(*) FROM results WHERE result_type = 'succeeded'") == 400


def test_a_killed_worker_is_reported_the_other_finishes_and_the_run_fails(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=0.3, latency_jitter_s=0.2, seed=2))
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url}
        batch_id = submit(env, tmp_path / "requests.jsonl", 300)
        run = start_run(env, batch_id, "--max-concurrency", "8", "--processes", "2")
        victim, _ = wait_for_workers(db_url, 2, run)
        wait_until_received(app, 40, run)
        os.kill(victim, signal.SIGKILL)
        _, stderr = run.communicate(timeout=180)

    assert run.returncode == 1, stderr
    assert f"(pid {victim}) ended without finishing (killed by SIGKILL)" in stderr
    assert "Traceback" not in stderr
    # The other worker went on to the end, the dead one's requests in flight included: they
    # went back to the queue at once, without waiting for their leases to run out.
    assert scalar(db_url, "SELECT count(*) FROM results WHERE result_type = 'succeeded'") == 300
    # Only what the killed worker had in flight may have been sent twice.
    assert app.stats.duplicate_receptions <= 8
    assert worker_pids(db_url) == []


def test_the_built_in_simulator_needs_no_key_with_several_processes(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    batch_id = submit(env, tmp_path / "requests.jsonl", 60, "--endpoint", "simulator")
    run = start_run(env, batch_id, "--processes", "2", "--json")
    stdout, stderr = run.communicate(timeout=180)

    assert run.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["batches"][0]["endpoint"] == "simulator"
    assert summary["run"]["sent"] == 60
    assert scalar(db_url, "SELECT count(DISTINCT request_id) FROM results") == 60


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--processes", "0"], "must be from 1 to 64 (or auto), not 0"),
        (["--processes", "x"], "'x' is not a number of processes"),
        (["--processes", "-2"], "is not a number of processes"),
        (["--processes", "2", "--forever"], "runs in one process"),
        (["--processes", "2", "--metrics-port", "0"], "serves one process's run"),
    ],
)
def test_bad_process_counts_and_combinations_are_clear_usage_errors(
    env: dict[str, str], args: list[str], words: str
) -> None:
    done = subprocess.run([BATCHRUN, "run", *args], env=env, capture_output=True, text=True)

    assert done.returncode == 2, done.stderr
    assert words in " ".join(done.stderr.split())
    assert "--processes" in done.stderr or "--forever" in done.stderr or "--metrics" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_mistake_every_worker_finds_is_said_once_with_its_exit_code(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request_line(f"r{i}", model="my-own-model") for i in range(20)]))
    batch_id = subprocess.run(
        [BATCHRUN, "submit", str(path), "--endpoint", "simulator"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    done = subprocess.run(
        [BATCHRUN, "run", batch_id, "--processes", "2", "--max-cost", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2, done.stderr
    assert done.stderr.count("--max-cost cannot be kept for my-own-model") == 1
    assert "Traceback" not in done.stderr


def test_the_end_of_a_batch_is_notified_once_however_many_workers_sent_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    batch_id = submit(env, tmp_path / "requests.jsonl", 60, "--endpoint", "simulator")

    with running_webhook_receiver() as receiver:
        done = subprocess.run(
            [BATCHRUN, "run", batch_id, "--processes", "2", "--notify", receiver.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    assert done.returncode == 0, done.stderr
    (document,) = receiver.delivered()
    assert document["event"] == "ended"
    assert document["batch"]["id"] == batch_id
    assert document["request_counts"]["succeeded"] == 60
