"""The commands that touch no batch: ``endpoints`` (what is configured), ``simulate`` and
``db upgrade`` / ``db current``."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated

import typer

from batchrun.cli.consoles import stderr, stdout


def list_endpoints(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """List every endpoint: URL, auth style, key variable and whether it is set (never the
    key), limits per model, the limits learned from 429s that the database keeps (with their
    age), the default, and where each is defined (built-in or a config file).

    Example: `batchrun --config batchrun.toml endpoints --json`
    """
    from batchrun.cli.context import client_of
    from batchrun.cli.endpoint_views import endpoints_json, endpoints_lines

    client = client_of(ctx)
    known = client.endpoints()
    learned, now = client.learned_limits(), time.time()
    if as_json:
        data = endpoints_json(known, os.environ, learned, now)
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    for line in endpoints_lines(known, os.environ, learned, now):
        stdout.print(line, markup=False)


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
    latency_per_output_token_s: Annotated[
        float,
        typer.Option(
            "--latency-per-output-token-s",
            help="Extra seconds per output token; a stream sends its tokens over that time.",
        ),
    ] = 0.0,
    output_tokens: Annotated[int, typer.Option(help="Reply length in tokens.")] = 40,
    error_rate: Annotated[float, typer.Option(help="Share of answers that are 500s.")] = 0.0,
    overloaded_rate: Annotated[float, typer.Option(help="Share of 529 answers.")] = 0.0,
    stream_cut_rate: Annotated[
        float, typer.Option(help="Share of streamed answers cut after half their events.")
    ] = 0.0,
    idle_timeout_s: Annotated[
        float | None,
        typer.Option(
            "--idle-timeout-s",
            help="Drop a connection silent this long, as proxies do: non-streamed answers "
            "slower than this never arrive.",
            min=0.001,
        ),
    ] = None,
    ping_interval_s: Annotated[
        float,
        typer.Option(
            "--ping-interval-s", help="Seconds between pings of a waiting stream.", min=0.001
        ),
    ] = 1.0,
    log_messages: Annotated[
        bool,
        typer.Option(
            "--log-messages",
            help="Keep each Message answered in the stats' log (GET /_simulator/stats).",
        ),
    ] = False,
    log_size: Annotated[
        int, typer.Option(help="Requests the stats' log keeps (the most recent).", min=0)
    ] = 1000,
    seed: Annotated[int | None, typer.Option(help="Seed for latency and faults.")] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="Require the key held by this environment variable (x-api-key or "
            "Authorization: Bearer); others get 401, as a server given a wrong key answers.",
            show_default=False,
        ),
    ] = None,
    ratelimit_headers: Annotated[
        bool,
        typer.Option(
            "--ratelimit-headers/--no-ratelimit-headers",
            help="Send anthropic-ratelimit-* headers (without them, a 429 has only retry-after).",
        ),
    ] = True,
    retry_after: Annotated[
        bool,
        typer.Option(
            "--retry-after/--no-retry-after",
            help="Send retry-after on 429s (without it and the headers, a 429 says no wait).",
        ),
    ] = True,
    fixed_window_s: Annotated[
        float | None,
        typer.Option(
            "--fixed-window-s",
            help="Count the limits in fixed windows of this many seconds, as LiteLLM's proxy "
            "does (60), instead of refilling buckets.",
            min=0.001,
            show_default=False,
        ),
    ] = None,
    batch_processing_s: Annotated[
        float,
        typer.Option(
            "--batch-processing-s", help="Seconds from a batch's creation to its end.", min=0.0
        ),
    ] = 2.0,
    batch_start_s: Annotated[
        float,
        typer.Option(
            "--batch-start-s",
            help="Seconds a batch waits in the provider's queue before its requests run.",
            min=0.0,
        ),
    ] = 0.0,
    batch_expired_rate: Annotated[
        float,
        typer.Option(
            "--batch-expired-rate",
            help="Share of batch requests that end expired.",
            min=0.0,
            max=1.0,
        ),
    ] = 0.0,
    batch_cancel_s: Annotated[
        float,
        typer.Option("--batch-cancel-s", help="Seconds from a batch's cancel to its end.", min=0.0),
    ] = 0.5,
    batch_concurrency: Annotated[
        int,
        typer.Option(
            "--batch-concurrency",
            help="Batch requests processed at once; a wave does not see its own cache writes.",
            min=1,
        ),
    ] = 50,
    cache_min_tokens: Annotated[
        int,
        typer.Option(
            "--cache-min-tokens",
            help="Shortest prompt-cache prefix, in tokens, that is written or read.",
            min=0,
        ),
    ] = 1024,
    cache_ttl_scale: Annotated[
        float,
        typer.Option(
            "--cache-ttl-scale",
            help="Multiplies the prompt cache's lifetimes (5 minutes, 1 hour); 0.01 makes "
            "them 3 s and 36 s.",
            min=0.000001,
        ),
    ] = 1.0,
) -> None:
    """Serve the built-in Messages API simulator on 127.0.0.1 (Ctrl-C stops it).

    Point batchrun at it with ANTHROPIC_BASE_URL=http://127.0.0.1:PORT and any
    ANTHROPIC_API_KEY, or with an endpoint in the config file whose base_url is that URL.
    Prompts may force behaviour with [[sim:status=500:times=2]] and similar directives (see
    the simulator page of the docs).

    A request with "stream": true is answered with server-sent events, its latency spread
    over them. The Message Batches API (/v1/messages/batches, and AIMLAPI's /v1/batches) and
    prompt caching (cache_control) are simulated too.

    Examples:

        batchrun simulate --port 8765 --rpm 600 --latency-s 1.5
        ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=x batchrun run
        batchrun simulate --output-tokens 4000 --latency-per-output-token-s 0.004 --idle-timeout-s 5
    """
    from batchrun.simulator.config import SimulatorConfig
    from batchrun.simulator.server import serve

    required_key = None
    if api_key_env is not None:
        required_key = os.environ.get(api_key_env, "").strip()
        if not required_key:
            raise typer.BadParameter(f"{api_key_env} is not set", param_hint="--api-key-env")
    config = SimulatorConfig.from_options(
        required_api_key=required_key,
        rpm=rpm,
        tpm=tpm,
        itpm=itpm,
        otpm=otpm,
        burst_s=burst_s,
        fixed_window_s=fixed_window_s,
        latency_s=latency_s,
        latency_jitter_s=latency_jitter_s,
        latency_per_output_token_s=latency_per_output_token_s,
        output_tokens=output_tokens,
        error_500=error_rate,
        overloaded_529=overloaded_rate,
        stream_cut=stream_cut_rate,
        seed=seed,
        send_ratelimit_headers=ratelimit_headers,
        send_retry_after=retry_after,
        idle_timeout_s=idle_timeout_s,
        stream_ping_interval_s=ping_interval_s,
        log_size=log_size,
        log_messages=log_messages,
        batch_processing_s=batch_processing_s,
        batch_start_s=batch_start_s,
        batch_expired_rate=batch_expired_rate,
        batch_cancel_s=batch_cancel_s,
        batch_concurrency=batch_concurrency,
        cache_min_tokens=cache_min_tokens,
        cache_ttl_scale=cache_ttl_scale,
    )

    def announce(actual_port: int) -> None:
        sys.stdout.write(f"http://127.0.0.1:{actual_port}\n")
        sys.stdout.flush()
        stderr.print(f"simulator listening on http://127.0.0.1:{actual_port}")

    serve(config, port=port, on_ready=announce)


def db_upgrade(ctx: typer.Context) -> None:
    """Create the database or migrate it to this batchrun's schema."""
    from batchrun.cli.context import client_of

    before, after = client_of(ctx).upgrade_database()
    if before == after:
        stderr.print(f"database is up to date (schema {after})")
    else:
        stderr.print(f"database migrated from {before or 'empty'} to schema {after}")


def db_current(ctx: typer.Context) -> None:
    """Print the database's schema revision."""
    from batchrun.cli.context import client_of

    stdout.print(client_of(ctx).database_revision() or "empty")


def add_commands(app: typer.Typer) -> None:
    """Register ``endpoints``, ``simulate`` and ``db``."""
    app.command("endpoints")(list_endpoints)
    app.command()(simulate)
    db_app = typer.Typer(help="Manage the job database.", no_args_is_help=True)
    db_app.command("upgrade")(db_upgrade)
    db_app.command("current")(db_current)
    app.add_typer(db_app, name="db")
