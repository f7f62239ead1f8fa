"""``batchrun estimate`` (and ``submit --dry-run``): plan a request file before spending.
The plan itself is made by :mod:`batchrun.ops.planning`; this module shows it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from batchrun.cli.batch_ids import complete_endpoints
from batchrun.cli.consoles import print_json, stderr, stdout
from batchrun.cli.options import duration_option, with_limit_options
from batchrun.cli.text import duration_text, plural
from batchrun.config.prices import format_usd
from batchrun.limits.families import ALL_MODELS
from batchrun.ops.planning import DEFAULT_OUTPUT_SHARE, FilePlan, ModelPlan, plan_json
from batchrun.records import CacheTtl, Lane


def estimate(
    ctx: typer.Context,
    file: Annotated[
        str,
        typer.Argument(
            help="JSONL request file (with --template: a table); - reads standard input."
        ),
    ],
    limits: dict[str, float],
    endpoint_limits: dict[str, float],
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="The endpoint whose limits pace the batch. Default: as for submit.",
            show_default=False,
            autocompletion=complete_endpoints,
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model for lines whose params name none.")
    ] = None,
    output_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of max_tokens a reply is expected to use (the worst case uses all).",
        ),
    ] = DEFAULT_OUTPUT_SHARE,
    lane: Annotated[
        str,
        typer.Option(
            help="The lane you mean to use (realtime, batch or auto): marked in the output; "
            "both lanes are shown when the endpoint has a batch API.",
        ),
    ] = "realtime",
    expires_in: Annotated[
        str, typer.Option(help="With --lane auto: the batch's deadline, as for submit.")
    ] = "24h",
    skip_invalid: Annotated[
        bool,
        typer.Option(
            help="Plan the valid lines and leave the invalid ones out (as submit "
            "--skip-invalid records them: errored, never sent), saying how many and naming "
            "the first problems, instead of refusing the file."
        ),
    ] = False,
    template: Annotated[
        str | None,
        typer.Option(
            help="FILE is a table (CSV/TSV, Parquet, JSON lines of objects); this TOML template "
            "turns each row into a request, as for submit.",
            show_default=False,
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(
            help="With --template: a JSON Schema file the answers must match (replaces the "
            "template's [output]).",
            show_default=False,
        ),
    ] = None,
    table_format: Annotated[
        str | None,
        typer.Option(
            help="With --template: csv, tsv, parquet or jsonl (default: from the extension, "
            "else from the first bytes).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
) -> None:
    """Estimate a request file before spending: requests, input tokens, output tokens
    (expected and worst case), cost, and how long the endpoint's limits make it take; with a
    batch API, the batch lane's cost, saving and typical time.
    Nothing is stored or sent. A limit flag (--rpm ...) replaces the endpoint's limit for
    every model; --endpoint-rpm ... its limit across all its models together. An invalid
    line refuses the file (every problem listed), unless --skip-invalid is given.

    With --template, FILE is a table and each row is rendered as submit would render it
    (images read, the answer schema counted); a row's problems are named FILE:row N.

    Examples: `batchrun estimate requests.jsonl --endpoint langdock-eu --output-share 0.5`;
    `batchrun estimate tickets.csv --template triage.toml`
    """
    from batchrun.cli.context import client_of

    table_only(template, schema=schema, table_format=table_format)
    client = client_of(ctx)
    expires_in_s = duration_option(expires_in, "--expires-in")
    if template is not None:
        plan = client.estimate_table(
            file,
            template=template,
            output=schema,
            table_format=table_format,
            endpoint=endpoint,
            model=model,
            output_share=output_share,
            limits=limits,
            endpoint_limits=endpoint_limits,
            lane=lane,
            expires_in_s=expires_in_s,
            skip_invalid=skip_invalid,
        )
    else:
        plan = client.estimate(
            file,
            endpoint=endpoint,
            model=model,
            output_share=output_share,
            limits=limits,
            endpoint_limits=endpoint_limits,
            lane=lane,
            expires_in_s=expires_in_s,
            skip_invalid=skip_invalid,
        )
    print_estimate(plan, as_json=as_json)


def table_only(template: str | None, *, schema: str | None, table_format: str | None) -> None:
    """Refuse --schema and --table-format without --template (UsageError)."""
    from batchrun.errors import UsageError

    if template is None and (schema is not None or table_format is not None):
        given = "--schema" if schema is not None else "--table-format"
        raise UsageError(f"{given} needs --template (it describes a table's requests)")


def print_estimate(plan: FilePlan, *, as_json: bool) -> None:
    """The plan as a table (and a note that nothing was stored or sent), or as JSON; the
    invalid lines it left out (``--skip-invalid``) first, on stderr, as ``submit`` warns."""
    for problem in plan.invalid_problems:
        stderr.print(f"warning: {problem}")
    if plan.invalid_lines:
        stderr.print(
            f"skipped {_count(plan.invalid_lines, 'invalid line')}: the estimate covers "
            f"{_count(plan.requests, 'valid request')}"
        )
    if as_json:
        print_json(plan_json(plan))
    else:
        stdout.print(estimate_table(plan))
        stderr.print("estimate only: nothing was stored or sent")


def _count(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def add_commands(app: typer.Typer) -> None:
    """Register ``estimate``."""
    app.command()(with_limit_options(estimate))


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
    if plan.endpoint_limits:
        figures = ", ".join(
            f"{name} {amount:,g}/min" for name, amount in plan.endpoint_limits.items()
        )
        totals.add_row("endpoint limits", f"{figures} across all models")
    totals.add_row("requests", f"{plan.requests:,}")
    if plan.invalid_lines:
        totals.add_row(
            "invalid lines",
            f"{plan.invalid_lines:,} skipped (not planned; submit --skip-invalid records "
            "them as errored results, never sent)",
        )
    totals.add_row("input tokens", f"{plan.input_tokens:,} (estimated)")
    totals.add_row(
        "output tokens",
        f"{plan.expected_output_tokens:,} expected ({plan.output_share:.0%} of max_tokens), "
        f"{plan.max_output_tokens:,} at most",
    )
    totals.add_row(
        "cost",
        f"{_cost_text(expected, missing)} expected, {_cost_text(worst, missing)} at most",
    )
    if missing:
        # Said once, here; the costs above and below say only "unknown".
        totals.add_row(
            "no price",
            f"{', '.join(sorted(missing))}: add "
            + (f'[prices."{next(iter(missing))}"]' if len(missing) == 1 else '[prices."MODEL"]')
            + " to the config file",
        )
    for label, is_worst in (("duration", False), ("at most", True)):
        minutes, slowest = plan.duration(worst=is_worst)
        if minutes is None or slowest is None:
            text = (
                "unknown: a model has no limit (nor the endpoint across its models), so "
                "concurrency and latency set the pace"
            )
        else:
            _, binding = _model_duration(slowest, worst=is_worst)
            scope = (
                "across all models of the endpoint"
                if slowest.model == ALL_MODELS
                else f"for {slowest.model}"
            )
            text = f"{duration_text(minutes * 60)}, bound by {binding} {scope}"
        totals.add_row(label, text)
    for label, text in _lane_rows(plan, expected, worst, missing):
        totals.add_row(label, text)
    lines = [Text("per model:", style="bold")]
    for m in plan.models:
        how_long, binding = _model_duration(m, worst=False)
        lines.append(
            Text(
                f"  {m.model}: {plural(m.requests, 'request')}, {m.input_tokens:,} input tokens, "
                f"{m.expected_output_tokens:,} output tokens (max {m.max_output_tokens:,}), "
                f"{format_usd(m.cost_usd(m.expected_output_tokens))} "
                f"(max {format_usd(m.cost_usd(m.max_output_tokens))}), {how_long} ({binding})"
            )
        )
    return Group(totals, Text(""), *lines)


def _cost_text(usd: float, unpriced: dict[str, int]) -> str:
    """A cost whose unpriced part is "unknown" (the models without a price are named once,
    on a row of their own)."""
    if not unpriced:
        return format_usd(usd)
    return f"{format_usd(usd)} + unknown" if usd > 0 else "unknown"


def _lane_rows(
    plan: FilePlan, expected: float, worst: float, missing: dict[str, int]
) -> list[tuple[str, str]]:
    """The batch lane's cost, saving and time, and the lane chosen, when there is one."""
    api = plan.batch_api
    if api is None:
        return []
    mark = {plan.chosen: " (chosen)"}
    saved = _cost_text(expected * (1 - api.discount), missing)
    auto = " by --lane auto" if plan.lane == Lane.AUTO else ""
    rows = [
        (
            "batch lane",
            f"{_cost_text(expected * api.discount, missing)} expected, "
            f"{_cost_text(worst * api.discount, missing)} at most "
            f"({api.discount:.0%} of the price; saves {saved}); typically "
            f"{duration_text(api.typical_s)}, at most 24h{mark.get(Lane.BATCH, '')}",
        ),
    ]
    groups, requests, prefix_tokens = plan.cache_groups()
    by_policy = plan.cache_ttl_costs_usd(worst=False)
    if groups:
        text = (
            f"{plural(groups, 'prompt-cache group')} ({requests:,} requests, "
            f"{prefix_tokens:,} prefix tokens)"
        )
        if by_policy is not None:
            text += (
                f": batch lane {format_usd(by_policy[CacheTtl.AUTO])} expected with "
                f"--cache-ttl auto (1-hour TTL, the default), "
                f"{format_usd(by_policy[CacheTtl.KEEP])} with keep (a cold batch writes "
                "every prefix)"
            )
        rows.append(("cache groups", text))
    rows.append(("lane", f"{plan.chosen}{auto}"))
    return rows
