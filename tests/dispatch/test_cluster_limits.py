"""One learned limit per cluster, the start-up ramp, model families sharing one bucket, and what
the limiter tells the dispatcher (requests a second, pauses).

Several limiters on one database stand for several workers: each has its own
:class:`DatabaseBank` and its own database thread, as separate processes would. Everything
runs in virtual time (looptime); the banks' Unix clock advances with the loop.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.banks import DatabaseBank
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import INCREASE_SHARE
from batchrun.limits.limiter import Demand, Limiter, LimiterSettings
from batchrun.records import Retryable, ServerLimits, Succeeded, Usage, error_body
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store
from batchrun.transport.endpoints import SIMULATOR, builtin_endpoints
from batchrun.transport.http import create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient
from tests.conftest import request_line, submit
from tests.dispatch.helpers import FAST_RETRIES, NO_AUTH

KEY = ("ep", "claude-sonnet-4-5")
DEMAND = Demand(10, 10)
NO_RAMP = LimiterSettings(ramp_s=0)
UNPACED = LimiterSettings(ramp_s=0, start_per_min=None)
SIMULATED = builtin_endpoints({})[SIMULATOR]


def succeeded(input_tokens: int = 10, output_tokens: int = 10) -> Succeeded:
    return Succeeded("{}", "m", "end_turn", Usage(input_tokens, output_tokens), None)


def rate_limited(retry_after_s: float | None) -> Retryable:
    return Retryable("HTTP 429", error_body("rate_limit_error", "x"), 429, retry_after_s)


def _unix_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    return lambda: 1_700_000_000.0 + loop.time()


@asynccontextmanager
async def workers(
    store: Store,
    count: int,
    limits: RateLimits,
    settings: LimiterSettings = NO_RAMP,
) -> AsyncIterator[list[Limiter]]:
    """``count`` limiters sharing the store's database, each through its own route there."""
    loop = asyncio.get_running_loop()
    dbs = [WorkerDatabase(store) for _ in range(count)]
    try:
        yield [
            Limiter(
                {KEY: limits}, settings=settings, bank=DatabaseBank(db, clock=_unix_clock(loop))
            )
            for db in dbs
        ]
    finally:
        for db in dbs:
            db.close()


# -- a limit learned by one worker is every worker's ------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_limit_one_worker_learns_from_a_429_paces_the_other_from_its_next_take(
    store: Store,
) -> None:
    loop = asyncio.get_running_loop()
    async with workers(store, 2, RateLimits(rpm=1200)) as (first, second):
        permit = await first.acquire(KEY, DEMAND)
        # Too little history to measure: a quarter less, 900 a minute.
        first.settle(permit, rate_limited(retry_after_s=1.0))
        assert second.limit_in_force(KEY, "rpm") == 1200
        await first.acquire(KEY, DEMAND)  # the lesson travels with this take

        await second.acquire(KEY, DEMAND)
        assert second.limit_in_force(KEY, "rpm") == 900
        granted = []
        for _ in range(40):  # the first 15 empty the bucket that filled during the pause
            await second.acquire(KEY, DEMAND)
            granted.append(loop.time())

    # Paced at 900 a minute, 15 a second (and climbing by 1 % of 1,200 every 2 s), not the
    # 20 it is configured for.
    gaps = [later - earlier for earlier, later in itertools.pairwise(granted)]
    assert gaps[-20:] == pytest.approx([1 / 15] * 20, rel=0.02)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_learned_limit_climbs_back_at_the_clusters_pace_not_once_per_worker(
    store: Store,
) -> None:
    loop = asyncio.get_running_loop()
    counts = [0, 0, 0]
    async with workers(store, 3, RateLimits(rpm=1200)) as limiters:
        permit = await limiters[0].acquire(KEY, DEMAND)
        limiters[0].settle(permit, rate_limited(retry_after_s=None))
        lowered_at = loop.time()

        async def work(index: int) -> None:
            limiter = limiters[index]
            while loop.time() - lowered_at < 20:
                permit = await limiter.acquire(KEY, DEMAND)
                counts[index] += 1
                limiter.settle(permit, succeeded())

        await asyncio.gather(*(work(index) for index in range(3)))
        seen = [limiter.limit_in_force(KEY, "rpm") for limiter in limiters]

    # 900 after the 429, then 1 % of 1,200 every 2 s: 1,020 after 20 s for all three. Had each
    # worker climbed on its own, the shared limit would have risen three times as fast.
    step = INCREASE_SHARE * 1200
    assert seen == pytest.approx([900 + 10 * step] * 3, abs=step)
    # What they sent together: the bucket that filled during the 429's 1 s pause (15), then
    # the climb's average over the other 19 s: about 320 in all; all three had their share.
    average_per_min = 900 + step * 4.5
    assert sum(counts) == pytest.approx(15 + average_per_min / 60 * 19, rel=0.02)
    assert min(counts) > 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_announced_limits_and_pauses_reach_every_worker(store: Store) -> None:
    async with workers(store, 2, RateLimits(rpm=1200)) as (first, second):
        permit = await first.acquire(KEY, DEMAND)
        announced = Succeeded(
            "{}", "m", "end_turn", Usage(10, 10), None, ServerLimits(limits={"rpm": 600.0})
        )
        first.settle(permit, announced)
        permit = await first.acquire(KEY, DEMAND)
        first.settle(permit, rate_limited(retry_after_s=30.0))
        # The pause travels with the first worker's next take, which then waits it out.
        waiting = asyncio.ensure_future(first.acquire(KEY, DEMAND))
        await asyncio.sleep(0.01)

        turn = asyncio.ensure_future(second.acquire(KEY, DEMAND))
        await asyncio.sleep(1)
        assert not turn.done()
        assert second.limit_in_force(KEY, "rpm") == 600
        assert second.paused_for_s(*KEY) == pytest.approx(29, abs=0.2)
        (wait,) = second.waits()
        assert wait.seconds == pytest.approx(29, abs=0.2)
        assert wait.reason == "set by another worker"
        await asyncio.gather(turn, waiting)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_without_limits_workers_still_share_pauses_within_a_second(store: Store) -> None:
    loop = asyncio.get_running_loop()
    async with workers(store, 2, RateLimits(), UNPACED) as (first, second):
        await second.acquire(KEY, DEMAND)  # no limit: the database is read at most once a second
        permit = await first.acquire(KEY, DEMAND)
        first.settle(permit, rate_limited(retry_after_s=30.0))
        waiting = asyncio.ensure_future(first.acquire(KEY, DEMAND))  # writes the pause at once
        await asyncio.sleep(1.0)
        paused_at = loop.time()

        await second.acquire(KEY, DEMAND)

        assert loop.time() - paused_at == pytest.approx(29, abs=0.1)
        await waiting


