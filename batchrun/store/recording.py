"""Writing results: a worker's group of outcomes, and the final results of a provider
batch's import, as statements on a connection the caller's transaction holds.

:func:`record_outcomes` is the real-time lane's group commit (``Results.record``, in
:mod:`batchrun.store.results`); :func:`record_finished` writes final results and is shared
with the import of a provider batch's results (``ProviderBatches.import_results``, in
:mod:`batchrun.store.provider_batches`). Values are fitted to their
columns here, so one out-of-range number or over-long name cannot fail a whole group.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Update, and_, bindparam, insert, select, update

from batchrun.records import AnswerTurn, FinishedRequest, RetryLater
from batchrun.store import tables as t
from batchrun.store.base import end_finished_batches, insert_bare_results
from batchrun.store.counters import CounterChanges
from batchrun.store.database import dialect_insert
from batchrun.store.repairs import count_repair_results, record_turns
from batchrun.store.reuse import batches_with_copies, settle_copies


def record_outcomes(
    conn: Connection,
    *,
    owner: str,
    now: datetime,
    finished: Sequence[FinishedRequest] = (),
    retries: Sequence[RetryLater] = (),
    unsent: Sequence[int] = (),
    released: Sequence[int] = (),
    canceled: Sequence[int] = (),
    expired: Sequence[int] = (),
    turns: Sequence[AnswerTurn] = (),
    without_copies: set[str],
) -> None:
    """Write one group of a worker's outcomes on ``conn`` (one transaction: group commit).

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
    - ``turns``: answers that did not match their schema: kept, and their requests back to
      the queue for a repair send (``batchrun.store.repairs``).
    Batches left with no open request are marked ended. ``without_copies``: batches known
    to have no copies (updated here), whose results skip the look for copies.
    """
    batch_ids: set[str] = {item.batch_id for item in finished}
    changes = CounterChanges()
    if finished:
        record_finished(conn, finished, changes=changes)
        _settle_copies(conn, finished, now, without_copies, changes)
    if turns:
        record_turns(conn, turns, changes=changes, owner=owner)
    if retries or unsent or released or canceled or expired:
        batch_ids.update(
            _hand_back(
                conn,
                owner=owner,
                now=now,
                retries=retries,
                unsent=unsent,
                released=released,
                canceled=canceled,
                expired=expired,
                changes=changes,
            )
        )
    changes.apply(conn)
    if batch_ids:
        end_finished_batches(conn, sorted(batch_ids), now)


def _hand_back(
    conn: Connection,
    *,
    owner: str,
    now: datetime,
    retries: Sequence[RetryLater],
    unsent: Sequence[int],
    released: Sequence[int],
    canceled: Sequence[int],
    expired: Sequence[int],
    changes: CounterChanges,
) -> set[str]:
    """:func:`record_outcomes`'s requests that go back to the queue or stop (see there), from
    those this owner holds; returns the batches of those that stopped. Apart, so a group of
    results alone builds none of these statements."""
    stopped: set[str] = set()
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
        record_send_failures(conn, retries)
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
        for batch_id in touched:
            changes.moved(batch_id, t.RUNNING, state)
        for batch_id in set(touched):
            insert_bare_results(conn, batch_id, state, now)
        stopped.update(touched)
    return stopped


def record_send_failures(conn: Connection, retries: Sequence[RetryLater]) -> None:
    """A ``send_failures`` row for each retry that carries its failed send. Recorded
    even when the request's lease had run out meanwhile: the send happened either way."""
    rows = [
        {
            "batch_id": failed.batch_id,
            "request_id": item.request_id,
            "sent_at": failed.sent_at,
            "latency_ms": int32(failed.latency_ms),
            "endpoint": fit(failed.endpoint, t.send_failures.c.endpoint),
            "http_status": int32(failed.http_status),
            "error_type": fit(failed.error_type, t.send_failures.c.error_type),
        }
        for item in retries
        if (failed := item.failed) is not None
    ]
    if rows:
        conn.execute(insert(t.send_failures), rows)


