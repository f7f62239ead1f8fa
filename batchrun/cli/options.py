"""Options several commands share: the rate-limit flags, made from the dimension registry,
and durations.

:func:`with_limit_options` gives a command one ``--NAME`` flag per registered dimension
(``--rpm``, ``--tpm``, ``--itpm``, ``--otpm``, and any dimension registered before the app is
built; per model or family) and hands the command a ``limits`` mapping of the ones given; and,
to a command that asks for them, ``--endpoint-rpm`` ... (across all the models of an
endpoint) as ``endpoint_limits``.
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
# Parameters that receive the limits the user gave, by dimension name: per model (or family),
# and across all the models of an endpoint.
LIMITS_PARAMETER = "limits"
ENDPOINT_LIMITS_PARAMETER = "endpoint_limits"
# The endpoint flags' parameter names: "endpoint_" + the dimension's name.
_ENDPOINT_PREFIX = "endpoint_"


def with_limit_options(command: F) -> F:
    """``command`` with a flag per rate-limit dimension in place of its ``limits``
    parameter; it is called with ``limits={name: per_minute}`` for the flags given. A
    command that also has an ``endpoint_limits`` parameter gets an ``--endpoint-NAME`` flag
    per dimension in its place, and ``endpoint_limits={name: per_minute}``."""
    signature = inspect.signature(command, eval_str=True)
    wanted = {LIMITS_PARAMETER, ENDPOINT_LIMITS_PARAMETER} & set(signature.parameters)
    kept = [p for p in signature.parameters.values() if p.name not in wanted]
    scopes = {LIMITS_PARAMETER: ""} | (
        {ENDPOINT_LIMITS_PARAMETER: _ENDPOINT_PREFIX} if ENDPOINT_LIMITS_PARAMETER in wanted else {}
    )
    added = [
        inspect.Parameter(
            prefix + dimension.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                float | None,
                typer.Option(
                    dimension.endpoint_flag if prefix else dimension.flag,
                    min=0.001,
                    help=dimension.endpoint_help if prefix else dimension.help,
                    show_default=False,
                ),
            ],
        )
        for prefix in scopes.values()
        for dimension in DIMENSIONS
    ]
    names = DIMENSIONS.names()

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given: dict[str, dict[str, float]] = {}
        for parameter, prefix in scopes.items():
            values = {name: kwargs.pop(prefix + name, None) for name in names}
            given[parameter] = {name: v for name, v in values.items() if v is not None}
        return command(*args, **kwargs, **given)

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
