"""The wiring of a run's batch lane: which batches use it, the auto lane's choice, and the
driver's wiring (batch API clients with the run's keys, on the run's simulator when
in-process; the Messages client and limiter its cache refreshes go through)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from batchrun.batch_lane import lane_endpoint
from batchrun.batch_lane.auto import auto_lane
from batchrun.config.prices import PriceTable, cost_of
from batchrun.dispatch.clock import LoopClock
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.errors import BatchrunError
from batchrun.limits.dimensions import RateLimits
from batchrun.ops.planning import ModelPlan
from batchrun.records import Lane, Succeeded, Usage
from batchrun.transport.endpoints import Endpoint, Endpoints, auth_headers
from batchrun.transport.http import HttpTransport

if TYPE_CHECKING:
    from batchrun.batch_lane.driver import (
        BatchBudget,
        LaneDriver,
        LaneReport,
        LaneTarget,
        Refresh,
    )
    from batchrun.store.store import Store
    from batchrun.transport.batch_api import BatchApiClient

# The driver and the batch API client load only for a run that uses the batch lane.

# After a stop (Ctrl-C, SIGTERM, --max-runtime), the lane's step in progress gets this
# long to end by itself (a results download ends at once); then a poll, a list or a cancel
# is cut off as a crash would cut it, which the lane survives (an import runs again from
# the start, a cancel is sent again). A create in flight is let end (its timeout bounds it).
STOP_GRACE_S = 3.0
# Connections of the client that sends an endpoint's cache refreshes (one at a time).
REFRESH_CONNECTIONS = 2


@dataclass
class LaneRun:
    """The batch lane of one pass: its driver and the task running it."""

    driver: LaneDriver
    task: asyncio.Task[LaneReport]

    async def finish(self, *, stop: bool) -> LaneReport:
        """Wait for the driver (stopping it first when the run was told to stop: a step that
        does not end within ``STOP_GRACE_S``, such as a poll the provider never answers, is
        cut off; a create in flight is not, see ``LaneDriver.creating``)."""
        if not stop:
            return await self.task
        self.driver.stop()
        done, _ = await asyncio.wait({self.task}, timeout=STOP_GRACE_S)
        while not done and self.driver.creating:
            done, _ = await asyncio.wait({self.task}, timeout=STOP_GRACE_S)
        if done:
            return self.task.result()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return self.driver.report


async def start_lane(
    db: WorkerDatabase,
    stack: AsyncExitStack,
    batches: Mapping[str, str],
    *,
    known: Endpoints,
    env: Mapping[str, str],
    poll_interval_s: float,
    overrides: RateLimits,
    simulator: Callable[[], HttpTransport],
    on_note: Callable[[str], None],
    prices: PriceTable,
) -> LaneRun | None:
    """Start the batch lane for those of ``batches`` (id → endpoint name) that use it (lane
    batch or auto, or a provider batch still open); None when none does. An auto batch's
    queued requests are sent to the lane it chooses now."""
    ids = list(batches)
    lanes = await db.batch_lanes(ids)
    open_rows = await db.provider_batches_of(ids, open_only=True)
    if not open_rows and all(
        lanes.get(batch_id, Lane.REALTIME) == Lane.REALTIME for batch_id in ids
    ):
        return None
    from batchrun.batch_lane.driver import LaneDriver, LaneTarget
    from batchrun.transport.batch_api import open_batch_api

    budgets = await db.max_costs(ids)

    with_rows = {row.batch_id: row.endpoint for row in open_rows}
    targets: dict[str, LaneTarget] = {}
    clients: dict[str, BatchApiClient] = {}
    refreshers: dict[str, Refresh] = {}
    now = LoopClock().now()
    for batch_id, name in batches.items():
        lane = lanes.get(batch_id, Lane.REALTIME)
        if lane == Lane.REALTIME and batch_id not in with_rows:
            continue
        endpoint = lane_endpoint(known, name)
        if endpoint is None and batch_id in with_rows:
            endpoint = known.get(with_rows[batch_id])
        if endpoint is None or endpoint.batch_api is None:
            continue
        cancel_at = None
        if lane == Lane.AUTO:
            summary = await db.get_batch(batch_id)
            realtime_s = await _realtime_s(db, batch_id, endpoint, overrides)
            choice, cancel_at = auto_lane(
                now=now,
                deadline=summary.expires_at,
                realtime_s=realtime_s,
                typical_s=endpoint.batch_api.typical_s,
                poll_interval_s=poll_interval_s,
            )
            moved = await db.set_queued_lane(batch_id, choice)
            if moved:
                where = "the batch lane" if choice == Lane.BATCH else "real time"
                until = f" until {cancel_at:%Y-%m-%d %H:%M} UTC" if cancel_at else ""
                on_note(f"{batch_id}: auto lane: {moved:,} queued requests go to {where}{until}")
        if endpoint.name not in clients:
            transport = simulator() if endpoint.in_process else None
            clients[endpoint.name] = await stack.enter_async_context(
                open_batch_api(
                    endpoint,
                    auth_headers(endpoint, env),
                    transport=transport,
                    create_timeout_s=endpoint.timeout_s,
                )
            )
        client = clients[endpoint.name]
        budget_usd = budgets.get(batch_id)
        budget = None
        if budget_usd is not None:
            budget = _budget(db, batch_id, budget_usd, prices, endpoint.batch_api.discount)
        if endpoint.name not in refreshers:
            refreshers[endpoint.name] = await _refresher(
                db, stack, endpoint, env, overrides, simulator
            )
        targets[batch_id] = LaneTarget(
            endpoint, client, cancel_at, budget, refresh=refreshers[endpoint.name]
        )
    if not targets:
        return None
    driver = LaneDriver(
        db,
        targets,
        poll_interval_s=poll_interval_s,
        create_timeout_s=_create_timeout_s(targets.values()),
        on_note=on_note,
    )
    return LaneRun(driver, asyncio.create_task(driver.run(), name="batchrun-lane"))


async def _refresher(
    db: WorkerDatabase,
    stack: AsyncExitStack,
    endpoint: Endpoint,
    env: Mapping[str, str],
    overrides: RateLimits,
    simulator: Callable[[], HttpTransport],
) -> Refresh:
    """What sends the endpoint's cache refreshes (:mod:`batchrun.batch_lane.warmth`): its
    Messages client, paced by a limiter on the run's shared rate buckets (the database's,
    as the dispatcher's), so refreshes take their share of the limits like any request."""
    import json

    from batchrun.input.estimate import estimate_input_tokens
    from batchrun.limits.banks import DatabaseBank
    from batchrun.limits.limiter import Demand, Limiter
    from batchrun.ops.runner import rate_limits, unix_clock
    from batchrun.transport.endpoints import DEFAULT_TIMEOUT_S
    from batchrun.transport.http import create_http_client
    from batchrun.transport.messages import MessagesClient

    timeout_s = endpoint.timeout_s or DEFAULT_TIMEOUT_S
    http = await stack.enter_async_context(
        create_http_client(
            timeout_s=timeout_s,
            max_connections=REFRESH_CONNECTIONS,
            transport=simulator() if endpoint.in_process else None,
        )
    )
    sender = MessagesClient(
        http,
        endpoint=endpoint,
        headers=auth_headers(endpoint, env),
        timeout_s=timeout_s,
        max_response_bytes=endpoint.max_response_bytes,
    )
    limiter = Limiter(
        rate_limits({endpoint.name: endpoint}),
        overrides=overrides,
        endpoint_limits={endpoint.name: endpoint.endpoint_limits},
        bank=DatabaseBank(db, clock=unix_clock()),
    )
    stack.push_async_callback(limiter.release)

    async def refresh(model: str, body: str) -> Usage | None:
        demand = Demand(estimate_input_tokens(json.loads(body)), 1)
        permit = await limiter.acquire((endpoint.name, model), demand)
        outcome = await sender.send(body)
        limiter.settle(permit, outcome)
        return outcome.usage if isinstance(outcome, Succeeded) else None

    return refresh


