"""What the dashboard of ``batchrun serve`` shows: each batch as a card (progress, cost,
throughput against its binding rate limit, error types) and one batch over time (answers
and tokens per minute against the limits, the latest errors).

A batch's throughput is measured as :mod:`batchrun.ops.views.throughput` says, and its
limits, with the binding one marked, are read as :mod:`batchrun.ops.views.limits` says (the
report reads them there too). The answers per minute are the report's series
(:func:`batchrun.store.series.read_answer_series`), one minute wide: each answer counts in
the minute it was sent, as the rate limits count it.

Blocking (store reads): the server calls these on its store threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from batchrun.config.prices import CostTotal, PriceTable, cost_of
from batchrun.ops.views.limits import LimitUse, read_limits
from batchrun.ops.views.run_limits import RunLimits
from batchrun.ops.views.throughput import Sent, Throughput, recent_since, throughput_of
from batchrun.records import BatchSummary
from batchrun.store.series import AnswerBucket
from batchrun.store.usage import Usage, priced
from batchrun.transport.endpoints import Endpoints

if TYPE_CHECKING:
    from batchrun.store.store import Store
    from batchrun.store.timelines import (
        LatestError,
        RetryingRequest,
    )

# The batch page shows this many of the latest errors, and of the requests being retried.
LATEST_ERRORS = 10
RETRYING_SHOWN = 10
# The series spans at most a day of minutes, ending at the last answer (or now, while the
# batch runs).
SERIES_MINUTES = 1440
# How many batches' models are kept (a few hundred bytes each).
MODELS_KEPT = 10_000
_MINUTE = timedelta(minutes=1)


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
        found = self.store.timelines.request_models(missing) if missing else {}
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
        since = recent_since(now)
        groups: dict[str, list[Usage]] = {}
        for group in self.store.usage.of_batches(ids, since=since):
            groups.setdefault(group.batch_id, []).append(group)
        errors: dict[str, list[tuple[str, int]]] = {}
        for item in self.store.timelines.error_types(ids):
            errors.setdefault(item.batch_id, []).append((item.error_type, item.count))
        sent = {batch.id: Sent.of(groups.get(batch.id, [])) for batch in batches}
        throughputs = {
            batch.id: throughput_of(batch, sent[batch.id], since=since, now=now)
            for batch in batches
        }
        limits = read_limits(
            self.store, batches, models=self.models(ids), throughputs=throughputs, known=self.known
        )
        cards = []
        for batch in batches:
            found = limits[batch.id]
            cards.append(
                BatchCard(
                    batch=batch,
                    cost=cost_of(priced(groups.get(batch.id, [])), self.prices),
                    throughput=throughputs[batch.id],
                    limits=found.limits,
                    error_types=tuple(errors.get(batch.id, [])),
                    first_answer_at=sent[batch.id].first_at,
                    last_answer_at=sent[batch.id].last_at,
                    runs=found.runs,
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
            latest_errors=tuple(self.store.timelines.latest_errors(batch.id, limit=LATEST_ERRORS)),
            retrying=tuple(self.store.timelines.retrying_requests(batch.id, limit=RETRYING_SHOWN)),
            models=self.models([batch.id])[batch.id],
        )


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
