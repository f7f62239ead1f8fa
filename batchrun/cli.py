"""The ``batchrun`` command line; the only module that reads environment variables.

Exit codes (also in the README):
  0  done: every request of the run's batches finished, none errored
  1  an error the user can fix (bad file, unknown batch, missing key...), one line on stderr
  2  wrong command-line usage
  3  done, but some requests ended errored
  4  paused: the endpoint refused the credentials or the account, or the batch's budget
     (--max-cost) is spent (see `batchrun status`)
  5  `run` stopped at its time limit (--max-runtime) with work left; the next run continues
  6  another `batchrun run` is using this SQLite database (pass --wait to wait for it)
  130 interrupted (Ctrl-C); `batchrun run` continues where it stopped
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from batchrun import __version__
from batchrun.cli_ops import (
    ExportFormat,
    ResultState,
    load_prices,
    ops_app,
    print_estimate,
    show_status,
    write_results,
)
from batchrun.cli_run import run
from batchrun.cli_tools import database_url, tools_app
from batchrun.display import batches_table, submit_summary_lines
from batchrun.durations import parse_duration_s
from batchrun.endpoints import Endpoints, load_endpoints
from batchrun.errors import BatchrunError, BatchStateError
from batchrun.export import atomic_output
from batchrun.ingest import submit_requests
from batchrun.limiter import RateLimits
from batchrun.models import BatchObject
from batchrun.planning import DEFAULT_OUTPUT_SHARE
from batchrun.reader import MAX_FILE_BYTES, MAX_REQUESTS, open_request_file
from batchrun.store.store import Store

EXIT_INTERRUPTED = 130

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


class _BatchrunGroup(TyperGroup):
    """Turns user errors into one line on stderr and a non-zero exit; bugs keep their
    traceback."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except BatchrunError as exc:
            stderr.print(f"error: {exc.message}", markup=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stderr.print("interrupted; `batchrun run` continues where this stopped")
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=_BatchrunGroup,
    help="Run batches of Anthropic Messages API requests with rate limits, durably.\n\n"
    "Endpoints (Anthropic, Langdock, AIMLAPI, the simulator, and any gateway you define) are "
    "configured in one TOML file, the first found of: --config FILE, $BATCHRUN_CONFIG, "
    "./batchrun.toml, ~/.config/batchrun/config.toml. `batchrun endpoints` lists them.",
    rich_markup_mode="markdown",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# `endpoints`, `simulate` and `db`, which touch no batch.
app.add_typer(tools_app)
# `estimate`, which plans a file before anything is stored or sent.
app.add_typer(ops_app)


class _State:
    database_url: str = ""
    config_file: Path | None = None


state = _State()


def _open_store() -> Store:
    store = Store.open(state.database_url)
    # Batches expire on their own, whether or not a worker runs: every command sees it.
    store.expire_due(_now())
    return store


def _endpoints() -> Endpoints:
    return load_endpoints(state.config_file, env=os.environ, cwd=Path.cwd())


def _now() -> datetime:
    return datetime.now(UTC)


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@app.callback()
def main_options(
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="BATCHRUN_DATABASE_URL",
            help="Database URL (sqlite:///file.db or postgresql+psycopg://...). "
            "Default: $XDG_DATA_HOME/batchrun/batchrun.db (~/.local/share/batchrun/batchrun.db).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Config file (TOML) defining endpoints and prices. Default: the first found of "
            "$BATCHRUN_CONFIG, ./batchrun.toml, ~/.config/batchrun/config.toml "
            "($XDG_CONFIG_HOME/batchrun/config.toml).",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Log more (-vv for debug).")
    ] = 0,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        stdout.print(f"batchrun {__version__}")
        raise typer.Exit()
    state.database_url = database_url(db)
    state.config_file = config
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO; that is our job, at our level of detail.
    logging.getLogger("httpx").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


@app.command()
def submit(
    file: Annotated[str, typer.Argument(help="JSONL request file; - reads standard input.")],
    name: Annotated[str | None, typer.Option(help="A name to recognise the batch by.")] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="Where the requests go; `batchrun endpoints` lists them. Default: "
            "$BATCHRUN_ENDPOINT, else default_endpoint in the config file, else anthropic.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model for lines whose params name none.")
    ] = None,
    max_requests: Annotated[
        int, typer.Option(min=1, help="Refuse files with more requests (Anthropic's limit).")
    ] = MAX_REQUESTS,
    max_file_bytes: Annotated[
        int, typer.Option(min=1, help="Refuse larger files (Anthropic's 256 MB limit).")
    ] = MAX_FILE_BYTES,
    expires_in: Annotated[
        str,
        typer.Option(
            help="Requests not sent by then expire (e.g. 90m, 24h, 3d), as with Anthropic's "
            "batches."
        ),
    ] = "24h",
    skip_invalid: Annotated[
        bool,
        typer.Option(
            help="Store the valid lines and record each invalid one as an errored result, "
            "instead of refusing the file."
        ),
    ] = False,
    max_cost: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Budget in USD, stored with the batch: no request is sent that could take "
            "its cost past it (the batch pauses; raise it with run --max-cost).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Only estimate requests, tokens, cost and duration (as `batchrun estimate`); "
            "store nothing.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
) -> None:
    """Validate a request file and store it as a batch; prints the batch id.

    Each line is {"custom_id": "...", "params": {...Messages API body...}}. If any line is
    invalid, every problem is listed (file:line) and nothing is stored, unless
    --skip-invalid is given.
    """
    expires_in_s = parse_duration_s(expires_in, what="--expires-in")
    known = _endpoints()
    if dry_run:
        print_estimate(
            file,
            known=known,
            endpoint=endpoint,
            prices=load_prices(state.config_file),
            default_model=model,
            overrides=RateLimits(),
            output_share=DEFAULT_OUTPUT_SHARE,
            as_json=as_json,
            max_requests=max_requests,
            max_file_bytes=max_file_bytes,
        )
        return
    endpoint = known.get(endpoint or known.default).name
    source = "<stdin>" if file == "-" else file
    skipped: list[str] = []
    store = _open_store()
    try:
        with open_request_file(file) as stream:
            batch_id = submit_requests(
                store,
                stream,
                source=source,
                endpoint=endpoint,
                now=_now(),
                name=name,
                default_model=model,
                max_requests=max_requests,
                max_file_bytes=max_file_bytes,
                expires_in_s=expires_in_s,
                skip_invalid=skip_invalid,
                on_skipped=skipped.append,
            )
        if max_cost is not None:
            store.set_max_cost(batch_id, max_cost)
        batch = store.get_batch(batch_id)
    finally:
        store.close()
    if as_json:
        _print_json(BatchObject.from_summary(batch).model_dump(mode="json"))
    else:
        sys.stdout.write(batch_id + "\n")
    for line in submit_summary_lines(batch, skipped):
        stderr.print(line, markup=False)


