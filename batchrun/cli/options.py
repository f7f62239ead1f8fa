"""Options several commands share: the rate-limit flags, made from the dimension registry,
and durations.

:func:`with_limit_options` gives a command one ``--NAME`` flag per registered dimension
(``--rpm``, ``--tpm``, ``--itpm``, ``--otpm``, and any dimension registered before the app is
built) and hands the command a ``limits`` mapping of the ones given.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import typer

from batchrun.config.durations import parse_duration_s
from batchrun.errors import ConfigError, UsageError
from batchrun.limits.dimensions import DIMENSIONS

F = TypeVar("F", bound=Callable[..., Any])
# Parameter that receives the limits the user gave, by dimension name.
LIMITS_PARAMETER = "limits"


def with_limit_options(command: F) -> F:
    """``command`` with a flag per rate-limit dimension in place of its ``limits``
    parameter; it is called with ``limits={name: per_minute}`` for the flags given."""
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != LIMITS_PARAMETER]
    names = DIMENSIONS.names()
    added = [
        inspect.Parameter(
            dimension.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                float | None,
                typer.Option(dimension.flag, min=0.001, help=dimension.help, show_default=False),
            ],
        )
        for dimension in DIMENSIONS
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        limits = {name: kwargs.pop(name) for name in names if kwargs.get(name) is not None}
        for name in names:
            kwargs.pop(name, None)
        return command(*args, **kwargs, **{LIMITS_PARAMETER: limits})

    parameters = [*kept, *added]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper  # type: ignore[return-value]


def flag_error(exc: UsageError, flags: Mapping[str, str] | None = None) -> typer.BadParameter:
    """The Client's UsageError as typer shows a usage error: its problem, in the Client's
    words, after the flag of its argument (``--name`` unless ``flags`` names another)."""
    argument = exc.argument or ""
    flag = (flags or {}).get(argument, "--" + argument.replace("_", "-"))
    return typer.BadParameter(exc.problem, param_hint=flag)


def duration_option(value: str | None, flag: str, *, unit_required: bool = False) -> float | None:
    """A duration flag's value in seconds (None when not given); a usage error naming the
    flag when it cannot be read (or, with ``unit_required``, has no unit)."""
    if value is None:
        return None
    try:
        return parse_duration_s(value, what=flag, unit_required=unit_required)
    except ConfigError as exc:
        # BadParameter names the flag itself.
        raise typer.BadParameter(exc.message.removeprefix(f"{flag}: "), param_hint=flag) from None
