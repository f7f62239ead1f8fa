"""What ``batchrun report`` shows of one batch, read from the store: its status, its sends
per minute against its rate limits, 429s, retries and errors over time, answer latency per
endpoint, cost over time and tokens by kind.

Time is cut into buckets of :func:`bucket_width_s` seconds, about :data:`TARGET_BUCKETS` over
the batch's span. Sends, failures and errors are placed by when they were sent (the
dashboard's series, :func:`batchrun.store.series.read_answer_series`); cost by when each
answer came (:func:`batchrun.store.usage.read_usage`, per bucket). A rate per minute is
read over a trailing window (:func:`window_s`): a minute when the batch sent for
:data:`LONG_RUN_S` or more, so the line compares with a limit per minute as the limiter
counts it; a shorter window for a short run, which a trailing minute would flatten.
Latency percentiles are exact (nearest rank over every answer's latency in whole
milliseconds), read from a stream of distinct latencies; memory stays that of a few hundred
buckets whatever the batch's size.

The limits are what the dashboard shows, read by the same function
(:func:`batchrun.ops.views.limits.limits_of`): those the latest run that sent the batch
recorded (per dimension the flag, configured, announced and learned limits of the keys it
sent the batch under, and the one in force), with the binding one (the largest share used)
marked, and every run's (:mod:`batchrun.ops.views.run_limits`). A batch no run recorded
limits for shows those of its keys as the store holds them now.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from batchrun.config.prices import CostTotal, PriceTable, cost_of
from batchrun.ops.views.limits import LimitUse, limits_of
from batchrun.ops.views.run_limits import RunLimits
from batchrun.records import BatchSummary, ErrorCount, Lane, ModelTokens
from batchrun.store.latencies import LatencySpread
from batchrun.store.series import AnswerBucket
from batchrun.store.usage import Usage
from batchrun.transport.endpoints import Endpoints

if TYPE_CHECKING:
    from batchrun.export.batch_object import BatchStatus
    from batchrun.store.store import Store

# About this many time buckets over a batch's span (fewer for a span of a few minutes).
TARGET_BUCKETS = 240
# Bucket widths, in seconds: the least of them that keeps the count near TARGET_BUCKETS.
NICE_WIDTHS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200)
# A batch that sent for this long or longer has its rates read over a trailing minute.
LONG_RUN_S = 180.0
SECONDS_PER_MINUTE = 60
# Bins of each latency histogram; latencies spanning this ratio or more get log-spaced bins.
LATENCY_BINS = 24
LOG_BINS_RATIO = 20.0
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
# How many error types the report lists (each with one example message).
ERROR_TYPES_SHOWN = 20


@dataclass(frozen=True)
class RatePoint:
    """The batch's real-time sends per minute over the trailing window ending at ``at``."""

    at: datetime
    requests_per_min: float
    input_tokens_per_min: float
    output_tokens_per_min: float


@dataclass(frozen=True)
class FailurePoint:
    """What went wrong in the bucket starting at ``at``: sends that failed transiently and
    were ``retried``; ``rate_limited`` 429s (retried or final) and ``overloaded`` 529s; and
    answers that ended their request ``errored``."""

    at: datetime
    retried: int
    rate_limited: int
    overloaded: int
    errored: int


@dataclass(frozen=True)
class LatencyStats:
    """Answer latency of one endpoint (for a pool: a member), in milliseconds: how many,
    the percentiles (name → ms), the mean, and a histogram (``edges`` has one more item than
    ``counts``)."""

    endpoint: str
    count: int
    percentiles: tuple[tuple[str, int], ...]
    mean_ms: float
    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class CostLine:
    """Cost of one model in one lane: per bucket (``points``: bucket start, USD in that
    bucket) and in all; ``usd`` is None when the model has no price."""

    model: str
    lane: str
    usd: float | None
    points: tuple[tuple[datetime, float], ...]

    @property
    def name(self) -> str:
        return self.model if self.lane == Lane.REALTIME else f"{self.model} ({self.lane})"


@dataclass(frozen=True)
class ReportData:
    """Everything the report page draws (see the module)."""

    status: BatchStatus
    generated_at: datetime
    width_s: int
    window_s: int
    rates: tuple[RatePoint, ...]
    limits: tuple[LimitUse, ...]
    failures: tuple[FailurePoint, ...]
    errors: tuple[ErrorCount, ...]
    latencies: tuple[LatencyStats, ...]
    costs: tuple[CostLine, ...]
    cost: CostTotal
    lanes: tuple[str, ...]
    # The limits each run sent the batch under, oldest first; ``limits`` are the latest's
    # (empty: no run recorded any, and ``limits`` are those of the batch's keys now).
    runs: tuple[RunLimits, ...] = ()

    @property
    def binding(self) -> LimitUse | None:
        return next((use for use in self.limits if use.binding), None)

    @property
    def limits_recorded(self) -> bool:
        """Whether ``limits`` are those a run recorded, not today's."""
        return bool(self.runs)


