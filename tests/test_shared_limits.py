"""Rate-limit buckets shared through the database: statements and several limiters at once."""

from __future__ import annotations

import asyncio

import pytest

from batchrun.banks import DatabaseBank, PendingChanges
from batchrun.limiter import Demand, Limiter, RateLimits
from batchrun.store.store import Store

KEY = ("ep", "claude-sonnet-4-5")
RPM_600 = {"rpm": (10.0, 10.0)}  # 10 a second, a bucket of 1 s


def take(store: Store, now: float, *, cost: float = 1.0, changes: PendingChanges | None = None):
    return store.rates.take(
        endpoint=KEY[0],
        model=KEY[1],
        costs={"rpm": cost},
        rates=RPM_600,
        changes=changes or PendingChanges(),
        now=now,
    )


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

    banks = [DatabaseBank(store.rates, clock=clock) for _ in range(3)]
    limiters = [Limiter({KEY: RateLimits(rpm=600)}, bank=bank) for bank in banks]
    granted = 0

    async def worker(limiter: Limiter) -> None:
        nonlocal granted
        while loop.time() - start < 30:
            await limiter.acquire(KEY, Demand(10, 10))
            granted += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(limiter) for limiter in limiters)), 40)
    finally:
        for bank in banks:
            bank.close()

    # 600 a minute is 10 a second: 30 s allow 300 in all, plus the one in flight per worker.
    assert 295 <= granted <= 303
