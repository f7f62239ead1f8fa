"""Cron safety with the installed `batchrun` in real processes: overlapping runs on one
database, --wait, a killed run's lock, --forever and status --watch."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchrun.ops.runlock import lock_path
from batchrun.simulator import create_app, running_simulator
from batchrun.simulator.app import SimulatorApp
from batchrun.store.store import Store
from tests.acceptance.servers import announcing
from tests.conftest import jsonl, request_line

pytestmark = pytest.mark.acceptance

BATCHRUN = str(Path(sys.executable).parent / "batchrun")


def batchrun(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BATCHRUN, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [BATCHRUN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture
def simulator() -> Iterator[tuple[SimulatorApp, str]]:
    app = create_app(announcing(latency_s=0.2))
    with running_simulator(app=app) as url:
        yield app, url


def environment(db_url: str, tmp_path: Path, url: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    return {
        **clean,
        "BATCHRUN_DATABASE_URL": db_url,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "sk-test",
    }


def submit(env: dict[str, str], tmp_path: Path, count: int, name: str = "r.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(jsonl([request_line(f"{name[0]}{i:04d}", f"q {i}") for i in range(count)]))
    result = batchrun("submit", str(path), env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def held_by(database_url: str, pid: int) -> bool:
    path = lock_path(database_url)
    assert path is not None
    try:
        return json.loads(path.read_text() or "{}").get("pid") == pid
    except (OSError, ValueError):
        return False


def test_a_second_run_on_one_database_steps_aside_on_sqlite_and_shares_on_postgres(
    db_url: str, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    app, url = simulator
    env = environment(db_url, tmp_path, url)
    batch_id = submit(env, tmp_path, 200)
    # 200 requests at 300 a minute: the first run is still sending when the second ends,
    # and is then stopped as Ctrl-C stops it (no time limit to wait out).
    first = start("run", "--rpm", "300", env=env)
    wait_for(lambda: app.stats.received >= 3)

    began = time.monotonic()
    second = batchrun("run", batch_id, "--rpm", "300", "--max-runtime", "2s", env=env)
    second_took_s = time.monotonic() - began
    first.send_signal(signal.SIGINT)
    _, first_stderr = first.communicate(timeout=60)

    assert first.returncode == 130, first_stderr
    if db_url.startswith("sqlite"):
        assert second.returncode == 6, second.stderr
        assert f"another `batchrun run` (pid {first.pid}, running since" in second.stderr
        assert "--wait" in second.stderr
        assert second_took_s < 5
    else:
        # Postgres: both workers claim from the same queue.
        assert second.returncode == 5, second.stderr
        assert "another" not in second.stderr
    assert app.stats.duplicate_receptions == 0


def test_wait_lets_the_second_run_start_when_the_first_ends(
    sqlite_url: str, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    _, url = simulator
    env = environment(sqlite_url, tmp_path, url)
    submit(env, tmp_path, 10)
    first = start("run", "--rpm", "300", env=env)
    wait_for(lambda: held_by(sqlite_url, first.pid))

    second = batchrun("run", "--wait", env=env)
    first.communicate(timeout=60)

    assert first.returncode == 0
    assert second.returncode == 0, second.stderr
    assert f"waiting for another `batchrun run` (pid {first.pid}" in second.stderr
    assert "no batch has queued requests" in second.stderr


def test_a_killed_run_does_not_block_the_next_one(
    sqlite_url: str, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    app, url = simulator
    env = environment(sqlite_url, tmp_path, url)
    submit(env, tmp_path, 100)
    first = start("run", "--rpm", "120", env=env)
    wait_for(lambda: held_by(sqlite_url, first.pid) and app.stats.received >= 2)

    first.kill()
    first.communicate(timeout=30)
    second = batchrun("run", "--max-runtime", "1s", "--rpm", "120", env=env)

    assert second.returncode == 5, second.stderr
    assert "another" not in second.stderr


def test_forever_runs_batches_submitted_later_until_ctrl_c(
    sqlite_url: str, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    _, url = simulator
    env = environment(sqlite_url, tmp_path, url)
    # As in production, the database exists before the worker starts polling it.
    assert batchrun("db", "upgrade", env=env).returncode == 0
    worker = start("run", "--forever", "--poll-interval", "0.2", env=env)

    def ended(batch_id: str) -> bool:
        state = json.loads(batchrun("status", batch_id, "--json", env=env).stdout)
        return bool(state["processing_status"] == "ended")

    try:
        first = submit(env, tmp_path, 3, "a.jsonl")
        wait_for(lambda: ended(first))
        second = submit(env, tmp_path, 3, "b.jsonl")
        wait_for(lambda: ended(second))
    except AssertionError as exc:
        worker.send_signal(signal.SIGINT)
        raise AssertionError(f"{exc}\nworker: {worker.communicate(timeout=30)[1]}") from None
    worker.send_signal(signal.SIGINT)
    _, stderr = worker.communicate(timeout=30)

    assert worker.returncode == 130, stderr
    assert "no queued work; looking again every 0.2 s" in stderr
    assert stderr.count("cost of this run") == 2


def test_sigterm_stops_an_idle_forever_run_with_130_and_says_so(
    sqlite_url: str, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    _, url = simulator
    env = environment(sqlite_url, tmp_path, url)
    assert batchrun("db", "upgrade", env=env).returncode == 0
    worker = start("run", "--forever", "--poll-interval", "30s", env=env)
    assert worker.stderr is not None
    first = worker.stderr.readline()

    worker.send_signal(signal.SIGTERM)
    _, rest = worker.communicate(timeout=30)

    assert "no queued work; looking again every 30 s" in first
    assert worker.returncode == 130, rest
    assert "interrupted by SIGTERM: nothing was in flight; stopped" in rest


def test_status_watch_stops_on_a_pause_with_its_exit_code(
    sqlite_url: str, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    _, url = simulator
    env = environment(sqlite_url, tmp_path, url)
    batch_id = submit(env, tmp_path, 3)
    store = Store.open(sqlite_url)
    try:
        store.lifecycle.pause(batch_id, "authentication failed for endpoint anthropic")
    finally:
        store.close()

    watched = batchrun("status", batch_id, "--watch", "--interval", "0.1", env=env)

    assert watched.returncode == 4, watched.stderr
    assert f"{batch_id} is paused: authentication failed" in watched.stderr


def test_status_watch_follows_a_running_batch_until_it_ends(
    db_url: str, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    _, url = simulator
    env = environment(db_url, tmp_path, url)
    batch_id = submit(env, tmp_path, 8)
    runner = start("run", batch_id, "--rpm", "180", env=env)

    watched = batchrun("status", batch_id, "--watch", "--interval", "0.3", env=env)
    runner.communicate(timeout=60)

    assert watched.returncode == 0, watched.stderr
    lines = [line for line in watched.stderr.splitlines() if line.startswith(batch_id)]
    assert len(lines) >= 3
    assert "in_progress" in lines[0] and "ended" in lines[-1]
    assert "8/8 done" in lines[-1]
    assert "ended" in watched.stdout and "cost" in watched.stdout


def test_on_a_terminal_run_draws_a_live_view(
    sqlite_url: str, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    _, url = simulator
    env = environment(sqlite_url, tmp_path, url) | {"COLUMNS": "120"}
    batch_id = submit(env, tmp_path, 6)
    main, child = pty.openpty()
    process = subprocess.Popen(
        [BATCHRUN, "run", batch_id, "--rpm", "240"],
        env=env,
        stdin=child,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child side closed
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    process.wait(timeout=60)

    assert process.returncode == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    # Redrawn in place (cursor movement), with the limits table and the cost.
    assert "\x1b[1A" in text or "\x1b[2K" in text
    for expected in ("binds", "rpm", "240", "cost so far", "ETA", "6/6"):
        assert expected in text
    assert " progress: " not in text
