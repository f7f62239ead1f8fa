"""A batch's whole history, for ``batchrun report``: what was sent when, what failed and was
sent again, what each answer cost when, and how long answers took per endpoint.

Every method groups in the database and returns a row per time bucket (or per distinct
latency), never one per request, so a report of a 100,000-request batch reads a few thousand
rows. Time buckets are ``width_s`` seconds wide, counted from the Unix epoch (a bucket's
start is a multiple of the width, in UTC).

Sends are placed at ``results.sent_at`` (when the final attempt was sent; answers stored
before that column existed fall back to ``completed_at``) and failed sends at
``send_failures.sent_at``; costs and errors at the answer's ``completed_at``. What rate
limits count is what was sent in real time: the send series leaves out answers reused from
the database and those a provider batch gave.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    and_,
    case,
    cast,
    extract,
    func,
    literal_column,
    select,
)

from batchrun.store import tables as t
from batchrun.store.base import StoreBase

# How many rows the database hands over at a time while latencies stream.
_STREAM_ROWS = 5_000
# The error types of a throttled answer: a 429 (rate_limit_error) or a 529 (overloaded_error).
RATE_LIMITED = "rate_limit_error"
OVERLOADED = "overloaded_error"


@dataclass(frozen=True)
class SendBucket:
    """The real-time sends of one bucket (``start``: its first instant, UTC): ``answered``
    counts final attempts sent in it with their tokens (input as limits count it: input plus
    cache writes); ``failed`` the sends that failed transiently and went back to the queue,
    of which ``rate_limited`` were 429s and ``overloaded`` 529s; ``errored`` the answers
    sent in it that ended the request errored, ``errored_throttled`` those of them that were
    a final 429 or 529."""

    start: datetime
    answered: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    failed: int = 0
    rate_limited: int = 0
    overloaded: int = 0
    errored: int = 0
    errored_throttled: int = 0


@dataclass(frozen=True)
class CostBucket:
    """The answers completed in one bucket for one model, lane and share of the list price
    (``cost_factor``; 0 for an answer reused from the database): their token totals."""

    start: datetime
    model: str
    lane: str
    cost_factor: float
    answers: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


@dataclass(frozen=True)
class LatencySpread:
    """How many answers one endpoint gave the batch (for a pool: the member) with a latency,
    and the least and most of them, in milliseconds."""

    endpoint: str
    count: int
    min_ms: int
    max_ms: int


def realtime_answers() -> ColumnElement[bool]:
    """Results that are answers sent in real time (what the rate limits count): succeeded
    or errored, not by a provider batch, not reused from the database."""
    res = t.results.c
    return and_(
        res.result_type.in_([t.SUCCEEDED, t.ERRORED]),
        func.coalesce(res.lane, t.REALTIME) == t.REALTIME,
        res.reused_from.is_(None),
    )


def limit_input_tokens() -> ColumnElement[Any]:
    """A result's input tokens as the limits count them: input plus cache writes."""
    res = t.results.c
    return func.coalesce(res.input_tokens, 0) + func.coalesce(res.cache_creation_input_tokens, 0)


