"""What the server says about its rate limits: ``anthropic-ratelimit-*`` headers and 429s.

Pure parsing; the limiter decides what to do with it. Dimensions are named as in
:class:`batchrun.limiter.RateLimits`: ``rpm``, ``tpm`` (input + output), ``itpm``, ``otpm``.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

DIMENSIONS = ("rpm", "tpm", "itpm", "otpm")
_HEADER_DIMENSION = {
    "requests": "rpm",
    "tokens": "tpm",
    "input-tokens": "itpm",
    "output-tokens": "otpm",
}
_PREFIX = "anthropic-ratelimit-"
# How 429 messages name the limit that was hit ("... of 30,000 input tokens per minute").
_MESSAGE_PATTERNS = (
    (re.compile(r"input tokens per minute", re.IGNORECASE), "itpm"),
    (re.compile(r"output tokens per minute", re.IGNORECASE), "otpm"),
    (re.compile(r"(?<!input )(?<!output )tokens per minute", re.IGNORECASE), "tpm"),
    (re.compile(r"requests per minute", re.IGNORECASE), "rpm"),
)


@dataclass(frozen=True)
class ServerLimits:
    """The limits, remaining capacity and reset times a response announced, per dimension."""

    limits: dict[str, float] = field(default_factory=dict)
    remaining: dict[str, float] = field(default_factory=dict)
    reset_at: dict[str, datetime] = field(default_factory=dict)

    def exhausted(self) -> set[str]:
        """Dimensions with nothing left."""
        return {dim for dim, left in self.remaining.items() if left <= 0}

    def wait_s(self, now: datetime) -> float | None:
        """Seconds until the exhausted limits (else all announced ones) reset, if announced."""
        dims = self.exhausted() or set(self.reset_at)
        waits = [(self.reset_at[d] - now).total_seconds() for d in dims if d in self.reset_at]
        return max(min(waits), 0.0) if waits else None


def parse_server_limits(headers: Mapping[str, str]) -> ServerLimits | None:
    """The ``anthropic-ratelimit-*`` headers of a response, or None if it has none."""
    limits: dict[str, float] = {}
    remaining: dict[str, float] = {}
    reset_at: dict[str, datetime] = {}
    for name, dim in _HEADER_DIMENSION.items():
        limit = _number(headers.get(f"{_PREFIX}{name}-limit"))
        if limit is not None and limit > 0:
            limits[dim] = limit
        left = _number(headers.get(f"{_PREFIX}{name}-remaining"))
        if left is not None:
            remaining[dim] = left
        reset = headers.get(f"{_PREFIX}{name}-reset")
        if reset:
            with contextlib.suppress(ValueError):
                reset_at[dim] = datetime.fromisoformat(reset.replace("Z", "+00:00"))
    if not (limits or remaining or reset_at):
        return None
    return ServerLimits(limits, remaining, reset_at)


def dimensions_named(message: str) -> set[str]:
    """The limits a 429's message says were exceeded."""
    return {dim for pattern, dim in _MESSAGE_PATTERNS if pattern.search(message)}


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None
