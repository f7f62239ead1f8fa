"""How a run is shown: a live table on a terminal, plain lines elsewhere, then a summary.

On a terminal (stderr is a TTY) ``batchrun run`` redraws a rich table twice a second. Without
one (cron, a pipe, a CI log) it writes one plain line every ``--progress-interval`` and one at
the end, so a log file shows how the run went without control characters. Both are driven by
the run's events (:data:`batchrun.ops.session.RunEvent`); the figures are worded by
:mod:`batchrun.ops.views.progress`, which the Python API's notebook display shares.
"""

from __future__ import annotations

import contextlib

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from batchrun.cli.consoles import print_json
from batchrun.cli.text import amount_text, duration_text
from batchrun.cli.views import run_summary_lines
from batchrun.config.prices import describe_cost
from batchrun.ops.monitor import ProgressSnapshot
from batchrun.ops.session import Note, PassFinished, PassResult, Progress, RunEvent
from batchrun.ops.views.progress import (
    eta_text,
    member_text,
    progress_line,
    use_text,
    wait_text,
)

__all__ = ["RunDisplay", "progress_bar", "progress_line", "progress_table"]

# How often the live table is redrawn.
LIVE_REFRESH_S = 0.5
# How often a plain progress line is written without a terminal.
DEFAULT_LOG_INTERVAL_S = 30.0


def progress_bar(done: int, total: int, *, per_min: float | None, eta: str) -> Table:
    """A bar with done/total, the share, the rate and the ETA, within 80 columns."""
    share = done / total if total else 1.0
    line = Table.grid(padding=(0, 1))
    line.add_column(width=24)
    line.add_column()
    rate = f" · {amount_text(per_min)}/min" if per_min else ""
    line.add_row(
        ProgressBar(total=max(total, 1), completed=done, width=24),
        f"{done:,}/{total:,} ({share:.0%}){rate} · ETA {eta}",
    )
    return line


def progress_table(snapshot: ProgressSnapshot) -> Group:
    """The live view: a progress bar, the run's counts, then each endpoint × model against
    the limits in force. Lines wrap rather than cut, so it reads at 80 columns."""
    s = snapshot
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column()
    head.add_row(
        "since start",
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
    head.add_row("cost so far", describe_cost(s.cost))
    for batch_id, reason in s.paused.items():
        head.add_row("paused", Text(f"{batch_id}: {reason}", style="yellow"))
    for wait in s.waits:
        head.add_row("waiting", Text(wait_text(wait).removeprefix("waiting "), style="yellow"))
    if s.last_retry:
        head.add_row("last retry", s.last_retry)
    if s.last_error:
        head.add_row("last error", s.last_error)
    for key in s.keys:
        uses = [use_text(key, use.dimension) for use in key.uses if use.limit is not None] or [
            "no limit"
        ]
        binds = f" · binds: {key.binding}" if key.binding else ""
        head.add_row(f"{key.endpoint}", f"{key.model}: {', '.join(uses)}{binds}")
    for member in s.members:
        style = "yellow" if member.status != "closed" else ""
        head.add_row("pool member", Text(member_text(member, s.members), style=style))
    bar = progress_bar(s.done, s.total, per_min=s.requests_per_min, eta=eta_text(s))
    return Group(bar, head)


class RunDisplay:
    """Shows a run from its events: a live table on a terminal (``live``), else a plain
    progress line per Progress event, then each pass's summary (or JSON with ``as_json``, one
    object per pass, on one line with ``json_indent=None``). ``quiet`` shows nothing but the
    JSON asked for."""

    def __init__(
        self,
        console: Console,
        *,
        live: bool,
        quiet: bool,
        as_json: bool,
        json_indent: int | None = 2,
    ) -> None:
        self._console = console
        self._json_indent = json_indent
        self._live = live and not quiet
        self._quiet = quiet
        self._as_json = as_json
        self._view: Live | None = None

    def __call__(self, event: RunEvent) -> None:
        match event:
            case Note(text=text):
                if not self._quiet:
                    self._say(text)
            case Progress(snapshot=snapshot):
                if self._quiet:
                    return
                if not self._live:
                    self._say(progress_line(snapshot))
                    return
                if self._view is None:
                    self._view = Live(console=self._console, auto_refresh=False, transient=False)
                    self._view.start()
                self._view.update(progress_table(snapshot), refresh=True)
            case PassFinished(result=result):
                self._finished(result)

    def _finished(self, done: PassResult) -> None:
        # What the batches' stored counts say now: a cancel from elsewhere, the batch lane's
        # imports and other workers' answers count in the last line too.
        snapshot = done.snapshot.recounted({batch.id: batch.counts for batch in done.batches})
        if self._view is not None:
            self._view.update(progress_table(snapshot), refresh=True)
            self._view.stop()
            self._view = None
        if self._as_json:
            print_json(done.to_json(), indent=self._json_indent)
        if self._quiet:
            return
        if not self._live:
            self._say(progress_line(snapshot))
        if self._as_json:
            return
        for line in run_summary_lines(done):
            self._say(line)

    def close(self) -> None:
        """Stop the live view if a run ended without finishing its pass (an error)."""
        if self._view is not None:
            with contextlib.suppress(Exception):
                self._view.stop()
            self._view = None

    def _say(self, line: str) -> None:
        self._console.print(line, markup=False, highlight=False)
