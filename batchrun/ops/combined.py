"""One run's figures from the figures of its worker processes (``run --processes N``).

Each worker of :mod:`batchrun.ops.processes` reports what one worker reports: progress
snapshots, its pass's :class:`~batchrun.ops.run_types.PassResult`, its exit code. The
parent shows one run, so it adds them up here. The rule for each figure:

- what only a process knows (sent, retried, 429s, in flight, its rates, tokens and cost
  of its answers, its error types) is summed;
- what each worker reads from the database (the batches' totals and done counts, which
  already count every worker's answers) is the largest any worker saw, never a sum;
- the ETA is worked out again from the summed rate;
- the exit code is the first that applies of 130, 4, 7, 5, 3 over the workers, with the
  batches as they are once every worker ended (see :func:`combined_exit_code`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TypeVar

from batchrun.config.prices import CostTotal
from batchrun.dispatch.counts import RunReport
from batchrun.errors import ExitCode
from batchrun.limits.limiter import Wait
from batchrun.ops.monitor import KeyProgress, LimitUse, ProgressSnapshot
from batchrun.records import BatchSummary

# The exit codes of a run, the one that wins first (see batchrun.ops.run_types).
_PRECEDENCE = (
    ExitCode.INTERRUPTED,
    ExitCode.ERROR,
    ExitCode.PAUSED,
    ExitCode.CANCELED,
    ExitCode.TIME_LIMIT,
    ExitCode.ERRORED_RESULTS,
)
T = TypeVar("T")


def combined_snapshot(snapshots: Sequence[ProgressSnapshot]) -> ProgressSnapshot:
    """The run at one moment from each worker's latest snapshot (at least one)."""
    first = snapshots[0]
    total = max(s.total for s in snapshots)
    done = max(s.done for s in snapshots)
    per_min = sum(s.requests_per_min for s in snapshots)
    remaining = total - done
    eta_s: float | None
    if remaining <= 0:
        eta_s = 0.0
    elif per_min > 0 and all(s.eta_s is not None for s in snapshots if s.requests_per_min):
        eta_s = remaining * 60.0 / per_min
    else:
        eta_s = None
    paused: dict[str, str] = {}
    for s in snapshots:
        paused |= s.paused
    waits: list[Wait] = []
    for s in snapshots:
        waits.extend(w for w in s.waits if w not in waits)
    return dataclasses.replace(
        first,
        elapsed_s=max(s.elapsed_s for s in snapshots),
        total=total,
        done=done,
        succeeded=max(s.succeeded for s in snapshots),
        errored=max(s.errored for s in snapshots),
        canceled=max(s.canceled for s in snapshots),
        retried=sum(s.retried for s in snapshots),
        rate_limited=sum(s.rate_limited for s in snapshots),
        in_flight=sum(s.in_flight for s in snapshots),
        waiting=sum(s.waiting for s in snapshots),
        requests_per_min=per_min,
        tokens_per_min=sum(s.tokens_per_min for s in snapshots),
        input_tokens=sum(s.input_tokens for s in snapshots),
        output_tokens=sum(s.output_tokens for s in snapshots),
        cache_creation_input_tokens=sum(s.cache_creation_input_tokens for s in snapshots),
        cache_read_input_tokens=sum(s.cache_read_input_tokens for s in snapshots),
        cost=sum((s.cost for s in snapshots), CostTotal()),
        eta_s=eta_s,
        keys=combined_keys(s.keys for s in snapshots),
        paused=paused,
        stopping=any(s.stopping for s in snapshots),
        waits=tuple(waits),
        last_retry=_first(s.last_retry for s in snapshots),
        last_error=_first(s.last_error for s in snapshots),
        members=_first_nonempty(s.members for s in snapshots),
    )


def combined_keys(groups: Iterable[Sequence[KeyProgress]]) -> tuple[KeyProgress, ...]:
    """Each endpoint × model's throughput summed over the workers, against its limit (the
    same for every worker: they share it), with the binding limit picked again."""
    order: list[tuple[str, str]] = []
    uses: dict[tuple[str, str], dict[str, LimitUse]] = {}
    for keys in groups:
        for key in keys:
            name = (key.endpoint, key.model)
            if name not in uses:
                order.append(name)
                uses[name] = {}
            into = uses[name]
            for use in key.uses:
                known = into.get(use.dimension)
                if known is None:
                    into[use.dimension] = use
                else:
                    limit = use.limit if known.limit is None else known.limit
                    into[use.dimension] = LimitUse(
                        use.dimension, known.per_minute + use.per_minute, limit
                    )
    result = []
    for endpoint, model in order:
        summed = tuple(uses[(endpoint, model)].values())
        limited = [use for use in summed if use.share is not None]
        binding = max(limited, key=lambda use: use.share or 0.0).dimension if limited else None
        result.append(KeyProgress(endpoint, model, summed, binding))
    return tuple(result)


def combined_report(reports: Sequence[RunReport]) -> RunReport:
    """What the workers' dispatchers did, together."""
    error_types: Counter[str] = Counter()
    paused: dict[str, str] = {}
    canceled: set[str] = set()
    for report in reports:
        error_types.update(report.error_types)
        for batch_id, why in report.paused.items():
            paused.setdefault(batch_id, why)
        canceled |= report.canceled_batches
    return RunReport(
        sent=sum(r.sent for r in reports),
        succeeded=sum(r.succeeded for r in reports),
        errored=sum(r.errored for r in reports),
        canceled=sum(r.canceled for r in reports),
        retried=sum(r.retried for r in reports),
        repaired=sum(r.repaired for r in reports),
        rate_limited=sum(r.rate_limited for r in reports),
        paused=paused,
        error_types=error_types,
        interrupted=_first(r.interrupted for r in reports),
        released=sum(r.released for r in reports),
        lost_leases=sum(r.lost_leases for r in reports),
        canceled_batches=canceled,
        last_retry=_first(r.last_retry for r in reports),
        last_error=_first(r.last_error for r in reports),
    )


def combined_exit_code(codes: Iterable[ExitCode], batches: Iterable[BatchSummary]) -> ExitCode:
    """The run's exit code: the first of 130, 1 (a worker failed), 4, 7, 5 that a worker
    earned, else 3 when a batch, as it is now, has errored results (a worker that ended
    early did not see the others' errors), else 0."""
    found = set(codes)
    for code in _PRECEDENCE:
        if code in found and code != ExitCode.ERRORED_RESULTS:
            return code
    if ExitCode.ERRORED_RESULTS in found or any(b.counts.errored for b in batches):
        return ExitCode.ERRORED_RESULTS
    return ExitCode.OK


def _first(values: Iterable[str | None]) -> str | None:
    return next((value for value in values if value is not None), None)


def _first_nonempty(groups: Iterable[tuple[T, ...]]) -> tuple[T, ...]:
    return next((group for group in groups if group), ())
