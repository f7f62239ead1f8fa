"""Rate-limit buckets shared through the database: statements and several limiters at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.banks import DatabaseBank
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import KeyPolicy, PendingChanges
from batchrun.limits.limiter import Demand, Limiter, LimiterSettings
from batchrun.records import Retryable, Succeeded, Usage, error_body
from batchrun.store.store import Store

KEY = ("ep", "claude-sonnet-4-5")
# 10 a second, a bucket of 1 s; no ramp.
RPM_600 = KeyPolicy(configured=RateLimits(rpm=600), burst_s=1.0, ramp_s=0)


def take(store: Store, now: float, *, cost: float = 1.0, changes: PendingChanges | None = None):
    """(seconds to wait, the key's pause end)."""
    grant, record = store.rates.take(
        endpoint=KEY[0],
        model=KEY[1],
        costs={"rpm": cost},
        policy=RPM_600,
        changes=changes or PendingChanges(),
        now=now,
    )
    return grant.wait_s, record.paused_until


def test_a_shared_bucket_starts_empty_and_refills_at_its_rate(store: Store) -> None:
    assert take(store, 1000.0) == (pytest.approx(0.1), 0.0)
    assert take(store, 1000.1)[0] == 0.0
    assert take(store, 1000.1)[0] == pytest.approx(0.1)
    assert take(store, 1001.5)[0] == 0.0  # refilled to the 10 of capacity, one taken


def test_corrections_and_pauses_travel_with_the_next_take(store: Store) -> None:
    take(store, 1000.0)
    assert take(store, 1001.0)[0] == 0.0  # level 10 → 9

    wait_s, paused_until = take(
        store, 1001.0, cost=10, changes=PendingChanges(deltas={"rpm": -5.0}, pause_until=1003.0)
    )

    assert paused_until == 1003.0
    assert wait_s == pytest.approx(2.0)  # the pause, not the 0.6 s the debt needs
    assert take(store, 1003.0, cost=10)[0] == 0.0  # 4 + 2 s of refill, capped at 10
    assert take(store, 1003.0, cost=10)[0] == pytest.approx(1.0)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_limiters_sharing_the_database_stay_under_one_limit_together(
    store: Store,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()

    def clock() -> float:
        return 1_700_000_000.0 + loop.time()

    dbs = [WorkerDatabase(store) for _ in range(3)]
    banks = [DatabaseBank(db, clock=clock) for db in dbs]
    limiters = [
        Limiter({KEY: RateLimits(rpm=600)}, settings=LimiterSettings(ramp_s=0), bank=bank)
        for bank in banks
    ]
    granted = 0

    async def worker(limiter: Limiter) -> None:
        nonlocal granted
        while loop.time() - start < 30:
            await limiter.acquire(KEY, Demand(10, 10))
            granted += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(limiter) for limiter in limiters)), 40)
    finally:
        for db in dbs:
            db.close()

    # 600 a minute is 10 a second: 30 s allow 300 in all, plus the one in flight per worker.
    assert 295 <= granted <= 303


def _unix_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    return lambda: 1_700_000_000.0 + loop.time()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_429_one_worker_sees_pauses_the_workers_sharing_the_database(
    store: Store,
) -> None:
    loop = asyncio.get_running_loop()
    dbs = [WorkerDatabase(store) for _ in range(2)]
    first, second = (
        Limiter({KEY: RateLimits(rpm=600)}, bank=DatabaseBank(db, clock=_unix_clock(loop)))
        for db in dbs
    )
    try:
        permit = await first.acquire(KEY, Demand(10, 10))
        first.settle(permit, Retryable("HTTP 429", error_body("rate_limit_error", "x"), 429, 5.0))
        paused_at = loop.time()
        # The pause travels with the first worker's next take...
        await first.acquire(KEY, Demand(10, 10))
        # ...and the second worker, which never saw the 429, waits it out too.
        await second.acquire(KEY, Demand(10, 10))
        waited_s = loop.time() - paused_at
    finally:
        for db in dbs:
            db.close()

    assert waited_s >= 5.0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_shared_bank_gives_back_what_answers_did_not_use(store: Store) -> None:
    loop = asyncio.get_running_loop()
    db = WorkerDatabase(store)
    limiter = Limiter(
        {KEY: RateLimits(otpm=6000)},
        settings=LimiterSettings(output_reservation="max_tokens", ramp_s=0),
        bank=DatabaseBank(db, clock=_unix_clock(loop)),
    )
    start, granted = loop.time(), 0
    try:
        while loop.time() - start < 60:
            # Each request reserves its max_tokens (1,000) and uses 100.
            permit = await limiter.acquire(KEY, Demand(10, 1000))
            limiter.settle(permit, Succeeded("{}", "m", "end_turn", Usage(10, 100), None))
            granted += 1
    finally:
        db.close()

    # 6,000 output tokens a minute at 100 each: about 60, not the 6 the reservations allow.
    assert 55 <= granted <= 70
