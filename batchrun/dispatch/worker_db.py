"""A worker's one route to the database: the store's blocking statements, awaited.

Everything a running worker asks of the database goes through one :class:`WorkerDatabase`:
the dispatch loop's claims and control checks, the group writer's commits, the shared rate
records of the limiter's bank, the run monitor's budget reads, and the run's planning before
and reports after. They share one database thread (:class:`DatabaseThread`), so a worker's
statements run in order, on one connection at a time, never contending with each other for
SQLite's write lock, and every one of them is retried the same way while a Postgres
connection is lost.

Each method awaits one method of one of the store's sections (``batchrun.store``), with the
same arguments, and returns what it returns; the names are the dispatcher's (``claim``,
``record``, ``get_batch``), and the body names the section's method it runs. One exception:
while a dispatcher watches its batches (:attr:`WorkerDatabase.controls`), a rate-bank take
and a group commit of results also read which of them are stopped, in the same transaction
(``dispatch.controls``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from batchrun.dispatch.controls import ControlReadings
from batchrun.dispatch.dbthread import DEFAULT_RETRY_DELAYS_S, DatabaseThread
from batchrun.limits.keyrecord import Grant, KeyPolicy, KeyRecord, PendingChanges
from batchrun.records import (
    AnswerTurn,
    BatchSummary,
    BudgetStop,
    CacheGroupWarmth,
    ClaimedRequest,
    FinishedRequest,
    ImportedResult,
    ImportTally,
    ModelTokens,
    ProviderBatchRow,
    ProviderIntent,
    Requeue,
    RetryLater,
    Usage,
)

if TYPE_CHECKING:
    from batchrun.store.run_limits import LimitRecord
    from batchrun.store.store import Store


class WorkerDatabase:
    """The store of one worker, awaited on one database thread."""

    def __init__(
        self, store: Store, *, retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S
    ) -> None:
        self._store = store
        self._thread = DatabaseThread(retry_delays_s=retry_delays_s)
        # The dispatcher's control checks, read with the rate-bank takes while it watches.
        self.controls = ControlReadings()

    def close(self) -> None:
        """Wait for the statement in progress, then stop the thread (the store stays open)."""
        self._thread.close()

    # -- claims and leases ----------------------------------------------------------------

    async def claim(
        self, *, owner: str, batch_ids: Sequence[str], limit: int, now: datetime, lease_s: float
    ) -> list[ClaimedRequest]:
        return await self._thread.call(
            self._store.leases.claim,
            owner=owner,
            batch_ids=batch_ids,
            limit=limit,
            now=now,
            lease_s=lease_s,
        )

    async def seconds_until_ready(self, batch_ids: Sequence[str], now: datetime) -> float | None:
        return await self._thread.call(self._store.leases.seconds_until_ready, batch_ids, now)

    async def renew_leases(
        self, *, owner: str, request_ids: Sequence[int], now: datetime, lease_s: float
    ) -> set[int]:
        return await self._thread.call(
            self._store.leases.renew, owner=owner, request_ids=request_ids, now=now, lease_s=lease_s
        )

    async def reclaim_expired_leases(self, now: datetime) -> int:
        return await self._thread.call(self._store.leases.reclaim_expired, now)

    async def lease_owners(self) -> list[str]:
        return await self._thread.call(self._store.leases.owners)

    async def release_leases(self, owners: Sequence[str]) -> int:
        return await self._thread.call(self._store.leases.release, owners)

    # -- results --------------------------------------------------------------------------

    async def record(
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
        turns: Sequence[AnswerTurn] = (),
    ) -> None:
        # The dispatcher's control check rides on the group commit too (see
        # dispatch.controls): counted from now, before the transaction begins.
        wanted = self.controls.wanted()
        batch_ids, batches_now = wanted if wanted is not None else ([], None)
        asked_at = asyncio.get_running_loop().time()
        stopped = await self._thread.call(
            self._store.results.record_watching,
            owner=owner,
            now=now,
            finished=finished,
            retries=retries,
            unsent=unsent,
            released=released,
            canceled=canceled,
            expired=expired,
            turns=turns,
            batch_ids=batch_ids,
            batches_now=batches_now,
        )
        if batch_ids:
            self.controls.read(asked_at, batch_ids, stopped)

    async def last_answer_turn(self, request_id: int) -> tuple[str, tuple[str, ...]] | None:
        return await self._thread.call(self._store.repairs.last_turn, request_id)

    async def repair_limits(self, batch_ids: Sequence[str]) -> dict[str, int]:
        return await self._thread.call(self._store.repairs.repair_limits, batch_ids)

    # -- the batches' course --------------------------------------------------------------

    async def expire_due(self, now: datetime) -> list[str]:
        return await self._thread.call(self._store.lifecycle.expire_due, now)

    async def stopped_batches(self, batch_ids: Sequence[str], now: datetime) -> dict[str, str]:
        return await self._thread.call(self._store.lifecycle.stopped, batch_ids, now)

    async def clear_pauses(self, batch_ids: Sequence[str]) -> None:
        await self._thread.call(self._store.lifecycle.clear_pauses, batch_ids)

    async def pause_batch(self, batch_id: str, reason: str) -> None:
        await self._thread.call(self._store.lifecycle.pause, batch_id, reason)

    async def hold_models(self, batch_id: str, models: Sequence[str]) -> int:
        return await self._thread.call(self._store.lifecycle.hold_models, batch_id, models)

    async def release_held(self, batch_id: str, models: Sequence[str], lane: str) -> int:
        return await self._thread.call(self._store.lifecycle.release_held, batch_id, models, lane)

    async def held_by_model(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        return await self._thread.call(self._store.lifecycle.held_by_model, batch_ids)

    async def set_endpoint(self, batch_id: str, endpoint: str) -> None:
        await self._thread.call(self._store.lifecycle.set_endpoint, batch_id, endpoint)

    async def set_max_cost(self, batch_id: str, max_cost_usd: float | None) -> None:
        await self._thread.call(self._store.batches.set_max_cost, batch_id, max_cost_usd)

    # -- shared rate buckets --------------------------------------------------------------

    async def take_rates(
        self,
        *,
        endpoint: str,
        model: str,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        changes: PendingChanges,
        now: float,
        reserve: bool = False,
    ) -> tuple[Grant, KeyRecord]:
        # The dispatcher's control check rides on the take (see dispatch.controls): counted
        # from now, before the transaction begins.
        wanted = self.controls.wanted()
        batch_ids, batches_now = wanted if wanted is not None else ([], None)
        asked_at = asyncio.get_running_loop().time()
        grant, record, stopped = await self._thread.call(
            self._store.rates.take_watching,
            endpoint=endpoint,
            model=model,
            costs=costs,
            policy=policy,
            changes=changes,
            now=now,
            reserve=reserve,
            batch_ids=batch_ids,
            batches_now=batches_now,
        )
        if batch_ids:
            self.controls.read(asked_at, batch_ids, stopped)
        return grant, record

    async def record_run_limits(self, rows: Sequence[LimitRecord]) -> None:
        await self._thread.call(self._store.run_limits.record, rows)

    async def record_endpoint_health(
        self, *, endpoint: str, state: str, reason: str | None, until: float | None, now: float
    ) -> None:
        await self._thread.call(
            self._store.health.record,
            endpoint=endpoint,
            state=state,
            reason=reason,
            until=until,
            now=now,
        )

    # -- the batch lane (provider batches) --------------------------------------------------

    async def take_for_provider_batch(
        self,
        *,
        batch_id: str,
        endpoint: str,
        max_requests: int,
        max_bytes: int,
        now: datetime,
        cancel_at: datetime | None = None,
        make_line: Callable[[str, str], bytes] | None = None,
        max_cost_usd: float | None = None,
        worst_cost_usd: Callable[[str, int, int], float] | None = None,
    ) -> ProviderIntent | BudgetStop | None:
        extra: dict[str, Any] = {} if make_line is None else {"make_line": make_line}
        return await self._thread.call(
            self._store.provider_batches.take,
            batch_id=batch_id,
            endpoint=endpoint,
            max_requests=max_requests,
            max_bytes=max_bytes,
            now=now,
            cancel_at=cancel_at,
            max_cost_usd=max_cost_usd,
            worst_cost_usd=worst_cost_usd,
            **extra,
        )

    async def provider_batch_created(
        self, row_id: int, *, provider_id: str, created_at: datetime | None, next_poll_at: datetime
    ) -> None:
        await self._thread.call(
            self._store.provider_batches.created,
            row_id,
            provider_id=provider_id,
            created_at=created_at,
            next_poll_at=next_poll_at,
        )

    async def provider_batch_not_created(
        self, row_id: int, *, note: str, lane: str, now: datetime
    ) -> int:
        return await self._thread.call(
            self._store.provider_batches.not_created, row_id, note=note, lane=lane, now=now
        )

    async def provider_batch_ambiguous(self, row_id: int, note: str) -> None:
        await self._thread.call(self._store.provider_batches.ambiguous, row_id, note)

    async def provider_batches_of(
        self, batch_ids: Sequence[str], *, open_only: bool = False
    ) -> list[ProviderBatchRow]:
        return await self._thread.call(
            self._store.provider_batches.of_batches, batch_ids, open_only=open_only
        )

    async def claimed_provider_ids(self, endpoint: str) -> set[str]:
        return await self._thread.call(self._store.provider_batches.claimed_ids, endpoint)

    async def take_provider_poll(
        self, row_id: int, *, now: datetime, next_poll_at: datetime
    ) -> bool:
        return await self._thread.call(
            self._store.provider_batches.take_poll, row_id, now=now, next_poll_at=next_poll_at
        )

    async def provider_batch_polled(self, row_id: int, **found: Any) -> None:
        await self._thread.call(self._store.provider_batches.polled, row_id, **found)

    async def provider_cancel_sent(self, row_id: int, now: datetime) -> None:
        await self._thread.call(self._store.provider_batches.cancel_sent, row_id, now)

    async def import_provider_results(
        self,
        row_id: int,
        results: Sequence[ImportedResult],
        requeues: Sequence[Requeue],
        *,
        now: datetime,
    ) -> ImportTally:
        return await self._thread.call(
            self._store.provider_batches.import_results, row_id, results, requeues, now=now
        )

    async def close_provider_batch(
        self, row_id: int, *, now: datetime, leftover_reason: str, requeue: bool
    ) -> int:
        return await self._thread.call(
            self._store.provider_batches.close,
            row_id,
            now=now,
            leftover_reason=leftover_reason,
            requeue=requeue,
        )

    async def held_cache_groups(self, provider_rows: Sequence[int]) -> list[CacheGroupWarmth]:
        return await self._thread.call(self._store.cache_warmth.held_groups, provider_rows)

    async def track_cache_group(self, group: CacheGroupWarmth, *, one_hour_write: bool) -> None:
        await self._thread.call(
            self._store.cache_warmth.track, group, one_hour_write=one_hour_write
        )

    async def take_cache_refresh(self, group: CacheGroupWarmth, *, now: datetime) -> bool:
        return await self._thread.call(self._store.cache_warmth.take_refresh, group, now=now)

    async def record_cache_refresh(
        self, group: CacheGroupWarmth, *, now: datetime, usage: Usage | None
    ) -> None:
        await self._thread.call(
            self._store.cache_warmth.record_refresh, group, now=now, usage=usage
        )

    async def set_queued_lane(self, batch_id: str, lane: str) -> int:
        return await self._thread.call(self._store.lanes.set_queued, batch_id, lane)

    async def set_batch_lane(self, batch_id: str, lane: str) -> None:
        await self._thread.call(self._store.lanes.set_batch, batch_id, lane)

    async def batch_lanes(self, batch_ids: Sequence[str]) -> dict[str, str]:
        return await self._thread.call(self._store.lanes.of_batches, batch_ids)

    async def queued_by_model(
        self, batch_id: str, *, state: str = "queued"
    ) -> list[tuple[str, int, int, int]]:
        return await self._thread.call(self._store.lanes.queued_by_model, batch_id, state=state)

    async def lane_work(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        return await self._thread.call(self._store.lanes.work, batch_ids)

    # -- reads for planning, budgets and reports ------------------------------------------

    async def get_batch(self, batch_id: str) -> BatchSummary:
        return await self._thread.call(self._store.batches.get, batch_id)

    async def batches_with_open_work(self) -> list[str]:
        return await self._thread.call(self._store.batches.with_open_work)

    async def max_costs(self, batch_ids: Sequence[str]) -> dict[str, float | None]:
        return await self._thread.call(self._store.batches.max_costs, batch_ids)

    async def usage_by_model(self, batch_ids: Sequence[str]) -> dict[str, list[ModelTokens]]:
        return await self._thread.call(self._store.usage.by_model, batch_ids)
