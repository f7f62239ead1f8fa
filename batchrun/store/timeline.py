"""A batch over time, for the dashboard of ``batchrun serve``: answers per minute, recent
throughput, error types and the latest errors, and the rate limits in force.

The dashboard polls these every two seconds for each open page, so each method is one
statement that groups in the database and returns a few rows per batch (at most one per
minute for the series), never one per request. Answers are counted by
``results.completed_at``; what rate limits count is what was sent in real time, so the
series and the recent throughput leave out answers reused from the database (nothing was
sent) and those a provider batch gave (the batch lane does not draw on the limits).
Input tokens count as the limits count them: input plus cache writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    func,
    literal_column,
    select,
)

from batchrun.store import tables as t
from batchrun.store.base import StoreBase
from batchrun.store.history import epoch_bucket, limit_input_tokens, realtime_answers

# The series covers at most this many minutes (a day) that had answers.
MAX_SERIES_POINTS = 1440
# Error types that say the server pushed back (throttling rather than a bad request).
THROTTLE_ERROR_TYPES = ("rate_limit_error", "overloaded_error")


@dataclass(frozen=True)
class MinuteCounts:
    """The real-time answers of one batch in one minute (``minute``: its start, UTC):
    succeeded plus errored ``requests``, their tokens, how many of them ``errored``, and how
    many of those were throttled (a final 429 or 529: rate_limit_error, overloaded_error)."""

    minute: datetime
    requests: int
    input_tokens: int
    output_tokens: int
    errored: int
    throttled: int


@dataclass(frozen=True)
class UsageGroup:
    """A batch's answers (succeeded and errored results) of one kind: the model that
    answered (the request's when the answer names none), the lane, the share of the list
    price paid, and whether they were ``sent`` (False: reused from the database).

    ``answered`` counts them, ``with_usage`` those that report usage, whose tokens the token
    fields add up; ``first_at`` and ``last_at`` are the first and last ``completed_at``;
    the ``recent_*`` fields count those completed at the window's start or later, with
    their input tokens as limits count them (input plus cache writes) and output tokens.
    """

    batch_id: str
    model: str
    lane: str
    cost_factor: float
    sent: bool
    answered: int
    with_usage: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    first_at: datetime | None
    last_at: datetime | None
    recent_requests: int
    recent_input_tokens: int
    recent_output_tokens: int


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


class Timelines(StoreBase):
    """Statements on a batch over time."""

    def _epoch_minute(self) -> ColumnElement[int]:
        """``results.completed_at`` as whole minutes since the Unix epoch."""
        return epoch_bucket(
            t.results.c.completed_at, 60, dialect=self._engine.dialect.name, name="minute"
        )

    def minute_series(
        self, batch_id: str, *, max_points: int = MAX_SERIES_POINTS
    ) -> list[MinuteCounts]:
        """The batch's real-time answers per minute of ``completed_at`` (see
        :class:`MinuteCounts`), oldest first: the latest ``max_points`` minutes that had any
        (minutes without answers are not returned). One grouped statement over the batch's
        results. Measured on a 100,000-request batch with every result stored (2 kB prompts,
        1 kB answers) answered over 6 hours (360 points): 0.16 s on SQLite (a file on local
        disk), 0.13 s on Postgres 15 (local socket), warm caches.
        """
        res = t.results.c
        minute = self._epoch_minute()
        errored = res.result_type == t.ERRORED
        statement = (
            select(
                minute,
                func.count(),
                func.sum(limit_input_tokens()),
                func.sum(func.coalesce(res.output_tokens, 0)),
                func.sum(case((errored, 1), else_=0)),
                func.sum(
                    case((and_(errored, res.error_type.in_(THROTTLE_ERROR_TYPES)), 1), else_=0)
                ),
            )
            .where(res.batch_id == batch_id, realtime_answers())
            .group_by(literal_column("minute"))
            .order_by(literal_column("minute").desc())
            .limit(max_points)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [
            MinuteCounts(
                datetime.fromtimestamp(int(at) * 60, UTC),
                int(count),
                int(tokens_in or 0),
                int(tokens_out or 0),
                int(failed or 0),
                int(throttled or 0),
            )
            for at, count, tokens_in, tokens_out, failed, throttled in reversed(rows)
        ]

    def batch_usage(self, batch_ids: Sequence[str], *, since: datetime) -> list[UsageGroup]:
        """The answers of these batches grouped by kind (see :class:`UsageGroup`), with the
        window of recent answers starting at ``since``: what prices them and measures their
        throughput, in one grouped statement over their results. The request's model is
        looked up only for an answer that names none (no join with the requests: on a large
        batch that join is most of the time of ``usage_by_model``). Measured on a
        100,000-request batch with every result stored (2 kB prompts, 1 kB answers): 0.21 s
        on SQLite (a file on local disk), 0.14 s on Postgres 15 (local socket), warm caches;
        ``usage_by_model`` alone took 0.28 s and 0.27 s.
        """
        res, req = t.results.c, t.requests.c
        requested = select(req.model).where(req.id == res.request_id).scalar_subquery()
        model = func.coalesce(res.model, requested)
        lane = func.coalesce(res.lane, t.REALTIME)
        factor = func.coalesce(res.cost_factor, 1.0)
        sent = case((res.reused_from.is_(None), 1), else_=0)
        groups = (res.batch_id, model, lane, factor, sent)
        recent = res.completed_at >= since
        output = func.coalesce(res.output_tokens, 0)
        statement = (
            select(
                *groups,
                func.count(),
                func.count(res.input_tokens),
                func.coalesce(func.sum(res.input_tokens), 0),
                func.coalesce(func.sum(res.output_tokens), 0),
                func.coalesce(func.sum(res.cache_creation_input_tokens), 0),
                func.coalesce(func.sum(res.cache_read_input_tokens), 0),
                func.min(res.completed_at),
                func.max(res.completed_at),
                func.sum(case((recent, 1), else_=0)),
                func.sum(case((recent, limit_input_tokens()), else_=0)),
                func.sum(case((recent, output), else_=0)),
            )
            .where(
                res.batch_id.in_(list(batch_ids)),
                res.result_type.in_([t.SUCCEEDED, t.ERRORED]),
            )
            .group_by(*groups)
            .order_by(*groups)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [
            UsageGroup(
                batch_id,
                name,
                lane_name,
                float(share),
                bool(was_sent),
                int(count),
                int(priced),
                int(tokens_in),
                int(tokens_out),
                int(writes),
                int(reads),
                _utc(first),
                _utc(last),
                int(n or 0),
                int(n_in or 0),
                int(n_out or 0),
            )
            for (
                batch_id,
                name,
                lane_name,
                share,
                was_sent,
                count,
                priced,
                tokens_in,
                tokens_out,
                writes,
                reads,
                first,
                last,
                n,
                n_in,
                n_out,
            ) in rows
        ]

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


def _utc(value: Any) -> datetime | None:
    """An aggregate's time as an aware UTC datetime: ``min``/``max`` of a column come back
    without its type's conversion on SQLite (text there)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
