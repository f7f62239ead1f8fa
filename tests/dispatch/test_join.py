"""Batches joining a dispatch in progress (Dispatcher.join), against the in-process simulator
in virtual time (looptime)."""

from __future__ import annotations

import asyncio

import pytest

from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.settings import DispatchConfig
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.limiter import Limiter
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store
from batchrun.transport.endpoints import SIMULATOR, builtin_endpoints
from batchrun.transport.http import create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient
from tests.conftest import request_line, submit
from tests.dispatch.helpers import NO_AUTH, run_dispatcher

# Loop logic, not SQL: SQLite only (the store's tests run both backends).
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.sqlite_only]


async def ended_at(store: Store, batch_id: str, *, within_s: float) -> float:
    """The loop time at which the batch ended, looking every 0.1 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while store.batches.get(batch_id).processing_status != "ended":
        assert loop.time() < deadline, f"{batch_id} did not end within {within_s} s"
        await asyncio.sleep(0.1)
    return loop.time()


async def test_a_joined_batch_gets_a_share_of_the_claims_ahead_of_older_queued_work(
    store: Store,
) -> None:
    # Two requests in flight at most, 10 s each: the 30 requests of `long` take 150 s.
    app = create_app(SimulatorConfig(latency_s=10.0))
    long = submit(store, [request_line(f"a{i}") for i in range(30)])
    joined: set[str] = set()
    times: dict[str, float] = {}

    async def join_a_short_batch(dispatcher: Dispatcher) -> None:
        await asyncio.sleep(1)
        short = submit(store, [request_line(f"b{i}") for i in range(2)])
        joined.update(dispatcher.join({short: SIMULATOR}))
        times["short"] = await ended_at(store, short, within_s=200)

    report = await run_dispatcher(
        store,
        long,
        app,
        config=DispatchConfig(max_concurrency=2),
        during=join_a_short_batch,
    )
    long_ended = asyncio.get_running_loop().time()

    assert len(joined) == 1
    (short,) = joined
    assert store.batches.get(short).counts.succeeded == 2
    assert store.batches.get(long).counts.succeeded == 30
    assert report.sent == 32
    # Claimed after `long` in input order, `short` would have ended with it (~160 s). It
    # takes every other slot that frees up instead (one at 10 s, 20 s...), and is done by
    # about 40 s; `long` still gets the other slots.
    assert times["short"] < 45
    assert long_ended > 150


async def test_join_of_an_endpoint_without_a_sender_or_of_a_batch_in_hand_joins_nothing(
    store: Store,
) -> None:
    app = create_app(SimulatorConfig(latency_s=5.0))
    batch_id = submit(store, [request_line("a")])
    other = submit(store, [request_line("b")], endpoint="anthropic")
    answers: list[set[str]] = []

    async def join_what_cannot(dispatcher: Dispatcher) -> None:
        await asyncio.sleep(1)
        answers.append(dispatcher.join({other: "anthropic"}))
        answers.append(dispatcher.join({other: "no-such-endpoint"}))
        answers.append(dispatcher.join({batch_id: SIMULATOR}))

    await run_dispatcher(store, batch_id, app, during=join_what_cannot)

    assert answers == [set(), set(), set()]
    assert store.batches.get(other).counts.processing == 1
    assert app.stats.received == 1


async def test_join_before_run_starts_or_after_it_returned_joins_nothing(store: Store) -> None:
    app = create_app()
    batch_id = submit(store, [request_line("a")])
    later = submit(store, [request_line("b")])
    endpoint = builtin_endpoints({})[SIMULATOR]
    async with create_http_client(
        timeout_s=60, max_connections=16, transport=in_process_transport(app)
    ) as http:
        db = WorkerDatabase(store)
        try:
            dispatcher = Dispatcher(
                db=db,
                senders={SIMULATOR: MessagesClient(http, endpoint=endpoint, headers=NO_AUTH)},
                limiter=Limiter(),
                config=DispatchConfig(),
            )
            before = dispatcher.join({later: SIMULATOR})
            await dispatcher.run({batch_id: SIMULATOR})
            after = dispatcher.join({later: SIMULATOR})
        finally:
            db.close()

    assert before == after == set()
    assert store.batches.get(batch_id).counts.succeeded == 1
    assert store.batches.get(later).counts.processing == 1
    assert app.stats.received == 1
