"""``batchrun run``: its flags, and the lock that keeps one run per SQLite database.

The work itself is in ``run_command.py``; this module turns flags into
:class:`~batchrun.run_command.RunOptions`. Registered on the main app by ``cli.py``; like
it, this module may read environment variables.
"""

from __future__ import annotations

import os
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from batchrun.cli_ops import load_prices
from batchrun.cli_tools import database_url
from batchrun.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT_S
from batchrun.durations import parse_duration_s
from batchrun.endpoints import load_endpoints
from batchrun.errors import ConfigError
from batchrun.limiter import DEFAULT_BURST_S, LimiterSettings, RateLimits
from batchrun.progress_view import DEFAULT_LOG_INTERVAL_S
from batchrun.run_command import EXIT_LOCKED, RunCommand, RunOptions
from batchrun.runlock import RunLockedError, run_lock
from batchrun.runner import dispatch_config
from batchrun.store.store import Store

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class OutputReservationChoice(StrEnum):
    learned = "learned"
    max_tokens = "max_tokens"


def _duration(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration_s(value, what=flag)
    except ConfigError as exc:
        # BadParameter names the flag itself.
        raise typer.BadParameter(exc.message.removeprefix(f"{flag}: "), param_hint=flag) from None


def run(
    ctx: typer.Context,
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
    max_cost: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Budget in USD per batch, stored with the batches this run sends: no request "
            "is sent that could take a batch's cost past it; the batch pauses (exit 4).",
            show_default=False,
        ),
    ] = None,
    max_runtime: Annotated[
        str | None,
        typer.Option(
            help="Stop claiming after this long (55m, 1h30m, 90s), let the requests in flight "
            "finish, and exit 5 if work is left; the next run continues it.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="On SQLite, wait for another `batchrun run` on the same database to finish "
            "instead of exiting 6.",
        ),
    ] = False,
    forever: Annotated[
        bool,
        typer.Option(
            "--forever",
            help="Keep running: look for newly submitted batches every --poll-interval until "
            "Ctrl-C (or --max-runtime).",
        ),
    ] = False,
    share: Annotated[
        bool,
        typer.Option(
            "--share",
            help="On SQLite, work alongside other `batchrun run` processes on the same "
            "database (several workers on one machine) instead of exiting 6 or waiting. "
            "On Postgres workers always share.",
        ),
    ] = False,
    poll_interval: Annotated[
        str, typer.Option(help="With --forever: how often to look for new work.")
    ] = "30s",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress and no summary; errors only.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one summary object on stdout at the end.")
    ] = False,
    progress_interval: Annotated[
        str,
        typer.Option(help="Without a terminal: how often to write a progress line."),
    ] = f"{DEFAULT_LOG_INTERVAL_S:g}s",
) -> None:
    """Send the queued requests of batches and record every response; exits when done.

    Each batch goes to the endpoint stored with it (`batchrun status` shows it), unless
    --endpoint moves it. On a terminal a live view shows progress, throughput against each
    limit, the ETA and the cost; otherwise a progress line is logged every
    --progress-interval. Exit codes: 0 done, 3 some results errored, 4 a batch paused,
    5 stopped at --max-runtime, 6 another run holds the SQLite database.
    """
    if endpoint is not None and not batch_ids:
        raise typer.BadParameter("name the batches to move", param_hint="--endpoint")
    if forever and batch_ids:
        raise typer.BadParameter(
            "--forever runs every batch with queued work; it takes no batch ids",
            param_hint="--forever",
        )
    options = RunOptions(
        batch_ids=tuple(batch_ids or ()),
        max_cost_usd=max_cost,
        max_runtime_s=_duration(max_runtime, "--max-runtime"),
        forever=forever,
        poll_interval_s=_duration(poll_interval, "--poll-interval") or 0.0,
        quiet=quiet,
        as_json=as_json,
        live=stderr.is_terminal and not quiet,
        progress_interval_s=max(_duration(progress_interval, "--progress-interval") or 0, 0.1),
        overrides=RateLimits(rpm=rpm, tpm=tpm, itpm=itpm, otpm=otpm),
        limiter_settings=LimiterSettings(
            burst_s=burst_s, output_reservation=output_reservation.value
        ),
        timeout_s=timeout_s,
    )
    # The global options, as the main callback received them.
    root = ctx.find_root().params
    config_file: Path | None = root.get("config")
    db_url = database_url(root.get("db"))
    known = load_endpoints(config_file, env=os.environ, cwd=Path.cwd())
    if endpoint is not None:
        options = replace(options, target=known.get(endpoint))
    prices = load_prices(config_file)
    try:
        with run_lock(db_url, wait=wait, on_wait=stderr.print, share=share):
            store = Store.open(db_url)
            try:
                code = RunCommand(
                    store,
                    known=known,
                    prices=prices,
                    env=os.environ,
                    options=options,
                    console=stderr,
                    dispatch_for=lambda endpoints: dispatch_config(
                        endpoints,
                        max_concurrency=max_concurrency,
                        max_attempts=max_attempts,
                        count_tokens=count_tokens,
                    ),
                ).execute()
            finally:
                store.close()
    except RunLockedError as exc:
        stderr.print(f"error: {exc.message}", markup=False)
        raise typer.Exit(EXIT_LOCKED) from None
    if code:
        raise typer.Exit(code)
