"""A run as a whole: plan the batches, dispatch them with a monitor watching, report; once, or
pass after pass until stopped (``forever``).

A pass plans the batches (moving them to another endpoint and storing a new budget when asked),
dispatches them with a :class:`~batchrun.ops.monitor.RunMonitor` watching (progress, budgets,
the time limit), then reports. ``forever`` repeats passes, ``poll_interval_s`` apart while
there is nothing to do (or at once when :meth:`RunSession.wake` is called), until the time
limit or Ctrl-C. While a forever pass dispatches, batches submitted meanwhile join it when
they can be sent the way it sends (:meth:`RunSession._join_new`), so a new batch starts within
about a second rather than after the pass, which may take hours.

Nothing here prints. What a run has to tell goes out as :data:`RunEvent` values to the
caller's ``on_event``: a :class:`Note` for a person, a :class:`Progress` snapshot every
``progress_interval_s``, and a :class:`PassFinished` with each pass's :class:`PassResult`. The
CLI turns them into a live view or log lines; the Python API leaves them to the caller. With a
``notifier``, batches that end, pause, expire or are interrupted are told to a webhook as well
(:mod:`batchrun.ops.notices`), while the run goes on.

Every database call goes through the run's one :class:`~batchrun.dispatch.worker_db.WorkerDatabase`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchrun.config.prices import CostTotal, PriceTable, cost_of
from batchrun.dispatch.config import DEFAULT_CONTROL_POLL_S
from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.report import RunReport
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.errors import ExitCode
from batchrun.export.batch_object import BatchObject, cost_json
from batchrun.lanes import AUTO, BATCH, REALTIME, check_lane
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import LimiterSettings
from batchrun.ops.budget import (
    HOLD_UNPRICED_FLAG,
    BudgetGuard,
    config_file_name,
    held_reason,
    unpriced_models,
    unpriced_refusal,
)
from batchrun.ops.lanes import LaneRun, start_lane
from batchrun.ops.limit_recorder import LimitRecorder
from batchrun.ops.metrics import ProcessCounters
from batchrun.ops.monitor import ProgressSnapshot, RunMonitor
from batchrun.ops.notices import RunNotices
from batchrun.ops.runner import (
    RunPlan,
    WaitingBatch,
    dispatch_batches,
    dispatch_config,
    move_batches,
    plan_run,
    run_endpoints,
    simulator_transport,
    waiting_reason,
)
from batchrun.records import BatchSummary
from batchrun.transport.client import HttpTransport
from batchrun.transport.endpoints import Endpoint, Endpoints, auth_headers

if TYPE_CHECKING:
    from batchrun.store.store import Store
    from batchrun.transport.notify import WebhookNotifier

log = logging.getLogger(__name__)

# How often a forever pass looks for batches to join it, unless woken: as often as the
# dispatcher looks for cancellations, so a new batch starts within about a second.
JOIN_POLL_S = DEFAULT_CONTROL_POLL_S


@dataclass(frozen=True)
class RunOptions:
    """What a run is asked to do (the flags of ``batchrun run``, the arguments of
    ``Client.run``)."""

    batch_ids: tuple[str, ...] = ()
    # Move the batches' remaining requests to this endpoint, for this run and later ones.
    target: str | None = None
    # Send the batches' queued requests in this lane (realtime, batch, auto), for this run
    # and later ones; None: each batch's own.
    lane: str | None = None
    max_cost_usd: float | None = None
    # With max_cost_usd: hold the requests of models without a price instead of refusing
    # the budget for their batches (UnpricedModelsError).
    hold_unpriced: bool = False
    max_runtime_s: float | None = None
    forever: bool = False
    poll_interval_s: float = 30.0
    overrides: RateLimits = field(default_factory=RateLimits)
    limiter_settings: LimiterSettings = field(default_factory=LimiterSettings)
    timeout_s: float | None = None
    # None: worked out from the limits and latency (batchrun.dispatch.capacity).
    max_concurrency: int | None = None
    max_attempts: int | None = None
    count_tokens: bool = False
    # How often a Progress event goes out; None: never.
    progress_interval_s: float | None = None
    stop_on_signals: bool = True


@dataclass(frozen=True)
class PassResult:
    """What one pass did: its batches as they are now, the dispatcher's report, the last
    progress snapshot, whether the time limit stopped it, costs and budgets by batch, the
    exit code it earns, and the batches it left waiting because their endpoint cannot be
    used here (also in ``report.paused``, with the same reason)."""

    batches: tuple[BatchSummary, ...]
    report: RunReport
    snapshot: ProgressSnapshot
    stopped_by_time_limit: bool
    costs: Mapping[str, CostTotal]
    budgets: Mapping[str, float | None]
    exit_code: ExitCode
    waiting: tuple[WaitingBatch, ...] = ()
    # Per batch with a budget: its requests held because their model has no price, per
    # model (they stay queued, unsent; the reason is in report.paused).
    held: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What ``run --json`` prints: each batch (the batch object with its cost and budget),
        what this pass did, and why it stopped."""
        report, snapshot = self.report, self.snapshot
        batches = []
        for batch in self.batches:
            item = BatchObject.from_summary(batch).model_dump(mode="json")
            item |= cost_json(self.costs[batch.id]) | {"max_cost_usd": self.budgets.get(batch.id)}
            batches.append(item)
        run = {
            "sent": report.sent,
            "succeeded": report.succeeded,
            "errored": report.errored,
            "canceled": report.canceled,
            "retried": report.retried,
            "rate_limited": report.rate_limited,
            "elapsed_s": round(snapshot.elapsed_s, 3),
            "input_tokens": snapshot.input_tokens,
            "output_tokens": snapshot.output_tokens,
            "cache_creation_input_tokens": snapshot.cache_creation_input_tokens,
            "cache_read_input_tokens": snapshot.cache_read_input_tokens,
            "error_types": dict(report.error_types),
        } | cost_json(snapshot.cost)
        return {
            "batches": batches,
            "run": run,
            "paused": dict(report.paused),
            "waiting": {w.batch_id: w.reason for w in self.waiting},
            "held": {batch_id: dict(models) for batch_id, models in self.held.items()},
            "stopped_by_time_limit": self.stopped_by_time_limit,
            "exit_code": int(self.exit_code),
        }


