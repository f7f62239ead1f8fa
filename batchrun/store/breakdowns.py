"""A batch's counters per key, beside its row's (see ``batchrun.store.counters``): what
``status`` and budgets show of a batch, read without touching its requests or results.

- ``batch_usage``: per model (the answer's, else the request's), lane and share of the list
  price, the succeeded and errored results that report usage and their tokens: usage by
  model, priced as ``batchrun.store.usage.priced`` prices the aggregate.
- ``batch_errors``: per error type, the errored results and their least message (binary
  order: the same on SQLite, on Postgres whatever its collation, and in Python).
- ``batch_endpoints``: per endpoint, the succeeded and errored results it answered (sent, not
  reused).
- ``batch_held``: per model, the queued requests in lane ``held``.

Writers add to the first three through :class:`Breakdowns` (gathered by
``CounterChanges.results``; upserts with relative updates); the statements that move requests
into or out of ``held`` recount ``batch_held`` from the rows (:func:`recount_held`: they
touch every such row anyway). :func:`recount` sets all four from the rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, delete, func, insert, select

from batchrun.records import ErrorCount, Lane, ModelTokens
from batchrun.store import tables as t
from batchrun.store.database import dialect_insert

_TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_1h_input_tokens",
)
_ANSWERED = (t.SUCCEEDED, t.ERRORED)
_REALTIME = Lane.REALTIME.value


def binary(value: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """``value`` compared in binary (code point) order: SQLite's default; Postgres's "C"."""
    return value.collate("C") if dialect == "postgresql" else value


class Breakdowns:
    """Additions to the per-key counters, gathered from written result rows and applied in
    the writer's transaction."""

    def __init__(self) -> None:
        # (batch, model, lane, cost factor) → [answers, tokens...]
        self._usage: dict[tuple[str, str, str, float], list[int]] = {}
        # Rows with usage whose answer names no model: (request id, batch, lane, factor, tokens)
        self._unnamed: list[tuple[int, str, str, float, list[int]]] = []
        # (batch, error type) → [results, least message]
        self._errors: dict[tuple[str, str], list[Any]] = {}
        self._endpoints: dict[tuple[str, str], int] = {}

    def add_result(self, row: Mapping[Any, Any]) -> None:
        """A result row was written (its keys: ``COUNTED_RESULT_COLUMNS``)."""
        batch_id, kind = row["batch_id"], row["result_type"]
        if kind not in _ANSWERED:
            return
        if row["input_tokens"] is not None:
            lane = row["lane"] or _REALTIME
            factor = 1.0 if row["cost_factor"] is None else float(row["cost_factor"])
            tokens = [int(row[name] or 0) for name in _TOKENS]
            if row["model"] is None:
                self._unnamed.append((row["request_id"], batch_id, lane, factor, tokens))
            else:
                self._add_usage((batch_id, row["model"], lane, factor), tokens)
        if kind == t.ERRORED:
            seen = self._errors.setdefault((batch_id, row["error_type"] or ""), [0, None])
            seen[0] += 1
            message = row["error_message"]
            if message is not None and (seen[1] is None or message < seen[1]):
                seen[1] = message
        if row["endpoint"] is not None and row["reused_from"] is None:
            key = (batch_id, row["endpoint"])
            self._endpoints[key] = self._endpoints.get(key, 0) + 1

    def add_tokens(self, key: tuple[str, str, str, float], tokens: Sequence[int]) -> None:
        """Tokens of an answer that is no result (``answer_turns``): usage, no answer."""
        totals = self._usage.setdefault(key, [0] * (1 + len(_TOKENS)))
        for index, value in enumerate(tokens, start=1):
            totals[index] += value

    def _add_usage(self, key: tuple[str, str, str, float], tokens: list[int]) -> None:
        totals = self._usage.setdefault(key, [0] * (1 + len(_TOKENS)))
        totals[0] += 1
        for index, value in enumerate(tokens, start=1):
            totals[index] += value

    def apply(self, conn: Connection) -> None:
        """Add what was gathered (upserts in key order), and forget it."""
        if self._unnamed:
            ids = [item[0] for item in self._unnamed]
            req = t.requests.c
            models = dict(conn.execute(select(req.id, req.model).where(req.id.in_(ids))).all())
            for request_id, batch_id, lane, factor, tokens in self._unnamed:
                self._add_usage((batch_id, models.get(request_id, ""), lane, factor), tokens)
            self._unnamed = []
        usage, self._usage = self._usage, {}
        errors, self._errors = self._errors, {}
        endpoints, self._endpoints = self._endpoints, {}
        dialect = conn.dialect.name
        if usage:
            conn.execute(
                _add_usage(dialect),
                [
                    {
                        "batch_id": key[0],
                        "model": key[1],
                        "lane": key[2],
                        "cost_factor": key[3],
                        "answers": totals[0],
                        **dict(zip(_TOKENS, totals[1:], strict=True)),
                    }
                    for key, totals in sorted(usage.items())
                ],
            )
        if errors:
            conn.execute(
                _add_errors(dialect),
                [
                    {"batch_id": key[0], "error_type": key[1], "results": n, "example": example}
                    for key, (n, example) in sorted(errors.items())
                ],
            )
        if endpoints:
            conn.execute(
                _add_endpoints(dialect),
                [
                    {"batch_id": key[0], "endpoint": key[1], "answers": n}
                    for key, n in sorted(endpoints.items())
                ],
            )


