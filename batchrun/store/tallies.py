"""Totals over the job table, for monitoring (``batchrun serve``'s ``/metrics``).

The job table is shared by every worker of the database, so these totals are right whichever
processes do the sending. They are read at every scrape, so they group in the database and
return a few rows per batch × model × state, never one per request; and a reader can keep
the totals of ended batches (which do not change while ``ended_at`` stays the same) and ask
only for the others.

Two statements for the requests, each reading only what it must (on SQLite a row's columns
after ``params`` or ``body`` cost a walk through the prompt's or answer's overflow pages):

- open requests (queued, running, provider), found through the ``(state, batch_id, id)``
  index, from ``requests``;
- final requests from their result rows (a final request has exactly one, written with its
  final state, with the same ``attempts``), joined to ``requests`` for the requested model.

One more groups the failed sends (``send_failures``: 429s, 529s, 5xx, transport failures)
by endpoint, model and reason; it reads every failed send the database holds, which stays
small beside the requests (a failure is a row only until its batch is deleted).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, select

from batchrun.store import tables as t
from batchrun.store.base import StoreBase


@dataclass(frozen=True)
class BatchEnd:
    """A batch's endpoint (a pool's name for a pool) and when it ended (None: it has not)."""

    id: str
    endpoint: str
    ended_at: datetime | None


@dataclass(frozen=True)
class RequestTally:
    """Requests of one batch × model × state with the same kind of result (the model that
    answered, the lane, the share of the list price paid), and what they sent and used.

    ``model`` is the request's. ``answered_model`` is the one the result names (None
    without a result, or when the result names none); ``lane`` and ``cost_factor`` are the
    result's (``realtime`` and 1.0 without one). ``sends`` sums the requests' attempts,
    ``sent`` counts the requests sent at least once; ``with_usage`` counts the results that
    report usage, whose tokens the token fields add up.
    """

    batch_id: str
    model: str
    state: str
    answered_model: str | None
    lane: str
    cost_factor: float
    requests: int
    sends: int
    sent: int
    with_usage: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


@dataclass(frozen=True)
class FailedSendCount:
    """Sends that failed transiently and went back to the queue, of one endpoint (a pool's
    member) × requested model × ``reason``: ``rate_limited`` (429), ``overloaded`` (529),
    ``server_error`` (another 5xx), ``transport`` (no answer) or ``other``."""

    endpoint: str
    model: str
    reason: str
    count: int


class Tallies(StoreBase):
    """Statements that total the job table."""

    def batch_ends(self) -> list[BatchEnd]:
        """Every batch's id, endpoint and end (see :class:`BatchEnd`), by id."""
        b = t.batches.c
        with self._read() as conn:
            rows = conn.execute(select(b.id, b.endpoint, b.ended_at).order_by(b.id)).all()
        return [BatchEnd(*row) for row in rows]

    def request_tallies(self, batch_ids: Collection[str] | None = None) -> list[RequestTally]:
        """The requests of these batches (None: of every batch) totalled per batch × model ×
        state × kind of result (see :class:`RequestTally`), in one read transaction; sorted
        by batch, model and state."""
        with self._read() as conn:
            unanswered = conn.execute(_open_requests(batch_ids)).all()
            answered = conn.execute(_final_requests(batch_ids)).all()
        tallies = [
            RequestTally(
                batch_id=batch_id,
                model=model,
                state=state,
                answered_model=None,
                lane=t.REALTIME,
                cost_factor=1.0,
                requests=int(requests),
                sends=int(sends),
                sent=int(sent),
                with_usage=0,
                input_tokens=0,
                output_tokens=0,
                cache_creation_input_tokens=0,
                cache_read_input_tokens=0,
            )
            for batch_id, model, state, requests, sends, sent in unanswered
        ]
        for batch_id, model, state, answered_model, lane, factor, *numbers in answered:
            requests, sends, sent, with_usage, tokens_in, tokens_out, writes, reads = (
                int(value) for value in numbers
            )
            tallies.append(
                RequestTally(
                    batch_id=batch_id,
                    model=model,
                    state=state,
                    answered_model=answered_model,
                    lane=lane,
                    cost_factor=float(factor),
                    requests=requests,
                    sends=sends,
                    sent=sent,
                    with_usage=with_usage,
                    input_tokens=tokens_in,
                    output_tokens=tokens_out,
                    cache_creation_input_tokens=writes,
                    cache_read_input_tokens=reads,
                )
            )
        tallies.sort(key=_order)
        return tallies

    def failed_send_counts(self) -> list[FailedSendCount]:
        """Every failed send the database holds, counted per endpoint × model × reason
        (see :class:`FailedSendCount`), sorted. One grouped statement."""
        fail, req = t.send_failures.c, t.requests.c
        status = fail.http_status
        reason = case(
            (status == 429, "rate_limited"),
            (status == 529, "overloaded"),
            (status.between(500, 599), "server_error"),
            (status.is_(None), "transport"),
            else_="other",
        ).label("reason")
        endpoint = func.coalesce(fail.endpoint, "unknown").label("answered_by")
        statement = (
            select(endpoint, req.model, reason, func.count())
            .select_from(t.send_failures.join(t.requests, req.id == fail.request_id))
            .group_by(endpoint, req.model, reason)
            .order_by(endpoint, req.model, reason)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [FailedSendCount(name, model, why, int(n)) for name, model, why, n in rows]


def _open_requests(batch_ids: Collection[str] | None) -> Select[Any]:
    req = t.requests.c
    groups = (req.batch_id, req.model, req.state)
    statement = (
        select(
            *groups,
            func.count(),
            func.coalesce(func.sum(req.attempts), 0),
            func.coalesce(func.sum(case((req.attempts > 0, 1), else_=0)), 0),
        )
        .where(req.state.in_(t.OPEN_STATES))
        .group_by(*groups)
    )
    return statement if batch_ids is None else statement.where(req.batch_id.in_(batch_ids))


def _final_requests(batch_ids: Collection[str] | None) -> Select[Any]:
    req, res = t.requests.c, t.results.c
    groups = (
        res.batch_id,
        req.model,
        res.result_type,
        res.model,
        func.coalesce(res.lane, t.REALTIME),
        func.coalesce(res.cost_factor, 1.0),
    )
    statement = (
        select(
            *groups,
            func.count(),
            func.coalesce(func.sum(res.attempts), 0),
            func.coalesce(func.sum(case((res.attempts > 0, 1), else_=0)), 0),
            func.count(res.input_tokens),
            func.coalesce(func.sum(res.input_tokens), 0),
            func.coalesce(func.sum(res.output_tokens), 0),
            func.coalesce(func.sum(res.cache_creation_input_tokens), 0),
            func.coalesce(func.sum(res.cache_read_input_tokens), 0),
        )
        .select_from(t.results.join(t.requests, req.id == res.request_id))
        .group_by(*groups)
    )
    return statement if batch_ids is None else statement.where(res.batch_id.in_(batch_ids))


def _order(tally: RequestTally) -> tuple[str, str, str, str, str, float]:
    return (
        tally.batch_id,
        tally.model,
        tally.state,
        tally.answered_model or "",
        tally.lane,
        tally.cost_factor,
    )
