"""The report as one self-contained HTML page: inline CSS and inline SVG charts, no script,
nothing fetched (a Content-Security-Policy in the page forbids it), so it opens from a file,
an e-mail attachment or a CI artifact store alike. Every text that came from a request, a
server or a config file is escaped.

Sections: the summary (what ``batchrun status`` shows), the limits, sends per minute
against them, failures over time, errors by type, latency per endpoint, cost over time and
tokens by kind. Each chart is an ``<svg class="chart">`` whose series carry
``data-series`` (see :mod:`batchrun.ops.views.report.charts`).
"""

from __future__ import annotations

import html
from collections.abc import Container, Iterable, Sequence
from datetime import datetime
from itertools import accumulate

from batchrun.config.prices import format_usd
from batchrun.export.status_rows import amount_text, status_rows, when_text
from batchrun.limits.dimensions import DIMENSIONS
from batchrun.ops.limit_recorder import CHANGE_SHARE
from batchrun.ops.views.limits import LimitUse, measure_of
from batchrun.ops.views.report.charts import (
    Bar,
    Series,
    Threshold,
    bar_chart,
    histogram,
    time_chart,
)
from batchrun.ops.views.report.data import LatencyStats, ReportData
from batchrun.ops.views.run_limits import RunLimits

# Error messages in the errors table are cut to this many characters.
MESSAGE_CHARS = 300
# The limits table of each run lists this many runs, the newest.
RUNS_SHOWN = 10
# Why a batch may have no recorded limits.
_NOT_RECORDED = (
    "nothing of it was sent in real time yet, it went only to provider batches (which have "
    "no rate limits), or it was sent before batchrun recorded limits (schema revision 0011)"
)

