"""What the server says about its rate limits: ``anthropic-ratelimit-*`` headers and 429s.

Pure parsing; the limiter decides what to do with it. Which headers and which words name
which limit comes from the dimension registry (:mod:`batchrun.limits.dimensions`).

Gateways that do not speak Anthropic's headers often announce their limits in the
``x-ratelimit-*`` family instead, and those are read too, for the dimensions Anthropic's
headers leave out (Anthropic's win where both are sent):

- OpenAI's form, ``x-ratelimit-limit-requests`` and ``x-ratelimit-remaining-tokens``, which
  many OpenAI-compatible gateways copy;
- a scoped form, ``x-ratelimit-{scope}-limit-requests`` and
  ``x-ratelimit-{scope}-remaining-tokens``, which LiteLLM's proxy sends on every success
  for each limit that applies (``api_key``, ``team``, ``user``, ``model_per_key``, ...);
  the tightest scope is the one that binds, so the least limit and the least remaining
  are taken.

Their stems are the registry's (``requests``, ``tokens``, ...), and their limits are read as
per minute, as both OpenAI's and LiteLLM's are by default. Their reset headers are not read
(OpenAI sends a duration such as ``6m0s``, LiteLLM none): without one the limiter waits by
the rate, as it does for any server that names no reset.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from datetime import datetime

from batchrun.limits.dimensions import DIMENSIONS
from batchrun.records import ServerLimits

_PREFIX = "anthropic-ratelimit-"
_GATEWAY_PREFIX = "x-ratelimit-"
# x-ratelimit-[{scope}-]{limit|remaining}-{stem}; a scope has no '-' (LiteLLM's use '_').
_GATEWAY_HEADER = re.compile(
    r"x-ratelimit-(?:[a-z0-9_]+-)?(limit|remaining)-("
    + "|".join(re.escape(d.header_stem) for d in DIMENSIONS if d.header_stem is not None)
    + r")"
)
_GATEWAY_STEMS = {d.header_stem: d.name for d in DIMENSIONS if d.header_stem is not None}


def parse_server_limits(headers: Mapping[str, str]) -> ServerLimits | None:
    """The ``anthropic-ratelimit-*`` headers of a response, or None if it has none."""
    limits: dict[str, float] = {}
    remaining: dict[str, float] = {}
    reset_at: dict[str, datetime] = {}
    for dimension in DIMENSIONS:
        if dimension.header_stem is None:
            continue
        stem, name = f"{_PREFIX}{dimension.header_stem}", dimension.name
        limit = _number(headers.get(f"{stem}-limit"))
        if limit is not None and limit > 0:
            limits[name] = limit
        left = _number(headers.get(f"{stem}-remaining"))
        if left is not None:
            remaining[name] = left
        reset = headers.get(f"{stem}-reset")
        if reset:
            with contextlib.suppress(ValueError):
                reset_at[name] = datetime.fromisoformat(reset.replace("Z", "+00:00"))
    if len(limits) < len(_GATEWAY_STEMS):
        _read_gateway_headers(headers, limits, remaining)
    if not (limits or remaining or reset_at):
        return None
    return ServerLimits(limits, remaining, reset_at)


def _read_gateway_headers(
    headers: Mapping[str, str], limits: dict[str, float], remaining: dict[str, float]
) -> None:
    """Add the ``x-ratelimit-*`` limits and remainders of the dimensions not announced in
    Anthropic's headers: per dimension the least over every scope (the tightest binds)."""
    announced = set(limits) | set(remaining)
    found: dict[str, dict[str, float]] = {"limit": {}, "remaining": {}}
    for name, raw in headers.items():
        lowered = name.lower()
        if not lowered.startswith(_GATEWAY_PREFIX):
            continue
        matched = _GATEWAY_HEADER.fullmatch(lowered)
        if matched is None:
            continue
        kind, dimension = matched[1], _GATEWAY_STEMS[matched[2]]
        value = _number(raw)
        if dimension in announced or value is None or (kind == "limit" and value <= 0):
            continue
        seen = found[kind]
        seen[dimension] = min(seen.get(dimension, value), value)
    limits.update(found["limit"])
    remaining.update(found["remaining"])


def dimensions_named(message: str) -> frozenset[str]:
    """The limits a 429's message says were exceeded ("... of 30,000 input tokens per
    minute")."""
    return frozenset(
        dimension.name
        for dimension in DIMENSIONS
        if dimension.message_pattern is not None and dimension.message_pattern.search(message)
    )


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None
