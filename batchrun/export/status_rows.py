"""What ``batchrun status`` says of a batch, as text rows: the terminal's status table and
the summary of ``batchrun report`` show the same rows. Also how amounts and instants are
written for people (``12.3k``, ``15m10s``, ``2026-11-22 05:40:00 UTC``)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from batchrun.config.prices import describe_cost, format_usd
from batchrun.records import Lane

if TYPE_CHECKING:
    from batchrun.export.batch_object import BatchObject, BatchStatus, EndpointUseModel

# An error message in the status rows is cut to this many characters.
_EXAMPLE_CHARS = 100


def amount_text(value: float) -> str:
    """A per-minute amount, short: ``58``, ``12.3k``, ``1.2M``."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def duration_text(seconds: float) -> str:
    """``42s``, ``15m10s``, ``2h05m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def when_text(value: datetime | None) -> str:
    """An instant in UTC, or ``-``."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def state_text(batch: BatchObject) -> str:
    """The processing status, with the pause reason of a paused batch."""
    status = batch.processing_status
    return f"{status} (paused: {batch.paused_reason})" if batch.paused_reason else status


def status_rows(batch: BatchStatus) -> list[tuple[str, str]]:
    """One batch as ``status`` shows it, as (label, value) rows: identity, state, counts
    (with the reused answers), tokens and the cache hit rate, cost, budget, timings,
    throughput and its most frequent errors. Labels of a row's parts start with spaces."""
    counts, tokens = batch.request_counts, batch.usage
    total = sum(counts.model_dump().values())
    rows = [
        ("batch", batch.id),
        ("name", batch.name or "-"),
        ("status", state_text(batch)),
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
        *_cache_rows(batch),
        *_provider_rows(batch),
    ]
    if batch.repair_sends:
        cost = (
            "cost unknown" if batch.repair_cost_usd is None else format_usd(batch.repair_cost_usd)
        )
        rows.append(("repairs", f"{batch.repair_sends:,} sent, {cost} (in the cost)"))
    if batch.max_cost_usd is not None:
        rows.append(("max cost", format_usd(batch.max_cost_usd)))
    if batch.held_unpriced:
        models = ", ".join(f"{model}: {n:,}" for model, n in batch.held_unpriced.items())
        rows.append(
            (
                "held",
                f"{sum(batch.held_unpriced.values()):,} ({models}), unsent: no price to keep "
                "the max cost with; add one to the config file, or cancel the batch",
            )
        )
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
    return rows


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


def _provider_rows(batch: BatchStatus) -> list[tuple[str, str]]:
    """The lane, and each provider batch of the batch lane with its state."""
    if batch.lane == Lane.REALTIME and not batch.provider_batches:
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


def _cache_rows(batch: BatchStatus) -> list[tuple[str, str]]:
    """The prompt cache per lane, once more than real time was used or refreshes were sent,
    and the refreshes' overhead."""
    lanes = batch.cache_by_lane
    overhead = batch.cache_overhead
    if set(lanes) <= {Lane.REALTIME} and overhead is None:
        return []
    rows = [
        (
            f"  {lane} cache",
            f"{item.cache_read_input_tokens:,} read, {item.cache_creation_input_tokens:,} "
            f"written; saved {format_usd(item.saved_usd)}",
        )
        for lane, item in lanes.items()
        if item.cache_read_input_tokens or item.cache_creation_input_tokens
    ]
    if overhead is not None:
        failed = f", {overhead.failed:,} unanswered" if overhead.failed else ""
        rows.append(
            (
                "cache refreshes",
                f"{overhead.requests:,} requests for {overhead.groups:,} groups{failed}: "
                f"{format_usd(overhead.cost_usd)} overhead, not in the cost above; "
                f"priming (1-hour writes beyond 5-minute ones) "
                f"{format_usd(overhead.priming_cost_usd)}, in the cost above",
            )
        )
    return rows


def _lane_rows(batch: BatchStatus) -> list[tuple[str, str]]:
    """Cost per lane and the saving, once more than real time was used (batch lane, reuse)."""
    cost = batch.cost
    if set(cost.by_lane) <= {Lane.REALTIME} and cost.saved_usd == 0:
        return []
    rows = [(f"  {lane}", format_usd(usd)) for lane, usd in sorted(cost.by_lane.items())]
    rows.append(("  saved", format_usd(cost.saved_usd)))
    return rows
