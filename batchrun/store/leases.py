"""Claims and leases: which worker holds which request, and taking back a dead worker's."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    String,
    Update,
    bindparam,
    exists,
    func,
    or_,
    select,
    update,
)

from batchrun.records import (
    ClaimedRequest,
    Lane,
)
from batchrun.store import tables as t
from batchrun.store.base import Section

# How soon a worker looks again when every queued request waits for another one to answer.
WAITING_RECHECK_S = 0.5


@functools.cache
def not_waiting() -> ColumnElement[bool]:
    """True for a request that waits for nothing open (``wait_for`` unset, or final). Built
    once: making the alias on every claim cost more than the claim's own statement."""
    req = t.requests.c
    leader = t.requests.alias("leader")
    return or_(
        req.wait_for.is_(None),
        ~exists().where(leader.c.id == req.wait_for, leader.c.state.in_(t.OPEN_STATES)),
    )


@functools.cache
def _claim() -> Update:
    """:meth:`Leases.claim`'s statement (``:batch_ids``, ``:limit``, ``:now``, ``:owner``,
    ``:expires``), built once: building it cost more than running it."""
    req = t.requests.c
    now = bindparam("now", type_=t.UtcDateTime())
    ready = (
        select(req.id)
        .where(
            req.state == t.QUEUED,
            req.batch_id.in_(bindparam("batch_ids", expanding=True)),
            req.lane == Lane.REALTIME,
            or_(req.not_before.is_(None), req.not_before <= now),
            not_waiting(),
        )
        .order_by(req.id)
        .limit(bindparam("limit", type_=Integer()))
        .with_for_update(skip_locked=True)
    )
    return (
        update(t.requests)
        .where(req.id.in_(ready.scalar_subquery()))
        .values(
            state=t.RUNNING,
            lease_owner=bindparam("owner", type_=String()),
            lease_expires_at=bindparam("expires", type_=t.UtcDateTime()),
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
            req.last_error,
            req.repairs,
        )
    )


class Leases(Section):
    """Statements on requests being claimed, held and released."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # Batches whose first claim this process has set (see _note_started).
        self._started: set[str] = set()

    def claim(
        self, *, owner: str, batch_ids: Sequence[str], limit: int, now: datetime, lease_s: float
    ) -> list[ClaimedRequest]:
        """Take up to ``limit`` ready queued requests of these batches' real-time lane, in
        input order, under a lease for ``owner``: not before their ``not_before``, nor while
        the request they wait for is open. One statement, safe against other workers
        (FOR UPDATE SKIP LOCKED on Postgres; SQLite serialises writers)."""
        with self._write() as conn:
            rows = conn.execute(
                _claim(),
                {
                    "batch_ids": list(batch_ids),
                    "limit": limit,
                    "now": now,
                    "owner": owner,
                    "expires": now + timedelta(seconds=lease_s),
                },
            ).all()
            started = {row.batch_id for row in rows} - self._started
            self._note_started(conn, started, now)
        self._started.update(started)
        claimed = [ClaimedRequest(*row) for row in rows]
        claimed.sort(key=lambda item: item.id)
        return claimed

    def _note_started(self, conn: Connection, batch_ids: set[str], now: datetime) -> None:
        """Set the batches' first claim (``batches.first_started_at``, the least ``started_at``
        of their requests) to ``now`` where it is later or unset. Once per batch in this
        process: its later claims are no earlier (the same clock), so they cannot lower it."""
        if not batch_ids:
            return
        b = t.batches.c
        earlier = or_(b.first_started_at.is_(None), b.first_started_at > now)
        conn.execute(
            update(t.batches)
            .where(b.id.in_(sorted(batch_ids)), earlier)
            .values(first_started_at=now)
        )

    def seconds_until_ready(self, batch_ids: Sequence[str], now: datetime) -> float | None:
        """Seconds until the earliest queued real-time request of these batches may be sent:
        0 if one is ready now, None if none is queued. Requests waiting for an open request
        (``wait_for``) count as ready in ``WAITING_RECHECK_S``: what they wait for is
        answered by this worker or another."""
        req = t.requests.c
        realtime_queued = (
            req.state == t.QUEUED,
            req.batch_id.in_(batch_ids),
            req.lane == Lane.REALTIME,
        )
        with self._read() as conn:
            queued, with_not_before, earliest = conn.execute(
                select(func.count(), func.count(req.not_before), func.min(req.not_before)).where(
                    *realtime_queued, not_waiting()
                )
            ).one()
            waiting = 0
            if queued == 0:
                waiting = conn.execute(
                    select(func.count()).where(*realtime_queued, req.wait_for.is_not(None))
                ).scalar_one()
        if queued == 0:
            return None if waiting == 0 else WAITING_RECHECK_S
        if with_not_before < queued or earliest is None:
            return 0.0
        wait_s: float = max((earliest - now).total_seconds(), 0.0)
        return wait_s

    def renew(
        self, *, owner: str, request_ids: Sequence[int], now: datetime, lease_s: float
    ) -> set[int]:
        """Extend the lease on those of these requests this owner still holds; returns their
        ids (a request missing from it was taken over by another worker, or went back to the
        queue, while this one was not looking)."""
        if not request_ids:
            return set()
        with self._write() as conn:
            renewed = conn.scalars(
                update(t.requests)
                .where(
                    t.requests.c.id.in_(request_ids),
                    t.requests.c.state == t.RUNNING,
                    t.requests.c.lease_owner == owner,
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
                .returning(t.requests.c.id)
            )
            return set(renewed)

    def reclaim_expired(self, now: datetime) -> int:
        """Return running requests whose lease ran out (their worker died) to the queue."""
        with self._write() as conn:
            result = conn.execute(
                update(t.requests)
                .where(t.requests.c.state == t.RUNNING, t.requests.c.lease_expires_at < now)
                .values(state=t.QUEUED, lease_owner=None, lease_expires_at=None)
            )
            return int(result.rowcount)

    def owners(self) -> list[str]:
        """The workers that hold running requests."""
        with self._read() as conn:
            return list(
                conn.scalars(
                    select(t.requests.c.lease_owner)
                    .where(t.requests.c.state == t.RUNNING)
                    .distinct()
                )
            )

    def release(self, owners: Sequence[str]) -> int:
        """Return the running requests of these (dead) workers to the queue at once. Their
        attempts are left as they are: a send a dead worker had in flight was never
        recorded, and cannot be told from a claim it never sent."""
        with self._write() as conn:
            result = conn.execute(
                update(t.requests)
                .where(t.requests.c.state == t.RUNNING, t.requests.c.lease_owner.in_(owners))
                .values(state=t.QUEUED, lease_owner=None, lease_expires_at=None)
            )
            return int(result.rowcount)

    # -- requests -----------------------------------------------------------------------
