"""A batch's repair counters (see ``batchrun.store.counters``): the repair sends answered
(``batches.n_repairs``) and, per model, lane and share of the list price, their tokens
(``batch_repairs``), so that ``status`` and the report show what repairs cost without
reading the batch's rows.

A repair send is a send of a request that already has an answer that did not match its
schema (``requests.repairs`` > 0; ``batchrun.structured.repair``). Its answer is counted
here once, as it is written: an ``answer_turns`` row (it did not match either) or the
request's result. :func:`recount` sets them, and adds the ``answer_turns`` tokens to the
batch's token counters, from the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, insert, literal, select, union_all, update

from batchrun.records import Lane, ModelTokens
from batchrun.store import tables as t
from batchrun.store.breakdowns import tokens_by_batch
from batchrun.store.database import upsert_insert

TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
_REALTIME = Lane.REALTIME.value


class RepairTally:
    """Repair sends answered, gathered while a transaction writes, per (batch, model, lane,
    cost factor): [sends, tokens...]."""

    def __init__(self) -> None:
        self._sends: dict[tuple[str, str, str, float], list[int]] = {}

    def add(self, key: tuple[str, str, str, float], tokens: Sequence[int]) -> None:
        """One repair send of ``key`` answered, with these tokens (see TOKENS)."""
        totals = self._sends.setdefault(key, [0, 0, 0, 0, 0])
        totals[0] += 1
        for index, value in enumerate(tokens, start=1):
            totals[index] += value

    def apply(self, conn: Connection) -> None:
        """Add what was gathered to ``batch_repairs`` (upserts in key order), and forget it
        (``batches.n_repairs`` is added to by ``CounterChanges``)."""
        sends, self._sends = self._sends, {}
        if not sends:
            return
        statement = upsert_insert(conn.engine)(t.batch_repairs)
        r = t.batch_repairs.c
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[r.batch_id, r.model, r.lane, r.cost_factor],
                set_={name: r[name] + statement.excluded[name] for name in ("sends", *TOKENS)},
            ),
            [
                {
                    "batch_id": key[0],
                    "model": key[1],
                    "lane": key[2],
                    "cost_factor": key[3],
                    "sends": totals[0],
                    **dict(zip(TOKENS, totals[1:], strict=True)),
                }
                for key, totals in sorted(sends.items())
            ],
        )


def recount(conn: Connection, batch_ids: Sequence[str]) -> None:
    """Set the repair counters of these batches from their rows, and add their
    ``answer_turns`` tokens to the batches' token counters and ``batch_usage`` (which the
    caller has just counted from the results)."""
    turns, req, res = t.answer_turns.c, t.requests.c, t.results.c
    conn.execute(delete(t.batch_repairs).where(t.batch_repairs.c.batch_id.in_(batch_ids)))
    turn_rows = select(
        turns.batch_id.label("batch_id"),
        func.coalesce(turns.model, req.model).label("model"),
        func.coalesce(turns.lane, _REALTIME).label("lane"),
        func.coalesce(turns.cost_factor, 1.0).label("cost_factor"),
        *(func.coalesce(turns[name], 0).label(name) for name in TOKENS),
    ).select_from(t.answer_turns.join(t.requests, req.id == turns.request_id))
    repair_turns = turn_rows.where(turns.batch_id.in_(batch_ids), turns.repair_send == 1)
    repair_results = (
        select(
            res.batch_id.label("batch_id"),
            func.coalesce(res.model, req.model).label("model"),
            func.coalesce(res.lane, _REALTIME).label("lane"),
            func.coalesce(res.cost_factor, 1.0).label("cost_factor"),
            *(func.coalesce(res[name], 0).label(name) for name in TOKENS),
        )
        .select_from(t.results.join(t.requests, req.id == res.request_id))
        .where(
            res.batch_id.in_(batch_ids),
            req.repairs > 0,
            res.reused_from.is_(None),
            res.result_type.in_([t.SUCCEEDED, t.ERRORED]),
        )
    )
    sends = union_all(repair_turns, repair_results).subquery()
    keys = (sends.c.batch_id, sends.c.model, sends.c.lane, sends.c.cost_factor)
    conn.execute(
        insert(t.batch_repairs).from_select(
            ["batch_id", "model", "lane", "cost_factor", "sends", *TOKENS],
            select(*keys, func.count(), *(func.sum(sends.c[name]) for name in TOKENS)).group_by(
                *keys
            ),
        )
    )
    r = t.batch_repairs.c
    for batch_id in batch_ids:
        n_repairs = select(func.coalesce(func.sum(r.sends), 0)).where(r.batch_id == batch_id)
        conn.execute(
            update(t.batches)
            .where(t.batches.c.id == batch_id)
            .values(n_repairs=n_repairs.scalar_subquery())
        )
    all_turns = turn_rows.where(turns.batch_id.in_(batch_ids)).subquery()
    keys = (all_turns.c.batch_id, all_turns.c.model, all_turns.c.lane, all_turns.c.cost_factor)
    summed = conn.execute(
        select(*keys, *(func.sum(all_turns.c[name]) for name in TOKENS)).group_by(*keys)
    ).all()
    for batch_id, model, lane, factor, *tokens in summed:
        add_turn_tokens(conn, batch_id, (model, lane, float(factor)), [int(v) for v in tokens])


def add_turn_tokens(
    conn: Connection, batch_id: str, key: tuple[str, str, float], tokens: Sequence[int]
) -> None:
    """Add an invalid answer's tokens to the batch's token counters and to its usage under
    ``key`` (model, lane, cost factor), counting no answer: its request is still open."""
    b = t.batches.c
    conn.execute(
        update(t.batches)
        .where(b.id == batch_id)
        .values(
            {
                f"sum_{name}": b[f"sum_{name}"] + literal(value)
                for name, value in zip(TOKENS, tokens, strict=True)
            }
        )
    )
    statement = upsert_insert(conn.engine)(t.batch_usage)
    u = t.batch_usage.c
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[u.batch_id, u.model, u.lane, u.cost_factor],
            set_={name: u[name] + statement.excluded[name] for name in TOKENS},
        ),
        {
            "batch_id": batch_id,
            "model": key[0],
            "lane": key[1],
            "cost_factor": key[2],
            "answers": 0,
            **dict(zip(TOKENS, tokens, strict=True)),
        },
    )


def repairs_of(conn: Connection, batch_ids: Sequence[str]) -> dict[str, list[ModelTokens]]:
    """Per batch (every one asked for, empty when it has none): its repair sends answered and
    their tokens, by model, lane and price share (``ModelTokens.answers`` counts the sends),
    as ``batchrun.store.usage.priced`` gives usage, so they are priced alike."""
    r = t.batch_repairs.c
    rows = conn.execute(
        select(r.batch_id, r.model, r.lane, r.cost_factor, r.sends, *(r[n] for n in TOKENS))
        .where(r.batch_id.in_(list(batch_ids)), r.sends > 0)
        .order_by(r.batch_id, r.model, r.lane, r.cost_factor)
    )
    return tokens_by_batch(rows, batch_ids)


def turn_tokens(row: Any) -> list[int]:
    """The token counts of an answer's usage (zeros without one)."""
    usage = row.usage
    if usage is None:
        return [0, 0, 0, 0]
    return [
        int(usage.input_tokens),
        int(usage.output_tokens),
        int(usage.cache_creation_input_tokens),
        int(usage.cache_read_input_tokens),
    ]
