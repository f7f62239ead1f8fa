"""/metrics label cardinality: a model is its own label only when batchrun knows it (priced,
or named in the config's limits); any other text a tenant puts in ``model`` is counted under
``other``, in serve's /metrics and in run --metrics-port's, with every total unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import batchrun
from batchrun.config.prices import ModelPrice, PriceTable
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import KeyPolicy, PendingChanges
from batchrun.ops.run_types import ProcessCounters
from batchrun.ops.views.metrics import OTHER_MODEL, ModelLabels, gather_metrics
from batchrun.records import RetryLater, SendFailure
from batchrun.server.metrics import render_metrics
from batchrun.server.run_metrics import start_run_metrics
from batchrun.store.store import Store
from batchrun.transport.endpoints import Endpoint, Endpoints
from tests.conftest import request_line, submit
from tests.server.serving import KEY_A, running_server, server_env

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SONNET = "claude-sonnet-4-5"
PRICES = PriceTable({SONNET: ModelPrice(3.0, 15.0, 3.75, 0.3)})
# What tenants wrote in `model`: 40 made-up names, one with text meant for a scraper's eyes.
TENANT_MODELS = [f"tenant-model-{i}" for i in range(39)] + ['x"} evil{label="1']


def model_labels(body: bytes) -> set[str]:
    return {
        sample.labels["model"]
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if "model" in sample.labels
    }


def test_unknown_models_are_counted_under_other_with_every_total_kept(store: Store) -> None:
    lines = [request_line("priced", model=SONNET), request_line("configured", model="my-gw-llm")]
    lines += [request_line(f"t{i}", model=model) for i, model in enumerate(TENANT_MODELS)]
    batch_id = submit(store, lines)
    claimed = store.leases.claim(owner="w1", batch_ids=[batch_id], limit=100, now=NOW, lease_s=60)
    retry = [item for item in claimed if item.custom_id in ("t0", "t1")]
    store.results.record(
        owner="w1",
        now=NOW,
        retries=[
            RetryLater(
                item.id,
                NOW,
                0,
                "HTTP 429",
                SendFailure(batch_id, NOW, 30, "simulator", 429, "rate_limit_error"),
            )
            for item in retry
        ],
    )
    # Each bucket empty when taken from, refilling at 1 a second: half full and a fifth.
    for model, taken_at, until in (
        ("tenant-model-0", 999.7, 1010.0),
        ("tenant-model-1", 1000.0, 1020.0),
    ):
        store.rates.take(
            endpoint="simulator",
            model=model,
            costs={"rpm": 1.0},
            policy=KeyPolicy(configured=RateLimits(rpm=60), burst_s=1.0, ramp_s=0),
            changes=PendingChanges(pause_until=until),
            now=taken_at,
        )
    labels = ModelLabels(PRICES, frozenset({"my-gw-llm"}))
    # The same moment with the two limited models named: their buckets apart.
    apart = gather_metrics(
        store,
        prices=PRICES,
        now_unix_s=1000.2,
        labels=ModelLabels(PRICES, frozenset({"tenant-model-0", "tenant-model-1"})),
    ).buckets
    assert len(apart) == 2 and apart[0].utilisation != apart[1].utilisation

    snapshot = gather_metrics(
        store, prices=PRICES, now_unix_s=1000.2, process=ProcessCounters(), labels=labels
    )

    assert {item.model for item in snapshot.requests} == {SONNET, "my-gw-llm", OTHER_MODEL}
    assert sum(item.count for item in snapshot.requests) == len(lines)
    other = [item for item in snapshot.requests if item.model == OTHER_MODEL]
    assert sum(item.count for item in other) == len(TENANT_MODELS)
    (other_totals,) = [item for item in snapshot.models if item.model == OTHER_MODEL]
    assert other_totals.sends == 2 and other_totals.in_flight == len(TENANT_MODELS) - 2
    (bucket,) = snapshot.buckets
    assert (bucket.model, bucket.dimension) == (OTHER_MODEL, "rpm")
    assert bucket.utilisation == max(use.utilisation for use in apart)  # the fuller one
    assert bucket.utilisation == pytest.approx(0.8)
    (pause,) = snapshot.pauses
    assert pause.model == OTHER_MODEL
    assert pause.remaining_s == pytest.approx(19.8)  # the longer of the two
    (failed,) = snapshot.failed_sends
    assert (failed.model, failed.count) == (OTHER_MODEL, 2)
    body, _ = render_metrics(snapshot)
    assert model_labels(body) == {SONNET, "my-gw-llm", OTHER_MODEL}
    assert b"tenant-model" not in body and b"evil" not in body


def test_known_models_are_priced_ones_and_those_the_config_limits_name() -> None:
    endpoints = Endpoints(
        by_name={
            "gw": Endpoint(
                "gw",
                "http://gw.example",
                limits={
                    "my-gw-llm": RateLimits(rpm=10),
                    "claude-opus-4*": RateLimits(rpm=5),
                    "*": RateLimits(rpm=1),
                },
            )
        },
        default="gw",
        default_source="test",
    )
    label = ModelLabels.of(PRICES, endpoints)
    assert label(SONNET) == SONNET
    assert label(f"{SONNET}-20250929") == f"{SONNET}-20250929"  # priced as its family
    assert label("my-gw-llm") == "my-gw-llm"
    assert label("claude-opus-4*") == "claude-opus-4*"  # a family's shared bucket
    assert label("*") == OTHER_MODEL
    assert label("anything-else") == OTHER_MODEL


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def test_serves_metrics_show_no_tenant_model_text(home: Path) -> None:
    lines = [request_line(f"t{i}", model=model) for i, model in enumerate(TENANT_MODELS)]
    with (
        running_server(f"sqlite:///{home / 'b.db'}", server_env(home), workers=0) as (url, _),
        httpx.Client(base_url=url, headers={"x-api-key": KEY_A}, timeout=30) as http,
    ):
        created = http.post("/v1/messages/batches", json={"requests": lines})
        assert created.status_code == 200, created.text
        scraped = http.get("/metrics", headers={"authorization": f"Bearer {KEY_A}"})
    assert scraped.status_code == 200
    assert model_labels(scraped.content) == {OTHER_MODEL}
    assert b"tenant-model" not in scraped.content and b"evil" not in scraped.content


def test_run_metrics_port_shows_no_tenant_model_text(sqlite_url: str, home: Path) -> None:
    config = home / "batchrun.toml"
    config.write_text('[endpoints.simulator.limits."my-gw-llm"]\nrpm = 60\n')
    with batchrun.Client(sqlite_url, env={"HOME": str(home)}, config=config, cwd=home) as client:
        store = Store.open(sqlite_url)
        try:
            submit(
                store,
                [request_line("c", model="my-gw-llm"), request_line("p", model=SONNET)]
                + [request_line(f"t{i}", model=model) for i, model in enumerate(TENANT_MODELS)],
            )
        finally:
            store.close()
        server = start_run_metrics(client, port=0, counters=lambda: None)
        try:
            body = httpx.get(server.url, timeout=30).content
        finally:
            server.close()
    assert model_labels(body) == {"my-gw-llm", SONNET, OTHER_MODEL}
    assert b"tenant-model" not in body and b"evil" not in body


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    opened = Store.open(sqlite_url)
    yield opened
    opened.close()
