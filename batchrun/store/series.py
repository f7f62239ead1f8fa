"""Answers per time bucket: the one statement behind the dashboard's answers per minute and
the report's sends over time (:func:`read_answer_series`), and the column expressions it
shares with :mod:`batchrun.store.usage` and :mod:`batchrun.store.latencies`.

**The time axis is when the answer was sent** (``results.sent_at``: when its final attempt
left; answers stored before that column existed fall back to ``completed_at``), and failed
sends are placed at ``send_failures.sent_at``. That is the instant the rate limits count a
request at, and the one a 429 or 529 answers, so a bucket's answers, throttles and failed
sends line up with the limits shown beside them; an answer that took a minute to stream is
not counted a minute late. The latest bucket of a running batch still fills while the
requests sent in it are answered.

What rate limits count is what was sent in real time, so the series leaves out answers
reused from the database (nothing was sent) and those a provider batch gave (the batch lane
does not draw on the limits). Input tokens count as the limits count them: input plus cache
writes. A throttled answer is an errored result of one of :data:`THROTTLE_ERROR_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    and_,
    case,
    cast,
    extract,
    func,
    literal_column,
    or_,
    select,
)

from batchrun.records import Lane
from batchrun.store import tables as t
from batchrun.store.database import transaction

# The error types of a throttled answer: a 429 (rate_limit_error) or a 529 (overloaded_error).
RATE_LIMITED = "rate_limit_error"
OVERLOADED = "overloaded_error"
THROTTLE_ERROR_TYPES = (RATE_LIMITED, OVERLOADED)


@dataclass(frozen=True)
class AnswerBucket:
    """The real-time sends of one batch in one bucket (``start``: its first instant, UTC).

    ``answered`` counts the answers (succeeded and errored results) whose final attempt was
    sent in it, with their tokens (input as limits count it: input plus cache writes);
    ``errored`` those that ended the request errored, ``throttled`` those of them that were
    a final 429 or 529 (see :data:`THROTTLE_ERROR_TYPES`). ``failed`` counts the sends in it
    that failed transiently and went back to the queue, of which ``rate_limited`` were 429s
    and ``overloaded`` 529s.
    """

    start: datetime
    answered: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    errored: int = 0
    throttled: int = 0
    failed: int = 0
    rate_limited: int = 0
    overloaded: int = 0


def realtime_answers() -> ColumnElement[bool]:
    """Results that are answers sent in real time (what the rate limits count): succeeded
    or errored, not by a provider batch, not reused from the database."""
    res = t.results.c
    return and_(
        res.result_type.in_([t.SUCCEEDED, t.ERRORED]),
        func.coalesce(res.lane, Lane.REALTIME) == Lane.REALTIME,
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


def read_answer_series(
    conn: Connection, batch_id: str, *, width_s: int, max_buckets: int | None = None
) -> list[AnswerBucket]:
    """The batch's real-time sends per bucket of ``width_s`` seconds of when they were sent
    (see :class:`AnswerBucket` and the module), oldest first; buckets without sends are not
    returned, and with ``max_buckets`` only the latest that many are. Two grouped
    statements over the batch's rows: the answers, and the failed sends."""
    res, fail = t.results.c, t.send_failures.c
    dialect = conn.dialect.name
    bucket = epoch_bucket(
        func.coalesce(res.sent_at, res.completed_at), width_s, dialect=dialect, name="bucket"
    )
    errored = res.result_type == t.ERRORED
    throttled = and_(errored, res.error_type.in_(THROTTLE_ERROR_TYPES))
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
    failed_bucket = epoch_bucket(fail.sent_at, width_s, dialect=dialect, name="bucket")
    limited = or_(fail.http_status == 429, fail.error_type == RATE_LIMITED)
    overloaded = or_(fail.http_status == 529, fail.error_type == OVERLOADED)
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
    if max_buckets is not None:
        answers = answers.order_by(literal_column("bucket").desc()).limit(max_buckets)
        failures = failures.order_by(literal_column("bucket").desc()).limit(max_buckets)
    found: dict[int, dict[str, int]] = {}
    for at, count, tokens_in, tokens_out, n_errored, n_throttled in conn.execute(answers):
        found.setdefault(int(at), {}).update(
            answered=int(count),
            input_tokens=int(tokens_in or 0),
            output_tokens=int(tokens_out or 0),
            errored=int(n_errored or 0),
            throttled=int(n_throttled or 0),
        )
    for at, count, n_limited, n_overloaded in conn.execute(failures):
        found.setdefault(int(at), {}).update(
            failed=int(count),
            rate_limited=int(n_limited or 0),
            overloaded=int(n_overloaded or 0),
        )
    kept = sorted(found.items())
    if max_buckets is not None:
        kept = kept[-max_buckets:] if max_buckets > 0 else []
    return [
        AnswerBucket(datetime.fromtimestamp(at * width_s, UTC), **fields) for at, fields in kept
    ]


class SeriesReads:
    """The store's section that reads a batch over time (see the module)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def answers(
        self, batch_id: str, *, width_s: int, max_buckets: int | None = None
    ) -> list[AnswerBucket]:
        """:func:`read_answer_series` in a read transaction of its own. (The dashboard's
        per-minute answers alone, by ``completed_at``, measured 0.16 s on SQLite and 0.13 s
        on Postgres 15 on a 100,000-request batch answered over 6 hours; not measured again
        since the failed sends joined the series.)"""
        with transaction(self._engine, write=False) as conn:
            return read_answer_series(conn, batch_id, width_s=width_s, max_buckets=max_buckets)
