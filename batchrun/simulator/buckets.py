"""Continuously refilling token buckets, one set per model, as Anthropic describes them.

A limit of ``L`` per minute with a burst of ``burst_s`` seconds is a bucket of capacity
``L * burst_s / 60`` that refills at ``L / 60`` per second and starts full. A request is
admitted only if every bucket of its model has room for it:

- requests (RPM): 1;
- input tokens (ITPM): the request's input tokens except those read from the prompt cache
  (``cache_read_input_tokens`` do not count, ``cache_creation_input_tokens`` do, as Anthropic
  documents for current models);
- tokens (TPM, combined): the same input tokens + output tokens. The simulator knows the
  reply length before replying, so it asks for the actual output up front rather than
  estimating it; with ``tpm_counts="max_tokens"``, input tokens + ``max_tokens``, never
  reconciled with the reply (llmock's way);
- output tokens (OTPM): with ``otpm_counts="actual"`` only that the bucket is not exhausted
  (1 token), the actual output being charged when the reply is made, which may overdraw
  the bucket; with ``"max_tokens"``, ``max_tokens`` is needed and reserved, and the unused
  part refunded when the reply is made.

A request that needs more than a bucket's whole capacity can never be admitted; it gets a
429 like any other, with a message saying so and the ``retry-after`` of a full refill.

With a fixed window (``ModelLimits.fixed_window_s``, LiteLLM's way) a bucket is full at the
start of each window, which begins with the first request after the previous one ended, and
does not refill within it.

Every time is a reading of the event-loop clock passed in by the caller.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from batchrun.simulator.config import ModelLimits, OtpmCounting, SimulatorConfig, TpmCounting

# Float slack, so that a bucket refilled for exactly the right time counts as having room.
_EPSILON = 1e-6
RATE_LIMITS_DOC_URL = "https://docs.claude.com/en/api/rate-limits"


class TokenBucket:
    """One limit: ``level`` units out of ``capacity``, refilling at ``rate_per_s``."""

    __slots__ = (
        "capacity",
        "level",
        "limit_per_min",
        "rate_per_s",
        "updated_at",
        "window_s",
        "window_started_at",
    )

    def __init__(
        self, limit_per_min: int, burst_s: float, now: float, window_s: float | None = None
    ) -> None:
        self.limit_per_min = limit_per_min
        self.rate_per_s = limit_per_min / 60.0
        self.capacity = limit_per_min * (burst_s if window_s is None else window_s) / 60.0
        self.level = self.capacity
        self.updated_at = now
        self.window_s = window_s
        self.window_started_at = now

    def refill(self, now: float) -> None:
        """Add what has flowed in since the last refill, up to the capacity (with a fixed
        window: all of it, once the window has ended)."""
        if self.window_s is not None:
            if now - self.window_started_at >= self.window_s:
                self.level, self.window_started_at = self.capacity, now
            self.updated_at = max(self.updated_at, now)
            return
        if now > self.updated_at:
            self.level = min(self.capacity, self.level + (now - self.updated_at) * self.rate_per_s)
        self.updated_at = now

    def has_room(self, amount: float) -> bool:
        """Whether ``amount`` can be taken now."""
        return self.level + _EPSILON >= amount

    def seconds_until(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (``inf`` if it exceeds the capacity)."""
        if amount > self.capacity + _EPSILON:
            return math.inf
        if self.window_s is not None:
            if self.level + _EPSILON >= amount:
                return 0.0
            return self.seconds_to_full()
        return max(0.0, (amount - self.level) / self.rate_per_s)

    def seconds_to_full(self) -> float:
        """Seconds until the bucket is full again."""
        if self.window_s is not None:
            if self.level >= self.capacity:
                return 0.0
            return max(0.0, self.window_started_at + self.window_s - self.updated_at)
        return max(0.0, (self.capacity - self.level) / self.rate_per_s)

    @property
    def remaining(self) -> int:
        """Whole units available now, never negative."""
        return max(0, math.floor(self.level + _EPSILON))


