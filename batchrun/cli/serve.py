"""``batchrun serve``: Anthropic's Message Batches API (and a dashboard, and metrics) over
this database."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from batchrun.cli.consoles import stderr
from batchrun.cli.options import duration_option


def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8000,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="Endpoint or pool of new batches (default: the config's default). A create "
            "may name another with the batchrun-endpoint header.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Dispatch workers in this process; 0 leaves the sending to `batchrun run "
            "--forever` workers on the same database (Postgres).",
            min=0,
        ),
    ] = 1,
    public_url: Annotated[
        str | None,
        typer.Option(
            help="The URL clients reach this server at, behind a reverse proxy (for "
            "results_url; its host is served). Default: the request's Host if allowed, "
            "else the address it came in on.",
            show_default=False,
        ),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="Host names served besides the loopback names and the --public-url host "
            "(comma-separated, any port); results_url may then name them. With keys, "
            "other Hosts are refused (421) once this is given; '*' serves and trusts any.",
            show_default=False,
        ),
    ] = None,
    header_timeout: Annotated[
        str | None,
        typer.Option(
            help="Time a request's line and headers may take, then 408 and close [default: 10s].",
            show_default=False,
        ),
    ] = None,
    body_timeout: Annotated[
        str | None,
        typer.Option(
            help="Time a request body may pause between two reads, then close [default: 30s].",
            show_default=False,
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            help="Connections open at once; more are answered 503 and closed [default: 500].",
            show_default=False,
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve without keys (loopback addresses only): every client is the local "
            "user and sees the batches made without a key, the CLI's included.",
        ),
    ] = False,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request (method, path, status).")
    ] = False,
) -> None:
    """Serve Anthropic's Message Batches API over this database: the official SDKs'
    `messages.batches` create, retrieve, list, cancel, results and delete work against it,
    with the same validation, limits, budgets and durable results as `submit` and `run`.

    Keys come from $BATCHRUN_SERVE_API_KEYS (comma-separated; sent as x-api-key or
    Authorization: Bearer); each key sees only its own batches. The dashboard is at `/`,
    Prometheus metrics at `/metrics`, the OpenAPI document at `/openapi.json`.

    Example: `BATCHRUN_SERVE_API_KEYS=$(cat keyfile) batchrun --db postgresql+psycopg://...
    serve --host 0.0.0.0 --workers 0`
    """
    from batchrun.cli.context import client_of
    from batchrun.server.keys import ServerKeys
    from batchrun.server.routes import extra_routers
    from batchrun.server.running import ServeSettings, build_server
    from batchrun.server.running import serve as run_server

    limits = {
        name: value
        for name, value in (
            ("header_timeout_s", duration_option(header_timeout, "--header-timeout")),
            ("body_timeout_s", duration_option(body_timeout, "--body-timeout")),
            ("max_connections", max_connections),
        )
        if value is not None
    }
    settings = ServeSettings(
        host=host,
        port=port,
        endpoint=endpoint,
        workers=workers,
        public_url=public_url,
        insecure_no_auth=insecure_no_auth,
        access_log=access_log,
        allowed_hosts=tuple(allowed_hosts.split(",")) if allowed_hosts else (),
        **limits,  # type: ignore[arg-type]
    )
    server = build_server(
        client_of(ctx),
        env=os.environ,
        keys=ServerKeys.from_env(os.environ),
        settings=settings,
        routers=extra_routers,
    )

    def ready(url: str) -> None:
        where = "in this process" if workers else "left to `batchrun run --forever` workers"
        stderr.print(
            f"batchrun serve: listening on {url} (dispatch {where}; Ctrl-C stops)", markup=False
        )

    run_server(server, settings, on_ready=ready)


def add_commands(app: typer.Typer) -> None:
    """Register ``serve``."""
    app.command()(serve)
