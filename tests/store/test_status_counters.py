"""What ``status`` shows beyond the counts (``Batches.stats``, ``held_by_model``,
``UsageReads.by_model``), read from the counters of batchrun.store.breakdowns, after each
kind of write, on both backends; each figure is also checked against the aggregate over the
rows (tests/counters.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from batchrun.records import BatchStats, EndpointShare, ErrorCount, ModelTokens
from batchrun.store.store import Store
from tests.conftest import request_line
from tests.counters import aggregated_details, maintained_details
from tests.store.test_counters import NOW, claim, finished, put


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    opened = create_engine(db_url)
    yield opened
    opened.dispose()


def stats(store: Store, engine: Engine, batch_id: str) -> BatchStats:
    """The batch's stats, its counters checked against the aggregate over its rows."""
    with engine.connect() as conn:
        assert maintained_details(conn)[batch_id] == aggregated_details(conn)[batch_id]
    return store.batches.stats(batch_id)


def answer(request: Any, batch_id: str, result_type: str = "succeeded", **fields: Any) -> Any:
    return replace(finished(request.id, batch_id, request.custom_id, result_type), **fields)


def test_answers_give_usage_by_model_errors_endpoints_and_times(
    store: Store, engine: Engine
) -> None:
    batch_id = put(store, [request_line(c) for c in "abcde"])
    a, b, c, d, e = claim(store, batch_id, limit=5)
    later = NOW + timedelta(seconds=90)
    usage = finished(0, "", "", input_tokens=10, output_tokens=2).usage
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            answer(a, batch_id, usage=usage, endpoint="one", model="claude-a"),
            # No model in the answer: the request's.
            answer(b, batch_id, usage=usage, endpoint="two", model=None, completed_at=later),
            answer(c, batch_id, "errored", error_type="overloaded_error", error_message="zz"),
            answer(d, batch_id, "errored", error_type="overloaded_error", error_message="Busy"),
            answer(
                e, batch_id, "errored", error_type="api_error", error_message="x", endpoint="one"
            ),
        ],
    )

    shown = stats(store, engine, batch_id)

    assert shown.usage == [
        ModelTokens("claude-a", 1, 10, 2, 0, 0, lane="realtime", cost_factor=1.0),
        ModelTokens("claude-sonnet-4-5", 1, 10, 2, 0, 0, lane="realtime", cost_factor=1.0),
    ]
    assert shown.errors == [
        ErrorCount("overloaded_error", 2, "Busy"),
        ErrorCount("api_error", 1, "x"),
    ]
    assert shown.first_started_at == NOW
    assert shown.last_completed_at == later
    # The minute up to the last answer holds only b's.
    assert shown.endpoints == [EndpointShare("one", 2, 0), EndpointShare("two", 1, 1)]
    assert shown.reused == 0


def test_a_requeue_drops_what_its_results_counted(store: Store, engine: Engine) -> None:
    batch_id = put(store, [request_line(c) for c in "ab"])
    a, b = claim(store, batch_id, limit=2)
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            answer(a, batch_id, usage=finished(0, "", "", input_tokens=5).usage, endpoint="one"),
            answer(
                b,
                batch_id,
                "errored",
                error_type="api_error",
                error_message="m",
                completed_at=NOW + timedelta(seconds=5),
            ),
        ],
    )

    assert store.lifecycle.requeue(batch_id, states=["errored"], now=NOW) == 1

    shown = stats(store, engine, batch_id)
    assert shown.errors == []
    assert shown.last_completed_at == NOW  # a's, not the dropped result's
    assert [item.requests for item in shown.usage] == [1]


def test_held_requests_are_counted_through_hold_release_cancel_and_requeue(
    store: Store, engine: Engine
) -> None:
    lines = [request_line(c, model="claude-x") for c in "abc"] + [request_line("d")]
    batch_id = put(store, lines)

    def held() -> dict[str, int]:
        with engine.connect() as conn:
            assert maintained_details(conn)[batch_id] == aggregated_details(conn)[batch_id]
        return store.lifecycle.held_by_model([batch_id]).get(batch_id, {})

    assert store.lifecycle.hold_models(batch_id, ["claude-x", "claude-sonnet-4-5"]) == 4
    assert held() == {"claude-x": 3, "claude-sonnet-4-5": 1}
    assert store.lifecycle.release_held(batch_id, ["claude-sonnet-4-5"], "realtime") == 1
    assert held() == {"claude-x": 3}
    store.lifecycle.cancel(batch_id, NOW)
    assert held() == {}
    # Canceled while held, they come back held.
    assert store.lifecycle.requeue(batch_id, states=["canceled"], now=NOW) == 4
    assert held() == {"claude-x": 3}


def test_reused_answers_count_as_reused_and_not_as_any_endpoints(
    store: Store, engine: Engine
) -> None:
    first = put(store, [request_line("a", "question")])
    (a,) = claim(store, first)
    usage = finished(0, "", "", input_tokens=11).usage
    store.results.record(
        owner="w1", now=NOW, finished=[answer(a, first, usage=usage, endpoint="one")]
    )

    second = put(store, [request_line("x", "question"), request_line("y")], reuse=True)

    shown = stats(store, engine, second)
    assert shown.reused == 1
    assert shown.endpoints == []
    assert shown.usage == [
        ModelTokens("claude-sonnet-4-5", 1, 11, 0, 0, 0, lane="realtime", cost_factor=0.0)
    ]
    assert shown.last_completed_at == NOW


def test_rejected_lines_count_as_errors_of_their_type(store: Store, engine: Engine) -> None:
    lines = [request_line("a"), {"custom_id": "b"}]
    batch_id = put(store, lines, skip_invalid=True)

    shown = stats(store, engine, batch_id)

    assert [(item.error_type, item.count) for item in shown.errors] == [("invalid_input", 1)]
    assert shown.last_completed_at == NOW
    assert shown.first_started_at is None