def gather_report(
    store: Store,
    *,
    batch: BatchSummary,
    status: BatchStatus,
    errors: Sequence[ErrorCount],
    known: Endpoints,
    prices: PriceTable,
    now: datetime,
) -> ReportData:
    """The report of ``batch`` (whose ``status`` and ``errors`` the caller read): a handful
    of grouped reads of the store (the limits in force as the dashboard's card shows them,
    the answers per bucket, the usage per bucket, the latencies)."""
    first, last = _span(status, now)
    width_s = bucket_width_s((last - first).total_seconds())
    sends = store.series.answers(batch.id, width_s=width_s)
    sent_span_s = _sent_span_s(sends, width_s)
    window = window_s(sent_span_s, width_s)
    batch_limits = limits_of(store, batch, known=known, now=now)
    cost_buckets = [
        usage
        for usage in store.usage.of_batches([batch.id], width_s=width_s)
        if usage.with_usage or usage.has_tokens
    ]
    return ReportData(
        status=status,
        generated_at=now,
        width_s=width_s,
        window_s=window,
        rates=tuple(trailing_rates(sends, width_s=width_s, window_s=window)),
        limits=batch_limits.limits,
        failures=tuple(_failures(sends, width_s)),
        errors=tuple(errors),
        latencies=tuple(
            latency_stats(store.latencies.spreads(batch.id), store.latencies.iter_answers(batch.id))
        ),
        costs=tuple(cost_lines(cost_buckets, prices)),
        cost=status.cost,
        lanes=tuple(sorted({bucket.lane for bucket in cost_buckets})),
        runs=batch_limits.runs,
    )


def bucket_width_s(span_s: float) -> int:
    """The least of :data:`NICE_WIDTHS_S` that cuts ``span_s`` into at most
    :data:`TARGET_BUCKETS` buckets (the widest for a longer span)."""
    for width in NICE_WIDTHS_S:
        if span_s / width <= TARGET_BUCKETS:
            return width
    return NICE_WIDTHS_S[-1]


def window_s(sent_span_s: float, width_s: int) -> int:
    """How far back each rate looks (see the module): a minute (or a bucket, if wider) for a
    batch that sent for :data:`LONG_RUN_S` or longer; otherwise a tenth of the span, whole
    buckets, at least one."""
    if sent_span_s >= LONG_RUN_S:
        return max(SECONDS_PER_MINUTE, width_s)
    buckets = max(1, round(sent_span_s / 10 / width_s))
    return buckets * width_s


