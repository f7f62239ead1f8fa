"""``batchrun run`` and ``batchrun resume``: their flags, turned into one ``Client.run``."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from batchrun.cli.batch_ids import batch_argument, complete_endpoints, resolve_batch_ids
from batchrun.cli.consoles import stderr
from batchrun.cli.options import duration_option, flag_error, with_limit_options
from batchrun.cli.text import plural
from batchrun.dispatch.settings import DEFAULT_MAX_ATTEMPTS
from batchrun.errors import ExitCode
from batchrun.limits.buckets import DEFAULT_BURST_S
from batchrun.transport.endpoints import DEFAULT_TIMEOUT_S

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchrun.client import Client
    from batchrun.ops.run_types import ProcessCounters
    from batchrun.ops.session import RunEvent, RunSession

# How often a plain progress line is written without a terminal, and the live view redrawn.
_DEFAULT_LOG_INTERVAL = "30s"
_LIVE_REFRESH_S = 0.5


class OutputReservationChoice(StrEnum):
    learned = "learned"
    max_tokens = "max_tokens"


class _RunMetrics:
    """``--metrics-port``: the run's metrics server (listening from creation, so a taken
    port stops the command before anything is sent), fed the counters of the run's session."""

    def __init__(self, client: Client, *, host: str, port: int, quiet: bool) -> None:
        from batchrun.server.run_metrics import start_run_metrics

        self._session: RunSession | None = None
        self._server = start_run_metrics(client, host=host, port=port, counters=self._counters)
        # Port 0 is said even with --quiet: there is no other way to learn it.
        if not quiet or port == 0:
            stderr.print(f"batchrun run: metrics at {self._server.url}", markup=False)

    def watch(self, session: RunSession) -> None:
        """Count the 429s of this session (the run's)."""
        self._session = session

    def _counters(self) -> ProcessCounters:
        from batchrun.ops.run_types import ProcessCounters

        session = self._session
        return session.counters() if session is not None else ProcessCounters()

    def close(self) -> None:
        self._server.close()


# The flag of each Client.run argument whose name is not the flag's (see check_run_arguments).
_FLAGS = {"notify_url": "--notify", "metrics_port": "--metrics-port"}


