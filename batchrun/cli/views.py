"""How batches look on a terminal: the batch and status tables, the list of batches, and the
lines ``submit`` and ``run`` end with. Views only: they render the public objects
(:class:`~batchrun.export.batch_object.BatchObject`, :class:`BatchStatus`, a run's
:class:`~batchrun.ops.session.PassResult`) and decide nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table

from batchrun.cli.text import plural
from batchrun.config.prices import describe_cost, format_usd
from batchrun.export.batch_object import BatchObject, BatchStatus
from batchrun.export.status_rows import state_text, status_rows
from batchrun.input.reader import MAX_PRINTED_PROBLEMS

if TYPE_CHECKING:
    from batchrun.ops.session import PassResult


def status_table(batch: BatchStatus) -> Table:
    """One batch as ``status`` shows it (:func:`~batchrun.export.status_rows.status_rows`)."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in status_rows(batch):
        table.add_row(label, value)
    return table


def status_line(batch: BatchStatus) -> str:
    """One line for ``status --watch`` without a terminal."""
    c = batch.request_counts
    total = sum(c.model_dump().values())
    return (
        f"{batch.id}: {state_text(batch)}; {total - c.processing:,}/{total:,} done, "
        f"{c.succeeded:,} succeeded, {c.errored:,} errored; cost {describe_cost(batch.cost)}"
    )


_BATCH_COLUMNS = (
    "id",
    "name",
    "status",
    "endpoint",
    "requests",
    "done",
    "errored",
    "created (UTC)",
)


def _batch_row(batch: BatchObject) -> list[str]:
    counts = batch.request_counts
    total = sum(counts.model_dump().values())
    return [
        batch.id,
        batch.name or "",
        state_text(batch),
        batch.endpoint,
        f"{total:,}",
        f"{total - counts.processing:,}",
        f"{counts.errored:,}",
        batch.created_at.strftime("%Y-%m-%d %H:%M"),
    ]


def batches_table(batches: Sequence[BatchObject]) -> Table:
    """Many batches, one row each; ids are never cut, whatever the width."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1), collapse_padding=True)
    for column in _BATCH_COLUMNS:
        numeric = column in ("requests", "done", "errored")
        table.add_column(
            column,
            justify="right" if numeric else "left",
            no_wrap=column == "id",
            min_width=max((len(b.id) for b in batches), default=2) if column == "id" else None,
        )
    for batch in batches:
        table.add_row(*_batch_row(batch))
    return table


def batches_lines(batches: Sequence[BatchObject]) -> list[str]:
    """Many batches for a pipe: a header, then one tab-separated line per batch."""
    lines = ["\t".join(_BATCH_COLUMNS)]
    for batch in batches:
        lines.append("\t".join(value.replace("\t", " ") for value in _batch_row(batch)))
    return lines


def submit_summary_lines(batch: BatchObject, skipped: Sequence[str]) -> list[str]:
    """What a successful submit prints: the problems of the lines --skip-invalid kept as
    errored results (as many as a refusal lists), then what was stored."""
    lines = [f"warning: {problem}" for problem in skipped[:MAX_PRINTED_PROBLEMS]]
    hidden = len(skipped) - MAX_PRINTED_PROBLEMS
    if hidden > 0:
        lines.append(f"warning: … and {hidden:,} more problem{'s' if hidden != 1 else ''}")
    total = sum(batch.request_counts.model_dump().values())
    stored = f"stored {plural(total, 'request')} as batch {batch.id}"
    if batch.request_counts.errored:
        invalid = batch.request_counts.errored
        stored += f"; {invalid:,} invalid, recorded as errored result" + (
            "" if invalid == 1 else "s"
        )
    return [*lines, stored]


def paused_lines(done: PassResult) -> list[str]:
    """One line per batch the pass paused or left waiting: the batch, why, and the command
    that continues it (printed even with ``run -q``: cron mails only what is printed)."""
    return [
        f"{batch_id} paused: {reason}; fix it, then `batchrun run {batch_id}`"
        for batch_id, reason in done.report.paused.items()
    ]


def run_summary_lines(done: PassResult) -> list[str]:
    """What a finished pass prints: one line per batch, the run's own figures, its cost, each
    batch's cost against its budget, and why it stopped early."""
    report = done.report
    lines = []
    for summary in done.batches:
        counts = summary.counts
        # A batch this run paused gets its reason on its own line below, once.
        batch = BatchObject.from_summary(summary)
        state = "in_progress (paused)" if batch.id in report.paused else state_text(batch)
        lines.append(
            f"{batch.id}: {state}; {counts.succeeded:,} succeeded, "
            f"{counts.errored:,} errored, {counts.canceled:,} canceled, "
            f"{counts.expired:,} expired, {counts.processing:,} processing"
        )
    repaired = f", {report.repaired:,} repaired" if report.repaired else ""
    lines.append(
        f"this run: {report.sent:,} sent, {report.retried:,} retried, "
        f"{report.rate_limited:,} rate-limited{repaired}"
    )
    lines.extend(paused_lines(done))
    lines.append(f"cost of this run: {describe_cost(done.snapshot.cost)}")
    for summary in done.batches:
        budget = done.budgets.get(summary.id)
        of = f" of max-cost {format_usd(budget)}" if budget is not None else ""
        lines.append(f"{summary.id}: cost so far {describe_cost(done.costs[summary.id])}{of}")
    if report.interrupted:
        released = report.released
        lines.append(
            f"{report.interrupted}: requests in flight were recorded"
            + (f", {released} returned to the queue" if released else "")
            + "; `batchrun run` continues where this stopped"
        )
    if done.stopped_by_time_limit:
        left = sum(batch.counts.processing for batch in done.batches)
        lines.append(
            f"stopped at the time limit (--max-runtime) with {left:,} requests left; "
            "the next `batchrun run` continues them"
        )
    return lines
