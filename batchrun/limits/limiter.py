"""Pacing sends per endpoint × model: RPM, TPM, ITPM and OTPM buckets that learn.

For every endpoint × model the limiter keeps one continuously refilling bucket per limit in
force (:mod:`batchrun.limits.buckets`), all starting empty, so sends are paced at the refill rate
from the first request. A request waits its turn (first come, first served), reserves what it
may cost in every bucket, and after the response the reservation is corrected with the real
``usage`` (reserve, then reconcile):

- requests: 1;
- input tokens (ITPM): the calibrated input estimate; corrected to ``input_tokens +
  cache_creation_input_tokens`` (cache reads do not count, as with Anthropic's ITPM);
- output tokens (OTPM): ``max_tokens`` or a learned estimate (``output_reservation``);
  corrected to ``output_tokens``;
- tokens (TPM, input + output together, as Langdock counts): the sum of the two.

The limit in force is the lowest of the configured one, the one the server announces in
``anthropic-ratelimit-*-limit`` headers, and a learned one. A 429 pauses the endpoint × model
for its whole ``retry-after`` and lowers the learned limit to what the server actually let
through (or by a quarter when there is too little history), then the learned limit creeps back
up while no 429 comes, so a configured limit above the server's converges on the server's
instead of oscillating in 429 storms. A 529 (overloaded) pauses with its own exponential
back-off and leaves the limits alone. Time is the event loop's; tests run in virtual time.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from batchrun.limits.banks import Bank, LocalBank
from batchrun.limits.buckets import DEFAULT_BURST_S
from batchrun.limits.dimensions import DIMENSIONS, Amounts, RateLimits
from batchrun.limits.learning import InputCalibration, OutputEstimate
from batchrun.limits.windows import RecentValues
from batchrun.records import Fatal, Halt, Outcome, Retryable, ServerLimits, Succeeded

log = logging.getLogger(__name__)

LimitKey = tuple[str, str]
"""(endpoint name, model)."""
ANY_MODEL = "*"
OutputReservation = Literal["learned", "max_tokens"]

# A 429 without retry-after (nor reset headers) pauses this long, doubling while they repeat.
DEFAULT_429_PAUSE_S = 1.0
MAX_DEFAULT_429_PAUSE_S = 30.0
# 529 overloaded: pause 1 s, 2 s, 4 s ... per endpoint × model while they repeat.
OVERLOAD_PAUSE_S = 1.0
MAX_OVERLOAD_PAUSE_S = 30.0
# Learning a lower limit from 429s.
MEASURE_WINDOW_S = 20.0
MIN_MEASURE_S = 8.0
DECREASE_TO_MEASURED = 0.97
DECREASE_BLIND = 0.75
DECREASE_COOLDOWN_S = 2.0
# Announced and learned limits never go below this share of the configured limit (or, with
# none configured, this many a minute): a server's absurd announcement cannot stall a run.
MIN_SHARE_OF_CONFIGURED = 0.01
MIN_LIMIT_PER_MIN = 1.0
# A pause this long is said in the log and in progress, with its reason.
LONG_PAUSE_S = 60.0
# ... and creeping back up: this share of the ceiling every interval without a 429.
INCREASE_INTERVAL_S = 2.0
INCREASE_SHARE = 0.01


@dataclass(frozen=True)
class LimiterSettings:
    """How the limiter reserves and bursts."""

    burst_s: float = DEFAULT_BURST_S
    output_reservation: OutputReservation = "learned"


@dataclass(frozen=True)
class Demand:
    """What a request may cost: its raw input estimate and its max_tokens."""

    raw_input_tokens: int
    max_tokens: int


@dataclass
class Permit:
    """A granted turn: what was reserved, to be reconciled by :meth:`Limiter.settle`."""

    key: LimitKey
    demand: Demand
    input_estimate: int
    reserved: dict[str, float]
    # What the reservation stands for, whichever limits are in force.
    amounts: Amounts = field(default_factory=Amounts)


@dataclass(frozen=True)
class Wait:
    """An endpoint × model held back for ``seconds`` more, and why."""

    endpoint: str
    model: str
    seconds: float
    reason: str


@dataclass
class _KeyState:
    configured: RateLimits
    announced: dict[str, float] = field(default_factory=dict)
    learned: dict[str, float] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    consecutive_429s: int = 0
    consecutive_overloads: int = 0
    last_decrease_at: float = -math.inf
    last_increase_at: float = 0.0
    first_admitted_at: float | None = None
    # What the server let through lately, to learn a lower limit from after a 429.
    admitted: RecentValues[dict[str, float]] = field(
        default_factory=lambda: RecentValues(MEASURE_WINDOW_S)
    )
    calibration: InputCalibration = field(default_factory=InputCalibration)
    outputs: OutputEstimate = field(default_factory=OutputEstimate)
    # The latest pause this worker set, and why: (until, loop time; reason).
    paused_until: float = -math.inf
    pause_reason: str = ""

    def limit(self, dimension: str) -> float | None:
        """The per-minute limit in force for a dimension, or None. What a server announces
        and what was learned never go below :meth:`floor`: a server announcing a limit of
        0.0001 a minute would otherwise stall the run for good."""
        floor = self.floor(dimension)
        heard = (self.announced.get(dimension), self.learned.get(dimension))
        found = [max(value, floor) for value in heard if value is not None]
        configured = self.configured.get(dimension)
        if configured is not None:
            found.append(configured)
        return min(found) if found else None

    def floor(self, dimension: str) -> float:
        """The lowest limit a server's word or learning can set: a share of the configured
        limit, or one a minute."""
        configured = self.configured.get(dimension)
        return configured * MIN_SHARE_OF_CONFIGURED if configured else MIN_LIMIT_PER_MIN

    def ceiling(self, dimension: str) -> float | None:
        """The limit without what was learned: where learning may climb back to."""
        candidates = [
            v for v in (self.configured.get(dimension), self.announced.get(dimension)) if v
        ]
        return min(candidates) if candidates else None


class Limiter:
    """Waits until an endpoint × model may send, and learns from the answers."""

    def __init__(
        self,
        limits: Mapping[LimitKey, RateLimits] | None = None,
        *,
        overrides: RateLimits | None = None,
        settings: LimiterSettings | None = None,
        bank: Bank | None = None,
    ) -> None:
        """``limits`` per (endpoint, model); (endpoint, "*") covers that endpoint's other
        models. ``overrides`` (command-line flags) win over both for every model. ``bank``
        holds the bucket levels: this worker's memory by default, or the database when
        several workers share the limits."""
        self._limits = dict(limits or {})
        self._overrides = overrides or RateLimits()
        self._settings = settings or LimiterSettings()
        self._bank: Bank = bank or LocalBank()
        self._states: dict[LimitKey, _KeyState] = {}

    @property
    def burst_s(self) -> float:
        """The buckets' size, in seconds of their limit."""
        return self._settings.burst_s

    def limits_for(self, key: LimitKey) -> RateLimits:
        """The configured limits of a key."""
        endpoint, _ = key
        base = self._limits.get(key) or self._limits.get((endpoint, ANY_MODEL)) or RateLimits()
        return self._overrides.merged_over(base)

    def limit_in_force(self, key: LimitKey, dimension: str) -> float | None:
        """The per-minute limit currently applied to a dimension of a key."""
        return self._state(key).limit(dimension)

    def input_estimate(self, key: LimitKey, raw_input_tokens: int) -> int:
        """The calibrated input estimate for a key."""
        return self._state(key).calibration.estimate(raw_input_tokens)

    def _state(self, key: LimitKey) -> _KeyState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _KeyState(configured=self.limits_for(key))
        return state

    # -- before a send ----------------------------------------------------------------------

    async def acquire(self, key: LimitKey, demand: Demand) -> Permit:
        """Wait for this key's turn, then reserve what the request may cost."""
        state = self._state(key)
        loop = asyncio.get_running_loop()
        async with state.lock:
            while True:
                now = loop.time()
                self._creep_up(state, now)
                input_estimate = state.calibration.estimate(demand.raw_input_tokens)
                amounts = Amounts(1.0, float(input_estimate), float(self._output(state, demand)))
                rates = self._rates(state)
                reserved = {name: DIMENSIONS.get(name).measure(amounts) for name in rates}
                wait_s = await self._bank.take(key, reserved, rates)
                if wait_s <= 0:
                    if state.first_admitted_at is None:
                        state.first_admitted_at = now
                    return Permit(key, demand, input_estimate, reserved, amounts)
                await asyncio.sleep(wait_s)

    def _output(self, state: _KeyState, demand: Demand) -> int:
        """Output tokens to reserve: max_tokens, or what replies were learned to take."""
        if self._settings.output_reservation == "max_tokens":
            return demand.max_tokens
        return state.outputs.reserve(demand.max_tokens)

    def _rates(self, state: _KeyState) -> dict[str, tuple[float, float]]:
        """Rate per second and bucket capacity of every limit in force."""
        rates = {}
        for dimension in DIMENSIONS.names():
            limit = state.limit(dimension)
            if limit is not None:
                rate_per_s = limit / 60.0
                rates[dimension] = (rate_per_s, rate_per_s * self._settings.burst_s)
        return rates

    # -- after a send -----------------------------------------------------------------------

    def settle(self, permit: Permit, outcome: Outcome) -> None:
        """Reconcile the reservation with what the answer says, and learn from it."""
        state = self._state(permit.key)
        now = asyncio.get_running_loop().time()
        match outcome:
            case Succeeded(usage=usage, server_limits=server_limits):
                actual = DIMENSIONS.measure_all(Amounts.of_usage(usage))
                self._correct(permit, actual)
                prompt = (
                    usage.input_tokens
                    + usage.cache_creation_input_tokens
                    + usage.cache_read_input_tokens
                )
                state.calibration.observe(permit.demand.raw_input_tokens, prompt)
                state.outputs.observe(usage.output_tokens)
                state.admitted.add(now, actual)
                state.consecutive_429s = 0
                state.consecutive_overloads = 0
                self._heed(permit.key, state, server_limits)
            case Retryable(http_status=429) as retry:
                # Refused before any work: nothing was consumed.
                self._correct(permit, {})
                self._heed(permit.key, state, retry.server_limits)
                self._rate_limited(permit.key, state, retry, now)
            case Retryable(http_status=529) as retry:
                self._correct(permit, {})
                state.consecutive_overloads += 1
                pause_s = min(
                    OVERLOAD_PAUSE_S * 2 ** (state.consecutive_overloads - 1),
                    MAX_OVERLOAD_PAUSE_S,
                )
                self._pause(permit.key, state, pause_s, "529 overloaded", now)
                self._heed(permit.key, state, retry.server_limits)
            case Retryable() as retry:
                # A 5xx or a lost connection may have been processed: keep the reservation.
                self._heed(permit.key, state, retry.server_limits)
            case Fatal() | Halt():
                self._correct(permit, {})

    def _correct(self, permit: Permit, actual: Mapping[str, float]) -> None:
        """Give back what was reserved but not used (``actual`` missing: nothing used)."""
        deltas = {
            dimension: reserved - actual.get(dimension, 0.0)
            for dimension, reserved in permit.reserved.items()
        }
        if deltas:
            self._bank.correct(permit.key, deltas)

    def _heed(self, key: LimitKey, state: _KeyState, server_limits: ServerLimits | None) -> None:
        """Adopt the limits the server announces, and never count on more than it has left."""
        if server_limits is None:
            return
        for dimension, limit in server_limits.limits.items():
            state.announced[dimension] = limit
        for dimension, remaining in server_limits.remaining.items():
            if state.limit(dimension) is not None:
                self._bank.clamp(key, dimension, remaining)

    def _pause(
        self, key: LimitKey, state: _KeyState, pause_s: float, reason: str, now: float
    ) -> None:
        self._bank.pause(key, pause_s)
        if now + pause_s > state.paused_until:
            state.paused_until, state.pause_reason = now + pause_s, reason
        if pause_s >= LONG_PAUSE_S:
            log.warning(
                "%s asks to wait %.0f s (%s) for %s; nothing is sent to it until then",
                key[0],
                pause_s,
                reason,
                key[1],
            )

    def waits(self) -> list[Wait]:
        """The endpoint × models this worker holds back now, and why (a retry-after, a 429,
        a 529), longest first."""
        now = asyncio.get_running_loop().time()
        found = [
            Wait(key[0], key[1], state.paused_until - now, state.pause_reason)
            for key, state in self._states.items()
            if state.paused_until > now
        ]
        return sorted(found, key=lambda wait: -wait.seconds)

    def _rate_limited(self, key: LimitKey, state: _KeyState, retry: Retryable, now: float) -> None:
        state.consecutive_429s += 1
        if retry.retry_after_s is not None:
            pause_s = retry.retry_after_s
        else:
            pause_s = min(
                DEFAULT_429_PAUSE_S * 2 ** (state.consecutive_429s - 1), MAX_DEFAULT_429_PAUSE_S
            )
        why = "retry-after" if retry.retry_after_s is not None else "a 429"
        self._pause(key, state, pause_s, why, now)
        state.last_increase_at = now
        if now - state.last_decrease_at < DECREASE_COOLDOWN_S:
            return  # the other 429s of the same burst say nothing new
        state.last_decrease_at = now
        exhausted = retry.server_limits.exhausted() if retry.server_limits else set()
        named = retry.limits_named
        active = {d for d in DIMENSIONS.names() if state.limit(d) is not None}
        for dimension in (named | exhausted) or active or {"rpm"}:
            self._lower(state, dimension, now)

    def _lower(self, state: _KeyState, dimension: str, now: float) -> None:
        """Learn a lower limit: what the server let through recently, when there is enough
        history; without it, a quarter less, unless the server announced its limit (then the
        429 came from a burst, and the pause and the remaining-capacity clamp suffice)."""
        current = state.limit(dimension)
        measured = self._measured_per_minute(state, dimension, now)
        if measured is not None and measured > 0:
            lowered = measured * DECREASE_TO_MEASURED
            if current is not None:
                lowered = min(lowered, current * DECREASE_TO_MEASURED)
        elif current is not None and dimension not in state.announced:
            lowered = current * DECREASE_BLIND
        else:
            return
        state.learned[dimension] = max(lowered, 1.0)

    def _measured_per_minute(self, state: _KeyState, dimension: str, now: float) -> float | None:
        """What the server let through per minute recently, if there is enough history."""
        if state.first_admitted_at is None:
            return None
        span_s = min(MEASURE_WINDOW_S, now - state.first_admitted_at)
        if span_s < MIN_MEASURE_S:
            return None
        total = sum(costs.get(dimension, 0.0) for costs in state.admitted.at(now))
        return total * 60.0 / span_s

    def _creep_up(self, state: _KeyState, now: float) -> None:
        if not state.learned or now - state.last_increase_at < INCREASE_INTERVAL_S:
            return
        state.last_increase_at = now
        for dimension, learned in list(state.learned.items()):
            ceiling = state.ceiling(dimension)
            step = INCREASE_SHARE * (ceiling if ceiling is not None else learned)
            if ceiling is not None and learned + step >= ceiling:
                del state.learned[dimension]
            else:
                state.learned[dimension] = learned + step
