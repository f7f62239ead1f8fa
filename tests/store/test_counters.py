"""The counters each batch keeps (batchrun.store.counters, batchrun.store.breakdowns),
transition by transition, on both backends: what ``status`` shows, and that it is what an
aggregate over the rows gives (tests/counters.py; the autouse check of tests/conftest.py
repeats it after every test)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from batchrun.input.ingest import submit_requests
from batchrun.records import (
    FinishedRequest,
    ImportedResult,
    ProviderIntent,
    RequestCounts,
    Requeue,
    RetryLater,
    TokenTotals,
    Usage,
)
from batchrun.store.store import Store
from tests.conftest import jsonl, request_line
from tests.counters import aggregated, aggregated_details, maintained, maintained_details

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LEASE_S = 60.0


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A second view of the store's database, to aggregate over the rows."""
    opened = create_engine(db_url)
    yield opened
    opened.dispose()


def put(store: Store, lines: list[dict[str, Any]], **options: Any) -> str:
    return submit_requests(
        store,
        io.BytesIO(jsonl(lines)),
        source="test.jsonl",
        endpoint="simulator",
        now=NOW,
        **options,
    )


def claim(store: Store, batch_id: str, limit: int = 10, *, owner: str = "w1", now: datetime = NOW):
    return store.leases.claim(
        owner=owner, batch_ids=[batch_id], limit=limit, now=now, lease_s=LEASE_S
    )


def finished(
    request_id: int, batch_id: str, custom_id: str, result_type: str = "succeeded", **usage: int
) -> FinishedRequest:
    return FinishedRequest(
        request_id=request_id,
        batch_id=batch_id,
        custom_id=custom_id,
        result_type=result_type,
        attempts=1,
        completed_at=NOW,
        http_status=200 if result_type == "succeeded" else 400,
        model="claude-sonnet-4-5",
        usage=Usage(**{"input_tokens": 0, "output_tokens": 0, **usage}) if usage else None,
        body="{}",
    )


def shown(store: Store, engine: Engine, batch_id: str) -> tuple[RequestCounts, TokenTotals]:
    """What status shows of the batch, checked against the aggregate over its rows."""
    summary = store.batches.get(batch_id)
    with engine.connect() as conn:
        assert maintained(conn)[batch_id] == aggregated(conn)[batch_id]
        assert maintained_details(conn)[batch_id] == aggregated_details(conn)[batch_id]
    return summary.counts, summary.tokens


def test_a_new_batch_counts_its_queued_and_rejected_lines(store: Store, engine: Engine) -> None:
    lines: list[dict[str, Any]] = [request_line(f"r{i}") for i in range(1200)]
    lines[3]["params"]["max_tokens"] = 0
    batch_id = put(store, lines, skip_invalid=True)

    assert shown(store, engine, batch_id) == (
        RequestCounts(processing=1199, errored=1),
        TokenTotals(),
    )


def test_results_count_their_state_and_tokens_and_retries_change_nothing(
    store: Store, engine: Engine
) -> None:
    batch_id = put(store, [request_line(c) for c in "abc"])
    a, b, c = claim(store, batch_id)
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            finished(a.id, batch_id, "a", input_tokens=10, output_tokens=5),
            finished(b.id, batch_id, "b", "errored"),
        ],
        retries=[RetryLater(c.id, NOW, 1, "overloaded")],
    )

    assert shown(store, engine, batch_id) == (
        RequestCounts(processing=1, succeeded=1, errored=1),
        TokenTotals(input_tokens=10, output_tokens=5),
    )


def test_two_workers_recording_the_same_request_count_it_once(store: Store, engine: Engine) -> None:
    batch_id = put(store, [request_line("a")])
    (first,) = claim(store, batch_id, owner="w1")
    # w1's lease runs out; w2 claims the request and both record it.
    later = NOW + timedelta(seconds=LEASE_S + 1)
    store.leases.reclaim_expired(later)
    (second,) = claim(store, batch_id, owner="w2", now=later)
    assert second.id == first.id
    for owner, tokens in (("w2", 7), ("w1", 9)):
        store.results.record(
            owner=owner,
            now=later,
            finished=[finished(first.id, batch_id, "a", input_tokens=tokens)],
        )

    assert shown(store, engine, batch_id) == (
        RequestCounts(succeeded=1),
        TokenTotals(input_tokens=7),
    )


def test_requeue_of_errored_and_canceled_moves_them_back_and_drops_their_tokens(
    store: Store, engine: Engine
) -> None:
    batch_id = put(store, [request_line(c) for c in "abcd"])
    a, b, c = claim(store, batch_id, limit=3)
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            finished(a.id, batch_id, "a", input_tokens=10),
            finished(b.id, batch_id, "b", "errored", input_tokens=3),
            finished(c.id, batch_id, "c", "errored"),
        ],
    )
    store.lifecycle.cancel(batch_id, NOW)
    assert shown(store, engine, batch_id) == (
        RequestCounts(succeeded=1, errored=2, canceled=1),
        TokenTotals(input_tokens=13),
    )

    assert store.lifecycle.requeue(batch_id, states=["errored", "canceled"], now=NOW) == 3

    assert shown(store, engine, batch_id) == (
        RequestCounts(processing=3, succeeded=1),
        TokenTotals(input_tokens=10),
    )


