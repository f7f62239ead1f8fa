"""One pass of a run: plan → dispatch → summarise.

:meth:`PassRunner.run_pass` is three steps. *Plan*: the
:class:`~batchrun.ops.pass_plan.PassPlanner` picks the batches (moving them to another
endpoint and storing a new budget or lane when asked, setting apart those that cannot be sent
from here), and the pass reads their budgets and counts. *Dispatch*: the dispatcher sends
them, with the pass's side tasks running beside it on the exit stack the dispatch holds open
(the batch lane, progress events, webhook notices, and in a forever pass the
:class:`~batchrun.ops.forever.ForeverJoiner`, which adds batches submitted meanwhile);
leaving the stack stops them, newest first, however the dispatch ends. *Summarise*: the
batches as they are now, their costs, the exit code, told as a
:class:`~batchrun.ops.run_types.PassFinished`.

A :class:`~batchrun.ops.session.RunSession` holds one runner for the whole run and decides
when passes start and end; the runner keeps what lasts across passes (the 429s counted, the
limits recorded, the in-process simulator) and stops the dispatch in progress on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchrun.config.prices import PriceTable
from batchrun.dispatch.counts import RunReport
from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.ops.budget import BudgetGuard, held_reason
from batchrun.ops.forever import ForeverJoiner
from batchrun.ops.lane_wiring import LaneRun, start_lane
from batchrun.ops.limit_recorder import LimitRecorder
from batchrun.ops.monitor import ProgressSnapshot, RunMonitor
from batchrun.ops.notices import RunNotices
from batchrun.ops.pass_plan import PassPlanner, batch_costs
from batchrun.ops.run_types import (
    Note,
    PassFinished,
    PassResult,
    ProcessCounters,
    Progress,
    RunEvent,
    RunOptions,
    pass_exit_code,
)
from batchrun.ops.runner import (
    RunPlan,
    dispatch_batches,
    dispatch_config,
    run_endpoints,
    simulator_transport,
)
from batchrun.records import BatchSummary
from batchrun.transport.endpoints import Endpoint, Endpoints
from batchrun.transport.http import HttpTransport


@dataclass
class _Pass:
    """A pass once planned: its plan, the endpoints it sends to, each batch's budget (and the
    guard that keeps them), the batches as they were before it, and the monitor that
    watches it. A forever pass adds the batches that join it to ``joined``, ``budgets``, the
    guard and the monitor as it runs."""

    plan: RunPlan
    endpoints: dict[str, Endpoint]
    budgets: dict[str, float | None]
    guard: BudgetGuard | None
    before: dict[str, BatchSummary]
    monitor: RunMonitor
    exclude: set[str]
    joined: dict[str, BatchSummary] = field(default_factory=dict)

    @property
    def planned_ids(self) -> set[str]:
        """Every batch the plan has, waiting ones too."""
        plan = self.plan
        return set(plan.batches) | set(plan.lane_only) | set(plan.waiting)


class _SideTasks:
    """Tasks that run beside a dispatch: started with :meth:`start`, cancelled (newest first)
    and awaited by :meth:`aclose`, which the dispatch's exit stack calls."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    async def aclose(self) -> None:
        for task in reversed(self._tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class PassRunner:
    """Runs the passes of one run, one at a time, and stops the one dispatching on request."""

    def __init__(
        self,
        *,
        known: Endpoints,
        prices: PriceTable,
        env: Mapping[str, str],
        options: RunOptions,
        emit: Callable[[RunEvent], None],
        notices: RunNotices | None,
        wakeup: asyncio.Event,
    ) -> None:
        """``emit``: where the run's events go; ``notices``: the run's webhook notices (None:
        none); ``wakeup``: set when a forever pass should look for batches to join now."""
        self._known = known
        self._prices = prices
        self._env = env
        self._options = options
        self._emit = emit
        self._notices = notices
        self._wakeup = wakeup
        # Why the run was asked to stop (a signal), and the dispatch it must stop.
        self._stopping: str | None = None
        self._dispatcher: Dispatcher | None = None
        # The in-process simulator of this run, made on first use: both lanes talk to it.
        self._simulator_made: HttpTransport | None = None
        # The 429s of the passes that ended. Changed with _dispatcher under _counting, so
        # counters() on another thread never sees a pass counted twice or not at all.
        self._rate_limited_before = 0
        self._counting = threading.Lock()
        self._planner = PassPlanner(
            known=known, prices=prices, env=env, options=options, on_note=self._note
        )
        # The limits this run sends each batch under, recorded for its report.
        self._limit_records = LimitRecorder(
            known=known,
            overrides=options.overrides,
            endpoint_overrides=options.endpoint_overrides,
        )

    @property
    def stopping(self) -> str | None:
        """Why the run was asked to stop; None: it was not."""
        return self._stopping

    def request_stop(self, reason: str) -> None:
        """No new pass starts, and the dispatch in progress drains (a second stop ends it at
        once)."""
        self._stopping = reason
        if self._dispatcher is not None:
            self._dispatcher.request_stop(reason)

    @property
    def live_report(self) -> RunReport | None:
        """What the pass dispatching now has done so far (None between passes)."""
        return self._dispatcher.report if self._dispatcher is not None else None

    def counters(self) -> ProcessCounters:
        """The 429s of every pass, the one dispatching now included. Never lower than
        before. Safe to call from any thread."""
        with self._counting:
            dispatcher = self._dispatcher
            live = dispatcher.report.rate_limited if dispatcher is not None else 0
            return ProcessCounters(rate_limited=self._rate_limited_before + live)

    async def run_pass(
        self, db: WorkerDatabase, deadline: float | None, *, exclude: set[str]
    ) -> PassResult | None:
        """One pass, ending by ``deadline`` (loop time) if given, of the batches with work
        but ``exclude``: None when there was nothing to plan."""
        planned = await self._plan(db, deadline, exclude=exclude)
        if planned is None:
            return None
        report, snapshot = await self._dispatch(db, planned)
        return await self._summarise(db, planned, report, snapshot)

    async def _plan(
        self, db: WorkerDatabase, deadline: float | None, *, exclude: set[str]
    ) -> _Pass | None:
        """The pass's batches with the run's options stored on them, their budgets and how
        they are now, and a monitor to watch them; None when there is nothing to do."""
        plan = await self._planner.plan(db, exclude)
        if not plan.batches and not plan.lane_only and not plan.waiting:
            return None
        endpoints = run_endpoints(plan, self._known)
        ids = list(plan.batches)
        budgets = await db.max_costs(ids)
        guard = None
        if any(value is not None for value in budgets.values()):
            guard = BudgetGuard(self._prices, budgets, await batch_costs(db, ids, self._prices))
        before = {batch_id: await db.get_batch(batch_id) for batch_id in ids}
        waiting_before = {batch_id: await db.get_batch(batch_id) for batch_id in plan.waiting}
        if self._notices is not None:
            self._notices.begin_pass(before | waiting_before)
        loop = asyncio.get_running_loop()
        monitor = RunMonitor(
            prices=self._prices,
            counts={batch_id: batch.counts for batch_id, batch in before.items()},
            guard=guard,
            max_runtime_s=None if deadline is None else deadline - loop.time(),
            db=db,
        )
        return _Pass(
            plan=plan,
            endpoints=endpoints,
            budgets=budgets,
            guard=guard,
            before=before | waiting_before,
            monitor=monitor,
            exclude=exclude,
        )

    async def _dispatch(
        self, db: WorkerDatabase, planned: _Pass
    ) -> tuple[RunReport, ProgressSnapshot]:
        """Send the plan's batches (and run its batch lane) with the pass's side tasks beside
        the dispatcher; returns the dispatcher's report and the last snapshot. Every side
        task is registered with the exit stack as it starts, so leaving it (however the
        dispatch ends) stops them in the reverse order: the joiner, the batch lane and its
        clients, the monitor, the limit records, then the progress and notice watchers."""
        plan, monitor = planned.plan, planned.monitor
        if not plan.batches and not plan.lane_only:
            # Every batch of the pass waits (its endpoint cannot be used here): nothing to send.
            await monitor.refresh_counts(max_age_s=0.0)
            snapshot = monitor.snapshot()
            monitor.close()
            return RunReport(), snapshot
        options = self._options
        async with contextlib.AsyncExitStack() as stack:
            watchers = _SideTasks()
            stack.push_async_callback(watchers.aclose)
            stack.push_async_callback(self._limit_records.pass_ended)
            stack.callback(monitor.close)
            lane = await start_lane(
                db,
                stack,
                plan.batches | plan.lane_only,
                known=self._known,
                env=self._env,
                poll_interval_s=options.poll_interval_s,
                overrides=options.overrides,
                simulator=self._simulator,
                on_note=self._note,
                prices=self._prices,
            )
            if lane is not None:
                stack.push_async_callback(_stop_lane, lane)
            joiners = _SideTasks()
            stack.push_async_callback(joiners.aclose)
            stack.callback(self._dispatch_ended)
            # Started after the lane: a missing or broken key is reported before any progress.
            if options.progress_interval_s is not None:
                watchers.start(self._watch(monitor, options.progress_interval_s), "batchrun-watch")
            if self._notices is not None:
                watchers.start(
                    self._notices.watch(
                        db,
                        lambda: [*plan.batches, *plan.lane_only, *planned.joined],
                        lambda: self.live_report.paused if self.live_report is not None else {},
                    ),
                    "batchrun-notify-watch",
                )
            if options.forever:
                joiners.start(self._joiner(db, planned).run(), "batchrun-join")
            report = await dispatch_batches(
                db,
                plan.batches,
                endpoints=planned.endpoints,
                env=self._env,
                dispatch=dispatch_config(
                    planned.endpoints,
                    max_concurrency=options.max_concurrency,
                    max_attempts=options.max_attempts,
                    count_tokens=options.count_tokens,
                ),
                overrides=options.overrides,
                endpoint_overrides=options.endpoint_overrides,
                limiter_settings=options.limiter_settings,
                timeout_s=options.timeout_s,
                observer=self._limit_records.watching(monitor, db),
                pools=self._known.pools,
                on_start=self._started,
                linger=None if lane is None else lane.driver,
                simulator_transport=(self._simulator() if _in_process(planned.endpoints) else None),
            )
            if lane is not None:
                stop = report.interrupted is not None or monitor.time_limit_reached
                lane_report = await lane.finish(stop=stop)
                for batch_id, why in lane_report.paused.items():
                    report.paused.setdefault(batch_id, why)
            await monitor.refresh_counts(max_age_s=0.0)
            snapshot = monitor.snapshot()
        return report, snapshot

    async def _summarise(
        self,
        db: WorkerDatabase,
        planned: _Pass,
        report: RunReport,
        snapshot: ProgressSnapshot,
    ) -> PassResult:
        """What the pass did: its batches (those that joined it and those it left waiting
        too) as they are now, why each paused or waits, costs, the exit code; told to the
        notices and as a PassFinished."""
        plan = planned.plan
        for batch_id, found in plan.waiting.items():
            report.paused.setdefault(batch_id, found.reason)
        ids = list(plan.batches)
        ids += [batch_id for batch_id in plan.lane_only if batch_id not in ids]
        ids += [batch_id for batch_id in planned.joined if batch_id not in ids]
        ids += [batch_id for batch_id in plan.waiting if batch_id not in ids]
        budgets = planned.budgets
        held = await db.held_by_model(ids)
        for batch_id, models in held.items():
            report.paused.setdefault(batch_id, held_reason(batch_id, models, budgets.get(batch_id)))
        before = planned.before | planned.joined
        batches = tuple([await db.get_batch(batch_id) for batch_id in ids])
        stopped = planned.monitor.time_limit_reached and any(b.counts.processing for b in batches)
        # Canceled while this pass ran: seen by the dispatcher's watch, or (when the cancel
        # emptied the queue before the watch looked, and the pass simply ran out of work) by
        # the batch's own record.
        canceled = report.canceled_batches | {
            b.id
            for b in batches
            if b.cancel_initiated_at is not None
            and b.id in before
            and before[b.id].cancel_initiated_at is None
        }
        done = PassResult(
            batches=batches,
            report=report,
            snapshot=snapshot,
            stopped_by_time_limit=stopped,
            costs=await batch_costs(db, ids, self._prices),
            budgets=budgets,
            exit_code=pass_exit_code(report, batches, stopped=stopped, canceled=bool(canceled)),
            waiting=tuple(plan.waiting.values()),
            held=held,
        )
        if self._notices is not None:
            self._notices.pass_ended(
                batches, costs=done.costs, paused=report.paused, interrupted=report.interrupted
            )
        self._emit(PassFinished(done))
        return done

    # -- beside a dispatch ----------------------------------------------------------------

    def _dispatch_ended(self) -> None:
        """Count the ended dispatch's 429s among the passes before, and forget it."""
        with self._counting:
            if self._dispatcher is not None:
                self._rate_limited_before += self._dispatcher.report.rate_limited
            self._dispatcher = None

    def _joiner(self, db: WorkerDatabase, planned: _Pass) -> ForeverJoiner:
        """The forever joiner of a pass: it adds batches submitted meanwhile to it."""
        return ForeverJoiner(
            db,
            planner=self._planner,
            known=self._known,
            prices=self._prices,
            ignored=planned.planned_ids | planned.exclude,
            sent_to=set(planned.endpoints),
            monitor=planned.monitor,
            guard=planned.guard,
            joined=planned.joined,
            budgets=planned.budgets,
            dispatcher=lambda: self._dispatcher,
            stopping=lambda: self._stopping is not None,
            wakeup=self._wakeup,
            on_note=self._note,
        )

    def _note(self, text: str) -> None:
        self._emit(Note(text))

    async def _watch(self, monitor: RunMonitor, interval_s: float) -> None:
        # A first snapshot at once: a log shows the run started, and what it has to do.
        await asyncio.sleep(0)
        while True:
            # What other processes did (cancels, other workers, imports), read for this line.
            await monitor.refresh_counts()
            self._emit(Progress(monitor.snapshot()))
            await asyncio.sleep(interval_s)

    def _started(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        if self._stopping is not None:
            # A stop that came while the pass planned. The dispatcher is made but has no
            # batches yet (run() takes them next, before its first await): a stop now would
            # stop none of them, and the pass would send everything. Once run() has them.
            asyncio.get_running_loop().call_soon(dispatcher.request_stop, self._stopping)

    def _simulator(self) -> HttpTransport:
        if self._simulator_made is None:
            self._simulator_made = simulator_transport()
        return self._simulator_made


async def _stop_lane(lane: LaneRun) -> None:
    """Stop a batch lane the pass did not finish (the dispatch failed or was cancelled)."""
    if not lane.task.done():
        lane.driver.stop()
        await asyncio.gather(lane.task, return_exceptions=True)


def _in_process(endpoints: Mapping[str, Endpoint]) -> bool:
    return any(endpoint.in_process for endpoint in endpoints.values())
