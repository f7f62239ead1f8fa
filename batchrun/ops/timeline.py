"""What the dashboard of ``batchrun serve`` shows: each batch as a card (progress, cost,
throughput against its binding rate limit, error types) and one batch over time (answers
and tokens per minute against the limits, the latest errors).

Throughput is measured from the stored answers (``results.completed_at``), so it is right
whichever workers send the batch. A batch still in progress is measured over the last
:data:`RECENT_WINDOW_S` (or since its first answer, if that is later, but over
:data:`MIN_SPAN_S` at least); an ended one over its whole span, from its first answer to its
last. The answers per minute are the report's series
(:func:`batchrun.store.series.read_answer_series`), one minute wide: each answer counts in
the minute it was sent, as the rate limits count it.

A batch's limits are those its latest run sent it under, as that run recorded them
(:mod:`batchrun.ops.run_limits`): per dimension the limit given as a flag, the configured
one, the one the server announced, the lowest a learned limit took it to, and the limit in
force at the end of the run (``limit``), each summed over the keys the run sent it under
(a dimension is left out when one of the keys has no limit in it); every run's are on the
card too (``runs``). A batch no run has recorded limits for (not sent yet, or sent before
batchrun recorded them) shows the limits of the keys its requests would be sent under as
the database holds them now (``limits_recorded`` false): endpoint × model or family
pattern, for a pool each member's, with the member's model names; a key with no
configured, announced or learned limit but a bucket in force counts the bucket's rate. While
a batch is in progress ``in_force`` is the workers' bucket rate now (lower during the
start-up ramp). The limit of the dimension the batch uses the largest share of is the
binding one. The limits are shared with whatever else is sent under the same keys; the rates
are the batch's own.

Blocking (store reads): the server calls these on its store threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from batchrun.config.prices import CostTotal, PriceTable, cost_of
from batchrun.limits.dimensions import DIMENSIONS, Amounts, Dimension
from batchrun.limits.families import entry_for, is_family
from batchrun.ops.run_limits import RunLimits, key_limit, runs_of, summed_limit
from batchrun.records import BatchSummary, Lane, route_of
from batchrun.store.series import AnswerBucket
from batchrun.store.usage import Usage, priced
from batchrun.transport.endpoints import Endpoints

if TYPE_CHECKING:
    from batchrun.store.store import Store
    from batchrun.store.timeline import (
        LatestError,
        RateLimitRow,
        RetryingRequest,
    )

# A running batch's throughput is measured over its answers of the last minute.
RECENT_WINDOW_S = 60.0
# ...and over 10 s at least: a batch's first answers, a second apart, are no rate yet.
MIN_SPAN_S = 10.0
# The batch page shows this many of the latest errors, and of the requests being retried.
LATEST_ERRORS = 10
RETRYING_SHOWN = 10
# The series spans at most a day of minutes, ending at the last answer (or now, while the
# batch runs).
SERIES_MINUTES = 1440
# How many batches' models are kept (a few hundred bytes each).
MODELS_KEPT = 10_000
_MINUTE = timedelta(minutes=1)

Measure = Literal["requests", "input_tokens", "output_tokens", "tokens"]


def measure_of(dimension: Dimension) -> Measure:
    """Which of the dashboard's series a dimension limits: requests, input tokens, output
    tokens, or input + output tokens (read off the dimension's own measure)."""
    if dimension.measure(Amounts(requests=1.0)) > 0:
        return "requests"
    takes_input = dimension.measure(Amounts(input_tokens=1.0)) > 0
    takes_output = dimension.measure(Amounts(output_tokens=1.0)) > 0
    if takes_input and takes_output:
        return "tokens"
    return "input_tokens" if takes_input else "output_tokens"


@dataclass(frozen=True)
class Throughput:
    """A batch's answers, input and output tokens per minute, measured over the ``recent``
    window (a batch in progress) or as the ``average`` of its whole span (an ended one)."""

    requests_per_min: float
    input_tokens_per_min: float
    output_tokens_per_min: float
    window: Literal["recent", "average"]

    @property
    def amounts(self) -> Amounts:
        """Per minute, as the limits count it."""
        return Amounts(self.requests_per_min, self.input_tokens_per_min, self.output_tokens_per_min)


@dataclass(frozen=True)
class LimitUse:
    """One dimension of a batch's limits, per minute (see the module): ``configured``,
    ``announced``, ``learned`` (None when not known or not lower), ``limit`` (the lowest),
    ``in_force`` (the workers' bucket rate now: lower during the start-up ramp; None before
    any send and once a batch with recorded limits ended), the batch's ``rate`` in the
    dimension with its share of the limit, and ``flag`` (a limit given to the run that sent
    it, as ``--rpm``; recorded limits only)."""

    dimension: str
    measures: Measure
    configured: float | None
    announced: float | None
    learned: float | None
    limit: float
    in_force: float | None
    rate: float | None
    utilisation: float | None
    binding: bool = False
    flag: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "measures": self.measures,
            "flag": self.flag,
            "configured": self.configured,
            "announced": self.announced,
            "learned": self.learned,
            "limit": self.limit,
            "in_force": self.in_force,
            "rate": _round(self.rate),
            "utilisation": None if self.utilisation is None else round(self.utilisation, 4),
            "binding": self.binding,
        }


