"""Prometheus metrics: a :class:`~batchrun.ops.views.metrics.MetricsSnapshot` in the text format.

Both ``GET /metrics`` pages, ``serve``'s (:mod:`batchrun.server.scrape`) and
``run --metrics-port``'s (:mod:`batchrun.server.run_metrics`), are a :class:`MetricsPage`:
a snapshot from one :class:`~batchrun.ops.views.metrics.MetricsGatherer`, gathered off the event
loop at most once a second, rendered by :func:`render_metrics`; this module imports no web
framework. Each rendering uses its own :class:`~prometheus_client.CollectorRegistry` (never
the process-wide default one), so the numbers are the snapshot's and nothing else.

Metrics (labels in brackets; :mod:`batchrun.ops.views.metrics` says where each number comes from,
and why a model batchrun does not know, priced or named in the config, is labelled
``other``):

==========================================  =======  ==========================================
``batchrun_requests``                       gauge    endpoint, model, state, anthropic_state
``batchrun_requests_in_flight``             gauge    endpoint, model
``batchrun_sends_total``                    counter  endpoint, model
``batchrun_retries_total``                  counter  endpoint, model
``batchrun_tokens_total``                   counter  endpoint, model, kind
``batchrun_cost_usd_total``                 counter  endpoint, model
``batchrun_unpriced_results``               gauge    endpoint, model
``batchrun_rate_limit_utilisation_ratio``   gauge    endpoint, model, dimension
``batchrun_rate_limit_debt_seconds``        gauge    endpoint, model, dimension
``batchrun_rate_limit_per_minute``          gauge    endpoint, model, dimension
``batchrun_rate_limit_pause_seconds``       gauge    endpoint, model
``batchrun_rate_limited_total``             counter  (none; only with in-process counters)
``batchrun_metrics_gather_seconds``         gauge    (none)
==========================================  =======  ==========================================
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from batchrun.ops.run_types import ProcessCounters
from batchrun.ops.views.metrics import MetricsGatherer, MetricsSnapshot

# A scrape this soon after the last one gets the same figures.
MIN_SCRAPE_INTERVAL_S = 1.0
# The kinds of tokens, as the API's usage names them (without "_tokens").
TOKEN_KINDS = ("input", "output", "cache_creation_input", "cache_read_input")
_KEY = ("endpoint", "model")
_LIMIT = ("endpoint", "model", "dimension")


class SnapshotCollector(Collector):
    """The metric families of one snapshot."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every family of the snapshot, with its HELP text (see the module's table)."""
        yield from self._requests()
        yield from self._usage()
        yield from self._limits()
        yield from self._process()

    def _requests(self) -> Iterator[Metric]:
        snap = self._snapshot
        requests = GaugeMetricFamily(
            "batchrun_requests",
            "Requests in the job database per state: state is batchrun's (queued, running, "
            "provider, succeeded, errored, canceled, expired), anthropic_state the key of "
            "Anthropic's request_counts it counts under (the first three are processing).",
            labels=("endpoint", "model", "state", "anthropic_state"),
        )
        for item in snap.requests:
            requests.add_metric(
                (item.endpoint, item.model, item.state, item.anthropic_state), item.count
            )
        yield requests
        in_flight = GaugeMetricFamily(
            "batchrun_requests_in_flight",
            "Requests held by a worker under its lease (state running): being sent or about to be.",
            labels=_KEY,
        )
        for totals in snap.models:
            in_flight.add_metric((totals.endpoint, totals.model), totals.in_flight)
        yield in_flight

    def _usage(self) -> Iterator[Metric]:
        models = self._snapshot.models
        sends = CounterMetricFamily(
            "batchrun_sends_total",
            "Requests sent to an endpoint, every attempt counted (the sum of requests.attempts).",
            labels=_KEY,
        )
        retries = CounterMetricFamily(
            "batchrun_retries_total",
            "Sends beyond each request's first (after a 429, a 5xx, a timeout...).",
            labels=_KEY,
        )
        tokens = CounterMetricFamily(
            "batchrun_tokens_total",
            "Tokens the stored answers report (results, and the answers repaired since), by "
            "kind: input, output, cache_creation_input (cache writes), cache_read_input "
            "(cache reads).",
            labels=(*_KEY, "kind"),
            unit="tokens",
        )
        cost = CounterMetricFamily(
            "batchrun_cost_usd_total",
            "What the stored answers cost in USD at the configured prices (repaired ones "
            "included, the batch lane at its discount, reused answers at 0); answers of "
            "unpriced models are left out.",
            labels=_KEY,
            unit="usd",
        )
        unpriced = GaugeMetricFamily(
            "batchrun_unpriced_results",
            "Results with usage whose model has no price: their cost is unknown and not in "
            'batchrun_cost_usd_total (add [prices."MODEL"] to the config file).',
            labels=_KEY,
        )
        for item in models:
            key = (item.endpoint, item.model)
            sends.add_metric(key, item.sends)
            retries.add_metric(key, item.retries)
            used = (
                item.tokens.input_tokens,
                item.tokens.output_tokens,
                item.tokens.cache_creation_input_tokens,
                item.tokens.cache_read_input_tokens,
            )
            for kind, count in zip(TOKEN_KINDS, used, strict=True):
                tokens.add_metric((*key, kind), count)
            cost.add_metric(key, item.cost_usd)
            unpriced.add_metric(key, item.unpriced_results)
        yield from (sends, retries, tokens, cost, unpriced)

    def _limits(self) -> Iterator[Metric]:
        snap = self._snapshot
        utilisation = GaugeMetricFamily(
            "batchrun_rate_limit_utilisation_ratio",
            "Share of each rate-limit bucket in force in use now, 0 (full: idle) to 1 (empty: "
            "the binding limit); dimension is rpm, tpm, itpm or otpm; model may be a family "
            "pattern.",
            labels=_LIMIT,
            unit="ratio",
        )
        debt = GaugeMetricFamily(
            "batchrun_rate_limit_debt_seconds",
            "Seconds of refill until a bucket in debt (more taken than it held) is out of it.",
            labels=_LIMIT,
            unit="seconds",
        )
        limit = GaugeMetricFamily(
            "batchrun_rate_limit_per_minute",
            "The rate limit in force per minute, in the dimension's unit (requests or tokens).",
            labels=_LIMIT,
        )
        for use in snap.buckets:
            key = (use.endpoint, use.model, use.dimension)
            utilisation.add_metric(key, use.utilisation)
            debt.add_metric(key, use.debt_s)
            limit.add_metric(key, use.limit_per_min)
        yield from (utilisation, debt, limit)
        pause = GaugeMetricFamily(
            "batchrun_rate_limit_pause_seconds",
            "Seconds a 429's or 529's pause still holds an endpoint x model (paused keys only).",
            labels=_KEY,
            unit="seconds",
        )
        for item in snap.pauses:
            pause.add_metric((item.endpoint, item.model), item.remaining_s)
        yield pause

    def _process(self) -> Iterator[Metric]:
        snap = self._snapshot
        failed = CounterMetricFamily(
            "batchrun_failed_sends",
            "Sends that failed transiently and went back to the queue, per endpoint sent to "
            "(a pool's member), requested model and reason: rate_limited (429), overloaded "
            "(529), server_error (other 5xx), transport (no answer), other.",
            labels=("endpoint", "model", "reason"),
        )
        for item in snap.failed_sends:
            failed.add_metric((item.endpoint, item.model, item.reason), item.count)
        yield failed
        if snap.process is not None:
            yield CounterMetricFamily(
                "batchrun_rate_limited_total",
                "429 answers received by the runs of this process (not stored in the "
                "database, so other processes' are not counted).",
                value=snap.process.rate_limited,
            )
        yield GaugeMetricFamily(
            "batchrun_metrics_gather_seconds",
            "How long reading these numbers from the job database took.",
            value=snap.gathered_s,
            unit="seconds",
        )