# `run` lives in cli_run.py with its many flags; registered here to keep the command order.
app.command()(run)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def resume(
    ctx: typer.Context,
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    retry_errored: Annotated[
        bool, typer.Option(help="Send the errored requests again too (attempts are kept).")
    ] = False,
    expires_in: Annotated[
        str | None,
        typer.Option(help="A new expiry from now (e.g. 24h); needed to resume an expired batch."),
    ] = None,
) -> None:
    """Put back in the queue what a cancel (or, with the options, an error or the expiry)
    left unsent, then run the batch. Any `run` option may follow, e.g. `--rpm 50`.

    An interrupted or paused batch needs no resume: `batchrun run BATCH_ID` continues it.
    """
    states = ["canceled", *(["errored"] if retry_errored else [])]
    new_expiry = None
    if expires_in is not None:
        new_expiry = _now() + timedelta(seconds=parse_duration_s(expires_in, what="--expires-in"))
        states.append("expired")
    store = _open_store()
    try:
        batch = store.get_batch(batch_id)
        if new_expiry is None and batch.expires_at <= _now():
            raise BatchStateError(
                f"batch {batch_id} expired at {batch.expires_at:%Y-%m-%d %H:%M UTC}; pass "
                "--expires-in 24h (or another duration) to give it more time"
            )
        count = store.requeue(batch_id, states=states, now=_now(), expires_at=new_expiry)
    finally:
        store.close()
    stderr.print(f"{batch_id}: {count:,} requests back in the queue")
    command = ctx.parent.command if ctx.parent else None
    run_command = command.get_command(ctx, "run") if isinstance(command, TyperGroup) else None
    assert run_command is not None
    with run_command.make_context("run", [batch_id, *ctx.args], parent=ctx.parent) as run_ctx:
        run_command.invoke(run_ctx)


