"""What the limiter learns from refusals, in virtual time (looptime): a server that charges
max_tokens up front, bare 429s that wait a slot at the learned limit, and fixed windows."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from batchrun.limits.dimensions import RateLimits
from batchrun.limits.learning import OUTPUT_MIN_SAMPLES
from batchrun.limits.limiter import Demand, Limiter, LimiterSettings
from batchrun.records import Retryable, ServerLimits, Succeeded, Usage, error_body

KEY = ("ep", "claude-sonnet-4-5")
DEMAND = Demand(raw_input_tokens=100, max_tokens=1000)
NO_RAMP = LimiterSettings(ramp_s=0)


def succeeded(input_tokens: int, output_tokens: int, limits: ServerLimits | None = None):
    return Succeeded("{}", "m", "end_turn", Usage(input_tokens, output_tokens), None, limits)


def refused(retry_after_s: float | None, *named: str) -> Retryable:
    retry = Retryable("HTTP 429", error_body("rate_limit_error", "limited"), 429, retry_after_s)
    return replace(retry, limits_named=frozenset(named))


async def answer_for(limiter: Limiter, seconds: float, output_tokens: int) -> None:
    """Requests answered one after the other for ``seconds``, using 100 input tokens and
    ``output_tokens`` each, under an announced 60,000 tokens a minute."""
    loop = asyncio.get_running_loop()
    announced = ServerLimits(limits={"tpm": 60_000.0})
    until = loop.time() + seconds
    while loop.time() < until:
        permit = await limiter.acquire(KEY, DEMAND)
        await asyncio.sleep(0.5)
        limiter.settle(permit, succeeded(100, output_tokens, announced))


async def answered_at_once(limiter: Limiter, announced: ServerLimits) -> None:
    """Enough 40-token replies for the learned output reservation, all within half a
    second: too short a history to measure what the server let through."""
    permits = [await limiter.acquire(KEY, DEMAND) for _ in range(OUTPUT_MIN_SAMPLES)]
    await asyncio.sleep(0.5)
    for permit in permits:
        limiter.settle(permit, succeeded(100, 40, announced))


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_token_429_far_below_the_real_usage_teaches_that_max_tokens_is_charged() -> None:
    limiter = Limiter(settings=NO_RAMP)
    # Replies of 40 tokens: the learned output reservation drops far below max_tokens.
    await answer_for(limiter, 20, output_tokens=40)
    before = await limiter.acquire(KEY, DEMAND)
    assert before.reserved["tpm"] < 100 + 1000

    # Refused for tokens at ~16,800 a minute really used, of 60,000.
    limiter.settle(before, refused(1.0, "tpm"))

    after = await limiter.acquire(KEY, DEMAND)
    assert after.reserved["tpm"] == 100 + 1000
    # Not taken for a lower limit: the refusal says how the server counts, not how much.
    assert limiter.limit_in_force(KEY, "tpm") == 60_000


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_token_429_with_room_left_by_the_servers_count_teaches_it_at_once() -> None:
    # llmock: a full minute's bucket admits the first requests at once, each charged
    # input + max_tokens; the first refusal comes within seconds, before any history, with
    # its -remaining header still above what batchrun reserved for the request.
    limiter = Limiter(settings=NO_RAMP)
    loop = asyncio.get_running_loop()
    announced = ServerLimits(limits={"tpm": 60_000.0})
    await answered_at_once(limiter, announced)
    started = loop.time()
    permit = await limiter.acquire(KEY, DEMAND)
    assert permit.reserved["tpm"] < 100 + 1000
    left = ServerLimits(limits={"tpm": 60_000.0}, remaining={"tpm": permit.reserved["tpm"] + 1})
    limiter.settle(permit, replace(refused(1.0, "tpm"), server_limits=left))

    after = await limiter.acquire(KEY, DEMAND)
    assert after.reserved["tpm"] == 100 + 1000
    assert loop.time() - started < 5
    assert limiter.limit_in_force(KEY, "tpm") == 60_000


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_token_429_with_less_left_than_reserved_teaches_nothing_of_charging() -> None:
    limiter = Limiter(settings=NO_RAMP)
    announced = ServerLimits(limits={"tpm": 60_000.0})
    await answered_at_once(limiter, announced)
    permit = await limiter.acquire(KEY, DEMAND)
    left = ServerLimits(limits={"tpm": 60_000.0}, remaining={"tpm": permit.reserved["tpm"] - 1})
    limiter.settle(permit, replace(refused(1.0, "tpm"), server_limits=left))

    after = await limiter.acquire(KEY, DEMAND)
    assert after.reserved["tpm"] < 100 + 1000


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_token_429_at_the_limit_keeps_reserving_the_learned_output() -> None:
    limiter = Limiter(settings=NO_RAMP)
    # Replies of 900 tokens at two a second: ~120,000 a minute offered against 60,000, so
    # the tokens really used are at the limit when it refuses.
    await answer_for(limiter, 20, output_tokens=900)
    permit = await limiter.acquire(KEY, DEMAND)
    limiter.settle(permit, refused(1.0, "tpm"))

    after = await limiter.acquire(KEY, DEMAND)
    assert after.reserved["tpm"] < 100 + 1000


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_bare_429_waits_one_slot_at_the_lowered_limit_not_a_second() -> None:
    loop = asyncio.get_running_loop()
    limiter = Limiter({KEY: RateLimits(rpm=1200)}, settings=NO_RAMP)
    await limiter.acquire(KEY, DEMAND)
    await asyncio.sleep(10)  # the bucket is full again
    permit = await limiter.acquire(KEY, DEMAND)
    refused_at = loop.time()

    limiter.settle(permit, refused(None))
    await limiter.acquire(KEY, DEMAND)

    # Lowered blind by a quarter, to 900 a minute: the next request a fifteenth of a second
    # later (the old pause: 1 s).
    assert loop.time() - refused_at == pytest.approx(60 / 900, abs=1e-3)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_refusals_through_a_closed_window_pause_until_it_reopens_and_lower_nothing() -> None:
    loop = asyncio.get_running_loop()
    limiter = Limiter({KEY: RateLimits(rpm=600)}, settings=NO_RAMP)
    window_opens = 60.0
    # A window closed from the start: refused until 60 s, probed with growing pauses.
    lowest, refusals = 600.0, 0
    while True:
        permit = await limiter.acquire(KEY, DEMAND)
        if loop.time() >= window_opens:
            break
        limiter.settle(permit, refused(None))
        refusals += 1
        lowest = min(lowest, limiter.limit_in_force(KEY, "rpm") or 0)
    # Probes every 4 s at most once refusals repeat: about 18 refusals, not 600 a minute's.
    assert 14 <= refusals <= 22
    # Only the first refusal lowered the limit (by a quarter, with no history to measure).
    assert lowest == 450
    sent_in_window = loop.time()
    limiter.settle(permit, succeeded(10, 10))

    # The window is used up 20 s later: the refusal pauses until it reopens, a minute
    # after the request that found it open.
    await asyncio.sleep(20)
    permit = await limiter.acquire(KEY, DEMAND)
    limiter.settle(permit, refused(None))
    (wait,) = limiter.waits()
    assert wait.reason == "a fixed window"
    assert loop.time() + wait.seconds == pytest.approx(sent_in_window + 60.25, abs=0.01)