def render_metrics(snapshot: MetricsSnapshot) -> tuple[bytes, str]:
    """The snapshot in Prometheus's text format: (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsPage:
    """The metrics page of one store, gathered at most once per ``min_interval_s``.

    A snapshot costs a few grouped reads (about 0.4 s with an open batch of 100,000
    requests; see :class:`~batchrun.ops.views.metrics.MetricsGatherer`), so scrapes take turns and
    one made within ``min_interval_s`` of the last is answered from it: several Prometheus
    servers, or a scraper gone wild, cost no more than one. ``counters`` gives this
    process's own counts (the 429s of the runs sending here; None when it sends nothing)
    and is called from the scraping thread, so it must be safe to call from any thread.
    """

    def __init__(
        self,
        gatherer: MetricsGatherer,
        counters: Callable[[], ProcessCounters | None],
        *,
        min_interval_s: float = MIN_SCRAPE_INTERVAL_S,
    ) -> None:
        self._gatherer = gatherer
        self._counters = counters
        self._min_interval_s = min_interval_s
        # One gather at a time (the gatherer is not thread-safe, and one is enough).
        self._turn = threading.Lock()
        # (time.monotonic() when gathered, body, content type); replaced whole, so
        # recent() reads it without the lock.
        self._last: tuple[float, bytes, str] | None = None

    def recent(self) -> tuple[bytes, str] | None:
        """The last page (body, content type) if it is fresh enough; None when a scrape
        must gather. Never blocks: an event loop may call it."""
        last = self._last
        if last is None or time.monotonic() - last[0] >= self._min_interval_s:
            return None
        return last[1], last[2]

    def render(self) -> tuple[bytes, str]:
        """The page (body, content type): :meth:`recent`'s, else a new snapshot rendered.
        Blocking (database reads): call it off the event loop. Any thread."""
        with self._turn:
            if (page := self.recent()) is not None:
                return page
            snapshot = self._gatherer.gather()
            # Read after the database: every 429 behind the answers the snapshot shows is
            # in it, so a snapshot with every request done has the run's final count.
            snapshot = replace(snapshot, process=self._counters())
            body, content_type = render_metrics(snapshot)
            self._last = (time.monotonic(), body, content_type)
            return body, content_type
