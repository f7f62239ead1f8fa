"""Every store method against a real SQLite file."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from batchrun.errors import BatchNotFoundError, InputFileError
from batchrun.input.ingest import submit_requests
from batchrun.records import FinishedRequest, RetryLater, Usage
from batchrun.store.store import Store
from tests.conftest import jsonl, request_line, submit

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LEASE_S = 60.0


def _claim(store: Store, batch_id: str, limit: int = 10, *, owner: str = "w1", now: datetime = NOW):
    return store.leases.claim(
        owner=owner, batch_ids=[batch_id], limit=limit, now=now, lease_s=LEASE_S
    )


def _succeeded(
    request_id: int, batch_id: str, custom_id: str, attempts: int = 1
) -> FinishedRequest:
    return FinishedRequest(
        request_id=request_id,
        batch_id=batch_id,
        custom_id=custom_id,
        result_type="succeeded",
        attempts=attempts,
        completed_at=NOW,
        http_status=200,
        model="claude-sonnet-4-5",
        stop_reason="end_turn",
        usage=Usage(10, 5, 2, 1),
        latency_ms=120,
        body='{"type":"message"}',
    )


def test_create_batch_stores_every_request_in_input_order(store: Store) -> None:
    batch_id = submit(store, [request_line(f"r{i}") for i in range(2500)])

    batch = store.batches.get(batch_id)

    assert batch.counts.processing == 2500
    assert batch.processing_status == "in_progress"
    assert batch.expires_at - batch.created_at == timedelta(hours=24)
    rows = list(store.results.iter_rows(batch_id))
    assert [row.custom_id for row in rows] == [f"r{i}" for i in range(2500)]
    assert [row.line_no for row in rows[:3]] == [1, 2, 3]


def test_create_batch_stores_nothing_when_a_line_is_invalid(store: Store) -> None:
    lines = [request_line(f"r{i}") for i in range(1500)]
    lines[1400]["params"]["max_tokens"] = 0

    with pytest.raises(InputFileError, match=r"test\.jsonl:1401: "):
        submit(store, lines)

    assert store.batches.all() == []


def test_get_batch_of_unknown_id_names_the_fix(store: Store) -> None:
    with pytest.raises(BatchNotFoundError, match="batchrun list"):
        store.batches.get("msgbatch_nope")


def test_list_batches_is_newest_first(store: Store) -> None:
    first = submit_requests(
        store, io.BytesIO(jsonl([request_line("a")])), source="f", endpoint="simulator", now=NOW
    )
    second = submit_requests(
        store,
        io.BytesIO(jsonl([request_line("a")])),
        source="f",
        endpoint="simulator",
        now=NOW + timedelta(seconds=1),
    )

    assert [batch.id for batch in store.batches.all()] == [second, first]


def test_claim_takes_ready_requests_in_order_and_counts_no_send(store: Store) -> None:
    batch_id = submit(store, [request_line(f"r{i}") for i in range(5)])

    claimed = _claim(store, batch_id, limit=3)

    assert [item.custom_id for item in claimed] == ["r0", "r1", "r2"]
    # attempts counts sends; a claim is not one (a worker killed now sent nothing).
    assert all(item.attempts == 0 for item in claimed)
    assert [item.custom_id for item in _claim(store, batch_id, owner="w2")] == ["r3", "r4"]
    assert _claim(store, batch_id) == []


def test_claim_skips_requests_whose_back_off_has_not_passed(store: Store) -> None:
    batch_id = submit(store, [request_line("a")])
    (item,) = _claim(store, batch_id)
    store.results.record(
        owner="w1",
        now=NOW,
        retries=[RetryLater(item.id, NOW + timedelta(seconds=30), failures=1, last_error="x")],
    )

    assert _claim(store, batch_id, now=NOW + timedelta(seconds=29)) == []
    assert store.leases.seconds_until_ready([batch_id], NOW) == pytest.approx(30)
    (again,) = _claim(store, batch_id, now=NOW + timedelta(seconds=30))
    assert (again.attempts, again.failures, again.last_error) == (1, 1, "x")


def test_seconds_until_ready_is_none_without_queued_requests(store: Store) -> None:
    batch_id = submit(store, [request_line("a")])
    assert store.leases.seconds_until_ready([batch_id], NOW) == 0.0
    _claim(store, batch_id)
    assert store.leases.seconds_until_ready([batch_id], NOW) is None


def test_record_writes_one_result_and_ends_the_batch(store: Store) -> None:
    batch_id = submit(store, [request_line("a"), request_line("b")])
    a, b = _claim(store, batch_id)

    store.results.record(owner="w1", now=NOW, finished=[_succeeded(a.id, batch_id, "a")])
    assert store.batches.get(batch_id).processing_status == "in_progress"
    store.results.record(owner="w1", now=NOW, finished=[_succeeded(b.id, batch_id, "b")])

    batch = store.batches.get(batch_id)
    assert batch.processing_status == "ended"
    assert batch.ended_at == NOW
    assert batch.counts.succeeded == 2
    assert (batch.tokens.input_tokens, batch.tokens.output_tokens) == (20, 10)
    assert (batch.tokens.cache_creation_input_tokens, batch.tokens.cache_read_input_tokens) == (
        4,
        2,
    )


def test_a_second_result_for_the_same_request_is_ignored(store: Store) -> None:
    batch_id = submit(store, [request_line("a")])
    (a,) = _claim(store, batch_id)
    store.results.record(owner="w1", now=NOW, finished=[_succeeded(a.id, batch_id, "a")])

    errored = FinishedRequest(
        request_id=a.id,
        batch_id=batch_id,
        custom_id="a",
        result_type="errored",
        attempts=2,
        completed_at=NOW,
        body="{}",
    )
    store.results.record(owner="w2", now=NOW, finished=[errored])

    (row,) = store.results.iter_rows(batch_id)
    assert row.state == "succeeded"
    assert row.body == '{"type":"message"}'


def test_unsent_requests_return_to_the_queue_without_the_attempt(store: Store) -> None:
    batch_id = submit(store, [request_line("a")])
    (a,) = _claim(store, batch_id)

    store.results.record(owner="w1", now=NOW, unsent=[a.id])

    (again,) = _claim(store, batch_id)
    assert again.attempts == 0


def test_cancel_cancels_queued_requests_and_waits_for_running_ones(store: Store) -> None:
    batch_id = submit(store, [request_line(f"r{i}") for i in range(4)])
    held, unsent = _claim(store, batch_id, limit=2)

    store.lifecycle.cancel(batch_id, NOW)

    batch = store.batches.get(batch_id)
    assert batch.processing_status == "canceling"
    assert (batch.counts.canceled, batch.counts.processing) == (2, 2)
    assert store.lifecycle.stopped([batch_id], NOW) == {batch_id: "canceling"}
    store.results.record(
        owner="w1", now=NOW, finished=[_succeeded(held.id, batch_id, held.custom_id)]
    )
    store.results.record(owner="w1", now=NOW, canceled=[unsent.id])
    batch = store.batches.get(batch_id)
    assert batch.processing_status == "ended"
    assert (batch.counts.succeeded, batch.counts.canceled) == (1, 3)
    assert [row.state for row in store.results.iter_rows(batch_id)] == [
        "succeeded",
        "canceled",
        "canceled",
        "canceled",
    ]


def test_cancel_of_an_ended_batch_changes_nothing(store: Store) -> None:
    batch_id = submit(store, [request_line("a")])
    (a,) = _claim(store, batch_id)
    store.results.record(owner="w1", now=NOW, finished=[_succeeded(a.id, batch_id, "a")])

    store.lifecycle.cancel(batch_id, NOW + timedelta(seconds=5))

    batch = store.batches.get(batch_id)
    assert batch.cancel_initiated_at is None
    assert batch.counts.succeeded == 1


def test_expired_leases_return_to_the_queue(store: Store) -> None:
    batch_id = submit(store, [request_line("a"), request_line("b")])
    _a, b = _claim(store, batch_id)
    store.leases.renew(owner="w1", request_ids=[b.id], now=NOW + timedelta(seconds=50), lease_s=60)

    assert store.leases.reclaim_expired(NOW + timedelta(seconds=61)) == 1

    (again,) = _claim(store, batch_id, owner="w2", now=NOW + timedelta(seconds=61))
    # Whether the dead worker sent it is unknown: no send is counted for it.
    assert (again.custom_id, again.attempts) == ("a", 0)


def test_pause_is_reported_until_cleared(store: Store) -> None:
    batch_id = submit(store, [request_line("a")])
    store.lifecycle.pause(batch_id, "authentication failed")

    assert store.lifecycle.stopped([batch_id], NOW) == {batch_id: "authentication failed"}
    assert store.batches.get(batch_id).paused_reason == "authentication failed"
    store.lifecycle.clear_pauses([batch_id])
    assert store.lifecycle.stopped([batch_id], NOW) == {}


def test_batches_with_open_work_leaves_out_finished_batches(store: Store) -> None:
    done = submit(store, [request_line("a")])
    (a,) = _claim(store, done)
    store.results.record(owner="w1", now=NOW, finished=[_succeeded(a.id, done, "a")])
    open_ = submit(store, [request_line("a")])

    assert store.batches.with_open_work() == [open_]


def test_set_endpoint_stores_the_new_name_and_refuses_unknown_batches(store: Store) -> None:
    batch_id = submit(store, [request_line("a")], endpoint="anthropic")

    store.lifecycle.set_endpoint(batch_id, "langdock-eu")

    assert store.batches.get(batch_id).endpoint == "langdock-eu"
    assert [b.endpoint for b in store.batches.all()] == ["langdock-eu"]
    with pytest.raises(BatchNotFoundError):
        store.lifecycle.set_endpoint("msgbatch_missing", "simulator")
