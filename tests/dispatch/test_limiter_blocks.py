"""Capacity in blocks: a worker visits the shared bank once per block, not per request, still
paces each request as a take per request would have, gives back what it does not spend, and
a cluster stays within the stated bound of a limit.

Several limiters on one database stand for several workers (each with its own
:class:`DatabaseBank` and database thread, as separate processes would). Virtual time
(looptime); the banks' Unix clock advances with the loop.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import pytest

from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.banks import DatabaseBank, LocalBank
from batchrun.limits.blocks import BLOCK_HORIZON_S
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import Grant, KeyPolicy, KeyRecord, PendingChanges
from batchrun.limits.limiter import Demand, Limiter, LimiterSettings
from batchrun.records import Retryable, ServerLimits, Succeeded, Usage, error_body
from batchrun.store.store import Store

KEY = ("ep", "claude-sonnet-4-5")
DEMAND = Demand(10, 10)
NO_RAMP = LimiterSettings(ramp_s=0)
RPM = 1200  # 20 a second; the buckets hold 1 s of it


def succeeded() -> Succeeded:
    return Succeeded("{}", "m", "end_turn", Usage(10, 10), None)


class CountingDatabase(WorkerDatabase):
    """A worker's database route that also counts its rate-bank takes, and those granted."""

    takes = 0
    granted = 0

    async def take_rates(
        self,
        *,
        endpoint: str,
        model: str,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        changes: PendingChanges,
        now: float,
        reserve: bool = False,
    ) -> tuple[Grant, KeyRecord]:
        grant, record = await super().take_rates(
            endpoint=endpoint,
            model=model,
            costs=costs,
            policy=policy,
            changes=changes,
            now=now,
            reserve=reserve,
        )
        self.takes += 1
        self.granted += bool(grant.charged)
        return grant, record


def _unix_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    return lambda: 1_700_000_000.0 + loop.time()


@asynccontextmanager
async def workers(
    store: Store, count: int, limits: RateLimits
) -> AsyncIterator[list[tuple[Limiter, CountingDatabase]]]:
    loop = asyncio.get_running_loop()
    dbs = [CountingDatabase(store) for _ in range(count)]
    try:
        yield [
            (
                Limiter(
                    {KEY: limits}, settings=NO_RAMP, bank=DatabaseBank(db, clock=_unix_clock(loop))
                ),
                db,
            )
            for db in dbs
        ]
    finally:
        for db in dbs:
            db.close()


