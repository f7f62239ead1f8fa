"""The job store: every statement batchrun runs against its database.

Methods are synchronous and short; the dispatcher calls them from one worker thread (see
``batchrun.dispatch.dbthread``) so the event loop never blocks on the database. Every method that
writes does so in one transaction. The statements are grouped by job: batches and
results here, a batch's later course in ``lifecycle.py``, claims and leases in
``leases.py``, what they share in ``base.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)

from batchrun.errors import BatchNotFoundError
from batchrun.records import (
    BatchStats,
    BatchSummary,
    ErrorCount,
    FinishedRequest,
    ImportedResult,
    ImportTally,
    NewBatch,
    NewRequest,
    RequestCounts,
    Requeue,
    ResultDetail,
    ResultRow,
    RetryLater,
    TokenTotals,
)
from batchrun.store import tables as t
from batchrun.store.base import batch_not_found
from batchrun.store.batch_rows import insert_batch
from batchrun.store.database import (
    SQLITE_BUSY_TIMEOUT_S,
    create_database_engine,
    upgrade_database,
)
from batchrun.store.health import HealthStore
from batchrun.store.history import Histories
from batchrun.store.leases import Leases
from batchrun.store.lifecycle import BatchLifecycle
from batchrun.store.provider_batches import (
    ProviderBatches,
    apply_requeues,
    batches_of_provider_batch,
    close_provider_batch,
    prepare_import,
)
from batchrun.store.reuse import batches_with_copies, settle_copies
from batchrun.store.run_limits import RunLimitStore
from batchrun.store.series import SeriesReads
from batchrun.store.tallies import Tallies
from batchrun.store.timeline import Timelines
from batchrun.store.usage import UsageReads

# Rows fetched per round trip while exporting.
_EXPORT_CHUNK_ROWS = 1000


class Store(BatchLifecycle, Leases, HealthStore, ProviderBatches, Tallies, Timelines, Histories):
    """All reads and writes of batches, requests and results."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # The limits each run sent a batch under (the report's and the dashboard's).
        self.run_limits = RunLimitStore(engine)
        # Usage by model (status, budgets, dashboard, report, metrics) and answers per time
        # bucket (dashboard, report): one statement each.
        self.usage = UsageReads(engine)
        self.series = SeriesReads(engine)
        # Batches found to have no copies (``submit --reuse`` duplicates): copies are made
        # only when a batch is stored, so this stays true, and their results skip the look
        # for copies.
        self._without_copies: set[str] = set()

    @classmethod
    def open(cls, url: str, *, sqlite_busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> Store:
        """Open (creating and migrating if needed) the database at ``url``. A SQLite writer
        waits up to ``sqlite_busy_timeout_s`` for another process's write lock."""
        engine = create_database_engine(url, sqlite_busy_timeout_s=sqlite_busy_timeout_s)
        try:
            upgrade_database(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def create_batch(self, batch: NewBatch, new_requests: Iterable[NewRequest]) -> int:
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
                self._end_finished_batches(conn, [batch.id], batch.created_at)
        return count

    def get_batch(self, batch_id: str) -> BatchSummary:
        """The batch with its request counts and token totals; BatchNotFoundError if none."""
        with self._read() as conn:
            row = conn.execute(select(t.batches).where(t.batches.c.id == batch_id)).one_or_none()
            if row is None:
                raise batch_not_found(batch_id)
            counts = self._counts(conn, [batch_id]).get(batch_id, RequestCounts())
            tokens = self._tokens(conn, [batch_id]).get(batch_id, TokenTotals())
        return _summary(row._mapping, counts, tokens)

    def list_batches(self) -> list[BatchSummary]:
        """Every batch, newest first, with counts and token totals."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.batches).order_by(t.batches.c.created_at.desc(), t.batches.c.id.desc())
            ).all()
            return self._summaries(conn, rows)

    def page_batches(
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
            return self._summaries(conn, rows), more

    def _summaries(self, conn: Connection, rows: Sequence[Any]) -> list[BatchSummary]:
        """Batch rows as summaries, with their counts and token totals, in the same order."""
        ids = [row.id for row in rows]
        counts = self._counts(conn, ids)
        tokens = self._tokens(conn, ids)
        return [
            _summary(
                row._mapping,
                counts.get(row.id, RequestCounts()),
                tokens.get(row.id, TokenTotals()),
            )
            for row in rows
        ]

    def _counts(self, conn: Connection, batch_ids: Sequence[str]) -> dict[str, RequestCounts]:
        found: dict[str, dict[str, int]] = {}
        rows = conn.execute(
            select(t.requests.c.batch_id, t.requests.c.state, func.count())
            .where(t.requests.c.batch_id.in_(batch_ids))
            .group_by(t.requests.c.batch_id, t.requests.c.state)
        )
        for batch_id, state, count in rows:
            per_state = found.setdefault(batch_id, {})
            key = "processing" if state in t.OPEN_STATES else state
            per_state[key] = per_state.get(key, 0) + count
        return {batch_id: RequestCounts(**per_state) for batch_id, per_state in found.items()}

    def _tokens(self, conn: Connection, batch_ids: Sequence[str]) -> dict[str, TokenTotals]:
        r = t.results.c
        rows = conn.execute(
            select(
                r.batch_id,
                func.coalesce(func.sum(r.input_tokens), 0),
                func.coalesce(func.sum(r.output_tokens), 0),
                func.coalesce(func.sum(r.cache_creation_input_tokens), 0),
                func.coalesce(func.sum(r.cache_read_input_tokens), 0),
            )
            .where(r.batch_id.in_(batch_ids))
            .group_by(r.batch_id)
        )
        return {row[0]: TokenTotals(*(int(value) for value in row[1:])) for row in rows}

    def batches_with_open_work(self) -> list[str]:
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

    def record(
        self,
        *,
        owner: str,
        now: datetime,
        finished: Sequence[FinishedRequest] = (),
        retries: Sequence[RetryLater] = (),
        unsent: Sequence[int] = (),
        released: Sequence[int] = (),
        canceled: Sequence[int] = (),
        expired: Sequence[int] = (),
    ) -> None:
        """Write one group of a worker's outcomes in a single transaction (group commit).

        - ``finished``: a result row each, and the request's final state. A request that
          already has a result (another worker finished it after this one's lease ran out)
          keeps the first: every request has exactly one result. The queued copies of those
          that succeeded (``submit --reuse`` duplicates) succeed with them.
        - ``retries``: sent once more, back to the queue until their ``not_before``.
        - ``unsent``: claimed but never sent (a halt, a shutdown): back to the queue as they
          were.
        - ``released``: sent, then interrupted in flight (a shutdown): back to the queue,
          the send counted.
        - ``canceled`` / ``expired``: claimed but never sent, and the batch is canceling /
          has expired.
        Batches left with no open request are marked ended.
        """
        batch_ids: set[str] = {item.batch_id for item in finished}
        with self._write() as conn:
            if finished:
                self._record_finished(conn, finished)
                self._settle_copies(conn, finished, now)
            req = t.requests.c
            mine = and_(req.state == t.RUNNING, req.lease_owner == owner)
            if retries:
                conn.execute(
                    update(t.requests)
                    .where(req.id == bindparam("rid"), mine)
                    .values(
                        state=t.QUEUED,
                        attempts=req.attempts + 1,
                        not_before=bindparam("nb", type_=t.UtcDateTime),
                        failures=bindparam("fails"),
                        last_error=bindparam("err"),
                        lease_owner=None,
                        lease_expires_at=None,
                    ),
                    [
                        {
                            "rid": item.request_id,
                            "nb": item.not_before,
                            "fails": item.failures,
                            "err": item.last_error,
                        }
                        for item in retries
                    ],
                )
                self._record_send_failures(conn, retries)
            for ids, sent in ((unsent, 0), (released, 1)):
                if ids:
                    conn.execute(
                        update(t.requests)
                        .where(req.id.in_(ids), mine)
                        .values(
                            state=t.QUEUED,
                            attempts=req.attempts + sent,
                            lease_owner=None,
                            lease_expires_at=None,
                        )
                    )
            for ids, state in ((canceled, t.CANCELED), (expired, t.EXPIRED)):
                if not ids:
                    continue
                touched = conn.scalars(
                    update(t.requests)
                    .where(req.id.in_(ids), mine)
                    .values(state=state, lease_owner=None, lease_expires_at=None)
                    .returning(req.batch_id)
                ).all()
                for batch_id in set(touched):
                    self._insert_bare_results(conn, batch_id, state, now)
                batch_ids.update(touched)
            if batch_ids:
                self._end_finished_batches(conn, sorted(batch_ids), now)

    def _record_send_failures(self, conn: Connection, retries: Sequence[RetryLater]) -> None:
        """A ``send_failures`` row for each retry that carries its failed send. Recorded
        even when the request's lease had run out meanwhile: the send happened either way."""
        rows = [
            {
                "batch_id": failed.batch_id,
                "request_id": item.request_id,
                "sent_at": failed.sent_at,
                "latency_ms": _int32(failed.latency_ms),
                "endpoint": _fit(failed.endpoint, t.send_failures.c.endpoint),
                "http_status": _int32(failed.http_status),
                "error_type": _fit(failed.error_type, t.send_failures.c.error_type),
            }
            for item in retries
            if (failed := item.failed) is not None
        ]
        if rows:
            conn.execute(insert(t.send_failures), rows)

    def _settle_copies(
        self, conn: Connection, finished: Sequence[FinishedRequest], now: datetime
    ) -> None:
        """:func:`settle_copies` for the requests of ``finished`` that succeeded, in batches
        that have copies."""
        succeeded = [item for item in finished if item.result_type == t.SUCCEEDED]
        unknown = {item.batch_id for item in succeeded} - self._without_copies
        if not unknown:
            return
        having = batches_with_copies(conn, unknown)
        self._without_copies.update(unknown - having)
        ids = [item.request_id for item in succeeded if item.batch_id in having]
        if ids:
            settle_copies(conn, ids, now)

    def _record_finished(
        self, conn: Connection, finished: Sequence[FinishedRequest], *, from_state: str = t.RUNNING
    ) -> None:
        # Values are fitted to their columns here too: one out-of-range value would fail the
        # whole group's transaction, and every result in it with it.
        rows: list[dict[str, Any]] = []
        for item in finished:
            usage = item.usage
            rows.append(
                {
                    "request_id": item.request_id,
                    "batch_id": item.batch_id,
                    "custom_id": item.custom_id,
                    "result_type": item.result_type,
                    "http_status": _int32(item.http_status),
                    "model": _fit(item.model, t.results.c.model),
                    "stop_reason": _fit(item.stop_reason, t.results.c.stop_reason),
                    "input_tokens": _int32(usage.input_tokens) if usage else None,
                    "output_tokens": _int32(usage.output_tokens) if usage else None,
                    "cache_creation_input_tokens": (
                        _int32(usage.cache_creation_input_tokens) if usage else None
                    ),
                    "cache_read_input_tokens": (
                        _int32(usage.cache_read_input_tokens) if usage else None
                    ),
                    "error_type": _fit(item.error_type, t.results.c.error_type),
                    "error_message": item.error_message,
                    "latency_ms": _int32(item.latency_ms),
                    "sent_at": item.sent_at,
                    "estimated_input_tokens": _int32(item.estimated_input_tokens),
                    "attempts": item.attempts,
                    "request_ref": _fit(item.request_ref, t.results.c.request_ref),
                    "completed_at": item.completed_at,
                    "body": item.body,
                    "raw_body": item.raw_body,
                    "endpoint": _fit(item.endpoint, t.results.c.endpoint),
                    "lane": item.lane,
                    "cost_factor": item.cost_factor,
                }
            )
        conn.execute(
            self._insert(t.results).on_conflict_do_nothing(index_elements=["request_id"]), rows
        )
        req = t.requests.c
        final_state = (
            select(t.results.c.result_type)
            .where(t.results.c.request_id == req.id)
            .scalar_subquery()
        )
        conn.execute(
            update(t.requests)
            .where(req.id.in_([item.request_id for item in finished]), req.state == from_state)
            .values(
                state=final_state,
                attempts=req.attempts + 1,
                lease_owner=None,
                lease_expires_at=None,
            )
        )

    def import_provider_results(
        self,
        row_id: int,
        results: Sequence[ImportedResult],
        requeues: Sequence[Requeue],
        *,
        now: datetime,
    ) -> ImportTally:
        """Store one chunk of a provider batch's results in one transaction: final results
        for the requests it still holds, and the requests going back to the real-time queue.
        Lines for requests it no longer holds (imported before a crash) change nothing, so
        an import can run again from the start. Batches left with nothing open end."""
        with self._write() as conn:
            finished, back, tally = prepare_import(conn, row_id, results, requeues)
            if finished:
                self._record_finished(conn, finished, from_state=t.PROVIDER)
                settle_copies(conn, [item.request_id for item in finished], now)
            apply_requeues(conn, back)
            self._end_finished_batches(conn, batches_of_provider_batch(conn, row_id), now)
        return tally

    def close_provider_batch(
        self, row_id: int, *, now: datetime, leftover_reason: str, requeue: bool = True
    ) -> int:
        """The provider batch's results are all in: requests it still holds go back to the
        real-time queue, or end errored when some lines could not be read (``requeue``
        False; see ``provider_batches.close_provider_batch``); the row ends ``imported``.
        Returns how many it still held."""
        with self._write() as conn:
            back = close_provider_batch(
                conn, row_id, now=now, leftover_reason=leftover_reason, requeue=requeue
            )
            self._end_finished_batches(conn, batches_of_provider_batch(conn, row_id), now)
        return back

    def iter_results(self, batch_id: str) -> Iterator[ResultRow]:
        """Every request of the batch with its result (if any), in input order, streamed."""
        req, res = t.requests.c, t.results.c
        statement = (
            select(
                req.custom_id,
                req.line_no,
                req.state,
                res.body,
                res.error_type,
                res.error_message,
            )
            .select_from(t.requests.outerjoin(t.results, res.request_id == req.id))
            .where(req.batch_id == batch_id)
            .order_by(req.line_no)
        )
        with self._read() as conn:
            for partition in (
                conn.execution_options(yield_per=_EXPORT_CHUNK_ROWS).execute(statement).partitions()
            ):
                for row in partition:
                    yield ResultRow(*row)

    # -- cost, budgets, status and analytics exports ------------------------------------------

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

    def batch_stats(self, batch_id: str, *, top_errors: int = 5) -> BatchStats:
        """Tokens per model, the first send and the last answer, the ``top_errors`` most
        frequent error types of errored results (with one message each), the budget, and how
        many results are stored answers (reused)."""
        req, res = t.requests.c, t.results.c
        answered = res.result_type.in_([t.SUCCEEDED, t.ERRORED])
        with self._read() as conn:
            first_started = conn.execute(
                select(func.min(req.started_at)).where(req.batch_id == batch_id)
            ).scalar()
            last_completed = conn.execute(
                select(func.max(res.completed_at)).where(res.batch_id == batch_id, answered)
            ).scalar()
            count = func.count().label("n")
            errors = conn.execute(
                select(res.error_type, count, func.min(res.error_message))
                .where(res.batch_id == batch_id, res.result_type == t.ERRORED)
                .group_by(res.error_type)
                .order_by(count.desc(), res.error_type)
                .limit(top_errors)
            ).all()
            max_cost = conn.execute(
                select(t.batches.c.max_cost_usd).where(t.batches.c.id == batch_id)
            ).scalar()
            reused = conn.execute(
                select(func.count()).where(res.batch_id == batch_id, res.reused_from.is_not(None))
            ).scalar_one()
        return BatchStats(
            usage=self.usage.by_model([batch_id])[batch_id],
            first_started_at=first_started,
            last_completed_at=last_completed,
            errors=[ErrorCount(kind or "unknown", n, example) for kind, n, example in errors],
            max_cost_usd=max_cost,
            endpoints=(
                self.answers_by_endpoint(batch_id, last_completed - timedelta(minutes=1))
                if last_completed is not None
                else []
            ),
            reused=int(reused),
        )

    def iter_result_details(self, batch_id: str, only: str | None = None) -> Iterator[ResultDetail]:
        """Every finished request of the batch (or only those that ended ``only``) with its
        result, usage and times, in input order, streamed."""
        req, res = t.requests.c, t.results.c
        states = [only] if only else list(t.FINAL_STATES)
        statement = (
            select(
                req.batch_id,
                req.custom_id,
                req.line_no,
                req.state,
                func.coalesce(res.model, req.model),
                res.stop_reason,
                res.body,
                res.input_tokens,
                res.output_tokens,
                res.cache_creation_input_tokens,
                res.cache_read_input_tokens,
                func.coalesce(res.attempts, req.attempts),
                res.latency_ms,
                res.http_status,
                res.request_ref,
                res.error_type,
                res.error_message,
                t.batches.c.created_at,
                req.started_at,
                res.completed_at,
                res.raw_body,
                res.endpoint,
                res.reused_from,
                res.cost_factor,
                res.lane,
            )
            .select_from(
                t.requests.join(t.batches, t.batches.c.id == req.batch_id).outerjoin(
                    t.results, res.request_id == req.id
                )
            )
            .where(req.batch_id == batch_id, req.state.in_(states))
            .order_by(req.line_no)
        )
        with (
            self._read() as conn,
            conn.execution_options(yield_per=_EXPORT_CHUNK_ROWS).execute(statement) as result,
        ):
            # The result is closed even when the reader stops early (Postgres: its cursor).
            for partition in result.partitions():
                for row in partition:
                    yield ResultDetail(*tuple(row))


def _summary(row: Any, counts: RequestCounts, tokens: TokenTotals) -> BatchSummary:
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
        counts=counts,
        tokens=tokens,
        lane=row["lane"],
        owner=row["owner"],
    )


_INT32_MAX = 2**31 - 1


def _int32(value: int | None) -> int | None:
    """``value`` within a 32-bit integer column (Postgres INTEGER), never negative."""
    return None if value is None else min(max(value, 0), _INT32_MAX)


def _fit(value: str | None, column: Any) -> str | None:
    """``value`` cut to the column's length (Postgres refuses longer strings)."""
    length = getattr(column.type, "length", None)
    return value if value is None or length is None or len(value) <= length else value[:length]
