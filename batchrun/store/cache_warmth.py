"""The prompt-cache groups the batch lane keeps warm while a provider batch holds their
followers (:mod:`batchrun.batch_lane.warmth` decides when; this module stores it).

A group is found from the requests a provider batch holds (state ``provider``) that wait for
a leader (``wait_for``, not a duplicate's ``copy_of``) whose result succeeded: the leader's
answer wrote the entry, at its ``completed_at``. Each refresh is one row's update in
``cache_refreshes``: when it last read or wrote the entry (``warmed_at``), how many were
sent, and their tokens, so a restarted run knows when each entry expires and what keeping it
warm cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update

from batchrun.records import CacheGroupWarmth, CacheRefreshModel, CacheRefreshTotals, Usage
from batchrun.store import tables as t
from batchrun.store.base import Section


class CacheWarmth(Section):
    """Statements on the prompt-cache groups the batch lane keeps warm."""

    def held_groups(self, provider_rows: Sequence[int]) -> list[CacheGroupWarmth]:
        """The groups whose followers these provider batches (row ids) hold now, with a
        leader that succeeded, in leader order: each with its leader's params and when its
        entry was last written or read (the leader's answer, or the last refresh)."""
        if not provider_rows:
            return []
        req = t.requests.c
        leader = t.requests.alias("leader")
        res = t.results.c
        cr = t.cache_refreshes.c
        held = (
            select(req.wait_for.label("leader_id"))
            .where(
                req.provider_batch.in_(provider_rows),
                req.state == t.PROVIDER,
                req.wait_for.is_not(None),
                req.copy_of.is_(None),
            )
            .distinct()
            .subquery()
        )
        statement = (
            select(
                leader.c.batch_id,
                leader.c.id,
                leader.c.model,
                leader.c.params,
                res.completed_at,
                cr.warmed_at,
                func.coalesce(cr.refreshes, 0),
                # The 1-hour part: what the leader's result prices at the 1-hour price.
                func.coalesce(res.cache_creation_1h_input_tokens, 0),
                cr.leader_id,
            )
            .select_from(
                held.join(leader, leader.c.id == held.c.leader_id)
                .join(t.results, res.request_id == leader.c.id)
                .outerjoin(t.cache_refreshes, cr.leader_id == leader.c.id)
            )
            .where(res.result_type == t.SUCCEEDED)
            .order_by(leader.c.id)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [
            CacheGroupWarmth(
                batch_id=batch_id,
                leader_id=leader_id,
                model=model,
                params_json=params,
                warm_since=completed if warmed is None else max(completed, warmed),
                refreshes=int(refreshes),
                leader_write_tokens=int(written),
                tracked=tracked is not None,
                warmed_at=warmed,
            )
            for (
                batch_id,
                leader_id,
                model,
                params,
                completed,
                warmed,
                refreshes,
                written,
                tracked,
            ) in rows
        ]

    def track(self, group: CacheGroupWarmth, *, one_hour_write: bool) -> None:
        """Start keeping ``group``'s row (nothing if it has one): with ``one_hour_write``,
        the leader's 1-hour cache write (its result prices it at the 1-hour price) is kept,
        so the accounting shows its premium over a 5-minute write (the priming)."""
        statement = self._insert(t.cache_refreshes).values(
            leader_id=group.leader_id,
            batch_id=group.batch_id,
            model=group.model,
            warmed_at=None,
            refreshes=0,
            failed=0,
            input_tokens=0,
            output_tokens=0,
            cache_creation_input_tokens=0,
            cache_read_input_tokens=0,
            cache_creation_1h_input_tokens=0,
            leader_write_1h_tokens=group.leader_write_tokens if one_hour_write else 0,
        )
        with self._write() as conn:
            conn.execute(statement.on_conflict_do_nothing(index_elements=["leader_id"]))

    def take_refresh(self, group: CacheGroupWarmth, *, now: datetime) -> bool:
        """Take ``group``'s due refresh for this worker: its warm time moves to ``now`` if it
        is still the one ``group`` was read with (another worker has not taken it); True
        when taken. The group must be tracked (:meth:`track`)."""
        cr = t.cache_refreshes.c
        unchanged = (
            cr.warmed_at.is_(None) if group.warmed_at is None else cr.warmed_at == group.warmed_at
        )
        with self._write() as conn:
            taken = conn.execute(
                update(t.cache_refreshes)
                .where(cr.leader_id == group.leader_id, unchanged)
                .values(warmed_at=now)
            ).rowcount
        return bool(taken)

    def record_refresh(
        self, group: CacheGroupWarmth, *, now: datetime, usage: Usage | None
    ) -> None:
        """Count one refresh of ``group`` sent at ``now`` (taken by :meth:`take_refresh`):
        with ``usage`` (it was answered) the entry was read or written then, and its tokens
        are added; without, it counts as sent and failed, and the warm time goes back to
        what it was (the entry was not read)."""
        answered = usage is not None
        tokens = usage or Usage(0, 0)
        values = {
            "leader_id": group.leader_id,
            "batch_id": group.batch_id,
            "model": group.model,
            "warmed_at": now if answered else group.warmed_at,
            "refreshes": 1,
            "failed": 0 if answered else 1,
            "input_tokens": tokens.input_tokens,
            "output_tokens": tokens.output_tokens,
            "cache_creation_input_tokens": tokens.cache_creation_input_tokens,
            "cache_read_input_tokens": tokens.cache_read_input_tokens,
            "cache_creation_1h_input_tokens": tokens.cache_creation_1h_input_tokens,
            "leader_write_1h_tokens": 0,
        }
        cr = t.cache_refreshes.c
        statement = self._insert(t.cache_refreshes).values(**values)
        added = {
            name: getattr(cr, name) + statement.excluded[name]
            for name in (
                "refreshes",
                "failed",
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "cache_creation_1h_input_tokens",
            )
        }
        added["warmed_at"] = statement.excluded.warmed_at if answered else group.warmed_at
        with self._write() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["leader_id"], set_=added))

    def totals(self, batch_id: str) -> CacheRefreshTotals:
        """What keeping the batch's groups warm took: the refreshes per model and their
        tokens (one row per group, so this reads a few rows, not the batch's requests)."""
        cr = t.cache_refreshes.c
        with self._read() as conn:
            rows = conn.execute(
                select(
                    cr.model,
                    func.count(),
                    func.sum(cr.refreshes),
                    func.sum(cr.failed),
                    func.sum(cr.input_tokens),
                    func.sum(cr.output_tokens),
                    func.sum(cr.cache_creation_input_tokens),
                    func.sum(cr.cache_read_input_tokens),
                    func.sum(cr.leader_write_1h_tokens),
                    func.sum(cr.cache_creation_1h_input_tokens),
                )
                .where(cr.batch_id == batch_id)
                .group_by(cr.model)
                .order_by(cr.model)
            ).all()
        return CacheRefreshTotals(
            tuple(
                CacheRefreshModel(
                    model=model,
                    groups=int(groups),
                    refreshes=int(sent or 0),
                    failed=int(failed or 0),
                    usage=Usage(
                        int(inp or 0),
                        int(out or 0),
                        int(created or 0),
                        int(read or 0),
                        int(created_1h or 0),
                    ),
                    leader_write_1h_tokens=int(primed or 0),
                )
                for model, groups, sent, failed, inp, out, created, read, primed, created_1h in rows
            )
        )
