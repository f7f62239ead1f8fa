"""The dispatch loop against the in-process simulator, in virtual time (looptime)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.settings import DispatchConfig
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import Limiter
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store
from batchrun.transport.endpoints import SIMULATOR, builtin_endpoints
from batchrun.transport.http import in_process_transport
from batchrun.transport.messages import MessagesClient
from tests.conftest import request_line, submit
from tests.dispatch.helpers import FAST_RETRIES, NO_AUTH, dispatch, results_by_id

# Loop logic, not SQL: SQLite only (the store's tests run both backends).
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.sqlite_only]


async def test_every_request_gets_one_succeeded_result_with_usage(store: Store) -> None:
    app = create_app(SimulatorConfig(latency_s=2.0))
    batch_id = submit(store, [request_line(f"r{i}", f"question {i}") for i in range(40)])

    report = await dispatch(store, batch_id, app)

    batch = store.batches.get(batch_id)
    assert batch.processing_status == "ended"
    assert batch.counts.succeeded == 40
    assert report.sent == 40
    assert app.stats.received == 40
    assert batch.tokens.input_tokens == app.stats.input_tokens_total
    assert batch.tokens.output_tokens == app.stats.output_tokens_total
    results = results_by_id(store, batch_id)
    assert results["r7"]["state"] == "succeeded"
    message = results["r7"]["body"]
    assert isinstance(message, dict)
    assert message["type"] == "message"
    # 40 requests, concurrency 256, 2 s latency: all in flight together.
    assert asyncio.get_running_loop().time() < 10


async def test_transient_failures_are_retried_after_a_back_off(store: Store) -> None:
    app = create_app()
    batch_id = submit(store, [request_line("flaky", "[[sim:status=500:times=2]] hi")])
    loop = asyncio.get_running_loop()
    started = loop.time()

    report = await dispatch(store, batch_id, app)

    assert store.batches.get(batch_id).counts.succeeded == 1
    assert report.retried == 2
    assert app.stats.received == 3
    # Back-offs of about 1 s and 2 s (up to 25 % jitter off).
    assert loop.time() - started >= 0.75 + 1.5


@pytest.mark.parametrize(
    "directive",
    ["status=529", "status=503", "status=408", "malformed=1", "cut=1"],
)
async def test_each_transient_kind_is_retried_until_it_succeeds(
    store: Store, directive: str
) -> None:
    app = create_app()
    batch_id = submit(store, [request_line("a", f"[[sim:{directive}:times=1]] hi")])

    await dispatch(store, batch_id, app)

    assert store.batches.get(batch_id).counts.succeeded == 1
    assert app.stats.received == 2


async def test_a_200_that_is_json_but_no_message_is_not_sent_again(store: Store) -> None:
    app = create_app()
    batch_id = submit(store, [request_line("a", "[[sim:not_message=1:times=1]] hi")])

    await dispatch(store, batch_id, app)

    assert store.batches.get(batch_id).counts.errored == 1
    assert app.stats.received == 1


async def test_a_request_that_keeps_failing_ends_errored_with_the_api_error(store: Store) -> None:
    app = create_app()
    batch_id = submit(store, [request_line("doomed", "[[sim:status=529]] hi"), request_line("ok")])

    report = await dispatch(store, batch_id, app)

    batch = store.batches.get(batch_id)
    assert (batch.counts.succeeded, batch.counts.errored) == (1, 1)
    assert app.stats.received == 1 + FAST_RETRIES.max_attempts
    error = results_by_id(store, batch_id)["doomed"]["body"]
    assert isinstance(error, dict)
    assert error["type"] == "error"
    assert error["error"]["type"] == "overloaded_error"
    assert "gave up after 4 attempts" in error["error"]["message"]
    assert report.error_types == {"overloaded_error": 1}


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_final_client_errors_are_not_retried(store: Store, status: int) -> None:
    app = create_app()
    batch_id = submit(store, [request_line("bad", f"[[sim:status={status}]] hi")])

    await dispatch(store, batch_id, app)

    assert store.batches.get(batch_id).counts.errored == 1
    assert app.stats.received == 1


async def test_a_429_waits_out_retry_after_without_using_an_attempt(store: Store) -> None:
    app = create_app()
    batch_id = submit(store, [request_line("a", "[[sim:status=429:retry_after=90:times=5]] hi")])
    loop = asyncio.get_running_loop()
    started = loop.time()

    report = await dispatch(store, batch_id, app, config=DispatchConfig(max_attempts=2))

    # Five 429s with a 2-attempt budget: rate limits do not spend the budget.
    assert store.batches.get(batch_id).counts.succeeded == 1
    assert report.rate_limited == 5
    assert loop.time() - started >= 5 * 90


async def test_an_authentication_failure_pauses_the_batch_and_keeps_its_queue(store: Store) -> None:
    app = create_app(SimulatorConfig(required_api_key="sk-right"))
    batch_id = submit(store, [request_line(f"r{i}") for i in range(30)])

    report = await dispatch(store, batch_id, app)

    batch = store.batches.get(batch_id)
    assert batch_id in report.paused
    assert "authentication failed" in report.paused[batch_id]
    assert batch.paused_reason == report.paused[batch_id]
    assert batch.counts.processing == 30
    assert batch.counts.errored == 0
    # The first request went alone, and the others waited for its answer: one 401.
    assert app.stats.received == 1
    assert store.leases.seconds_until_ready([batch_id], batch.created_at) == 0.0


async def test_a_cancel_from_elsewhere_stops_dispatch_and_in_flight_requests_finish(
    store: Store,
) -> None:
    app = create_app(SimulatorConfig(latency_s=5.0))
    batch_id = submit(store, [request_line(f"r{i}") for i in range(100)])
    config = DispatchConfig(max_concurrency=10, control_poll_s=0.5)

    async def cancel_soon() -> None:
        await asyncio.sleep(12)
        store.lifecycle.cancel(batch_id, store.batches.get(batch_id).created_at)

    canceler = asyncio.create_task(cancel_soon())
    report = await dispatch(store, batch_id, app, config=config)
    await canceler

    batch = store.batches.get(batch_id)
    assert batch.processing_status == "ended"
    assert batch.cancel_initiated_at is not None
    # The first request went alone (t=0), then waves of 10 (t=5, 10 s); the second wave
    # was in flight at the cancel.
    assert batch.counts.succeeded == 21
    assert batch.counts.canceled == 79
    assert app.stats.received == report.sent == 21
    states = [row.state for row in store.results.iter_rows(batch_id)]
    assert len(states) == 100
    assert set(states) == {"succeeded", "canceled"}


async def test_rpm_limit_paces_sends_from_the_first_request(store: Store) -> None:
    app = create_app()
    batch_id = submit(store, [request_line(f"r{i}") for i in range(31)])
    loop = asyncio.get_running_loop()
    started = loop.time()

    await dispatch(store, batch_id, app, limits=RateLimits(rpm=60))

    # 60 RPM is one a second, with no burst at the start, after the start-up ramp: the first
    # request after 1 s (as without the ramp), its answer starts a 5 s climb to the limit (3
    # more requests), then one a second: 31 requests need about 33 s.
    elapsed = loop.time() - started
    assert 32.5 <= elapsed < 34
    assert store.batches.get(batch_id).counts.succeeded == 31


async def test_a_transport_failure_is_retried(store: Store) -> None:
    calls = 0

    async def flaky_then_simulator(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return await simulator_transport.handle_async_request(request)

    simulator_transport = in_process_transport(create_app())
    batch_id = submit(store, [request_line("a")])
    endpoint = builtin_endpoints({})[SIMULATOR]
    async with httpx.AsyncClient(transport=httpx.MockTransport(flaky_then_simulator)) as http:
        sender = MessagesClient(http, endpoint=endpoint, headers=NO_AUTH)
        db = WorkerDatabase(store)
        dispatcher = Dispatcher(
            db=db, senders={SIMULATOR: sender}, limiter=Limiter(), config=FAST_RETRIES
        )
        try:
            report = await dispatcher.run({batch_id: SIMULATOR})
        finally:
            db.close()

    assert report.retried == 1
    assert store.batches.get(batch_id).counts.succeeded == 1
