"""Capacity in blocks: a worker visits the shared bank once per block, not per request, still
paces each request as a take per request would have, gives back what it does not spend, and
a cluster stays within the stated bound of a limit.

Several limiters on one database stand for several workers (each with its own
:class:`DatabaseBank` and database thread, as separate processes would). Virtual time
(looptime); the banks' Unix clock advances with the loop.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import pytest

from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.banks import DatabaseBank, LocalBank
from batchrun.limits.blocks import BLOCK_HORIZON_S
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import (
    RAMP_S,
    RAMP_START_SHARE,
    Grant,
    KeyPolicy,
    KeyRecord,
    PendingChanges,
)
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
    store: Store, count: int, limits: RateLimits, settings: LimiterSettings = NO_RAMP
) -> AsyncIterator[list[tuple[Limiter, CountingDatabase]]]:
    loop = asyncio.get_running_loop()
    dbs = [CountingDatabase(store) for _ in range(count)]
    try:
        yield [
            (
                Limiter(
                    {KEY: limits}, settings=settings, bank=DatabaseBank(db, clock=_unix_clock(loop))
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


# -- blocks during the start-up ramp ------------------------------------------------------------


class CountingBank(LocalBank):
    """The in-memory bank, keeping what each take asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[Mapping[str, float]] = []

    @property
    def takes(self) -> int:
        return len(self.asked)

    async def take(
        self,
        key: tuple[str, str],
        costs: Mapping[str, float],
        policy: KeyPolicy,
        *,
        reserve: bool = False,
    ) -> Grant:
        self.asked.append(dict(costs))
        return await super().take(key, costs, policy, reserve=reserve)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_ramp_that_does_not_bind_takes_blocks_not_one_request_at_a_time() -> None:
    # Limits that never bind (as `--rpm 6000000 --tpm 1000000000`), the ramp on; a worker
    # sending 1,000 requests a second, each answered at once.
    bank = CountingBank()
    limiter = Limiter({KEY: RateLimits(rpm=6_000_000, tpm=1_000_000_000)}, bank=bank)
    loop = asyncio.get_running_loop()
    sent = 0
    while True:
        permit = await limiter.acquire(KEY, DEMAND)
        limiter.settle(permit, succeeded())
        sent += 1
        record = bank.record(KEY)
        assert record is not None
        if record.ramp_share(loop.time(), RAMP_S) >= 1:
            break
        await asyncio.sleep(0.001)

    # The whole ramp (5 s from the first answer) at 1,000 a second: about 5,000 requests.
    assert sent == pytest.approx(RAMP_S * 1000, rel=0.01)
    # Blocks sized to the worker's pace, as after the ramp (half a second: ~500 requests),
    # not a take per request.
    assert bank.takes <= 0.05 * sent


def _ramp_allows(start: float, first_answer: float, at: float, per_s: float) -> float:
    """What the ramp lets through from ``start`` to ``at`` at a limit of ``per_s``: a fifth
    of it until the first answer, then a straight climb to all of it over RAMP_S."""
    allowed = RAMP_START_SHARE * per_s * (min(at, first_answer) - start)
    climb = min(max(at - first_answer, 0.0), RAMP_S)
    allowed += per_s * (RAMP_START_SHARE * climb + (1 - RAMP_START_SHARE) * climb**2 / 2 / RAMP_S)
    return allowed + per_s * max(at - first_answer - RAMP_S, 0.0)


def _one_request_at_a_time(costs: Mapping[str, float], seconds: float) -> tuple[list[float], int]:
    """When a worker taking one request at a time from the buckets (blocks of one request:
    the behaviour during the ramp before blocks grew there) is granted each over ``seconds``,
    each answered at once, and how many takes that made: the reference a binding ramp must
    not fall behind, nor cost more than."""
    policy = KeyPolicy(configured=RateLimits(rpm=RPM))
    record = KeyRecord()
    now = 0.0
    granted: list[float] = []
    takes = 0
    while now < seconds:
        grant = record.take(costs, policy, now, reserve=True)
        takes += 1
        now += grant.wait_s  # refused: asked again then; granted: paid then
        if not grant.charged:
            continue
        granted.append(now)
        record.apply(PendingChanges(answered_at=now), policy.configured, now)
    return granted, takes


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_ramp_that_binds_keeps_its_pace_and_is_no_slower_than_one_request_blocks() -> None:
    bank = CountingBank()
    limiter = Limiter({KEY: RateLimits(rpm=RPM)}, bank=bank)  # 20 a second, the ramp on
    loop = asyncio.get_running_loop()
    start = loop.time()
    granted = []
    takes_in_ramp = 0
    while loop.time() - start < 8:  # as fast as it may: the ramp binds
        permit = await limiter.acquire(KEY, DEMAND)
        granted.append(loop.time() - start)
        limiter.settle(permit, succeeded())
        if loop.time() - start <= granted[0] + RAMP_S:
            takes_in_ramp = bank.takes
    reference, reference_takes = _one_request_at_a_time(permit.reserved, granted[0] + RAMP_S)

    # Never more than the bucket's start (0.8 of a request) plus what the ramp let through:
    # no burst above the ramp's share of the limit.
    first_answer = granted[0]
    for count, at in enumerate(granted, start=1):
        assert count <= 0.8 + _ramp_allows(0.0, first_answer, at, RPM / 60) + 1e-6, at
    # And never behind one request at a time: each request granted no later than the
    # reference's request of the same rank; nor with more takes over the ramp.
    assert _in(granted, 0, first_answer + RAMP_S) >= len(reference)
    for at, then in zip(granted, reference, strict=False):
        assert at <= then + 1e-3
    assert takes_in_ramp <= reference_takes
    # The limit is reached: about 20 a second after the ramp.
    assert _in(granted, first_answer + 6, first_answer + 7.5) == pytest.approx(30, abs=1)


