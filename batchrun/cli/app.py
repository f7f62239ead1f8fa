"""The ``batchrun`` command: the app, its global options, and the one place errors become
exit codes.

A :class:`~batchrun.errors.BatchrunError` is printed as one line on stderr and ends the
command with the error's own ``exit_code`` (see :data:`batchrun.errors.EXIT_CODES`); Ctrl-C
ends it with 130; anything else is a bug and keeps its traceback. The commands themselves live
in one module per noun (``batches``, ``run``, ``estimate``, ``tools``) and work through the
public :class:`batchrun.Client`, made here from the global options.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup, TyperOption

from batchrun import __version__
from batchrun.cli import batches, estimate, lanes, report, run, serve, tools
from batchrun.cli.consoles import stderr
from batchrun.cli.context import Options
from batchrun.errors import BatchrunError, ExitCode

# Errors of a write to the output, as opposed to bugs: a full disk, a quota, a broken device.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EPIPE})


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit cannot fail
    again with a traceback."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _BatchrunGroup(TyperGroup):
    """Turns user errors into one line on stderr and their exit code; bugs keep their
    traceback. Takes ``--verbose N`` as N times ``-v``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        valued = {
            name
            for param in self.params
            if isinstance(param, TyperOption) and not (param.is_flag or param.count)
            for name in param.opts
        }
        return super().parse_args(ctx, _counted_verbose(args, valued))

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            result = super().invoke(ctx)
            # Output still buffered is written now, where a full disk can still be reported.
            sys.stdout.flush()
            return result
        except BatchrunError as exc:
            stderr.print(f"error: {exc.message}", markup=False)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            stderr.print("interrupted; `batchrun run` continues where this stopped")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except BrokenPipeError:
            # The reader went away (`| head`): nothing more to say to it.
            _silence_stdout()
            raise typer.Exit(int(ExitCode.ERROR)) from None
        except OSError as exc:
            if exc.errno not in _OUTPUT_ERRNOS:
                raise
            _silence_stdout()
            stderr.print(f"error: cannot write the output: {exc.strerror}", markup=False)
            raise typer.Exit(int(ExitCode.ERROR)) from None


def _counted_verbose(args: list[str], valued: set[str]) -> list[str]:
    """``--verbose 2`` and ``--verbose=2`` (before the command) as ``-v -v``: -v is a count,
    but a number after it can only mean how much. ``valued``: the options before the command
    that take a value (``--db URL``), whose value is not the command."""
    out: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg in valued:
            out += [arg, *[value for value in [next(rest, None)] if value is not None]]
            continue
        if arg in ("--verbose", "-v") or arg.startswith("--verbose="):
            number = arg.partition("=")[2] if "=" in arg else None
            if number is None:
                following = next(rest, None)
                if following is not None and not following.isdigit():
                    out += [arg, following]
                    continue
                number = following
            if number is not None and number.isdigit():
                out += ["-v"] * int(number)
                continue
            out.append(arg)
            continue
        out.append(arg)
        if not arg.startswith("-") or arg == "--":
            # The command: what follows is its own.
            out += rest
            break
    return out


def _print_version() -> None:
    # Eager: printed before the command line is checked for a command.
    sys.stdout.write(f"batchrun {__version__}\n")
    raise typer.Exit()


def _main_options(
    ctx: typer.Context,
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
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="Log more: -v info, -vv (or --verbose 2) debug.",
            show_default=False,
        ),
    ] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            is_eager=True,
            callback=lambda shown: _print_version() if shown else None,
        ),
    ] = False,
) -> None:
    options = Options(db=db, config=config)
    ctx.obj = options
    ctx.call_on_close(options.close)
    _configure_logging(verbose)


def _configure_logging(verbose: int) -> None:
    """Log lines on stderr (-v info, -vv debug), with every key cut out of them."""
    from batchrun.transport.auth import RedactingFilter

    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host program's own logging stays
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(stream)
        root.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    # httpx logs every request at INFO; that is our job, at our level of detail. httpcore's
    # debug lines dump raw headers, whatever a server put there: never shown.
    logging.getLogger("httpx").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
    logging.getLogger("httpcore").setLevel(logging.INFO)


def build_app() -> typer.Typer:
    """The ``batchrun`` app, with flags for the rate-limit dimensions and the export formats
    registered now."""
    app = typer.Typer(
        cls=_BatchrunGroup,
        help="Run batches of Anthropic Messages API requests with rate limits, durably.\n\n"
        "Endpoints (Anthropic, Langdock, AIMLAPI, the simulator, and any gateway you define) "
        "are configured in one TOML file, the first found of: --config FILE, "
        "$BATCHRUN_CONFIG, ./batchrun.toml, ~/.config/batchrun/config.toml. `batchrun "
        "endpoints` lists them.",
        rich_markup_mode="markdown",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_main_options)
    batches.add_submit(app)
    estimate.add_commands(app)
    run.add_commands(app)
    batches.add_commands(app)
    lanes.add_commands(app)
    report.add_commands(app)
    serve.add_commands(app)
    tools.add_commands(app)
    return app


app = build_app()


def command() -> TyperGroup:
    """The app as a click command, with flags (and counted flags such as -v) shown without
    a ``<bool>`` or ``<int>`` type."""
    built = typer.main.get_command(app)
    assert isinstance(built, TyperGroup)
    pending: list[object] = [built]
    while pending:
        command = pending.pop()
        for param in getattr(command, "params", []):
            counted = param.is_flag or param.count if isinstance(param, TyperOption) else False
            if isinstance(param, TyperOption) and counted and param.metavar is None:
                param.metavar = ""
        _untyped_help_option(command)
        if isinstance(command, TyperGroup):
            pending.extend(command.commands.values())
    return built


def _untyped_help_option(command: object) -> None:
    """Show --help without a type: click makes that option when help is asked for."""
    make = getattr(command, "get_help_option", None)
    if make is None:
        return

    def get_help_option(ctx: Any) -> Any:
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option  # type: ignore[attr-defined]


def main() -> None:
    """Console entry point."""
    command()()
