"""Commands on batches: ``submit``, ``status``, ``list``, ``cancel`` and ``results``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from batchrun.cli.batch_ids import (
    batch_argument,
    complete_choices,
    complete_endpoints,
)
from batchrun.cli.consoles import print_json, stderr, stdout
from batchrun.cli.options import duration_option, flag_error
from batchrun.cli.text import plural
from batchrun.errors import ConfigError, ExitCode
from batchrun.export.formats import EXPORT_FORMATS

if TYPE_CHECKING:
    from rich.table import Table

    from batchrun.client import Client
    from batchrun.export.batch_object import BatchStatus

_RESULT_STATES = ("succeeded", "errored", "canceled", "expired")


def submit(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="JSONL request file; - reads standard input.")],
    name: Annotated[str | None, typer.Option(help="A name to recognise the batch by.")] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="Where the requests go; `batchrun endpoints` lists them. Default: "
            "$BATCHRUN_ENDPOINT, else default_endpoint in the config file, else anthropic.",
            show_default=False,
            autocompletion=complete_endpoints,
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model for lines whose params name none.")
    ] = None,
    max_requests: Annotated[
        int, typer.Option(min=1, help="Refuse files with more requests (Anthropic's limit).")
    ] = 100_000,
    max_file_bytes: Annotated[
        int, typer.Option(min=1, help="Refuse larger files (Anthropic's 256 MB limit).")
    ] = 256 * 1024 * 1024,
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
            "its cost past it (the batch pauses; raise it with run --max-cost). A file with "
            "a model that has no price is refused, unless --hold-unpriced.",
            show_default=False,
        ),
    ] = None,
    hold_unpriced: Annotated[
        bool,
        typer.Option(
            "--hold-unpriced",
            help="With --max-cost: store the batch even when some models have no price; "
            "their requests stay queued, unsent, until the config file gives them one (or "
            "the batch is canceled or expires), and the others run within the budget.",
        ),
    ] = False,
    lane: Annotated[
        str,
        typer.Option(
            help="realtime (the Messages API), batch (the endpoint's batch API: half price, "
            "results within hours) or auto (batch while the deadline leaves time for real "
            "time to finish what the provider leaves).",
        ),
    ] = "realtime",
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse",
            help="Answer requests whose params already succeeded in this database from the "
            "stored answer (nothing sent, cost 0); send identical params in the file once.",
        ),
    ] = False,
    cache_ttl: Annotated[
        str | None,
        typer.Option(
            "--cache-ttl",
            help="auto or keep. With --lane batch, auto gives the breakpoints of each "
            "prompt-cache group (its leader goes alone in real time, the others in provider "
            'batches) "ttl": "1h", so the cache outlives the provider\'s wait; keep sends the '
            "requests as written. Default: cache_ttl in the config file, else auto.",
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
    template: Annotated[
        str | None,
        typer.Option(
            help="FILE is a table (CSV/TSV with a header row, Parquet, JSON lines of "
            "objects); this TOML template turns each row into a request (see the docs' "
            '"From a table").',
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
    repair: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Repair sends per request at most when an answer does not match its schema "
            "(the answer and the errors shown to the model again; each one sent, counted and "
            "costed). Default: the template's repair, else 1; 0 turns repairs off.",
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
) -> None:
    """Validate a request file and store it as a batch; prints the batch id.

    Each line is {"custom_id": "...", "params": {...Messages API body...}}. If any line is
    invalid, every problem is listed (file:line) and nothing is stored, unless
    --skip-invalid is given.

    Examples:

        B=$(batchrun submit requests.jsonl --endpoint langdock-eu --name nightly)
        batchrun submit requests.jsonl --dry-run
        batchrun submit tickets.csv --template triage.toml --endpoint simulator
    """
    from batchrun.cli.context import client_of
    from batchrun.cli.views import submit_summary_lines

    expires_in_s = duration_option(expires_in, "--expires-in")
    client = client_of(ctx)
    from batchrun.cli.estimate import table_only

    table_only(template, schema=schema, table_format=table_format)
    if dry_run:
        from batchrun.cli.estimate import print_estimate

        if template is not None:
            plan = client.estimate_table(
                file,
                template=template,
                output=schema,
                table_format=table_format,
                endpoint=endpoint,
                model=model,
                max_requests=max_requests,
                max_file_bytes=max_file_bytes,
                lane=lane,
                expires_in_s=expires_in_s,
                skip_invalid=skip_invalid,
            )
        else:
            plan = client.estimate(
                file,
                endpoint=endpoint,
                model=model,
                max_requests=max_requests,
                max_file_bytes=max_file_bytes,
                lane=lane,
                expires_in_s=expires_in_s,
                skip_invalid=skip_invalid,
            )
        print_estimate(plan, as_json=as_json)
        return
    skipped: list[str] = []
    if template is not None:
        batch = client.submit_table(
            file,
            template=template,
            output=schema,
            table_format=table_format,
            endpoint=endpoint,
            name=name,
            model=model,
            expires_in_s=expires_in_s,
            skip_invalid=skip_invalid,
            max_cost_usd=max_cost,
            max_requests=max_requests,
            max_file_bytes=max_file_bytes,
            on_skipped=skipped.append,
            lane=lane,
            reuse=reuse,
            hold_unpriced=hold_unpriced,
            repair=repair,
            cache_ttl=cache_ttl,
        )
    else:
        batch = client.submit(
            file,
            endpoint=endpoint,
            name=name,
            model=model,
            expires_in_s=expires_in_s,
            skip_invalid=skip_invalid,
            max_cost_usd=max_cost,
            max_requests=max_requests,
            max_file_bytes=max_file_bytes,
            on_skipped=skipped.append,
            lane=lane,
            reuse=reuse,
            hold_unpriced=hold_unpriced,
            repair=repair,
            cache_ttl=cache_ttl,
        )
    if as_json:
        print_json(batch.model_dump(mode="json"))
    else:
        sys.stdout.write(batch.id + "\n")
    for line in submit_summary_lines(batch, skipped):
        stderr.print(line, markup=False)
    if (waits := client.waiting_reason(batch.id)) is not None:
        stderr.print(
            f"warning: {waits.reason}; until then `batchrun run` leaves {batch.id} waiting",
            markup=False,
        )


def status(
    ctx: typer.Context,
    batch_id: Annotated[str, batch_argument()],
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until the batch ends (Ctrl-C stops).")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between refreshes.")
    ] = 2.0,
) -> None:
    """Show a batch: state, request counts, tokens, cost, throughput, when it started and
    ended, its most frequent errors, and the limits learned from 429s for its endpoint (with
    their age; the next run starts from them). With --watch, refresh until the batch ends or
    pauses, and exit as `run` does: 0 done, 3 some results errored, 4 paused, 7 canceled.

    Examples: `batchrun status msgbatch_01 --json` · `batchrun status msgbatch_01 --watch`
    """
    from batchrun.cli.context import client_of
    from batchrun.cli.views import status_table

    client = client_of(ctx)

    def show(batch: BatchStatus, *, compact: bool) -> None:
        if as_json:
            print_json(batch.model_dump(mode="json"), indent=None if compact else 2)
        else:
            stdout.print(status_table(batch))

    def over(batch: BatchStatus) -> bool:
        # A paused batch waits for a person: watching it longer shows nothing new.
        return batch.processing_status == "ended" or batch.paused_reason is not None

    now = client.status(batch_id)
    watched = watch and not over(now)
    if watched:
        now = _watch(client, batch_id, now, over, interval_s=interval, as_json=as_json)
    if not (watched and as_json):
        show(now, compact=False)
    if not as_json:
        from batchrun.cli.endpoint_views import learned_lines

        for line in learned_lines(now.endpoint, client.learned_limits(), time.time()):
            stdout.print(line, markup=False)
    if watch and now.paused_reason is not None and now.processing_status != "ended":
        stderr.print(f"{batch_id} is paused: {now.paused_reason}", markup=False)
        raise typer.Exit(int(ExitCode.PAUSED))
    if watch and (code := _watch_exit_code(now)) != ExitCode.OK:
        raise typer.Exit(int(code))


def _watch(
    client: Client,
    batch_id: str,
    now: BatchStatus,
    over: Callable[[BatchStatus], bool],
    *,
    interval_s: float,
    as_json: bool,
) -> BatchStatus:
    """Refresh until the batch ends or pauses: a progress bar on a terminal, else a line (or
    a JSON object) per refresh; returns the last status."""
    from batchrun.cli.progress import progress_bar
    from batchrun.cli.text import duration_text
    from batchrun.cli.views import status_line

    started, done_at_start = time.monotonic(), _done(now)

    def bar(batch: BatchStatus) -> Table:
        total = sum(batch.request_counts.model_dump().values())
        elapsed_s = time.monotonic() - started
        gained = _done(batch) - done_at_start
        per_min = gained * 60 / elapsed_s if elapsed_s > 1 and gained > 0 else None
        eta = "-" if per_min is None else duration_text((total - _done(batch)) * 60 / per_min)
        return progress_bar(_done(batch), total, per_min=per_min, eta=eta)

    if stdout.is_terminal and not as_json:
        from rich.live import Live

        with Live(bar(now), console=stdout, auto_refresh=False) as view:
            while not over(now):
                time.sleep(interval_s)
                now = client.status(batch_id)
                view.update(bar(now), refresh=True)
        return now
    while True:
        if as_json:
            print_json(now.model_dump(mode="json"), indent=None)
        else:
            stderr.print(status_line(now), markup=False)
        if over(now):
            return now
        time.sleep(interval_s)
        now = client.status(batch_id)


def _watch_exit_code(batch: BatchStatus) -> ExitCode:
    """How ``status --watch`` ends for a batch that ended, as ``run`` would have: canceled
    (7), else some results errored (3), else 0."""
    if batch.processing_status != "ended":
        return ExitCode.OK
    if batch.cancel_initiated_at is not None:
        return ExitCode.CANCELED
    if batch.request_counts.errored:
        return ExitCode.ERRORED_RESULTS
    return ExitCode.OK


def _done(batch: BatchStatus) -> int:
    counts = batch.request_counts
    return counts.succeeded + counts.errored + counts.canceled + counts.expired


def list_batches(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print batch objects.")] = False,
) -> None:
    """List the batches, newest first (to a pipe: one tab-separated line per batch).

    Examples: `batchrun list` · `batchrun list --json | jq -r '.data[].id'`
    """
    from batchrun.cli.context import client_of
    from batchrun.cli.views import batches_lines, batches_table

    batches = client_of(ctx).list()
    if as_json:
        print_json({"data": [batch.model_dump(mode="json") for batch in batches]})
    elif batches and not stdout.is_terminal:
        sys.stdout.write("".join(line + "\n" for line in batches_lines(batches)))
    elif batches:
        stdout.print(batches_table(batches))
    else:
        stderr.print("no batches yet; `batchrun submit FILE.jsonl` stores one")


def cancel(
    ctx: typer.Context,
    batch_id: Annotated[str, batch_argument()],
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
) -> None:
    """Cancel a batch: queued requests are canceled at once; a running worker stops sending
    it within a second, and requests already in flight are still recorded.

    Example: `batchrun cancel msgbatch_01`
    """
    from batchrun.cli.context import client_of

    batch = client_of(ctx).cancel(
        batch_id, on_note=lambda note: stderr.print(f"{batch_id}: {note}", markup=False)
    )
    if as_json:
        print_json(batch.model_dump(mode="json"))
    else:
        stderr.print(f"{batch_id}: {batch.processing_status}", markup=False)


def delete(
    ctx: typer.Context,
    batch_id: Annotated[str, batch_argument()],
) -> None:
    """Delete an ended batch with its requests and results. A batch that has not ended must
    be canceled first (as with Anthropic's batches). On SQLite the space is reused for new
    batches; `batchrun prune` also gives it back to the file system.

    Example: `batchrun delete msgbatch_01`
    """
    from batchrun.cli.context import client_of

    client_of(ctx).delete(batch_id)
    stderr.print(f"{batch_id}: deleted", markup=False)


def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Delete the batches that ended longer ago than this (30d, 12h). Default: "
            "retention in the config file.",
            show_default=False,
        ),
    ] = None,
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum/--no-vacuum",
            help="On SQLite, give the freed space back to the file system (VACUUM rewrites "
            "the file and needs it to itself for a moment).",
        ),
    ] = True,
) -> None:
    """Delete every batch that ended more than --older-than ago, in one transaction.

    Examples: `batchrun prune --older-than 29d` · in cron, daily: `batchrun prune`
    (with `retention = "29d"` in the config file)
    """
    from batchrun.cli.context import client_of

    older_than_s = duration_option(older_than, "--older-than", unit_required=True)
    client = client_of(ctx)
    if older_than_s is None and client.settings().retention_s is None:
        raise ConfigError(
            "say how old an ended batch must be to go: --older-than 30d, or "
            'retention = "30d" in the config file'
        )
    deleted = client.prune(older_than_s=older_than_s, reclaim_space=vacuum)
    stderr.print(f"deleted {plural(len(deleted), 'batch')}", markup=False)
    for batch_id in deleted:
        sys.stdout.write(batch_id + "\n")


def results(
    ctx: typer.Context,
    batch_id: Annotated[str, batch_argument()],
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write to this file (atomically).")
    ] = None,
    partial: Annotated[
        bool, typer.Option(help="Export the finished requests of a batch that has not ended.")
    ] = False,
    export_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="; ".join(f"{f.name}: {f.description}" for f in EXPORT_FORMATS) + ".",
            autocompletion=complete_choices(EXPORT_FORMATS.names),
        ),
    ] = "anthropic",
    only: Annotated[
        str | None,
        typer.Option(
            help="Only the requests that ended this way: " + ", ".join(_RESULT_STATES) + ".",
            show_default=False,
            autocompletion=complete_choices(lambda: _RESULT_STATES),
        ),
    ] = None,
    csv_raw: Annotated[
        bool,
        typer.Option(
            "--csv-raw",
            help="CSV: write text cells starting with = + - @ tab or CR as they are; by "
            "default they get a leading ' so that a spreadsheet shows them as text instead of "
            "running them as formulas (numbers are never changed).",
        ),
    ] = False,
    with_input: Annotated[
        bool,
        typer.Option(
            "--with-input",
            help="For a batch submitted from a table (flat, csv, parquet): one row per input "
            "row, in input order: its columns unchanged, then custom_id, result_type, "
            "error_type, error_message, text, the parsed answer, one answer_NAME column "
            "per property of the schema, the tokens and cost_usd.",
        ),
    ] = False,
) -> None:
    """Write the results of a batch in input order: Anthropic's batch results format (one
    JSON line per request), or flat records (JSON lines, CSV or Parquet) for analytics.
    Parquet is binary, so it needs -o FILE, and pyarrow (pip install pyarrow). CSV text
    cells that a spreadsheet would run as a formula get a leading ' (--csv-raw: as they are).
    --with-input joins the results of a batch submitted from a table to its rows.

    Examples:

        batchrun results msgbatch_01 -o results.jsonl
        batchrun results msgbatch_01 --format csv --only errored -o errors.csv
        batchrun results msgbatch_01 --format parquet -o results.parquet
        batchrun results msgbatch_01 --with-input --format parquet -o tickets.parquet
    """
    from batchrun.cli.context import client_of
    from batchrun.client import check_export_arguments
    from batchrun.errors import UsageError

    try:
        check_export_arguments(format=export_format, only=only, with_input=with_input)
    except UsageError as exc:
        # The Client's rule and wording, after the flag.
        raise flag_error(exc) from None
    chosen = EXPORT_FORMATS.get(export_format)
    to_file = output is not None and output != "-"
    if chosen.binary and not to_file:
        # Bytes on a terminal are noise, and a Parquet reader needs the whole file (its
        # index is at the end), so a pipe gains nothing over a file.
        raise typer.BadParameter(
            f"--format {export_format} writes a binary file; pass -o FILE", param_hint="--output"
        )
    target = output if to_file else sys.stdout
    assert target is not None
    count = client_of(ctx).export(
        batch_id,
        target,
        format=export_format,
        only=only,  # type: ignore[arg-type]
        partial=partial,
        csv_raw=csv_raw,
        with_input=with_input,
    )
    if to_file:
        stderr.print(f"wrote {count:,} {'rows' if with_input else 'results'} to {output}")


def add_submit(app: typer.Typer) -> None:
    """Register ``submit``."""
    app.command()(submit)


def add_commands(app: typer.Typer) -> None:
    """Register ``status``, ``list``, ``cancel``, ``results``, ``delete`` and ``prune``."""
    app.command()(status)
    app.command("list")(list_batches)
    app.command()(cancel)
    app.command()(results)
    app.command()(delete)
    app.command()(prune)
