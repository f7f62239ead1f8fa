"""Batches: storing a new one, reading them (one, all, a page), their budgets, and the
figures ``status`` shows of one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, exists, literal, select, tuple_, update

from batchrun.errors import BatchNotFoundError
from batchrun.records import (
    BatchStats,
    BatchSummary,
    NewBatch,
    NewRequest,
    RequestCounts,
    TokenTotals,
)
from batchrun.store import tables as t
from batchrun.store.base import Section, batch_not_found, end_finished_batches
from batchrun.store.batch_rows import insert_batch
from batchrun.store.breakdowns import errors_of
from batchrun.store.counters import COUNT_COLUMNS, TOKEN_COLUMNS
from batchrun.store.health import Health
from batchrun.store.repair_counts import repairs_of
from batchrun.store.usage import UsageReads


class Batches(Section):
    """Statements on batches as a whole."""

    def __init__(self, engine: Engine, *, usage: UsageReads, health: Health) -> None:
        super().__init__(engine)
        # A batch's stats show its usage and who answered it: those sections' reads.
        self._usage = usage
        self._health = health

    def create(self, batch: NewBatch, new_requests: Iterable[NewRequest]) -> int:
        """Store a batch and its requests in one transaction; returns the request count.

        ``new_requests`` may be a lazy iterator: it is consumed in chunks, and if it raises,
        the transaction is rolled back and nothing of the batch is stored. A request with
        ``rejected`` set (an invalid line kept by ``submit --skip-invalid``) is stored errored
        with its result row; one without a custom_id is named ``line-N`` once every real
        custom_id of the batch is known. With ``batch.reuse``, requests whose params
        succeeded before are answered from that result, and duplicates wait for their first
        (see ``batchrun.store.reuse``). A batch with nothing left to send ends at once.
        """
        with self._write() as conn:
            count, final = insert_batch(conn, batch, new_requests)
            if final:
                end_finished_batches(conn, [batch.id], batch.created_at)
        return count

    def get(self, batch_id: str) -> BatchSummary:
        """The batch with its request counts and token totals (its maintained counters, see
        `batchrun.store.counters`); BatchNotFoundError if none."""
        with self._read() as conn:
            row = conn.execute(select(t.batches).where(t.batches.c.id == batch_id)).one_or_none()
        if row is None:
            raise batch_not_found(batch_id)
        return _summary(row._mapping)

    def all(self) -> list[BatchSummary]:
        """Every batch, newest first, with counts and token totals."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.batches).order_by(t.batches.c.created_at.desc(), t.batches.c.id.desc())
            ).all()
        return [_summary(row._mapping) for row in rows]

    def page(
        self,
        owner: str | None,
        *,
        limit: int,
        before_id: str | None = None,
        after_id: str | None = None,
    ) -> tuple[list[BatchSummary], bool]:
        """One page of ``owner``'s batches (None: those made outside the server), newest
        first, as Anthropic's list pages them: ``after_id`` gives the ``limit`` batches just
        older than that batch, ``before_id`` the ``limit`` just newer (still newest first).
        Returns the page and whether more batches lie beyond it in that direction;
        BatchNotFoundError if the cursor is not one of ``owner``'s batches."""
        b = t.batches.c
        mine = b.owner.is_(None) if owner is None else b.owner == owner
        with self._read() as conn:
            query = select(t.batches).where(mine)
            cursor_id = before_id or after_id
            if cursor_id is not None:
                cursor = conn.execute(
                    select(b.created_at, b.id).where(mine, b.id == cursor_id)
                ).one_or_none()
                if cursor is None:
                    raise batch_not_found(cursor_id)
                key = tuple_(b.created_at, b.id)
                # Typed as the columns, so the time compares as the stored form.
                at = tuple_(literal(cursor[0], b.created_at.type), literal(cursor[1], b.id.type))
                if before_id is not None:
                    query = query.where(key > at).order_by(b.created_at, b.id)
                else:
                    query = query.where(key < at)
            if before_id is None:
                query = query.order_by(b.created_at.desc(), b.id.desc())
            rows = list(conn.execute(query.limit(limit + 1)).all())
        more = len(rows) > limit
        rows = rows[:limit]
        if before_id is not None:
            rows.reverse()
        return [_summary(row._mapping) for row in rows], more

    def table_rows(
        self, batch_id: str, *, after_row_no: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        """The table rows the batch was rendered from (``submit --template``), as
        ``(row_no, JSON object)``, in row order: at most ``limit`` after ``after_row_no``
        (page on with the last row_no). Empty for a batch submitted as request lines."""
        rows = t.table_rows.c
        with self._read() as conn:
            found = conn.execute(
                select(rows.row_no, rows.data)
                .where(rows.batch_id == batch_id, rows.row_no > after_row_no)
                .order_by(rows.row_no)
                .limit(limit)
            ).all()
        return [(row_no, data) for row_no, data in found]

    def with_open_work(self) -> list[str]:
        """Ids of batches that still have queued or running requests, oldest first."""
        with self._read() as conn:
            has_work = exists().where(
                t.requests.c.batch_id == t.batches.c.id, t.requests.c.state.in_(t.OPEN_STATES)
            )
            return list(
                conn.scalars(
                    select(t.batches.c.id)
                    .where(t.batches.c.ended_at.is_(None), has_work)
                    .order_by(t.batches.c.created_at, t.batches.c.id)
                )
            )

    # -- cost, budgets, status ----------------------------------------------------------

    def set_max_cost(self, batch_id: str, max_cost_usd: float | None) -> None:
        """Store the batch's budget in USD (None: no budget); BatchNotFoundError if no
        such batch."""
        with self._write() as conn:
            changed = conn.execute(
                update(t.batches)
                .where(t.batches.c.id == batch_id)
                .values(max_cost_usd=max_cost_usd)
            ).rowcount
        if not changed:
            raise BatchNotFoundError(batch_id=batch_id)

    def max_costs(self, batch_ids: Sequence[str]) -> dict[str, float | None]:
        """The budget of each of these batches (None: no budget), by id."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.batches.c.id, t.batches.c.max_cost_usd).where(
                    t.batches.c.id.in_(batch_ids)
                )
            )
            return {row.id: row.max_cost_usd for row in rows}

    def stats(self, batch_id: str, *, top_errors: int = 5) -> BatchStats:
        """Tokens per model, the first send and the last answer, the ``top_errors`` most
        frequent error types of errored results (with one message each), the budget, how
        many results are stored answers (reused) and the repair sends: the batch's counters (see
        `batchrun.store.counters`), a few rows whatever the batch's size."""
        b = t.batches.c
        with self._read() as conn:
            row = conn.execute(
                select(b.first_started_at, b.last_completed_at, b.max_cost_usd, b.n_reused).where(
                    b.id == batch_id
                )
            ).one_or_none()
            if row is None:
                raise batch_not_found(batch_id)
            errors = errors_of(conn, batch_id, top_errors)
            repairs = repairs_of(conn, [batch_id])[batch_id]
        first_started, last_completed, max_cost, reused = row
        return BatchStats(
            usage=self._usage.by_model([batch_id])[batch_id],
            first_started_at=first_started,
            last_completed_at=last_completed,
            errors=errors,
            max_cost_usd=max_cost,
            endpoints=(
                self._health.answers_by_endpoint(batch_id, last_completed - timedelta(minutes=1))
                if last_completed is not None
                else []
            ),
            reused=int(reused),
            repairs=repairs,
        )


def _summary(row: Any) -> BatchSummary:
    """A batch row as its summary: the counts and token totals are its counters."""
    return BatchSummary(
        id=row["id"],
        name=row["name"],
        endpoint=row["endpoint"],
        source=row["source"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        cancel_initiated_at=row["cancel_initiated_at"],
        ended_at=row["ended_at"],
        paused_reason=row["paused_reason"],
        counts=RequestCounts(**{key: row[column] for key, column in COUNT_COLUMNS.items()}),
        tokens=TokenTotals(**{key: row[column] for key, column in TOKEN_COLUMNS.items()}),
        lane=row["lane"],
        owner=row["owner"],
    )
