"""The run monitor inside a real dispatch (simulator, virtual time): budgets stop a batch,
the time limit drains a run, and the progress snapshot names the limit that binds."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from batchrun.config.prices import CostTotal, PriceTable, cost_of
from batchrun.dispatch.counts import RunReport
from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.settings import DispatchConfig
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import Demand, Limiter, LimiterSettings, Permit
from batchrun.ops.budget import BudgetGuard
from batchrun.ops.monitor import ProgressSnapshot, RunMonitor
from batchrun.records import ClaimedRequest, FinishedRequest, Succeeded, Usage
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store
from batchrun.transport.auth import RequestHeaders
from batchrun.transport.endpoints import SIMULATOR, builtin_endpoints
from batchrun.transport.http import create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient
from tests.conftest import memory_grown_by, request_line, submit

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

HAIKU = "claude-3-haiku-20240307"

NO_AUTH = RequestHeaders({"content-type": "application/json"}, ())


def monitor_for(
    store: Store,
    batch_id: str,
    *,
    budget: float | None = None,
    max_runtime_s: float | None = None,
) -> RunMonitor:
    prices = PriceTable()
    guard = None
    if budget is not None:
        spent = {batch_id: cost_of(store.usage.by_model([batch_id])[batch_id], prices)}
        guard = BudgetGuard(prices, {batch_id: budget}, spent)
    return RunMonitor(
        prices=prices,
        counts={batch_id: store.batches.get(batch_id).counts},
        guard=guard,
        max_runtime_s=max_runtime_s,
    )


async def dispatch(
    store: Store,
    batch_id: str,
    monitor: RunMonitor,
    *,
    limits: RateLimits | None = None,
    max_concurrency: int = 256,
    app: object | None = None,
    db: WorkerDatabase | None = None,
) -> RunReport:
    """Dispatch the batch with ``monitor`` watching, through ``db`` (the worker's one route
    to the database, shared with the monitor) or a new one."""
    endpoint = builtin_endpoints({})[SIMULATOR]
    async with create_http_client(
        timeout_s=60,
        max_connections=max_concurrency,
        transport=in_process_transport(app or create_app(SimulatorConfig(latency_s=1.0))),
    ) as http:
        sender = MessagesClient(http, endpoint=endpoint, headers=NO_AUTH)
        own_db = db is None
        db = db or WorkerDatabase(store)
        dispatcher = Dispatcher(
            db=db,
            senders={SIMULATOR: sender},
            # Counts are timed from the start: without the start-up ramp.
            limiter=Limiter(overrides=limits, settings=LimiterSettings(ramp_s=0)),
            config=DispatchConfig(max_concurrency=max_concurrency),
            observer=monitor,
        )
        try:
            return await dispatcher.run({batch_id: SIMULATOR})
        finally:
            monitor.close()
            if own_db:
                db.close()


async def test_a_budget_pauses_the_batch_before_it_could_be_passed(store: Store) -> None:
    batch_id = submit(
        store, [request_line(f"r{i}", model=HAIKU, max_tokens=1000) for i in range(50)]
    )
    budget = 0.003
    app = create_app(SimulatorConfig(latency_s=1.0))

    report = await dispatch(
        store, batch_id, monitor_for(store, batch_id, budget=budget), max_concurrency=1, app=app
    )

    batch = store.batches.get(batch_id)
    spent = cost_of(store.usage.by_model([batch_id])[batch_id], PriceTable())
    assert batch_id in report.paused
    assert "max-cost $0.0030 reached" in report.paused[batch_id]
    assert batch.paused_reason == report.paused[batch_id]
    assert 0 < app.stats.received < 50
    assert spent.usd is not None and spent.usd <= budget
    # One more request at its worst case (1,000 output tokens at $1.25/MTok) would not fit.
    assert spent.usd + 1000 * 1.25 / 1e6 > budget
    assert batch.counts.succeeded == app.stats.received
    assert batch.counts.processing == 50 - app.stats.received
    assert batch.processing_status == "in_progress"


async def test_a_budgeted_batch_of_a_model_without_price_does_not_send(store: Store) -> None:
    batch_id = submit(store, [request_line("a", model="my-finetune")])
    app = create_app()

    report = await dispatch(store, batch_id, monitor_for(store, batch_id, budget=1.0), app=app)

    assert app.stats.received == 0
    assert "model my-finetune has no price" in report.paused[batch_id]
    assert store.batches.get(batch_id).counts.processing == 1


async def test_the_time_limit_drains_the_run_and_leaves_the_rest_queued(store: Store) -> None:
    batch_id = submit(store, [request_line(f"r{i}") for i in range(30)])
    monitor = monitor_for(store, batch_id, max_runtime_s=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()

    report = await dispatch(store, batch_id, monitor, limits=RateLimits(rpm=60))

    batch = store.batches.get(batch_id)
    assert monitor.time_limit_reached
    assert report.paused == {}
    assert batch.paused_reason is None
    # One request a second for 5 s, and those in flight (1 s each) finish.
    assert 4 <= batch.counts.succeeded <= 7
    assert batch.counts.processing == 30 - batch.counts.succeeded
    assert loop.time() - started < 8
    # Claimed but unsent requests went back as they were: no attempt used.
    assert store.leases.claim(
        owner="o", batch_ids=[batch_id], limit=100, now=batch.created_at, lease_s=1
    )
    again = store.leases.claim(
        owner="o2", batch_ids=[batch_id], limit=100, now=batch.created_at, lease_s=1
    )
    assert again == []


async def test_the_snapshot_names_the_limit_that_binds_and_an_eta(store: Store) -> None:
    batch_id = submit(store, [request_line(f"r{i}", "x" * 400) for i in range(60)])
    monitor = monitor_for(store, batch_id)
    seen: list[ProgressSnapshot] = []

    async def watch() -> None:
        await asyncio.sleep(20)
        seen.append(monitor.snapshot())

    watcher = asyncio.create_task(watch())
    await dispatch(store, batch_id, monitor, limits=RateLimits(rpm=120, itpm=1_000_000))
    await watcher

    snapshot = seen[0]
    (key,) = snapshot.keys
    assert (key.endpoint, key.model) == (SIMULATOR, "claude-sonnet-4-5")
    assert key.binding == "rpm"
    rpm = next(use for use in key.uses if use.dimension == "rpm")
    assert rpm.limit == 120
    assert 100 <= rpm.per_minute <= 125
    assert 30 <= snapshot.done <= 45
    assert snapshot.eta_s is not None and 5 <= snapshot.eta_s <= 20
    assert snapshot.cost.usd is not None and snapshot.cost.usd > 0
    final = monitor.snapshot()
    assert final.done == final.total == 60
    assert final.eta_s == 0.0


async def test_a_tight_token_limit_binds_instead_of_requests(store: Store) -> None:
    batch_id = submit(store, [request_line(f"r{i}", "x" * 4000) for i in range(40)])
    monitor = monitor_for(store, batch_id)
    seen: list[ProgressSnapshot] = []

    async def watch() -> None:
        await asyncio.sleep(15)
        seen.append(monitor.snapshot())

    watcher = asyncio.create_task(watch())
    await dispatch(store, batch_id, monitor, limits=RateLimits(rpm=600, itpm=60_000))
    await watcher

    (key,) = seen[0].keys
    assert key.binding == "itpm"


async def test_a_budget_counts_what_another_worker_spends_meanwhile(store: Store) -> None:
    batch_id = submit(
        store, [request_line(f"r{i:02d}", model=HAIKU, max_tokens=100) for i in range(60)]
    )
    guard = BudgetGuard(PriceTable(), {batch_id: 1.0}, {batch_id: CostTotal()})
    db = WorkerDatabase(store)
    monitor = RunMonitor(
        prices=PriceTable(),
        counts={batch_id: store.batches.get(batch_id).counts},
        guard=guard,
        db=db,
    )

    async def other_worker() -> None:
        # Another process finishes one request that cost $0.9999 ($1.25/MTok output).
        await asyncio.sleep(3)
        now = store.batches.get(batch_id).created_at + timedelta(seconds=3)
        (claimed,) = store.leases.claim(
            owner="other", batch_ids=[batch_id], limit=1, now=now, lease_s=60
        )
        store.results.record(
            owner="other",
            now=now,
            finished=[
                FinishedRequest(
                    request_id=claimed.id,
                    batch_id=batch_id,
                    custom_id=claimed.custom_id,
                    result_type="succeeded",
                    attempts=1,
                    completed_at=now,
                    model=HAIKU,
                    usage=Usage(0, 799_920),
                    body="{}",
                )
            ],
        )

    helper = asyncio.create_task(other_worker())
    try:
        report = await dispatch(store, batch_id, monitor, limits=RateLimits(rpm=60), db=db)
    finally:
        db.close()
    await helper

    # Paused once the refresh (every 15 s) saw the other worker's spending.
    assert "max-cost $1.00 reached" in report.paused[batch_id]
    batch = store.batches.get(batch_id)
    assert 10 <= batch.counts.succeeded <= 25
    assert batch.counts.processing > 30


async def test_a_monitor_nobody_asks_for_snapshots_keeps_only_its_rate_window() -> None:
    monitor = RunMonitor(prices=PriceTable(), counts={}, guard=None, max_runtime_s=None)
    request = ClaimedRequest(1, "b", "c", HAIKU, 100, "{}", 1, 0)
    permit = Permit(("ep", HAIKU), Demand(10, 100), 10, {"rpm": 1.0})
    answer = Succeeded("{}", HAIKU, "end_turn", Usage(10, 20), None, None)

    async def settle(count: int) -> None:
        for _ in range(count):
            monitor.settled(request, permit, answer)
            await asyncio.sleep(0.1)

    # 75 s: the 60 s rate window is full.
    grown = await memory_grown_by(settle(2_000), after=settle(750))
    monitor.close()

    # Keeping every answer (as --quiet and --json runs did) adds over 0.5 MB here.
    assert grown < 100_000
