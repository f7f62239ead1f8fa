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
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from batchrun import __version__
from batchrun.cli_tools import database_url, tools_app
from batchrun.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT_S
from batchrun.display import (
    batch_table,
    batches_table,
    run_summary_lines,
    submit_summary_lines,
)
from batchrun.durations import parse_duration_s
from batchrun.endpoints import Endpoints, auth_headers, load_endpoints
from batchrun.errors import BatchrunError, BatchStateError
from batchrun.export import anthropic_lines, atomic_output
from batchrun.ingest import submit_requests
from batchrun.limiter import DEFAULT_BURST_S, LimiterSettings, RateLimits
from batchrun.models import BatchObject
from batchrun.reader import MAX_FILE_BYTES, MAX_REQUESTS, open_request_file
from batchrun.runner import (
    dispatch_config,
    move_batches,
    plan_run,
    run_batches,
    run_endpoints,
)
from batchrun.store.store import Store


class OutputReservationChoice(StrEnum):
    learned = "learned"
    max_tokens = "max_tokens"


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
            help="Config file (TOML) defining endpoints. Default: the first found of "
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
) -> None:
    """Validate a request file and store it as a batch; prints the batch id.

    Each line is {"custom_id": "...", "params": {...Messages API body...}}. If any line is
    invalid, every problem is listed (file:line) and nothing is stored, unless
    --skip-invalid is given.
    """
    expires_in_s = parse_duration_s(expires_in, what="--expires-in")
    known = _endpoints()
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
        float | None,
        typer.Option(
            min=0.001,
            help="Requests per minute for each model of the run, replacing the rpm limits "
            "of the endpoints.",
        ),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option(min=1, help="Input + output tokens per minute, for every model."),
    ] = None,
    itpm: Annotated[
        float | None, typer.Option(min=1, help="Input tokens per minute, for every model.")
    ] = None,
    otpm: Annotated[
        float | None, typer.Option(min=1, help="Output tokens per minute, for every model.")
    ] = None,
    output_reservation: Annotated[
        OutputReservationChoice,
        typer.Option(
            help="What the limiter reserves for output before a reply: a learned estimate "
            "(servers that count actual output, as Anthropic does now) or max_tokens "
            "(servers that count max_tokens up front)."
        ),
    ] = OutputReservationChoice.learned,
    count_tokens: Annotated[
        bool,
        typer.Option(
            help="Count each request's input tokens with the endpoint's "
            "/v1/messages/count_tokens instead of estimating them."
        ),
    ] = False,
    burst_s: Annotated[
        float,
        typer.Option("--burst-s", min=0.01, help="Most sent in one burst, in seconds of a limit."),
    ] = DEFAULT_BURST_S,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Tries per request before it ends errored. Default: the endpoint's "
            f"max_attempts in the config file, else {DEFAULT_MAX_ATTEMPTS}.",
            show_default=False,
        ),
    ] = None,
    timeout_s: Annotated[
        float | None,
        typer.Option(
            "--timeout-s",
            min=1,
            help="Per-request timeout in seconds. Default: the endpoint's timeout_s in the "
            f"config file, else {DEFAULT_TIMEOUT_S:g}.",
            show_default=False,
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="Move the batches' remaining requests to this endpoint, for this run and "
            "later ones (needs batch ids).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Send the queued requests of batches and record every response; exits when done.

    Each batch goes to the endpoint stored with it (`batchrun status` shows it), unless
    --endpoint moves it.
    """
    if endpoint is not None and not batch_ids:
        raise typer.BadParameter("name the batches to move", param_hint="--endpoint")
    known = _endpoints()
    target = known.get(endpoint) if endpoint is not None else None
    store = _open_store()
    try:
        plan = plan_run(store, batch_ids or [])
        if target is not None and plan.batches:
            # Checked before anything is moved, so a missing key leaves the batches as they were.
            auth_headers(target, os.environ)
            plan = move_batches(store, plan, target.name)
        for batch_id, why in plan.skipped.items():
            stderr.print(f"{batch_id}: {why}; nothing to run")
        if not plan.batches:
            if not batch_ids:
                stderr.print("no batch has queued requests")
            return
        endpoints = run_endpoints(plan, known)
        dispatch = dispatch_config(
            endpoints,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            count_tokens=count_tokens,
        )
        report = asyncio.run(
            run_batches(
                store,
                plan.batches,
                endpoints=endpoints,
                env=os.environ,
                dispatch=dispatch,
                overrides=RateLimits(rpm=rpm, tpm=tpm, itpm=itpm, otpm=otpm),
                limiter_settings=LimiterSettings(
                    burst_s=burst_s, output_reservation=output_reservation.value
                ),
                timeout_s=timeout_s,
            )
        )
        summaries = [store.get_batch(batch_id) for batch_id in plan.batches]
    finally:
        store.close()
    for line in run_summary_lines(summaries, report):
        stderr.print(line)
    if report.interrupted:
        stderr.print(
            f"{report.interrupted}: requests in flight were recorded"
            + (f", {report.released} returned to the queue" if report.released else "")
            + "; `batchrun run` continues where this stopped"
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.paused:
        raise typer.Exit(EXIT_PAUSED)
    if any(batch.counts.errored for batch in summaries):
        raise typer.Exit(EXIT_ERRORED_RESULTS)


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


def main() -> None:
    """Console entry point."""
    app()
