"""What every part of the store shares: the engine, transactions, and the statements
that several parts use (final results without a response; ending finished batches)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import (
    Connection,
    Engine,
    exists,
    insert,
    literal,
    select,
    update,
)

from batchrun.errors import BatchNotFoundError
from batchrun.store import tables as t
from batchrun.store.database import transaction, upsert_insert
from batchrun.store.rates import RateStore


class StoreBase:
    """Connections and transactions for the store's statements."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = upsert_insert(engine)
        self.rates = RateStore(engine)

    def _write(self) -> AbstractContextManager[Connection]:
        return transaction(self._engine, write=True)

    def _read(self) -> AbstractContextManager[Connection]:
        return transaction(self._engine, write=False)

    # -- batches ------------------------------------------------------------------------

    def _insert_bare_results(
        self, conn: Connection, batch_id: str, state: str, now: datetime
    ) -> None:
        """Result rows for requests that reached ``state`` without a response."""
        insert_bare_results(conn, batch_id, state, now)

    def _end_finished_batches(
        self, conn: Connection, batch_ids: Sequence[str], now: datetime
    ) -> None:
        end_finished_batches(conn, batch_ids, now)

    # -- results ------------------------------------------------------------------------


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
    open_request = exists().where(
        t.requests.c.batch_id == t.batches.c.id, t.requests.c.state.in_(t.OPEN_STATES)
    )
    conn.execute(
        update(t.batches)
        .where(t.batches.c.id.in_(batch_ids), t.batches.c.ended_at.is_(None), ~open_request)
        .values(ended_at=now)
    )


def batch_not_found(batch_id: str) -> BatchNotFoundError:
    """The error for an unknown batch id, with the command that lists the known ones."""
    return BatchNotFoundError(batch_id=batch_id)
