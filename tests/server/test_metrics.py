"""/metrics: batches run for real against the in-process simulator, scraped, and the text
parsed back with Prometheus's own parser; the numbers agree with what `status` reports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import batchrun
from batchrun.ops.run_types import ProcessCounters
from batchrun.ops.views.metrics import (
    BucketUse,
    KeyPause,
    MetricsSnapshot,
    ModelTotals,
    RequestCount,
    gather_metrics,
)
from batchrun.records import TokenTotals
from batchrun.server.metrics import TOKEN_KINDS, render_metrics
from batchrun.store.store import Store
from tests.conftest import request_line

COUNTERS = ("batchrun_sends", "batchrun_retries", "batchrun_tokens", "batchrun_cost_usd")


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[batchrun.Client]:
    """A client on a fresh database that sees no config file and no key of this machine."""
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def _scrape(snapshot: MetricsSnapshot) -> dict[str, list[Sample]]:
    """The rendered snapshot parsed back: family name → samples."""
    body, _ = render_metrics(snapshot)
    return {
        family.name: family.samples
        for family in text_string_to_metric_families(body.decode("utf-8"))
    }


def _sum(samples: list[Sample], **labels: str) -> float:
    return sum(
        sample.value
        for sample in samples
        if all(sample.labels.get(name) == value for name, value in labels.items())
    )


def _snapshot(model: str = "claude-sonnet-4-5", **changes: Any) -> MetricsSnapshot:
    """A snapshot made by hand: one endpoint × ``model`` with a bit of everything."""
    made = MetricsSnapshot(
        requests=(RequestCount("simulator", model, "queued", 3),),
        models=(ModelTotals("simulator", model, 4, 1, 0, TokenTotals(10, 20, 30, 40), 0.5, 0),),
        buckets=(BucketUse("simulator", model, "rpm", 0.25, 0.0, 600.0),),
        pauses=(KeyPause("simulator", model, 1.5),),
        process=None,
        gathered_s=0.001,
    )
    return replace(made, **changes)


def test_a_scrape_agrees_with_status_on_counts_tokens_and_cost(
    client: batchrun.Client, db_url: str
) -> None:
    ran = client.submit(
        [request_line(f"ok-{i}") for i in range(5)]
        + [
            request_line("rate-limited-once", "[[sim:status=429:times=1:retry_after=0.05]]"),
            request_line("refused", "[[sim:status=400]]"),
            request_line("unpriced", model="mystery-model"),
        ],
        endpoint="simulator",
    )
    canceled = client.submit(
        [request_line(f"c-{i}", model="claude-haiku-4-5") for i in range(2)], endpoint="simulator"
    )
    client.cancel(canceled.id)
    result = client.run(ran.id, limits={"rpm": 6000}, stop_on_signals=False)
    waiting = client.submit([request_line("later")], endpoint="simulator")
    assert result.last is not None
    report = result.last.report
    statuses = [client.status(batch.id) for batch in (ran, canceled, waiting)]
    store = Store.open(db_url)
    try:
        snapshot = gather_metrics(
            store, prices=client.prices(), process=ProcessCounters.of_reports([report])
        )
    finally:
        store.close()

    scraped = _scrape(snapshot)

    requests = scraped["batchrun_requests"]
    for state in ("processing", "succeeded", "errored", "canceled", "expired"):
        expected = sum(getattr(status.request_counts, state) for status in statuses)
        assert _sum(requests, anthropic_state=state) == expected, state
    assert _sum(requests, state="queued") == 1
    assert _sum(requests, model="claude-haiku-4-5", state="canceled") == 2
    tokens = scraped["batchrun_tokens"]
    for kind in TOKEN_KINDS:
        expected = sum(getattr(status.usage, f"{kind}_tokens") for status in statuses)
        assert _sum(tokens, kind=kind) == expected, kind
    assert _sum(tokens, kind="output") > 0
    assert _sum(scraped["batchrun_cost_usd"]) == pytest.approx(
        sum(status.cost_usd_known for status in statuses)
    )
    assert statuses[0].unpriced_models == ["mystery-model"]
    assert _sum(scraped["batchrun_unpriced_results"]) == 1
    # An unpriced model named nowhere in the config is labelled "other".
    assert _sum(scraped["batchrun_unpriced_results"], model="other") == 1
    # Eight requests sent once each, the rate-limited one twice.
    assert _sum(scraped["batchrun_sends"]) == 9 == report.sent
    assert _sum(scraped["batchrun_retries"]) == 1 == report.retried
    assert _sum(scraped["batchrun_rate_limited"]) == 1 == report.rate_limited
    # The database saw it too, whichever process sent it.
    assert _sum(scraped["batchrun_failed_sends"], reason="rate_limited") == 1
    assert _sum(scraped["batchrun_failed_sends"]) == 1
    assert _sum(scraped["batchrun_requests_in_flight"]) == 0
    utilisation = scraped["batchrun_rate_limit_utilisation_ratio"]
    assert {sample.labels["dimension"] for sample in utilisation} == {"rpm"}
    assert all(0.0 <= sample.value <= 1.0 for sample in utilisation)
    assert all(0 < sample.value <= 6000 for sample in scraped["batchrun_rate_limit_per_minute"])


def test_every_metric_is_prefixed_documented_and_typed() -> None:
    body, content_type = render_metrics(_snapshot(process=ProcessCounters(rate_limited=2)))

    families = list(text_string_to_metric_families(body.decode("utf-8")))

    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain")
    assert all(family.name.startswith("batchrun_") for family in families)
    assert all(len(family.documentation) > 20 for family in families)
    types = {family.name: family.type for family in families}
    assert {name for name, kind in types.items() if kind == "counter"} == {
        *COUNTERS,
        "batchrun_failed_sends",
        "batchrun_rate_limited",
    }
    text = body.decode("utf-8")
    assert 'batchrun_tokens_total{endpoint="simulator",kind="cache_read_input"' in text
    assert "batchrun_cost_usd_total{" in text
    assert "batchrun_rate_limit_pause_seconds{" in text


def test_without_in_process_counters_there_is_no_429_count() -> None:
    scraped = _scrape(_snapshot())

    assert "batchrun_rate_limited" not in scraped
    assert _sum(scraped["batchrun_sends"]) == 4


def test_hostile_label_values_survive_the_text_format() -> None:
    model = 'evil"}\nbatchrun_cost_usd_total 1e9 \\'

    scraped = _scrape(_snapshot(model))

    assert [sample.labels["model"] for sample in scraped["batchrun_requests"]] == [model]
    assert _sum(scraped["batchrun_cost_usd"]) == 0.5


def test_each_rendering_has_only_its_snapshot_and_leaves_the_global_registry_alone() -> None:
    render_metrics(_snapshot("first-model"))

    scraped = _scrape(_snapshot("second-model"))

    assert {sample.labels["model"] for sample in scraped["batchrun_requests"]} == {"second-model"}
    names = {metric.name for metric in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("batchrun_") for name in names)
