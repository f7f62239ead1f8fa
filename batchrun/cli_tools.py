"""The commands that touch no batch: ``endpoints`` (what is configured), ``simulate`` and
``db upgrade`` / ``db current``.

They are merged into the main ``batchrun`` app (see ``cli.py``), whose global options and
error handling they share; like ``cli.py``, this module may read environment variables.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from batchrun.config import default_database_url
from batchrun.display import endpoints_json, endpoints_lines
from batchrun.endpoints import load_endpoints
from batchrun.simulator import SimulatorConfig, serve
from batchrun.store.database import create_database_engine, current_revision, upgrade_database

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)

tools_app = typer.Typer()
db_app = typer.Typer(help="Manage the job database.", no_args_is_help=True)
tools_app.add_typer(db_app, name="db")


def database_url(flag: str | None) -> str:
    """The database: --db (or $BATCHRUN_DATABASE_URL), else SQLite in the data home."""
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return flag or default_database_url(data_home)


def _root_option(ctx: typer.Context, name: str) -> Any:
    """A global option (given before the command), as the main callback received it."""
    return ctx.find_root().params.get(name)


@tools_app.command("endpoints")
def list_endpoints(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """List every endpoint: URL, auth style, key variable and whether it is set (never the
    key), limits per model, the default, and where each is defined (built-in or a config
    file)."""
    config_file: Path | None = _root_option(ctx, "config")
    known = load_endpoints(config_file, env=os.environ, cwd=Path.cwd())
    if as_json:
        sys.stdout.write(
            json.dumps(endpoints_json(known, os.environ), indent=2, ensure_ascii=False) + "\n"
        )
        return
    for line in endpoints_lines(known, os.environ):
        stdout.print(line, markup=False)


@tools_app.command()
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
    ANTHROPIC_API_KEY, or with an endpoint in the config file whose base_url is that URL.
    Prompts may force behaviour with [[sim:status=500:times=2]] and similar directives (see
    the README).
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
def db_upgrade(ctx: typer.Context) -> None:
    """Create the database or migrate it to this batchrun's schema."""
    engine = create_database_engine(database_url(_root_option(ctx, "db")))
    try:
        before, after = upgrade_database(engine)
    finally:
        engine.dispose()
    if before == after:
        stderr.print(f"database is up to date (schema {after})")
    else:
        stderr.print(f"database migrated from {before or 'empty'} to schema {after}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the database's schema revision."""
    engine = create_database_engine(database_url(_root_option(ctx, "db")))
    try:
        stdout.print(current_revision(engine) or "empty")
    finally:
        engine.dispose()