def run(
    ctx: typer.Context,
    limits: dict[str, float],
    endpoint_limits: dict[str, float],
    batch_ids: Annotated[
        list[str] | None,
        batch_argument(
            "Batches to run (ids, unique prefixes, names or `last`); default: every batch "
            "with queued work.",
            resolve=False,
        ),
    ] = None,
    max_concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests in flight at most. Default: worked out from each endpoint's limits "
            "and latency (rate x latency), at least 256 and at most 4,096.",
            show_default=False,
        ),
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
    slow_start: Annotated[
        bool,
        typer.Option(
            "--slow-start/--no-slow-start",
            help="With no limit configured, announced or learned for an endpoint × model, "
            "start at 60 requests/min and grow while answers succeed; --no-slow-start sends "
            "at once, unpaced until the first 429 (a server known to take everything).",
        ),
    ] = True,
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
            autocompletion=complete_endpoints,
        ),
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Budget in USD per batch, stored with the batches this run sends: no request "
            "is sent that could take a batch's cost past it; the batch pauses (exit 4). "
            "Refused (exit 2) for a batch with a model that has no price, unless "
            "--hold-unpriced.",
            show_default=False,
        ),
    ] = None,
    hold_unpriced: Annotated[
        bool,
        typer.Option(
            "--hold-unpriced",
            help="With --max-cost: hold the requests of models that have no price (queued, "
            "unsent, until the config file prices them or the batch is canceled) and run "
            "the others within the budget.",
        ),
    ] = False,
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
    lane: Annotated[
        str | None,
        typer.Option(
            help="Send the batches' queued requests in this lane from now on: realtime, "
            "batch (the endpoint's batch API, at its discount) or auto. Default: each "
            "batch's own (submit --lane).",
            show_default=False,
        ),
    ] = None,
    poll_interval: Annotated[
        str,
        typer.Option(
            help="With --forever: how often to look for new work. Batch lane: the least "
            "time between two polls of one provider batch."
        ),
    ] = "30s",
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress and no summary: only errors, and one line per batch that "
            "pauses or waits (why, and the command that continues it).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one summary object on stdout at the end.")
    ] = False,
    progress_interval: Annotated[
        str,
        typer.Option(help="Without a terminal: how often to write a progress line."),
    ] = _DEFAULT_LOG_INTERVAL,
    notify: Annotated[
        str | None,
        typer.Option(
            "--notify",
            metavar="URL",
            help="POST a small JSON document to this webhook (http or https) when a batch "
            "ends, is canceled, expires, pauses (with the reason) or is interrupted, with the "
            "command that continues it. Tried for about 10 s; a failure is logged, never "
            "fatal. Default: the config file's [notify]; '' turns it off.",
            show_default=False,
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="While the run runs, serve Prometheus metrics at "
            "http://HOST:PORT/metrics, the same as `serve`'s: requests by state, sends, "
            "retries, this run's 429s, tokens, cost, in flight and rate-limit use per "
            "endpoint and model (of the whole database). 0 picks a free port and prints it.",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            help="The address --metrics-port listens on. The metrics need no key: 0.0.0.0 "
            "exposes them to the network."
        ),
    ] = "127.0.0.1",
    processes: Annotated[
        str,
        typer.Option(
            metavar="N",
            help="Worker processes on this machine (auto: one per usable core), each "
            "sending the same batches through the same database and sharing every limit; "
            "shown as one run, with one summary and exit code. Ctrl-C stops them all. "
            "Not with --forever or --metrics-port. More machines: see the docs' workers "
            "page.",
        ),
    ] = "1",
) -> None:
    """Send the queued requests of batches and record every response; exits when done.

    Each batch goes to the endpoint stored with it (`batchrun status` shows it), unless
    --endpoint moves it. A limit flag (--rpm, --tpm, --itpm, --otpm) replaces that limit of
    the endpoints for each model (or family) on its own: --rpm 600 lets three models send
    1,800 a minute together. --endpoint-rpm (--endpoint-tpm ...) limits all the models of
    each endpoint together, on top. On a terminal a live view shows progress,
    throughput against each limit, the ETA and the cost; otherwise a progress line is logged
    every --progress-interval. A batch whose endpoint cannot be used here (its key or a
    headers_env variable is not set, the endpoint is not defined) waits, nothing of it sent,
    while the others run. Exit codes: 0 done, 3 some results errored, 4 a batch paused or
    waits, 5 stopped at --max-runtime, 6 another run holds the SQLite database, 7 a batch
    was canceled while it ran; when several apply, the first of 130, 4, 7, 5, 3.

    Examples:

        batchrun run "$B" --rpm 500 --tpm 60000
        batchrun run --forever --max-runtime 55m --quiet
    """
    from batchrun.cli.context import client_of
    from batchrun.cli.progress import RunDisplay
    from batchrun.client import check_run_arguments
    from batchrun.errors import UsageError

    try:
        count = check_run_arguments(
            batch_ids or (),
            endpoint=endpoint,
            forever=forever,
            notify_url=notify or None,
            processes=processes,
        )
        if count > 1 and metrics_port is not None:
            raise UsageError(
                argument="metrics_port",
                problem="serves one process's run; with --processes, `batchrun serve` "
                "serves the database's metrics",
            )
    except UsageError as exc:
        # The Client's rule and wording, after the flag.
        raise flag_error(exc, _FLAGS) from None
    max_runtime_s = duration_option(max_runtime, "--max-runtime")
    poll_interval_s = duration_option(poll_interval, "--poll-interval") or 0.0
    log_interval_s = max(duration_option(progress_interval, "--progress-interval") or 0, 0.1)
    if batch_ids:
        # After the checks of the command line: a usage error says so before any lookup.
        batch_ids = resolve_batch_ids(client_of(ctx), batch_ids)
    live = stderr.is_terminal and not quiet
    metrics = None
    if metrics_port is not None:
        metrics = _RunMetrics(client_of(ctx), host=metrics_host, port=metrics_port, quiet=quiet)
    display = RunDisplay(
        stderr, live=live, quiet=quiet, as_json=as_json, json_indent=None if forever else 2
    )
    try:
        result = client_of(ctx).run(
            *(batch_ids or ()),
            endpoint=endpoint,
            lane=lane,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            output_reservation=output_reservation.value,
            burst_s=burst_s,
            slow_start=slow_start,
            count_tokens=count_tokens,
            max_cost_usd=max_cost,
            hold_unpriced=hold_unpriced,
            max_runtime_s=max_runtime_s,
            forever=forever,
            poll_interval_s=poll_interval_s,
            lock="share" if share else "wait" if wait else "exclusive",
            on_event=_with_pauses_said(display) if quiet else display,
            progress_interval_s=None if quiet else _LIVE_REFRESH_S if live else log_interval_s,
            stop_on_signals=True,
            notify_url=notify,
            on_session=None if metrics is None else metrics.watch,
            limits=limits,
            endpoint_limits=endpoint_limits,
            processes=count,
            progress=False,  # the CLI shows the run itself (RunDisplay)
        )
    finally:
        display.close()
        if metrics is not None:
            metrics.close()
    if result.exit_code != ExitCode.OK:
        raise typer.Exit(int(result.exit_code))


def _with_pauses_said(display: Callable[[RunEvent], None]) -> Callable[[RunEvent], None]:
    """``display`` (quiet), and after each pass one line on stderr per batch it paused or
    left waiting: with ``--quiet`` this is all a cron job mails, so a pause is never silent."""
    from batchrun.cli.views import paused_lines
    from batchrun.ops.session import PassFinished

    def on_event(event: RunEvent) -> None:
        display(event)
        if isinstance(event, PassFinished):
            for line in paused_lines(event.result):
                stderr.print(line, markup=False, highlight=False)

    return on_event


def resume(
    ctx: typer.Context,
    batch_id: Annotated[str, batch_argument()],
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

    Examples: `batchrun resume msgbatch_01` · `batchrun resume msgbatch_01 --retry-errored`
    """
    from batchrun.cli.context import client_of

    expires_in_s = duration_option(expires_in, "--expires-in")
    count = client_of(ctx).requeue(batch_id, retry_errored=retry_errored, expires_in_s=expires_in_s)
    stderr.print(f"{batch_id}: {plural(count, 'request')} back in the queue")
    # The rest of the command line is `run`'s, parsed by `run` itself.
    command = ctx.parent.command if ctx.parent else None
    run_command = command.get_command(ctx, "run") if isinstance(command, TyperGroup) else None
    assert run_command is not None
    with run_command.make_context("run", [batch_id, *ctx.args], parent=ctx.parent) as run_ctx:
        run_command.invoke(run_ctx)


def add_commands(app: typer.Typer) -> None:
    """Register ``run`` and ``resume``."""
    app.command()(with_limit_options(run))
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(resume)