# The upserts of every group commit, built once per dialect: building one, and SQLAlchemy's
# cache key for it, cost more than running it.


@functools.cache
def _add_usage(dialect: str) -> Any:
    """Upsert ``batch_usage`` rows, adding to the answers and tokens of a key that has one."""
    statement = dialect_insert(dialect)(t.batch_usage)
    u = t.batch_usage.c
    return statement.on_conflict_do_update(
        index_elements=[u.batch_id, u.model, u.lane, u.cost_factor],
        set_={name: u[name] + statement.excluded[name] for name in ("answers", *_TOKENS)},
    )


@functools.cache
def _add_errors(dialect: str) -> Any:
    """Upsert ``batch_errors`` rows, adding to the results of a type that has one and
    keeping the least example (binary order)."""
    statement = dialect_insert(dialect)(t.batch_errors)
    e = t.batch_errors.c
    new = statement.excluded.example
    less = binary(new, dialect) < binary(e.example, dialect)
    return statement.on_conflict_do_update(
        index_elements=[e.batch_id, e.error_type],
        set_={
            "results": e.results + statement.excluded.results,
            "example": case(
                (new.is_(None), e.example),
                (e.example.is_(None), new),
                (less, new),
                else_=e.example,
            ),
        },
    )


@functools.cache
def _add_endpoints(dialect: str) -> Any:
    """Upsert ``batch_endpoints`` rows, adding to the answers of an endpoint that has one."""
    statement = dialect_insert(dialect)(t.batch_endpoints)
    p = t.batch_endpoints.c
    return statement.on_conflict_do_update(
        index_elements=[p.batch_id, p.endpoint],
        set_={"answers": p.answers + statement.excluded.answers},
    )


# -- counting from the rows ---------------------------------------------------------------


def recount(conn: Connection, batch_ids: Sequence[str]) -> None:
    """Set the four breakdowns of these batches from their rows."""
    res, req = t.results.c, t.requests.c
    dialect = conn.dialect.name
    for table in (t.batch_usage, t.batch_errors, t.batch_endpoints):
        conn.execute(delete(table).where(table.c.batch_id.in_(batch_ids)))
    answered = res.result_type.in_(_ANSWERED)
    in_batches = res.batch_id.in_(batch_ids)
    model = func.coalesce(res.model, req.model)
    lane = func.coalesce(res.lane, _REALTIME)
    factor = func.coalesce(res.cost_factor, 1.0)
    usage_keys = (res.batch_id, model, lane, factor)
    conn.execute(
        insert(t.batch_usage).from_select(
            ["batch_id", "model", "lane", "cost_factor", "answers", *_TOKENS],
            select(
                *usage_keys,
                func.count(),
                *(func.coalesce(func.sum(res[name]), 0) for name in _TOKENS),
            )
            .select_from(t.results.join(t.requests, req.id == res.request_id))
            .where(in_batches, answered, res.input_tokens.is_not(None))
            .group_by(*usage_keys),
        )
    )
    kind = func.coalesce(res.error_type, "")
    conn.execute(
        insert(t.batch_errors).from_select(
            ["batch_id", "error_type", "results", "example"],
            select(res.batch_id, kind, func.count(), func.min(binary(res.error_message, dialect)))
            .where(in_batches, res.result_type == t.ERRORED)
            .group_by(res.batch_id, kind),
        )
    )
    conn.execute(
        insert(t.batch_endpoints).from_select(
            ["batch_id", "endpoint", "answers"],
            select(res.batch_id, res.endpoint, func.count())
            .where(in_batches, answered, res.endpoint.is_not(None), res.reused_from.is_(None))
            .group_by(res.batch_id, res.endpoint),
        )
    )
    recount_held(conn, batch_ids)


