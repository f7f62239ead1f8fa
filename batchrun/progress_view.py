"""How a run's progress is shown: a live table on a terminal, plain lines elsewhere.

On a terminal (stderr is a TTY) ``batchrun run`` redraws a rich table twice a second. Without
one (cron, a pipe, a CI log) it writes one plain line every ``interval_s`` and one at the end,
so a log file shows how the run went without control characters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from batchrun.pricing import describe_cost
from batchrun.progress import KeyProgress, ProgressSnapshot

# How often the live table is redrawn.
LIVE_REFRESH_S = 0.5
# How often a plain progress line is written without a terminal.
DEFAULT_LOG_INTERVAL_S = 30.0


def duration_text(seconds: float) -> str:
    """``42s``, ``15m10s``, ``2h05m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def amount_text(value: float) -> str:
    """A per-minute amount, short: ``58``, ``12.3k``, ``1.2M``."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def _use_text(key: KeyProgress, dimension: str) -> str:
    use = next(u for u in key.uses if u.dimension == dimension)
    if use.limit is None:
        return f"{dimension} {amount_text(use.per_minute)}"
    share = use.share or 0.0
    return f"{dimension} {amount_text(use.per_minute)}/{amount_text(use.limit)} ({share:.0%})"


def _busiest(snapshot: ProgressSnapshot) -> KeyProgress | None:
    """The endpoint × model whose binding limit is closest to being used up."""
    best, best_share = None, -1.0
    for key in snapshot.keys:
        for use in key.uses:
            if use.dimension == key.binding and (use.share or 0.0) > best_share:
                best, best_share = key, use.share or 0.0
    return best


def _eta_text(snapshot: ProgressSnapshot) -> str:
    if snapshot.stopping:
        return "stopping (time limit)"
    return "-" if snapshot.eta_s is None else duration_text(snapshot.eta_s)


def progress_line(snapshot: ProgressSnapshot) -> str:
    """One plain line: counts, throughput, the binding limit, ETA and cost."""
    s = snapshot
    parts = [
        f"{s.done:,}/{s.total:,} done ({s.succeeded:,} succeeded, {s.errored:,} errored, "
        f"{s.canceled:,} canceled in this run)",
        f"{s.in_flight:,} in flight",
        f"{amount_text(s.requests_per_min)} requests/min, "
        f"{amount_text(s.tokens_per_min)} tokens/min",
    ]
    busiest = _busiest(s)
    if busiest is not None and busiest.binding is not None:
        parts.append(
            f"binding: {_use_text(busiest, busiest.binding)} on {busiest.endpoint} {busiest.model}"
        )
    parts.append(f"ETA {_eta_text(s)}")
    parts.append(f"cost {describe_cost(s.cost)}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp} progress: " + "; ".join(parts)


def progress_table(snapshot: ProgressSnapshot) -> Group:
    """The live view: totals, then one row per endpoint × model against its limits."""
    s = snapshot
    share = s.done / s.total if s.total else 1.0
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("done", f"{s.done:,}/{s.total:,} ({share:.0%})")
    head.add_row(
        "this run",
        f"{s.succeeded:,} succeeded, {s.errored:,} errored, {s.canceled:,} canceled, "
        f"{s.retried:,} retried, {s.rate_limited:,} rate-limited",
    )
    head.add_row("in flight", f"{s.in_flight:,} (+{s.waiting:,} waiting for the limiter)")
    head.add_row(
        "throughput",
        f"{amount_text(s.requests_per_min)} requests/min, "
        f"{amount_text(s.tokens_per_min)} tokens/min",
    )
    head.add_row("elapsed", duration_text(s.elapsed_s))
    head.add_row("ETA", _eta_text(s))
    head.add_row("cost so far", describe_cost(s.cost))
    for batch_id, reason in s.paused.items():
        head.add_row("paused", Text(f"{batch_id}: {reason}", style="yellow"))
    limits = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("endpoint", "model", "rpm", "itpm", "otpm", "tpm", "binds"):
        limits.add_column(column)
    for key in s.keys:
        limits.add_row(
            key.endpoint,
            key.model,
            *(_use_text(key, d).split(" ", 1)[1] for d in ("rpm", "itpm", "otpm", "tpm")),
            key.binding or "no limit",
        )
    return Group(head, Text(""), limits) if s.keys else Group(head)


async def show_progress(
    snapshot: Callable[[], ProgressSnapshot],
    console: Console,
    *,
    live: bool,
    interval_s: float = DEFAULT_LOG_INTERVAL_S,
) -> None:
    """Show progress until cancelled: redraw a live table (``live``), or write a plain line
    every ``interval_s``. The caller writes the final line of a plain log itself."""
    if not live:
        while True:
            await asyncio.sleep(interval_s)
            console.print(progress_line(snapshot()), markup=False, highlight=False)
    with Live(console=console, auto_refresh=False, transient=False) as view:
        try:
            while True:
                view.update(progress_table(snapshot()), refresh=True)
                await asyncio.sleep(LIVE_REFRESH_S)
        finally:
            with contextlib.suppress(Exception):
                view.update(progress_table(snapshot()), refresh=True)
