"""Expiry, resume, stopping and dead workers: the store statements and the dispatcher."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime, timedelta

import pytest

from batchrun.dispatch.owners import is_dead_here, new_owner_id
from batchrun.dispatch.settings import DispatchConfig
from batchrun.records import FinishedRequest
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store
from tests.conftest import request_line, submit
from tests.dispatch.helpers import dispatch, run_dispatcher

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _claim(store: Store, batch_id: str, limit: int, owner: str = "w1", now: datetime = NOW):
    return store.leases.claim(owner=owner, batch_ids=[batch_id], limit=limit, now=now, lease_s=60)


def _errored(request_id: int, batch_id: str, custom_id: str) -> FinishedRequest:
    return FinishedRequest(
        request_id=request_id,
        batch_id=batch_id,
        custom_id=custom_id,
        result_type="errored",
        attempts=1,
        completed_at=NOW,
        error_type="api_error",
        error_message="boom",
        body='{"type":"error","error":{"type":"api_error","message":"boom"}}',
    )


# -- store statements ---------------------------------------------------------------------------


def test_expiry_expires_unsent_requests_and_ends_the_batch_when_nothing_is_in_flight(
    store: Store,
) -> None:
    batch_id = submit(store, [request_line(f"r{i}") for i in range(4)])
    expires_at = store.batches.get(batch_id).expires_at
    (held,) = _claim(store, batch_id, 1, now=expires_at - timedelta(seconds=5))

    assert store.lifecycle.expire_due(expires_at - timedelta(seconds=1)) == []
    assert store.lifecycle.expire_due(expires_at) == [batch_id]

    batch = store.batches.get(batch_id)
    assert (batch.counts.expired, batch.counts.processing) == (3, 1)
    assert store.lifecycle.stopped([batch_id], expires_at) == {batch_id: "expired"}
    store.results.record(owner="w1", now=expires_at, expired=[held.id])
    batch = store.batches.get(batch_id)
    assert batch.processing_status == "ended"
    assert [row.state for row in store.results.iter_rows(batch_id)] == ["expired"] * 4


def test_requeue_brings_back_canceled_and_errored_requests_keeping_attempts(
    store: Store,
) -> None:
    batch_id = submit(store, [request_line(f"r{i}") for i in range(3)])
    (first,) = _claim(store, batch_id, 1)
    store.results.record(owner="w1", now=NOW, finished=[_errored(first.id, batch_id, "r0")])
    store.lifecycle.cancel(batch_id, NOW)
    assert store.batches.get(batch_id).processing_status == "ended"

    assert store.lifecycle.requeue(batch_id, states=["canceled"], now=NOW) == 2
    batch = store.batches.get(batch_id)
    assert batch.processing_status == "in_progress"
    assert (batch.counts.processing, batch.counts.errored) == (2, 1)

    assert store.lifecycle.requeue(batch_id, states=["errored"], now=NOW) == 3
    claimed = {item.custom_id: item for item in _claim(store, batch_id, 3)}
    assert claimed["r0"].attempts == 1  # its first send is kept
    assert claimed["r1"].attempts == 0  # canceled before it was ever sent
    assert [row.state for row in store.results.iter_rows(batch_id)] == ["running"] * 3


def test_released_requests_of_a_dead_worker_go_back_without_waiting_for_the_lease(
    store: Store,
) -> None:
    batch_id = submit(store, [request_line(f"r{i}") for i in range(3)])
    _claim(store, batch_id, 2, owner="host:1:dead")
    _claim(store, batch_id, 1, owner="host:2:alive")

    assert sorted(store.leases.owners()) == ["host:1:dead", "host:2:alive"]
    assert store.leases.release(["host:1:dead"]) == 2
    again = _claim(store, batch_id, 5, owner="w3")
    # The dead worker may or may not have sent them: no send is counted that was not seen.
    assert [(item.custom_id, item.attempts) for item in again] == [("r0", 0), ("r1", 0)]


def test_a_dead_process_on_this_host_is_recognised() -> None:
    here = socket.gethostname()

    assert not is_dead_here(new_owner_id())  # this very process
    assert not is_dead_here(f"{here}:{os.getppid()}:abc")  # alive
    assert is_dead_here(f"{here}:{2**22 + 12345}:abc")  # no such pid
    assert not is_dead_here("elsewhere.example:1:abc")
    assert not is_dead_here("garbage")


# -- the dispatcher ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_expiring_during_a_run_expires_its_unsent_requests(store: Store) -> None:
    app = create_app(SimulatorConfig(latency_s=10.0))
    batch_id = submit(store, [request_line(f"r{i}", f"q{i}") for i in range(20)])
    batch = store.batches.get(batch_id)
    # Expire 25 s after submitting: with 10 s answers, the first request alone, then two
    # waves of 2 get sent.
    store.lifecycle.requeue(
        batch_id, states=[], now=NOW, expires_at=batch.created_at + timedelta(seconds=25)
    )

    await dispatch(store, batch_id, app, config=DispatchConfig(max_concurrency=2))

    batch = store.batches.get(batch_id)
    assert batch.processing_status == "ended"
    assert batch.counts.succeeded == app.stats.received == 5
    assert batch.counts.expired == 15


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_stop_lets_requests_in_flight_finish_and_keeps_the_rest_queued(
    store: Store,
) -> None:
    app = create_app(SimulatorConfig(latency_s=5.0))
    batch_id = submit(store, [request_line(f"r{i}", f"q{i}") for i in range(50)])

    async def stop_soon(dispatcher) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(7)
        dispatcher.request_stop("interrupted by test")

    report = await run_dispatcher(
        store, batch_id, app, config=DispatchConfig(max_concurrency=4), during=stop_soon
    )

    batch = store.batches.get(batch_id)
    assert report.interrupted == "interrupted by test"
    assert report.released == 0
    # The first request alone at 0 s, a wave of 4 at 5 s, in flight at the stop and recorded.
    assert batch.counts.succeeded == app.stats.received == 5
    assert batch.counts.processing == 45
    assert store.leases.seconds_until_ready([batch_id], NOW) == 0.0  # queued, not running
    claimed = _claim(store, batch_id, 50, now=datetime.now(UTC))
    assert {item.attempts for item in claimed} == {0}  # none counted a send it never made


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_requests_still_in_flight_after_the_grace_period_go_back_to_the_queue(
    store: Store,
) -> None:
    app = create_app()
    lines = [request_line("quick", "fast"), request_line("stuck", "[[sim:hang=1]] slow")]
    batch_id = submit(store, lines)
    config = DispatchConfig(shutdown_grace_s=3.0)

    async def stop_soon(dispatcher) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(1)
        dispatcher.request_stop("interrupted by test")

    report = await run_dispatcher(store, batch_id, app, config=config, during=stop_soon)

    assert report.released == 1
    counts = store.batches.get(batch_id).counts
    assert (counts.succeeded, counts.processing) == (1, 1)
    (stuck,) = _claim(store, batch_id, 5, now=datetime.now(UTC))
    assert (stuck.custom_id, stuck.attempts) == ("stuck", 1)  # the interrupted send counts
