"""``batchrun report``: one batch as a self-contained HTML page with charts."""

from __future__ import annotations

import sys
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from batchrun.cli.batch_ids import batch_argument
from batchrun.cli.consoles import stderr


def report(
    ctx: typer.Context,
    batch_id: Annotated[str, batch_argument()],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Write to this file (atomically); - for stdout. Default: "
            "report-BATCH_ID.html in the current directory.",
            show_default=False,
        ),
    ] = None,
    open_page: Annotated[
        bool, typer.Option("--open", help="Open the page in the default browser.")
    ] = False,
) -> None:
    """Write a report of a batch as one HTML file that needs no network to view: the
    status summary, requests and tokens per minute against each rate limit (the binding
    one marked), 429s, retries and errors over time, errors by type with an example each,
    answer latency per endpoint (p50/p90/p99 and a histogram), cost over time per model
    and lane, and tokens by kind. Works on a running batch too (a snapshot).

    Examples: `batchrun report msgbatch_01` · `batchrun report msgbatch_01 -o run.html --open`
    """
    from batchrun.cli.context import client_of
    from batchrun.export.atomic import atomic_output

    page = client_of(ctx).report_html(batch_id)
    if output == "-":
        if open_page:
            raise typer.BadParameter("--open needs a file, not stdout", param_hint="--open")
        sys.stdout.write(page)
        return
    path = Path(output or f"report-{batch_id}.html")
    with atomic_output(path, what="the report", instead="-o - to write it to stdout") as stream:
        stream.write(page)
    stderr.print(f"wrote the report of {batch_id} to {path}", markup=False)
    if open_page and not webbrowser.open(path.resolve().as_uri()):
        stderr.print("no browser to open it with; open the file yourself", markup=False)


def add_commands(app: typer.Typer) -> None:
    """Register ``report``."""
    app.command()(report)
