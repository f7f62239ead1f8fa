"""`batchrun report` as a person looks at it: a real run against the simulator on a socket
under a rate limit, with retried 429s and 500s and a few final errors, then the report
opened in headless Chromium (``tests.browsing``), every chart checked for its series, and a
screenshot kept as a test artifact."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from batchrun.client import Client
from batchrun.simulator import ModelLimits, SimulatorConfig, running_simulator
from tests.clitools import batchrun, clean_env
from tests.conftest import jsonl, request_line

pytestmark = pytest.mark.browser

# 20 requests a second: the run takes about 12 s, half of it past the start-up ramp (5 s).
RPM = 1200
REQUESTS = 200
RETRIED_429 = ("r010", "r020", "r030")
RETRIED_500 = ("r015", "r025")
FINAL_400 = ("r040", "r041")
CHARTS = (
    ("chart-requests", "requests sent/min"),
    ("chart-tokens", "input tokens/min"),
    ("chart-tokens", "output tokens/min"),
    ("chart-failures", "retried sends"),
    ("chart-failures", "429 rate limited"),
    ("chart-failures", "errored results"),
    ("chart-cost", "claude-sonnet-4-5"),
)


def _prompt(custom_id: str) -> str:
    if custom_id in RETRIED_429:
        return f"{custom_id} [[sim:status=429:times=1:retry_after=1]]"
    if custom_id in RETRIED_500:
        return f"{custom_id} [[sim:status=500:times=1]]"
    if custom_id in FINAL_400:
        return f"{custom_id} [[sim:status=400]]"
    return f"{custom_id} tell me about rate limits"


def test_the_report_of_a_rate_limited_run_shows_every_chart_with_the_rate_on_the_limit(
    browser: Any, artifacts: Path, sqlite_url: str, tmp_path: Path
) -> None:
    simulator = SimulatorConfig(
        latency_s=0.05, latency_jitter_s=0.1, limits={"*": ModelLimits(rpm=RPM)}
    )
    ids = [f"r{i:03d}" for i in range(REQUESTS)]
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(jsonl([request_line(i, _prompt(i)) for i in ids]))
    config = tmp_path / "batchrun.toml"
    page_file = tmp_path / "report.html"
    with running_simulator(simulator) as sim_url:
        config.write_text(
            f'[endpoints.sim]\nbase_url = "{sim_url}"\nauth = "none"\n'
            f'[endpoints.sim.limits."*"]\nrpm = {RPM}\n'
        )
        # The real CLI in a subprocess (Playwright's sync API holds this thread's loop).
        env = clean_env(sqlite_url, BATCHRUN_CONFIG=str(config))
        submitted = batchrun("submit", str(requests), "--endpoint", "sim", env=env)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip()
        ran = batchrun("run", batch_id, "--quiet", env=env)
        assert ran.returncode == 3, ran.stderr  # some results errored
    reported = batchrun("report", batch_id, "-o", str(page_file), env=env)
    assert reported.returncode == 0, reported.stderr

    data = Client(sqlite_url, config=config).report(batch_id)
    (limit,) = data.limits
    assert (limit.dimension, limit.limit, limit.binding) == ("rpm", RPM, True)
    # Past the start-up ramp the rate sits on the limit line (read over a trailing tenth of
    # the run here, so it wobbles with each second's sends).
    plateau = [point.requests_per_min for point in data.rates[len(data.rates) // 2 : -2]]
    assert 0.75 * RPM <= statistics.median(plateau) <= 1.2 * RPM, plateau
    assert sum(point.rate_limited for point in data.failures) == len(RETRIED_429)
    assert sum(point.retried for point in data.failures) == len(RETRIED_429 + RETRIED_500)

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        page.goto(page_file.as_uri())
        for chart, name in CHARTS:
            drawn = page.locator(f"#{chart} [data-series='{name}']")
            assert drawn.count() >= 1, f"{chart}: no series {name}"
            box = drawn.first.bounding_box()
            assert box is not None and box["width"] > 100, f"{chart} {name}: {box}"
        binding = page.locator("#chart-requests [data-binding='true']")
        assert binding.count() >= 1
        assert page.locator("#chart-errors [data-bar='invalid_request_error']").count() == 1
        assert page.locator("#chart-latency-0 [data-bin]").count() >= 2
        assert page.locator("#chart-tokens-by-kind [data-bar='input']").count() == 1
        assert page.locator("svg.chart[data-empty='true']").count() == 0
        summary = page.locator("#summary").inner_text()
        assert batch_id in summary and f"{REQUESTS - len(FINAL_400):,}" in summary
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
    finally:
        page.close()
    # Self-contained: the page fetched nothing but itself.
    assert fetched == [page_file.as_uri()]
    assert problems == []