@app.command()
def status(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until the batch ends (Ctrl-C stops).")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between refreshes.")
    ] = 2.0,
) -> None:
    """Show a batch: state, request counts, tokens, cost, throughput, when it started and
    ended, and its most frequent errors."""
    prices = load_prices(state.config_file)
    store = _open_store()
    try:
        show_status(
            store, batch_id, prices=prices, as_json=as_json, watch=watch, interval_s=interval
        )
    finally:
        store.close()


@app.command("list")
def list_batches(
    as_json: Annotated[bool, typer.Option("--json", help="Print batch objects.")] = False,
) -> None:
    """List the batches, newest first."""
    store = _open_store()
    try:
        batches = store.list_batches()
    finally:
        store.close()
    if as_json:
        _print_json(
            {"data": [BatchObject.from_summary(b).model_dump(mode="json") for b in batches]}
        )
    elif batches:
        stdout.print(batches_table(batches))
    else:
        stderr.print("no batches yet; `batchrun submit FILE.jsonl` stores one")


@app.command()
def cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
) -> None:
    """Cancel a batch: queued requests are canceled at once; a running worker stops sending
    it within a second, and requests already in flight are still recorded."""
    store = _open_store()
    try:
        store.cancel_batch(batch_id, _now())
        batch = store.get_batch(batch_id)
    finally:
        store.close()
    if as_json:
        _print_json(BatchObject.from_summary(batch).model_dump(mode="json"))
    else:
        stderr.print(f"{batch_id}: {batch.processing_status}")


@app.command()
def results(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write to this file (atomically).")
    ] = None,
    partial: Annotated[
        bool, typer.Option(help="Export the finished requests of a batch that has not ended.")
    ] = False,
    export_format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="anthropic: Anthropic's results lines; flat: one flat JSON object per "
            "request (text, tokens, cost, timings); csv: the flat columns as CSV.",
        ),
    ] = ExportFormat.anthropic,
    only: Annotated[
        ResultState | None,
        typer.Option(help="Only the requests that ended this way.", show_default=False),
    ] = None,
) -> None:
    """Write the results of a batch in input order: Anthropic's batch results format (one
    JSON line per request), or flat records (JSON lines or CSV) for analytics."""
    prices = None if export_format is ExportFormat.anthropic else load_prices(state.config_file)
    store = _open_store()
    try:
        batch = store.get_batch(batch_id)
        if batch.processing_status != "ended" and not partial:
            raise BatchStateError(
                f"batch {batch_id} has not ended ({batch.counts.processing:,} requests still "
                "processing); run it to the end, or pass --partial for the finished ones"
            )
        with atomic_output(output, sys.stdout) as stream:
            count = write_results(
                store, batch_id, stream, export_format=export_format, only=only, prices=prices
            )
    finally:
        store.close()
    if output and output != "-":
        stderr.print(f"wrote {count:,} results to {output}")


def main() -> None:
    """Console entry point."""
    app()
