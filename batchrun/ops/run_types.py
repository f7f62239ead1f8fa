"""The values a run takes and gives: :class:`RunOptions` (what it is asked to do), the
:data:`RunEvent` values it tells its caller as it goes (:class:`Note`, :class:`Progress`,
:class:`PassFinished`), what a pass did (:class:`PassResult`), how the run ended
(:class:`RunResult`), what only its process knows (:class:`ProcessCounters`), and the rule
that picks a pass's exit code (:func:`pass_exit_code`).

Plain values: :mod:`batchrun.ops.session` makes them, the CLI and the Python API read them
(``batchrun`` exports them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchrun.config.prices import CostTotal
from batchrun.dispatch.counts import RunReport
from batchrun.errors import ExitCode
from batchrun.export.batch_object import BatchObject, cost_json
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import LimiterSettings
from batchrun.ops.monitor import ProgressSnapshot
from batchrun.ops.waiting import WaitingBatch
from batchrun.records import BatchSummary


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
    # The limit flags: per model (or family), and across all the models of each endpoint.
    overrides: RateLimits = field(default_factory=RateLimits)
    endpoint_overrides: RateLimits = field(default_factory=RateLimits)
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
class ProcessCounters:
    """What only the process that received the answers knows, for its /metrics
    (:mod:`batchrun.ops.views.metrics`): the 429s of its runs so far."""

    rate_limited: int = 0

    @classmethod
    def of_reports(cls, reports: Iterable[RunReport]) -> ProcessCounters:
        """The counters of these runs (or passes of one run) added up."""
        return cls(rate_limited=sum(report.rate_limited for report in reports))


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


# The exit codes a pause goes before (see pass_exit_code).
BELOW_PAUSED = (ExitCode.OK, ExitCode.CANCELED, ExitCode.TIME_LIMIT, ExitCode.ERRORED_RESULTS)


def pass_exit_code(
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
