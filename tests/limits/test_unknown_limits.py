"""Unknown limits found end to end: batchrun with nothing configured against the simulator
on 127.0.0.1 (a real socket, real time) enforcing limits it never announces, refusing with
bare 429s (no retry-after, no rate-limit headers)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import batchrun
from batchrun.cli.endpoint_views import endpoints_lines
from batchrun.simulator import ModelLimits, SimulatorConfig, running_simulator
from batchrun.simulator.app import create_app
from tests.clitools import invoke, runner
from tests.conftest import request_line

REQUESTS = 120
SERVER_RPM = 300


@pytest.mark.timeout(180)
def test_nothing_configured_and_bare_429s_find_the_limit_without_a_flood(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = SimulatorConfig(
        limits={"*": ModelLimits(rpm=SERVER_RPM, burst_s=1.0)},
        latency_s=0.1,
        send_ratelimit_headers=False,
        send_retry_after=False,
    )
    app = create_app(config)
    with running_simulator(app=app) as url:
        (tmp_path / "batchrun.toml").write_text(
            f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\n'
        )
        env = {"HOME": str(tmp_path)}
        with batchrun.Client(sqlite_url, config=tmp_path / "batchrun.toml", env=env) as client:
            lines = [request_line(f"r{i}", f"q{i}") for i in range(REQUESTS)]
            batch_id = client.submit(lines, endpoint="sim").id
            assert client.run(batch_id).exit_code == 0
            assert client.status(batch_id).request_counts.succeeded == REQUESTS
            learned = client.learned_limits()
            lines = endpoints_lines(client.endpoints(), {}, learned, time.time())
        status = invoke(runner(sqlite_url, HOME=str(tmp_path)), "status", batch_id)

    stats = app.stats
    refused = stats.by_status.get("429", 0)
    # Sent all at once, 115 of the first 120 would be refused; found gently, a few are.
    assert 0 < refused / stats.received <= 0.1
    # What was learned is in the database for the next run, below the server's limit and
    # not far off it, and `batchrun endpoints` shows it with its age.
    (rpm,) = [item for item in learned if item.dimension == "rpm"]
    assert (rpm.endpoint, rpm.model) == ("sim", "claude-sonnet-4-5")
    assert 0.3 * SERVER_RPM <= rpm.learned_per_min <= 1.05 * SERVER_RPM
    (shown,) = [line for line in lines if line.startswith("  learned:")]
    value = f"{rpm.learned_per_min:,.0f}"
    assert re.fullmatch(rf"  learned:    claude-sonnet-4-5: {value} rpm \(\d+ s ago\)", shown)
    # So does `batchrun status` for the batch's endpoint.
    assert status.exit_code == 0
    assert re.search(rf"learned: +claude-sonnet-4-5: {value} rpm \(\d+ s ago\)", status.output)
