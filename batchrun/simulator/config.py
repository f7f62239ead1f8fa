"""Settings of the simulated Messages API: rate limits, latency, faults, batches, caching.

Everything is a frozen dataclass with units in the field names. The defaults describe a
perfect server: unlimited, zero latency, no faults, 40 output tokens per reply; batches end
two seconds after their creation; prompt caching as Anthropic documents it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

DEFAULT_OUTPUT_TOKENS = 40
# Seconds between the pings of a streamed answer that is waiting (for its first token, or
# for a slow one), so a proxy's idle timeout does not cut it.
DEFAULT_STREAM_PING_INTERVAL_S = 1.0
DEFAULT_BURST_S = 60.0
DEFAULT_LOG_SIZE = 1000
# The model key whose limits apply to every model without its own entry.
ANY_MODEL = "*"
# Message Batches: time from creation to the end of processing, and from a cancel to the end
# (both on the event-loop clock); requests processed at once (see simulator.batches).
DEFAULT_BATCH_PROCESSING_S = 2.0
DEFAULT_BATCH_CANCEL_S = 0.5
DEFAULT_BATCH_CONCURRENCY = 50
# Anthropic's limits per batch: 100,000 requests or 256 MB (taken as 256,000,000 bytes).
DEFAULT_BATCH_MAX_REQUESTS = 100_000
DEFAULT_BATCH_MAX_BYTES = 256_000_000
# Prompt caching: shorter prefixes are neither written nor read (Anthropic: 1024 for most
# models, more for some).
DEFAULT_CACHE_MIN_TOKENS = 1024

OtpmCounting = Literal["actual", "max_tokens"]
TpmCounting = Literal["actual", "max_tokens"]


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """Per-minute limits of one model; ``None`` leaves that dimension unlimited.

    Each limit is a token bucket holding ``limit * burst_s / 60`` units and refilling
    continuously at ``limit / 60`` per second, starting full. ``burst_s=60`` lets a whole
    minute's allowance go at once; ``burst_s=2`` allows only two seconds' worth.
    ``tpm`` is a combined input + output limit, as gateways such as Langdock publish.
    With ``fixed_window_s`` each limit counts instead in fixed windows of that many seconds,
    as LiteLLM's proxy does: a window starts with the first request after the previous one
    ended and admits ``limit * fixed_window_s / 60`` units, then refuses until it ends.
    """

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    tpm: int | None = None
    burst_s: float = DEFAULT_BURST_S
    fixed_window_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "itpm", "otpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"ModelLimits.{name} must be a positive integer or None")
        if not (self.burst_s > 0 and math.isfinite(self.burst_s)):
            raise ValueError("ModelLimits.burst_s must be a positive number of seconds")
        window_s = self.fixed_window_s
        if window_s is not None and not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError("ModelLimits.fixed_window_s must be a positive number of seconds")

    @property
    def is_unlimited(self) -> bool:
        """True when no dimension has a limit."""
        return self.rpm is None and self.itpm is None and self.otpm is None and self.tpm is None


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probabilities (0–1, summing to at most 1) of random faults per message request.

    ``error_500`` and ``overloaded_529`` answer before the rate limiter looks at the request;
    ``hang`` (never answer), ``cut`` (drop the connection mid-body; a streamed answer after
    half its events) and ``malformed`` (200 with a body that is not JSON; a stream with an
    event that is not) happen after it, so the request has used up its limits.
    ``stream_cut`` cuts streamed answers only, after half their events; a non-streamed
    answer that draws it is not affected.
    """

    error_500: float = 0.0
    overloaded_529: float = 0.0
    hang: float = 0.0
    cut: float = 0.0
    malformed: float = 0.0
    stream_cut: float = 0.0

    def __post_init__(self) -> None:
        rates = (
            self.error_500,
            self.overloaded_529,
            self.hang,
            self.cut,
            self.malformed,
            self.stream_cut,
        )
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError("FaultRates values must be probabilities between 0 and 1")
        if sum(rates) > 1.0 + 1e-9:
            raise ValueError("FaultRates values must sum to at most 1")

    @property
    def total(self) -> float:
        """The probability that some fault happens."""
        return (
            self.error_500
            + self.overloaded_529
            + self.hang
            + self.cut
            + self.malformed
            + self.stream_cut
        )


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulated API behaves.

    - ``limits``: per-model limits keyed by model name; the ``"*"`` entry applies to every
      other model, each of which gets its own buckets. Empty means unlimited.
    - ``otpm_counts``: ``"actual"`` (current Anthropic rule) admits a request while the
      output bucket is not exhausted and charges the actual output when the reply is made,
      which may overdraw the bucket; ``"max_tokens"`` (the older rule) needs ``max_tokens``
      available, reserves it and refunds the unused part when the reply is made.
    - ``tpm_counts``: ``"actual"`` charges the TPM bucket input + the actual output;
      ``"max_tokens"`` charges input + ``max_tokens`` when it admits the request and never
      gives back what the reply did not use (as llmock and some gateways count).
    - ``admit_after_latency``: check and charge the limits when the answer is ready, after
      the latency, not when the request arrives (llmock's way: the ``-remaining`` headers
      never show the requests in flight). Streamed requests are admitted on arrival.
    - ``output_tokens``: reply length unless a directive says otherwise (capped by
      ``max_tokens``).
    - ``latency_s`` + uniform ``[0, latency_jitter_s)`` + ``latency_per_output_token_s`` per
      output token: the time before a reply. A streamed reply (``"stream": true``) spreads
      it: the fixed part and the jitter before the first token, then the tokens over time.
    - ``idle_timeout_s``: drop the connection of an answer that sends no bytes for this
      long, as proxies do: a non-streamed answer slower than this is cut after it (no
      answer at all); a streamed one survives on its events and pings, sent at least every
      ``stream_ping_interval_s``. ``None``: never.
    - ``seed``: seeds fault draws, jitter and generated ids (``None``: unpredictable).
    - ``required_api_key``: when set, requests must carry it (``x-api-key`` or
      ``Authorization: Bearer``). It is never shown by ``repr`` nor sent back.
    - ``log_size``: how many recent requests :class:`SimulatorStats` keeps;
      ``log_messages``: whether its entries keep the Message answered (streamed or not).
    - Message Batches (``simulator.batches``): the provider starts a batch
      ``batch_start_s`` after its creation (the wait in its queue) and ends it
      ``batch_processing_s`` later, or ``batch_cancel_s`` after a cancel if that comes
      first; it processes its requests ``batch_concurrency`` at a time, in parallel; a
      share ``batch_expired_rate`` of its requests ends ``expired``; a create with more
      than ``batch_max_requests`` requests is a 400, a body over ``batch_max_bytes`` a 413.
    - ``cache_min_tokens``: prompt-cache prefixes shorter than this are neither written nor
      read (``simulator.caching``); ``cache_ttl_scale`` multiplies the cache's lifetimes
      (5 minutes and 1 hour; tests make them seconds).
    - ``wall_clock``: the time of day for the batches' ``created_at`` and other timestamps
      (``None``: ``datetime.now(UTC)``); tests pass a fixed one. Every delay still runs on
      the event-loop clock.
    """

    limits: Mapping[str, ModelLimits] = field(default_factory=dict)
    otpm_counts: OtpmCounting = "actual"
    tpm_counts: TpmCounting = "actual"
    admit_after_latency: bool = False
    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    latency_per_output_token_s: float = 0.0
    faults: FaultRates = field(default_factory=FaultRates)
    seed: int | None = None
    send_ratelimit_headers: bool = True
    send_retry_after: bool = True
    required_api_key: str | None = field(default=None, repr=False)
    log_size: int = DEFAULT_LOG_SIZE
    log_messages: bool = False
    idle_timeout_s: float | None = None
    stream_ping_interval_s: float = DEFAULT_STREAM_PING_INTERVAL_S
    batch_processing_s: float = DEFAULT_BATCH_PROCESSING_S
    batch_start_s: float = 0.0
    batch_cancel_s: float = DEFAULT_BATCH_CANCEL_S
    batch_concurrency: int = DEFAULT_BATCH_CONCURRENCY
    batch_expired_rate: float = 0.0
    batch_max_requests: int = DEFAULT_BATCH_MAX_REQUESTS
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    cache_min_tokens: int = DEFAULT_CACHE_MIN_TOKENS
    cache_ttl_scale: float = 1.0
    wall_clock: Callable[[], datetime] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.otpm_counts not in ("actual", "max_tokens"):
            raise ValueError("SimulatorConfig.otpm_counts must be 'actual' or 'max_tokens'")
        if self.tpm_counts not in ("actual", "max_tokens"):
            raise ValueError("SimulatorConfig.tpm_counts must be 'actual' or 'max_tokens'")
        if self.output_tokens < 0:
            raise ValueError("SimulatorConfig.output_tokens must not be negative")
        latencies = (self.latency_s, self.latency_jitter_s, self.latency_per_output_token_s)
        if any(not (value >= 0 and math.isfinite(value)) for value in latencies):
            raise ValueError("SimulatorConfig latencies must be finite and not negative")
        if self.log_size < 0:
            raise ValueError("SimulatorConfig.log_size must not be negative")
        if self.idle_timeout_s is not None and not (
            self.idle_timeout_s > 0 and math.isfinite(self.idle_timeout_s)
        ):
            raise ValueError("SimulatorConfig.idle_timeout_s must be a positive number or None")
        if not (self.stream_ping_interval_s > 0 and math.isfinite(self.stream_ping_interval_s)):
            raise ValueError("SimulatorConfig.stream_ping_interval_s must be positive")
        batch_delays = (self.batch_processing_s, self.batch_start_s, self.batch_cancel_s)
        if any(not (value >= 0 and math.isfinite(value)) for value in batch_delays):
            raise ValueError("SimulatorConfig batch delays must be finite and not negative")
        if not 0.0 <= self.batch_expired_rate <= 1.0:
            raise ValueError("SimulatorConfig.batch_expired_rate must be between 0 and 1")
        positive = ("batch_concurrency", "batch_max_requests", "batch_max_bytes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"SimulatorConfig.{name} must be at least 1")
        if self.cache_min_tokens < 0:
            raise ValueError("SimulatorConfig.cache_min_tokens must not be negative")
        if not (self.cache_ttl_scale > 0 and math.isfinite(self.cache_ttl_scale)):
            raise ValueError("SimulatorConfig.cache_ttl_scale must be positive")

    def limits_for(self, model: str) -> ModelLimits | None:
        """The limits that apply to ``model``, or ``None`` when it is unlimited."""
        limits = self.limits.get(model) or self.limits.get(ANY_MODEL)
        if limits is None or limits.is_unlimited:
            return None
        return limits

    @classmethod
    def from_options(
        cls,
        *,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        tpm: int | None = None,
        burst_s: float = DEFAULT_BURST_S,
        fixed_window_s: float | None = None,
        latency_s: float = 0.0,
        latency_jitter_s: float = 0.0,
        latency_per_output_token_s: float = 0.0,
        output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        error_500: float = 0.0,
        overloaded_529: float = 0.0,
        hang: float = 0.0,
        cut: float = 0.0,
        malformed: float = 0.0,
        stream_cut: float = 0.0,
        seed: int | None = None,
        required_api_key: str | None = None,
        send_ratelimit_headers: bool = True,
        send_retry_after: bool = True,
        idle_timeout_s: float | None = None,
        stream_ping_interval_s: float = DEFAULT_STREAM_PING_INTERVAL_S,
        log_size: int = DEFAULT_LOG_SIZE,
        log_messages: bool = False,
        batch_processing_s: float = DEFAULT_BATCH_PROCESSING_S,
        batch_start_s: float = 0.0,
        batch_expired_rate: float = 0.0,
        batch_cancel_s: float = DEFAULT_BATCH_CANCEL_S,
        batch_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        cache_min_tokens: int = DEFAULT_CACHE_MIN_TOKENS,
        cache_ttl_scale: float = 1.0,
    ) -> SimulatorConfig:
        """Build a config from flat command-line values; the limits apply to every model."""
        limits = ModelLimits(
            rpm=rpm, itpm=itpm, otpm=otpm, tpm=tpm, burst_s=burst_s, fixed_window_s=fixed_window_s
        )
        return cls(
            limits={} if limits.is_unlimited else {ANY_MODEL: limits},
            output_tokens=output_tokens,
            latency_s=latency_s,
            latency_jitter_s=latency_jitter_s,
            latency_per_output_token_s=latency_per_output_token_s,
            faults=FaultRates(
                error_500=error_500,
                overloaded_529=overloaded_529,
                hang=hang,
                cut=cut,
                malformed=malformed,
                stream_cut=stream_cut,
            ),
            seed=seed,
            required_api_key=required_api_key,
            send_ratelimit_headers=send_ratelimit_headers,
            send_retry_after=send_retry_after,
            idle_timeout_s=idle_timeout_s,
            stream_ping_interval_s=stream_ping_interval_s,
            log_size=log_size,
            log_messages=log_messages,
            batch_processing_s=batch_processing_s,
            batch_start_s=batch_start_s,
            batch_expired_rate=batch_expired_rate,
            batch_cancel_s=batch_cancel_s,
            batch_concurrency=batch_concurrency,
            cache_min_tokens=cache_min_tokens,
            cache_ttl_scale=cache_ttl_scale,
        )
