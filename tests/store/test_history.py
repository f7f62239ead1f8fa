"""The report's statements (``batchrun.store.latencies``) on SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta

from batchrun.records import FinishedRequest, RetryLater, SendFailure, Usage
from batchrun.store.latencies import LatencySpread
from batchrun.store.series import AnswerBucket
from batchrun.store.store import Store
from tests.conftest import request_line, submit
from tests.store.test_timelines import NOW, SONNET, _claimed


def _answer(
    ids: dict[str, int],
    batch_id: str,
    custom_id: str,
    sent_s: float,
    latency_ms: int,
    *,
    endpoint: str = "eu",
    error_type: str | None = None,
    usage: Usage | None = None,
    lane: str | None = None,
    cost_factor: float | None = None,
) -> FinishedRequest:
    sent_at = NOW + timedelta(seconds=sent_s)
    return FinishedRequest(
        request_id=ids[custom_id],
        batch_id=batch_id,
        custom_id=custom_id,
        result_type="errored" if error_type else "succeeded",
        attempts=1,
        completed_at=sent_at + timedelta(milliseconds=latency_ms),
        sent_at=None if lane == "batch" else sent_at,
        latency_ms=latency_ms,
        endpoint=endpoint,
        model=SONNET,
        usage=None if error_type else (usage or Usage(100, 10)),
        error_type=error_type,
        http_status=429 if error_type == "rate_limit_error" else 400 if error_type else 200,
        lane=lane,
        cost_factor=cost_factor,
    )


def _failure(batch_id: str, sent_s: float, status: int | None, kind: str | None) -> SendFailure:
    return SendFailure(
        batch_id=batch_id,
        sent_at=NOW + timedelta(seconds=sent_s),
        latency_ms=20,
        endpoint="eu",
        http_status=status,
        error_type=kind,
    )


def _history(store: Store) -> str:
    """Sends at 0-25 s (bucket 0 of 30 s) and 40-50 s (bucket 1): answers, three failed
    sends retried, a final 429, an answer given by a provider batch."""
    batch_id = submit(store, [request_line(f"r{i}") for i in range(8)])
    ids = _claimed(store, batch_id)
    store.results.record(
        owner="w1",
        now=NOW,
        retries=[
            RetryLater(ids["r5"], NOW, 0, "429", _failure(batch_id, 1, 429, "rate_limit_error")),
            RetryLater(ids["r6"], NOW, 1, "529", _failure(batch_id, 2, 529, "overloaded_error")),
            RetryLater(ids["r7"], NOW, 1, "timed out", _failure(batch_id, 41, None, None)),
        ],
    )
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            _answer(ids, batch_id, "r0", 0, 1000, usage=Usage(100, 10, 5, 7)),
            _answer(ids, batch_id, "r1", 25, 3000, endpoint="us"),
            _answer(ids, batch_id, "r2", 40, 500, error_type="rate_limit_error"),
            _answer(ids, batch_id, "r3", 50, 2000),
            _answer(ids, batch_id, "r4", 50, 9000, usage=Usage(1000, 100), lane="batch",
                    cost_factor=0.5),
        ],
    )  # fmt: skip
    return batch_id


def test_answer_series_buckets_sends_and_failed_sends_by_when_they_were_sent(store: Store) -> None:
    batch_id = _history(store)

    series = store.series.answers(batch_id, width_s=30)

    assert series == [
        # r0 and r1; input counts cache writes; the 429 and the 529 failed sends.
        AnswerBucket(NOW, answered=2, input_tokens=205, output_tokens=20, failed=2,
                     rate_limited=1, overloaded=1),
        # r2 (a final 429) and r3; r4 came from a provider batch: not sent in real time.
        AnswerBucket(NOW + timedelta(seconds=30), answered=2, input_tokens=100,
                     output_tokens=10, failed=1, errored=1, throttled=1),
    ]  # fmt: skip
    assert all(bucket.start.tzinfo is not None for bucket in series)


def test_answer_series_of_a_batch_without_sends_is_empty(store: Store) -> None:
    batch_id = submit(store, [request_line("a")])

    assert store.series.answers(batch_id, width_s=60) == []


def test_usage_per_bucket_groups_by_bucket_model_and_lane(store: Store) -> None:
    batch_id = _history(store)

    found = [
        (usage.start, usage.model, usage.lane, usage.cost_factor, usage.with_usage,
         usage.input_tokens, usage.output_tokens, usage.cache_creation_input_tokens,
         usage.cache_read_input_tokens)
        for usage in store.usage.of_batches([batch_id], width_s=60)
        if usage.with_usage
    ]  # fmt: skip

    # Placed by completed_at: r0 at 1 s, r1 at 28 s, r3 at 52 s, r4 (batch lane) at 59 s;
    # the errored r2 reports no usage.
    assert found == [
        (NOW, SONNET, "batch", 0.5, 1, 1000, 100, 0, 0),
        (NOW, SONNET, "realtime", 1.0, 3, 300, 30, 5, 7),
    ]


def test_latencies_stream_per_endpoint_in_order_with_their_spread(store: Store) -> None:
    batch_id = _history(store)

    spreads = store.latencies.spreads(batch_id)
    rows = list(store.latencies.iter_answers(batch_id))

    # The provider batch's answer has no real-time latency.
    assert spreads == [LatencySpread("eu", 3, 500, 2000), LatencySpread("us", 1, 3000, 3000)]
    assert rows == [("eu", 500, 1), ("eu", 1000, 1), ("eu", 2000, 1), ("us", 3000, 1)]


def test_deleting_a_batch_deletes_its_send_failures(store: Store) -> None:
    batch_id = _history(store)
    store.lifecycle.cancel(batch_id, NOW)

    store.lifecycle.delete(batch_id)

    assert store.series.answers(batch_id, width_s=30) == []
