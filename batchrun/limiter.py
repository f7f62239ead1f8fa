"""Pacing sends per endpoint × model.

Each (endpoint, model) key may have a requests-per-minute limit, paced at rpm/60 requests a
second from the first request (a bucket of one, so there is no start-up burst), and is
paused for the whole ``retry-after`` when the server answers 429. Time comes from the event
loop (aiolimiter reads ``loop.time()``), so tests run in virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from batchrun.policy import Outcome, Retryable

LimitKey = tuple[str, str]
"""(endpoint name, model)."""


@dataclass(frozen=True)
class RateLimits:
    """Limits of one endpoint × model, per minute; None means unlimited.

    ``tpm`` counts input + output tokens together (as Langdock does); ``itpm`` and ``otpm``
    count them separately (as Anthropic does).
    """

    rpm: float | None = None
    tpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None


class Limiter:
    """Waits until a key may send, and learns from the server's answers."""

    def __init__(
        self,
        limits: Mapping[LimitKey, RateLimits] | None = None,
        *,
        default: RateLimits | None = None,
    ) -> None:
        self._limits = dict(limits or {})
        self._default = default or RateLimits()
        self._pacers: dict[LimitKey, AsyncLimiter | None] = {}
        self._paused_until: dict[LimitKey, float] = {}

    def limits_for(self, key: LimitKey) -> RateLimits:
        """The configured limits of a key (its own, else the default)."""
        return self._limits.get(key, self._default)

    async def acquire(self, key: LimitKey) -> None:
        """Wait until ``key`` may send one request."""
        loop = asyncio.get_running_loop()
        # A later 429 may extend the pause while we sleep, hence the loop.
        while (until := self._paused_until.get(key, 0.0)) > loop.time():  # noqa: ASYNC110
            await asyncio.sleep(until - loop.time())
        pacer = self._pacer(key)
        if pacer is not None:
            await pacer.acquire()

    def observe(self, key: LimitKey, outcome: Outcome) -> None:
        """Learn from an answer: a 429 pauses the key for its retry-after."""
        if isinstance(outcome, Retryable) and outcome.http_status == 429:
            wait_s = outcome.retry_after_s if outcome.retry_after_s is not None else 1.0
            until = asyncio.get_running_loop().time() + wait_s
            self._paused_until[key] = max(self._paused_until.get(key, 0.0), until)

    def _pacer(self, key: LimitKey) -> AsyncLimiter | None:
        if key not in self._pacers:
            rpm = self.limits_for(key).rpm
            self._pacers[key] = AsyncLimiter(1, 60.0 / rpm) if rpm else None
        return self._pacers[key]