# -- the ramp ---------------------------------------------------------------------------------


async def _grant_times(limiter: Limiter, seconds: float) -> list[float]:
    """Acquire continuously for ``seconds``; the first grant is answered at once (the lone
    first request) and starts the climb."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    granted = []
    while loop.time() - start < seconds:
        permit = await limiter.acquire(KEY, DEMAND)
        granted.append(loop.time() - start)
        limiter.settle(permit, succeeded())
    return granted


def _in(granted: list[float], start: float, end: float) -> int:
    return sum(1 for at in granted if start < at <= end)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_start_ramps_from_a_fifth_of_the_limit_to_all_of_it_in_five_seconds() -> None:
    limiter = Limiter({KEY: RateLimits(rpm=600)})  # 10 a second
    granted = await _grant_times(limiter, 20)

    first = granted[0]
    # The first request waits as long as it would without the ramp (one request's refill at
    # the full rate: 0.1 s); those after it, at a fifth of the rate.
    assert first == pytest.approx(1 / 10)
    # Then the rate climbs from 2 to 10 a second over 5 s: 30 in all, the first second about
    # 2.8, the last about 9.2; after it, 10 a second.
    assert _in(granted, first, first + 5) == pytest.approx(30, abs=2)
    assert _in(granted, first, first + 1) == pytest.approx(2.8, abs=1)
    assert _in(granted, first + 4, first + 5) == pytest.approx(9.2, abs=1)
    assert _in(granted, first + 6, first + 16) == pytest.approx(100, abs=1)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_after_a_long_pause_the_rate_ramps_up_again() -> None:
    limiter = Limiter({KEY: RateLimits(rpm=600)})
    await _grant_times(limiter, 10)
    permit = await limiter.acquire(KEY, DEMAND)
    limiter.settle(permit, rate_limited(retry_after_s=30.0))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(29)

    resumed = [at - 1 for at in await _grant_times(limiter, 11) if at >= 1]

    # The bucket filled during the pause: what is left is the ramp's start (2), then the climb.
    assert _in(resumed, 0, 5) == pytest.approx(2 + 30, abs=3)
    assert _in(resumed, 5.5, 9.5) == pytest.approx(40, abs=1)
    assert loop.time() > 40


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_workers_on_one_database_share_one_ramp(store: Store) -> None:
    async with workers(store, 2, RateLimits(rpm=600), LimiterSettings()) as (first, second):
        permit = await first.acquire(KEY, DEMAND)
        first.settle(permit, succeeded())  # the first answer, to one worker: the climb starts
        both = await asyncio.gather(_grant_times(first, 12), _grant_times(second, 12))
    granted = sorted(at for times in both for at in times)

    # Together, as one limiter: about 30 in the ramp's 5 s, then 10 a second.
    assert _in(granted, 0, 5) == pytest.approx(30, abs=3)
    assert _in(granted, 6, 11) == pytest.approx(50, abs=2)


# -- what the dispatcher reads ----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_request_rate_follows_the_limits_in_force_and_the_average_request() -> None:
    limiter = Limiter(
        {
            ("ep", "by-requests"): RateLimits(rpm=600),
            ("ep", "by-tokens"): RateLimits(rpm=600, tpm=60_000),
            ("ep", "claude-sonnet-4*"): RateLimits(rpm=120),
        },
        settings=NO_RAMP,
    )

    assert limiter.request_rate_per_s("ep", "by-requests") == pytest.approx(10)
    assert limiter.request_rate_per_s("ep", "unlimited") is None
    # Before any request: 1,000 input and 500 output tokens each, so 1,000/s ÷ 1,500.
    assert limiter.request_rate_per_s("ep", "by-tokens") == pytest.approx(1000 / 1500)
    permit = await limiter.acquire(("ep", "by-tokens"), Demand(100, 1900))
    # Before any answer: what requests reserved (100 + 1,900).
    assert limiter.request_rate_per_s("ep", "by-tokens") == pytest.approx(1000 / 2000)
    limiter.settle(permit, succeeded(100, 400))
    # Then what answers used: 500 tokens, 2 a second.
    assert limiter.request_rate_per_s("ep", "by-tokens") == pytest.approx(2)
    # One rate for a family, whichever model of it is asked about.
    assert limiter.request_rate_per_s("ep", "claude-sonnet-4-5") == pytest.approx(2)
    assert limiter.request_rate_per_s("ep", "claude-sonnet-4-1") == pytest.approx(2)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_request_rate_falls_with_a_learned_limit() -> None:
    limiter = Limiter({KEY: RateLimits(rpm=1200)}, settings=NO_RAMP)
    permit = await limiter.acquire(KEY, DEMAND)

    limiter.settle(permit, rate_limited(retry_after_s=5.0))

    assert limiter.request_rate_per_s(*KEY) == pytest.approx(900 / 60)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_paused_for_counts_down_a_keys_pause_and_is_0_for_others() -> None:
    limiter = Limiter(
        {KEY: RateLimits(rpm=600), ("ep", "claude-sonnet-4*"): RateLimits(rpm=600)},
        settings=NO_RAMP,
    )
    assert limiter.paused_for_s(*KEY) == 0
    permit = await limiter.acquire(("ep", "claude-sonnet-4-1"), DEMAND)
    limiter.settle(permit, rate_limited(retry_after_s=30.0))

    await asyncio.sleep(10)

    assert limiter.paused_for_s("ep", "claude-sonnet-4-1") == pytest.approx(30 - 10, abs=0.2)
    # The family's other models wait with it; a model of its own does not.
    assert limiter.paused_for_s("ep", "claude-sonnet-4-20250514") == pytest.approx(20, abs=0.2)
    assert limiter.paused_for_s(*KEY) == 0


# -- model families through the dispatcher ----------------------------------------------------


async def _dispatch_with(store: Store, batch_id: str, app: object, limiter: Limiter) -> None:
    async with create_http_client(
        timeout_s=60, max_connections=64, transport=in_process_transport(app)
    ) as http:
        db = WorkerDatabase(store)
        dispatcher = Dispatcher(
            db=db,
            senders={SIMULATOR: MessagesClient(http, endpoint=SIMULATED, headers=NO_AUTH)},
            limiter=limiter,
            config=FAST_RETRIES,
        )
        try:
            await dispatcher.run({batch_id: SIMULATOR})
        finally:
            db.close()


@pytest.mark.timeout(300)  # a thousand requests through the simulator; slow on a busy machine
@pytest.mark.parametrize(
    ("entry", "per_s"),
    [("claude-sonnet-4*", 10.0), ("*", 20.0)],
    ids=["family-shares-one-limit", "star-gives-each-model-its-own"],
)
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_two_models_of_a_family_draw_from_one_bucket(
    sqlite_store: Store, entry: str, per_s: float
) -> None:
    app = create_app(SimulatorConfig(latency_s=1.0))
    models = ["claude-sonnet-4-5", "claude-sonnet-4-20250514"]
    lines = [request_line(f"r{i}", f"q{i}", model=models[i % 2]) for i in range(int(per_s * 40))]
    batch_id = submit(sqlite_store, lines)
    limiter = Limiter({(SIMULATOR, entry): RateLimits(rpm=600)})

    await _dispatch_with(sqlite_store, batch_id, app, limiter)

    # The two models together at the family's 600 a minute; with "*", 600 each.
    seconds = app.stats.admitted_by_second
    window = range(min(seconds) + 10, max(seconds) - 3)
    admitted = sum(seconds.get(second, [0])[0] for second in window)
    assert admitted / len(window) == pytest.approx(per_s, rel=0.03)
    assert app.stats.per_model == {model: len(lines) // 2 for model in models}
    assert app.stats.by_status == {"200": len(lines)}
