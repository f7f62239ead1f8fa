"""The dashboard's numbers (``batchrun.ops.views.dashboard``): throughput, a batch's limits and the
binding one, the per-minute series, from a real store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from batchrun.config.prices import ModelPrice, PriceTable
from batchrun.limits.dimensions import DIMENSIONS, RateLimits
from batchrun.ops.views.dashboard import DashboardData
from batchrun.ops.views.limits import LimitUse, measure_of
from batchrun.records import FinishedRequest, Pool, PoolMember, Usage
from batchrun.store import tables as t
from batchrun.store.store import Store
from batchrun.transport.endpoints import Endpoint, Endpoints
from tests.conftest import request_line, submit

NOW = datetime(2026, 11, 22, 12, 3, 30, tzinfo=UTC)
SONNET = "claude-sonnet-4-5"
SONNET_45 = "claude-sonnet-4-5-20250929"
PRICES = PriceTable({SONNET: ModelPrice(3.0, 15.0, 3.75, 0.3)})


def _known(*endpoints: Endpoint, pools: dict[str, Pool] | None = None) -> Endpoints:
    return Endpoints(
        by_name={endpoint.name: endpoint for endpoint in endpoints},
        default=endpoints[0].name,
        default_source="test",
        pools=pools or {},
    )


def _answered(store: Store, endpoint: str, seconds_ago: list[float], **usage: int) -> str:
    """A batch on ``endpoint`` with one answer per entry, that many seconds before NOW."""
    batch_id = submit(
        store,
        [request_line(f"r{i}") for i in range(len(seconds_ago) + 1)],
        endpoint=endpoint,
    )
    claimed = store.leases.claim(owner="w", batch_ids=[batch_id], limit=100, now=NOW, lease_s=600)
    finished = [
        FinishedRequest(
            request_id=item.id,
            batch_id=batch_id,
            custom_id=item.custom_id,
            result_type="succeeded",
            attempts=1,
            completed_at=NOW - timedelta(seconds=ago),
            model=SONNET,
            usage=Usage(usage.get("input", 10), usage.get("output", 10)),
        )
        for item, ago in zip(claimed, seconds_ago, strict=False)
    ]
    store.results.record(owner="w", now=NOW, finished=finished)
    return batch_id


def test_each_dimension_limits_the_series_its_measure_counts() -> None:
    assert {name: measure_of(DIMENSIONS.get(name)) for name in DIMENSIONS.names()} == {
        "rpm": "requests",
        "tpm": "tokens",
        "itpm": "input_tokens",
        "otpm": "output_tokens",
    }


def test_the_binding_limit_is_the_one_the_batch_uses_the_largest_share_of(
    sqlite_store: Store,
) -> None:
    gateway = Endpoint("gw", "http://gw.invalid", limits={"*": RateLimits(rpm=60, otpm=600)})
    # 30 answers of 16 output tokens in the last minute: half the rpm, 80% of the otpm.
    batch_id = _answered(sqlite_store, "gw", [float(i) for i in range(60, 0, -2)], output=16)
    data = DashboardData(sqlite_store, known=_known(gateway), prices=PRICES)

    (card,) = data.cards([sqlite_store.batches.get(batch_id)], now=NOW)

    assert card.throughput is not None
    assert card.throughput.window == "recent"
    assert card.throughput.requests_per_min == pytest.approx(30.0)
    limits = {use.dimension: use for use in card.limits}
    assert set(limits) == {"rpm", "otpm"}
    assert limits["rpm"].utilisation == pytest.approx(0.5)
    assert limits["otpm"].utilisation == pytest.approx(0.8)
    assert card.binding == limits["otpm"]
    assert [use.binding for use in card.limits] == [False, True]
    assert card.state == "running"
    assert card.as_json()["binding"]["dimension"] == "otpm"


def test_an_ended_batch_is_measured_over_its_whole_span(sqlite_store: Store) -> None:
    gateway = Endpoint("gw", "http://gw.invalid", limits={"*": RateLimits(rpm=600)})
    batch_id = submit(sqlite_store, [request_line(f"r{i}") for i in range(3)], endpoint="gw")
    claimed = sqlite_store.leases.claim(
        owner="w", batch_ids=[batch_id], limit=9, now=NOW, lease_s=60
    )
    sqlite_store.results.record(
        owner="w",
        now=NOW,
        finished=[
            FinishedRequest(
                item.id,
                batch_id,
                item.custom_id,
                "succeeded",
                1,
                NOW - timedelta(hours=2, seconds=30 * index),
                usage=Usage(5, 5),
            )
            for index, item in enumerate(claimed)
        ],
    )
    data = DashboardData(sqlite_store, known=_known(gateway), prices=PRICES)

    (card,) = data.cards([sqlite_store.batches.get(batch_id)], now=NOW)

    # 3 answers from the first to the last a minute apart: 3 a minute, long after they came.
    assert card.batch.ended_at is not None
    assert card.state == "ended"
    assert card.throughput is not None
    assert card.throughput.window == "average"
    assert card.throughput.requests_per_min == pytest.approx(3.0)
    assert card.cost.usd == pytest.approx(3 * (5 * 3.0 + 5 * 15.0) / 1e6)


def test_a_pool_adds_up_its_members_limits(sqlite_store: Store) -> None:
    members = [
        Endpoint(name, f"http://{name}.invalid", limits={"*": RateLimits(rpm=60, itpm=1000)})
        for name in ("a", "b")
    ]
    # b sends the model under another name; its "*" entry still applies.
    pool = Pool("both", (PoolMember("a"), PoolMember("b", models={SONNET: SONNET_45})))
    batch_id = _answered(sqlite_store, "both", [5.0])
    data = DashboardData(sqlite_store, known=_known(*members, pools={"both": pool}), prices=PRICES)

    (card,) = data.cards([sqlite_store.batches.get(batch_id)], now=NOW)

    assert {use.dimension: use.limit for use in card.limits} == {"rpm": 120.0, "itpm": 2000.0}


def test_a_family_pattern_is_one_limit_for_all_its_models(sqlite_store: Store) -> None:
    shared = Endpoint("gw", "http://gw.invalid", limits={"claude-sonnet-4*": RateLimits(rpm=50)})
    each = Endpoint("each", "http://each.invalid", limits={"*": RateLimits(rpm=50)})
    lines = [request_line("a"), request_line("b", model=SONNET_45)]
    on_shared = submit(sqlite_store, lines, endpoint="gw")
    on_each = submit(sqlite_store, lines, endpoint="each")
    data = DashboardData(sqlite_store, known=_known(shared, each), prices=PRICES)

    cards = data.cards(
        [sqlite_store.batches.get(on_shared), sqlite_store.batches.get(on_each)], now=NOW
    )

    assert [[(use.dimension, use.limit) for use in card.limits] for card in cards] == [
        [("rpm", 50.0)],
        [("rpm", 100.0)],
    ]
    # No answers yet: nothing to measure, so nothing binds.
    assert cards[0].throughput is None
    assert cards[0].binding is None
    assert cards[0].state == "waiting"


def test_learned_and_announced_limits_lower_the_configured_one(sqlite_store: Store) -> None:
    gateway = Endpoint("gw", "http://gw.invalid", limits={"*": RateLimits(rpm=600, otpm=900)})
    batch_id = _answered(sqlite_store, "gw", [10.0])
    rows = [
        {"dimension": "rpm", "rate_per_s": 4.0, "announced": 1000.0, "learned": 240.0},
        {"dimension": "otpm", "rate_per_s": 10.0, "announced": 800.0, "learned": None},
        {"dimension": "itpm", "rate_per_s": 0.0, "announced": 5000.0, "learned": None},
    ]
    with sqlite_store.engine.begin() as conn:
        conn.execute(
            insert(t.rate_buckets),
            [
                {
                    "endpoint": "gw",
                    "model": SONNET,
                    "level": 1.0,
                    "capacity": 10.0,
                    "updated_at": 0.0,
                    "learned_at": 0.0,
                    **row,
                }
                for row in rows
            ],
        )
    data = DashboardData(sqlite_store, known=_known(gateway), prices=PRICES)

    (card,) = data.cards([sqlite_store.batches.get(batch_id)], now=NOW)

    limits = {use.dimension: use for use in card.limits}
    assert limits["rpm"] == LimitUse(
        "rpm",
        "requests",
        configured=600.0,
        announced=1000.0,
        learned=240.0,
        limit=240.0,
        in_force=240.0,
        rate=limits["rpm"].rate,
        utilisation=limits["rpm"].utilisation,
        binding=limits["rpm"].binding,
    )
    assert (limits["otpm"].limit, limits["otpm"].learned) == (800.0, None)
    # Announced only, not in force yet: still the limit the server says it has.
    assert (limits["itpm"].limit, limits["itpm"].configured, limits["itpm"].in_force) == (
        5000.0,
        None,
        None,
    )


def test_a_limit_given_to_run_as_a_flag_is_the_bucket_in_force(sqlite_store: Store) -> None:
    # `run --rpm 600` on an endpoint with no limits configured and none announced: only the
    # shared bucket's rate says what the workers kept to.
    plain = Endpoint("plain", "http://plain.invalid")
    batch_id = _answered(sqlite_store, "plain", [20.0, 10.0])
    with sqlite_store.engine.begin() as conn:
        conn.execute(
            insert(t.rate_buckets),
            {
                "endpoint": "plain",
                "model": SONNET,
                "dimension": "rpm",
                "rate_per_s": 10.0,
                "level": 1.0,
                "capacity": 10.0,
                "updated_at": 0.0,
            },
        )
    data = DashboardData(sqlite_store, known=_known(plain), prices=PRICES)

    (card,) = data.cards([sqlite_store.batches.get(batch_id)], now=NOW)

    (limit,) = card.limits
    assert (limit.dimension, limit.configured, limit.limit, limit.in_force) == (
        "rpm",
        None,
        600.0,
        600.0,
    )
    assert limit.binding


def test_the_series_has_every_minute_and_marks_the_one_still_filling(
    sqlite_store: Store,
) -> None:
    # Answers at 12:00:10, 12:02:20 and 12:03:25 (NOW is 12:03:30).
    batch_id = _answered(sqlite_store, "simulator", [200.0, 70.0, 5.0])
    data = DashboardData(sqlite_store, known=_known(Endpoint("simulator", "")), prices=PRICES)

    timeline = data.timeline(sqlite_store.batches.get(batch_id), now=NOW)

    minute = NOW.replace(second=0)
    assert [(point.start, point.answered) for point in timeline.points] == [
        (minute - timedelta(minutes=3), 1),
        (minute - timedelta(minutes=2), 0),
        (minute - timedelta(minutes=1), 1),
        (minute, 1),
    ]
    assert timeline.partial_last is True
    assert timeline.models == (SONNET,)
    body = timeline.as_json(NOW)
    assert body["series"]["points"][1] == {
        "t": minute - timedelta(minutes=2),
        "requests": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "errored": 0,
        "throttled": 0,
    }
    assert body["latest_errors"] == []
    assert body["retrying"] == []


def test_the_dashboard_places_an_answer_in_the_minute_it_was_sent_as_the_report_does(
    sqlite_store: Store,
) -> None:
    # Sent at 12:01:50, answered 20 s later at 12:02:10: one time axis (when it was sent)
    # for the dashboard's series and the report's.
    batch_id = submit(sqlite_store, [request_line("slow")], endpoint="simulator")
    (item,) = sqlite_store.leases.claim(
        owner="w", batch_ids=[batch_id], limit=1, now=NOW, lease_s=600
    )
    sent_at = NOW.replace(second=0) - timedelta(minutes=2) + timedelta(seconds=50)
    sqlite_store.results.record(
        owner="w",
        now=NOW,
        finished=[
            FinishedRequest(
                request_id=item.id,
                batch_id=batch_id,
                custom_id=item.custom_id,
                result_type="succeeded",
                attempts=1,
                sent_at=sent_at,
                completed_at=sent_at + timedelta(seconds=20),
                model=SONNET,
                usage=Usage(10, 10),
            )
        ],
    )
    data = DashboardData(sqlite_store, known=_known(Endpoint("simulator", "")), prices=PRICES)

    points = data.timeline(sqlite_store.batches.get(batch_id), now=NOW).points

    sent_minute = sent_at.replace(second=0)
    assert [(point.start, point.answered) for point in points if point.answered] == [
        (sent_minute, 1)
    ]
