"""How batches look on a terminal: the batch and status tables, the list of batches, and the
lines ``submit`` and ``run`` end with. Views only: they render the public objects
(:class:`~batchrun.export.batch_object.BatchObject`, :class:`BatchStatus`, a run's
:class:`~batchrun.ops.session.PassResult`) and decide nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table

from batchrun.cli.text import amount_text, plural, when_text
from batchrun.config.prices import describe_cost, format_usd
from batchrun.export.batch_object import BatchObject, BatchStatus, EndpointUseModel
from batchrun.input.reader import MAX_PRINTED_PROBLEMS

if TYPE_CHECKING:
    from batchrun.ops.session import PassResult

# An error message in the status table is cut to this many characters.
_EXAMPLE_CHARS = 100


def _state(batch: BatchObject) -> str:
    status = batch.processing_status
    return f"{status} (paused: {batch.paused_reason})" if batch.paused_reason else status


def status_table(batch: BatchStatus) -> Table:
    """One batch: identity, state, counts (with the reused answers), tokens and the cache hit
    rate, cost, budget, timings, throughput and its most frequent errors."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    counts, tokens = batch.request_counts, batch.usage
    total = sum(counts.model_dump().values())
    rows = [
        ("batch", batch.id),
        ("name", batch.name or "-"),
        ("status", _state(batch)),
        ("endpoint", batch.endpoint),
        ("source", batch.source or "-"),
        ("requests", f"{total:,}"),
        ("  processing", f"{counts.processing:,}"),
        ("  succeeded", f"{counts.succeeded:,}"),
        *([("    reused", f"{batch.reused:,}")] if batch.reused else []),
        ("  errored", f"{counts.errored:,}"),
        ("  canceled", f"{counts.canceled:,}"),
        ("  expired", f"{counts.expired:,}"),
        ("input tokens", f"{tokens.input_tokens:,}"),
        ("output tokens", f"{tokens.output_tokens:,}"),
        ("cache write tokens", f"{tokens.cache_creation_input_tokens:,}"),
        ("cache read tokens", f"{tokens.cache_read_input_tokens:,}"),
        ("cache hit rate", _rate_text(batch.cache_hit_rate)),
        ("created", when_text(batch.created_at)),
        ("expires", when_text(batch.expires_at)),
        ("cancel initiated", when_text(batch.cancel_initiated_at)),
        ("ended", when_text(batch.ended_at)),
        ("cost", describe_cost(batch.cost)),
        *_lane_rows(batch),
        *_provider_rows(batch),
    ]
    if batch.max_cost_usd is not None:
        rows.append(("max cost", format_usd(batch.max_cost_usd)))
    rows.append(("first sent", when_text(batch.started_at)))
    rows.append(("last result", when_text(batch.last_completed_at)))
    if batch.throughput is not None:
        rate = batch.throughput
        rows.append(
            (
                "throughput",
                f"{amount_text(rate.requests_per_min)} requests/min, "
                f"{amount_text(rate.tokens_per_min)} tokens/min",
            )
        )
    if len(batch.endpoints) > 1:
        for index, use in enumerate(batch.endpoints):
            rows.append(("answered by" if index == 0 else "", _endpoint_use_text(use)))
    for index, error in enumerate(batch.errors):
        example = (error.example or "").replace("\n", " ")
        if len(example) > _EXAMPLE_CHARS:
            example = example[: _EXAMPLE_CHARS - 1] + "…"
        label = "errors" if index == 0 else ""
        rows.append((label, f"{error.count:,} × {error.type}: {example}".rstrip(": ")))
    for label, value in rows:
        table.add_row(label, value)
    return table


def _rate_text(rate: float | None) -> str:
    """A share as a percentage with one decimal, or "-" when there is none."""
    return "-" if rate is None else f"{rate:.1%}"


def _endpoint_use_text(use: EndpointUseModel) -> str:
    """One endpoint of a batch: answers, share, rate in its last minute, and state."""
    text = f"{use.endpoint}: {use.answered:,} ({use.share:.0%}), {use.per_min:,}/min at the end"
    if use.state == "open":
        text += f"; out of rotation until {when_text(use.retry_at)}: {use.reason}"
    elif use.state == "halted":
        text += f"; out: {use.reason}"
    return text


def status_line(batch: BatchStatus) -> str:
    """One line for ``status --watch`` without a terminal."""
    c = batch.request_counts
    total = sum(c.model_dump().values())
    return (
        f"{batch.id}: {_state(batch)}; {total - c.processing:,}/{total:,} done, "
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
        _state(batch),
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


def run_summary_lines(done: PassResult) -> list[str]:
    """What a finished pass prints: one line per batch, the run's own figures, its cost, each
    batch's cost against its budget, and why it stopped early."""
    report = done.report
    lines = []
    for summary in done.batches:
        counts = summary.counts
        # A batch this run paused gets its reason on its own line below, once.
        batch = BatchObject.from_summary(summary)
        state = "in_progress (paused)" if batch.id in report.paused else _state(batch)
        lines.append(
            f"{batch.id}: {state}; {counts.succeeded:,} succeeded, "
            f"{counts.errored:,} errored, {counts.canceled:,} canceled, "
            f"{counts.expired:,} expired, {counts.processing:,} processing"
        )
    lines.append(
        f"this run: {report.sent:,} sent, {report.retried:,} retried, "
        f"{report.rate_limited:,} rate-limited"
    )
    for batch_id, reason in report.paused.items():
        lines.append(f"{batch_id} paused: {reason}; fix it, then `batchrun run {batch_id}`")
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


def _provider_rows(batch: BatchStatus) -> list[tuple[str, str]]:
    """The lane, and each provider batch of the batch lane with its state."""
    if batch.lane == "realtime" and not batch.provider_batches:
        return []
    rows = [("lane", batch.lane)]
    for item in batch.provider_batches:
        name = item.provider_id or f"(intent {item.id})"
        state = item.state + (f", {item.provider_status}" if item.provider_status else "")
        text = f"{name} on {item.endpoint}: {item.request_count:,} requests, {state}"
        if item.note:
            text += f"; {item.note}"
        rows.append(("  provider batch", text))
    return rows


def _lane_rows(batch: BatchStatus) -> list[tuple[str, str]]:
    """Cost per lane and the saving, once more than real time was used (batch lane, reuse)."""
    cost = batch.cost
    if set(cost.by_lane) <= {"realtime"} and cost.saved_usd == 0:
        return []
    rows = [(f"  {lane}", format_usd(usd)) for lane, usd in sorted(cost.by_lane.items())]
    rows.append(("  saved", format_usd(cost.saved_usd)))
    return rows
