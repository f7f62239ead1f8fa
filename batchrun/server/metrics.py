"""Prometheus metrics: a :class:`~batchrun.ops.metrics.MetricsSnapshot` in the text format.

The server gathers a snapshot at each scrape (with one
:class:`~batchrun.ops.metrics.MetricsGatherer`, off the event loop) and answers
``GET /metrics`` with :func:`render_metrics`; this module imports no web framework. Each
rendering uses its own :class:`~prometheus_client.CollectorRegistry` (never the
process-wide default one), so the numbers are the snapshot's and nothing else.

Metrics (labels in brackets; :mod:`batchrun.ops.metrics` says where each number comes from):

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

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from batchrun.ops.metrics import MetricsSnapshot

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
            "Tokens the stored results report, by kind: input, output, cache_creation_input "
            "(cache writes), cache_read_input (cache reads).",
            labels=(*_KEY, "kind"),
            unit="tokens",
        )
        cost = CounterMetricFamily(
            "batchrun_cost_usd_total",
            "What the stored results cost in USD at the configured prices (the batch lane at "
            "its discount, reused answers at 0); results of unpriced models are left out.",
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
