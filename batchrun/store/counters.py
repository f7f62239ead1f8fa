"""The counters a batch keeps, so that ``status``, ``list``, retrieve, the progress line and
budgets read a few rows per batch instead of aggregating every request and result of it.

On the batch row: its requests per reported state (``batches.n_*``: ``n_processing`` for
every open state, then one per final state), the token totals of its results (``sum_*``),
its reused results (``n_reused``) and its last answer (``last_completed_at``; its first
claim, ``first_started_at``, is set by the claim, see ``batchrun.store.leases``). Beside it,
per batch and key (``batchrun.store.breakdowns``): usage per model, lane and price share,
errored results per error type, answers per endpoint, held requests per model.

Every statement that creates requests, moves one into or out of a final state, or writes
results adds its change to a :class:`CounterChanges` and applies it in its own transaction,
with relative updates (``SET n = n + :d``): several workers committing at once never lose a
count. Statements that delete results, or write them from a ``SELECT`` the Python side does
not see, ask for the batch to be counted again from its rows (:meth:`CounterChanges.recount`):
those are rare, user-driven writes (retry, a provider batch's leftovers), so only they pay
for the batch's size.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, Update, and_, bindparam, case, func, or_, select, update

from batchrun.store import breakdowns as bd
from batchrun.store import repair_counts as rc
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
_COLUMNS = (*COUNT_COLUMNS.values(), *TOKEN_COLUMNS.values(), "n_reused", "n_repairs")

# What a written result row must carry (a dict with these keys, or a RETURNING of
# :func:`counted_result_columns`) for :meth:`CounterChanges.results` to count it.
COUNTED_RESULT_COLUMNS = (
    "request_id",
    "batch_id",
    "result_type",
    "model",
    "lane",
    "cost_factor",
    "reused_from",
    "error_type",
    "error_message",
    "completed_at",
    "endpoint",
    *TOKEN_COLUMNS,
    # Counted per model only (``batch_usage``), where costs are read.
    "cache_creation_1h_input_tokens",
)


def counted_result_columns() -> list[Column[Any]]:
    """The columns of ``results`` a RETURNING gives :meth:`CounterChanges.results`."""
    return [t.results.c[name] for name in COUNTED_RESULT_COLUMNS]


def counted_as(state: str) -> str:
    """The counter a request in ``state`` counts in: ``processing`` for every open state."""
    return "processing" if state in t.OPEN_STATES else state


class CounterChanges:
    """Changes to the counters of some batches, gathered while a transaction writes and
    applied with :meth:`apply` before it commits."""

    def __init__(self) -> None:
        self._by_batch: dict[str, dict[str, int]] = {}
        self._last_completed: dict[str, datetime] = {}
        self._breakdowns = bd.Breakdowns()
        self._repairs = rc.RepairTally()
        self._recount: set[str] = set()

    def _add(self, batch_id: str, column: str, amount: int) -> None:
        if amount:
            per_batch = self._by_batch.setdefault(batch_id, {})
            per_batch[column] = per_batch.get(column, 0) + amount

    def created(self, batch_id: str, state: str, count: int = 1) -> None:
        """``count`` new requests of the batch, in ``state``."""
        self._add(batch_id, COUNT_COLUMNS[counted_as(state)], count)

    def moved(self, batch_id: str, from_state: str, to_state: str, count: int = 1) -> None:
        """``count`` requests of the batch went from ``from_state`` to ``to_state``."""
        before, after = COUNT_COLUMNS[counted_as(from_state)], COUNT_COLUMNS[counted_as(to_state)]
        if before != after:
            self._add(batch_id, before, -count)
            self._add(batch_id, after, count)

    def results(self, rows: Iterable[Mapping[Any, Any]], *, sign: int = 1) -> None:
        """Result rows were written (``sign`` 1; each row with the keys of
        COUNTED_RESULT_COLUMNS) or deleted (-1; ``batch_id`` and the token columns are
        enough: the batch's breakdowns are counted again from its rows)."""
        for row in rows:
            batch_id = row["batch_id"]
            for source, column in TOKEN_COLUMNS.items():
                self._add(batch_id, column, sign * int(row[source] or 0))
            if sign < 0:
                self._recount.add(batch_id)
                continue
            if row["reused_from"] is not None:
                self._add(batch_id, "n_reused", 1)
            if row["result_type"] in (t.SUCCEEDED, t.ERRORED):
                completed: datetime = row["completed_at"]
                last = self._last_completed.get(batch_id)
                if last is None or completed > last:
                    self._last_completed[batch_id] = completed
            self._breakdowns.add_result(row)

    def turn_tokens(
        self, batch_id: str, key: tuple[str, str, float], tokens: Sequence[int]
    ) -> None:
        """An answer that did not match its schema was kept (``answer_turns``): its tokens
        (see ``repair_counts.TOKENS``) count in the batch's totals and its usage under
        ``key`` (model, lane, cost factor), with no answer counted (its request is open)."""
        for column, value in zip(TOKEN_COLUMNS.values(), tokens, strict=True):
            self._add(batch_id, column, value)
        self._breakdowns.add_tokens((batch_id, *key), tokens)

    def repair_send(
        self, batch_id: str, key: tuple[str, str, float], tokens: Sequence[int]
    ) -> None:
        """A repair send's answer was written (a turn or a result): one more in
        ``n_repairs``, its tokens in ``batch_repairs`` under ``key``."""
        self._add(batch_id, "n_repairs", 1)
        self._repairs.add((batch_id, *key), tokens)

    def recount(self, batch_id: str) -> None:
        """Count the batch again from its rows when these changes are applied (after results
        were deleted, or written where the Python side did not see them)."""
        self._recount.add(batch_id)

    def apply(self, conn: Connection) -> None:
        """Add the gathered changes to the batches' counters (batches in id order, then their
        breakdowns in key order, so concurrent transactions lock rows in the same order),
        then count again from their rows the batches that asked for it."""
        changed = {batch_id: d for batch_id, d in self._by_batch.items() if any(d.values())}
        last_completed, self._last_completed = self._last_completed, {}
        self._by_batch = {}
        touched = sorted(set(changed) | set(last_completed))
        if touched:
            conn.execute(
                _add_to_counters(),
                [
                    {
                        "bid": batch_id,
                        "last": last_completed.get(batch_id),
                        **{f"d_{c}": changed.get(batch_id, {}).get(c, 0) for c in _COLUMNS},
                    }
                    for batch_id in touched
                ],
            )
        self._breakdowns.apply(conn)
        self._repairs.apply(conn)
        recount, self._recount = self._recount, set()
        if recount:
            recount_batches(conn, sorted(recount))


@functools.cache
def _add_to_counters() -> Update:
    """Add ``:d_<column>`` to each counter of the batch ``:bid``, and make ``:last`` its last
    answer when it is later (or the first). Built once: building it cost more than running
    it, in every group commit."""
    b = t.batches.c
    at = bindparam("last", type_=t.UtcDateTime())
    last = b.last_completed_at
    later = and_(at.is_not(None), or_(last.is_(None), last < at))
    values: dict[str, Any] = {column: b[column] + bindparam(f"d_{column}") for column in _COLUMNS}
    values["last_completed_at"] = case((later, at), else_=b.last_completed_at)
    return update(t.batches).where(b.id == bindparam("bid")).values(values)


def recount_batches(conn: Connection, batch_ids: list[str]) -> None:
    """Set these batches' counters (the row's and the breakdowns) from their rows."""
    req, res = t.requests.c, t.results.c
    for batch_id in batch_ids:
        values: dict[str, Any] = dict.fromkeys(_COLUMNS, 0)
        for state, count in conn.execute(
            select(req.state, func.count()).where(req.batch_id == batch_id).group_by(req.state)
        ):
            values[COUNT_COLUMNS[counted_as(state)]] += int(count)
        sums = conn.execute(
            select(
                *(func.coalesce(func.sum(res[source]), 0) for source in TOKEN_COLUMNS),
                func.count(res.reused_from),
            ).where(res.batch_id == batch_id)
        ).one()
        for column, value in zip((*TOKEN_COLUMNS.values(), "n_reused"), sums, strict=True):
            values[column] = int(value)
        values["first_started_at"] = (
            select(func.min(req.started_at)).where(req.batch_id == batch_id).scalar_subquery()
        )
        values["last_completed_at"] = (
            select(func.max(res.completed_at))
            .where(res.batch_id == batch_id, res.result_type.in_([t.SUCCEEDED, t.ERRORED]))
            .scalar_subquery()
        )
        conn.execute(update(t.batches).where(t.batches.c.id == batch_id).values(**values))
    bd.recount(conn, batch_ids)
    rc.recount(conn, batch_ids)