@dataclass(frozen=True)
class BatchCard:
    """One batch as the dashboard lists it."""

    batch: BatchSummary
    cost: CostTotal
    throughput: Throughput | None
    limits: tuple[LimitUse, ...]
    error_types: tuple[tuple[str, int], ...]
    first_answer_at: datetime | None
    last_answer_at: datetime | None
    # The limits each run sent the batch under, oldest first (empty: none recorded; then
    # ``limits`` are those of its keys now).
    runs: tuple[RunLimits, ...] = ()

    @property
    def limits_recorded(self) -> bool:
        """Whether ``limits`` are those a run recorded (its latest), not today's."""
        return bool(self.runs)

    @property
    def binding(self) -> LimitUse | None:
        """The limit the batch uses the largest share of, if it is measured against any."""
        return next((use for use in self.limits if use.binding), None)

    @property
    def state(self) -> str:
        """What the state badge says: paused, canceling, canceled, ended, running (answers
        in the recent window) or queued."""
        batch = self.batch
        if batch.ended_at is not None:
            return "canceled" if batch.cancel_initiated_at is not None else "ended"
        if batch.cancel_initiated_at is not None:
            return "canceling"
        if batch.paused_reason:
            return "paused"
        recent = self.throughput is not None and self.throughput.requests_per_min > 0
        return "running" if recent else "waiting"

    def as_json(self) -> dict[str, Any]:
        batch, counts, tokens = self.batch, self.batch.counts, self.batch.tokens
        binding = self.binding
        return {
            "id": batch.id,
            "name": batch.name,
            "endpoint": batch.endpoint,
            "lane": batch.lane,
            "processing_status": batch.processing_status,
            "state": self.state,
            "paused_reason": batch.paused_reason,
            "created_at": batch.created_at,
            "expires_at": batch.expires_at,
            "ended_at": batch.ended_at,
            "request_counts": {
                "processing": counts.processing,
                "succeeded": counts.succeeded,
                "errored": counts.errored,
                "canceled": counts.canceled,
                "expired": counts.expired,
            },
            "total": counts.total,
            "done": counts.total - counts.processing,
            "usage": {
                "input_tokens": tokens.input_tokens,
                "output_tokens": tokens.output_tokens,
                "cache_creation_input_tokens": tokens.cache_creation_input_tokens,
                "cache_read_input_tokens": tokens.cache_read_input_tokens,
            },
            "cost_usd": None if self.cost.usd is None else round(self.cost.usd, 6),
            "cost_usd_known": round(self.cost.known_usd, 6),
            "unpriced_models": sorted(self.cost.unpriced),
            "throughput": None
            if self.throughput is None
            else {
                "requests_per_min": _round(self.throughput.requests_per_min),
                "input_tokens_per_min": _round(self.throughput.input_tokens_per_min),
                "output_tokens_per_min": _round(self.throughput.output_tokens_per_min),
                "window": self.throughput.window,
            },
            "binding": None if binding is None else binding.as_json(),
            "limits_recorded": self.limits_recorded,
            "limits_run": None
            if not self.runs
            else {
                "run_id": self.runs[-1].run_id,
                "started_at": self.runs[-1].started_at,
                "first_sent_at": self.runs[-1].first_sent_at,
            },
            "error_types": [{"type": kind, "count": n} for kind, n in self.error_types],
            "first_answer_at": self.first_answer_at,
            "last_answer_at": self.last_answer_at,
        }


