"""The store reads behind /metrics (totals of the job table, the shared rate records), on
SQLite and Postgres."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import KeyPolicy, PendingChanges
from batchrun.records import FinishedRequest, RetryLater, Usage
from batchrun.store.rates import BucketRow
from batchrun.store.store import Store
from batchrun.store.tallies import BatchEnd, RequestTally, RequestTotals
from tests.conftest import request_line, submit

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SONNET = "claude-sonnet-4-5"
HAIKU = "claude-haiku-4-5"


def _finished(
    claimed_id: int,
    batch_id: str,
    custom_id: str,
    result_type: str,
    *,
    model: str | None = None,
    usage: Usage | None = None,
) -> FinishedRequest:
    return FinishedRequest(
        request_id=claimed_id,
        batch_id=batch_id,
        custom_id=custom_id,
        result_type=result_type,
        attempts=1,
        completed_at=NOW,
        model=model,
        usage=usage,
        error_type="invalid_request_error" if result_type == "errored" else None,
        body="{}",
    )


def _tally(batch_id: str, model: str, state: str, **fields: Any) -> RequestTally:
    """One request of the batch that was never sent, unless ``fields`` say otherwise."""
    return replace(RequestTally(batch_id, model, state, 1, 0, 0), **fields)


def _batch_in_every_state(store: Store) -> str:
    """A batch with requests queued (one never sent, one back after a retry), running,
    succeeded (one with usage naming a dated model, one with no model named) and errored."""
    batch_id = submit(
        store,
        [
            request_line("ok", model=SONNET),
            request_line("bad", model=SONNET),
            request_line("ok-haiku", model=HAIKU),
            request_line("again", model=SONNET),
            request_line("unsent", model=SONNET),
            request_line("held", model=SONNET),
        ],
    )
    claimed = store.leases.claim(owner="w1", batch_ids=[batch_id], limit=10, now=NOW, lease_s=60)
    ids = {item.custom_id: item.id for item in claimed}
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            _finished(
                ids["ok"],
                batch_id,
                "ok",
                "succeeded",
                model=f"{SONNET}-20250929",
                usage=Usage(10, 5, 2, 1),
            ),
            _finished(ids["bad"], batch_id, "bad", "errored"),
            _finished(ids["ok-haiku"], batch_id, "ok-haiku", "succeeded", usage=Usage(7, 3)),
        ],
        retries=[RetryLater(ids["again"], NOW + timedelta(seconds=5), 0, "HTTP 429 x")],
        unsent=[ids["unsent"]],
    )
    return batch_id


def test_request_tallies_total_each_batch_model_state_and_kind_of_result(store: Store) -> None:
    batch_id = _batch_in_every_state(store)

    totals = store.tallies.requests()

    assert totals.requests == (
        _tally(batch_id, HAIKU, "succeeded", sends=1, sent=1),
        _tally(batch_id, SONNET, "errored", sends=1, sent=1),
        # "again" was sent once and waits for its retry; "unsent" was claimed, never sent.
        _tally(batch_id, SONNET, "queued", requests=2, sends=1, sent=1),
        _tally(batch_id, SONNET, "running"),
        _tally(batch_id, SONNET, "succeeded", sends=1, sent=1),
    )
    # What the answers used, per requested model and the model the answer names.
    assert [
        (usage.requested_model, usage.model, usage.answers, usage.with_usage,
         usage.input_tokens, usage.output_tokens, usage.cache_creation_input_tokens,
         usage.cache_read_input_tokens)
        for usage in totals.usage
    ] == [
        (HAIKU, HAIKU, 1, 1, 7, 3, 0, 0),
        (SONNET, SONNET, 1, 0, 0, 0, 0, 0),
        (SONNET, f"{SONNET}-20250929", 1, 1, 10, 5, 2, 1),
    ]  # fmt: skip


def test_request_tallies_read_only_the_batches_asked_for(store: Store) -> None:
    busy = _batch_in_every_state(store)
    canceled = submit(store, [request_line("a"), request_line("b")])
    store.lifecycle.cancel(canceled, NOW)

    assert store.tallies.requests([canceled]).requests == (
        _tally(canceled, SONNET, "canceled", requests=2),
    )
    # Canceled results count as requests and used nothing.
    assert [
        (usage.state, usage.answers, usage.with_usage, usage.sends)
        for usage in store.tallies.requests([canceled]).usage
    ] == [("canceled", 2, 0, 0)]
    busy_totals = store.tallies.requests([busy])
    assert {tally.batch_id for tally in busy_totals.requests} == {busy}
    assert {usage.batch_id for usage in busy_totals.usage} == {busy}
    assert store.tallies.requests([]) == RequestTotals((), ())


def test_request_tallies_count_the_sends_of_a_requeued_request_once(store: Store) -> None:
    batch_id = submit(store, [request_line("a")])
    (item,) = store.leases.claim(owner="w1", batch_ids=[batch_id], limit=1, now=NOW, lease_s=60)
    store.results.record(
        owner="w1", now=NOW, finished=[_finished(item.id, batch_id, "a", "errored")]
    )

    store.lifecycle.requeue(batch_id, states=["errored"], now=NOW)

    # The result is gone; the request is open again with its one send.
    assert store.tallies.requests() == RequestTotals(
        (_tally(batch_id, SONNET, "queued", sends=1, sent=1),), ()
    )


def test_batch_ends_give_each_batch_its_endpoint_and_end(store: Store) -> None:
    open_id = submit(store, [request_line("a")], endpoint="simulator")
    ended_id = submit(store, [request_line("a")], endpoint="anthropic")
    store.lifecycle.cancel(ended_id, NOW)

    ends = {end.id: end for end in store.tallies.batch_ends()}

    assert ends == {
        open_id: BatchEnd(open_id, "simulator", None),
        ended_id: BatchEnd(ended_id, "anthropic", NOW),
    }


def test_buckets_and_paused_keys_are_read_as_the_last_take_wrote_them(store: Store) -> None:
    policy = KeyPolicy(configured=RateLimits(rpm=600, otpm=6000), burst_s=1.0, ramp_s=0)
    _, record = store.rates.take(
        endpoint="ep",
        model=SONNET,
        costs={"rpm": 1.0, "otpm": 50.0},
        policy=policy,
        changes=PendingChanges(pause_until=1030.0),
        now=1000.0,
    )

    rows = store.rates.buckets()

    written = {name: item.bucket for name, item in record.dimensions.items()}
    assert [row.dimension for row in rows] == ["otpm", "rpm"]
    for row in rows:
        bucket = written[row.dimension]
        assert bucket is not None
        assert row == BucketRow(
            "ep", SONNET, row.dimension, bucket.level, bucket.rate_per_s, bucket.capacity, 1000.0
        )
    assert rows[1].rate_per_s == pytest.approx(10.0)
    assert store.rates.paused_keys(1029.0) == {("ep", SONNET): 1030.0}
    assert store.rates.paused_keys(1030.0) == {}
