"""A batch's life after submit: cancel, pause, expiry, requeue for resume, moving it, and
removing it (delete, prune)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    Connection,
    and_,
    func,
    or_,
    select,
    update,
)

from batchrun.errors import BatchStateError, DatabaseError
from batchrun.records import INVALID_INPUT_ERROR_TYPE
from batchrun.store import tables as t
from batchrun.store.base import (
    Section,
    batch_not_found,
    end_finished_batches,
    insert_bare_results,
    stopped_batches,
)
from batchrun.store.breakdowns import delete_batches, held_of, recount_held
from batchrun.store.counters import TOKEN_COLUMNS, CounterChanges


class BatchLifecycle(Section):
    """Statements that change a batch's course."""

    def cancel(self, batch_id: str, now: datetime) -> None:
        """Start canceling: queued requests (and running ones whose worker is gone) become
        canceled at once; the batch ends when its in-flight requests are recorded."""
        with self._write() as conn:
            if _ended_at(conn, batch_id) is not None:
                return
            conn.execute(
                update(t.batches)
                .where(t.batches.c.id == batch_id, t.batches.c.cancel_initiated_at.is_(None))
                .values(cancel_initiated_at=now)
            )
            self._finish_unsent(conn, batch_id, t.CANCELED, now)
            end_finished_batches(conn, [batch_id], now)

    def set_endpoint(self, batch_id: str, endpoint: str) -> None:
        """Store ``endpoint`` (a name, never a key) as the batch's endpoint, so runs started
        from now on send its remaining requests there; BatchNotFoundError if no such batch."""
        with self._write() as conn:
            changed = conn.execute(
                update(t.batches).where(t.batches.c.id == batch_id).values(endpoint=endpoint)
            ).rowcount
        if not changed:
            raise batch_not_found(batch_id)

    def pause(self, batch_id: str, reason: str) -> None:
        """Record why dispatch of this batch stopped; its queue is kept."""
        with self._write() as conn:
            conn.execute(
                update(t.batches).where(t.batches.c.id == batch_id).values(paused_reason=reason)
            )

    def hold_models(self, batch_id: str, models: Sequence[str]) -> int:
        """Hold the batch's queued requests of these models (lane ``held``: neither the
        dispatcher nor the batch lane takes them; they stay queued, so the batch does not
        end, and cancel and expiry finish them as any queued request); returns how many."""
        return self._move_queued(batch_id, models, held=False, lane=t.HELD)

    def release_held(self, batch_id: str, models: Sequence[str], lane: str) -> int:
        """Give the batch's held requests of these models back to ``lane`` (their model has a
        price now); returns how many."""
        return self._move_queued(batch_id, models, held=True, lane=lane)

    def _move_queued(self, batch_id: str, models: Sequence[str], *, held: bool, lane: str) -> int:
        """Put the batch's queued requests of these models that are (``held``) or are not
        held in ``lane``; returns how many."""
        if not models:
            return 0
        req = t.requests.c
        with self._write() as conn:
            moved = conn.execute(
                update(t.requests)
                .where(
                    req.batch_id == batch_id,
                    req.state == t.QUEUED,
                    req.model.in_(models),
                    req.lane == t.HELD if held else req.lane != t.HELD,
                )
                .values(lane=lane)
            ).rowcount
            if moved:
                recount_held(conn, [batch_id])
            return int(moved)

    def held_by_model(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per batch that has any, its held requests (see :meth:`hold_models`) per model: the
        batches' counters (``batch_held``)."""
        with self._read() as conn:
            return held_of(conn, batch_ids)

    def clear_pauses(self, batch_ids: Sequence[str]) -> None:
        """Forget the pause reasons of these batches (a new run tries again)."""
        with self._write() as conn:
            conn.execute(
                update(t.batches)
                .where(t.batches.c.id.in_(batch_ids), t.batches.c.paused_reason.is_not(None))
                .values(paused_reason=None)
            )

    def stopped(self, batch_ids: Sequence[str], now: datetime) -> dict[str, str]:
        """Of these batches, those no worker should dispatch: id → why ("ended",
        "canceling", "expired", or the pause reason)."""
        with self._read() as conn:
            return stopped_batches(conn, batch_ids, now)

    def expire_due(self, now: datetime) -> list[str]:
        """Expire every batch whose time is up: queued requests (and running ones whose
        worker is gone) become expired; the batch ends once nothing is in flight. Returns
        the ids of the batches that had requests expired."""
        b = t.batches.c
        is_due = and_(b.ended_at.is_(None), b.expires_at <= now)
        # Read first: commands that only read (status, list) take no write lock unless a
        # batch is actually due.
        with self._read() as conn:
            if conn.execute(select(b.id).where(is_due).limit(1)).first() is None:
                return []
        with self._write() as conn:
            due = list(conn.scalars(select(b.id).where(is_due)))
            expired = []
            for batch_id in due:
                if self._finish_unsent(conn, batch_id, t.EXPIRED, now):
                    expired.append(batch_id)
            if due:
                end_finished_batches(conn, due, now)
            return expired

    def requeue(
        self,
        batch_id: str,
        *,
        states: Sequence[str],
        now: datetime,
        expires_at: datetime | None = None,
    ) -> int:
        """Put the batch's requests in ``states`` (canceled, expired, errored) back in the
        queue, dropping their results; attempts are kept, the retry budget starts afresh and
        the last error stays in ``last_error``. Invalid input lines (``submit
        --skip-invalid``) stay errored: nothing of them can be sent. The batch is in progress
        again (its cancel and end are cleared; ``expires_at`` sets a new expiry). Returns
        how many."""
        req, res = t.requests.c, t.results.c
        with self._write() as conn:
            batch = conn.execute(
                select(t.batches.c.id).where(t.batches.c.id == batch_id)
            ).one_or_none()
            if batch is None:
                raise batch_not_found(batch_id)
            bad_lines = select(res.request_id).where(
                res.batch_id == batch_id, res.error_type == INVALID_INPUT_ERROR_TYPE
            )
            chosen = select(req.id).where(
                req.batch_id == batch_id, req.state.in_(states), req.id.not_in(bad_lines)
            )
            last_error = select(res.error_message).where(res.request_id == req.id).scalar_subquery()
            changes = CounterChanges()
            # One state at a time, so each row count says where its requests came from.
            for state in dict.fromkeys(states):
                moved = conn.execute(
                    update(t.requests)
                    .where(req.id.in_(chosen.where(req.state == state).scalar_subquery()))
                    .values(
                        state=t.QUEUED,
                        failures=0,
                        not_before=None,
                        last_error=func.coalesce(last_error, req.last_error),
                    )
                ).rowcount
                changes.moved(batch_id, state, t.QUEUED, int(moved))
            dropped = conn.execute(
                t.results.delete()
                .where(
                    res.batch_id == batch_id,
                    res.request_id.in_(
                        select(req.id).where(req.batch_id == batch_id, req.state == t.QUEUED)
                    ),
                )
                .returning(res.batch_id, *(res[name] for name in TOKEN_COLUMNS))
            ).all()
            changes.results((row._mapping for row in dropped), sign=-1)
            # Requests came back to the queue (held ones too) and results went: count again.
            changes.recount(batch_id)
            changes.apply(conn)
            count = int(
                conn.execute(
                    select(func.count()).where(req.batch_id == batch_id, req.state == t.QUEUED)
                ).scalar_one()
            )
            values: dict[str, object] = {"paused_reason": None}
            if count:
                values.update(cancel_initiated_at=None, ended_at=None)
            if expires_at is not None:
                values["expires_at"] = expires_at
            conn.execute(update(t.batches).where(t.batches.c.id == batch_id).values(**values))
            return count

    def _finish_unsent(self, conn: Connection, batch_id: str, state: str, now: datetime) -> int:
        """Give the batch's unsent requests (queued, or running under a lease that ran out:
        their worker is gone) the final ``state`` and their result rows; returns how many."""
        req = t.requests.c
        changed = conn.execute(
            update(t.requests)
            .where(
                req.batch_id == batch_id,
                or_(
                    req.state == t.QUEUED,
                    and_(req.state == t.RUNNING, req.lease_expires_at < now),
                ),
            )
            .values(state=state, lease_owner=None, lease_expires_at=None)
        ).rowcount
        if changed:
            # Queued and running both count as processing.
            changes = CounterChanges()
            changes.moved(batch_id, t.QUEUED, state, changed)
            changes.apply(conn)
            insert_bare_results(conn, batch_id, state, now)
            recount_held(conn, [batch_id])
        return int(changed)

    # -- removing data ------------------------------------------------------------------------

    def delete(self, batch_id: str) -> None:
        """Delete an ended batch with its requests and results, in one transaction.
        BatchNotFoundError if there is none; BatchStateError if it has not ended (as with
        Anthropic's batches: cancel it first)."""
        with self._write() as conn:
            if _ended_at(conn, batch_id) is None:
                raise BatchStateError(
                    f"batch {batch_id} has not ended; only ended batches can be deleted "
                    f"(`batchrun cancel {batch_id}` first)",
                    batch_id=batch_id,
                )
            self._delete(conn, [batch_id])

    def prune(self, ended_before: datetime) -> list[str]:
        """Delete every batch that ended before ``ended_before``, with its requests and
        results, in one transaction; returns their ids."""
        with self._write() as conn:
            ids = list(
                conn.scalars(
                    select(t.batches.c.id).where(
                        t.batches.c.ended_at.is_not(None), t.batches.c.ended_at < ended_before
                    )
                )
            )
            if ids:
                self._delete(conn, ids)
            return ids

    def _delete(self, conn: Connection, batch_ids: Sequence[str]) -> None:
        # Children first: a database without foreign-key cascades deletes the same rows.
        delete_batches(conn, batch_ids)
        conn.execute(t.results.delete().where(t.results.c.batch_id.in_(batch_ids)))
        conn.execute(t.table_rows.delete().where(t.table_rows.c.batch_id.in_(batch_ids)))
        conn.execute(t.requests.delete().where(t.requests.c.batch_id.in_(batch_ids)))
        conn.execute(t.batches.delete().where(t.batches.c.id.in_(batch_ids)))

    def reclaim_space(self) -> bool:
        """Give deleted rows' space back to the file system: VACUUM on SQLite (which keeps
        freed pages for reuse otherwise); returns whether anything was done (Postgres
        reclaims space with its own autovacuum)."""
        if self._engine.dialect.name != "sqlite":
            return False
        # Outside any transaction, which VACUUM refuses: batchrun's SQLite connections are in
        # autocommit mode until a transaction begins.
        raw = self._engine.raw_connection()
        try:
            raw.cursor().execute("VACUUM")
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot give the freed space back (VACUUM): {exc}") from None
        finally:
            raw.close()
        return True


def _ended_at(conn: Connection, batch_id: str) -> datetime | None:
    """When the batch ended (None while it runs); BatchNotFoundError if there is none."""
    found = conn.execute(
        select(t.batches.c.ended_at).where(t.batches.c.id == batch_id)
    ).one_or_none()
    if found is None:
        raise batch_not_found(batch_id)
    ended_at: datetime | None = found.ended_at
    return ended_at