@dataclass(frozen=True)
class BatchTimeline:
    """One batch over time: its card, its limits, answers per minute (``points``: every
    minute from the first shown to the last, oldest first; the last one still filling while
    the batch is in progress), the latest errors and the requests being retried."""

    card: BatchCard
    points: tuple[AnswerBucket, ...]
    partial_last: bool
    latest_errors: tuple[LatestError, ...]
    retrying: tuple[RetryingRequest, ...]
    models: tuple[str, ...]

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {
            "batch": self.card.as_json(),
            "models": list(self.models),
            "limits": [use.as_json() for use in self.card.limits],
            "runs": [run.as_json() for run in self.card.runs],
            "series": {
                "minute_s": 60,
                "partial_last": self.partial_last,
                "points": [
                    {
                        "t": point.start,
                        "requests": point.answered,
                        "input_tokens": point.input_tokens,
                        "output_tokens": point.output_tokens,
                        "errored": point.errored,
                        "throttled": point.throttled,
                    }
                    for point in self.points
                ],
            },
            "latest_errors": [
                {
                    "custom_id": error.custom_id,
                    "at": error.completed_at,
                    "type": error.error_type,
                    "http_status": error.http_status,
                    "message": _clip(error.message),
                }
                for error in self.latest_errors
            ],
            "retrying": [
                {
                    "custom_id": item.custom_id,
                    "attempts": item.attempts,
                    "message": _clip(item.last_error),
                }
                for item in self.retrying
            ],
            "now": now,
        }


