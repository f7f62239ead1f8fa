"""What the server says about its rate limits: ``anthropic-ratelimit-*`` headers and 429s.

Pure parsing; the limiter decides what to do with it. Which headers and which words name
which limit comes from the dimension registry (:mod:`batchrun.limits.dimensions`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from datetime import datetime

from batchrun.limits.dimensions import DIMENSIONS
from batchrun.records import ServerLimits

_PREFIX = "anthropic-ratelimit-"


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
    if not (limits or remaining or reset_at):
        return None
    return ServerLimits(limits, remaining, reset_at)


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
