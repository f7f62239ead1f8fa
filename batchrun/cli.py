"""The ``batchrun`` command line; the only module that reads environment variables.

Exit codes (also in the README):
  0  done: every request of the run's batches finished, none errored
  1  an error the user can fix (bad file, unknown batch, missing key...), one line on stderr
  2  wrong command-line usage
  3  done, but some requests ended errored
  4  paused: the endpoint refused the credentials or the account (see `batchrun status`)
  130 interrupted (Ctrl-C); `batchrun run` continues where it stopped
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from batchrun import __version__
from batchrun.config import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    DispatchConfig,
    default_database_url,
)
from batchrun.display import (
    batch_table,
    batches_table,
    run_summary_lines,
    submit_summary_lines,
)
from batchrun.endpoints import DEFAULT_ENDPOINT, find_endpoint
from batchrun.errors import BatchrunError, BatchStateError
from batchrun.export import anthropic_lines, atomic_output
from batchrun.ingest import submit_requests
from batchrun.limiter import RateLimits
from batchrun.models import BatchObject
from batchrun.reader import MAX_FILE_BYTES, MAX_REQUESTS, open_request_file
from batchrun.runner import plan_run, run_batches
from batchrun.simulator import SimulatorConfig, serve
from batchrun.store.database import create_database_engine, current_revision, upgrade_database
from batchrun.store.store import Store

EXIT_ERRORED_RESULTS = 3
EXIT_PAUSED = 4
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
    help="Run batches of Anthropic Messages API requests with rate limits, durably.",
    rich_markup_mode="markdown",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(cls=_BatchrunGroup, help="Manage the job database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


class _State:
    database_url: str = ""


state = _State()


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def _open_store() -> Store:
    return Store.open(state.database_url)


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
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Log more (-vv for debug).")
    ] = 0,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        stdout.print(f"batchrun {__version__}")
        raise typer.Exit()
    state.database_url = db or default_database_url(_data_home())
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
        str, typer.Option(help="Where the requests go (anthropic, simulator).")
    ] = DEFAULT_ENDPOINT,
    model: Annotated[
        str | None, typer.Option(help="Model for lines whose params name none.")
    ] = None,
    max_requests: Annotated[
        int, typer.Option(min=1, help="Refuse files with more requests (Anthropic's limit).")
    ] = MAX_REQUESTS,
    max_file_bytes: Annotated[
        int, typer.Option(min=1, help="Refuse larger files (Anthropic's 256 MB limit).")
    ] = MAX_FILE_BYTES,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            help="Store the valid lines and record each invalid one as an errored result, "
            "instead of refusing the file."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
) -> None:
    """Validate a request file and store it as a batch; prints the batch id.

    Each line is {"custom_id": "...", "params": {...Messages API body...}}. If any line is
    invalid, every problem is listed (file:line) and nothing is stored, unless
    --skip-invalid is given.
    """
    find_endpoint(endpoint, os.environ)
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
                skip_invalid=skip_invalid,
                on_skipped=skipped.append,
            )
        batch = store.get_batch(batch_id)
    finally:
        store.close()
    if as_json:
        _print_json(BatchObject.from_summary(batch).model_dump(mode="json"))
    else:
        sys.stdout.write(batch_id + "\n")
    for line in submit_summary_lines(batch, skipped):
        stderr.print(line, markup=False)


@app.command()
def run(
    batch_ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="Batches to run; default: every batch with queued work.", show_default=False
        ),
    ] = None,
    max_concurrency: Annotated[
        int, typer.Option(min=1, help="Requests in flight at once.")
    ] = DEFAULT_MAX_CONCURRENCY,
    rpm: Annotated[
        float | None, typer.Option(min=0.001, help="Requests per minute per model.")
    ] = None,
    max_attempts: Annotated[
        int, typer.Option(min=1, help="Tries per request before it ends errored.")
    ] = DEFAULT_MAX_ATTEMPTS,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", min=1, help="Per-request timeout in seconds.")
    ] = DEFAULT_TIMEOUT_S,
) -> None:
    """Send the queued requests of batches and record every response; exits when done."""
    store = _open_store()
    try:
        plan = plan_run(store, batch_ids or [])
        for batch_id, why in plan.skipped.items():
            stderr.print(f"{batch_id}: {why}; nothing to run")
        if not plan.batches:
            if not batch_ids:
                stderr.print("no batch has queued requests")
            return
        dispatch = DispatchConfig(max_concurrency=max_concurrency, max_attempts=max_attempts)
        report = asyncio.run(
            run_batches(
                store,
                plan.batches,
                env=os.environ,
                dispatch=dispatch,
                limits=RateLimits(rpm=rpm),
                timeout_s=timeout_s,
            )
        )
        summaries = [store.get_batch(batch_id) for batch_id in plan.batches]
    finally:
        store.close()
    for line in run_summary_lines(summaries, report):
        stderr.print(line)
    if report.paused:
        raise typer.Exit(EXIT_PAUSED)
    if any(batch.counts.errored for batch in summaries):
        raise typer.Exit(EXIT_ERRORED_RESULTS)


@app.command()
def status(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
) -> None:
    """Show a batch: its state, request counts and tokens."""
    store = _open_store()
    try:
        batch = store.get_batch(batch_id)
    finally:
        store.close()
    if as_json:
        _print_json(BatchObject.from_summary(batch).model_dump(mode="json"))
    else:
        stdout.print(batch_table(batch))


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
) -> None:
    """Write the results in Anthropic's batch results format, one JSON line per request, in
    input order."""
    store = _open_store()
    try:
        batch = store.get_batch(batch_id)
        if batch.processing_status != "ended" and not partial:
            raise BatchStateError(
                f"batch {batch_id} has not ended ({batch.counts.processing:,} requests still "
                "processing); run it to the end, or pass --partial for the finished ones"
            )
        with atomic_output(output, sys.stdout) as stream:
            for line in anthropic_lines(store.iter_results(batch_id)):
                stream.write(line + "\n")
    finally:
        store.close()
    if output and output != "-":
        stderr.print(f"wrote {batch.counts.total - batch.counts.processing:,} results to {output}")


@app.command()
def simulate(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1; 0 picks a free one.")] = 8765,
    rpm: Annotated[int | None, typer.Option(help="Requests/min per model.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Input+output tokens/min per model.")] = None,
    itpm: Annotated[int | None, typer.Option(help="Input tokens/min per model.")] = None,
    otpm: Annotated[int | None, typer.Option(help="Output tokens/min per model.")] = None,
    burst_s: Annotated[
        float, typer.Option("--burst-s", help="Bucket size in seconds of refill.")
    ] = 60.0,
    latency_s: Annotated[float, typer.Option("--latency-s", help="Seconds per answer.")] = 0.0,
    latency_jitter_s: Annotated[
        float, typer.Option("--latency-jitter-s", help="Random extra seconds, up to this.")
    ] = 0.0,
    output_tokens: Annotated[int, typer.Option(help="Reply length in tokens.")] = 40,
    error_rate: Annotated[float, typer.Option(help="Share of answers that are 500s.")] = 0.0,
    overloaded_rate: Annotated[float, typer.Option(help="Share of 529 answers.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for latency and faults.")] = None,
    no_ratelimit_headers: Annotated[
        bool, typer.Option(help="Send only retry-after on 429, no anthropic-ratelimit-*.")
    ] = False,
) -> None:
    """Serve the built-in Messages API simulator on 127.0.0.1 (Ctrl-C stops it).

    Point batchrun at it with ANTHROPIC_BASE_URL=http://127.0.0.1:PORT and any
    ANTHROPIC_API_KEY. Prompts may force behaviour with [[sim:status=500:times=2]] and
    similar directives (see the README).
    """
    config = SimulatorConfig.from_options(
        rpm=rpm,
        tpm=tpm,
        itpm=itpm,
        otpm=otpm,
        burst_s=burst_s,
        latency_s=latency_s,
        latency_jitter_s=latency_jitter_s,
        output_tokens=output_tokens,
        error_500=error_rate,
        overloaded_529=overloaded_rate,
        seed=seed,
        send_ratelimit_headers=not no_ratelimit_headers,
    )

    def announce(actual_port: int) -> None:
        sys.stdout.write(f"http://127.0.0.1:{actual_port}\n")
        sys.stdout.flush()
        stderr.print(f"simulator listening on http://127.0.0.1:{actual_port}")

    serve(config, port=port, on_ready=announce)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database or migrate it to this batchrun's schema."""
    engine = create_database_engine(state.database_url)
    try:
        before, after = upgrade_database(engine)
    finally:
        engine.dispose()
    if before == after:
        stderr.print(f"database is up to date (schema {after})")
    else:
        stderr.print(f"database migrated from {before or 'empty'} to schema {after}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision."""
    engine = create_database_engine(state.database_url)
    try:
        stdout.print(current_revision(engine) or "empty")
    finally:
        engine.dispose()


def main() -> None:
    """Console entry point."""
    app()
