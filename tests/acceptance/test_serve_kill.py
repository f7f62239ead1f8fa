"""`batchrun serve` killed with SIGKILL while its workers send a batch, then started again:
the SDK sees the same batch throughout, it finishes, nothing is lost, and what was paid
twice is at most what was in flight at the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from sqlalchemy import create_engine, text

from batchrun.simulator import create_app, running_simulator
from tests.acceptance.servers import announcing
from tests.conftest import request_line
from tests.server.serving import KEY_A

pytestmark = pytest.mark.acceptance

BATCHRUN = str(Path(sys.executable).parent / "batchrun")
START_TIMEOUT_S = 60.0


def scalar(db_url: str, sql: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    yield {
        **clean,
        "HOME": str(tmp_path),
        "BATCHRUN_DATABASE_URL": db_url,
        "BATCHRUN_SERVE_API_KEYS": KEY_A,
        "BATCHRUN_CONFIG": str(tmp_path / "batchrun.toml"),
    }


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


_OPEN: list[anthropic.Anthropic] = []


def sdk(url: str) -> anthropic.Anthropic:
    """An SDK client of the server at ``url``, closed after the test."""
    client = anthropic.Anthropic(base_url=url, api_key=KEY_A, max_retries=0)
    _OPEN.append(client)
    return client


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`batchrun serve` on a free port, logging to ``log``; its process and base URL once
    it listens. (A file, not a pipe: nobody reads a pipe after start-up, and a full one
    would stop the server.)"""
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [BATCHRUN, "serve", "--port", "0", "--endpoint", "sim", "--workers", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        said = log.read_text()
        if "listening on " in said:
            return server, said.split("listening on ")[1].split()[0]
        assert server.poll() is None, said
        time.sleep(0.05)
    server.kill()
    raise AssertionError(f"serve did not listen within {START_TIMEOUT_S} s: {log.read_text()}")


def test_kill_9_of_serve_mid_batch_then_restart_finishes_the_same_batch(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=0.2, latency_jitter_s=0.2, seed=5))
    with running_simulator(app=app) as sim_url:
        (tmp_path / "batchrun.toml").write_text(
            f'[endpoints.sim]\nbase_url = "{sim_url}"\nauth = "none"\n'
        )
        server, url = start_server(env, tmp_path / "serve-1.log")
        try:
            client = sdk(url)
            lines = [request_line(f"r{i:04d}", f"question {i}") for i in range(600)]
            batch = client.messages.batches.create(requests=lines)  # type: ignore[arg-type]
            deadline = time.monotonic() + 120
            while client.messages.batches.retrieve(batch.id).request_counts.succeeded < 100:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
        finally:
            server.kill()
        in_flight = scalar(db_url, "SELECT count(*) FROM requests WHERE state = 'running'")
        assert in_flight > 0

        server, url = start_server(env, tmp_path / "serve-2.log")
        try:
            client = sdk(url)
            deadline = time.monotonic() + 240
            while (again := client.messages.batches.retrieve(batch.id)).processing_status != (
                "ended"
            ):
                assert time.monotonic() < deadline, again
                time.sleep(0.3)
            results = list(client.messages.batches.results(batch.id))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)

    assert again.id == batch.id and again.request_counts.succeeded == 600
    assert sorted(item.custom_id for item in results) == [f"r{i:04d}" for i in range(600)]
    assert all(item.result.type == "succeeded" for item in results)
    assert scalar(db_url, "SELECT count(DISTINCT request_id) FROM results") == 600
    assert app.stats.billed_total - 600 <= in_flight
    # uvicorn ends by raising the signal again once it has shut down gracefully.
    assert server.returncode in (0, -signal.SIGTERM)
