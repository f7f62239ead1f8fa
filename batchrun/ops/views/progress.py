"""A run's progress as plain text, from the run monitor's snapshot
(:class:`batchrun.ops.monitor.ProgressSnapshot`): the CLI's progress lines and live table
(``batchrun run``) and the Python API's notebook display (:mod:`batchrun.ops.views.notebook`)
word the same figures the same way: done/total, throughput, the binding limit, the ETA, the
cost."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from batchrun.config.prices import describe_cost
from batchrun.dispatch.routing import MemberSnapshot
from batchrun.export.status_rows import amount_text, duration_text
from batchrun.limits.limiter import Wait
from batchrun.ops.monitor import KeyProgress, ProgressSnapshot


def use_text(key: KeyProgress, dimension: str) -> str:
    """One limit's use: ``rpm 118/120 (98%)``, or the rate alone without a limit."""
    use = next(u for u in key.uses if u.dimension == dimension)
    if use.limit is None:
        return f"{dimension} {amount_text(use.per_minute)}"
    share = use.share or 0.0
    return f"{dimension} {amount_text(use.per_minute)}/{amount_text(use.limit)} ({share:.0%})"


def busiest(snapshot: ProgressSnapshot) -> KeyProgress | None:
    """The endpoint × model whose binding limit is closest to being used up."""
    best, best_share = None, -1.0
    for key in snapshot.keys:
        for use in key.uses:
            if use.dimension == key.binding and (use.share or 0.0) > best_share:
                best, best_share = key, use.share or 0.0
    return best


def eta_text(snapshot: ProgressSnapshot) -> str:
    """The ETA as a duration, ``-`` when unknown, or that the run is stopping."""
    if snapshot.stopping:
        return "stopping (time limit)"
    return "-" if snapshot.eta_s is None else duration_text(snapshot.eta_s)


def wait_text(wait: Wait) -> str:
    """A wait a server asked for, and whom it holds back."""
    return (
        f"waiting {duration_text(wait.seconds)} for {wait.reason} from {wait.endpoint} "
        f"({wait.model})"
    )


def member_text(member: MemberSnapshot, members: Sequence[MemberSnapshot]) -> str:
    """A pool member: its share of the answers, its rate and its state."""
    total = sum(m.answered for m in members) or 1
    state = {
        "closed": "in rotation",
        "open": f"out for {duration_text(member.open_for_s)} ({member.reason})",
        "halted": f"out ({member.reason})",
    }[member.status]
    return (
        f"{member.endpoint} {member.answered:,} ({member.answered / total:.0%}), "
        f"{amount_text(member.per_minute)}/min, {state}"
    )


def progress_line(snapshot: ProgressSnapshot) -> str:
    """One plain line: counts, throughput, the binding limit, ETA and cost."""
    s = snapshot
    errored = f"{s.errored:,} errored" + (f" (last: {s.last_error})" if s.last_error else "")
    parts = [
        f"{s.done:,}/{s.total:,} done ({s.succeeded:,} succeeded, {errored}, "
        f"{s.canceled:,} canceled since the run started)",
        f"{s.retried:,} retried, {s.rate_limited:,} rate-limited"
        + (f" (last retry: {s.last_retry})" if s.last_retry else ""),
        f"{s.in_flight:,} in flight",
        f"{amount_text(s.requests_per_min)} requests/min, "
        f"{amount_text(s.tokens_per_min)} tokens/min",
    ]
    if (binding := binding_text(s)) is not None:
        parts.append(f"binding: {binding}")
    parts.extend(wait_text(wait) for wait in s.waits)
    if s.members:
        parts.append("pool: " + ", ".join(member_text(m, s.members) for m in s.members))
    parts.append(f"ETA {eta_text(s)}")
    parts.append(f"cost {describe_cost(s.cost)}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp} progress: " + "; ".join(parts)


def binding_text(snapshot: ProgressSnapshot) -> str | None:
    """The limit that binds the busiest endpoint × model, as ``rpm 118/120 (98%) on
    anthropic claude-sonnet-4-5``; None when no limit applies."""
    key = busiest(snapshot)
    if key is None or key.binding is None:
        return None
    return f"{use_text(key, key.binding)} on {key.endpoint} {key.model}"


def short_progress_line(snapshot: ProgressSnapshot) -> str:
    """The few figures a notebook shows: done/total (share), requests per minute, the
    binding limit, the ETA and the cost so far."""
    s = snapshot
    share = s.done / s.total if s.total else 1.0
    parts = [
        f"{s.done:,}/{s.total:,} done ({share:.0%})",
        f"{amount_text(s.requests_per_min)} requests/min",
    ]
    if (binding := binding_text(s)) is not None:
        parts.append(f"binding: {binding}")
    if s.errored:
        parts.append(f"{s.errored:,} errored")
    parts.append(f"ETA {eta_text(s)}")
    parts.append(f"cost {describe_cost(s.cost)}")
    return " · ".join(parts)