def recount_held(conn: Connection, batch_ids: Sequence[str]) -> None:
    """Set ``batch_held`` of these batches from their requests."""
    req = t.requests.c
    conn.execute(delete(t.batch_held).where(t.batch_held.c.batch_id.in_(batch_ids)))
    conn.execute(
        insert(t.batch_held).from_select(
            ["batch_id", "model", "requests"],
            select(req.batch_id, req.model, func.count())
            .where(req.batch_id.in_(batch_ids), req.state == t.QUEUED, req.lane == t.HELD)
            .group_by(req.batch_id, req.model),
        )
    )


def delete_batches(conn: Connection, batch_ids: Sequence[str]) -> None:
    """Delete the breakdowns of these batches (before the batches themselves)."""
    for table in (t.batch_usage, t.batch_errors, t.batch_endpoints, t.batch_held):
        conn.execute(delete(table).where(table.c.batch_id.in_(batch_ids)))


# -- reading ------------------------------------------------------------------------------


def usage_of(conn: Connection, batch_ids: Sequence[str]) -> dict[str, list[ModelTokens]]:
    """Per batch (every one asked for, empty when it has none): its usage by model, lane
    and price share, in that order, as ``batchrun.store.usage.priced`` gives it."""
    u = t.batch_usage.c
    rows = conn.execute(
        select(u.batch_id, u.model, u.lane, u.cost_factor, u.answers, *(u[n] for n in _TOKENS))
        .where(
            u.batch_id.in_(list(batch_ids)),
            # Tokens without answers: answers that did not match their schema, kept while
            # their requests are repaired (``answer_turns``).
            (
                u.answers
                + u.input_tokens
                + u.output_tokens
                + u.cache_creation_input_tokens
                + u.cache_read_input_tokens
            )
            > 0,
        )
        .order_by(u.batch_id, u.model, u.lane, u.cost_factor)
    )
    return tokens_by_batch(rows, batch_ids)


def tokens_by_batch(
    rows: Iterable[Sequence[Any]], batch_ids: Sequence[str]
) -> dict[str, list[ModelTokens]]:
    """Rows of (batch, model, lane, cost factor, count, the four token columns, optionally
    the 1-hour part of the cache writes) as `ModelTokens` per batch (every one of
    ``batch_ids``, empty when it has no row)."""
    found: dict[str, list[ModelTokens]] = {batch_id: [] for batch_id in batch_ids}
    for batch_id, model, lane, factor, count, tokens_in, tokens_out, writes, reads, *more in rows:
        found.setdefault(batch_id, []).append(
            ModelTokens(
                model,
                int(count),
                int(tokens_in),
                int(tokens_out),
                int(writes),
                int(reads),
                lane=lane,
                cost_factor=float(factor),
                cache_creation_1h_input_tokens=int(more[0] or 0) if more else 0,
            )
        )
    return found


def errors_of(conn: Connection, batch_id: str, top: int) -> list[ErrorCount]:
    """The batch's ``top`` most frequent error types (ties by name), with an example each."""
    e = t.batch_errors.c
    rows = conn.execute(
        select(e.error_type, e.results, e.example)
        .where(e.batch_id == batch_id, e.results > 0)
        .order_by(e.results.desc(), e.error_type)
        .limit(top)
    ).all()
    return [ErrorCount(kind or "unknown", int(n), example) for kind, n, example in rows]


def endpoint_answers(conn: Connection, batch_id: str) -> dict[str, int]:
    """Each endpoint's answers of the batch (sent, not reused)."""
    p = t.batch_endpoints.c
    rows = conn.execute(
        select(p.endpoint, p.answers).where(p.batch_id == batch_id, p.answers > 0)
    ).all()
    return {name: int(n) for name, n in rows}


def recent_endpoint_answers(conn: Connection, batch_id: str, since: datetime) -> dict[str, int]:
    """Each endpoint's answers of the batch completed at ``since`` or later: a range of the
    ``(batch_id, completed_at)`` index, as long as that window holds answers, not the batch."""
    res = t.results.c
    rows = conn.execute(
        select(res.endpoint, func.count())
        .where(
            res.batch_id == batch_id,
            res.completed_at >= since,
            res.result_type.in_(_ANSWERED),
            res.endpoint.is_not(None),
            res.reused_from.is_(None),
        )
        .group_by(res.endpoint)
    ).all()
    return {name: int(n) for name, n in rows}


def held_of(conn: Connection, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per batch that has any, its held requests per model."""
    h = t.batch_held.c
    rows = conn.execute(
        select(h.batch_id, h.model, h.requests)
        .where(h.batch_id.in_(list(batch_ids)), h.requests > 0)
        .order_by(h.batch_id, h.model)
    ).all()
    held: dict[str, dict[str, int]] = {}
    for batch_id, model, count in rows:
        held.setdefault(batch_id, {})[model] = int(count)
    return held
