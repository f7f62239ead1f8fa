"""A server that charges input + max_tokens up front and never gives back what the reply did
not use (llmock's way), announcing its limit and what it has left: batchrun with nothing
configured learns it from the answers' ``-remaining`` headers before anything is refused,
spends the server's full bucket, and is then refused (almost) nothing. Dispatcher against the
in-process simulator, in virtual time (looptime)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from batchrun.limits.learning import ServerCount
from batchrun.limits.limiter import Demand, Limiter
from batchrun.simulator import ModelLimits, SimulatorConfig, create_app
from batchrun.store.store import Store
from tests.conftest import request_line, submit
from tests.dispatch.helpers import dispatch

MODEL = "claude-sonnet-4-5"
TPM = 60_000
MAX_TOKENS = 512
REQUESTS = 200
PROMPT = "the quick brown fox jumps over the lazy dog " * 8


def server(tpm_counts: str) -> SimulatorConfig:
    """A full minute's bucket of tokens, full at the start, requests admitted (and charged)
    when their answer is ready 2 s later, replies of 40 tokens: llmock as bench/ratelimit.py's
    u4 runs it."""
    return SimulatorConfig(
        limits={"*": ModelLimits(tpm=TPM, burst_s=60.0)},
        tpm_counts=tpm_counts,  # type: ignore[arg-type]
        latency_s=2.0,
        admit_after_latency=True,
        output_tokens=40,
    )


async def run(store: Store, config: SimulatorConfig) -> tuple[Limiter, float, int]:
    """Run the batch with nothing configured: the limiter, the seconds taken, and the 429s."""
    app = create_app(config)
    lines = [request_line(f"r{i}", f"{i} {PROMPT}", max_tokens=MAX_TOKENS) for i in range(REQUESTS)]
    batch_id = submit(store, lines)
    limiter = Limiter()
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await dispatch(store, batch_id, app, limiter=limiter)
    assert report.succeeded == REQUESTS
    return limiter, loop.time() - started, app.stats.by_status.get("429", 0)


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.sqlite_only
async def test_max_tokens_charged_up_front_is_learned_before_a_refusal_and_its_bucket_spent(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchrun.limits.limiter")
    config = server("max_tokens")
    _, elapsed_s, refused = await run(store, config)

    # Learned from what the server took, not from a refusal: none came.
    assert refused == 0
    assert any("it charges max_tokens up front" in r.getMessage() for r in caplog.records)
    # Each request is charged ~600 tokens: ~120,000 in all against 60,000 a minute. Reserving
    # max_tokens from the first request would take two minutes; the server's full bucket
    # (a minute's worth) is spent at the pace of the learned reservation instead.
    charged_s = REQUESTS * (MAX_TOKENS + 80) / TPM * 60
    assert elapsed_s < 0.8 * charged_s


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.sqlite_only
async def test_a_server_that_counts_the_real_output_keeps_the_learned_reservation(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchrun.limits.limiter")
    limiter, _, _ = await run(store, server("actual"))

    assert not any("max_tokens up front" in r.getMessage() for r in caplog.records)
    permit = await limiter.acquire(("simulator", MODEL), Demand(100, MAX_TOKENS))
    assert permit.reserved["tpm"] < 100 + MAX_TOKENS / 2


# -- what the -remaining headers show, read answer after answer (pure) ---------------------

LIMIT = 60_000.0  # 1,000 a second
USED = 150.0  # input 100 + a 50-token reply
UP_FRONT = 100.0 + MAX_TOKENS


def drained(charge: float, answers: int, *, start: float = 50_000.0) -> ServerCount:
    """A server with ``start`` left that takes ``charge`` per answer, ten answers a second."""
    count = ServerCount()
    left = start
    for i in range(answers + 1):
        left += LIMIT / 60 * 0.1 - charge if i else 0.0
        count.read(left, LIMIT, i * 0.1, USED if i else 0.0, UP_FRONT if i else 0.0)
    return count


def test_a_server_taking_max_tokens_per_answer_shows_it_beyond_the_requests_in_flight() -> None:
    count = drained(UP_FRONT, 40)
    # ~40 × 462 taken beyond use: more than 20 requests in flight at full cost + slack.
    assert count.charges_up_front(in_flight=20 * UP_FRONT, slack=1_000)
    # Fewer answers cannot tell it from requests in flight charged already.
    assert not drained(UP_FRONT, 10).charges_up_front(in_flight=20 * UP_FRONT, slack=1_000)


def test_a_server_taking_what_the_answers_used_shows_nothing() -> None:
    assert not drained(USED, 200).charges_up_front(in_flight=0.0, slack=1_000)


def test_spans_where_the_bucket_may_have_been_full_are_not_counted() -> None:
    # One answer a second, refilled faster than it is drained: full again between answers,
    # what it took is unknown.
    full = ServerCount()
    for i in range(200):
        full.read(LIMIT - UP_FRONT, LIMIT, i * 1.0, USED if i else 0.0, UP_FRONT)
    assert not full.charges_up_front(in_flight=0.0, slack=0.0)
    # Ten a second from the same full bucket drain it: counted.
    assert drained(UP_FRONT, 200, start=LIMIT).charges_up_front(in_flight=0.0, slack=0.0)


def test_more_taken_than_max_tokens_explains_is_someone_else() -> None:
    assert not drained(4 * UP_FRONT, 100).charges_up_front(in_flight=0.0, slack=1_000)


def test_what_is_left_refills_from_the_latest_reading_up_to_the_most_seen() -> None:
    count = ServerCount()
    assert count.left(0.0) is None
    count.read(30_000, LIMIT, 0.0, 0.0, 0.0)
    count.read(10_000, LIMIT, 1.0, USED, UP_FRONT)
    assert count.left(3.0) == 12_000
    assert count.left(100.0) == 30_000
