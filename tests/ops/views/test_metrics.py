"""The metrics snapshot: what it reads from the store, how it prices and labels it, how full
a rate bucket is, and which batches a gatherer keeps between scrapes."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import cached_property

import pytest
from sqlalchemy import Engine

from batchrun.config.prices import ModelPrice, PriceTable
from batchrun.dispatch.counts import RunReport
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import KeyPolicy, PendingChanges
from batchrun.ops.run_types import ProcessCounters
from batchrun.ops.views.metrics import (
    BucketUse,
    KeyPause,
    MetricsGatherer,
    ModelTotals,
    RequestCount,
    bucket_use,
    gather_metrics,
)
from batchrun.records import FinishedRequest, RetryLater, SendFailure, TokenTotals, Usage
from batchrun.store.rates import BucketRow
from batchrun.store.store import Store
from batchrun.store.tallies import FailedSendCount, RequestTotals, Tallies
from tests.conftest import request_line, submit

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SONNET = "claude-sonnet-4-5"
PRICES = PriceTable({SONNET: ModelPrice(3.0, 15.0, 3.75, 0.3)})


def _answer(
    request_id: int,
    batch_id: str,
    custom_id: str,
    usage: Usage,
    *,
    model: str | None = f"{SONNET}-20250929",
    attempts: int = 1,
) -> FinishedRequest:
    """A Message as the dispatcher records it: ``attempts`` counts this send too."""
    return FinishedRequest(
        request_id=request_id,
        batch_id=batch_id,
        custom_id=custom_id,
        result_type="succeeded",
        attempts=attempts,
        completed_at=NOW,
        model=model,
        usage=usage,
        body="{}",
    )


def _answer_all(store: Store, batch_id: str, usage: Usage, *, owner: str = "w1") -> None:
    claimed = store.leases.claim(owner=owner, batch_ids=[batch_id], limit=100, now=NOW, lease_s=60)
    store.results.record(
        owner=owner,
        now=NOW,
        finished=[_answer(item.id, batch_id, item.custom_id, usage) for item in claimed],
    )


class _CountingTallies(Tallies):
    """Real tallies that note which batches each totals read asked for (None: all)."""

    def __init__(self, engine: Engine, asked: list[set[str] | None]) -> None:
        super().__init__(engine)
        self.asked = asked

    def requests(self, batch_ids: Collection[str] | None = None) -> RequestTotals:
        self.asked.append(None if batch_ids is None else set(batch_ids))
        return super().requests(batch_ids)


class ReadCountingStore(Store):
    """A real store whose tallies note which batches each totals read asked for."""

    asked: list[set[str] | None]

    @cached_property
    def tallies(self) -> Tallies:
        return _CountingTallies(self._engine, self.asked)


@pytest.fixture
def counting_store(db_url: str) -> Iterator[ReadCountingStore]:
    opened = ReadCountingStore.open(db_url)
    assert isinstance(opened, ReadCountingStore)
    opened.asked = []
    yield opened
    opened.close()


@pytest.mark.parametrize(
    ("level", "updated_at", "now", "utilisation", "debt_s"),
    [
        (10.0, 100.0, 100.0, 0.0, 0.0),  # full: idle
        (0.0, 100.0, 100.0, 1.0, 0.0),  # empty: sending as fast as the limit allows
        (2.5, 100.0, 100.0, 0.75, 0.0),
        (0.0, 100.0, 100.5, 0.5, 0.0),  # refilled for half a second at 10/s
        (0.0, 100.0, 200.0, 0.0, 0.0),  # refilled long ago, never above capacity
        (-5.0, 100.0, 100.0, 1.0, 0.5),  # in debt: clamped to 1, the debt in seconds
        (-5.0, 100.0, 100.2, 1.0, 0.3),
        (10.0, 100.0, 99.0, 0.0, 0.0),  # a reader clock behind the writer's: no refill
    ],
)
def test_bucket_use_is_the_share_of_capacity_in_use_after_refill(
    level: float, updated_at: float, now: float, utilisation: float, debt_s: float
) -> None:
    row = BucketRow("ep", SONNET, "rpm", level, 10.0, 10.0, updated_at)

    use = bucket_use(row, now)

    assert use == BucketUse(
        "ep", SONNET, "rpm", pytest.approx(utilisation), pytest.approx(debt_s), 600.0
    )


def test_a_limit_heard_of_but_not_in_force_has_no_use() -> None:
    assert bucket_use(BucketRow("ep", SONNET, "itpm", 0.0, 0.0, 0.0, 1.0), 2.0) is None


def test_the_snapshot_counts_states_sends_tokens_cost_and_holds(store: Store) -> None:
    batch_id = submit(
        store, [request_line(f"r{i}") for i in range(4)] + [request_line("x", model="mystery")]
    )
    claimed = {
        item.custom_id: item.id
        for item in store.leases.claim(
            owner="w1", batch_ids=[batch_id], limit=10, now=NOW, lease_s=60
        )
    }
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            _answer(claimed["r0"], batch_id, "r0", Usage(1_000_000, 100_000)),
            # No model named: priced as the request's, which has no price.
            _answer(claimed["x"], batch_id, "x", Usage(5, 5), model=None),
        ],
        retries=[
            RetryLater(
                claimed["r1"],
                NOW,
                0,
                "HTTP 429 rate_limit_error",
                SendFailure(batch_id, NOW, 30, "simulator", 429, "rate_limit_error"),
            )
        ],
        unsent=[claimed["r2"]],
    )
    (again,) = store.leases.claim(owner="w1", batch_ids=[batch_id], limit=1, now=NOW, lease_s=60)
    assert (again.custom_id, again.attempts) == ("r1", 1)
    answer = _answer(again.id, batch_id, "r1", Usage(10, 20, 30, 40), attempts=2)
    store.results.record(owner="w1", now=NOW, finished=[answer])
    store.rates.take(
        endpoint="simulator",
        model=SONNET,
        costs={"rpm": 1.0},
        policy=KeyPolicy(configured=RateLimits(rpm=60), burst_s=1.0, ramp_s=0),
        changes=PendingChanges(pause_until=1012.5),
        now=1000.0,
    )

    snapshot = gather_metrics(
        store, prices=PRICES, now_unix_s=1000.5, process=ProcessCounters(rate_limited=3)
    )

    assert snapshot.requests == (
        RequestCount("simulator", SONNET, "queued", 1),
        RequestCount("simulator", SONNET, "running", 1),
        RequestCount("simulator", SONNET, "succeeded", 2),
        # Unpriced and named nowhere: counted under "other" (the label a tenant cannot pick).
        RequestCount("simulator", "other", "succeeded", 1),
    )
    assert [item.anthropic_state for item in snapshot.requests] == [
        "processing",
        "processing",
        "succeeded",
        "succeeded",
    ]
    assert snapshot.models == (
        ModelTotals(
            "simulator",
            SONNET,
            sends=3,  # r0 once, r1 twice (a 429, then its answer)
            retries=1,
            in_flight=1,
            tokens=TokenTotals(1_000_010, 100_020, 30, 40),
            # Priced as the dated model the answers name, which is the family's price.
            cost_usd=pytest.approx(4.5 + (10 * 3 + 20 * 15 + 30 * 3.75 + 40 * 0.3) / 1e6),
            unpriced_results=0,
        ),
        ModelTotals(
            "simulator",
            "other",
            sends=1,
            retries=0,
            in_flight=0,
            tokens=TokenTotals(5, 5, 0, 0),
            cost_usd=0.0,
            unpriced_results=1,
        ),
    )
    (rpm,) = snapshot.buckets
    assert (rpm.dimension, rpm.limit_per_min) == ("rpm", pytest.approx(60.0))
    assert rpm.utilisation == pytest.approx(0.5)  # empty at 1000 s, half refilled since
    assert snapshot.pauses == (KeyPause("simulator", SONNET, pytest.approx(12.0)),)
    assert snapshot.process == ProcessCounters(rate_limited=3)
    assert snapshot.failed_sends == (FailedSendCount("simulator", SONNET, "rate_limited", 1),)
    assert snapshot.gathered_s > 0


def test_process_counters_add_up_the_429s_of_runs() -> None:
    reports = [RunReport(rate_limited=2, retried=5), RunReport(rate_limited=1)]

    assert ProcessCounters.of_reports(reports) == ProcessCounters(rate_limited=3)


def test_a_gatherer_reads_again_only_batches_open_or_ended_since_its_last_snapshot(
    counting_store: ReadCountingStore,
) -> None:
    store = counting_store
    done = submit(store, [request_line("a"), request_line("b")])
    _answer_all(store, done, Usage(100, 10))
    busy = submit(store, [request_line("c"), request_line("d")])
    gatherer = MetricsGatherer(store, prices=PRICES)

    first = gatherer.gather(now_unix_s=0.0)
    _answer_all(store, busy, Usage(1, 1))
    second = gatherer.gather(now_unix_s=0.0)
    third = gatherer.gather(now_unix_s=0.0)

    assert store.asked == [{done, busy}, {busy}, set()]
    assert first.models[0].tokens == TokenTotals(200, 20, 0, 0)
    assert second.models[0].tokens == third.models[0].tokens == TokenTotals(202, 22, 0, 0)
    assert second == replace(third, gathered_s=second.gathered_s)


def test_a_gatherer_sees_a_requeued_batch_again_and_forgets_a_deleted_one(
    counting_store: ReadCountingStore,
) -> None:
    store = counting_store
    kept = submit(store, [request_line("a")])
    _answer_all(store, kept, Usage(100, 10))
    canceled = submit(store, [request_line("b"), request_line("c")])
    store.lifecycle.cancel(canceled, NOW)
    gatherer = MetricsGatherer(store, prices=PRICES)
    gatherer.gather(now_unix_s=0.0)

    store.lifecycle.requeue(canceled, states=["canceled"], now=NOW)
    requeued = gatherer.gather(now_unix_s=0.0)
    store.lifecycle.delete(kept)
    deleted = gatherer.gather(now_unix_s=0.0)

    assert store.asked[1:] == [{canceled}, {canceled}]
    assert [(item.state, item.count) for item in requeued.requests] == [
        ("queued", 2),
        ("succeeded", 1),
    ]
    assert [(item.state, item.count) for item in deleted.requests] == [("queued", 2)]
    assert deleted.models[0].tokens == TokenTotals()


def test_a_gatherer_reads_every_batch_when_too_many_would_be_named(
    counting_store: ReadCountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batchrun.ops.views.metrics._MAX_LISTED_BATCHES", 1)
    store = counting_store
    first = submit(store, [request_line("a")], endpoint="simulator")
    submit(store, [request_line("b")], endpoint="anthropic")
    _answer_all(store, first, Usage(3, 4))

    snapshot = MetricsGatherer(store, prices=PRICES).gather(now_unix_s=0.0)

    assert store.asked == [None]
    assert snapshot.requests == (
        RequestCount("anthropic", SONNET, "queued", 1),
        RequestCount("simulator", SONNET, "succeeded", 1),
    )