@dataclass(frozen=True)
class RunResult:
    """How a run ended: its exit code, its last pass (None when there was nothing to run),
    how many passes it made, and every batch it left waiting because its endpoint cannot be
    used here (a key or header variable not set, an endpoint not defined): nothing of them
    was sent, and the exit code is PAUSED (4) unless an interruption comes first."""

    exit_code: ExitCode
    last: PassResult | None = None
    passes: int = 0
    waiting: tuple[WaitingBatch, ...] = ()


@dataclass(frozen=True)
class Note:
    """Something a person watching the run should read."""

    text: str


@dataclass(frozen=True)
class Progress:
    """The run at one moment (every ``progress_interval_s``)."""

    snapshot: ProgressSnapshot


@dataclass(frozen=True)
class PassFinished:
    """A pass is over."""

    result: PassResult


RunEvent = Note | Progress | PassFinished


def _ignore(_event: RunEvent) -> None:
    return None


class RunSession:
    """One run over one store: one pass, or passes until stopped."""

    def __init__(
        self,
        store: Store,
        *,
        known: Endpoints,
        prices: PriceTable,
        env: Mapping[str, str],
        options: RunOptions,
        on_event: Callable[[RunEvent], None] | None = None,
        notifier: WebhookNotifier | None = None,
    ) -> None:
        """``notifier``: where batches that end, pause, expire or are interrupted are told
        (:mod:`batchrun.ops.notices`); None: nowhere."""
        self._store = store
        self._known = known
        self._prices = prices
        self._env = env
        self._options = options
        self._emit = on_event or _ignore
        self._notices = None if notifier is None else RunNotices(notifier, prices=prices)
        # Why the run was asked to stop (a signal), and the dispatch it must stop.
        self._stopping: str | None = None
        self._dispatcher: Dispatcher | None = None
        # Set by a stop or wake(): ends an idle wait and makes a pass look for batches to
        # join now. Cleared before each look, so a wake during one causes another.
        self._wakeup = asyncio.Event()
        # The loop run() runs on, for wake() from other threads; None when not running.
        self._loop: asyncio.AbstractEventLoop | None = None
        # The in-process simulator of this run, made on first use: both lanes talk to it.
        self._simulator_made: HttpTransport | None = None
        # The 429s of the passes that ended. Changed with _dispatcher under _counting, so
        # counters() on another thread never sees a pass counted twice or not at all.
        self._rate_limited_before = 0
        self._counting = threading.Lock()
        # Whether a pass was planned: the first refuses a budget it cannot keep (unpriced
        # models); later ones (forever) leave such a batch waiting instead of ending.
        self._planned = False
        # The limits this run sends each batch under, recorded for its report.
        self._limit_records = LimitRecorder(known=known, overrides=options.overrides)

    def _simulator(self) -> HttpTransport:
        if self._simulator_made is None:
            self._simulator_made = simulator_transport()
        return self._simulator_made

    async def run(self) -> RunResult:
        """Run one pass, or passes until the time limit or Ctrl-C (``forever``). With
        ``stop_on_signals``, Ctrl-C and SIGTERM stop it gracefully, dispatching or idle."""
        db = WorkerDatabase(self._store)
        self._loop = asyncio.get_running_loop()
        try:
            with _signals_stop(self._request_stop, enabled=self._options.stop_on_signals):
                result = await self._run(db)
            # Outside the signal handlers: a second Ctrl-C ends this bounded wait too.
            if self._notices is not None:
                await self._notices.drain()
            return result
        finally:
            if self._notices is not None:
                await self._notices.abort()
            self._loop = None
            db.close()

    def wake(self) -> None:
        """Look for new work now (a batch was just submitted): an idle forever run plans a
        pass at once instead of after the rest of ``poll_interval_s``, and a forever pass
        in progress looks for batches to join it at once. Safe to call from any thread, and
        before :meth:`run` started or after it ended (it does nothing then)."""
        loop = self._loop
        if loop is None:
            return
        # The loop may close between the read above and the call: then there is no run.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wakeup.set)

    def stop(self, reason: str) -> None:
        """Stop the run as Ctrl-C does (a host program shutting down): requests in flight
        are recorded, no new pass starts. Call it on the run's own loop."""
        self._request_stop(reason)

    @property
    def live_report(self) -> RunReport | None:
        """What the pass dispatching now has done so far (None between passes)."""
        return self._dispatcher.report if self._dispatcher is not None else None

    def counters(self) -> ProcessCounters:
        """What only this process knows of the run's sending so far: the 429s of every
        pass, the one dispatching now included (what ``run --metrics-port`` serves). Never
        lower than before. Safe to call from any thread."""
        with self._counting:
            dispatcher = self._dispatcher
            live = dispatcher.report.rate_limited if dispatcher is not None else 0
            return ProcessCounters(rate_limited=self._rate_limited_before + live)

    def _request_stop(self, reason: str) -> None:
        """Stop the run: the dispatch in progress drains (a second stop ends it at once), and
        no new pass starts."""
        self._stopping = reason
        self._wakeup.set()
        if self._dispatcher is not None:
            self._dispatcher.request_stop(reason)

    def _started(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        if self._stopping is not None:
            dispatcher.request_stop(self._stopping)

    async def _run(self, db: WorkerDatabase) -> RunResult:
        options = self._options
        loop = asyncio.get_running_loop()
        deadline = None if options.max_runtime_s is None else loop.time() + options.max_runtime_s
        if not options.forever:
            done = await self._pass(db, deadline, exclude=set())
            if done is None:
                return self._idle_result(None, 0)
            return RunResult(done.exit_code, done, 1, done.waiting)
        # Batches this run paused (credentials, budget) or left waiting (a key not set here)
        # are not retried every poll; a new run of that batch retries them.
        paused_here: set[str] = set()
        waiting: dict[str, WaitingBatch] = {}
        idle_said = False
        last: PassResult | None = None
        passes = 0
        while True:
            if deadline is not None and loop.time() >= deadline:
                # A batch paused or left waiting by an earlier pass still is: say so.
                code = ExitCode.PAUSED if paused_here else ExitCode.OK
                return RunResult(code, last, passes, tuple(waiting.values()))
            if self._stopping is not None:
                return self._idle_result(last, passes, tuple(waiting.values()))
            # Cleared before looking: a wake() from now on ends the idle wait below.
            self._wakeup.clear()
            done = await self._pass(db, deadline, exclude=paused_here)
            if done is not None:
                last, passes, idle_said = done, passes + 1, False
                paused_here.update(done.report.paused)
                waiting.update((w.batch_id, w) for w in done.waiting)
                if done.stopped_by_time_limit or done.report.interrupted:
                    code = done.exit_code
                    if paused_here and code in _BELOW_PAUSED:
                        code = ExitCode.PAUSED
                    return RunResult(code, last, passes, tuple(waiting.values()))
                continue
            if not idle_said:
                self._emit(
                    Note(f"no queued work; looking again every {options.poll_interval_s:g} s")
                )
                idle_said = True
            pause_s = options.poll_interval_s
            if deadline is not None:
                pause_s = min(pause_s, max(deadline - loop.time(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), pause_s)

    def _idle_result(
        self, last: PassResult | None, passes: int, waiting: tuple[WaitingBatch, ...] = ()
    ) -> RunResult:
        """How a run that is not dispatching ends: interrupted if a stop came, else done."""
        if self._stopping is None:
            return RunResult(ExitCode.OK, last, passes, waiting)
        self._emit(Note(f"{self._stopping}: nothing was in flight; stopped"))
        return RunResult(ExitCode.INTERRUPTED, last, passes, waiting)

    # -- one pass -------------------------------------------------------------------------

    async def _plan(self, db: WorkerDatabase, exclude: set[str]) -> RunPlan:
        options = self._options
        plan = await plan_run(db, options.batch_ids)
        if exclude:
            kept = {b: e for b, e in plan.batches.items() if b not in exclude}
            plan = RunPlan(kept, plan.skipped)
        plan = await self._apply_options(db, plan)
        self._planned = True
        if not options.forever:
            for batch_id, why in plan.skipped.items():
                self._emit(Note(f"{batch_id}: {why}; nothing to run"))
            if not plan.batches and not plan.waiting and not options.batch_ids:
                self._emit(Note("no batch has queued requests"))
        return plan

    async def _apply_options(self, db: WorkerDatabase, plan: RunPlan) -> RunPlan:
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
                if options.lane != AUTO:
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
                lane = BATCH if lanes.get(batch_id) == BATCH else REALTIME
                released = await db.release_held(batch_id, priced_now, lane)
                self._emit(
                    Note(
                        f"{batch_id}: {released:,} held requests of {', '.join(priced_now)} "
                        "have a price now and are sent"
                    )
                )
            await db.hold_models(batch_id, unpriced)

    async def _set_waiting_apart(self, db: WorkerDatabase, plan: RunPlan) -> RunPlan:
        """The plan without the batches whose endpoint cannot be used from here (a key or
        ``headers_env`` variable not set, an endpoint or pool not defined), which go to its
        ``waiting``, each told once as a Note. Nothing is written: the batch stays queued,
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
                self._emit(
                    Note(
                        f"{batch_id}: left waiting, nothing sent: {found.reason}; then "
                        f"`batchrun run {batch_id}`"
                    )
                )
        if len(waiting) == len(plan.waiting):
            return plan
        return RunPlan(
            {b: name for b, name in plan.batches.items() if b not in waiting},
            plan.skipped,
            {b: name for b, name in plan.lane_only.items() if b not in waiting},
            waiting,
        )

    async def _costs(self, db: WorkerDatabase, batch_ids: list[str]) -> dict[str, CostTotal]:
        usage = await db.usage_by_model(batch_ids)
        return {batch_id: cost_of(usage.get(batch_id, []), self._prices) for batch_id in batch_ids}

    async def _pass(
        self, db: WorkerDatabase, deadline: float | None, *, exclude: set[str]
    ) -> PassResult | None:
        plan = await self._plan(db, exclude)
        if not plan.batches and not plan.lane_only and not plan.waiting:
            return None
        ids = list(plan.batches)
        endpoints = run_endpoints(plan, self._known)
        budgets = await db.max_costs(ids)
        guard = None
        if any(value is not None for value in budgets.values()):
            guard = BudgetGuard(self._prices, budgets, await self._costs(db, ids))
        loop = asyncio.get_running_loop()
        before = {batch_id: await db.get_batch(batch_id) for batch_id in ids}
        waiting_before = {batch_id: await db.get_batch(batch_id) for batch_id in plan.waiting}
        if self._notices is not None:
            self._notices.begin_pass(before | waiting_before)
        monitor = RunMonitor(
            prices=self._prices,
            counts={batch_id: batch.counts for batch_id, batch in before.items()},
            guard=guard,
            max_runtime_s=None if deadline is None else deadline - loop.time(),
            db=db,
        )
        # Batches that joined this pass while it ran (see _join_new): as they were then.
        joined: dict[str, BatchSummary] = {}
        if plan.batches or plan.lane_only:
            report, snapshot = await self._dispatch(
                db, plan, endpoints, monitor, guard, budgets, exclude=exclude, joined=joined
            )
        else:
            # Every batch of the pass waits (its endpoint cannot be used here): nothing to send.
            report, snapshot = RunReport(), monitor.snapshot()
            monitor.close()
        for batch_id, found in plan.waiting.items():
            report.paused.setdefault(batch_id, found.reason)
        ids += [batch_id for batch_id in plan.lane_only if batch_id not in ids]
        ids += [batch_id for batch_id in joined if batch_id not in ids]
        ids += [batch_id for batch_id in plan.waiting if batch_id not in ids]
        held = await db.held_by_model(ids)
        for batch_id, models in held.items():
            report.paused.setdefault(batch_id, held_reason(batch_id, models, budgets.get(batch_id)))
        before |= joined | waiting_before
        batches = tuple([await db.get_batch(batch_id) for batch_id in ids])
        stopped = monitor.time_limit_reached and any(b.counts.processing for b in batches)
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
            costs=await self._costs(db, ids),
            budgets=budgets,
            exit_code=_exit_code(report, batches, stopped=stopped, canceled=bool(canceled)),
            waiting=tuple(plan.waiting.values()),
            held=held,
        )
        if self._notices is not None:
            self._notices.pass_ended(
                batches, costs=done.costs, paused=report.paused, interrupted=report.interrupted
            )
        self._emit(PassFinished(done))
        return done

    async def _dispatch(
        self,
        db: WorkerDatabase,
        plan: RunPlan,
        endpoints: dict[str, Endpoint],
        monitor: RunMonitor,
        guard: BudgetGuard | None,
        budgets: dict[str, float | None],
        *,
        exclude: set[str],
        joined: dict[str, BatchSummary],
    ) -> tuple[RunReport, ProgressSnapshot]:
        """Send the plan's batches (and run its batch lane) with ``monitor`` watching, joining
        new batches into ``joined`` in a forever run; returns the dispatcher's report and the
        last snapshot."""
        options = self._options
        watcher = None
        joiner = None
        teller = None
        stack = contextlib.AsyncExitStack()
        lane: LaneRun | None = None
        try:
            await stack.__aenter__()
            lane = await start_lane(
                db,
                stack,
                plan.batches | plan.lane_only,
                known=self._known,
                env=self._env,
                poll_interval_s=options.poll_interval_s,
                overrides=options.overrides,
                simulator=self._simulator,
                on_note=lambda text: self._emit(Note(text)),
                prices=self._prices,
            )
            # Started here: a missing or broken key is reported before any progress line.
            if options.progress_interval_s is not None:
                watcher = asyncio.create_task(self._watch(monitor, options.progress_interval_s))
            if self._notices is not None:
                teller = asyncio.create_task(
                    self._notices.watch(
                        db,
                        lambda: [*plan.batches, *plan.lane_only, *joined],
                        lambda: self.live_report.paused if self.live_report is not None else {},
                    ),
                    name="batchrun-notify-watch",
                )
            if options.forever:
                joiner = asyncio.create_task(
                    self._join_new(
                        db,
                        set(plan.batches) | set(plan.lane_only) | set(plan.waiting) | exclude,
                        sent_to=set(endpoints),
                        monitor=monitor,
                        guard=guard,
                        joined=joined,
                        budgets=budgets,
                    ),
                    name="batchrun-join",
                )
            report = await dispatch_batches(
                db,
                plan.batches,
                endpoints=endpoints,
                env=self._env,
                dispatch=dispatch_config(
                    endpoints,
                    max_concurrency=options.max_concurrency,
                    max_attempts=options.max_attempts,
                    count_tokens=options.count_tokens,
                ),
                overrides=options.overrides,
                limiter_settings=options.limiter_settings,
                timeout_s=options.timeout_s,
                observer=self._limit_records.watching(monitor, db),
                pools=self._known.pools,
                on_start=self._started,
                linger=None if lane is None else lane.driver,
                simulator_transport=self._simulator() if _in_process(endpoints) else None,
            )
            if lane is not None:
                stop = report.interrupted is not None or monitor.time_limit_reached
                lane_report = await lane.finish(stop=stop)
                for batch_id, why in lane_report.paused.items():
                    report.paused.setdefault(batch_id, why)
            snapshot = monitor.snapshot()
        finally:
            with self._counting:
                if self._dispatcher is not None:
                    self._rate_limited_before += self._dispatcher.report.rate_limited
                self._dispatcher = None
            if joiner is not None:
                joiner.cancel()
                await asyncio.gather(joiner, return_exceptions=True)
            if lane is not None and not lane.task.done():
                lane.driver.stop()
                await asyncio.gather(lane.task, return_exceptions=True)
            await stack.aclose()
            monitor.close()
            await self._limit_records.pass_ended()
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            if teller is not None:
                teller.cancel()
                await asyncio.gather(teller, return_exceptions=True)
        return report, snapshot

    async def _join_new(
        self,
        db: WorkerDatabase,
        ignored: set[str],
        *,
        sent_to: set[str],
        monitor: RunMonitor,
        guard: BudgetGuard | None,
        joined: dict[str, BatchSummary],
        budgets: dict[str, float | None],
    ) -> None:
        """While a forever pass dispatches: every JOIN_POLL_S, and at once when woken, add the
        batches with open work that it does not have (nor ``ignored``) to its dispatch.

        A batch joins when it is in progress, not paused, in the real-time lane (the batch
        lane's driver is started per pass), on endpoints the pass sends to (``sent_to``), and
        without a budget unless the pass keeps budgets (``guard``); the run's options
        (endpoint, lane, budget) are stored on it first, as a pass would. Each joined batch
        goes into ``joined`` and ``budgets``, and into the monitor's totals. The others wait
        for the next pass, as before; once one of them does, no more batches join: this pass
        then ends with the work it has, and the waiting batch is not held back by a stream of
        new ones."""
        seen = set(ignored)
        while True:
            self._wakeup.clear()
            dispatcher = self._dispatcher
            if dispatcher is not None and self._stopping is None:
                try:
                    waiting = await self._join_round(
                        db,
                        dispatcher,
                        seen,
                        sent_to=sent_to,
                        monitor=monitor,
                        guard=guard,
                        joined=joined,
                        budgets=budgets,
                    )
                except Exception as exc:  # a database hiccup must not end the pass
                    log.warning("could not look for batches to join the run: %s", exc)
                else:
                    if waiting:
                        return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), JOIN_POLL_S)

    async def _join_round(
        self,
        db: WorkerDatabase,
        dispatcher: Dispatcher,
        seen: set[str],
        *,
        sent_to: set[str],
        monitor: RunMonitor,
        guard: BudgetGuard | None,
        joined: dict[str, BatchSummary],
        budgets: dict[str, float | None],
    ) -> bool:
        """One look of :meth:`_join_new`. Adds to ``seen`` every batch it settled (joined, or
        not to join in this pass); returns whether one of them waits for the next pass."""
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
        plan = await self._apply_options(db, RunPlan({b: s.endpoint for b, s in found.items()}, {}))
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
                lanes.get(batch_id, REALTIME) != REALTIME
                or batch_id in with_provider_batches
                or (found_budgets.get(batch_id) is not None and guard is None)
                or not set(members) <= sent_to
            ):
                seen.add(batch_id)
                waiting = True
            else:
                candidates[batch_id] = name
        budgeted = [b for b in candidates if found_budgets.get(b) is not None]
        spent = await self._costs(db, budgeted) if budgeted else {}
        # No await from here on: the guard keeps a budget before its batch's first claim.
        # What the dispatcher does not take now (it is starting, or stopping) is looked at
        # again next time.
        added = dispatcher.join(candidates)
        for batch_id in added:
            budget = found_budgets.get(batch_id)
            if budget is not None and guard is not None:
                guard.add(batch_id, budget, spent[batch_id])
            joined[batch_id] = found[batch_id]
            budgets[batch_id] = budget
            self._emit(Note(f"{batch_id}: joined the run in progress"))
        monitor.add_batches({batch_id: found[batch_id].counts for batch_id in added})
        seen.update(added)
        return waiting

    async def _watch(self, monitor: RunMonitor, interval_s: float) -> None:
        # A first snapshot at once: a log shows the run started, and what it has to do.
        await asyncio.sleep(0)
        while True:
            self._emit(Progress(monitor.snapshot()))
            await asyncio.sleep(interval_s)


def _in_process(endpoints: Mapping[str, Endpoint]) -> bool:
    return any(endpoint.in_process for endpoint in endpoints.values())


# The exit codes a pause goes before (see _exit_code).
_BELOW_PAUSED = (ExitCode.OK, ExitCode.CANCELED, ExitCode.TIME_LIMIT, ExitCode.ERRORED_RESULTS)


def _exit_code(
    report: RunReport, batches: tuple[BatchSummary, ...], *, stopped: bool, canceled: bool
) -> ExitCode:
    """The first that applies of: interrupted, paused, canceled while it ran, stopped by the
    time limit, some results errored; else OK."""
    if report.interrupted:
        return ExitCode.INTERRUPTED
    if report.paused:
        return ExitCode.PAUSED
    if canceled:
        return ExitCode.CANCELED
    if stopped:
        return ExitCode.TIME_LIMIT
    if any(batch.counts.errored for batch in batches):
        return ExitCode.ERRORED_RESULTS
    return ExitCode.OK


@contextmanager
def _signals_stop(stop: Callable[[str], None], *, enabled: bool) -> Iterator[None]:
    """While the block runs, Ctrl-C and SIGTERM call ``stop`` with a reason (when enabled,
    and this is the main thread of a platform with signals)."""
    loop = asyncio.get_running_loop()
    installed = []
    if enabled:
        for signum, name in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
            try:
                loop.add_signal_handler(signum, stop, f"interrupted by {name}")
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