class DashboardData:
    """The dashboard's reads of one store, for the endpoints and prices of one server.

    Thread-safe: the server calls it from its store threads. The models a batch's requests
    name never change once it is stored, so they are read once per batch (the read goes
    through every request of the batch) and kept, for up to :data:`MODELS_KEPT` batches.
    """

    def __init__(self, store: Store, *, known: Endpoints, prices: PriceTable) -> None:
        self.store = store
        self.known = known
        self.prices = prices
        self._models: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def models(self, batch_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """The models the requests of these batches name, by batch id."""
        with self._lock:
            missing = [batch_id for batch_id in batch_ids if batch_id not in self._models]
        found = self.store.request_models(missing) if missing else {}
        with self._lock:
            for batch_id in missing:
                if len(self._models) >= MODELS_KEPT:
                    self._models.pop(next(iter(self._models)))
                self._models[batch_id] = tuple(found.get(batch_id, ()))
            return {batch_id: self._models.get(batch_id, ()) for batch_id in batch_ids}

    def cards(self, batches: Sequence[BatchSummary], *, now: datetime) -> list[BatchCard]:
        """The cards of ``batches``, in their order: three grouped reads for them all (the
        answers by kind, the error types, the rate records; the models of batches not seen
        before too). Measured on a 100,000-request batch with every result stored: 0.21 s
        on SQLite (a file on local disk), 0.15 s on Postgres 15 (local socket)."""
        ids = [batch.id for batch in batches]
        if not ids:
            return []
        since = now - timedelta(seconds=RECENT_WINDOW_S)
        groups: dict[str, list[Usage]] = {}
        for group in self.store.usage.of_batches(ids, since=since):
            groups.setdefault(group.batch_id, []).append(group)
        errors: dict[str, list[tuple[str, int]]] = {}
        for item in self.store.error_types(ids):
            errors.setdefault(item.batch_id, []).append((item.error_type, item.count))
        models = self.models(ids)
        keys = {
            batch.id: _limit_keys(batch.endpoint, models[batch.id], self.known) for batch in batches
        }
        endpoints = sorted({endpoint for found in keys.values() for endpoint, _ in found})
        recorded = self.store.run_limits.of_batches(ids)
        endpoints = sorted(
            {*endpoints, *(row.endpoint for found in recorded.values() for row in found)}
        )
        rows = {
            (row.endpoint, row.model, row.dimension): row
            for row in self.store.rate_limit_rows(endpoints)
        }
        cards = []
        for batch in batches:
            mine = groups.get(batch.id, [])
            sent = _Sent.of(mine)
            throughput = _throughput(batch, sent, since=since, now=now)
            runs = runs_of(recorded.get(batch.id, ()))
            limits = (
                _recorded_uses(runs[-1], rows, throughput, running=batch.ended_at is None)
                if runs
                else _limit_uses(keys[batch.id], rows, throughput, self.known)
            )
            cards.append(
                BatchCard(
                    batch=batch,
                    cost=cost_of(priced(mine), self.prices),
                    throughput=throughput,
                    limits=limits,
                    error_types=tuple(errors.get(batch.id, [])),
                    first_answer_at=sent.first_at,
                    last_answer_at=sent.last_at,
                    runs=runs,
                )
            )
        return cards

    def timeline(self, batch: BatchSummary, *, now: datetime) -> BatchTimeline:
        """The batch's card with its answers per minute, latest errors and retried
        requests: the card's reads, one grouped read for the series, two short ones.
        Measured on a 100,000-request batch with every result stored, answered over 6
        hours: 0.38 s on SQLite (a file on local disk), 0.30 s on Postgres 15 (local
        socket). The server keeps what it computed a while, longer the longer it took
        (``batchrun.server.dashboard``), so open pages do not multiply this."""
        (card,) = self.cards([batch], now=now)
        series = self.store.series.answers(batch.id, width_s=60, max_buckets=SERIES_MINUTES)
        running = batch.ended_at is None
        points = _contiguous(series, until=_minute_of(now) if running else None)
        return BatchTimeline(
            card=card,
            points=points,
            partial_last=running and bool(points) and points[-1].start == _minute_of(now),
            latest_errors=tuple(self.store.latest_errors(batch.id, limit=LATEST_ERRORS)),
            retrying=tuple(self.store.retrying_requests(batch.id, limit=RETRYING_SHOWN)),
            models=self.models([batch.id])[batch.id],
        )


@dataclass(frozen=True)
class _Sent:
    """A batch's answers sent in real time (what its throughput and the limits count)."""

    answered: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    recent_requests: int = 0
    recent_input_tokens: int = 0
    recent_output_tokens: int = 0

    @classmethod
    def of(cls, groups: Iterable[Usage]) -> _Sent:
        found = cls()
        for group in groups:
            if not group.sent or group.lane != Lane.REALTIME:
                continue
            found = cls(
                found.answered + group.answers,
                found.input_tokens + group.input_tokens + group.cache_creation_input_tokens,
                found.output_tokens + group.output_tokens,
                _earliest(found.first_at, group.first_at),
                _latest(found.last_at, group.last_at),
                found.recent_requests + group.recent_answers,
                found.recent_input_tokens + group.recent_input_tokens,
                found.recent_output_tokens + group.recent_output_tokens,
            )
        return found


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


# -- throughput -------------------------------------------------------------------------------


def _throughput(
    batch: BatchSummary, seen: _Sent, *, since: datetime, now: datetime
) -> Throughput | None:
    """The batch's rates (see the module); None before its first answer, or for an ended
    batch answered within a second (no span to measure)."""
    if seen.first_at is None or seen.last_at is None:
        return None
    if batch.ended_at is None:
        span_s = (now - max(since, seen.first_at)).total_seconds()
        per_min = 60 / min(max(span_s, MIN_SPAN_S), RECENT_WINDOW_S)
        return Throughput(
            seen.recent_requests * per_min,
            seen.recent_input_tokens * per_min,
            seen.recent_output_tokens * per_min,
            "recent",
        )
    span_s = (seen.last_at - seen.first_at).total_seconds()
    if span_s < 1:
        return None
    per_min = 60 / span_s
    return Throughput(
        seen.answered * per_min,
        seen.input_tokens * per_min,
        seen.output_tokens * per_min,
        "average",
    )


# -- limits -----------------------------------------------------------------------------------


def _limit_keys(name: str, models: Iterable[str], known: Endpoints) -> tuple[tuple[str, str], ...]:
    """The limiter keys (endpoint, model or family pattern) of a batch on endpoint or pool
    ``name`` whose requests name ``models``, as the limiter makes them."""
    found: dict[tuple[str, str], None] = {}
    for member in route_of(name, known.pools).members:
        endpoint = known.by_name.get(member.endpoint)
        entries = endpoint.limits if endpoint is not None else {}
        for model in models:
            sent = member.model_for(model)
            entry = entry_for(sent, entries)
            key_model = entry if entry is not None and is_family(entry) else sent
            found[(member.endpoint, key_model)] = None
    return tuple(found)


def _configured(endpoint: str, model: str, known: Endpoints) -> Mapping[str, float]:
    found = known.by_name.get(endpoint)
    limits = None if found is None else found.limits_for(model)
    return {} if limits is None else dict(limits.items())


def _limit_uses(
    keys: Sequence[tuple[str, str]],
    rows: Mapping[tuple[str, str, str], RateLimitRow],
    throughput: Throughput | None,
    known: Endpoints,
) -> tuple[LimitUse, ...]:
    """The batch's limits per dimension (see the module), the binding one marked."""
    uses = []
    for dimension in DIMENSIONS:
        name = dimension.name
        configured: list[float | None] = []
        announced: list[float | None] = []
        lowest: list[float | None] = []
        in_force: list[float | None] = []
        learned = False
        for endpoint, model in keys:
            row = rows.get((endpoint, model, name))
            mine = _configured(endpoint, model, known).get(name)
            heard = None if row is None else row.announced
            lowered = None if row is None else row.learned
            least = key_limit(mine, heard, lowered)
            if least is None and row is not None:
                # A limit given to `run` (--rpm ...) is stored only as the bucket's rate.
                least = row.in_force
            configured.append(mine)
            announced.append(heard)
            lowest.append(least)
            in_force.append(None if row is None else row.in_force)
            learned = learned or (lowered is not None and least == lowered)
        limit = summed_limit(lowest)
        if limit is None:
            continue
        rate = None if throughput is None else dimension.measure(throughput.amounts)
        uses.append(
            LimitUse(
                dimension=name,
                measures=measure_of(dimension),
                configured=summed_limit(configured),
                announced=summed_limit(announced),
                learned=limit if learned else None,
                limit=limit,
                in_force=summed_limit(in_force),
                rate=rate,
                utilisation=None if rate is None else rate / limit,
            )
        )
    return _mark_binding(uses)


def _recorded_uses(
    run: RunLimits,
    rows: Mapping[tuple[str, str, str], RateLimitRow],
    throughput: Throughput | None,
    *,
    running: bool,
) -> tuple[LimitUse, ...]:
    """The batch's limits as its latest run recorded them (see the module), the binding one
    marked."""
    uses = []
    for limit in run.limits:
        if limit.limit is None:
            continue
        dimension = DIMENSIONS.get(limit.dimension)
        in_force = None
        if running:
            found = [rows.get((endpoint, model, limit.dimension)) for endpoint, model in run.keys]
            in_force = summed_limit([None if row is None else row.in_force for row in found])
        rate = None if throughput is None else dimension.measure(throughput.amounts)
        uses.append(
            LimitUse(
                dimension=limit.dimension,
                measures=measure_of(dimension),
                configured=limit.configured,
                announced=limit.announced,
                learned=limit.learned,
                limit=limit.limit,
                in_force=in_force,
                rate=rate,
                utilisation=None if rate is None else rate / limit.limit,
                flag=limit.flag,
            )
        )
    return _mark_binding(uses)


def _mark_binding(uses: Sequence[LimitUse]) -> tuple[LimitUse, ...]:
    """``uses`` with the one of the largest share used marked binding."""
    measured = [use for use in uses if use.utilisation is not None]
    if not measured:
        return tuple(uses)
    top = max(measured, key=lambda use: use.utilisation or 0.0)
    return tuple(replace(use, binding=True) if use is top else use for use in uses)


# -- the series -------------------------------------------------------------------------------


def _minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _contiguous(
    series: Sequence[AnswerBucket], *, until: datetime | None
) -> tuple[AnswerBucket, ...]:
    """``series`` with the minutes between its points (and up to ``until``) as zeros, the
    last :data:`SERIES_MINUTES` of them."""
    if not series:
        return ()
    last = max(series[-1].start, until) if until is not None else series[-1].start
    first = max(series[0].start, last - (SERIES_MINUTES - 1) * _MINUTE)
    by_minute = {point.start: point for point in series}
    points = []
    minute = first
    while minute <= last:
        points.append(by_minute.get(minute) or AnswerBucket(minute))
        minute += _MINUTE
    return tuple(points)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _clip(message: str | None, limit: int = 500) -> str | None:
    """A message short enough for a table cell."""
    if message is None or len(message) <= limit:
        return message
    return message[: limit - 1] + "…"
