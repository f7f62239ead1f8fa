"""The pieces of `run --metrics-port` in this process: the page gathered at most once a
second (serve's too), the small HTTP server (GET /metrics, 404 elsewhere, a clear error for a
port in use, nothing listening after close), and the run's 429s reaching it through
``Client.run(on_session=...)``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import batchrun
from batchrun.config.prices import PriceTable
from batchrun.errors import ConfigError
from batchrun.ops.run_types import ProcessCounters
from batchrun.ops.session import RunSession
from batchrun.ops.views.metrics import MetricsGatherer
from batchrun.server.metrics import MetricsPage
from batchrun.server.run_metrics import RunMetricsServer, start_run_metrics
from batchrun.store.store import Store
from tests.conftest import request_line, submit

LIMITED_ONCE = " [[sim:status=429:times=1:retry_after=0.05]]"


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    opened = Store.open(sqlite_url)
    yield opened
    opened.close()


class CountedCalls:
    """Counters that say how often they were read."""

    def __init__(self, rate_limited: int = 0) -> None:
        self.calls = 0
        self.rate_limited = rate_limited

    def __call__(self) -> ProcessCounters:
        self.calls += 1
        return ProcessCounters(self.rate_limited)


def samples(body: bytes) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if not sample.labels
    }


def test_a_page_is_gathered_once_per_interval_with_the_counters_read_after(
    store: Store,
) -> None:
    counters = CountedCalls(rate_limited=3)
    page = MetricsPage(MetricsGatherer(store, prices=PriceTable()), counters)

    assert page.recent() is None
    body, content_type = page.render()
    again = page.render()

    assert counters.calls == 1
    assert again == (body, content_type) == page.recent()
    assert content_type.startswith("text/plain")
    assert samples(body)["batchrun_rate_limited_total"] == 3


def test_every_scrape_gathers_with_no_interval(store: Store) -> None:
    counters = CountedCalls()
    page = MetricsPage(MetricsGatherer(store, prices=PriceTable()), counters, min_interval_s=0)

    page.render()
    counters.rate_limited = 5
    body, _ = page.render()

    assert counters.calls == 2
    assert samples(body)["batchrun_rate_limited_total"] == 5


def test_the_server_answers_metrics_only_and_stops_listening_on_close(
    store: Store, sqlite_url: str, tmp_path: Path
) -> None:
    submit(store, [request_line("a"), request_line("b")])
    with batchrun.Client(sqlite_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as client:
        server = start_run_metrics(client, port=0, counters=CountedCalls(rate_limited=2))
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        metrics = httpx.get(server.url)
        elsewhere = httpx.get(server.url.removesuffix("/metrics") + "/")
    finally:
        server.close()

    assert metrics.status_code == 200
    assert 'batchrun_requests{anthropic_state="processing"' in metrics.text
    assert samples(metrics.content)["batchrun_rate_limited_total"] == 2
    assert elsewhere.status_code == 404
    assert "/metrics" in elsewhere.text
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
        pass


def test_a_port_in_use_is_a_config_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} is in use.*0 for a free one"):
            RunMetricsServer(host="127.0.0.1", port=port)


def test_the_session_handed_to_on_session_counts_the_runs_429s(db_url: str, tmp_path: Path) -> None:
    sessions: list[RunSession] = []
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as client:
        lines = [request_line(f"r{i}", f"q {i}" + LIMITED_ONCE * (i < 3)) for i in range(6)]
        batch = client.submit(lines, endpoint="simulator")
        result = client.run(batch.id, on_session=sessions.append)

    [session] = sessions
    assert result.last is not None
    assert result.last.report.rate_limited == 3
    assert session.counters() == ProcessCounters(rate_limited=3)