def _budget(
    db: WorkerDatabase, batch_id: str, budget_usd: float, prices: PriceTable, discount: float
) -> BatchBudget:
    """The batch's budget for the lane: the worst case of a request at the lane's discount
    (a model without a price never fits: its cost cannot be counted), and what is left of the
    budget after what was spent and what provider batches hold at their worst case."""
    from batchrun.batch_lane.driver import BatchBudget

    def worst_usd(model: str, input_estimate: int, max_tokens: int) -> float:
        price = prices.price_for(model)
        if price is None:
            return math.inf
        return price.cost_usd(input_tokens=input_estimate, output_tokens=max_tokens) * discount

    async def remaining_usd() -> float | None:
        usage = (await db.usage_by_model([batch_id])).get(batch_id, [])
        spent = cost_of(usage, prices).known_usd
        held = await db.queued_by_model(batch_id, state="provider")
        return budget_usd - spent - sum(worst_usd(m, est, out) for m, _, est, out in held)

    return BatchBudget(remaining_usd, worst_usd)


def _create_timeout_s(targets: Iterable[LaneTarget]) -> float:
    """The longest a create can take among the targets (their endpoints' timeout_s)."""
    from batchrun.transport.batch_api import CREATE_TIMEOUT_S

    timeouts = [target.endpoint.timeout_s or CREATE_TIMEOUT_S for target in targets]
    return max(timeouts, default=CREATE_TIMEOUT_S)