# Names used in messages and in the ``anthropic-ratelimit-<name>-*`` headers.
_UNITS = {
    "requests": "requests",
    "input-tokens": "input tokens",
    "output-tokens": "output tokens",
    "tokens": "tokens",
}


@dataclass(slots=True)
class ModelBuckets:
    """The buckets of one model; ``None`` where that dimension is unlimited."""

    model: str
    limits: ModelLimits
    requests: TokenBucket | None
    input_tokens: TokenBucket | None
    output_tokens: TokenBucket | None
    tokens: TokenBucket | None

    @classmethod
    def full(cls, model: str, limits: ModelLimits, now: float) -> ModelBuckets:
        """Full buckets for ``limits``."""

        def bucket(limit: int | None) -> TokenBucket | None:
            if limit is None:
                return None
            return TokenBucket(limit, limits.burst_s, now, limits.fixed_window_s)

        return cls(
            model,
            limits,
            bucket(limits.rpm),
            bucket(limits.itpm),
            bucket(limits.otpm),
            bucket(limits.tpm),
        )

    def named(self) -> list[tuple[str, TokenBucket]]:
        """The existing buckets with their header names."""
        pairs = (
            ("requests", self.requests),
            ("input-tokens", self.input_tokens),
            ("output-tokens", self.output_tokens),
            ("tokens", self.tokens),
        )
        return [(name, bucket) for name, bucket in pairs if bucket is not None]

    def refill(self, now: float) -> None:
        """Refill every bucket up to ``now``."""
        for _, bucket in self.named():
            bucket.refill(now)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was not admitted, and when it could be."""

    model: str
    name: str
    limit_per_min: int
    needed: float
    capacity: float
    wait_s: float
    never: bool

    @property
    def retry_after_s(self) -> int:
        """Whole seconds to wait, at least 1."""
        return max(1, math.ceil(self.wait_s - _EPSILON))

    @property
    def message(self) -> str:
        """An Anthropic-style ``rate_limit_error`` message naming the limit."""
        unit = _UNITS[self.name]
        if self.never:
            return (
                f"This request needs {math.ceil(self.needed):,} {unit}, more than the "
                f"{math.floor(self.capacity):,} {unit} that the rate limit of "
                f"{self.limit_per_min:,} {unit} per minute for model {self.model} allows at "
                f"once, so it can never be admitted. Please reduce the prompt length or the "
                f"maximum tokens requested. For details, refer to: {RATE_LIMITS_DOC_URL}."
            )
        return (
            f"This request would exceed the rate limit for your organization of "
            f"{self.limit_per_min:,} {unit} per minute for model {self.model}. For details, "
            f"refer to: {RATE_LIMITS_DOC_URL}. You can see the response headers for current "
            f"usage. Please reduce the prompt length or the maximum tokens requested, or try "
            f"again later."
        )


class RateLimiter:
    """The buckets of every model, created full on a model's first request."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._otpm_counts: OtpmCounting = config.otpm_counts
        self._tpm_counts: TpmCounting = config.tpm_counts
        self._buckets: dict[str, ModelBuckets | None] = {}

    def buckets_for(self, model: str, now: float) -> ModelBuckets | None:
        """The buckets of ``model``, or ``None`` if it is unlimited."""
        try:
            return self._buckets[model]
        except KeyError:
            limits = self._config.limits_for(model)
            buckets = None if limits is None else ModelBuckets.full(model, limits, now)
            self._buckets[model] = buckets
            return buckets

    def reset(self) -> None:
        """Forget every bucket, so each model starts full again."""
        self._buckets.clear()

    def rebase(self, now: float) -> None:
        """Restart every bucket's clock at ``now`` (after moving to another event loop)."""
        for buckets in self._buckets.values():
            if buckets is not None:
                for _, bucket in buckets.named():
                    bucket.updated_at = now

    def admit(
        self,
        buckets: ModelBuckets,
        now: float,
        *,
        input_tokens: int,
        output_tokens: int,
        max_tokens: int,
        cache_read_input_tokens: int = 0,
    ) -> Rejection | None:
        """Take what the request needs from every bucket, or return why it cannot.

        ``input_tokens`` is the whole input, ``cache_read_input_tokens`` the part of it read
        from the prompt cache, which no bucket counts."""
        buckets.refill(now)
        input_tokens -= cache_read_input_tokens
        output_needed = 1 if self._otpm_counts == "actual" else max_tokens
        charged = input_tokens + (output_tokens if self._tpm_counts == "actual" else max_tokens)
        needs = (
            (buckets.requests, "requests", 1),
            (buckets.input_tokens, "input-tokens", input_tokens),
            (buckets.output_tokens, "output-tokens", output_needed),
            (buckets.tokens, "tokens", charged),
        )
        rejection: Rejection | None = None
        for bucket, name, needed in needs:
            if bucket is None or bucket.has_room(needed):
                continue
            wait_s = bucket.seconds_until(needed)
            never = math.isinf(wait_s)
            if never:
                wait_s = bucket.capacity / bucket.rate_per_s
            if rejection is None or (never, wait_s) > (rejection.never, rejection.wait_s):
                rejection = Rejection(
                    buckets.model,
                    name,
                    bucket.limit_per_min,
                    needed,
                    bucket.capacity,
                    wait_s,
                    never,
                )
        if rejection is not None:
            return rejection
        if buckets.requests is not None:
            buckets.requests.level -= 1
        if buckets.input_tokens is not None:
            buckets.input_tokens.level -= input_tokens
        if buckets.tokens is not None:
            buckets.tokens.level -= charged
        if buckets.output_tokens is not None and self._otpm_counts == "max_tokens":
            buckets.output_tokens.level -= max_tokens
        return None

    def settle_output(
        self, buckets: ModelBuckets, now: float, *, output_tokens: int, max_tokens: int
    ) -> None:
        """Charge the actual output of an admitted request, or refund its unused reservation."""
        bucket = buckets.output_tokens
        if bucket is None:
            return
        bucket.refill(now)
        if self._otpm_counts == "actual":
            bucket.level -= output_tokens
        else:
            bucket.level = min(bucket.capacity, bucket.level + max_tokens - output_tokens)

    @staticmethod
    def headers(buckets: ModelBuckets, now: float, wall_now: float) -> list[tuple[bytes, bytes]]:
        """``anthropic-ratelimit-*`` headers for the current state of ``buckets``.

        ``remaining`` is exact (Anthropic rounds token counts to thousands). ``tokens-*``
        describes the most restrictive token bucket: the one with the fewest tokens left.
        """
        buckets.refill(now)
        named = buckets.named()
        # Ties go to the combined bucket, then input, then output.
        token_buckets = [
            bucket
            for bucket in (buckets.tokens, buckets.input_tokens, buckets.output_tokens)
            if bucket is not None
        ]
        headers: list[tuple[bytes, bytes]] = []
        for name, bucket in named:
            if name == "tokens":
                continue
            headers.extend(_bucket_headers(name, bucket, wall_now))
        if token_buckets:
            tightest = min(token_buckets, key=lambda bucket: bucket.remaining)
            headers.extend(_bucket_headers("tokens", tightest, wall_now))
        return headers


def _bucket_headers(name: str, bucket: TokenBucket, wall_now: float) -> list[tuple[bytes, bytes]]:
    prefix = f"anthropic-ratelimit-{name}-"
    return [
        ((prefix + "limit").encode(), str(bucket.limit_per_min).encode()),
        ((prefix + "remaining").encode(), str(bucket.remaining).encode()),
        ((prefix + "reset").encode(), rfc3339(wall_now + bucket.seconds_to_full()).encode()),
    ]


def rfc3339(wall_s: float) -> str:
    """A Unix time as RFC 3339 UTC, rounded up to the whole second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(wall_s)))
