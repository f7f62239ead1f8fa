"""The counters a batch row keeps: its requests per reported state and the token totals of
its results, so that ``status``, ``list``, retrieve and ``/metrics`` read one row per batch
instead of aggregating every request and result of it.

The columns are ``batches.n_*`` (requests: ``n_processing`` for every open state, then one
per final state) and ``batches.sum_*`` (tokens of the batch's result rows). Every statement
that moves a request into or out of a final state, creates requests, writes results or
deletes them adds its change here, in its own transaction, with a relative update
(``SET n = n + :d``): several workers committing at once never lose a count. A new batch's
counters are set from its rows once they are all written (:func:`count_new_batch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from batchrun.store import tables as t

# Request state (open states together) → the counter column on batches.
COUNT_COLUMNS: dict[str, str] = {
    "processing": "n_processing",
    t.SUCCEEDED: "n_succeeded",
    t.ERRORED: "n_errored",
    t.CANCELED: "n_canceled",
    t.EXPIRED: "n_expired",
}
# Result token column → the total column on batches.
TOKEN_COLUMNS: dict[str, str] = {
    "input_tokens": "sum_input_tokens",
    "output_tokens": "sum_output_tokens",
    "cache_creation_input_tokens": "sum_cache_creation_input_tokens",
    "cache_read_input_tokens": "sum_cache_read_input_tokens",
}
_COLUMNS = (*COUNT_COLUMNS.values(), *TOKEN_COLUMNS.values())


def counted_as(state: str) -> str:
    """The counter a request in ``state`` counts in: ``processing`` for every open state."""
    return "processing" if state in t.OPEN_STATES else state


class CounterChanges:
    """Changes to the counters of some batches, gathered while a transaction writes and
    applied with :meth:`apply` before it commits."""

    def __init__(self) -> None:
        self._by_batch: dict[str, dict[str, int]] = {}

    def _add(self, batch_id: str, column: str, amount: int) -> None:
        if amount:
            per_batch = self._by_batch.setdefault(batch_id, {})
            per_batch[column] = per_batch.get(column, 0) + amount

    def moved(self, batch_id: str, from_state: str, to_state: str, count: int = 1) -> None:
        """``count`` requests of the batch went from ``from_state`` to ``to_state``."""
        before, after = COUNT_COLUMNS[counted_as(from_state)], COUNT_COLUMNS[counted_as(to_state)]
        if before != after:
            self._add(batch_id, before, -count)
            self._add(batch_id, after, count)

    def results(self, rows: Iterable[Mapping[Any, Any]], *, sign: int = 1) -> None:
        """Result rows (each with ``batch_id`` and the token columns) were written
        (``sign`` 1) or deleted (-1)."""
        for row in rows:
            for source, column in TOKEN_COLUMNS.items():
                self._add(row["batch_id"], column, sign * int(row[source] or 0))

    def apply(self, conn: Connection) -> None:
        """Add the gathered changes to the batches' counters (one statement; batches in id
        order, so concurrent transactions lock their rows in the same order)."""
        changed = {batch_id: d for batch_id, d in self._by_batch.items() if any(d.values())}
        self._by_batch = {}
        if not changed:
            return
        b = t.batches.c
        conn.execute(
            update(t.batches)
            .where(b.id == bindparam("bid"))
            .values({column: b[column] + bindparam(f"d_{column}") for column in _COLUMNS}),
            [
                {"bid": batch_id, **{f"d_{c}": changed[batch_id].get(c, 0) for c in _COLUMNS}}
                for batch_id in sorted(changed)
            ],
        )


def count_new_batch(conn: Connection, batch_id: str) -> None:
    """Set a batch's counters from its rows: for a batch being created, in the transaction
    that writes its rows (nobody else sees it before that commits)."""
    req, res = t.requests.c, t.results.c
    values: dict[str, Any] = dict.fromkeys(_COLUMNS, 0)
    for state, count in conn.execute(
        select(req.state, func.count()).where(req.batch_id == batch_id).group_by(req.state)
    ):
        column = COUNT_COLUMNS[counted_as(state)]
        values[column] += int(count)
    sums = conn.execute(
        select(*(func.coalesce(func.sum(res[source]), 0) for source in TOKEN_COLUMNS)).where(
            res.batch_id == batch_id
        )
    ).one()
    for column, total in zip(TOKEN_COLUMNS.values(), sums, strict=True):
        values[column] = int(total)
    conn.execute(update(t.batches).where(t.batches.c.id == batch_id).values(**values))
