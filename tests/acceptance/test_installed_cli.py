"""The installed `batchrun` command in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from anthropic.types.messages import MessageBatchIndividualResponse

from batchrun.simulator import create_app, running_simulator
from tests.acceptance.servers import announcing
from tests.conftest import jsonl, request_line

pytestmark = pytest.mark.acceptance

BATCHRUN = str(Path(sys.executable).parent / "batchrun")
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "requests.jsonl"


def batchrun(
    *args: str, env: dict[str, str], input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BATCHRUN, *args],
        env=env,
        input=input.decode() if input else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    # An empty config home: no config file of the machine running the tests is read.
    return {**clean, "BATCHRUN_DATABASE_URL": db_url, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def test_quickstart_submit_run_results_with_the_offline_simulator(
    env: dict[str, str], tmp_path: Path
) -> None:
    submitted = batchrun("submit", str(SAMPLES), "--endpoint", "simulator", env=env)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()

    ran = batchrun("run", batch_id, env=env)
    exported = batchrun("results", batch_id, "-o", str(tmp_path / "results.jsonl"), env=env)

    assert ran.returncode == 0, ran.stderr
    assert exported.returncode == 0, exported.stderr
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    parsed = [MessageBatchIndividualResponse.model_validate_json(line) for line in lines]
    assert len(parsed) == 6
    assert {item.result.type for item in parsed} == {"succeeded"}


def test_a_user_mistake_exits_non_zero_without_a_traceback(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "params": {"model": "m"}}\nnot json\n')

    result = batchrun("submit", str(bad), env=env)

    assert result.returncode == 1
    assert f"{bad}:1: " in result.stderr
    assert f"{bad}:2: " in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cancel_from_another_process_stops_a_running_batch_within_a_second(
    env: dict[str, str], tmp_path: Path
) -> None:
    app = create_app(announcing(latency_s=0.5))
    requests = tmp_path / "many.jsonl"
    requests.write_bytes(jsonl([request_line(f"r{i:04d}", f"question {i}") for i in range(2000)]))
    with running_simulator(app=app) as url:
        env = {**env, "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-test"}
        batch_id = batchrun("submit", str(requests), env=env).stdout.strip()
        runner = subprocess.Popen(
            [BATCHRUN, "run", batch_id, "--max-concurrency", "4"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while app.stats.received < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        canceled = batchrun("cancel", batch_id, env=env)
        canceled_at = time.monotonic()
        received_at_cancel = app.stats.received
        _, stderr = runner.communicate(timeout=60)
        stopped_within_s = time.monotonic() - canceled_at

    assert canceled.returncode == 0, canceled.stderr
    # A cancel is an outcome the caller of `run` should see.
    assert runner.returncode == 7, stderr
    # Seen within a second: at 4 in flight and 0.5 s each, at most ~8 sends per second
    # after the cancel, plus the 4 in flight.
    assert app.stats.received - received_at_cancel <= 12
    assert stopped_within_s < 5
    status = json.loads(batchrun("status", batch_id, "--json", env=env).stdout)
    counts = status["request_counts"]
    assert status["processing_status"] == "ended"
    assert counts["succeeded"] == app.stats.received
    assert counts["succeeded"] + counts["canceled"] == 2000
    assert app.stats.duplicate_receptions == 0
