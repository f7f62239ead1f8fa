"""Watching one run: what it has done, how fast, against which limits, and at what cost.

:class:`RunMonitor` is the dispatcher's observer (:class:`~batchrun.dispatch.seams.RunObserver`).
It sees every request just before it is sent and every answer, and from them keeps:

- the throughput of the last minute per endpoint × model, in the limiter's own units (a
  request; input tokens = input + cache writes; output tokens; their sum), set against the
  limit the limiter applies now, so the busiest limit is the one that binds;
- what this run's answers cost (:mod:`batchrun.config.prices`);
- the budgets (:mod:`batchrun.ops.budget`), which it enforces through the dispatcher;
- the time limit: when ``max_runtime_s`` has passed it drains the dispatcher (stop claiming,
  let what is in flight finish).

Time is the event loop's, so tests run it in virtual time. :meth:`RunMonitor.snapshot` is
what the displays show (:mod:`batchrun.cli.progress`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from batchrun.config.prices import CostTotal, PriceTable, cost_of
from batchrun.dispatch.counts import DispatchProgress
from batchrun.dispatch.routing import MemberSnapshot
from batchrun.dispatch.seams import DispatcherView, LimiterView
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.dimensions import DIMENSIONS, Amounts
from batchrun.limits.limiter import LimitKey, Permit, Wait
from batchrun.limits.windows import RecentValues
from batchrun.ops.budget import BudgetGuard
from batchrun.records import (
    ClaimedRequest,
    ModelTokens,
    Outcome,
    RequestCounts,
    Retryable,
    Succeeded,
)

log = logging.getLogger(__name__)

# Rates are measured over the last minute (or the whole run while it is shorter).
RATE_WINDOW_S = 60.0
# Below this much history a rate or an ETA would be noise.
MIN_RATE_WINDOW_S = 2.0
# The run's batches' counts are read again before a progress line, when the last read is
# older than this: what the lines count besides this worker's answers (a cancel from another
# process, the batch lane's imports, other workers). A counts read per batch, from the
# counters the store maintains; lines every 30 s (a log) thus read once per line, not once a
# second (each read is a database transaction).
COUNTS_REFRESH_S = 1.0
# With several workers, how often a budget re-reads what every worker has spent, and how long
# it waits for this worker's group commit first.
BUDGET_REFRESH_S = 15.0
COMMIT_GRACE_S = 1.0


@dataclass(frozen=True)
class LimitUse:
    """One limit of an endpoint × model: its use over the last minute and the limit in force
    (None: unlimited), both per minute."""

    dimension: str
    per_minute: float
    limit: float | None

    @property
    def share(self) -> float | None:
        return None if not self.limit else self.per_minute / self.limit


@dataclass(frozen=True)
class KeyProgress:
    """Throughput of one endpoint × model against its limits; ``binding`` is the limit
    closest to being used up (None when no limit applies)."""

    endpoint: str
    model: str
    uses: tuple[LimitUse, ...]
    binding: str | None


@dataclass(frozen=True)
class ProgressSnapshot:
    """A run at one moment. Counts are requests; ``done`` includes what earlier runs
    finished; ``succeeded``, ``errored`` and ``canceled`` are what ended since the run
    started (this worker's answers, the batch lane's imports, a cancel from elsewhere);
    ``requests_per_min`` is the requests this worker finished (succeeded or errored) per
    minute; tokens and cost are this run's."""

    elapsed_s: float
    total: int
    done: int
    succeeded: int
    errored: int
    canceled: int
    retried: int
    rate_limited: int
    in_flight: int
    waiting: int
    requests_per_min: float
    tokens_per_min: float
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost: CostTotal
    eta_s: float | None
    keys: tuple[KeyProgress, ...]
    paused: Mapping[str, str] = field(default_factory=dict)
    stopping: bool = False
    # The endpoint × models held back by a server's request to wait, and why.
    waits: tuple[Wait, ...] = ()
    # The latest failure that was retried, as a short reason ("HTTP 529 overloaded_error").
    last_retry: str | None = None
    # The error type of the latest request that ended errored ("invalid_request_error").
    last_error: str | None = None
    # Each endpoint of a pool: its answers, rate and state (empty without pools).
    members: tuple[MemberSnapshot, ...] = ()
    # Each batch's request counts when it joined the run: what recounted() measures from.
    counts_at_start: Mapping[str, RequestCounts] = field(default_factory=dict)

    def recounted(self, counts_now: Mapping[str, RequestCounts]) -> ProgressSnapshot:
        """This snapshot with the done and ended counts the batches' stored counts show
        (``counts_now``, by batch id), where they show more than this worker saw."""
        done, ended = _ended_since(self.counts_at_start, counts_now)
        return dataclasses.replace(
            self,
            done=max(self.done, done),
            succeeded=max(self.succeeded, ended.succeeded),
            errored=max(self.errored, ended.errored),
            canceled=max(self.canceled, ended.canceled),
            eta_s=0.0 if done >= self.total else self.eta_s,
        )