def _settle_copies(
    conn: Connection,
    finished: Sequence[FinishedRequest],
    now: datetime,
    without_copies: set[str],
    changes: CounterChanges,
) -> None:
    """:func:`settle_copies` for the requests of ``finished`` that succeeded, in batches
    that have copies."""
    succeeded = [item for item in finished if item.result_type == t.SUCCEEDED]
    unknown = {item.batch_id for item in succeeded} - without_copies
    if not unknown:
        return
    having = batches_with_copies(conn, unknown)
    without_copies.update(unknown - having)
    ids = [item.request_id for item in succeeded if item.batch_id in having]
    if ids:
        settle_copies(conn, ids, now, changes)


def record_finished(
    conn: Connection,
    finished: Sequence[FinishedRequest],
    *,
    changes: CounterChanges,
    from_state: str = t.RUNNING,
) -> None:
    """A result row for each of ``finished`` and its request's final state, for requests
    still in ``from_state``. A request that already has a result keeps the first: every
    request has exactly one. What was written is added to ``changes`` (the caller applies
    them in the same transaction)."""
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
                "http_status": int32(item.http_status),
                "model": fit(item.model, t.results.c.model),
                "stop_reason": fit(item.stop_reason, t.results.c.stop_reason),
                "input_tokens": int32(usage.input_tokens) if usage else None,
                "output_tokens": int32(usage.output_tokens) if usage else None,
                "cache_creation_input_tokens": (
                    int32(usage.cache_creation_input_tokens) if usage else None
                ),
                "cache_read_input_tokens": (
                    int32(usage.cache_read_input_tokens) if usage else None
                ),
                "cache_creation_1h_input_tokens": (
                    int32(usage.cache_creation_1h_input_tokens) if usage else None
                ),
                "error_type": fit(item.error_type, t.results.c.error_type),
                "error_message": item.error_message,
                "latency_ms": int32(item.latency_ms),
                "sent_at": item.sent_at,
                "estimated_input_tokens": int32(item.estimated_input_tokens),
                "attempts": item.attempts,
                "request_ref": fit(item.request_ref, t.results.c.request_ref),
                "completed_at": item.completed_at,
                "body": item.body,
                "raw_body": item.raw_body,
                "endpoint": fit(item.endpoint, t.results.c.endpoint),
                "lane": item.lane,
                "cost_factor": item.cost_factor,
                "reused_from": None,
            }
        )
    written = set(conn.scalars(_insert_results(conn.dialect.name), rows).all())
    changes.results(row for row in rows if row["request_id"] in written)
    count_repair_results(conn, finished, written, changes)
    moved = conn.execute(
        _finish_requests(from_state), {"ids": [item.request_id for item in finished]}
    ).all()
    for batch_id, state in moved:
        changes.moved(batch_id, from_state, state)


# The group commit's statements are built once (per dialect, or per state they start from):
# building one, and SQLAlchemy's cache key for it, cost more than running it.


@functools.cache
def _insert_results(dialect: str) -> Any:
    """Insert result rows; a request that has one keeps it. Returns the requests written."""
    return (
        dialect_insert(dialect)(t.results)
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(t.results.c.request_id)
    )


@functools.cache
def _finish_requests(from_state: str) -> Update:
    """Move the requests ``:ids`` still in ``from_state`` to their result's type, one more
    attempt counted and the lease dropped. Returns each one's batch and new state."""
    req = t.requests.c
    final_state = (
        select(t.results.c.result_type).where(t.results.c.request_id == req.id).scalar_subquery()
    )
    return (
        update(t.requests)
        .where(req.id.in_(bindparam("ids", expanding=True)), req.state == from_state)
        .values(
            state=final_state,
            attempts=req.attempts + 1,
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(req.batch_id, req.state)
    )


_INT32_MAX = 2**31 - 1


def int32(value: int | None) -> int | None:
    """``value`` within a 32-bit integer column (Postgres INTEGER), never negative."""
    return None if value is None else min(max(value, 0), _INT32_MAX)


def fit(value: str | None, column: Any) -> str | None:
    """``value`` cut to the column's length (Postgres refuses longer strings)."""
    length = getattr(column.type, "length", None)
    return value if value is None or length is None or len(value) <= length else value[:length]
