"""The job store: every statement batchrun runs against its database.

Methods are synchronous and short; the dispatcher calls them from one worker thread (see
``batchrun.dbthread``) so the event loop never blocks on the database. Every method that
writes does so in one transaction.
"""

from __future__ import annotations

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
from sqlalchemy.exc import InterfaceError, OperationalError

from batchrun.errors import BatchNotFoundError
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
from batchrun.store.batch_rows import insert_batch
from batchrun.store.database import (
    SQLITE_BUSY_TIMEOUT_S,
    WRITE_OPTION,
    create_database_engine,
    database_error,
    upgrade_database,
)
from batchrun.store.rates import RateStore

# Rows fetched per round trip while exporting.
_EXPORT_CHUNK_ROWS = 1000


class Store:
    """All reads and writes of batches, requests and results."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self.rates = RateStore(engine)

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

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with (
                self._engine.connect().execution_options(**{WRITE_OPTION: True}) as conn,
                conn.begin(),
            ):
                yield conn
        except (OperationalError, InterfaceError) as exc:
            raise database_error(exc, engine=self._engine, doing="write to") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn, conn.begin():
                yield conn
        except (OperationalError, InterfaceError) as exc:
            raise database_error(exc, engine=self._engine, doing="read") from exc

    # -- batches ------------------------------------------------------------------------

    def create_batch(self, batch: NewBatch, new_requests: Iterable[NewRequest]) -> int:
        """Store a batch and its requests in one transaction; returns the request count.

        ``new_requests`` may be a lazy iterator: it is consumed in chunks, and if it raises,
        the transaction is rolled back and nothing of the batch is stored. A request with
        ``rejected`` set (an invalid line kept by ``submit --skip-invalid``) is stored errored
        with its result row; one without a custom_id is named ``line-N`` once every real
        custom_id of the batch is known. A batch whose lines are all invalid ends at once.
        """
        with self._write() as conn:
            count, rejected = insert_batch(conn, batch, new_requests)
            if rejected:
                self._end_finished_batches(conn, [batch.id], batch.created_at)
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

    def stopped_batches(self, batch_ids: Sequence[str], now: datetime) -> dict[str, str]:
        """Of these batches, those no worker should dispatch: id → why ("ended",
        "canceling", "expired", or the pause reason)."""
        b = t.batches.c
        with self._read() as conn:
            rows = conn.execute(
                select(
                    b.id, b.ended_at, b.cancel_initiated_at, b.expires_at, b.paused_reason
                ).where(
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

    def expire_due(self, now: datetime) -> list[str]:
        """Expire every batch whose time is up: queued requests (and running ones whose
        worker is gone) become expired; the batch ends once nothing is in flight. Returns
        the ids of the batches that had requests expired."""
        b, req = t.batches.c, t.requests.c
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
                changed = conn.execute(
                    update(t.requests)
                    .where(
                        req.batch_id == batch_id,
                        or_(
                            req.state == t.QUEUED,
                            and_(req.state == t.RUNNING, req.lease_expires_at < now),
                        ),
                    )
                    .values(state=t.EXPIRED, lease_owner=None, lease_expires_at=None)
                ).rowcount
                if changed:
                    self._insert_bare_results(conn, batch_id, t.EXPIRED, now)
                    expired.append(batch_id)
            if due:
                self._end_finished_batches(conn, due, now)
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
        the last error stays in ``last_error``. The batch is in progress again (its cancel
        and end are cleared; ``expires_at`` sets a new expiry). Returns how many."""
        req, res = t.requests.c, t.results.c
        with self._write() as conn:
            batch = conn.execute(
                select(t.batches.c.id).where(t.batches.c.id == batch_id)
            ).one_or_none()
            if batch is None:
                raise BatchNotFoundError(
                    f"no batch {batch_id!r} in this database; `batchrun list` shows its batches"
                )
            chosen = select(req.id).where(req.batch_id == batch_id, req.state.in_(states))
            last_error = select(res.error_message).where(res.request_id == req.id).scalar_subquery()
            conn.execute(
                update(t.requests)
                .where(req.id.in_(chosen.scalar_subquery()))
                .values(
                    state=t.QUEUED,
                    failures=0,
                    not_before=None,
                    last_error=func.coalesce(last_error, req.last_error),
                )
            )
            conn.execute(
                t.results.delete().where(
                    res.batch_id == batch_id,
                    res.request_id.in_(
                        select(req.id).where(req.batch_id == batch_id, req.state == t.QUEUED)
                    ),
                )
            )
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

    def lease_owners(self) -> list[str]:
        """The workers that hold running requests."""
        with self._read() as conn:
            return list(
                conn.scalars(
                    select(t.requests.c.lease_owner)
                    .where(t.requests.c.state == t.RUNNING)
                    .distinct()
                )
            )

    def release_leases(self, owners: Sequence[str]) -> int:
        """Return the running requests of these (dead) workers to the queue at once; their
        attempts stand, as they may have been sent."""
        with self._write() as conn:
            result = conn.execute(
                update(t.requests)
                .where(t.requests.c.state == t.RUNNING, t.requests.c.lease_owner.in_(owners))
                .values(state=t.QUEUED, lease_owner=None, lease_expires_at=None)
            )
            return int(result.rowcount)

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
        released: Sequence[int] = (),
        canceled: Sequence[int] = (),
        expired: Sequence[int] = (),
    ) -> None:
        """Write one group of a worker's outcomes in a single transaction (group commit).

        - ``finished``: a result row each, and the request's final state. A request that
          already has a result (another worker finished it after this one's lease ran out)
          keeps the first: every request has exactly one result.
        - ``retries``: back to the queue until their ``not_before``.
        - ``unsent``: claimed but never sent (a halt, a shutdown): back to the queue, the
          claim's attempt taken back.
        - ``released``: interrupted in flight (a shutdown): back to the queue, attempts kept.
        - ``canceled`` / ``expired``: claimed but never sent, and the batch is canceling /
          has expired.
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
            if released:
                conn.execute(
                    update(t.requests)
                    .where(req.id.in_(released), mine)
                    .values(state=t.QUEUED, lease_owner=None, lease_expires_at=None)
                )
            for ids, state in ((canceled, t.CANCELED), (expired, t.EXPIRED)):
                if not ids:
                    continue
                touched = conn.scalars(
                    update(t.requests)
                    .where(req.id.in_(ids), mine)
                    .values(
                        state=state,
                        attempts=req.attempts - 1,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                    .returning(req.batch_id)
                ).all()
                for batch_id in set(touched):
                    self._insert_bare_results(conn, batch_id, state, now)
                batch_ids.update(touched)
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
