"""The store methods behind cost, budgets, status and flat exports, on SQLite and Postgres."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from batchrun.errors import BatchNotFoundError
from batchrun.records import FinishedRequest, ModelTokens, Usage
from batchrun.store.store import Store
from tests.conftest import request_line, submit

OWNER = "test-worker"


def finish(
    store: Store,
    batch_id: str,
    outcomes: dict[str, FinishedRequest | None],
    *,
    now: datetime,
) -> None:
    """Claim every request of the batch and record the given outcome for each custom_id
    (None: leave it queued)."""
    claimed = store.leases.claim(owner=OWNER, batch_ids=[batch_id], limit=100, now=now, lease_s=60)
    finished, unsent = [], []
    for request in claimed:
        template = outcomes[request.custom_id]
        if template is None:
            unsent.append(request.id)
            continue
        finished.append(
            FinishedRequest(
                **{
                    **template.__dict__,
                    "request_id": request.id,
                    "batch_id": batch_id,
                    "custom_id": request.custom_id,
                }
            )
        )
    store.results.record(owner=OWNER, now=now, finished=finished, unsent=unsent)


def succeeded(at: datetime, usage: Usage, *, model: str | None = None) -> FinishedRequest:
    body = (
        '{"id":"msg_1","type":"message","role":"assistant","model":"m","content":'
        '[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,'
        '"usage":{"input_tokens":1,"output_tokens":1}}'
    )
    return FinishedRequest(
        request_id=0,
        batch_id="",
        custom_id="",
        result_type="succeeded",
        attempts=1,
        completed_at=at,
        http_status=200,
        model=model,
        stop_reason="end_turn",
        usage=usage,
        latency_ms=250,
        request_ref="req_1",
        body=body,
    )


def errored(at: datetime, error_type: str, message: str) -> FinishedRequest:
    return FinishedRequest(
        request_id=0,
        batch_id="",
        custom_id="",
        result_type="errored",
        attempts=2,
        completed_at=at,
        http_status=400,
        error_type=error_type,
        error_message=message,
        body=json.dumps({"type": "error", "error": {"type": error_type, "message": message}}),
    )


def test_a_budget_is_stored_per_batch_and_can_be_replaced(store: Store) -> None:
    first = submit(store, [request_line("a")])
    second = submit(store, [request_line("b")])

    store.batches.set_max_cost(first, 12.5)
    assert store.batches.max_costs([first, second]) == {first: 12.5, second: None}
    store.batches.set_max_cost(first, None)
    assert store.batches.max_costs([first]) == {first: None}
    with pytest.raises(BatchNotFoundError):
        store.batches.set_max_cost("msgbatch_missing", 1.0)


def test_usage_is_summed_per_batch_and_model_with_cache_tokens(store: Store) -> None:
    now = datetime.now(UTC)
    lines = [
        request_line("a", model="claude-3-haiku-20240307"),
        request_line("b", model="claude-3-haiku-20240307"),
        request_line("c", model="claude-sonnet-4-5"),
        request_line("d", model="claude-sonnet-4-5"),
        request_line("e", model="claude-sonnet-4-5"),
    ]
    batch_id = submit(store, lines)
    finish(
        store,
        batch_id,
        {
            "a": succeeded(now, Usage(100, 10, 1000, 0)),
            "b": succeeded(now, Usage(200, 20, 0, 5000)),
            # The response's model wins over the request's.
            "c": succeeded(now, Usage(7, 3), model="claude-sonnet-4-5-20250929"),
            "d": errored(now, "invalid_request_error", "bad"),
            "e": None,
        },
        now=now,
    )

    usage = store.usage.by_model([batch_id, "msgbatch_other"])

    assert usage["msgbatch_other"] == []
    assert usage[batch_id] == [
        ModelTokens("claude-3-haiku-20240307", 2, 300, 30, 1000, 5000),
        ModelTokens("claude-sonnet-4-5-20250929", 1, 7, 3, 0, 0),
    ]


def test_batch_stats_give_timings_and_the_most_frequent_errors(store: Store) -> None:
    start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    lines = [request_line(f"r{i}") for i in range(6)]
    batch_id = submit(store, lines)
    store.batches.set_max_cost(batch_id, 3.0)
    finish(
        store,
        batch_id,
        {
            "r0": succeeded(start + timedelta(seconds=30), Usage(10, 5)),
            "r1": errored(start, "overloaded_error", "Overloaded"),
            "r2": errored(start, "invalid_request_error", "bad b"),
            "r3": errored(start, "invalid_request_error", "bad a"),
            "r4": errored(start, "api_error", "boom"),
            "r5": None,
        },
        now=start,
    )

    stats = store.batches.stats(batch_id, top_errors=2)

    assert stats.first_started_at == start
    assert stats.last_completed_at == start + timedelta(seconds=30)
    assert stats.max_cost_usd == 3.0
    assert [(e.error_type, e.count) for e in stats.errors] == [
        ("invalid_request_error", 2),
        ("api_error", 1),
    ]
    assert stats.errors[0].example == "bad a"
    assert stats.usage == [ModelTokens("claude-sonnet-4-5", 1, 10, 5)]


def test_result_details_stream_finished_requests_in_input_order(store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    batch_id = submit(store, [request_line("x"), request_line("y"), request_line("z")])
    finish(
        store,
        batch_id,
        {
            "x": errored(now, "invalid_request_error", "no"),
            "y": succeeded(now, Usage(11, 22, 33, 44)),
            "z": None,
        },
        now=now,
    )

    rows = list(store.results.iter_details(batch_id))
    only = list(store.results.iter_details(batch_id, "succeeded"))

    assert [(r.custom_id, r.line_no, r.state) for r in rows] == [
        ("x", 1, "errored"),
        ("y", 2, "succeeded"),
    ]
    y = rows[1]
    assert (y.input_tokens, y.output_tokens) == (11, 22)
    assert (y.cache_creation_input_tokens, y.cache_read_input_tokens) == (33, 44)
    assert (y.model, y.stop_reason, y.latency_ms, y.attempts) == (
        "claude-sonnet-4-5",
        "end_turn",
        250,
        1,
    )
    assert y.started_at == now and y.completed_at == now
    assert y.created_at <= now + timedelta(seconds=1)
    assert rows[0].error_type == "invalid_request_error" and rows[0].error_message == "no"
    assert [r.custom_id for r in only] == ["y"]