def _in(granted: list[float], start: float, end: float) -> int:
    return sum(1 for at in granted if start <= at <= end)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_block_during_the_ramp_holds_no_more_than_half_a_second_of_the_ramped_limit() -> (
    None
):
    bank = CountingBank()
    limiter = Limiter({KEY: RateLimits(rpm=RPM)}, bank=bank)  # 20 a second, the ramp on
    await limiter.acquire(KEY, DEMAND)
    # No answer yet: the ramp holds at a fifth of the limit, 4 a second. In 3 s the bucket
    # refills 12 requests' worth.
    await asyncio.sleep(3)
    await limiter.acquire(KEY, DEMAND)  # a block of one: the worker was idle
    await limiter.acquire(KEY, DEMAND)  # sending fast now, with 11 in the bucket

    # Half a second of the ramped limit (4 × 0.5 = 2), not of the limit (10) nor all the
    # bucket holds (11).
    assert bank.asked[-1]["rpm"] == pytest.approx(RAMP_START_SHARE * RPM / 60 * BLOCK_HORIZON_S)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_ramp_block_refused_for_a_stale_view_of_the_buckets_falls_back_to_one_request(
    store: Store,
) -> None:
    loop = asyncio.get_running_loop()
    async with workers(store, 2, RateLimits(rpm=600), LimiterSettings()) as cluster:
        (first, first_db), (second, _) = cluster
        # The first request starts the ramp; its answer starts the climb (2 a second then).
        first.settle(await first.acquire(KEY, DEMAND), succeeded())
        await asyncio.sleep(4)  # 8 refilled; the ramp allows 84 % now: blocks of 4.2 at most
        first.settle(await first.acquire(KEY, DEMAND), succeeded())  # 7 left, it knows
        # The other worker takes a request, then a block of 4.2: 1.8 left, which the first
        # worker does not know.
        second.settle(await second.acquire(KEY, DEMAND), succeeded())
        second.settle(await second.acquire(KEY, DEMAND), succeeded())
        takes, asked_at = first_db.takes, loop.time()

        # Sending fast, the first worker asks for a block of 4.2; refused (during the ramp a
        # take the buckets lack is not reserved in debt), it asks at once for one request,
        # which the buckets hold: no wait, two takes.
        await first.acquire(KEY, DEMAND)
        assert loop.time() == asked_at
        assert first_db.takes == takes + 2


class SharedInMemory:
    """The rate records of one database, in memory: several :class:`DatabaseBank` on it
    stand for workers of one database, each reading back a copy of the record with its
    take (so its view of the buckets ages until its next take), with no thread."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], KeyRecord] = {}
        self.takes = 0

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
        record = self.records.setdefault((endpoint, model), KeyRecord())
        grant = record.take(costs, policy, now, changes, reserve=reserve)
        self.takes += 1
        return grant, copy.deepcopy(record)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_refused_ramp_take_of_one_request_in_every_limit_is_not_asked_again_at_once() -> (
    None
):
    loop = asyncio.get_running_loop()
    shared = SharedInMemory()
    first, second = (
        Limiter({KEY: RateLimits(rpm=180)}, bank=DatabaseBank(shared, clock=loop.time))
        for _ in range(2)
    )
    # No answer: the ramp holds at a fifth of 3 a second, and half a second of that is less
    # than a request, so every block holds one request of the limit in force.
    await first.acquire(KEY, DEMAND)
    await asyncio.sleep(6)  # the bucket fills: 3
    await first.acquire(KEY, DEMAND)  # 2 left, the first worker knows
    await second.acquire(KEY, DEMAND)
    await second.acquire(KEY, DEMAND)  # none left, which the first worker does not know
    takes = shared.takes

    # Sending fast, with 2 in the bucket as far as it knows, the first worker asks for one
    # request (and two requests' tokens, which no limit counts): refused, it waits to ask
    # again, since asking for one request at once would be the same take refused again.
    waiting = asyncio.ensure_future(first.acquire(KEY, DEMAND))
    await asyncio.sleep(0.1)
    assert shared.takes == takes + 1
    await waiting
