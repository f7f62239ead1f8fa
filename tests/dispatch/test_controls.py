"""Control checks riding on the rate-bank takes and the group commits: the store reads the
batches' state in the take's (or the commit's) transaction, a worker then makes few control
reads of its own, and a cancel or a pause from elsewhere is still seen within the control
interval."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from batchrun.dispatch.controls import ControlReadings
from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.settings import DispatchConfig
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.banks import DatabaseBank
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import KeyPolicy, PendingChanges
from batchrun.limits.limiter import Limiter, LimiterSettings
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store
from batchrun.transport.endpoints import SIMULATOR, builtin_endpoints
from batchrun.transport.http import create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient
from tests.conftest import request_line, submit
from tests.dispatch.helpers import NO_AUTH


def test_a_take_watching_reads_the_stopped_batches_in_its_transaction(store: Store) -> None:
    running = submit(store, [request_line("a")])
    canceled = submit(store, [request_line("b")])
    paused = submit(store, [request_line("c")])
    now = store.batches.get(running).created_at
    store.lifecycle.cancel(canceled, now)
    store.lifecycle.pause(paused, "max-cost $1.00 reached")
    policy = KeyPolicy(configured=RateLimits(rpm=600), burst_s=1.0, ramp_s=0)

    grant, record, stopped = store.rates.take_watching(
        endpoint="ep",
        model="m",
        costs={"rpm": 1.0},
        policy=policy,
        changes=PendingChanges(),
        now=1000.0,
        reserve=True,
        batch_ids=[running, canceled, paused],
        batches_now=now,
    )

    # (The canceled batch had nothing in flight: it ended at once.)
    assert stopped == {canceled: "ended", paused: "max-cost $1.00 reached"}
    assert stopped == store.lifecycle.stopped([running, canceled, paused], now)
    assert grant.charged == {"rpm": 1.0}  # the take itself, as Rates.take makes it
    assert record.dimensions["rpm"].bucket is not None
    later = now + timedelta(days=2)  # past the batches' expiry
    _, _, expired = store.rates.take_watching(
        endpoint="ep",
        model="m",
        costs={},
        policy=policy,
        changes=PendingChanges(),
        now=1001.0,
        batch_ids=[running],
        batches_now=later,
    )
    assert expired == {running: "expired"}


def test_a_group_commit_watching_reads_the_stopped_batches_in_its_transaction(
    store: Store,
) -> None:
    running = submit(store, [request_line("a")])
    paused = submit(store, [request_line("b")])
    now = store.batches.get(running).created_at
    store.lifecycle.pause(paused, "paused from elsewhere")

    stopped = store.results.record_watching(
        owner="w", now=now, batch_ids=[running, paused], batches_now=now
    )
    assert stopped == {paused: "paused from elsewhere"}
    assert stopped == store.lifecycle.stopped([running, paused], now)
    # Nothing asked: nothing read.
    assert store.results.record_watching(owner="w", now=now) == {}


def test_a_reading_serves_only_when_fresh_and_covering_every_batch() -> None:
    readings = ControlReadings()
    readings.read(10.0, ["a"], {})
    assert readings.fresh(["a"], since=0.0) is None  # nobody watches: nothing kept

    readings.watch(lambda: ["a", "b"], lambda: datetime(2026, 1, 1))
    readings.read(10.0, ["a", "b"], {"b": "canceling"})
    readings.read(9.0, ["a"], {})  # asked for earlier, answered later: not the latest

    found = readings.fresh(["a", "b"], since=9.6)
    assert found is not None and found.stopped == {"b": "canceling"}
    assert readings.fresh(["a", "b"], since=10.0) is None  # not asked for after since
    # The cancel completed before the dispatcher looked: the later reading says "ended",
    # and the dispatcher still hears of the cancel.
    readings.read(10.2, ["a", "b"], {"b": "ended"})
    found = readings.fresh(["a", "b"], since=9.6)
    assert found is not None and found.stopped == {"b": "canceling"}
    assert readings.fresh(["a", "b", "joined"], since=9.6) is None  # a batch it did not read
    readings.stop_watching()
    assert readings.fresh(["a"], since=0.0) is None
    assert readings.wanted() is None


class CountingControls(WorkerDatabase):
    """A worker's database route that also counts the control reads of its own."""

    own_checks = 0

    async def stopped_batches(self, batch_ids: Sequence[str], now: datetime) -> dict[str, str]:
        self.own_checks += 1
        return await super().stopped_batches(batch_ids, now)


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize(("stop", "poll_s"), [("cancel", 1.0), ("pause", 1.0), ("cancel", 0.5)])
async def test_under_a_shared_limit_control_checks_ride_on_takes_and_a_stop_is_seen_in_time(
    store: Store, stop: str, poll_s: float
) -> None:
    loop = asyncio.get_running_loop()
    app = create_app(SimulatorConfig(latency_s=0.5))
    batch_id = submit(store, [request_line(f"r{i:04d}") for i in range(2000)])
    db = CountingControls(store)
    limiter = Limiter(
        overrides=RateLimits(rpm=1200),  # 20 a second: a take every half second
        settings=LimiterSettings(ramp_s=0),
        bank=DatabaseBank(db, clock=lambda: 1_700_000_000.0 + loop.time()),
    )
    seen: dict[str, float] = {}

    async def stop_later() -> None:
        await asyncio.sleep(20)
        if stop == "cancel":
            store.lifecycle.cancel(batch_id, datetime.now().astimezone())
        else:
            store.lifecycle.pause(batch_id, "paused from elsewhere")
        seen["checks"] = db.own_checks
        await asyncio.sleep(poll_s + 0.05)
        seen["received"] = app.stats.received

    endpoint = builtin_endpoints({})[SIMULATOR]
    async with create_http_client(
        timeout_s=60, max_connections=64, transport=in_process_transport(app)
    ) as http:
        dispatcher = Dispatcher(
            db=db,
            senders={SIMULATOR: MessagesClient(http, endpoint=endpoint, headers=NO_AUTH)},
            limiter=limiter,
            config=DispatchConfig(control_poll_s=poll_s),
        )
        stopper = asyncio.create_task(stop_later())
        try:
            report = await dispatcher.run({batch_id: SIMULATOR})
        finally:
            db.close()
        await stopper

    assert 380 <= seen["received"] <= 440  # sending at the limit until the stop
    # Nothing sent more than the control interval after the stop (50 ms of slack for the
    # transactions on the way): every later request was stopped before its send.
    assert app.stats.received == seen["received"]
    if stop == "cancel":
        assert batch_id in report.canceled_batches
    else:
        assert report.paused[batch_id] == "paused from elsewhere"
    if poll_s == 1.0:
        # Checks due once a second for 20 s; the takes, twice a second, read for them (in
        # virtual time a take every 0.5 s falls on the very moment a 0.5 s check is due,
        # and either may come first: that case is the one above, for the stop's delay).
        assert seen["checks"] <= 4


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_without_a_shared_limit_control_checks_ride_on_group_commits(store: Store) -> None:
    # No limit and no database bank: no takes; the group commits (at least every 0.5 s while
    # answers come) carry the control reading, and a cancel is still seen in time.
    loop = asyncio.get_running_loop()
    app = create_app(SimulatorConfig(latency_s=0.5))
    batch_id = submit(store, [request_line(f"r{i:04d}") for i in range(2000)])
    db = CountingControls(store)
    limiter = Limiter(settings=LimiterSettings(ramp_s=0, start_per_min=None))
    seen: dict[str, float] = {}

    async def stop_later() -> None:
        await asyncio.sleep(20)
        store.lifecycle.cancel(batch_id, datetime.now().astimezone())
        seen["checks"] = db.own_checks
        await asyncio.sleep(1.0 + 0.05)
        seen["received"] = app.stats.received

    endpoint = builtin_endpoints({})[SIMULATOR]
    async with create_http_client(
        timeout_s=60, max_connections=64, transport=in_process_transport(app)
    ) as http:
        dispatcher = Dispatcher(
            db=db,
            senders={SIMULATOR: MessagesClient(http, endpoint=endpoint, headers=NO_AUTH)},
            limiter=limiter,
            config=DispatchConfig(control_poll_s=1.0, max_concurrency=10),
        )
        stopper = asyncio.create_task(stop_later())
        try:
            report = await dispatcher.run({batch_id: SIMULATOR})
        finally:
            db.close()
        await stopper

    assert loop.time() >= 20
    assert 300 <= seen["received"] <= 440  # 10 in flight, 0.5 s each, until the stop
    assert app.stats.received == seen["received"]  # nothing sent after it was seen
    # (Whether the report names the cancel depends on whether the dispatcher looked before
    # this worker's own commits ended the batch: the same with control reads of its own.)
    assert report.sent == seen["received"]
    # Checks due once a second for 20 s: the commits, twice a second or more, read for them.
    assert seen["checks"] <= 4
