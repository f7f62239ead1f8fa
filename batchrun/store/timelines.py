"""A batch's errors and limits, for the dashboard of ``batchrun serve``: error types and the
latest errors, requests being retried, the models requests name, and the rate limits the
workers share.

The dashboard polls these every two seconds for each open page, so each method is one
statement that groups in the database and returns a few rows per batch, never one per
request. Its answers per minute are :mod:`batchrun.store.series`; what was used and what it
cost, :mod:`batchrun.store.usage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, select

from batchrun.store import tables as t
from batchrun.store.base import Section


@dataclass(frozen=True)
class ErrorTypeCount:
    """How many of a batch's results errored with one error type."""

    batch_id: str
    error_type: str
    count: int


@dataclass(frozen=True)
class LatestError:
    """One errored result: which request, when, the error's type, HTTP status and message."""

    custom_id: str
    completed_at: datetime
    error_type: str
    http_status: int | None
    message: str | None


@dataclass(frozen=True)
class RetryingRequest:
    """An open request whose last send failed transiently (it is queued for a retry or being
    sent again): ``last_error`` says how, ``attempts`` counts its sends so far."""

    custom_id: str
    last_error: str
    attempts: int


@dataclass(frozen=True)
class RateLimitRow:
    """One limit of a limiter key (endpoint × model or family pattern) as the workers share
    it, per minute in the dimension's unit: ``in_force`` is the rate of its bucket (None
    while the limit is heard of but not in force), ``announced`` what the server's headers
    said last, ``learned`` a lower limit learned from 429s. ``paused_until``: Unix seconds a
    429's or 529's pause of the key lasts (0 when none was ever set)."""

    endpoint: str
    model: str
    dimension: str
    in_force: float | None
    announced: float | None
    learned: float | None
    paused_until: float


class Timelines(Section):
    """Statements on a batch over time."""

    def error_types(self, batch_ids: Sequence[str]) -> list[ErrorTypeCount]:
        """Every error type of these batches' errored results with its count (types unknown
        to the result as ``unknown``), most frequent first within each batch. One grouped
        statement."""
        res = t.results.c
        count = func.count().label("n")
        statement = (
            select(res.batch_id, res.error_type, count)
            .where(res.batch_id.in_(list(batch_ids)), res.result_type == t.ERRORED)
            .group_by(res.batch_id, res.error_type)
            .order_by(res.batch_id, count.desc(), res.error_type)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [ErrorTypeCount(batch_id, kind or "unknown", int(n)) for batch_id, kind, n in rows]

    def latest_errors(self, batch_id: str, *, limit: int) -> list[LatestError]:
        """The batch's ``limit`` most recently completed errored results, newest first."""
        res = t.results.c
        statement = (
            select(
                res.custom_id, res.completed_at, res.error_type, res.http_status, res.error_message
            )
            .where(res.batch_id == batch_id, res.result_type == t.ERRORED)
            .order_by(res.completed_at.desc(), res.request_id.desc())
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [
            LatestError(custom_id, at, kind or "unknown", status, message)
            for custom_id, at, kind, status, message in rows
        ]

    def retrying_requests(self, batch_id: str, *, limit: int) -> list[RetryingRequest]:
        """Up to ``limit`` of the batch's open requests (queued or running) whose last send
        failed transiently, the most sent first."""
        req = t.requests.c
        statement: Select[Any] = (
            select(req.custom_id, req.last_error, req.attempts)
            .where(
                req.batch_id == batch_id,
                req.state.in_([t.QUEUED, t.RUNNING]),
                req.last_error.is_not(None),
            )
            .order_by(req.attempts.desc(), req.id)
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [RetryingRequest(custom_id, error, int(n)) for custom_id, error, n in rows]

    def request_models(self, batch_ids: Sequence[str]) -> dict[str, list[str]]:
        """The models the requests of these batches name, sorted, by batch id (what the
        limiter keys them by). One grouped statement."""
        req = t.requests.c
        statement = (
            select(req.batch_id, req.model)
            .where(req.batch_id.in_(list(batch_ids)))
            .group_by(req.batch_id, req.model)
            .order_by(req.batch_id, req.model)
        )
        found: dict[str, list[str]] = {}
        with self._read() as conn:
            for batch_id, model in conn.execute(statement):
                found.setdefault(batch_id, []).append(model)
        return found

    def rate_limit_rows(self, endpoints: Sequence[str]) -> list[RateLimitRow]:
        """The shared rate-limit records of these endpoints' keys (see
        :class:`RateLimitRow`), sorted by endpoint, model and dimension."""
        b, k = t.rate_buckets.c, t.rate_keys.c
        key = (b.endpoint, b.model, b.dimension)
        statement = (
            select(*key, b.rate_per_s, b.announced, b.learned, k.paused_until)
            .select_from(
                t.rate_buckets.outerjoin(
                    t.rate_keys, and_(k.endpoint == b.endpoint, k.model == b.model)
                )
            )
            .where(b.endpoint.in_(list(endpoints)))
            .order_by(*key)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [
            RateLimitRow(
                endpoint,
                model,
                dimension,
                rate * 60 if rate and rate > 0 else None,
                announced,
                learned,
                paused or 0.0,
            )
            for endpoint, model, dimension, rate, announced, learned, paused in rows
        ]
