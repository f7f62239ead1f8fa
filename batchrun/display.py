"""Human-readable views of batches for the terminal (rich tables)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.table import Table

from batchrun.dispatcher import RunReport
from batchrun.reader import MAX_PRINTED_PROBLEMS
from batchrun.records import BatchSummary


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _status(batch: BatchSummary) -> str:
    status = batch.processing_status
    return f"{status} (paused: {batch.paused_reason})" if batch.paused_reason else status


def batch_table(batch: BatchSummary) -> Table:
    """One batch: identity, state, counts and tokens."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    counts, tokens = batch.counts, batch.tokens
    rows = [
        ("batch", batch.id),
        ("name", batch.name or "-"),
        ("status", _status(batch)),
        ("endpoint", batch.endpoint),
        ("source", batch.source or "-"),
        ("requests", f"{counts.total:,}"),
        ("  processing", f"{counts.processing:,}"),
        ("  succeeded", f"{counts.succeeded:,}"),
        ("  errored", f"{counts.errored:,}"),
        ("  canceled", f"{counts.canceled:,}"),
        ("  expired", f"{counts.expired:,}"),
        ("input tokens", f"{tokens.input_tokens:,}"),
        ("output tokens", f"{tokens.output_tokens:,}"),
        ("cache write tokens", f"{tokens.cache_creation_input_tokens:,}"),
        ("cache read tokens", f"{tokens.cache_read_input_tokens:,}"),
        ("created", _when(batch.created_at)),
        ("expires", _when(batch.expires_at)),
        ("cancel initiated", _when(batch.cancel_initiated_at)),
        ("ended", _when(batch.ended_at)),
    ]
    for label, value in rows:
        table.add_row(label, value)
    return table


def batches_table(batches: Sequence[BatchSummary]) -> Table:
    """Many batches, one row each."""
    table = Table()
    for column in ("id", "name", "status", "endpoint", "requests", "done", "errored", "created"):
        table.add_column(
            column, justify="right" if column in ("requests", "done", "errored") else "left"
        )
    for batch in batches:
        counts = batch.counts
        table.add_row(
            batch.id,
            batch.name or "",
            _status(batch),
            batch.endpoint,
            f"{counts.total:,}",
            f"{counts.total - counts.processing:,}",
            f"{counts.errored:,}",
            _when(batch.created_at),
        )
    return table


def run_summary_lines(batches: Sequence[BatchSummary], report: RunReport) -> list[str]:
    """What a finished run prints: one line per batch, then the run's own figures."""
    lines = []
    for batch in batches:
        counts = batch.counts
        # A batch this run paused gets its reason on its own line below, once.
        state = "in_progress (paused)" if batch.id in report.paused else _status(batch)
        line = (
            f"{batch.id}: {state}; {counts.succeeded:,} succeeded, "
            f"{counts.errored:,} errored, {counts.canceled:,} canceled, "
            f"{counts.expired:,} expired, {counts.processing:,} processing"
        )
        lines.append(line)
    lines.append(
        f"this run: {report.sent:,} sent, {report.retried:,} retried, "
        f"{report.rate_limited:,} rate-limited"
    )
    for batch_id, reason in report.paused.items():
        lines.append(f"{batch_id} paused: {reason}; fix it, then `batchrun run {batch_id}`")
    return lines


def submit_summary_lines(batch: BatchSummary, skipped: Sequence[str]) -> list[str]:
    """What a successful submit prints: the problems of the lines --skip-invalid kept as
    errored results (as many as a refusal lists), then what was stored."""
    lines = [f"warning: {problem}" for problem in skipped[:MAX_PRINTED_PROBLEMS]]
    hidden = len(skipped) - MAX_PRINTED_PROBLEMS
    if hidden > 0:
        lines.append(f"warning: … and {hidden:,} more problem{'s' if hidden != 1 else ''}")
    stored = f"stored {batch.counts.total:,} requests as batch {batch.id}"
    if batch.counts.errored:
        stored += f"; {batch.counts.errored:,} invalid, recorded as errored results"
    return [*lines, stored]