def test_cancel_with_requests_in_flight_counts_them_when_they_are_recorded(
    store: Store, engine: Engine
) -> None:
    batch_id = put(store, [request_line(c) for c in "abcd"])
    a, b = claim(store, batch_id, limit=2)

    store.lifecycle.cancel(batch_id, NOW)
    assert shown(store, engine, batch_id)[0] == RequestCounts(processing=2, canceled=2)

    store.results.record(
        owner="w1",
        now=NOW,
        finished=[finished(a.id, batch_id, "a", output_tokens=4)],
        canceled=[b.id],
    )
    assert shown(store, engine, batch_id) == (
        RequestCounts(succeeded=1, canceled=3),
        TokenTotals(output_tokens=4),
    )
    assert store.batches.get(batch_id).ended_at is not None


def test_expiry_counts_queued_and_abandoned_requests_expired(store: Store, engine: Engine) -> None:
    batch_id = put(store, [request_line(c) for c in "abc"])
    claim(store, batch_id, limit=1)

    store.lifecycle.expire_due(NOW + timedelta(days=2))

    assert shown(store, engine, batch_id)[0] == RequestCounts(expired=3)


def test_a_provider_import_counts_results_and_requeues_and_close_the_rest(
    store: Store, engine: Engine
) -> None:
    batch_id = put(store, [request_line(c) for c in "abcde"], lane="batch")
    intent = store.provider_batches.take(
        batch_id=batch_id, endpoint="simulator", max_requests=10, max_bytes=10**6, now=NOW
    )
    assert isinstance(intent, ProviderIntent)
    row_id = intent.row_id
    store.provider_batches.created(
        row_id, provider_id="msgbatch_1", created_at=NOW, next_poll_at=NOW
    )

    def imported(custom_id: str, result_type: str, **usage: int) -> ImportedResult:
        return ImportedResult(custom_id, finished(0, "", custom_id, result_type, **usage))

    store.provider_batches.import_results(
        row_id,
        [imported("a", "succeeded", input_tokens=20), imported("b", "errored")],
        [Requeue("c", "expired by the provider")],
        now=NOW,
    )
    assert shown(store, engine, batch_id) == (
        RequestCounts(processing=3, succeeded=1, errored=1),
        TokenTotals(input_tokens=20),
    )

    # d and e had no result line, and some lines could not be read: they end errored.
    assert store.provider_batches.close(row_id, now=NOW, leftover_reason="lost", requeue=False) == 2
    assert shown(store, engine, batch_id)[0] == RequestCounts(processing=1, succeeded=1, errored=3)


def test_delete_and_prune_leave_the_other_batches_counters(store: Store, engine: Engine) -> None:
    kept = put(store, [request_line("a")])
    gone = put(store, [request_line("b"), request_line("c")])
    store.lifecycle.cancel(gone, NOW)
    before = shown(store, engine, kept)

    store.lifecycle.delete(gone)

    assert shown(store, engine, kept) == before
    with engine.connect() as conn:
        assert set(maintained(conn)) == {kept}


def test_reused_answers_and_settled_copies_count_as_succeeded_with_their_tokens(
    store: Store, engine: Engine
) -> None:
    first = put(store, [request_line("a", "question")])
    (a,) = claim(store, first)
    store.results.record(
        owner="w1", now=NOW, finished=[finished(a.id, first, "a", input_tokens=11)]
    )

    # x is answered from a's stored result; y and z are duplicates, z waits for y.
    second = put(
        store,
        [request_line("x", "question"), request_line("y", "new"), request_line("z", "new")],
        reuse=True,
    )
    assert shown(store, engine, second) == (
        RequestCounts(processing=2, succeeded=1),
        TokenTotals(input_tokens=11),
    )
    (y,) = claim(store, second)
    store.results.record(
        owner="w1", now=NOW, finished=[finished(y.id, second, "y", input_tokens=6)]
    )

    assert shown(store, engine, second) == (
        RequestCounts(succeeded=3),
        TokenTotals(input_tokens=11 + 6 + 6),
    )


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_workers_recording_at_once_lose_no_count(db_url: str, engine: Engine) -> None:
    store = Store.open(db_url)
    try:
        batch_id = put(store, [request_line(f"r{i}") for i in range(200)])
        claimed = {f"w{n}": claim(store, batch_id, limit=50, owner=f"w{n}") for n in range(4)}

        def work(owner: str) -> None:
            for item in claimed[owner]:
                store.results.record(
                    owner=owner,
                    now=NOW,
                    finished=[finished(item.id, batch_id, item.custom_id, output_tokens=1)],
                )

        threads = [threading.Thread(target=work, args=(owner,)) for owner in claimed]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert shown(store, engine, batch_id) == (
            RequestCounts(succeeded=200),
            TokenTotals(output_tokens=200),
        )
    finally:
        store.close()
