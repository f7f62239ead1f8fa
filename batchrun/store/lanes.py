"""Which lane each batch and each queued request is on, and the queue seen per lane: the
auto lane's choice, and what planning and budgets read before a pass."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update

from batchrun.records import CacheTtl, Lane
from batchrun.store import tables as t
from batchrun.store.base import Section
from batchrun.store.cache_ttl import with_one_hour_ttl

# Requests whose stored params are rewritten per statement.
_REWRITE_CHUNK_ROWS = 2000


class Lanes(Section):
    """Statements on the lanes of batches and of their queued requests."""

    def set_queued(self, batch_id: str, lane: str) -> int:
        """Send the batch's queued requests to ``lane`` from now on (the auto lane's choice);
        returns how many. A prompt-cache group's first request, and a request waiting for a
        repair, keep real time; held requests (no price for a budget) stay held. Moving to
        the batch lane applies the batch's cache TTL policy to its groups in the same
        transaction (:func:`one_hour_groups`)."""
        req = t.requests.c
        with self._write() as conn:
            leaders = select(req.wait_for).where(
                req.batch_id == batch_id, req.wait_for.is_not(None), req.copy_of.is_(None)
            )
            statement = update(t.requests).where(
                req.batch_id == batch_id,
                req.state == t.QUEUED,
                req.lane != lane,
                req.lane != t.HELD,
            )
            if lane == Lane.BATCH:
                # A request waiting for the repair of its answer (batchrun.store.repairs) is
                # sent in real time: a provider batch would send its original form again.
                statement = statement.where(
                    req.id.not_in(leaders.scalar_subquery()), req.repairs == 0
                )
            moved = int(conn.execute(statement.values(lane=lane)).rowcount)
            if lane == Lane.BATCH and moved:
                one_hour_groups(conn, batch_id)
            return moved

    def set_batch(self, batch_id: str, lane: str) -> None:
        """Store the batch's lane choice (realtime, batch or auto)."""
        with self._write() as conn:
            conn.execute(update(t.batches).where(t.batches.c.id == batch_id).values(lane=lane))

    def of_batches(self, batch_ids: Sequence[str]) -> dict[str, str]:
        """Each batch's lane choice."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.batches.c.id, t.batches.c.lane).where(t.batches.c.id.in_(batch_ids))
            ).all()
        return {batch_id: lane for batch_id, lane in rows}

    def queued_by_model(
        self, batch_id: str, *, state: str = t.QUEUED
    ) -> list[tuple[str, int, int, int]]:
        """Per model of the batch's requests in ``state`` (queued; provider: held by provider
        batches): (model, requests, estimated input tokens, sum of max_tokens), for planning
        and budgets."""
        req = t.requests.c
        with self._read() as conn:
            rows = conn.execute(
                select(
                    req.model,
                    func.count(),
                    func.coalesce(func.sum(req.estimated_input_tokens), 0),
                    func.coalesce(func.sum(req.max_tokens), 0),
                )
                .where(req.batch_id == batch_id, req.state == state)
                .group_by(req.model)
            ).all()
        return [(model, int(n), int(tokens), int(out)) for model, n, tokens, out in rows]

    def work(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per batch, its queued requests per lane and its requests held by provider batches
        (key ``provider``)."""
        req = t.requests.c
        with self._read() as conn:
            rows = conn.execute(
                select(req.batch_id, req.state, req.lane, func.count())
                .where(req.batch_id.in_(batch_ids), req.state.in_((t.QUEUED, t.PROVIDER)))
                .group_by(req.batch_id, req.state, req.lane)
            ).all()
        found: dict[str, dict[str, int]] = {batch_id: {} for batch_id in batch_ids}
        for batch_id, state, lane, count in rows:
            key = t.PROVIDER if state == t.PROVIDER else lane
            found[batch_id][key] = found[batch_id].get(key, 0) + int(count)
        return found


def one_hour_groups(conn: Connection, batch_id: str) -> int:
    """With the batch's cache TTL policy ``auto``: give the 1-hour TTL
    (:mod:`batchrun.store.cache_ttl`) to the stored params of each prompt-cache group whose
    leader is still queued (not sent: its write is still to come) and whose followers the
    batch lane now holds, the leader's and its queued batch-lane followers', as submit does
    for ``--lane batch``. A group whose leader was sent keeps its TTL: its entry is written.
    Returns how many requests changed; with ``keep``, none."""
    policy = conn.execute(
        select(t.batches.c.cache_ttl).where(t.batches.c.id == batch_id)
    ).scalar_one_or_none()
    if policy != CacheTtl.AUTO:
        return 0
    req = t.requests.c
    follower = t.requests.alias("follower")
    leaders = (
        select(req.id)
        .where(
            req.batch_id == batch_id,
            req.state == t.QUEUED,
            req.id.in_(
                select(follower.c.wait_for).where(
                    follower.c.batch_id == batch_id,
                    follower.c.state == t.QUEUED,
                    follower.c.lane == Lane.BATCH,
                    follower.c.wait_for.is_not(None),
                    follower.c.copy_of.is_(None),
                )
            ),
        )
        .scalar_subquery()
    )
    rows = conn.execute(
        select(req.id, req.params).where(
            req.batch_id == batch_id,
            req.state == t.QUEUED,
            req.copy_of.is_(None),
            or_(req.id.in_(leaders), and_(req.lane == Lane.BATCH, req.wait_for.in_(leaders))),
        )
    ).all()
    changed = [
        {"rid": request_id, "new_params": new}
        for request_id, params in rows
        if (new := with_one_hour_ttl(params)) != params
    ]
    for start in range(0, len(changed), _REWRITE_CHUNK_ROWS):
        conn.execute(
            update(t.requests)
            .where(req.id == bindparam("rid"))
            .values(params=bindparam("new_params")),
            changed[start : start + _REWRITE_CHUNK_ROWS],
        )
    return len(changed)
