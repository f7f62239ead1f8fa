"""Limits across all the models of an endpoint: every request takes from its model's buckets
and from the endpoint's, in memory and shared through the database, and a real run on three
models holds the endpoint's total.

Everything runs in virtual time (looptime).
"""

from __future__ import annotations

import asyncio

import pytest

from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.banks import DatabaseBank, LocalBank
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.families import ALL_MODELS
from batchrun.limits.limiter import Demand, Limiter, LimiterSettings
from batchrun.records import Retryable, Succeeded, Usage, error_body
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store
from batchrun.transport.endpoints import SIMULATOR
from tests.conftest import request_line, submit
from tests.dispatch.helpers import dispatch

MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
NO_RAMP = LimiterSettings(ramp_s=0)


def succeeded(input_tokens: int, output_tokens: int) -> Succeeded:
    return Succeeded("{}", "m", "end_turn", Usage(input_tokens, output_tokens), None)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_models_with_high_limits_share_the_endpoints_lower_total() -> None:
    # Each model may send 100 a second; the endpoint 10 a second in all.
    limiter = Limiter(
        {("ep", "*"): RateLimits(rpm=6000)},
        endpoint_limits={"ep": RateLimits(rpm=600)},
        settings=NO_RAMP,
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    granted: list[float] = []

    async def model_sends(model: str) -> None:
        for _ in range(20):
            await limiter.acquire(("ep", model), Demand(10, 10))
            granted.append(loop.time() - start)

    await asyncio.gather(*(model_sends(model) for model in MODELS))

    # 60 requests at 10 a second, from an empty bucket: the last goes at 6 s (plus the
    # 0.01 s each model's own empty bucket holds its first request).
    assert max(granted) == pytest.approx(6.0, abs=0.011)
    assert limiter.endpoint_key("ep") == ("ep", ALL_MODELS)
    assert limiter.limit_in_force(("ep", ALL_MODELS), "rpm") == 600


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_endpoint_flag_replaces_the_endpoints_own_and_applies_to_every_endpoint() -> None:
    limiter = Limiter(
        endpoint_limits={"a": RateLimits(rpm=60, tpm=1000)},
        endpoint_overrides=RateLimits(rpm=600),
        settings=NO_RAMP,
    )

    assert limiter.limits_for(("a", ALL_MODELS)) == RateLimits(rpm=600, tpm=1000)
    assert limiter.limits_for(("b", ALL_MODELS)) == RateLimits(rpm=600)
    # The per-model limits stay as they were: none.
    assert limiter.limits_for(("a", MODELS[0])) == RateLimits()
    assert Limiter().endpoint_key("a") is None


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_each_endpoint_of_a_pool_has_its_own_limit_across_its_models() -> None:
    # A pool's requests are paced under the member they are sent to.
    limiter = Limiter(
        endpoint_limits={"a": RateLimits(rpm=600), "b": RateLimits(rpm=600)}, settings=NO_RAMP
    )
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def member_sends(endpoint: str) -> None:
        for i in range(30):
            await limiter.acquire((endpoint, MODELS[i % 3]), Demand(10, 10))

    await asyncio.gather(member_sends("a"), member_sends("b"))

    # 30 to each at 10 a second each, side by side: 3 s, not the 6 s of one shared limit.
    assert loop.time() - start == pytest.approx(3.0, abs=0.05)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_model_held_back_by_its_own_limit_holds_nothing_of_the_endpoints() -> None:
    limiter = Limiter(
        {("ep", MODELS[0]): RateLimits(rpm=60), ("ep", MODELS[1]): RateLimits(rpm=6000)},
        endpoint_limits={"ep": RateLimits(rpm=600)},
        settings=NO_RAMP,
    )
    loop = asyncio.get_running_loop()
    first = await limiter.acquire(("ep", MODELS[0]), Demand(10, 10))
    limiter.settle(first, Retryable("HTTP 429", error_body("rate_limit_error", "x"), 429, 30.0))
    start = loop.time()
    slow = asyncio.ensure_future(limiter.acquire(("ep", MODELS[0]), Demand(10, 10)))

    for _ in range(10):
        await limiter.acquire(("ep", MODELS[1]), Demand(10, 10))

    # The other model goes at the endpoint's 10 a second while the first waits out its pause.
    assert loop.time() - start == pytest.approx(1.0, abs=0.11)
    assert not slow.done()
    await slow
    assert loop.time() - start >= 30.0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_answers_correct_the_endpoints_reservation_too() -> None:
    limiter = Limiter(
        endpoint_limits={"ep": RateLimits(tpm=6000)},  # 100 tokens a second, in all
        settings=LimiterSettings(output_reservation="max_tokens", ramp_s=0),
    )
    loop = asyncio.get_running_loop()
    permit = await limiter.acquire(("ep", MODELS[0]), Demand(10, 90))
    assert loop.time() == pytest.approx(1.0)
    assert permit.endpoint_reserved == {"tpm": 100.0}
    limiter.settle(permit, succeeded(10, 10))  # 80 of the 100 come back

    await limiter.acquire(("ep", MODELS[1]), Demand(10, 90))

    assert loop.time() == pytest.approx(1.2)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_request_stopped_while_waiting_for_the_endpoint_gives_its_models_back() -> None:
    bank = LocalBank()
    limiter = Limiter(
        {("ep", "*"): RateLimits(rpm=60)},
        endpoint_limits={"ep": RateLimits(rpm=6)},  # one every 10 s
        settings=NO_RAMP,
        bank=bank,
    )
    loop = asyncio.get_running_loop()
    await limiter.acquire(("ep", MODELS[0]), Demand(10, 10))  # at 10 s
    waiting = asyncio.ensure_future(limiter.acquire(("ep", MODELS[0]), Demand(10, 10)))
    await asyncio.sleep(2)  # the model's bucket (1 a second) granted it; the endpoint's not
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    at = loop.time()
    record = bank.record(("ep", MODELS[0]))
    assert record is not None
    bucket = record.dimensions["rpm"].bucket
    assert bucket is not None

    # Full again: the cancelled request's take came back.
    assert bucket.available(at) == pytest.approx(bucket.capacity)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_workers_sharing_the_database_stay_under_one_endpoint_limit_together(
    store: Store,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()

    def clock() -> float:
        return 1_700_000_000.0 + loop.time()

    dbs = [WorkerDatabase(store) for _ in range(2)]
    limiters = [
        Limiter(
            {("ep", "*"): RateLimits(rpm=6000)},
            endpoint_limits={"ep": RateLimits(rpm=600)},
            settings=NO_RAMP,
            bank=DatabaseBank(db, clock=clock),
        )
        for db in dbs
    ]
    granted = 0

    async def worker(limiter: Limiter, model: str) -> None:
        nonlocal granted
        while loop.time() - start < 30:
            await limiter.acquire(("ep", model), Demand(10, 10))
            granted += 1

    try:
        await asyncio.wait_for(
            asyncio.gather(
                *(worker(limiter, model) for limiter in limiters for model in MODELS[:2])
            ),
            40,
        )
    finally:
        for db in dbs:
            db.close()

    # 600 a minute in all, whatever the worker or model: 30 s allow 300, plus one each in
    # flight. Each model alone could have sent 3,000.
    assert 295 <= granted <= 304


@pytest.mark.timeout(300)  # hundreds of requests; slow on a busy machine
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_run_on_three_models_holds_the_endpoints_total(sqlite_store: Store) -> None:
    store = sqlite_store
    app = create_app(SimulatorConfig(latency_s=1.0))
    lines = [request_line(f"r{i}", f"q{i}", model=MODELS[i % 3]) for i in range(600)]
    batch_id = submit(store, lines)
    limiter = Limiter(
        {(SIMULATOR, "*"): RateLimits(rpm=3000)},
        endpoint_limits={SIMULATOR: RateLimits(rpm=300)},
    )

    await dispatch(store, batch_id, app, limiter=limiter)

    assert store.batches.get(batch_id).counts.succeeded == 600
    seconds = app.stats.admitted_by_second
    first, last = min(seconds), max(seconds)
    per_second = [seconds.get(s, [0])[0] for s in range(first, last + 1)]
    # Never above the endpoint's 300 a minute over any minute (its bucket holds 1 s: 5 more)...
    busiest = max(sum(per_second[i : i + 60]) for i in range(max(len(per_second) - 59, 1)))
    assert busiest <= 305
    # ...and at it once the start-up ramp is over: the three models' own 9,000 a minute
    # would have sent the batch in seconds.
    steady = per_second[10:-5]
    assert sum(steady) / len(steady) >= 0.97 * 300 / 60
