"""What a pass sends: the run's batches with queued work, with the run's options (endpoint,
budget, lane) stored on them first, and set apart those it cannot send.

:class:`PassPlanner` plans each pass of a :class:`~batchrun.ops.session.RunSession` (and the
batches that join a forever pass, :mod:`batchrun.ops.forever`): it moves batches to another
endpoint, stores a budget or a lane when the run is asked to, refuses a budget it cannot
keep (models without a price) or holds their requests, and leaves waiting, nothing of them
sent, the batches whose endpoint cannot be used here (a key or header variable not set, an
endpoint not defined). What a person should know goes to ``on_note``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from batchrun.batch_lane import check_lane
from batchrun.config.prices import CostTotal, PriceTable, cost_of
from batchrun.ops.budget import (
    HOLD_UNPRICED_FLAG,
    config_file_name,
    unpriced_models,
    unpriced_refusal,
)
from batchrun.ops.runner import RunPlan, move_batches, plan_run
from batchrun.ops.waiting import WaitingBatch, waiting_reason
from batchrun.records import Lane
from batchrun.transport.endpoints import Endpoints, auth_headers

if TYPE_CHECKING:
    from batchrun.dispatch.worker_db import WorkerDatabase
    from batchrun.ops.run_types import RunOptions


async def batch_costs(
    db: WorkerDatabase, batch_ids: list[str], prices: PriceTable
) -> dict[str, CostTotal]:
    """What each of these batches has cost so far, by id."""
    usage = await db.usage_by_model(batch_ids)
    return {batch_id: cost_of(usage.get(batch_id, []), prices) for batch_id in batch_ids}


class PassPlanner:
    """Plans the passes of one run (see the module's docstring)."""

    def __init__(
        self,
        *,
        known: Endpoints,
        prices: PriceTable,
        env: Mapping[str, str],
        options: RunOptions,
        on_note: Callable[[str], None],
    ) -> None:
        self._known = known
        self._prices = prices
        self._env = env
        self._options = options
        self._on_note = on_note
        # Whether a pass was planned: the first refuses a budget it cannot keep (unpriced
        # models); later ones (forever) leave such a batch waiting instead of ending.
        self._planned = False

    async def plan(self, db: WorkerDatabase, exclude: set[str]) -> RunPlan:
        """The pass's plan: the run's batches with queued work (every such batch when it
        names none) but ``exclude``, with the run's options stored on them (see
        :meth:`apply_options`); told to ``on_note`` when a run that is not forever has nothing
        to do."""
        options = self._options
        plan = await plan_run(db, options.batch_ids)
        if exclude:
            kept = {b: e for b, e in plan.batches.items() if b not in exclude}
            plan = RunPlan(kept, plan.skipped)
        plan = await self.apply_options(db, plan)
        self._planned = True
        if not options.forever:
            for batch_id, why in plan.skipped.items():
                self._on_note(f"{batch_id}: {why}; nothing to run")
            if not plan.batches and not plan.waiting and not options.batch_ids:
                self._on_note("no batch has queued requests")
        return plan

    async def apply_options(self, db: WorkerDatabase, plan: RunPlan) -> RunPlan:
        """Store the run's endpoint, budget and lane options on the plan's batches; returns
        the plan with the batches' endpoints as they are now, and with the batches whose
        endpoint cannot be used here set apart as waiting (no option is stored on those).
        A budget this run sets for a batch with unpriced models is refused unless
        ``hold_unpriced`` (see :meth:`_refuse_unpriced`); in every batch with a budget, the
        requests of unpriced models are held (see :meth:`_hold_unpriced`)."""
        options = self._options
        if options.max_cost_usd is not None and not options.hold_unpriced and plan.batches:
            # Before anything is stored or moved: a refusal leaves the batches as they were.
            plan = await self._refuse_unpriced(db, plan)
        if options.target is not None and plan.batches:
            # Checked before anything is moved, so a missing key leaves the batches as they were.
            for endpoint in self._known.members(options.target).values():
                auth_headers(endpoint, self._env)
            plan = await move_batches(db, plan, options.target)
        plan = await self._set_waiting_apart(db, plan)
        if options.max_cost_usd is not None:
            for batch_id in plan.batches:
                await db.set_max_cost(batch_id, options.max_cost_usd)
        if options.lane is not None:
            for batch_name in plan.batches.values():
                check_lane(options.lane, self._known, batch_name)
            for batch_id in plan.batches:
                await db.set_batch_lane(batch_id, options.lane)
                if options.lane != Lane.AUTO:
                    await db.set_queued_lane(batch_id, options.lane)
        await self._hold_unpriced(db, list(plan.batches))
        return plan

    async def _unpriced_of(self, db: WorkerDatabase, batch_id: str) -> list[str]:
        """The models of the batch's queued requests that have no price."""
        return unpriced_models([row[0] for row in await db.queued_by_model(batch_id)], self._prices)

    async def _refuse_unpriced(self, db: WorkerDatabase, plan: RunPlan) -> RunPlan:
        """``--max-cost`` for batches with queued requests of models without a price, and
        no ``--hold-unpriced``: the first pass refuses the run (UnpricedModelsError, nothing
        stored or sent); a later one (forever) leaves those batches waiting."""
        unpriced = {}
        # Models whose requests a batch holds already were let in with --hold-unpriced.
        held = await db.held_by_model(list(plan.batches))
        for batch_id in plan.batches:
            found = await self._unpriced_of(db, batch_id)
            if found := [model for model in found if model not in held.get(batch_id, {})]:
                unpriced[batch_id] = found
        if not unpriced:
            return plan
        if not self._planned:
            raise unpriced_refusal(
                {f"batch {batch_id}": found for batch_id, found in unpriced.items()},
                config_file=config_file_name(self._known),
                nothing="sent",
            )
        waiting = dict(plan.waiting)
        for batch_id, found in unpriced.items():
            waiting[batch_id] = WaitingBatch(
                batch_id,
                plan.batches[batch_id],
                f"it has requests of {', '.join(found)}, which have no price, so this run's "
                f"--max-cost cannot be kept for it; add the price to the config file, or run "
                f"it with {HOLD_UNPRICED_FLAG}",
            )
        kept = {b: name for b, name in plan.batches.items() if b not in unpriced}
        return RunPlan(kept, plan.skipped, plan.lane_only, waiting)

    async def _hold_unpriced(self, db: WorkerDatabase, batch_ids: list[str]) -> None:
        """In the batches with a budget: hold the queued requests of models without a price
        (no lane sends them, so the priced ones run within the budget instead of the whole
        batch pausing), and give back to the batch's lane those whose model has a price now."""
        budgets = await db.max_costs(batch_ids)
        budgeted = [batch_id for batch_id in batch_ids if budgets.get(batch_id) is not None]
        if not budgeted:
            return
        held = await db.held_by_model(budgeted)
        lanes = await db.batch_lanes(budgeted)
        for batch_id in budgeted:
            unpriced = await self._unpriced_of(db, batch_id)
            priced_now = [model for model in held.get(batch_id, {}) if model not in unpriced]
            if priced_now:
                lane = Lane.BATCH if lanes.get(batch_id) == Lane.BATCH else Lane.REALTIME
                released = await db.release_held(batch_id, priced_now, lane)
                self._on_note(
                    f"{batch_id}: {released:,} held requests of {', '.join(priced_now)} "
                    "have a price now and are sent"
                )
            await db.hold_models(batch_id, unpriced)

    async def _set_waiting_apart(self, db: WorkerDatabase, plan: RunPlan) -> RunPlan:
        """The plan without the batches whose endpoint cannot be used from here (a key or
        ``headers_env`` variable not set, an endpoint or pool not defined), which go to its
        ``waiting``, each told once to ``on_note``. Nothing is written: the batch stays queued,
        and a worker with the key (or the next run here) sends it."""
        ids = [*plan.batches, *plan.lane_only]
        if not ids:
            return plan
        providers: dict[str, set[str]] = {}
        for row in await db.provider_batches_of(ids, open_only=True):
            providers.setdefault(row.batch_id, set()).add(row.endpoint)
        waiting = dict(plan.waiting)
        for batch_id, name in (plan.batches | plan.lane_only).items():
            also = sorted(providers.get(batch_id, set()) - {name})
            found = waiting_reason(batch_id, name, self._known, self._env, also=also)
            if found is not None:
                waiting[batch_id] = found
                self._on_note(
                    f"{batch_id}: left waiting, nothing sent: {found.reason}; then "
                    f"`batchrun run {batch_id}`"
                )
        if len(waiting) == len(plan.waiting):
            return plan
        return RunPlan(
            {b: name for b, name in plan.batches.items() if b not in waiting},
            plan.skipped,
            {b: name for b, name in plan.lane_only.items() if b not in waiting},
            waiting,
        )