def _ended_since(
    start: Mapping[str, RequestCounts], now: Mapping[str, RequestCounts]
) -> tuple[int, RequestCounts]:
    """Of the batches in ``start``: the requests done now (every state but processing), and
    those that ended in each state since ``start`` (``now`` missing a batch: no change)."""
    done = succeeded = errored = canceled = 0
    for batch_id, before in start.items():
        after = now.get(batch_id, before)
        done += after.total - after.processing
        succeeded += max(after.succeeded - before.succeeded, 0)
        errored += max(after.errored - before.errored, 0)
        canceled += max(after.canceled - before.canceled, 0)
    return done, RequestCounts(succeeded=succeeded, errored=errored, canceled=canceled)


class RunMonitor:
    """The observer of one dispatcher: progress, cost, budgets and the time limit."""

    def __init__(
        self,
        *,
        prices: PriceTable,
        counts: Mapping[str, RequestCounts],
        guard: BudgetGuard | None = None,
        max_runtime_s: float | None = None,
        db: WorkerDatabase | None = None,
    ) -> None:
        """``counts``: each batch's request counts when the run starts; ``db``: read again
        every BUDGET_REFRESH_S for budgets (other workers' spending)."""
        self._prices = prices
        self._total = sum(c.total for c in counts.values())
        self._done_before = sum(c.total - c.processing for c in counts.values())
        self._counts_at_start = dict(counts)
        # The batches' counts as last read (refresh_counts, before each progress line): a
        # run nobody watches (serve's workers) reads none.
        self._counts_now: dict[str, RequestCounts] = {}
        self._counts_read_at = -math.inf
        self._guard = guard
        self._max_runtime_s = max_runtime_s
        self._db = db
        self._uses: RecentValues[tuple[LimitKey, Amounts]] = RecentValues(RATE_WINDOW_S)
        self._keys: list[LimitKey] = []
        self._done_samples: deque[tuple[float, int]] = deque()
        self._tokens = [0, 0, 0, 0]
        self._cost = CostTotal()
        self._dispatcher: DispatcherView | None = None
        self._limiter: LimiterView | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._deadline: asyncio.TimerHandle | None = None
        self._started: float | None = None
        self._first_answer_at: float | None = None
        self.time_limit_reached = False

    def add_batches(self, counts: Mapping[str, RequestCounts]) -> None:
        """Count batches that joined the run in progress (``counts``: each one's request
        counts when it joined), so the totals and the ETA cover them too."""
        self._total += sum(c.total for c in counts.values())
        self._done_before += sum(c.total - c.processing for c in counts.values())
        self._counts_at_start |= counts

    # -- the observer ---------------------------------------------------------------------------

    def attach(self, dispatcher: DispatcherView, limiter: LimiterView) -> None:
        """Start watching ``dispatcher``; starts the time limit and the budget refresh."""
        self._dispatcher, self._limiter = dispatcher, limiter
        loop = asyncio.get_running_loop()
        self._started = started = loop.time()
        self._done_samples.append((started, 0))
        if self._max_runtime_s is not None:
            self._deadline = loop.call_later(max(self._max_runtime_s, 0.0), self._time_up)
        if self._guard is not None and self._guard.batch_ids and self._db is not None:
            self._tasks.append(asyncio.create_task(self._refresh_budgets(self._db)))

    def admit(self, request: ClaimedRequest, permit: Permit) -> str | None:
        """Let the request go unless its batch's budget says no."""
        if permit.key not in self._keys:
            self._keys.append(permit.key)
        if self._guard is None:
            return None
        return self._guard.admit(
            request_id=request.id,
            batch_id=request.batch_id,
            model=request.model,
            input_estimate=permit.input_estimate,
            max_tokens=request.max_tokens,
        )

    def settled(self, request: ClaimedRequest, permit: Permit, outcome: Outcome) -> None:
        """Count the answer: throughput against the limits, tokens, cost, budget."""
        now = asyncio.get_running_loop().time()
        match outcome:
            case Succeeded(usage=usage):
                if self._first_answer_at is None:
                    self._first_answer_at = now
                self._uses.add(now, (permit.key, Amounts.of_usage(usage)))
                for index, value in enumerate(
                    (
                        usage.input_tokens,
                        usage.output_tokens,
                        usage.cache_creation_input_tokens,
                        usage.cache_read_input_tokens,
                    )
                ):
                    self._tokens[index] += value
                tokens = ModelTokens(
                    outcome.model or request.model,
                    1,
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cache_creation_input_tokens,
                    usage.cache_read_input_tokens,
                    cache_creation_1h_input_tokens=usage.cache_creation_1h_input_tokens,
                )
                self._cost = self._cost + cost_of([tokens], self._prices)
            case Retryable(http_status=status) if status not in (429, 529):
                # As the limiter does: a 5xx or a lost connection may have used its share.
                self._uses.add(now, (permit.key, permit.amounts))
        if self._guard is not None:
            self._guard.settle(request.id, request.model, outcome)

    # -- the time limit and budgets -----------------------------------------------------------

    def _time_up(self) -> None:
        self.time_limit_reached = True
        log.info("time limit reached: no new requests are sent; waiting for those in flight")
        if self._dispatcher is not None:
            self._dispatcher.drain()

    async def _refresh_budgets(self, db: WorkerDatabase) -> None:
        guard = self._guard
        assert guard is not None
        while True:
            await asyncio.sleep(BUDGET_REFRESH_S)
            guard.begin_refresh()
            await asyncio.sleep(COMMIT_GRACE_S)
            try:
                usage = await db.usage_by_model(guard.batch_ids)
            except Exception as exc:  # a database hiccup must not end the run
                log.warning("could not re-read the spending of budgeted batches: %s", exc)
                continue
            guard.refresh(
                {batch_id: cost_of(items, self._prices) for batch_id, items in usage.items()}
            )

    async def refresh_counts(self, *, max_age_s: float = COUNTS_REFRESH_S) -> None:
        """Read again the stored counts of the run's batches that had work left (what the
        next :meth:`snapshot` counts besides this worker's answers), unless they were read
        less than ``max_age_s`` ago; nothing without a database. Called before each progress
        line, so a run whose lines are far apart reads its counts as seldom."""
        db = self._db
        now = asyncio.get_running_loop().time()
        if db is None or now - self._counts_read_at < max_age_s:
            return
        self._counts_read_at = now
        for batch_id in list(self._counts_at_start):
            known = self._counts_now.get(batch_id)
            if known is not None and known.processing == 0:
                continue
            try:
                self._counts_now[batch_id] = (await db.get_batch(batch_id)).counts
            except Exception as exc:  # a database hiccup must not end the run
                log.debug("could not re-read the counts of %s: %s", batch_id, exc)

    def close(self) -> None:
        """Stop the timers and background reads (the run is over)."""
        if self._deadline is not None:
            self._deadline.cancel()
        for task in self._tasks:
            task.cancel()

    # -- what the displays show ---------------------------------------------------------------

    def snapshot(self) -> ProgressSnapshot:
        """The run now (before :meth:`attach`: nothing done yet)."""
        dispatcher = self._dispatcher
        report = dispatcher.report if dispatcher is not None else None
        work = dispatcher.progress() if dispatcher is not None else DispatchProgress(0, 0)
        now = asyncio.get_running_loop().time()
        started = now if self._started is None else self._started
        done_here = (report.succeeded + report.errored + report.canceled) if report else 0
        finished_here = (report.succeeded + report.errored) if report else 0
        self._done_samples.append((now, finished_here))
        # Rates count from the first answer (before it, nothing could be measured). While the
        # window still holds that start, it may hold the buckets' first burst too (a bucket
        # that filled while nothing was sent): the first burst_s seconds of answers are left
        # out, so early rates are the steady ones, not 107 % of a limit.
        first = self._first_answer_at if self._first_answer_at is not None else now
        skip_s = self._limiter.burst_s if self._limiter and now - first < RATE_WINDOW_S else 0.0
        per_key: dict[LimitKey, Amounts] = {key: Amounts() for key in self._keys}
        for at, (key, used) in self._uses.timed(now):
            if at >= first + skip_s:
                per_key[key] = per_key.get(key, Amounts()) + used
        span_s = min(RATE_WINDOW_S, now - first - skip_s)
        scale = 60.0 / span_s if span_s >= MIN_RATE_WINDOW_S else 0.0
        keys = tuple(self._key_progress(key, totals, scale) for key, totals in per_key.items())
        # The run's own rates count every answer of the window (a 400 is as much work done as
        # a success), over the time they took: the limits' shares above leave the first
        # burst out, and count what the limits count.
        requests_per_min = self._finished_per_min(now)
        answered = sum((used for _, (_, used) in self._uses.timed(now)), Amounts())
        span_s = min(RATE_WINDOW_S, now - started)
        answered_tokens = answered.input_tokens + answered.output_tokens
        tokens_per_min = answered_tokens * 60.0 / span_s if span_s > 0 else 0.0
        return ProgressSnapshot(
            elapsed_s=now - started,
            total=self._total,
            done=self._done_before + done_here,
            succeeded=report.succeeded if report else 0,
            errored=report.errored if report else 0,
            canceled=report.canceled if report else 0,
            retried=report.retried if report else 0,
            rate_limited=report.rate_limited if report else 0,
            in_flight=work.in_flight,
            waiting=work.waiting,
            requests_per_min=requests_per_min,
            tokens_per_min=tokens_per_min,
            input_tokens=self._tokens[0],
            output_tokens=self._tokens[1],
            cache_creation_input_tokens=self._tokens[2],
            cache_read_input_tokens=self._tokens[3],
            cost=self._cost,
            eta_s=self._eta_s(self._total - self._done_before - done_here, requests_per_min),
            keys=keys,
            paused=dict(report.paused) if report else {},
            stopping=self.time_limit_reached,
            waits=tuple(self._limiter.waits()) if self._limiter else (),
            last_retry=report.last_retry if report else None,
            last_error=report.last_error if report else None,
            members=self._members(dispatcher),
            counts_at_start=dict(self._counts_at_start),
        ).recounted(self._counts_now)

    @staticmethod
    def _members(dispatcher: DispatcherView | None) -> tuple[MemberSnapshot, ...]:
        """The endpoints of the run's pools, when it sends through a pool."""
        if dispatcher is None or not dispatcher.uses_pools:
            return ()
        return tuple(dispatcher.router.snapshot())

    def _key_progress(self, key: LimitKey, totals: Amounts, scale: float) -> KeyProgress:
        uses = []
        for dimension in DIMENSIONS:
            limit = self._limiter.limit_in_force(key, dimension.name) if self._limiter else None
            uses.append(LimitUse(dimension.name, dimension.measure(totals) * scale, limit))
        limited = [use for use in uses if use.share is not None]
        binding = max(limited, key=lambda use: use.share or 0.0).dimension if limited else None
        return KeyProgress(key[0], key[1], tuple(uses), binding)

    def _finished_per_min(self, now: float) -> float:
        """Requests this worker finished (succeeded or errored) per minute, over the last
        minute or since the run started (the samples each snapshot takes)."""
        while len(self._done_samples) > 2 and self._done_samples[1][0] <= now - RATE_WINDOW_S:
            self._done_samples.popleft()
        then, finished_then = self._done_samples[0]
        _, finished_now = self._done_samples[-1]
        if now <= then or finished_now <= finished_then:
            return 0.0
        return (finished_now - finished_then) * 60.0 / (now - then)

    def _eta_s(self, remaining: int, per_min: float) -> float | None:
        """Time left at the rate requests finished over the last minute (None while that
        rate is not known: no answer yet, or less than MIN_RATE_WINDOW_S of history)."""
        if remaining <= 0:
            return 0.0
        then = self._done_samples[0][0]
        if self._done_samples[-1][0] - then < MIN_RATE_WINDOW_S or per_min <= 0:
            return None
        return remaining * 60.0 / per_min
