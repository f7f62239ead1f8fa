"""How long a batch's answers took per endpoint, for ``batchrun report``: the spread per
endpoint and every distinct latency, streamed.

Every method groups in the database and returns a row per endpoint or per distinct latency,
never one per request. Only answers sent in real time have a latency (not those reused from
the database, nor those a provider batch gave). The report's sends over time are
:mod:`batchrun.store.series`; its cost over time, :mod:`batchrun.store.usage`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, literal_column, select

from batchrun.store import tables as t
from batchrun.store.base import Section
from batchrun.store.series import realtime_answers

# How many rows the database hands over at a time while latencies stream.
_STREAM_ROWS = 5_000


@dataclass(frozen=True)
class LatencySpread:
    """How many answers one endpoint gave the batch (for a pool: the member) with a latency,
    and the least and most of them, in milliseconds."""

    endpoint: str
    count: int
    min_ms: int
    max_ms: int


class Latencies(Section):
    """Statements on a batch's whole history."""

    def spreads(self, batch_id: str) -> list[LatencySpread]:
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

    def iter_answers(self, batch_id: str) -> Iterator[tuple[str, int, int]]:
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