async def _send_for(limiter: Limiter, seconds: float, *, pause_s: float = 0.0) -> list[float]:
    """Acquire (and answer at once) for ``seconds``, ``pause_s`` apart at least; the grant
    times."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    granted = []
    while loop.time() - start < seconds:
        permit = await limiter.acquire(KEY, DEMAND)
        granted.append(loop.time())
        limiter.settle(permit, succeeded())
        if pause_s:
            await asyncio.sleep(pause_s)
    return granted


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_one_worker_visits_the_bank_once_a_block_and_paces_every_request(
    store: Store,
) -> None:
    async with workers(store, 1, RateLimits(rpm=RPM)) as [(limiter, db)]:
        granted = await _send_for(limiter, 20)

    # Paced at 20 a second request by request, as a take per request would: no bursts.
    gaps = [later - earlier for earlier, later in itertools.pairwise(granted)]
    assert gaps[5:] == pytest.approx([1 / 20] * len(gaps[5:]), abs=1e-3)
    assert len(granted) == pytest.approx(20 * 20, abs=2)
    # Blocks of half a second (10 requests) once the worker's pace is known, each one take,
    # reserved in debt: never a refused take and a sleep before asking again.
    assert db.takes <= len(granted) / (20 * BLOCK_HORIZON_S) + 3
    assert db.granted == db.takes


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cluster_stays_within_the_stated_bound_of_the_limit(store: Store) -> None:
    # Three workers at different paces share 20 a second: one as fast as it may, one
    # sending every 0.1 s at most, one every 0.3 s at most.
    async with workers(store, 3, RateLimits(rpm=RPM)) as cluster:
        runs = await asyncio.gather(
            *(
                _send_for(limiter, 30, pause_s=pause_s)
                for (limiter, _), pause_s in zip(cluster, (0.0, 0.1, 0.3), strict=True)
            )
        )
        takes = [db.takes for _, db in cluster]
    sends = sorted(itertools.chain.from_iterable(runs))
    start = sends[0]

    # The bound (limits.blocks): in any span of T s at most L·T + the buckets' burst (L·1 s)
    # + what the blocks held unspent when it began (at most N·L·BLOCK_HORIZON_S).
    rate = RPM / 60
    bound_extra = rate * 1.0 + 3 * rate * BLOCK_HORIZON_S
    for span_s in (0.5, 1.0, 5.0, 10.0):
        most = max(
            sum(1 for at in sends if begin <= at < begin + span_s)
            for begin in (start + step * 0.05 for step in range(int((30 - span_s) / 0.05)))
        )
        assert most <= rate * span_s + bound_extra, span_s
    # The buckets start empty, so from the start no span has more than L·T + one request:
    # the extra allowed above is never used when nothing was saved up.
    assert len([at for at in sends if at < start + 10]) <= rate * 10 + 1
    # And the limit is used: 20 a second over the 30 s. First come, first served in the
    # buckets' debt: the slowest worker waits behind the others' blocks (half a second of
    # theirs at most) but is never starved: over one request a second.
    assert len(sends) == pytest.approx(rate * 30, rel=0.02)
    assert min(len(run) for run in runs) > 30
    # A take per block, never a refused take asked again: the fast worker's blocks hold
    # several requests; the slow ones, sending a request or two per half second, at most one
    # take per request.
    assert takes[0] <= len(runs[0]) / 4
    assert all(count <= len(run) for count, run in zip(takes, runs, strict=True))


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_pause_gives_what_is_left_of_the_block_back() -> None:
    bank = LocalBank()
    limiter = Limiter({KEY: RateLimits(rpm=RPM)}, settings=NO_RAMP, bank=bank)
    loop = asyncio.get_running_loop()
    await limiter.acquire(KEY, DEMAND)
    permit = await limiter.acquire(KEY, DEMAND)  # a block of half a second: 10, 1 spent
    record = bank.record(KEY)
    assert record is not None
    bucket = record.dimensions["rpm"].bucket
    assert bucket is not None
    before = bucket.available(loop.time())

    limiter.settle(permit, Retryable("HTTP 429", error_body("rate_limit_error", "x"), 429, 2.0))

    # The 9 unspent (and the refused request's own 1) are back in the shared bucket.
    assert bucket.available(loop.time()) == pytest.approx(before + 9 + 1)
    # Nothing more is spent until the pause ends.
    await limiter.acquire(KEY, DEMAND)
    assert limiter.paused_for_s(*KEY) == 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_server_with_less_left_than_the_block_caps_it_too() -> None:
    bank = LocalBank()
    limiter = Limiter({KEY: RateLimits(rpm=RPM)}, settings=NO_RAMP, bank=bank)
    loop = asyncio.get_running_loop()
    await limiter.acquire(KEY, DEMAND)
    permit = await limiter.acquire(KEY, DEMAND)  # a block of 10, 1 spent: 9 held
    record = bank.record(KEY)
    assert record is not None
    bucket = record.dimensions["rpm"].bucket
    assert bucket is not None
    before = bucket.available(loop.time())

    # The server says 2 requests remain: the 9 the block held go back to the bucket, which
    # the server's figure then caps, as it caps what the bucket holds.
    remaining = ServerLimits(limits={"rpm": float(RPM)}, remaining={"rpm": 2.0})
    limiter.settle(permit, Succeeded("{}", "m", "end_turn", Usage(10, 10), None, remaining))

    assert bucket.available(loop.time()) == pytest.approx(min(before + 9, 2.0))
    # Without the clamp reaching it, the block would have been spent on (9 more at once).
    start = loop.time()
    for _ in range(4):
        await limiter.acquire(KEY, DEMAND)
    assert loop.time() - start >= (4 - min(before + 9, 2.0)) / 20 - 1e-3
