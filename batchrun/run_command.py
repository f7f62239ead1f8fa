"""The body of ``batchrun run``: one pass, or ``--forever``; progress, budgets, the time limit
and the exit code.

A pass plans the batches, stores a new ``--max-cost`` on them, dispatches them with a
:class:`~batchrun.progress.RunMonitor` watching, then reports. ``--forever`` repeats passes,
``poll_interval_s`` apart while there is nothing to do, until Ctrl-C or the time limit.

Exit codes (the README's table; cli.py keeps 1, 2 and 130):
  0 done; 3 done, some results errored; 4 a batch paused (credentials, billing, spend limit or
  its budget); 5 the time limit stopped the run with work left; 6 another run holds the
  SQLite database (see ``runlock.py``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from batchrun.budget import BudgetGuard
from batchrun.config import DispatchConfig
from batchrun.dispatcher import RunReport
from batchrun.display import run_summary_lines
from batchrun.endpoints import Endpoint, Endpoints, auth_headers
from batchrun.limiter import LimiterSettings, RateLimits
from batchrun.models import BatchObject
from batchrun.pricing import CostTotal, PriceTable, cost_of, describe_cost, format_usd
from batchrun.progress import ProgressSnapshot, RunMonitor
from batchrun.progress_view import progress_line, show_progress
from batchrun.records import BatchSummary
from batchrun.runner import RunPlan, move_batches, plan_run, run_batches, run_endpoints
from batchrun.store.store import Store

EXIT_OK = 0
EXIT_ERRORED_RESULTS = 3
EXIT_PAUSED = 4
EXIT_TIME_LIMIT = 5
EXIT_LOCKED = 6
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RunOptions:
    """What the flags of ``batchrun run`` ask for."""

    batch_ids: tuple[str, ...] = ()
    target: Endpoint | None = None
    max_cost_usd: float | None = None
    max_runtime_s: float | None = None
    forever: bool = False
    poll_interval_s: float = 30.0
    quiet: bool = False
    as_json: bool = False
    live: bool = False
    progress_interval_s: float = 30.0
    overrides: RateLimits = field(default_factory=RateLimits)
    limiter_settings: LimiterSettings = field(default_factory=LimiterSettings)
    timeout_s: float | None = None


@dataclass
class _Pass:
    batches: list[BatchSummary]
    report: RunReport
    snapshot: ProgressSnapshot
    stopped_by_time_limit: bool
    costs: dict[str, CostTotal]
    budgets: dict[str, float | None]
    exit_code: int


class RunCommand:
    """One invocation of ``batchrun run``."""

    def __init__(
        self,
        store: Store,
        *,
        known: Endpoints,
        prices: PriceTable,
        env: Mapping[str, str],
        options: RunOptions,
        console: Console,
        dispatch_for: Callable[[Mapping[str, Endpoint]], DispatchConfig],
    ) -> None:
        """``dispatch_for(endpoints)`` makes the DispatchConfig for a pass's endpoints."""
        self._store = store
        self._known = known
        self._prices = prices
        self._env = env
        self._options = options
        self._console = console
        self._dispatch_for = dispatch_for

    def execute(self) -> int:
        """Run one pass, or passes until Ctrl-C or the time limit (--forever); returns the
        exit code."""
        options = self._options
        deadline = (
            time.monotonic() + options.max_runtime_s if options.max_runtime_s is not None else None
        )
        if not options.forever:
            done = self._pass(deadline, exclude=set())
            return EXIT_OK if done is None else done.exit_code
        # Batches this process paused (credentials, budget) are not retried every poll; a
        # new `batchrun run BATCH_ID` retries them.
        paused_here: set[str] = set()
        idle_said = False
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return EXIT_OK
            done = self._pass(deadline, exclude=paused_here)
            if done is not None:
                idle_said = False
                paused_here.update(done.report.paused)
                if done.stopped_by_time_limit or done.report.interrupted:
                    return done.exit_code
                continue
            if not idle_said and not options.quiet:
                self._say(f"no queued work; looking again every {options.poll_interval_s:g} s")
                idle_said = True
            pause_s = options.poll_interval_s
            if deadline is not None:
                pause_s = min(pause_s, max(deadline - time.monotonic(), 0.0))
            time.sleep(pause_s)

    def _say(self, line: str) -> None:
        self._console.print(line, markup=False, highlight=False)

    # -- one pass -----------------------------------------------------------------------------

    def _plan(self, exclude: set[str]) -> RunPlan:
        options, store = self._options, self._store
        plan = plan_run(store, list(options.batch_ids))
        if exclude:
            kept = {b: e for b, e in plan.batches.items() if b not in exclude}
            plan = RunPlan(kept, plan.skipped)
        if options.target is not None and plan.batches:
            # Checked before anything is moved, so a missing key leaves the batches as they were.
            auth_headers(options.target, self._env)
            plan = move_batches(store, plan, options.target.name)
        if options.max_cost_usd is not None:
            for batch_id in plan.batches:
                store.set_max_cost(batch_id, options.max_cost_usd)
        if not options.forever and not options.quiet:
            for batch_id, why in plan.skipped.items():
                self._say(f"{batch_id}: {why}; nothing to run")
            if not plan.batches and not options.batch_ids:
                self._say("no batch has queued requests")
        return plan

    def _costs(self, batch_ids: list[str]) -> dict[str, CostTotal]:
        usage = self._store.usage_by_model(batch_ids)
        return {batch_id: cost_of(usage.get(batch_id, []), self._prices) for batch_id in batch_ids}

    def _pass(self, deadline: float | None, *, exclude: set[str]) -> _Pass | None:
        store = self._store
        plan = self._plan(exclude)
        if not plan.batches:
            return None
        ids = list(plan.batches)
        endpoints = run_endpoints(plan, self._known)
        budgets = store.max_costs(ids)
        guard = None
        if any(value is not None for value in budgets.values()):
            guard = BudgetGuard(self._prices, budgets, self._costs(ids))
        monitor = RunMonitor(
            prices=self._prices,
            counts={batch_id: store.get_batch(batch_id).counts for batch_id in ids},
            guard=guard,
            max_runtime_s=None if deadline is None else deadline - time.monotonic(),
            store=store,
        )
        report, snapshot = asyncio.run(
            self._dispatch(plan, endpoints, self._dispatch_for(endpoints), monitor)
        )
        batches = [store.get_batch(batch_id) for batch_id in ids]
        stopped = monitor.time_limit_reached and any(b.counts.processing for b in batches)
        if report.interrupted:
            code = EXIT_INTERRUPTED
        elif report.paused:
            code = EXIT_PAUSED
        elif stopped:
            code = EXIT_TIME_LIMIT
        elif any(batch.counts.errored for batch in batches):
            code = EXIT_ERRORED_RESULTS
        else:
            code = EXIT_OK
        done = _Pass(batches, report, snapshot, stopped, self._costs(ids), budgets, code)
        self._report(done)
        return done

    async def _dispatch(
        self,
        plan: RunPlan,
        endpoints: Mapping[str, Endpoint],
        dispatch: DispatchConfig,
        monitor: RunMonitor,
    ) -> tuple[RunReport, ProgressSnapshot]:
        options = self._options
        display = None
        if not options.quiet:
            display = asyncio.create_task(
                show_progress(
                    monitor.snapshot,
                    self._console,
                    live=options.live,
                    interval_s=options.progress_interval_s,
                )
            )
        try:
            report = await run_batches(
                self._store,
                plan.batches,
                endpoints=endpoints,
                env=self._env,
                dispatch=dispatch,
                overrides=options.overrides,
                limiter_settings=options.limiter_settings,
                timeout_s=options.timeout_s,
                observer=monitor,
            )
            return report, monitor.snapshot()
        finally:
            monitor.close()
            if display is not None:
                display.cancel()
                await asyncio.gather(display, return_exceptions=True)

    # -- reporting ----------------------------------------------------------------------------

    def _report(self, done: _Pass) -> None:
        options = self._options
        if options.as_json:
            indent = None if options.forever else 2
            sys.stdout.write(json.dumps(run_summary_json(done), indent=indent) + "\n")
            sys.stdout.flush()
        if options.quiet:
            return
        if not options.live:
            self._say(progress_line(done.snapshot))
        if options.as_json:
            return
        for line in run_summary_lines(done.batches, done.report):
            self._say(line)
        self._say(f"cost of this run: {describe_cost(done.snapshot.cost)}")
        for batch in done.batches:
            budget = done.budgets.get(batch.id)
            of = f" of max-cost {format_usd(budget)}" if budget is not None else ""
            self._say(f"{batch.id}: cost so far {describe_cost(done.costs[batch.id])}{of}")
        if done.report.interrupted:
            released = done.report.released
            self._say(
                f"{done.report.interrupted}: requests in flight were recorded"
                + (f", {released} returned to the queue" if released else "")
                + "; `batchrun run` continues where this stopped"
            )
        if done.stopped_by_time_limit:
            left = sum(batch.counts.processing for batch in done.batches)
            self._say(
                f"stopped at the time limit (--max-runtime) with {left:,} requests left; "
                "the next `batchrun run` continues them"
            )


def _cost_json(total: CostTotal) -> dict[str, Any]:
    return {
        "cost_usd": None if total.usd is None else round(total.usd, 8),
        "cost_usd_known": round(total.known_usd, 8),
        "unpriced_models": sorted(total.unpriced),
    }


def run_summary_json(done: _Pass) -> dict[str, Any]:
    """The object `run --json` prints: each batch (the batch object with its cost and
    budget), what this run did, and why it stopped."""
    report, snapshot = done.report, done.snapshot
    batches = []
    for batch in done.batches:
        item = BatchObject.from_summary(batch).model_dump(mode="json")
        item |= _cost_json(done.costs[batch.id]) | {"max_cost_usd": done.budgets.get(batch.id)}
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
    } | _cost_json(snapshot.cost)
    return {
        "batches": batches,
        "run": run,
        "paused": dict(report.paused),
        "stopped_by_time_limit": done.stopped_by_time_limit,
        "exit_code": done.exit_code,
    }
