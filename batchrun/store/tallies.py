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
  final state, with the same ``attempts``), joined to ``requests`` for the requested model:
  the one statement of usage by model (:func:`batchrun.store.usage.read_usage`), asked per
  request, so the same scan gives the requests per final state and what they used.

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
from batchrun.store.base import Section
from batchrun.store.usage import Usage, read_usage


@dataclass(frozen=True)
class BatchEnd:
    """A batch's endpoint (a pool's name for a pool) and when it ended (None: it has not)."""

    id: str
    endpoint: str
    ended_at: datetime | None


@dataclass(frozen=True)
class RequestTally:
    """Requests of one batch × requested model × state, and what they sent: ``sends`` sums
    the requests' attempts, ``sent`` counts the requests sent at least once."""

    batch_id: str
    model: str
    state: str
    requests: int
    sends: int
    sent: int


@dataclass(frozen=True)
class RequestTotals:
    """The totals of some batches, read in one transaction: their requests per state
    (``requests``, see :class:`RequestTally`) and what their answers used, per requested
    model too (``usage``, see :class:`~batchrun.store.usage.Usage`)."""

    requests: tuple[RequestTally, ...]
    usage: tuple[Usage, ...]


@dataclass(frozen=True)
class FailedSendCount:
    """Sends that failed transiently and went back to the queue, of one endpoint (a pool's
    member) × requested model × ``reason``: ``rate_limited`` (429), ``overloaded`` (529),
    ``server_error`` (another 5xx), ``transport`` (no answer) or ``other``."""

    endpoint: str
    model: str
    reason: str
    count: int


class Tallies(Section):
    """Statements that total the job table."""

    def batch_ends(self) -> list[BatchEnd]:
        """Every batch's id, endpoint and end (see :class:`BatchEnd`), by id."""
        b = t.batches.c
        with self._read() as conn:
            rows = conn.execute(select(b.id, b.endpoint, b.ended_at).order_by(b.id)).all()
        return [BatchEnd(*row) for row in rows]

    def requests(self, batch_ids: Collection[str] | None = None) -> RequestTotals:
        """The requests of these batches (None: of every batch) totalled per batch × model ×
        state (sorted by those), and their results' usage per requested model and state
        (:func:`~batchrun.store.usage.read_usage`), in one read transaction (see
        :class:`RequestTotals`)."""
        with self._read() as conn:
            unanswered = conn.execute(_open_requests(batch_ids)).all()
            usage = read_usage(conn, batch_ids, per_request=True)
        found: dict[tuple[str, str, str], list[int]] = {}
        for batch_id, model, state, *numbers in unanswered:
            found[(batch_id, model, state)] = [int(value) for value in numbers]
        for item in usage:
            if item.state is None:
                continue  # the tokens of answers repaired since: no request of their own
            key = (item.batch_id, item.requested_model or item.model, item.state)
            totals = found.setdefault(key, [0, 0, 0])
            totals[0] += item.answers
            totals[1] += item.sends
            totals[2] += item.sent_once
        tallies = tuple(RequestTally(*key, *numbers) for key, numbers in sorted(found.items()))
        return RequestTotals(tallies, tuple(usage))

    def failed_sends(self) -> list[FailedSendCount]:
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
