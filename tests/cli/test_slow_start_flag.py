"""`run --no-slow-start`: with nothing configured and no limit announced, the batch goes out
at once instead of from 60 requests a minute."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from tests.clitools import invoke, runner
from tests.conftest import jsonl, request_line

REQUESTS = 24


@pytest.mark.parametrize(("flag", "at_once"), [("--no-slow-start", True), ("--slow-start", False)])
def test_without_the_slow_start_the_batch_goes_out_within_a_second(
    sqlite_url: str, tmp_path: Path, flag: str, at_once: bool
) -> None:
    # Answers take 0.5 s. Without the slow start the first request goes alone (the gentle
    # start waits for one answer before the rest) and the others together half a second
    # later; with it they go from one a second, growing with each answer, over seconds.
    app = create_app(SimulatorConfig(latency_s=0.5))
    cli = runner(sqlite_url)
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request_line(f"r{i}", f"q{i}") for i in range(REQUESTS)]))
    batch_id = invoke(cli, "submit", str(path)).stdout.strip()
    with running_simulator(app=app) as url:
        ran = invoke(
            cli, "run", batch_id, flag, ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-test"
        )
    assert ran.exit_code == 0, ran.output
    seconds = sorted(app.stats.admitted_by_second)
    span_s = seconds[-1] - seconds[0]
    if at_once:
        assert span_s <= 1
    else:
        assert span_s >= 3
    assert app.stats.received == REQUESTS
