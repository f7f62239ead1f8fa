"""Which lane each batch and each queued request is on, and the queue seen per lane: the
auto lane's choice, and what planning and budgets read before a pass."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update

from batchrun.records import Lane
from batchrun.store import tables as t
from batchrun.store.base import Section


class Lanes(Section):
    """Statements on the lanes of batches and of their queued requests."""

    def set_queued(self, batch_id: str, lane: str) -> int:
        """Send the batch's queued requests to ``lane`` from now on (the auto lane's choice);
        returns how many. A prompt-cache group's first request, and a request waiting for a
        repair, keep real time; held requests (no price for a budget) stay held."""
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
            return int(conn.execute(statement.values(lane=lane)).rowcount)

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
