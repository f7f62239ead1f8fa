"""The rate-limit dimensions: the one registry every part of batchrun reads.

A dimension is one kind of per-minute limit: requests (``rpm``), input + output tokens
(``tpm``, as Langdock counts), input tokens (``itpm``) and output tokens (``otpm``, as
Anthropic counts). For each, the registry holds everything that differs between them:

- ``name``: the run and estimate flag (``--rpm``, per model; ``--endpoint-rpm`` across all
  the models of an endpoint), the config file key (``[endpoints.X.limits."*"] rpm = 500``,
  ``[endpoints.X.endpoint_limits] rpm = 1000``), the column of the progress and estimate views
  and the key of the limits in JSON output;
- ``counts``: what it counts, in words, for help texts and views;
- ``measure``: how much of it some :class:`Amounts` take (additive: the measure of a sum is
  the sum of the measures). The limiter reserves the measure of
  a request's estimate before sending and reconciles it with the measure of the answer's
  ``usage``; the run monitor adds up the measures of answers; ``estimate`` divides the
  measure of a whole file by the limit;
- ``header_stem``: the server announces the limit as ``anthropic-ratelimit-{stem}-limit``
  (``-remaining``, ``-reset``);
- ``message_pattern``: how a 429's message names it, so the limiter lowers the right limit.

Adding a dimension is one :meth:`Dimensions.register` call (or one entry in
:data:`DIMENSIONS` below); the limiter, the monitor, ``estimate``, the header parser, the
config file, the flags and the views pick it up from here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchrun.records import Usage
from batchrun.registry import Registry


@dataclass(frozen=True)
class Amounts:
    """What one request (or many) takes, in the units limits count.

    ``input_tokens`` are the prompt tokens a server counts against an input limit: input plus
    cache writes; cache reads do not count (as with Anthropic's ITPM).
    """

    requests: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )

    @classmethod
    def of_usage(cls, usage: Usage) -> Amounts:
        """What one answered request took, from its ``usage``."""
        return cls(
            1.0,
            float(usage.input_tokens + usage.cache_creation_input_tokens),
            float(usage.output_tokens),
        )


@dataclass(frozen=True)
class Dimension:
    """One kind of per-minute limit."""

    name: str
    counts: str
    measure: Callable[[Amounts], float]
    header_stem: str | None = None
    message_pattern: re.Pattern[str] | None = None

    @property
    def flag(self) -> str:
        """The command-line flag that sets this limit for each model of a run."""
        return f"--{self.name}"

    @property
    def help(self) -> str:
        """The flag's help text: the limit is each model's (or family's), not a total."""
        return (
            f"{self.counts[0].upper()}{self.counts[1:]} per minute per model (or family), "
            f"not a total: 3 models may use 3 x this."
        )

    @property
    def endpoint_flag(self) -> str:
        """The command-line flag that sets this limit across all the models of an endpoint."""
        return f"--endpoint-{self.name.replace('_', '-')}"

    @property
    def endpoint_help(self) -> str:
        """The endpoint flag's help text."""
        return (
            f"{self.counts[0].upper()}{self.counts[1:]} per minute across all models of the "
            f"endpoint together (each endpoint of a pool has its own), on top of the "
            f"per-model {self.flag}."
        )


_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Dimensions(Registry[Dimension]):
    """The registered dimensions, in the order views show them."""

    def __init__(self, dimensions: Iterable[Dimension] = ()) -> None:
        super().__init__("rate-limit dimension", dimensions)

    def register(self, dimension: Dimension) -> None:
        """Add a dimension; ValueError if its name is taken or cannot be a flag and a key."""
        if not _NAME_RE.fullmatch(dimension.name):
            raise ValueError(
                f"dimension name {dimension.name!r}: use 1-32 lower-case letters, digits or '_'"
            )
        super().register(dimension)

    def measure_all(self, amounts: Amounts) -> dict[str, float]:
        """What ``amounts`` take in every dimension, by name."""
        return {dimension.name: dimension.measure(amounts) for dimension in self}


DIMENSIONS = Dimensions(
    [
        Dimension(
            "rpm",
            "requests",
            lambda a: a.requests,
            header_stem="requests",
            message_pattern=re.compile(r"requests per minute", re.IGNORECASE),
        ),
        Dimension(
            "tpm",
            "input + output tokens",
            lambda a: a.input_tokens + a.output_tokens,
            header_stem="tokens",
            message_pattern=re.compile(r"(?<!input )(?<!output )tokens per minute", re.IGNORECASE),
        ),
        Dimension(
            "itpm",
            "input tokens",
            lambda a: a.input_tokens,
            header_stem="input-tokens",
            message_pattern=re.compile(r"input tokens per minute", re.IGNORECASE),
        ),
        Dimension(
            "otpm",
            "output tokens",
            lambda a: a.output_tokens,
            header_stem="output-tokens",
            message_pattern=re.compile(r"output tokens per minute", re.IGNORECASE),
        ),
    ]
)


class RateLimits:
    """Per-minute limits of one endpoint × model, by dimension name; a dimension that is not
    set is unlimited. ``RateLimits(rpm=500, tpm=60_000)``."""

    __slots__ = ("_values",)

    def __init__(
        self, per_minute: Mapping[str, float | None] | None = None, /, **named: float | None
    ) -> None:
        values: dict[str, float] = {}
        for name, value in {**(per_minute or {}), **named}.items():
            if name not in DIMENSIONS:
                raise ValueError(
                    f"unknown rate limit {name!r}; limits: {', '.join(DIMENSIONS.names())}"
                )
            if value is not None:
                values[name] = value
        self._values = values

    def get(self, name: str) -> float | None:
        """The limit of a dimension per minute, or None when unlimited."""
        return self._values.get(name)

    def items(self) -> list[tuple[str, float]]:
        """The limits that are set, in the registry's order."""
        return [(name, self._values[name]) for name in DIMENSIONS.names() if name in self._values]

    def merged_over(self, base: RateLimits) -> RateLimits:
        """These limits where set, ``base``'s elsewhere."""
        return RateLimits({**base._values, **self._values})

    def as_json(self) -> dict[str, Any]:
        """Every registered dimension with its limit, null when unlimited."""
        return {name: self._values.get(name) for name in DIMENSIONS.names()}

    def __bool__(self) -> bool:
        return bool(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RateLimits) and self._values == other._values

    def __hash__(self) -> int:
        return hash(frozenset(self._values.items()))

    def __repr__(self) -> str:
        inside = ", ".join(f"{name}={value!r}" for name, value in self.items())
        return f"RateLimits({inside})"
