"""The forever joiner: while a ``run --forever`` pass dispatches, batches submitted meanwhile
join it when they can be sent the way it sends, so a new batch starts within about a second
rather than after the pass, which may take hours.

A :class:`ForeverJoiner` is one of a forever pass's side tasks
(a :class:`~batchrun.ops.session.RunSession`'s dispatch starts it, and cancels it when the
pass ends). It looks every :data:`JOIN_POLL_S`, and at once when the run is woken (a batch
was just submitted), stores the run's options on the batches it finds as a pass would
(:class:`~batchrun.ops.pass_plan.PassPlanner`), and hands the dispatcher those it may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from batchrun.dispatch.settings import DEFAULT_CONTROL_POLL_S
from batchrun.ops.pass_plan import PassPlanner, batch_costs
from batchrun.ops.runner import RunPlan
from batchrun.records import Lane

if TYPE_CHECKING:
    from batchrun.config.prices import PriceTable
    from batchrun.dispatch.dispatcher import Dispatcher
    from batchrun.dispatch.worker_db import WorkerDatabase
    from batchrun.ops.budget import BudgetGuard
    from batchrun.ops.monitor import RunMonitor
    from batchrun.records import BatchSummary
    from batchrun.transport.endpoints import Endpoints

log = logging.getLogger(__name__)

# How often a forever pass looks for batches to join it, unless woken: as often as the
# dispatcher looks for cancellations, so a new batch starts within about a second.
JOIN_POLL_S = DEFAULT_CONTROL_POLL_S


class ForeverJoiner:
    """Adds the batches submitted while a forever pass dispatches to that pass."""

    def __init__(
        self,
        db: WorkerDatabase,
        *,
        planner: PassPlanner,
        known: Endpoints,
        prices: PriceTable,
        ignored: set[str],
        sent_to: set[str],
        monitor: RunMonitor,
        guard: BudgetGuard | None,
        joined: dict[str, BatchSummary],
        budgets: dict[str, float | None],
        dispatcher: Callable[[], Dispatcher | None],
        stopping: Callable[[], bool],
        wakeup: asyncio.Event,
        on_note: Callable[[str], None],
    ) -> None:
        """``ignored``: the batches the pass has (or set aside); ``sent_to``: the endpoints
        it sends to; ``monitor``, ``guard``, ``joined`` and ``budgets``: the pass's, which a
        joined batch is added to; ``dispatcher``: the pass's dispatcher once it started;
        ``stopping``: whether the run was asked to stop; ``wakeup``: set to look now."""
        self._db = db
        self._planner = planner
        self._known = known
        self._prices = prices
        self._ignored = ignored
        self._sent_to = sent_to
        self._monitor = monitor
        self._guard = guard
        self._joined = joined
        self._budgets = budgets
        self._dispatcher = dispatcher
        self._stopping = stopping
        self._wakeup = wakeup
        self._on_note = on_note

    async def run(self) -> None:
        """Every JOIN_POLL_S, and at once when woken, add the batches with open work that the
        pass does not have (nor ``ignored``) to its dispatch, until cancelled (the pass ends)
        or a batch must wait for the next pass.

        A batch joins when it is in progress, not paused, in the real-time lane (the batch
        lane's driver is started per pass), on endpoints the pass sends to (``sent_to``), and
        without a budget unless the pass keeps budgets (``guard``); the run's options
        (endpoint, lane, budget) are stored on it first, as a pass would. Each joined batch
        goes into ``joined`` and ``budgets``, and into the monitor's totals. The others wait
        for the next pass, as before; once one of them does, no more batches join: this pass
        then ends with the work it has, and the waiting batch is not held back by a stream of
        new ones."""
        seen = set(self._ignored)
        while True:
            self._wakeup.clear()
            dispatcher = self._dispatcher()
            if dispatcher is not None and not self._stopping():
                try:
                    waiting = await self._round(dispatcher, seen)
                except Exception as exc:  # a database hiccup must not end the pass
                    log.warning("could not look for batches to join the run: %s", exc)
                else:
                    if waiting:
                        return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), JOIN_POLL_S)

    async def _round(self, dispatcher: Dispatcher, seen: set[str]) -> bool:
        """One look of :meth:`run`. Adds to ``seen`` every batch it settled (joined, or
        not to join in this pass); returns whether one of them waits for the next pass."""
        db, guard = self._db, self._guard
        found: dict[str, BatchSummary] = {}
        for batch_id in await db.batches_with_open_work():
            if batch_id in seen:
                continue
            batch = await db.get_batch(batch_id)
            # Canceling, or paused (a pass clears the pause of what it starts; a join does
            # not): left to the next pass, as before.
            if batch.processing_status == "in_progress" and batch.paused_reason is None:
                found[batch_id] = batch
            else:
                seen.add(batch_id)
        if not found:
            return False
        plan = await self._planner.apply_options(
            db, RunPlan({b: s.endpoint for b, s in found.items()}, {})
        )
        # A batch whose endpoint cannot be used here waits; the next pass says so.
        seen.update(plan.waiting)
        ids = list(plan.batches)
        lanes = await db.batch_lanes(ids)
        found_budgets = await db.max_costs(ids)
        with_provider_batches = {
            row.batch_id for row in await db.provider_batches_of(ids, open_only=True)
        }
        candidates: dict[str, str] = {}
        waiting = False
        for batch_id, name in plan.batches.items():
            pool = self._known.pools.get(name)
            members = pool.endpoint_names if pool is not None else (name,)
            if (
                lanes.get(batch_id, Lane.REALTIME) != Lane.REALTIME
                or batch_id in with_provider_batches
                or (found_budgets.get(batch_id) is not None and guard is None)
                or not set(members) <= self._sent_to
            ):
                seen.add(batch_id)
                waiting = True
            else:
                candidates[batch_id] = name
        budgeted = [b for b in candidates if found_budgets.get(b) is not None]
        spent = await batch_costs(db, budgeted, self._prices) if budgeted else {}
        # No await from here on: the guard keeps a budget before its batch's first claim.
        # What the dispatcher does not take now (it is starting, or stopping) is looked at
        # again next time.
        added = dispatcher.join(candidates)
        for batch_id in added:
            budget = found_budgets.get(batch_id)
            if budget is not None and guard is not None:
                guard.add(batch_id, budget, spent[batch_id])
            self._joined[batch_id] = found[batch_id]
            self._budgets[batch_id] = budget
            self._on_note(f"{batch_id}: joined the run in progress")
        self._monitor.add_batches({batch_id: found[batch_id].counts for batch_id in added})
        seen.update(added)
        return waiting
