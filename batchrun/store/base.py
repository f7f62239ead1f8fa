"""What every section of the store shares: the engine and its transactions
(:class:`Section`), and the connection-level statements several sections run (final
results without a response; ending finished batches; which batches are stopped; the error
for an unknown batch)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import (
    Connection,
    Engine,
    Update,
    bindparam,
    exists,
    insert,
    literal,
    or_,
    select,
    update,
)

from batchrun.errors import BatchNotFoundError
from batchrun.store import tables as t
from batchrun.store.database import transaction, upsert_insert


class Section:
    """One section of the store: its statements, each in its own transaction on the shared
    engine. A section holds no state of its own beyond caches of facts that never change
    once true."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = upsert_insert(engine)

    def _write(self) -> AbstractContextManager[Connection]:
        return transaction(self._engine, write=True)

    def _read(self) -> AbstractContextManager[Connection]:
        return transaction(self._engine, write=False)


def insert_bare_results(conn: Connection, batch_id: str, state: str, now: datetime) -> None:
    """Result rows for the batch's requests that reached ``state`` without a response (and
    have no result row yet)."""
    req = t.requests.c
    has_result = exists().where(t.results.c.request_id == req.id)
    conn.execute(
        insert(t.results).from_select(
            ["request_id", "batch_id", "custom_id", "result_type", "attempts", "completed_at"],
            select(
                req.id,
                req.batch_id,
                req.custom_id,
                literal(state),
                req.attempts,
                literal(now, t.UtcDateTime()),
            ).where(req.batch_id == batch_id, req.state == state, ~has_result),
        )
    )


def end_finished_batches(conn: Connection, batch_ids: Sequence[str], now: datetime) -> None:
    """Mark ended, at ``now``, those of these batches that have no open request left."""
    conn.execute(_end_finished(), {"ids": list(batch_ids), "now": now})


@functools.cache
def _end_finished() -> Update:
    """:func:`end_finished_batches`'s statement (``:ids``, ``:now``), built once: every group
    commit runs it, and building it cost more than running it."""
    open_request = exists().where(
        t.requests.c.batch_id == t.batches.c.id, t.requests.c.state.in_(t.OPEN_STATES)
    )
    return (
        update(t.batches)
        .where(
            t.batches.c.id.in_(bindparam("ids", expanding=True)),
            t.batches.c.ended_at.is_(None),
            ~open_request,
        )
        .values(ended_at=bindparam("now", type_=t.UtcDateTime()))
    )


def stopped_batches(conn: Connection, batch_ids: Sequence[str], now: datetime) -> dict[str, str]:
    """Of these batches, those no worker should dispatch: id → why ("ended", "canceling",
    "expired", or the pause reason)."""
    if not batch_ids:
        return {}
    b = t.batches.c
    rows = conn.execute(
        select(b.id, b.ended_at, b.cancel_initiated_at, b.expires_at, b.paused_reason).where(
            b.id.in_(batch_ids),
            or_(
                b.ended_at.is_not(None),
                b.cancel_initiated_at.is_not(None),
                b.expires_at <= now,
                b.paused_reason.is_not(None),
            ),
        )
    )
    stopped = {}
    for row in rows:
        if row.ended_at is not None:
            stopped[row.id] = "ended"
        elif row.cancel_initiated_at is not None:
            stopped[row.id] = "canceling"
        elif row.expires_at <= now:
            stopped[row.id] = "expired"
        else:
            stopped[row.id] = str(row.paused_reason)
    return stopped


def batch_not_found(batch_id: str) -> BatchNotFoundError:
    """The error for an unknown batch id, with the command that lists the known ones."""
    return BatchNotFoundError(batch_id=batch_id)
