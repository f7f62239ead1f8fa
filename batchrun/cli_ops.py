"""Operability commands and helpers: ``estimate``, ``status --watch``, prices from the config
file, and the export formats of ``results``.

Merged into the main ``batchrun`` app like ``cli_tools.py``; like ``cli.py``, this module may
read environment variables.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from batchrun.details import BatchStats
from batchrun.endpoints import Endpoints, load_endpoints
from batchrun.export import anthropic_lines
from batchrun.export_flat import flat_records, write_csv, write_flat_jsonl
from batchrun.limiter import RateLimits
from batchrun.planning import DEFAULT_OUTPUT_SHARE, plan_file
from batchrun.pricing import CostTotal, PriceTable, cost_of
from batchrun.reader import MAX_FILE_BYTES, MAX_REQUESTS, open_request_file
from batchrun.records import BatchSummary
from batchrun.reports import estimate_json, estimate_table, status_json, status_line, status_table
from batchrun.settings import find_config_file, load_settings
from batchrun.store.store import Store

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)

ops_app = typer.Typer()
T = TypeVar("T")


class ExportFormat(StrEnum):
    anthropic = "anthropic"
    flat = "flat"
    csv = "csv"


class ResultState(StrEnum):
    succeeded = "succeeded"
    errored = "errored"
    canceled = "canceled"
    expired = "expired"


def load_prices(config_file: Path | None) -> PriceTable:
    """The price table: built-in prices, with the config file's [prices."MODEL"] on top."""
    settings = load_settings(find_config_file(config_file, os.environ, Path.cwd()))
    return PriceTable.with_overrides(settings.prices)


@contextmanager
def _closed_after(items: Iterator[T]) -> Iterator[Iterator[T]]:
    """``items``, closed (a generator: its transaction ended) when the block exits."""
    try:
        yield items
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def write_results(
    store: Store,
    batch_id: str,
    stream: IO[str],
    *,
    export_format: ExportFormat,
    only: ResultState | None,
    prices: PriceTable | None,
) -> int:
    """Stream a batch's results to ``stream`` in ``export_format``; returns how many.

    The rows are read inside one database transaction; if writing fails midway, it is
    closed at once rather than whenever the generator is collected."""
    if export_format is ExportFormat.anthropic:
        with _closed_after(store.iter_results(batch_id)) as rows:
            wanted = rows if only is None else (row for row in rows if row.state == only.value)
            count = 0
            for line in anthropic_lines(wanted):
                stream.write(line + "\n")
                count += 1
            return count
    assert prices is not None
    with _closed_after(store.iter_result_details(batch_id, only and only.value)) as details:
        records = flat_records(details, prices)
        if export_format is ExportFormat.csv:
            return write_csv(records, stream)
        return write_flat_jsonl(records, stream)


def print_estimate(
    file: str,
    *,
    known: Endpoints,
    endpoint: str | None,
    prices: PriceTable,
    default_model: str | None,
    overrides: RateLimits,
    output_share: float,
    as_json: bool,
    max_requests: int = MAX_REQUESTS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> None:
    """Plan ``file`` for an endpoint and print the plan; nothing is stored or sent."""
    target = known.get(endpoint or known.default)
    source = "<stdin>" if file == "-" else file
    with open_request_file(file) as stream:
        plan = plan_file(
            stream,
            source=source,
            endpoint=target,
            prices=prices,
            overrides=overrides,
            output_share=output_share,
            default_model=default_model,
            max_requests=max_requests,
            max_file_bytes=max_file_bytes,
        )
    if as_json:
        sys.stdout.write(json.dumps(estimate_json(plan), indent=2) + "\n")
    else:
        stdout.print(estimate_table(plan))
        stderr.print("estimate only: nothing was stored or sent")


@ops_app.command()
def estimate(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="JSONL request file; - reads standard input.")],
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="The endpoint whose limits pace the batch. Default: as for submit.",
            show_default=False,
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
    rpm: Annotated[float | None, typer.Option(min=0.001, help="Requests/min, every model.")] = None,
    tpm: Annotated[float | None, typer.Option(min=1, help="Input+output tokens/min.")] = None,
    itpm: Annotated[float | None, typer.Option(min=1, help="Input tokens/min.")] = None,
    otpm: Annotated[float | None, typer.Option(min=1, help="Output tokens/min.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
) -> None:
    """Estimate a request file before spending: requests, input tokens, output tokens
    (expected and worst case), cost, and how long the endpoint's limits make it take.
    Nothing is stored or sent."""
    # The global --config, as the main callback received it.
    config_file: Path | None = ctx.find_root().params.get("config")
    print_estimate(
        file,
        known=load_endpoints(config_file, env=os.environ, cwd=Path.cwd()),
        endpoint=endpoint,
        prices=load_prices(config_file),
        default_model=model,
        overrides=RateLimits(rpm=rpm, tpm=tpm, itpm=itpm, otpm=otpm),
        output_share=output_share,
        as_json=as_json,
    )


def show_status(
    store: Store,
    batch_id: str,
    *,
    prices: PriceTable,
    as_json: bool,
    watch: bool,
    interval_s: float,
) -> None:
    """Print a batch's status once, or (``watch``) refresh it until the batch ends: a live
    table on a terminal, else one line (or one JSON object) per refresh, then the table."""

    def current() -> _Status:
        batch = store.get_batch(batch_id)
        stats = store.batch_stats(batch_id)
        return _Status(batch, stats, cost_of(stats.usage, prices))

    now = current()
    if not watch or now.ended:
        now.print(as_json=as_json, compact=False)
        return
    if stdout.is_terminal and not as_json:
        with Live(now.table(), console=stdout, auto_refresh=False) as view:
            while not now.ended:
                time.sleep(interval_s)
                now = current()
                view.update(now.table(), refresh=True)
        return
    while True:
        if as_json:
            now.print(as_json=True, compact=True)
        else:
            stderr.print(status_line(now.batch, now.cost), markup=False)
        if now.ended:
            break
        time.sleep(interval_s)
        now = current()
    if not as_json:
        now.print(as_json=False, compact=False)


@dataclass(frozen=True)
class _Status:
    batch: BatchSummary
    stats: BatchStats
    cost: CostTotal

    @property
    def ended(self) -> bool:
        return self.batch.processing_status == "ended"

    def table(self) -> Table:
        return status_table(self.batch, self.stats, self.cost)

    def print(self, *, as_json: bool, compact: bool) -> None:
        if not as_json:
            stdout.print(self.table())
            return
        data = status_json(self.batch, self.stats, self.cost)
        sys.stdout.write(json.dumps(data, indent=None if compact else 2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