def trailing_rates(
    sends: Sequence[AnswerBucket], *, width_s: int, window_s: int
) -> Iterator[RatePoint]:
    """Per bucket from the first send to the last (empty buckets included), the sends per
    minute over the ``window_s`` ending with the bucket."""
    span = max(1, window_s // width_s)
    scale = SECONDS_PER_MINUTE / (span * width_s)
    window: deque[AnswerBucket] = deque(maxlen=span)
    step = timedelta(seconds=width_s)
    for bucket in _every_bucket(sends, width_s):
        window.append(bucket)
        yield RatePoint(
            bucket.start + step,
            sum(item.answered + item.failed for item in window) * scale,
            sum(item.input_tokens for item in window) * scale,
            sum(item.output_tokens for item in window) * scale,
        )


def _failures(sends: Sequence[AnswerBucket], width_s: int) -> Iterator[FailurePoint]:
    """Per bucket from the first send to the last, what failed in it."""
    for item in _every_bucket(sends, width_s):
        yield FailurePoint(
            item.start,
            retried=item.failed,
            rate_limited=item.rate_limited + item.throttled,
            overloaded=item.overloaded,
            errored=item.errored,
        )


def _every_bucket(sends: Sequence[AnswerBucket], width_s: int) -> Iterator[AnswerBucket]:
    """``sends`` (oldest first, buckets without sends left out) with the empty buckets
    between them filled in."""
    if not sends:
        return
    per_bucket = {bucket.start: bucket for bucket in sends}
    step = timedelta(seconds=width_s)
    at = sends[0].start
    while at <= sends[-1].start:
        yield per_bucket.get(at) or AnswerBucket(at)
        at += step


def latency_stats(
    spreads: Sequence[LatencySpread], rows: Iterable[tuple[str, int, int]]
) -> Iterator[LatencyStats]:
    """Percentiles and a histogram per endpoint, from its spread and the stream of its
    distinct latencies (endpoint, ms, count) in the order of ``spreads`` then latency."""
    by_endpoint = {spread.endpoint: spread for spread in spreads}
    current: _LatencyTally | None = None
    for endpoint, latency_ms, count in rows:
        if current is None or current.spread.endpoint != endpoint:
            if current is not None:
                yield current.stats()
            spread = by_endpoint.get(endpoint)
            if spread is None:
                # Answered between the two reads: counted with the next report.
                current = None
                continue
            current = _LatencyTally(spread)
        current.add(latency_ms, count)
    if current is not None:
        yield current.stats()


class _LatencyTally:
    """One endpoint's latencies as they stream by, in order."""

    def __init__(self, spread: LatencySpread) -> None:
        self.spread = spread
        self.edges = histogram_edges(spread.min_ms, spread.max_ms)
        self.counts = [0] * (len(self.edges) - 1)
        self.ranks = [
            (name, max(1, math.ceil(share * spread.count))) for name, share in PERCENTILES
        ]
        self.found: dict[str, int] = {}
        self.seen = 0
        self.total_ms = 0

    def add(self, latency_ms: int, count: int) -> None:
        self.seen += count
        self.total_ms += latency_ms * count
        for name, rank in self.ranks:
            if name not in self.found and self.seen >= rank:
                self.found[name] = latency_ms
        index = min(bisect.bisect_right(self.edges, latency_ms) - 1, len(self.counts) - 1)
        self.counts[max(index, 0)] += count

    def stats(self) -> LatencyStats:
        seen = max(self.seen, 1)
        return LatencyStats(
            endpoint=self.spread.endpoint,
            count=self.seen,
            percentiles=tuple(
                (name, self.found.get(name, self.spread.max_ms)) for name, _ in PERCENTILES
            ),
            mean_ms=self.total_ms / seen,
            edges=tuple(self.edges),
            counts=tuple(self.counts),
        )


def histogram_edges(min_ms: int, max_ms: int, bins: int = LATENCY_BINS) -> list[float]:
    """``bins`` + 1 bin edges from ``min_ms`` to ``max_ms``: log-spaced when the two are
    :data:`LOG_BINS_RATIO` or more apart, linear otherwise; one bin when they are equal."""
    low, high = float(max(min_ms, 0)), float(max(max_ms, min_ms, 0))
    if high <= low:
        return [low, low + 1.0]
    if low >= 1 and high / low >= LOG_BINS_RATIO:
        ratio = (high / low) ** (1 / bins)
        edges = [low * ratio**index for index in range(bins)]
    else:
        step = (high - low) / bins
        edges = [low + step * index for index in range(bins)]
    return [*edges, high + 1.0]


def cost_lines(buckets: Sequence[Usage], prices: PriceTable) -> Iterator[CostLine]:
    """Per model × lane, the cost of each bucket and in all (reused answers cost 0), from
    usage read per bucket (each with its ``start``)."""
    grouped: dict[tuple[str, str], dict[datetime, list[ModelTokens]]] = {}
    for bucket in buckets:
        if bucket.start is None:
            raise ValueError("cost_lines needs usage read per bucket (with width_s)")
        per_bucket = grouped.setdefault((bucket.model, bucket.lane), {})
        per_bucket.setdefault(bucket.start, []).append(bucket.tokens())
    for (model, lane), per_bucket in sorted(grouped.items()):
        points = []
        total = CostTotal()
        for at, items in sorted(per_bucket.items()):
            cost = cost_of(items, prices)
            total = total + cost
            points.append((at, cost.known_usd))
        yield CostLine(model, lane, total.usd, tuple(points))


def _span(status: BatchStatus, now: datetime) -> tuple[datetime, datetime]:
    """From the first send (or the creation) to the last answer (or now, while it runs)."""
    first = status.started_at or status.created_at
    last = status.last_completed_at or now
    if status.ended_at is None:
        last = max(last, now)
    return _utc(first), _utc(max(last, first))


def _sent_span_s(sends: Sequence[AnswerBucket], width_s: int) -> float:
    if not sends:
        return 0.0
    return (sends[-1].start - sends[0].start).total_seconds() + width_s


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