def epoch_bucket(
    column: ColumnElement[Any], width_s: int, *, dialect: str, name: str
) -> ColumnElement[int]:
    """A time ``column`` as whole buckets of ``width_s`` seconds since the Unix epoch,
    labelled ``name``. The width is a literal, not a bound parameter: the expression appears
    in GROUP BY as in the select list."""
    if dialect == "sqlite":
        # Stored as naive UTC text; strftime('%s') reads it as UTC.
        seconds: ColumnElement[Any] = cast(func.strftime(literal_column("'%s'"), column), Integer)
    else:
        seconds = cast(func.floor(extract("epoch", column)), BigInteger)
    return (seconds // literal_column(str(int(width_s)), Integer)).label(name)


class Histories(StoreBase):
    """Statements on a batch's whole history."""

    def _bucket(self, column: ColumnElement[Any], width_s: int) -> ColumnElement[int]:
        return epoch_bucket(column, width_s, dialect=self._engine.dialect.name, name="bucket")

    def send_series(self, batch_id: str, *, width_s: int) -> list[SendBucket]:
        """The batch's real-time sends per bucket of ``width_s`` seconds (see
        :class:`SendBucket`), oldest first; buckets without sends are not returned. Two
        grouped statements: the answers, and the failed sends."""
        res, fail = t.results.c, t.send_failures.c
        sent_at = func.coalesce(res.sent_at, res.completed_at)
        bucket = self._bucket(sent_at, width_s)
        errored = res.result_type == t.ERRORED
        throttled = and_(errored, res.error_type.in_([RATE_LIMITED, OVERLOADED]))
        answers = (
            select(
                bucket,
                func.count(),
                func.sum(limit_input_tokens()),
                func.sum(func.coalesce(res.output_tokens, 0)),
                func.sum(case((errored, 1), else_=0)),
                func.sum(case((throttled, 1), else_=0)),
            )
            .where(res.batch_id == batch_id, realtime_answers())
            .group_by(literal_column("bucket"))
        )
        failed_bucket = self._bucket(fail.sent_at, width_s)
        limited = (fail.http_status == 429) | (fail.error_type == RATE_LIMITED)
        overloaded = (fail.http_status == 529) | (fail.error_type == OVERLOADED)
        failures = (
            select(
                failed_bucket,
                func.count(),
                func.sum(case((limited, 1), else_=0)),
                func.sum(case((and_(overloaded, ~limited), 1), else_=0)),
            )
            .where(fail.batch_id == batch_id)
            .group_by(literal_column("bucket"))
        )
        found: dict[int, dict[str, int]] = {}
        with self._read() as conn:
            for at, count, tokens_in, tokens_out, n_errored, n_throttled in conn.execute(answers):
                found.setdefault(int(at), {}).update(
                    answered=int(count),
                    input_tokens=int(tokens_in or 0),
                    output_tokens=int(tokens_out or 0),
                    errored=int(n_errored or 0),
                    errored_throttled=int(n_throttled or 0),
                )
            for at, count, n_limited, n_overloaded in conn.execute(failures):
                found.setdefault(int(at), {}).update(
                    failed=int(count),
                    rate_limited=int(n_limited or 0),
                    overloaded=int(n_overloaded or 0),
                )
        return [
            SendBucket(datetime.fromtimestamp(at * width_s, UTC), **fields)
            for at, fields in sorted(found.items())
        ]

    def cost_series(self, batch_id: str, *, width_s: int) -> list[CostBucket]:
        """The batch's answers (succeeded and errored) that report usage, per bucket of
        ``completed_at`` × model × lane × share of the list price (see :class:`CostBucket`),
        oldest first. One grouped statement; the model is the request's where the answer
        names none."""
        res, req = t.results.c, t.requests.c
        requested = select(req.model).where(req.id == res.request_id).scalar_subquery()
        model = func.coalesce(res.model, requested)
        lane = func.coalesce(res.lane, t.REALTIME)
        factor = func.coalesce(res.cost_factor, 1.0)
        bucket = self._bucket(res.completed_at, width_s)
        statement = (
            select(
                bucket,
                model,
                lane,
                factor,
                func.count(),
                func.coalesce(func.sum(res.input_tokens), 0),
                func.coalesce(func.sum(res.output_tokens), 0),
                func.coalesce(func.sum(res.cache_creation_input_tokens), 0),
                func.coalesce(func.sum(res.cache_read_input_tokens), 0),
            )
            .where(
                res.batch_id == batch_id,
                res.result_type.in_([t.SUCCEEDED, t.ERRORED]),
                res.input_tokens.is_not(None),
            )
            .group_by(literal_column("bucket"), model, lane, factor)
            .order_by(literal_column("bucket"), model, lane, factor)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [
            CostBucket(
                datetime.fromtimestamp(int(at) * width_s, UTC),
                name,
                lane_name,
                float(share),
                int(count),
                int(tokens_in),
                int(tokens_out),
                int(writes),
                int(reads),
            )
            for at, name, lane_name, share, count, tokens_in, tokens_out, writes, reads in rows
        ]

    def latency_spreads(self, batch_id: str) -> list[LatencySpread]:
        """Per endpoint that answered the batch in real time (unknown: ``unknown``), how
        many answers have a latency, and the least and most. One grouped statement."""
        res = t.results.c
        endpoint = func.coalesce(res.endpoint, "unknown")
        statement = (
            select(endpoint, func.count(), func.min(res.latency_ms), func.max(res.latency_ms))
            .where(*self._timed_answers(batch_id))
            .group_by(endpoint)
            .order_by(endpoint)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [
            LatencySpread(name, int(count), int(least), int(most))
            for name, count, least, most in rows
        ]

    def iter_latencies(self, batch_id: str) -> Iterator[tuple[str, int, int]]:
        """``(endpoint, latency_ms, how many answers took it)`` for the batch's real-time
        answers, ordered by endpoint then latency, streamed: one row per distinct latency of
        an endpoint (in whole milliseconds), so memory stays that of a chunk."""
        res = t.results.c
        endpoint = func.coalesce(res.endpoint, "unknown").label("answered_by")
        statement = (
            select(endpoint, res.latency_ms, func.count())
            .where(*self._timed_answers(batch_id))
            .group_by(literal_column("answered_by"), res.latency_ms)
            .order_by(literal_column("answered_by"), res.latency_ms)
        )
        with self._read() as conn:
            chunks = conn.execution_options(yield_per=_STREAM_ROWS).execute(statement).partitions()
            for chunk in chunks:
                for name, latency_ms, count in chunk:
                    yield name, int(latency_ms), int(count)

    @staticmethod
    def _timed_answers(batch_id: str) -> tuple[ColumnElement[bool], ...]:
        """The batch's answers sent in real time whose latency is known."""
        res = t.results.c
        return (res.batch_id == batch_id, realtime_answers(), res.latency_ms.is_not(None))
