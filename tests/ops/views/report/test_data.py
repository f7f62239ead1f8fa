"""The report's data (``batchrun.ops.views.report.data``): buckets, trailing rates, exact latency
percentiles, costs; and the page built from a real store (``batchrun.ops.views.report.page``)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun.client import Client
from batchrun.config.prices import ModelPrice, PriceTable
from batchrun.ops.views.report.data import (
    bucket_width_s,
    cost_lines,
    histogram_edges,
    latency_stats,
    trailing_rates,
    window_s,
)
from batchrun.ops.views.report.page import render_report
from batchrun.records import FinishedRequest
from batchrun.store.latencies import LatencySpread
from batchrun.store.series import AnswerBucket
from batchrun.store.store import Store
from batchrun.store.usage import Usage
from tests.conftest import request_line, submit
from tests.store.test_history import NOW, _claimed, _history

HOSTILE = '<script>alert(1)</script> & "quotes"'


@pytest.mark.parametrize(
    ("span_s", "width_s"),
    [
        (0, 1),
        (30, 1),
        (240, 1),
        (241, 2),
        (3600, 15),
        (6 * 3600, 120),
        (30 * 86400, 14400),
        (200 * 86400, 43200),
    ],
)
def test_buckets_are_the_narrowest_nice_width_that_keeps_their_number_near_240(
    span_s: float, width_s: int
) -> None:
    assert bucket_width_s(span_s) == width_s


@pytest.mark.parametrize(
    ("sent_span_s", "width_s", "window"),
    [(20, 1, 2), (3, 1, 1), (179, 1, 18), (180, 1, 60), (6 * 3600, 120, 120)],
)
def test_rates_look_back_a_minute_on_long_runs_and_a_tenth_of_short_ones(
    sent_span_s: float, width_s: int, window: int
) -> None:
    assert window_s(sent_span_s, width_s) == window


def test_trailing_rates_fill_empty_buckets_and_scale_to_a_minute() -> None:
    sends = [
        AnswerBucket(NOW, answered=10, input_tokens=1000, output_tokens=100, failed=2),
        AnswerBucket(NOW + timedelta(seconds=20), answered=6, input_tokens=600, output_tokens=60),
    ]

    rates = list(trailing_rates(sends, width_s=10, window_s=20))

    # Each point ends its bucket; the window is two buckets (20 s): per minute is x3.
    assert [(p.at, p.requests_per_min, p.input_tokens_per_min) for p in rates] == [
        (NOW + timedelta(seconds=10), 36.0, 3000.0),
        (NOW + timedelta(seconds=20), 36.0, 3000.0),
        (NOW + timedelta(seconds=30), 18.0, 1800.0),
    ]
    assert list(trailing_rates([], width_s=10, window_s=20)) == []


@given(
    st.lists(
        st.tuples(st.sampled_from(["eu", "us"]), st.integers(0, 100_000)), min_size=1, max_size=300
    )
)
def test_latency_percentiles_are_the_nearest_rank_of_every_answer(
    answers: list[tuple[str, int]],
) -> None:
    spreads = []
    rows = []
    for endpoint in sorted({name for name, _ in answers}):
        mine = sorted(ms for name, ms in answers if name == endpoint)
        spreads.append(LatencySpread(endpoint, len(mine), mine[0], mine[-1]))
        rows.extend((endpoint, ms, mine.count(ms)) for ms in sorted(set(mine)))

    found = list(latency_stats(spreads, iter(rows)))

    for stats, spread in zip(found, spreads, strict=True):
        mine = sorted(ms for name, ms in answers if name == spread.endpoint)
        expected = {
            name: mine[max(1, math.ceil(share * len(mine))) - 1]
            for name, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        }
        assert dict(stats.percentiles) == expected
        assert sum(stats.counts) == len(mine) == stats.count
        assert len(stats.edges) == len(stats.counts) + 1
        assert stats.mean_ms == pytest.approx(sum(mine) / len(mine))


def test_histogram_edges_are_log_spaced_over_a_wide_spread_and_linear_otherwise() -> None:
    wide = histogram_edges(10, 100_000, bins=4)
    narrow = histogram_edges(100, 300, bins=4)

    assert wide[:4] == pytest.approx([10, 100, 1000, 10_000])
    assert narrow == pytest.approx([100, 150, 200, 250, 301])
    assert histogram_edges(500, 500) == [500, 501]


def _usage(
    start: datetime, model: str, lane: str, factor: float, tokens_in: int, tokens_out: int
) -> Usage:
    """One answer with usage, read per bucket."""
    return Usage("b", model, lane, factor, True, 1, 1, tokens_in, tokens_out, 0, 0, start=start)


def test_cost_lines_price_each_model_and_lane_per_bucket() -> None:
    prices = PriceTable({"m": ModelPrice.standard(1.0, 10.0)})
    later = NOW + timedelta(minutes=1)
    buckets = [
        _usage(NOW, "m", "realtime", 1.0, 1_000_000, 0),
        _usage(later, "m", "realtime", 1.0, 0, 100_000),
        _usage(later, "m", "batch", 0.5, 1_000_000, 0),
        _usage(later, "unpriced", "realtime", 1.0, 10, 10),
    ]

    lines = {line.name: line for line in cost_lines(buckets, prices)}

    assert lines["m"].points == ((NOW, 1.0), (later, 1.0))
    assert lines["m"].usd == pytest.approx(2.0)
    assert lines["m (batch)"].usd == pytest.approx(0.5)
    assert lines["unpriced"].usd is None


def _page(store: Store, db_url: str, batch_id: str) -> str:
    client = Client(db_url, env={"HOME": "/nonexistent"})
    try:
        return render_report(client.report(batch_id))
    finally:
        client.close()


def test_the_page_of_a_batch_draws_every_section_and_escapes_what_servers_said(
    store: Store, db_url: str
) -> None:
    batch_id = _history(store)
    other = submit(store, [request_line("x")])
    ids = _claimed(store, other)
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[
            FinishedRequest(
                request_id=ids["x"],
                batch_id=other,
                custom_id="x",
                result_type="errored",
                attempts=1,
                completed_at=NOW,
                sent_at=NOW - timedelta(seconds=1),
                latency_ms=1000,
                endpoint="eu",
                error_type="api_error",
                error_message=HOSTILE,
            )
        ],
    )

    page = _page(store, db_url, batch_id)
    hostile = _page(store, db_url, other)

    for chart in ("requests", "tokens", "failures", "errors", "latency-0", "cost"):
        assert f'id="chart-{chart}"' in page
    assert "<script" not in page.lower()
    assert "Content-Security-Policy" in page
    assert "<script" not in hostile.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile
    # Every chart is well-formed XML on its own.
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        ET.fromstring(svg)


def test_the_page_of_a_batch_with_nothing_sent_yet_says_so(store: Store, db_url: str) -> None:
    batch_id = submit(store, [request_line("a")])

    page = _page(store, db_url, batch_id)

    assert 'data-empty="true"' in page
    assert "No request ended errored" in page
    assert datetime.now(UTC).year > 2000
