"""Views of money and time: ``status`` with cost, throughput and errors, and ``estimate``.

Each view comes as a rich table for people and as a JSON-ready dict for scripts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from batchrun.details import BatchStats
from batchrun.display import batch_table
from batchrun.models import BatchObject
from batchrun.planning import FilePlan, ModelPlan
from batchrun.pricing import CostTotal, describe_cost, format_usd
from batchrun.progress_view import amount_text, duration_text
from batchrun.records import BatchSummary

# An error message in the status table is cut to this many characters.
_EXAMPLE_CHARS = 100


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def throughput_per_min(batch: BatchSummary, stats: BatchStats) -> tuple[float, float] | None:
    """(requests, tokens) per minute from the first send to the last answer, or None before
    there is a span to measure."""
    if stats.first_started_at is None or stats.last_completed_at is None:
        return None
    span_s = (stats.last_completed_at - stats.first_started_at).total_seconds()
    answered = batch.counts.succeeded + batch.counts.errored
    if span_s < 1 or answered == 0:
        return None
    tokens = batch.tokens.input_tokens + batch.tokens.output_tokens
    return answered * 60 / span_s, tokens * 60 / span_s


def status_table(batch: BatchSummary, stats: BatchStats, cost: CostTotal) -> Table:
    """The batch table, with its cost, budget, timings, throughput and frequent errors."""
    table = batch_table(batch)
    table.add_row("cost", describe_cost(cost))
    if stats.max_cost_usd is not None:
        table.add_row("max cost", format_usd(stats.max_cost_usd))
    table.add_row("first sent", _when(stats.first_started_at))
    table.add_row("last result", _when(stats.last_completed_at))
    rates = throughput_per_min(batch, stats)
    if rates is not None:
        table.add_row(
            "throughput",
            f"{amount_text(rates[0])} requests/min, {amount_text(rates[1])} tokens/min",
        )
    for index, error in enumerate(stats.errors):
        example = (error.example or "").replace("\n", " ")
        if len(example) > _EXAMPLE_CHARS:
            example = example[: _EXAMPLE_CHARS - 1] + "…"
        label = "errors" if index == 0 else ""
        table.add_row(label, f"{error.count:,} × {error.error_type}: {example}".rstrip(": "))
    return table


def cost_json(total: CostTotal) -> dict[str, Any]:
    """Cost fields: ``cost_usd`` is null when part of the cost is unknown."""
    return {
        "cost_usd": None if total.usd is None else round(total.usd, 8),
        "cost_usd_known": round(total.known_usd, 8),
        "unpriced_models": sorted(total.unpriced),
    }


def status_json(batch: BatchSummary, stats: BatchStats, cost: CostTotal) -> dict[str, Any]:
    """The batch object with cost, budget, timings, throughput and frequent errors."""
    rates = throughput_per_min(batch, stats)
    return (
        BatchObject.from_summary(batch).model_dump(mode="json")
        | cost_json(cost)
        | {
            "max_cost_usd": stats.max_cost_usd,
            "started_at": stats.first_started_at.isoformat() if stats.first_started_at else None,
            "last_completed_at": (
                stats.last_completed_at.isoformat() if stats.last_completed_at else None
            ),
            "throughput": None
            if rates is None
            else {"requests_per_min": round(rates[0], 3), "tokens_per_min": round(rates[1], 3)},
            "errors": [
                {"type": e.error_type, "count": e.count, "example": e.example} for e in stats.errors
            ],
            "usage_by_model": [
                {
                    "model": u.model,
                    "requests": u.requests,
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                    "cache_creation_input_tokens": u.cache_creation_input_tokens,
                    "cache_read_input_tokens": u.cache_read_input_tokens,
                }
                for u in stats.usage
            ],
        }
    )


def status_line(batch: BatchSummary, cost: CostTotal) -> str:
    """One line for ``status --watch`` without a terminal."""
    c = batch.counts
    state = batch.processing_status + (
        f" (paused: {batch.paused_reason})" if batch.paused_reason else ""
    )
    return (
        f"{batch.id}: {state}; {c.total - c.processing:,}/{c.total:,} done, "
        f"{c.succeeded:,} succeeded, {c.errored:,} errored; cost {describe_cost(cost)}"
    )


# -- estimate -----------------------------------------------------------------------------------


def _limit_text(plan: ModelPlan, dimension: str | None) -> str:
    if dimension is None or plan.limits is None:
        return "no limit set"
    return f"{dimension} {plan.limits.get(dimension):,g}/min"


def _model_duration(plan: ModelPlan, *, worst: bool) -> tuple[str, str]:
    """(how long, the limit that binds) for one model."""
    minutes, binding = plan.duration(
        plan.max_output_tokens if worst else plan.expected_output_tokens
    )
    if minutes is None:
        return "unknown", "no limit set"
    return duration_text(minutes * 60), _limit_text(plan, binding)


def estimate_table(plan: FilePlan) -> Group:
    """The totals (expected and worst case), then one line per model."""
    totals = Table.grid(padding=(0, 2))
    totals.add_column(style="bold")
    totals.add_column()
    expected, unpriced = plan.cost_usd(worst=False)
    worst, _ = plan.cost_usd(worst=True)
    missing = dict.fromkeys(unpriced, 1)
    totals.add_row("file", plan.source)
    totals.add_row("endpoint", plan.endpoint)
    totals.add_row("requests", f"{plan.requests:,}")
    totals.add_row("input tokens", f"{plan.input_tokens:,} (estimated)")
    totals.add_row(
        "output tokens",
        f"{plan.expected_output_tokens:,} expected ({plan.output_share:.0%} of max_tokens), "
        f"{plan.max_output_tokens:,} at most",
    )
    totals.add_row(
        "cost",
        f"{describe_cost(CostTotal(expected, missing))} expected, "
        f"{describe_cost(CostTotal(worst, missing))} at most",
    )
    for label, is_worst in (("duration", False), ("at most", True)):
        minutes, slowest = plan.duration(worst=is_worst)
        if minutes is None or slowest is None:
            text = "unknown: a model has no limit, so concurrency and latency set the pace"
        else:
            _, binding = _model_duration(slowest, worst=is_worst)
            text = f"{duration_text(minutes * 60)}, bound by {binding} for {slowest.model}"
        totals.add_row(label, text)
    lines = [Text("per model:", style="bold")]
    for m in plan.models:
        how_long, binding = _model_duration(m, worst=False)
        lines.append(
            Text(
                f"  {m.model}: {m.requests:,} requests, {m.input_tokens:,} input tokens, "
                f"{m.expected_output_tokens:,} output tokens (max {m.max_output_tokens:,}), "
                f"{format_usd(m.cost_usd(m.expected_output_tokens))} "
                f"(max {format_usd(m.cost_usd(m.max_output_tokens))}), {how_long} ({binding})"
            )
        )
    return Group(totals, Text(""), *lines)


def _minutes_json(plan: ModelPlan, output: int) -> dict[str, Any]:
    minutes, binding = plan.duration(output)
    return {
        "minutes": None if minutes is None else round(minutes, 3),
        "binding_limit": binding,
        "minutes_by_limit": {k: round(v, 3) for k, v in plan.minutes_by_limit(output).items()},
    }


def estimate_json(plan: FilePlan) -> dict[str, Any]:
    """The estimate as data: per model and in total, expected and worst case."""
    models = []
    for m in plan.models:
        expected_cost = m.cost_usd(m.expected_output_tokens)
        worst_cost = m.cost_usd(m.max_output_tokens)
        models.append(
            {
                "model": m.model,
                "requests": m.requests,
                "input_tokens": m.input_tokens,
                "expected_output_tokens": m.expected_output_tokens,
                "max_output_tokens": m.max_output_tokens,
                "expected_cost_usd": None if expected_cost is None else round(expected_cost, 8),
                "worst_cost_usd": None if worst_cost is None else round(worst_cost, 8),
                "limits": None if m.limits is None else vars(m.limits),
                "expected_duration": _minutes_json(m, m.expected_output_tokens),
                "worst_duration": _minutes_json(m, m.max_output_tokens),
            }
        )
    expected, unpriced = plan.cost_usd(worst=False)
    worst, _ = plan.cost_usd(worst=True)
    durations = {}
    for case, is_worst in (("expected", False), ("worst", True)):
        minutes, slowest = plan.duration(worst=is_worst)
        durations[case] = {
            "minutes": None if minutes is None else round(minutes, 3),
            "slowest_model": slowest.model if slowest else None,
        }
    return {
        "source": plan.source,
        "endpoint": plan.endpoint,
        "output_share": plan.output_share,
        "requests": plan.requests,
        "input_tokens": plan.input_tokens,
        "expected_output_tokens": plan.expected_output_tokens,
        "max_output_tokens": plan.max_output_tokens,
        "expected_cost_usd": None if unpriced else round(expected, 8),
        "worst_cost_usd": None if unpriced else round(worst, 8),
        "unpriced_models": unpriced,
        "duration": durations,
        "models": models,
    }