_MEASURE_TITLES = {
    "requests": "requests",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "tokens": "input + output tokens",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;
background:#f6f7f9}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#57606a;margin:0 0 16px}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:16px;margin:16px 0}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 10px 4px 0;border-bottom:1px solid #eaeef2;vertical-align:top}
th{font-weight:600;color:#424a53}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.summary td:first-child{font-weight:600;width:210px;white-space:pre}
.note{color:#57606a;font-size:13px;margin:6px 0}
.binding{color:#b42318;font-weight:600}
svg.chart{width:100%;height:auto;display:block;margin:8px 0}
code{font-size:12px;word-break:break-all}
"""


def render_report(data: ReportData) -> str:
    """The report page of ``data`` (see the module)."""
    status = data.status
    title = f"batchrun report: {status.name or status.id}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(status.id)} · generated {_e(when_text(data.generated_at))}'
        f" · time buckets of {_duration(data.width_s)}</p>",
        _summary(data),
        _limits(data),
        _rates(data),
        _failures(data),
        _errors(data),
        _latency(data),
        _costs(data),
        _tokens(data),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _section(section_id: str, heading: str, *body: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(heading)}</h2>' + "".join(body) + "</section>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Container[int]
) -> str:
    """A table whose ``numeric`` columns (indexes) are right-aligned numbers."""

    def cell(tag: str, index: int, value: object) -> str:
        kind = ' class="num"' if index in numeric else ""
        return f"<{tag}{kind}>{_e(value)}</{tag}>"

    head = "".join(cell("th", index, name) for index, name in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", index, value) for index, value in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(data: ReportData) -> str:
    rows = "".join(
        f"<tr><td>{_e(label)}</td><td>{_e(value)}</td></tr>"
        for label, value in status_rows(data.status)
    )
    return _section("summary", "Summary", f'<table class="summary">{rows}</table>')


def _limit_text(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/min"


def _limits(data: ReportData) -> str:
    runs = data.runs
    if runs:
        latest = runs[-1]
        which = "latest run" if len(runs) > 1 else "run"
        started = when_text(latest.started_at)
        if not data.limits:
            said = [
                _note(
                    f"No rate limit was known to the {which} that sent this batch (started "
                    f"{started}): none was configured or given as a flag, and no answer "
                    "announced one."
                )
            ]
        else:
            said = [
                _limits_table(data),
                _note(
                    f"{_binding_text(data)} Limits are those the {which} that sent this batch "
                    f"(started {started}) recorded, at its end: a flag given to the run "
                    "replaces the configured limit; the limit in force is the lowest of that, "
                    'the announced and the learned one; "in force now" is the workers\' '
                    "rate while the batch runs. They are shared with anything else "
                    "sent under the same endpoint and model keys."
                ),
            ]
        if len(runs) > 1 or any(limit.changes for run in runs for limit in run.limits):
            said.append(_runs_table(runs))
        return _section("limits", "Rate limits", *said)
    if not data.limits:
        return _section(
            "limits",
            "Rate limits",
            _note(
                "No rate limit is known for the keys this batch is sent under: none is "
                "configured, and no answer announced one. No run has recorded limits for it: "
                f"{_NOT_RECORDED}."
            ),
        )
    return _section(
        "limits",
        "Rate limits",
        _limits_table(data),
        _note(
            f"{_binding_text(data)} No run has recorded limits for this batch "
            f"({_NOT_RECORDED}): these are the limits of the endpoint and model keys it is "
            "sent under, as the database holds them now, shared with anything else sent "
            "under the same keys."
        ),
    )


def _binding_text(data: ReportData) -> str:
    binding = data.binding
    if binding is not None and binding.utilisation is not None:
        return (
            f"The binding limit is {binding.dimension}: the batch used "
            f"{binding.utilisation:.0%} of it on average from its first answer to its last."
        )
    return "No limit was measured against yet."


def _limits_table(data: ReportData) -> str:
    rows = [
        (
            use.dimension + (" (binding)" if use.binding else ""),
            _MEASURE_TITLES[use.measures],
            _limit_text(use.flag),
            _limit_text(use.configured),
            _limit_text(use.announced),
            _limit_text(use.learned),
            _limit_text(use.in_force),
            _limit_text(use.limit),
            "-" if use.rate is None else f"{use.rate:,.0f}/min",
            "-" if use.utilisation is None else f"{use.utilisation:.0%}",
        )
        for use in data.limits
    ]
    return _table(
        (
            "limit",
            "counts",
            "flag",
            "configured",
            "announced",
            "learned",
            "in force now",
            "in force",
            "batch's rate",
            "used",
        ),
        rows,
        numeric=range(2, 10),
    )


def _runs_table(runs: Sequence[RunLimits]) -> str:
    """Each run's limits (newest first, at most :data:`RUNS_SHOWN`), with how the limit in
    force changed during the run."""
    rows = []
    shown = list(reversed(runs))[:RUNS_SHOWN]
    for run in shown:
        started = when_text(run.started_at)
        if not run.limits:
            rows.append((started, "-", "-", "-", "-", "-", "-", "-", "no limit known"))
        for limit in run.limits:
            changes = f"{limit.changes:,}" + (" (more not recorded)" if limit.capped else "")
            rows.append(
                (
                    started,
                    limit.dimension,
                    _limit_text(limit.flag),
                    _limit_text(limit.configured),
                    _limit_text(limit.announced),
                    _limit_text(limit.learned),
                    _limit_text(limit.limit),
                    _limit_text(limit.lowest),
                    changes,
                )
            )
    left = len(runs) - len(shown)
    more = f" The {left:,} oldest runs are left out." if left else ""
    return _table(
        (
            "run started",
            "limit",
            "flag",
            "configured",
            "announced",
            "learned",
            "in force at the end",
            "lowest in force",
            "changes",
        ),
        rows,
        numeric=range(2, 9),
    ) + _note(
        "Each run that sent this batch, newest first, with the limits it recorded: a change "
        f"is recorded when a limit moves by more than {CHANGE_SHARE:.0%}.{more}"
    )


def _thresholds(limits: Sequence[LimitUse], measures: Iterable[str]) -> list[Threshold]:
    wanted = set(measures)
    return [
        Threshold(
            f"{use.dimension} limit {amount_text(use.limit)}/min",
            use.limit,
            binding=use.binding,
        )
        for use in limits
        if use.measures in wanted
    ]


def _rates(data: ReportData) -> str:
    window = _duration(data.window_s)
    requests = Series(
        "requests sent/min",
        [(point.at.timestamp(), point.requests_per_min) for point in data.rates],
    )
    token_series = [
        Series(
            "input tokens/min",
            [(point.at.timestamp(), point.input_tokens_per_min) for point in data.rates],
        ),
        Series(
            "output tokens/min",
            [(point.at.timestamp(), point.output_tokens_per_min) for point in data.rates],
        ),
    ]
    if any(use.measures == "tokens" for use in data.limits):
        token_series.append(
            Series(
                "input + output tokens/min",
                [
                    (point.at.timestamp(), point.input_tokens_per_min + point.output_tokens_per_min)
                    for point in data.rates
                ],
            )
        )
    return _section(
        "throughput",
        "Sent per minute against the limits",
        time_chart(
            chart_id="chart-requests",
            title="Requests sent per minute",
            y_unit="/min",
            series=[requests, *_limit_steps(data, ["requests"])],
            thresholds=_thresholds(data.limits, ["requests"]),
        ),
        time_chart(
            chart_id="chart-tokens",
            title="Tokens sent per minute",
            y_unit="/min",
            series=[
                *token_series,
                *_limit_steps(data, ["input_tokens", "output_tokens", "tokens"]),
            ],
            thresholds=_thresholds(data.limits, ["input_tokens", "output_tokens", "tokens"]),
        ),
        _note(
            f"Each point is a rate per minute over the {window} before it, placed when the "
            "requests were sent (retried sends included; input tokens as limits count them: "
            "input plus cache writes). Answers reused from the database and those a "
            "provider batch gave were not sent in real time and are left out. The dashed "
            "lines are the limits the latest run ended with; when a limit changed during a "
            "run, or runs had different ones, a step line shows the limit in force over time."
        ),
    )


def _limit_steps(data: ReportData, measures: Iterable[str]) -> list[Series]:
    """For each dimension counting one of ``measures`` whose limit in force changed (in a
    run, or from one run to the next), a step line of it over the runs, held to the last
    rate point."""
    wanted = set(measures)
    steps: dict[str, list[tuple[float, float]]] = {}
    for run in data.runs:
        for limit in run.limits:
            if measure_of(DIMENSIONS.get(limit.dimension)) not in wanted:
                continue
            points = steps.setdefault(limit.dimension, [])
            points += [(at.timestamp(), value) for at, value in limit.steps if value is not None]
    found = []
    for dimension, points in steps.items():
        if len({value for _, value in points}) < 2:
            continue
        if data.rates and data.rates[-1].at.timestamp() > points[-1][0]:
            points.append((data.rates[-1].at.timestamp(), points[-1][1]))
        found.append(Series(f"{dimension} limit in force", points, kind="step"))
    return found


def _failures(data: ReportData) -> str:
    def series(name: str, values: Iterable[tuple[datetime, int]]) -> Series:
        return Series(name, [(at.timestamp(), float(n)) for at, n in values], kind="step")

    points = data.failures
    total = {
        "retried": sum(point.retried for point in points),
        "429s": sum(point.rate_limited for point in points),
        "529s": sum(point.overloaded for point in points),
        "errored": sum(point.errored for point in points),
    }
    return _section(
        "failures",
        "429s, retries and errors over time",
        time_chart(
            chart_id="chart-failures",
            title=f"Per {_duration(data.width_s)}",
            y_unit="",
            series=[
                series("retried sends", ((p.at, p.retried) for p in points)),
                series("429 rate limited", ((p.at, p.rate_limited) for p in points)),
                series("529 overloaded", ((p.at, p.overloaded) for p in points)),
                series("errored results", ((p.at, p.errored) for p in points)),
            ],
        ),
        _note(
            f"In all: {total['retried']:,} sends failed and were retried, "
            f"{total['429s']:,} answers were 429s and {total['529s']:,} were 529s (retried "
            f"or final), {total['errored']:,} requests ended errored. Placed when sent."
        ),
    )


def _errors(data: ReportData) -> str:
    if not data.errors:
        return _section("errors", "Errors by type", _note("No request ended errored."))
    bars = [Bar(item.error_type, float(item.count), item.example) for item in data.errors]
    rows = [(item.error_type, f"{item.count:,}", _clip(item.example or "")) for item in data.errors]
    return _section(
        "errors",
        "Errors by type",
        bar_chart(chart_id="chart-errors", title="Errored results by type", unit="", bars=bars),
        _table(("type", "results", "example message"), rows, numeric={1}),
    )


def _latency(data: ReportData) -> str:
    if not data.latencies:
        return _section(
            "latency", "Answer latency", _note("No answer sent in real time has a latency.")
        )
    names = [name for name, _ in data.latencies[0].percentiles]
    rows = [
        (
            stats.endpoint,
            f"{stats.count:,}",
            *(_ms(ms) for _, ms in stats.percentiles),
            _ms(stats.mean_ms),
        )
        for stats in data.latencies
    ]
    charts = [_latency_chart(index, stats) for index, stats in enumerate(data.latencies)]
    return _section(
        "latency",
        "Answer latency per endpoint",
        _table(("endpoint", "answers", *names, "mean"), rows, numeric=range(1, 6 + len(names))),
        *charts,
        _note(
            "From the send of a request's final attempt to its answer (for a pool, per "
            "member). Percentiles are exact (nearest rank)."
        ),
    )


def _latency_chart(index: int, stats: LatencyStats) -> str:
    return histogram(
        chart_id=f"chart-latency-{index}",
        title=f"Latency of {stats.endpoint}",
        edges=stats.edges,
        counts=stats.counts,
        marks=[(name, float(ms)) for name, ms in stats.percentiles],
        unit="ms",
    )


def _costs(data: ReportData) -> str:
    lines = [
        Series(
            line.name,
            list(
                zip(
                    (at.timestamp() for at, _ in line.points),
                    accumulate(usd for _, usd in line.points),
                    strict=True,
                )
            ),
            kind="area",
        )
        for line in data.costs
    ]
    rows = [(line.model, line.lane, format_usd(line.usd)) for line in data.costs]
    lanes = ", ".join(data.lanes) or "-"
    return _section(
        "cost",
        "Cost over time",
        time_chart(
            chart_id="chart-cost",
            title="Cost so far, per model and lane (USD)",
            y_unit="$",
            series=lines,
            stacked=True,
        ),
        _table(("model", "lane", "cost"), rows, numeric={2}),
        _note(
            f"Total {format_usd(data.cost.usd)}; lanes used: {lanes}; saved against the "
            f"list price: {format_usd(data.cost.saved_usd)}. Placed when answered."
            + _repairs_text(data)
        ),
    )


def _repairs_text(data: ReportData) -> str:
    """What the repairs of structured answers cost, when the batch has any: their sends and
    cost (in the total and in the lines)."""
    status = data.status
    if not status.repair_sends:
        return ""
    return (
        f" Repairs of answers that did not match their schema: {status.repair_sends:,} sent, "
        f"{format_usd(status.repair_cost_usd)}, in the total."
    )


def _tokens(data: ReportData) -> str:
    usage = data.status.usage
    bars = [
        Bar("input", float(usage.input_tokens)),
        Bar("output", float(usage.output_tokens)),
        Bar("cache writes", float(usage.cache_creation_input_tokens)),
        Bar("cache reads", float(usage.cache_read_input_tokens)),
    ]
    rows = [
        (
            item.model,
            item.lane,
            f"{item.requests:,}",
            f"{item.input_tokens:,}",
            f"{item.output_tokens:,}",
            f"{item.cache_creation_input_tokens:,}",
            f"{item.cache_read_input_tokens:,}",
        )
        for item in data.status.usage_by_model
    ]
    return _section(
        "tokens",
        "Tokens by kind",
        bar_chart(chart_id="chart-tokens-by-kind", title="Tokens by kind", unit="", bars=bars),
        _table(
            ("model", "lane", "answers", "input", "output", "cache writes", "cache reads"),
            rows,
            numeric=range(2, 8),
        ),
    )


def _ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:,.0f} ms"


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
