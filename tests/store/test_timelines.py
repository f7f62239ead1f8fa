"""The dashboard's statements (``batchrun.store.timelines``, and the answers per minute and
usage it reads from ``batchrun.store.series`` and ``batchrun.store.usage``) on SQLite and
Postgres."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from batchrun.input.ingest import submit_requests
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import KeyPolicy, PendingChanges
from batchrun.records import FinishedRequest, RetryLater, Usage
from batchrun.store.series import AnswerBucket
from batchrun.store.store import Store
from batchrun.store.timelines import ErrorTypeCount, RateLimitRow, RetryingRequest
from batchrun.store.usage import Usage as AnswerUsage
from tests.conftest import jsonl, request_line, submit

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SONNET = "claude-sonnet-4-5"
HAIKU = "claude-haiku-4-5"
_STATUSES = {"rate_limit_error": 429, "overloaded_error": 529}


def _claimed(store: Store, batch_id: str) -> dict[str, int]:
    claimed = store.leases.claim(owner="w1", batch_ids=[batch_id], limit=100, now=NOW, lease_s=600)
    return {item.custom_id: item.id for item in claimed}


def _answer(
    ids: dict[str, int],
    batch_id: str,
    custom_id: str,
    after_s: float,
    *,
    usage: Usage | None = None,
    error_type: str | None = None,
    lane: str | None = None,
) -> FinishedRequest:
    return FinishedRequest(
        request_id=ids[custom_id],
        batch_id=batch_id,
        custom_id=custom_id,
        result_type="errored" if error_type else "succeeded",
        attempts=1,
        completed_at=NOW + timedelta(seconds=after_s),
        http_status=_STATUSES.get(error_type, 400) if error_type else 200,
        model=SONNET,
        usage=None if error_type else (usage or Usage(10, 5, 2, 1)),
        error_type=error_type,
        error_message=f"{error_type} at {after_s}" if error_type else None,
        body='{"type":"message"}' if not error_type else None,
        lane=lane,
    )


def _batch_with_answers(store: Store) -> str:
    """Six requests answered over three minutes (12:00, 12:01, 12:03), one of them by a
    provider batch, and two still open."""
    batch_id = submit(store, [request_line(f"r{i}") for i in range(8)])
    ids = _claimed(store, batch_id)
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            _answer(ids, batch_id, "r0", 10, usage=Usage(100, 20, 5, 7)),
            _answer(ids, batch_id, "r1", 50, error_type="rate_limit_error"),
            _answer(ids, batch_id, "r2", 70, usage=Usage(30, 3)),
            _answer(ids, batch_id, "r3", 75, error_type="invalid_request_error"),
            _answer(ids, batch_id, "r4", 190, error_type="overloaded_error"),
            # Answered by a provider batch: not a real-time send, left out of the rates.
            _answer(ids, batch_id, "r5", 80, usage=Usage(1000, 1000), lane="batch"),
        ],
        retries=[RetryLater(ids["r6"], NOW, 1, "HTTP 529 overloaded_error")],
    )
    return batch_id


def test_answers_per_minute_group_real_time_answers_oldest_first(store: Store) -> None:
    batch_id = _batch_with_answers(store)

    series = store.series.answers(batch_id, width_s=60)

    assert series == [
        # input counts cache writes (as the limits do): 100 + 5; the 429 has no usage.
        AnswerBucket(NOW, 2, 105, 20, errored=1, throttled=1),
        AnswerBucket(NOW + timedelta(minutes=1), 2, 30, 3, errored=1, throttled=0, failed=0),
        AnswerBucket(NOW + timedelta(minutes=3), 1, 0, 0, errored=1, throttled=1),
    ]
    assert all(point.start.tzinfo is not None for point in series)


def test_answers_per_minute_keep_the_latest_minutes_when_bounded(store: Store) -> None:
    batch_id = _batch_with_answers(store)

    series = store.series.answers(batch_id, width_s=60, max_buckets=2)

    assert [point.start for point in series] == [
        NOW + timedelta(minutes=1),
        NOW + timedelta(minutes=3),
    ]


def test_answers_per_minute_leave_out_reused_answers_and_canceled_requests(store: Store) -> None:
    lines = [request_line("a", "same prompt"), request_line("b", "other prompt")]
    first = submit(store, lines[:1])
    ids = _claimed(store, first)
    store.results.record(owner="w1", now=NOW, finished=[_answer(ids, first, "a", 5)])
    # The same params again with reuse: answered from the first batch, nothing sent.
    second = submit_requests(
        store, io.BytesIO(jsonl(lines)), source="t", endpoint="simulator", now=NOW, reuse=True
    )
    store.lifecycle.cancel(second, NOW + timedelta(seconds=1))

    assert store.batches.get(second).counts.succeeded == 1
    assert store.batches.get(second).counts.canceled == 1
    assert store.series.answers(second, width_s=60) == []
    assert len(store.series.answers(first, width_s=60)) == 1


def test_usage_groups_answers_by_kind_with_the_recent_window(store: Store) -> None:
    batch_id = _batch_with_answers(store)
    idle = submit(store, [request_line("x")])

    found = store.usage.of_batches([batch_id, idle], since=NOW + timedelta(seconds=70))

    assert found == [
        # Answered by a provider batch: in the cost, not in the real-time rates.
        AnswerUsage(
            batch_id, SONNET, "batch", 1.0, True, 1, 1, 1000, 1000, 0, 0, sends=1, sent_once=1,
            first_at=NOW + timedelta(seconds=80), last_at=NOW + timedelta(seconds=80),
            recent_answers=1, recent_input_tokens=1000, recent_output_tokens=1000,
        ),
        AnswerUsage(
            batch_id, SONNET, "realtime", 1.0, True,
            answers=5, with_usage=2, sends=5, sent_once=5,
            input_tokens=130, output_tokens=23,
            cache_creation_input_tokens=5, cache_read_input_tokens=7,
            first_at=NOW + timedelta(seconds=10), last_at=NOW + timedelta(seconds=190),
            # r2 (70 s), r3 (75 s) and r4 (190 s); input as limits count it.
            recent_answers=3, recent_input_tokens=30, recent_output_tokens=3,
        ),
    ]  # fmt: skip


def test_usage_names_the_requested_model_when_the_answer_names_none(store: Store) -> None:
    batch_id = submit(store, [request_line("a", model=HAIKU)])
    ids = _claimed(store, batch_id)
    answer = _answer(ids, batch_id, "a", 5, error_type="api_error")
    store.results.record(owner="w1", now=NOW, finished=[replace(answer, model=None)])

    (group,) = store.usage.of_batches([batch_id], since=NOW)

    assert (group.model, group.answers, group.with_usage) == (HAIKU, 1, 0)


def test_usage_tells_reused_answers_apart(store: Store) -> None:
    lines = [request_line("a", "same prompt")]
    first = submit(store, lines)
    ids = _claimed(store, first)
    store.results.record(owner="w1", now=NOW, finished=[_answer(ids, first, "a", 5)])
    second = submit_requests(
        store, io.BytesIO(jsonl(lines)), source="t", endpoint="simulator", now=NOW, reuse=True
    )

    (group,) = store.usage.of_batches([second], since=NOW)

    assert (group.sent, group.cost_factor, group.with_usage) == (False, 0.0, 1)


def test_error_types_counts_each_type_most_frequent_first(store: Store) -> None:
    batch_id = _batch_with_answers(store)
    other = submit(store, [request_line("y")])
    ids = _claimed(store, other)
    store.results.record(
        owner="w1", now=NOW, finished=[_answer(ids, other, "y", 1, error_type="api_error")]
    )
    more = submit(store, [request_line(f"z{i}") for i in range(2)])
    ids = _claimed(store, more)
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            _answer(ids, more, "z0", 1, error_type="overloaded_error"),
            _answer(ids, more, "z1", 2, error_type="overloaded_error"),
        ],
    )

    found = store.timelines.error_types([batch_id, more])

    assert [item for item in found if item.batch_id == more] == [
        ErrorTypeCount(more, "overloaded_error", 2)
    ]
    assert [(item.error_type, item.count) for item in found if item.batch_id == batch_id] == [
        ("invalid_request_error", 1),
        ("overloaded_error", 1),
        ("rate_limit_error", 1),
    ]


def test_latest_errors_are_newest_first_and_limited(store: Store) -> None:
    batch_id = _batch_with_answers(store)

    latest = store.timelines.latest_errors(batch_id, limit=2)

    assert [(error.custom_id, error.error_type, error.http_status) for error in latest] == [
        ("r4", "overloaded_error", 529),
        ("r3", "invalid_request_error", 400),
    ]
    assert latest[0].completed_at == NOW + timedelta(seconds=190)
    assert latest[0].message == "overloaded_error at 190"


def test_retrying_requests_are_open_requests_whose_last_send_failed(store: Store) -> None:
    batch_id = _batch_with_answers(store)

    assert store.timelines.retrying_requests(batch_id, limit=5) == [
        RetryingRequest("r6", "HTTP 529 overloaded_error", 1)
    ]


def test_request_models_are_the_models_requests_name_per_batch(store: Store) -> None:
    mixed = submit(
        store,
        [request_line("a", model=HAIKU), request_line("b"), request_line("c", model=HAIKU)],
    )
    single = submit(store, [request_line("d")])

    assert store.timelines.request_models([mixed, single, "msgbatch_none"]) == {
        mixed: [HAIKU, SONNET],
        single: [SONNET],
    }


def test_rate_limit_rows_read_the_shared_limits_of_the_endpoints_asked(store: Store) -> None:
    policy = KeyPolicy(configured=RateLimits(rpm=600), burst_s=1.0, ramp_s=0)
    store.rates.take(
        endpoint="ep",
        model=SONNET,
        costs={"rpm": 1.0},
        policy=policy,
        changes=PendingChanges(pause_until=1030.0, announced={"otpm": 8000.0}),
        now=1000.0,
    )
    store.rates.take(
        endpoint="elsewhere",
        model=SONNET,
        costs={"rpm": 1.0},
        policy=policy,
        changes=PendingChanges(),
        now=1000.0,
    )

    rows = store.timelines.rate_limit_rows(["ep"])

    by_dimension = {row.dimension: row for row in rows}
    assert by_dimension["rpm"] == RateLimitRow(
        "ep", SONNET, "rpm", in_force=600.0, announced=None, learned=None, paused_until=1030.0
    )
    assert by_dimension["otpm"].announced == 8000.0
    assert {row.endpoint for row in rows} == {"ep"}
    assert store.timelines.rate_limit_rows([]) == []
