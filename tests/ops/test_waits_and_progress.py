"""What a server's word can do to a run, and what progress says about it, in virtual time:
an absurd announced limit cannot stall a run, a long wait is said, early rates are the
steady ones, and the first progress line comes at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rich.console import Console

from batchrun.cli.progress import RunDisplay, progress_line, progress_table
from batchrun.config.prices import PriceTable
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import Demand, Limiter, LimiterSettings
from batchrun.ops.monitor import RunMonitor
from batchrun.ops.session import Progress
from batchrun.records import ClaimedRequest, Retryable, ServerLimits, Succeeded, Usage, error_body

KEY = ("gw", "claude-haiku-4-5")


def answer(limits: ServerLimits | None = None) -> Succeeded:
    return Succeeded("{}", "m", "end_turn", Usage(10, 5), None, limits)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_absurd_announced_limit_cannot_stall_the_run() -> None:
    limiter = Limiter({KEY: RateLimits(rpm=600)})
    loop = asyncio.get_running_loop()
    permit = await limiter.acquire(KEY, Demand(10, 10))
    limiter.settle(permit, answer(ServerLimits(limits={"rpm": 0.0001})))
    start, granted = loop.time(), 0

    while loop.time() - start < 60:
        limiter.settle(await limiter.acquire(KEY, Demand(10, 10)), answer())
        granted += 1

    # Held to 1 % of the configured 600 a minute, not to one request in seven days.
    assert limiter.limit_in_force(KEY, "rpm") == pytest.approx(6.0)
    assert 5 <= granted <= 8


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_without_a_configured_limit_the_floor_is_one_a_minute() -> None:
    limiter = Limiter()
    permit = await limiter.acquire(KEY, Demand(10, 10))
    limiter.settle(permit, answer(ServerLimits(limits={"rpm": 0.0001})))

    assert limiter.limit_in_force(KEY, "rpm") == 1.0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_long_retry_after_is_said_in_progress(caplog: pytest.LogCaptureFixture) -> None:
    limiter = Limiter({KEY: RateLimits(rpm=600)})
    monitor = RunMonitor(prices=PriceTable(), counts={}, guard=None)
    permit = await limiter.acquire(KEY, Demand(10, 10))
    ten_hours = Retryable("HTTP 429", error_body("rate_limit_error", "x"), 429, 36_000.0)

    limiter.settle(permit, ten_hours)
    monitor._limiter = limiter  # what attach does, without a dispatcher
    line = progress_line(monitor.snapshot())

    (wait,) = limiter.waits()
    assert (wait.endpoint, wait.model, wait.reason) == (*KEY, "retry-after")
    assert "waiting 10h00m for retry-after from gw (claude-haiku-4-5)" in line
    assert "asks to wait 36000 s (retry-after) for claude-haiku-4-5" in caplog.text


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_first_seconds_show_the_steady_rate_not_the_first_burst() -> None:
    loop = asyncio.get_running_loop()
    # Without the start-up ramp, which holds the first seconds below the limit anyway.
    limiter = Limiter({KEY: RateLimits(rpm=600)}, settings=LimiterSettings(ramp_s=0))
    monitor = RunMonitor(prices=PriceTable(), counts={}, guard=None)
    monitor._limiter, monitor._started = limiter, loop.time()
    request = ClaimedRequest(1, "b", "c", KEY[1], 10, "{}", 0, 0)
    start = loop.time()

    while loop.time() - start < 5:
        permit = await limiter.acquire(KEY, Demand(10, 10))
        monitor.admit(request, permit)
        monitor.settled(request, permit, answer())
    (key,) = monitor.snapshot().keys

    (rpm,) = [use for use in key.uses if use.dimension == "rpm"]
    # 10 a second plus a one-second burst at the start: read as 600 a minute, not 720.
    assert rpm.share == pytest.approx(1.0, abs=0.05)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_log_shows_progress_at_once_with_retries_and_the_last_failure(
    tmp_path: Path,
) -> None:
    monitor = RunMonitor(prices=PriceTable(), counts={}, guard=None)
    out = (tmp_path / "log.txt").open("w")
    display = RunDisplay(Console(file=out, width=200), live=False, quiet=False, as_json=False)

    display(Progress(monitor.snapshot()))
    out.close()

    line = (tmp_path / "log.txt").read_text()
    assert "progress: 0/0 done" in line
    assert "0 retried, 0 rate-limited" in line


def test_the_live_view_fits_80_columns(tmp_path: Path) -> None:
    async def snapshot() -> object:
        monitor = RunMonitor(prices=PriceTable(), counts={}, guard=None)
        limiter = Limiter({("langdock-eu", "claude-sonnet-4-5-20250929"): RateLimits(rpm=500)})
        permit = await limiter.acquire(("langdock-eu", "claude-sonnet-4-5-20250929"), Demand(1, 1))
        monitor._limiter = limiter
        monitor.admit(ClaimedRequest(1, "b", "c", "m", 1, "{}", 0, 0), permit)
        return progress_table(monitor.snapshot())

    console = Console(file=(tmp_path / "view.txt").open("w"), width=80)
    console.print(asyncio.run(snapshot()))
    console.file.close()

    lines = (tmp_path / "view.txt").read_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("claude-sonnet-4-5-20250929: rpm" in line for line in lines)
    assert "ETA" in lines[0]