async def _realtime_s(
    db: WorkerDatabase, batch_id: str, endpoint: Endpoint, overrides: RateLimits
) -> float | None:
    """Seconds real time needs for the batch's queued requests under the endpoint's limits
    (every reply assumed to use its max_tokens), or None when a model has no limit."""
    slowest = 0.0
    for model, count, input_tokens, max_output in await db.queued_by_model(batch_id):
        limits = endpoint.limits_for(model) or RateLimits()
        plan = ModelPlan(
            model=model,
            requests=count,
            input_tokens=input_tokens,
            max_output_tokens=max_output,
            limits=overrides.merged_over(limits),
        )
        minutes, _ = plan.duration(max_output)
        if minutes is None:
            return None
        slowest = max(slowest, minutes * 60.0)
    return slowest


async def cancel_provider_batches(
    store: Store, batch_id: str, *, known: Endpoints, env: Mapping[str, str], now: datetime
) -> list[str]:
    """Ask the provider to cancel the batch's open provider batches (what they finished
    stays, and is imported by the next run); returns what a person should know. An endpoint
    whose key is not set here is left to the next run, which cancels them itself."""
    from batchrun.transport.batch_api import CallFailed, open_batch_api

    notes: list[str] = []
    for row in store.provider_batches.of_batches([batch_id], open_only=True):
        if row.provider_id is None or row.cancel_sent_at is not None:
            continue
        endpoint = known.by_name.get(row.endpoint)
        if endpoint is None or endpoint.batch_api is None or endpoint.in_process:
            notes.append(f"provider batch {row.provider_id}: the next run cancels it")
            continue
        try:
            headers = auth_headers(endpoint, env)
        except BatchrunError as exc:
            notes.append(
                f"provider batch {row.provider_id}: not canceled now ({exc.message}); "
                "the next run cancels it"
            )
            continue
        async with open_batch_api(endpoint, headers) as client:
            answer = await client.cancel(row.provider_id)
        if isinstance(answer, CallFailed) and answer.kind == "transient":
            notes.append(
                f"provider batch {row.provider_id}: cancel failed ({answer.message}); "
                "the next run tries again"
            )
            continue
        store.provider_batches.cancel_sent(row.id, now)
        notes.append(
            f"provider batch {row.provider_id}: canceled at the provider; the next run imports "
            "what it finished"
        )
    return notes
