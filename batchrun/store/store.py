"""The job store: every statement batchrun runs against its database.

Methods are synchronous and short; the dispatcher calls them from one worker thread (see
``batchrun.dbthread``) so the event loop never blocks on the database. Every method that
writes does so in one transaction.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
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
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from batchrun.details import BatchStats, ErrorCount, ResultDetail
from batchrun.errors import BatchNotFoundError, DatabaseError
from batchrun.pricing import ModelTokens
from batchrun.records import (
    BatchSummary,
    ClaimedRequest,
    FinishedRequest,
    NewBatch,
    NewRequest,
    RequestCounts,
    ResultRow,
    RetryLater,
    TokenTotals,
)
from batchrun.store import tables as t
from batchrun.store.database import WRITE_OPTION, create_database_engine, upgrade_database

# Rows per INSERT round trip while ingesting.
_INGEST_CHUNK_ROWS = 1000
# Rows fetched per round trip while exporting.
_EXPORT_CHUNK_ROWS = 1000


class Store:
    """All reads and writes of batches, requests and results."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    @classmethod
    def open(cls, url: str) -> Store:
        """Open (creating and migrating if needed) the database at ``url``."""
        engine = create_database_engine(url)
        upgrade_database(engine)
        return cls(engine)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with (
                self._engine.connect().execution_options(**{WRITE_OPTION: True}) as conn,
                conn.begin(),
            ):
                yield conn
        except OperationalError as exc:
            raise DatabaseError(f"cannot write to the database: {_first_line(exc)}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise DatabaseError(f"cannot read the database: {_first_line(exc)}") from exc

    # -- batches ------------------------------------------------------------------------

    def create_batch(self, batch: NewBatch, new_requests: Iterable[NewRequest]) -> int:
        """Store a batch and its requests in one transaction; returns the request count.

        ``new_requests`` may be a lazy iterator: it is consumed in chunks, and if it raises,
        the transaction is rolled back and nothing of the batch is stored.
        """
        rows = (
            {
                "batch_id": batch.id,
                "line_no": request.line_no,
                "custom_id": request.custom_id,
                "model": request.model,
                "max_tokens": request.max_tokens,
                "params": request.params_json,
                "estimated_input_tokens": request.estimated_input_tokens,
                "state": t.QUEUED,
                "attempts": 0,
                "failures": 0,
            }
            for request in new_requests
        )
        with self._write() as conn:
            conn.execute(
                insert(t.batches).values(
                    id=batch.id,
                    name=batch.name,
                    endpoint=batch.endpoint,
                    source=batch.source,
                    request_count=0,
                    created_at=batch.created_at,
                    expires_at=batch.expires_at,
                )
            )
            count = 0
            while chunk := list(itertools.islice(rows, _INGEST_CHUNK_ROWS)):
                conn.execute(insert(t.requests), chunk)
                count += len(chunk)
            conn.execute(
                update(t.batches).where(t.batches.c.id == batch.id).values(request_count=count)
            )
        return count

    def get_batch(self, batch_id: str) -> BatchSummary:
        """The batch with its request counts and token totals; BatchNotFoundError if none."""
        with self._read() as conn:
            row = conn.execute(select(t.batches).where(t.batches.c.id == batch_id)).one_or_none()
            if row is None:
                raise BatchNotFoundError(
                    f"no batch {batch_id!r} in this database; `batchrun list` shows its batches"
                )
            counts = self._counts(conn, [batch_id]).get(batch_id, RequestCounts())
            tokens = self._tokens(conn, [batch_id]).get(batch_id, TokenTotals())
        return _summary(row._mapping, counts, tokens)

    def list_batches(self) -> list[BatchSummary]:
        """Every batch, newest first, with counts and token totals."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.batches).order_by(t.batches.c.created_at.desc(), t.batches.c.id.desc())
            ).all()
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

    def cancel_batch(self, batch_id: str, now: datetime) -> None:
        """Start canceling: queued requests (and running ones whose worker is gone) become
        canceled at once; the batch ends when its in-flight requests are recorded."""
        with self._write() as conn:
            found = conn.execute(
                select(t.batches.c.ended_at).where(t.batches.c.id == batch_id)
            ).one_or_none()
            if found is None:
                raise BatchNotFoundError(
                    f"no batch {batch_id!r} in this database; `batchrun list` shows its batches"
                )
            if found.ended_at is not None:
                return
            conn.execute(
                update(t.batches)
                .where(t.batches.c.id == batch_id, t.batches.c.cancel_initiated_at.is_(None))
                .values(cancel_initiated_at=now)
            )
            req = t.requests.c
            conn.execute(
                update(t.requests)
                .where(
                    req.batch_id == batch_id,
                    or_(
                        req.state == t.QUEUED,
                        and_(req.state == t.RUNNING, req.lease_expires_at < now),
                    ),
                )
                .values(state=t.CANCELED, lease_owner=None, lease_expires_at=None)
            )
            self._insert_bare_results(conn, batch_id, t.CANCELED, now)
            self._end_finished_batches(conn, [batch_id], now)

    def _insert_bare_results(
        self, conn: Connection, batch_id: str, state: str, now: datetime
    ) -> None:
        """Result rows for requests that reached ``state`` without a response."""
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

    def set_endpoint(self, batch_id: str, endpoint: str) -> None:
        """Store ``endpoint`` (a name, never a key) as the batch's endpoint, so runs started
        from now on send its remaining requests there; BatchNotFoundError if no such batch."""
        with self._write() as conn:
            changed = conn.execute(
                update(t.batches).where(t.batches.c.id == batch_id).values(endpoint=endpoint)
            ).rowcount
        if not changed:
            raise BatchNotFoundError(
                f"no batch {batch_id!r} in this database; `batchrun list` shows its batches"
            )

    def pause_batch(self, batch_id: str, reason: str) -> None:
        """Record why dispatch of this batch stopped; its queue is kept."""
        with self._write() as conn:
            conn.execute(
                update(t.batches).where(t.batches.c.id == batch_id).values(paused_reason=reason)
            )

    def clear_pauses(self, batch_ids: Sequence[str]) -> None:
        """Forget the pause reasons of these batches (a new run tries again)."""
        with self._write() as conn:
            conn.execute(
                update(t.batches)
                .where(t.batches.c.id.in_(batch_ids), t.batches.c.paused_reason.is_not(None))
                .values(paused_reason=None)
            )

    def stopped_batches(self, batch_ids: Sequence[str]) -> dict[str, str]:
        """Of these batches, those no worker should dispatch: id → why (canceling, ended,
        or the pause reason)."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    t.batches.c.id,
                    t.batches.c.ended_at,
                    t.batches.c.cancel_initiated_at,
                    t.batches.c.paused_reason,
                ).where(
                    t.batches.c.id.in_(batch_ids),
                    or_(
                        t.batches.c.ended_at.is_not(None),
                        t.batches.c.cancel_initiated_at.is_not(None),
                        t.batches.c.paused_reason.is_not(None),
                    ),
                )
            )
            stopped = {}
            for row in rows:
                if row.ended_at is not None:
                    stopped[row.id] = "ended"
                elif row.cancel_initiated_at is not None:
                    stopped[row.id] = "canceling"
                else:
                    stopped[row.id] = str(row.paused_reason)
            return stopped

    # -- requests -----------------------------------------------------------------------

    def claim(
        self, *, owner: str, batch_ids: Sequence[str], limit: int, now: datetime, lease_s: float
    ) -> list[ClaimedRequest]:
        """Take up to ``limit`` ready queued requests of these batches, in input order, under
        a lease for ``owner``; attempts + 1 each. One statement, safe against other workers
        (FOR UPDATE SKIP LOCKED on Postgres; SQLite serialises writers)."""
        req = t.requests.c
        ready = (
            select(req.id)
            .where(
                req.state == t.QUEUED,
                req.batch_id.in_(batch_ids),
                or_(req.not_before.is_(None), req.not_before <= now),
            )
            .order_by(req.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(t.requests)
            .where(req.id.in_(ready.scalar_subquery()))
            .values(
                state=t.RUNNING,
                attempts=req.attempts + 1,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                started_at=func.coalesce(req.started_at, now),
            )
            .returning(
                req.id,
                req.batch_id,
                req.custom_id,
                req.model,
                req.max_tokens,
                req.params,
                req.attempts,
                req.failures,
                req.estimated_input_tokens,
            )
        )
        with self._write() as conn:
            rows = conn.execute(statement).all()
        claimed = [ClaimedRequest(*row) for row in rows]
        claimed.sort(key=lambda item: item.id)
        return claimed

    def seconds_until_ready(self, batch_ids: Sequence[str], now: datetime) -> float | None:
        """Seconds until the earliest queued request of these batches may be sent: 0 if one
        is ready now, None if none is queued."""
        req = t.requests.c
        with self._read() as conn:
            queued, with_not_before, earliest = conn.execute(
                select(func.count(), func.count(req.not_before), func.min(req.not_before)).where(
                    req.state == t.QUEUED, req.batch_id.in_(batch_ids)
                )
            ).one()
        if queued == 0:
            return None
        if with_not_before < queued or earliest is None:
            return 0.0
        wait_s: float = max((earliest - now).total_seconds(), 0.0)
        return wait_s

    def renew_leases(
        self, *, owner: str, request_ids: Sequence[int], now: datetime, lease_s: float
    ) -> int:
        """Extend the lease on the requests this owner still holds; returns how many."""
        if not request_ids:
            return 0
        with self._write() as conn:
            result = conn.execute(
                update(t.requests)
                .where(
                    t.requests.c.id.in_(request_ids),
                    t.requests.c.state == t.RUNNING,
                    t.requests.c.lease_owner == owner,
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            )
            return int(result.rowcount)

    def reclaim_expired_leases(self, now: datetime) -> int:
        """Return running requests whose lease ran out (their worker died) to the queue."""
        with self._write() as conn:
            result = conn.execute(
                update(t.requests)
                .where(t.requests.c.state == t.RUNNING, t.requests.c.lease_expires_at < now)
                .values(state=t.QUEUED, lease_owner=None, lease_expires_at=None)
            )
            return int(result.rowcount)

    def record(
        self,
        *,
        owner: str,
        now: datetime,
        finished: Sequence[FinishedRequest] = (),
        retries: Sequence[RetryLater] = (),
        unsent: Sequence[int] = (),
        canceled: Sequence[int] = (),
    ) -> None:
        """Write one group of a worker's outcomes in a single transaction (group commit).

        - ``finished``: a result row each, and the request's final state. A request that
          already has a result (another worker finished it after this one's lease ran out)
          keeps the first: every request has exactly one result.
        - ``retries``: back to the queue until their ``not_before``.
        - ``unsent``: claimed but never sent (a halt, a shutdown): back to the queue, the
          claim's attempt taken back.
        - ``canceled``: claimed but never sent, and the batch is canceling.
        Batches left with no open request are marked ended.
        """
        batch_ids: set[str] = {item.batch_id for item in finished}
        with self._write() as conn:
            if finished:
                self._record_finished(conn, finished)
            req = t.requests.c
            mine = and_(req.state == t.RUNNING, req.lease_owner == owner)
            if retries:
                conn.execute(
                    update(t.requests)
                    .where(req.id == bindparam("rid"), mine)
                    .values(
                        state=t.QUEUED,
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
            if unsent:
                conn.execute(
                    update(t.requests)
                    .where(req.id.in_(unsent), mine)
                    .values(
                        state=t.QUEUED,
                        attempts=req.attempts - 1,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                )
            if canceled:
                ids = conn.scalars(
                    update(t.requests)
                    .where(req.id.in_(canceled), mine)
                    .values(
                        state=t.CANCELED,
                        attempts=req.attempts - 1,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                    .returning(req.batch_id)
                ).all()
                for batch_id in set(ids):
                    self._insert_bare_results(conn, batch_id, t.CANCELED, now)
                batch_ids.update(ids)
            if batch_ids:
                self._end_finished_batches(conn, sorted(batch_ids), now)

    def _record_finished(self, conn: Connection, finished: Sequence[FinishedRequest]) -> None:
        rows: list[dict[str, Any]] = []
        for item in finished:
            usage = item.usage
            rows.append(
                {
                    "request_id": item.request_id,
                    "batch_id": item.batch_id,
                    "custom_id": item.custom_id,
                    "result_type": item.result_type,
                    "http_status": item.http_status,
                    "model": item.model,
                    "stop_reason": item.stop_reason,
                    "input_tokens": usage.input_tokens if usage else None,
                    "output_tokens": usage.output_tokens if usage else None,
                    "cache_creation_input_tokens": (
                        usage.cache_creation_input_tokens if usage else None
                    ),
                    "cache_read_input_tokens": usage.cache_read_input_tokens if usage else None,
                    "error_type": item.error_type,
                    "error_message": item.error_message,
                    "latency_ms": item.latency_ms,
                    "estimated_input_tokens": item.estimated_input_tokens,
                    "attempts": item.attempts,
                    "request_ref": item.request_ref,
                    "completed_at": item.completed_at,
                    "body": item.body,
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
            .where(req.id.in_([item.request_id for item in finished]), req.state == t.RUNNING)
            .values(state=final_state, lease_owner=None, lease_expires_at=None)
        )

    def _end_finished_batches(
        self, conn: Connection, batch_ids: Sequence[str], now: datetime
    ) -> None:
        open_request = exists().where(
            t.requests.c.batch_id == t.batches.c.id, t.requests.c.state.in_(t.OPEN_STATES)
        )
        conn.execute(
            update(t.batches)
            .where(t.batches.c.id.in_(batch_ids), t.batches.c.ended_at.is_(None), ~open_request)
            .values(ended_at=now)
        )

    # -- results ------------------------------------------------------------------------

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
            raise BatchNotFoundError(
                f"no batch {batch_id!r} in this database; `batchrun list` shows its batches"
            )

    def max_costs(self, batch_ids: Sequence[str]) -> dict[str, float | None]:
        """The budget of each of these batches (None: no budget), by id."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.batches.c.id, t.batches.c.max_cost_usd).where(
                    t.batches.c.id.in_(batch_ids)
                )
            )
            return {row.id: row.max_cost_usd for row in rows}

    def usage_by_model(self, batch_ids: Sequence[str]) -> dict[str, list[ModelTokens]]:
        """Token totals of the results that report usage, per batch and model (the model the
        response names, else the request's), for pricing."""
        req, res = t.requests.c, t.results.c
        model = func.coalesce(res.model, req.model)
        statement = (
            select(
                res.batch_id,
                model,
                func.count(),
                func.coalesce(func.sum(res.input_tokens), 0),
                func.coalesce(func.sum(res.output_tokens), 0),
                func.coalesce(func.sum(res.cache_creation_input_tokens), 0),
                func.coalesce(func.sum(res.cache_read_input_tokens), 0),
            )
            .select_from(t.results.join(t.requests, req.id == res.request_id))
            .where(res.batch_id.in_(batch_ids), res.input_tokens.is_not(None))
            .group_by(res.batch_id, model)
            .order_by(res.batch_id, model)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        found: dict[str, list[ModelTokens]] = {batch_id: [] for batch_id in batch_ids}
        for batch_id, name, *figures in rows:
            found.setdefault(batch_id, []).append(ModelTokens(name, *map(int, figures)))
        return found

    def batch_stats(self, batch_id: str, *, top_errors: int = 5) -> BatchStats:
        """Tokens per model, the first send and the last answer, the ``top_errors`` most
        frequent error types of errored results (with one message each) and the budget."""
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
        return BatchStats(
            usage=self.usage_by_model([batch_id])[batch_id],
            first_started_at=first_started,
            last_completed_at=last_completed,
            errors=[ErrorCount(kind or "unknown", n, example) for kind, n, example in errors],
            max_cost_usd=max_cost,
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
    )


def _first_line(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]
