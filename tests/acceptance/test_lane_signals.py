"""A provider batch whose results never end (the hostile server trickles them), or whose
poll is never answered: the real CLI in a subprocess gets SIGTERM or SIGINT and exits within
a few seconds, with the lines it had read imported, on SQLite and Postgres."""

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

from tests.conftest import jsonl, request_line
from tests.hostile import HostileServer, running_hostile_server

pytestmark = pytest.mark.acceptance

BATCHRUN = str(Path(sys.executable).parent / "batchrun")
KEY = "sk-hostile-signal-key-0123456789"


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    yield {
        **clean,
        "BATCHRUN_DATABASE_URL": db_url,
        "BATCHRUN_CONFIG": str(tmp_path / "batchrun.toml"),
        "HOSTILE_KEY": KEY,
    }


def scalar(db_url: str, sql: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def downloading(server: HostileServer) -> bool:
    """Whether the run has asked for the results (the only call that accepts binary)."""
    return any(request.headers.get("accept") == "application/binary" for request in server.log)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_an_endless_results_download_ends_the_run_keeping_what_it_read(
    env: dict[str, str], db_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    with running_hostile_server() as server:
        server.drip_interval_s = 0.5
        (tmp_path / "batchrun.toml").write_text(
            f'[endpoints.hostile]\nbase_url = "{server.url}"\napi_key_env = "HOSTILE_KEY"\n'
            'batch_api = "anthropic"\ntimeout_s = 5\n'
        )
        path = tmp_path / "requests.jsonl"
        lines = [request_line(f"r{i}", f"<<hostile:batch_trickle>> q{i}") for i in range(5)]
        path.write_bytes(jsonl(lines))
        batch_id = subprocess.run(
            [BATCHRUN, "submit", str(path), "--endpoint", "hostile", "--lane", "batch"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        worker = subprocess.Popen(
            [BATCHRUN, "run", batch_id, "--poll-interval", "0.3s"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not downloading(server) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert downloading(server)
            # The four complete lines came at once and are imported while the fifth, which
            # never ends, is still being read.
            succeeded = "SELECT count(*) FROM results WHERE result_type = 'succeeded'"
            while scalar(db_url, succeeded) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert scalar(db_url, succeeded) == 4
            assert worker.poll() is None
            sent_at = time.monotonic()
            worker.send_signal(signum)
            _, stderr = worker.communicate(timeout=30)
            took_s = time.monotonic() - sent_at
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)

    assert took_s < 5, f"the run took {took_s:.1f} s to stop"
    assert worker.returncode == 130, stderr
    assert scalar(db_url, "SELECT count(*) FROM results WHERE result_type = 'succeeded'") == 4
    # The fifth request is still held by its provider batch: the next run reads the file
    # again, it is never sent in real time.
    assert scalar(db_url, "SELECT count(*) FROM requests WHERE state = 'provider'") == 1
    assert not [r for r in server.log if r.body and b'"requests"' not in r.body]
    assert KEY not in stderr


def test_sigterm_while_the_provider_never_answers_a_poll_ends_the_run_within_seconds(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    with running_hostile_server() as server:
        (tmp_path / "batchrun.toml").write_text(
            f'[endpoints.hostile]\nbase_url = "{server.url}"\napi_key_env = "HOSTILE_KEY"\n'
            'batch_api = "anthropic"\n'
        )
        path = tmp_path / "requests.jsonl"
        lines = [request_line(f"r{i}", f"<<hostile:batch_hang>> q{i}") for i in range(3)]
        path.write_bytes(jsonl(lines))
        batch_id = subprocess.run(
            [BATCHRUN, "submit", str(path), "--endpoint", "hostile", "--lane", "batch"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        worker = subprocess.Popen(
            [BATCHRUN, "run", batch_id, "--poll-interval", "0.3s"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            # The create, then a poll that hangs.
            while len(server.log) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(server.log) >= 2
            time.sleep(1.0)
            sent_at = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=60)
            took_s = time.monotonic() - sent_at
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)

    assert took_s < 8, f"the run took {took_s:.1f} s to stop"
    assert worker.returncode == 130, stderr
    # The provider batch was created: its requests stay held for the next run's poll.
    assert scalar(db_url, "SELECT count(*) FROM requests WHERE state = 'provider'") == 3
    assert scalar(db_url, "SELECT count(*) FROM provider_batches WHERE state = 'created'") == 1
