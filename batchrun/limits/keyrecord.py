"""What the workers of one database share about an endpoint × model, and how it changes.

A :class:`KeyRecord` holds, for one limiter key: a bucket per limit in force, the pause a 429
or 529 set, per limit the one the server announced and a lower one learned from 429s, what
the server let through lately (to learn from), and the start-up ramp. It is pure: times are
passed in. Both banks run this code: :class:`~batchrun.limits.banks.LocalBank` on the one
record of one worker, in memory; ``batchrun.store.rates`` inside one database transaction per
take, on the record every worker of the database reads and writes. So what one worker learns
applies to all of them at their next take, and what happens with time (the learned limit
creeping back up, the ramp) is one function of the shared record and the clock: it happens
once for the cluster, at the same pace whatever the number of workers.

Rules, all per endpoint × model:

- **Limit in force** per dimension: the lowest of the configured limit (the worker's config
  file and flags), the announced one and the learned one; the last two never below a floor
  (1 % of the configured limit, or 1 a minute), so a server's absurd figure cannot stall a run.
- **Learning from a 429.** A 429 lowers the learned limit of the limits it names (or that the
  headers show exhausted; else every limit in force; else requests) to 97 % of what the server
  let through lately, when there are :data:`MIN_MEASURE_S` of history; with less, by a quarter,
  unless the server announced that limit (then the 429 came from a burst, and the pause and the
  remaining-capacity clamp suffice). Further 429s within :data:`DECREASE_COOLDOWN_S` of a
  decrease (the same burst, seen by any worker) lower nothing more. Every 429 restarts the
  climb: the learned limit rises by :data:`INCREASE_SHARE` of the ceiling (the configured or
  announced limit) every :data:`INCREASE_INTERVAL_S` without a 429, and is forgotten when it
  reaches the ceiling.
- **Nothing known.** When a key has no limit at all (nothing configured, announced or
  learned) and the policy has a ``start_per_min`` (default :data:`START_PER_MIN`), its
  requests get a learned limit at that rate, which grows by :data:`SLOW_START_STEP_PER_MIN`
  with every successful answer (slow start: the rate doubles about every
  ``START_PER_MIN ÷ SLOW_START_STEP_PER_MIN`` seconds while answers come back, and not at all
  while none do). The first 429 ends the slow start: the limit is lowered as above (to 97 % of
  what was let through), and from then on climbs additively, :data:`PROBE_SHARE` of its value
  every :data:`INCREASE_INTERVAL_S`, but only while answers come (at most one step beyond the
  latest). A limit the server announces replaces a slow start at once (the ramp then starts).
- **A 429 without a wait** (no ``retry-after``, no reset headers) empties the buckets in force
  at that moment: the next request waits the time the (lowered) limit needs to refill one
  request's worth, not a fixed pause.
- **What the server let through** is a sum of answers' usage that decays with time constant
  :data:`MEASURE_TAU_S` (its mean age is that of a 20 s window), fed by every worker.
- **The ramp.** When the key has limits but no buckets yet, or its buckets have all been full
  for :data:`RAMP_IDLE_S` (nothing was sent or waited for: a new run, or a pause of about that
  long), the next take starts a ramp, unless one is under way: the rate is held at
  :data:`RAMP_START_SHARE` of the limit in force until the first successful answer (at most
  :data:`RAMP_FIRST_ANSWER_MAX_S`; at once if an answer came since the key went idle), then
  climbs in a straight line to 100 % over the policy's ``ramp_s`` (default :data:`RAMP_S`),
  because Anthropic answers sharp increases in usage with 429s ("acceleration limits") even
  below the limits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from batchrun.limits.buckets import DEFAULT_BURST_S, TokenBucket
from batchrun.limits.dimensions import DIMENSIONS, Amounts, RateLimits

# Learning a lower limit from 429s.
MEASURE_TAU_S = 10.0
MIN_MEASURE_S = 8.0
DECREASE_TO_MEASURED = 0.97
DECREASE_BLIND = 0.75
DECREASE_COOLDOWN_S = 2.0
# ... and creeping back up: this share of the ceiling every interval without a 429.
INCREASE_INTERVAL_S = 2.0
INCREASE_SHARE = 0.01
# Nothing known: start requests at this rate, and add this much per successful answer.
START_PER_MIN = 60.0
SLOW_START_STEP_PER_MIN = 30.0
# Without a ceiling, after a 429: this share of the learned value per interval, added.
PROBE_SHARE = 0.01
# The first 429 of a slow start lowers its rate to this share of it (or to what was let
# through, if more).
SLOW_START_DECREASE = 0.5
# Announced and learned limits never go below this share of the configured limit (or, with
# none configured, this many a minute).
MIN_SHARE_OF_CONFIGURED = 0.01
MIN_LIMIT_PER_MIN = 1.0
# The ramp after a key was idle.
RAMP_S = 5.0
RAMP_START_SHARE = 0.2
RAMP_IDLE_S = 10.0
RAMP_FIRST_ANSWER_MAX_S = 60.0
# While a ramp is under way a take asks to be tried again this soon at the latest: a wait
# worked out at the rate of now would oversleep a rate that is climbing.
RAMP_RECHECK_S = 0.25
# A pause this close to its end is over.
_PAUSE_TOLERANCE_S = 1e-6
# Steps of the creep that fall on a whole number of intervals count, despite float rounding.
_STEP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class KeyPolicy:
    """How one worker applies a key's record: its configured limits (config file and flags),
    the buckets' size in seconds of their limit, and the ramp's length (0: no ramp)."""

    configured: RateLimits = field(default_factory=RateLimits)
    burst_s: float = DEFAULT_BURST_S
    ramp_s: float = RAMP_S
    # The requests' rate while nothing is known about the key's limits (None: unpaced).
    start_per_min: float | None = START_PER_MIN


@dataclass
class PendingChanges:
    """What a worker learned about a key since it last wrote to the key's record."""

    # Capacity to give back (positive) or take (negative), per dimension.
    deltas: dict[str, float] = field(default_factory=dict)
    # Never count on more than this (the server's -remaining).
    clamps: dict[str, float] = field(default_factory=dict)
    pause_until: float = 0.0
    # Limits per minute the server announced (the latest of each).
    announced: dict[str, float] = field(default_factory=dict)
    # What answers used: what the server let through.
    admitted: Amounts = field(default_factory=Amounts)
    # 429s: when, and the dimensions they named or showed exhausted.
    rate_limited: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    # 429s that said nothing of when to retry: the server has nothing left at these times.
    exhausted_at: list[float] = field(default_factory=list)
    # The latest successful answer.
    answered_at: float | None = None

    def empty(self) -> bool:
        """Whether there is nothing to write."""
        return self == PendingChanges()

    def merge(self, newer: PendingChanges) -> None:
        """Add ``newer``'s changes to these."""
        for dimension, delta in newer.deltas.items():
            self.deltas[dimension] = self.deltas.get(dimension, 0.0) + delta
        for dimension, remaining in newer.clamps.items():
            self.clamps[dimension] = min(self.clamps.get(dimension, remaining), remaining)
        self.pause_until = max(self.pause_until, newer.pause_until)
        self.announced.update(newer.announced)
        self.admitted = self.admitted + newer.admitted
        self.rate_limited.extend(newer.rate_limited)
        self.exhausted_at.extend(newer.exhausted_at)
        if newer.answered_at is not None:
            self.answered_at = max(self.answered_at or newer.answered_at, newer.answered_at)


@dataclass
class DimensionRecord:
    """One limit of a key: its bucket, and what the server said and taught about it."""

    bucket: TokenBucket | None = None
    announced: float | None = None
    # A learned limit as it was at learned_at; it climbs from there (see the module).
    learned: float | None = None
    learned_at: float = 0.0


@dataclass(frozen=True)
class Grant:
    """A take's answer: seconds to wait first (0: taken), and what was taken per dimension.

    A reservation (``take(..., reserve=True)``) is taken even when the buckets lack it: they
    go into debt, and ``wait_s`` says when the debt is paid. Its ``levels`` (per dimension:
    the bucket's level just before the take, negative while in debt) and ``rates`` (its refill
    per second then) let the taker work out when each part of it may be spent: a part
    reaching ``x`` into the reservation is paid once ``level + rate × elapsed >= x`` (less
    the share of the reservation beyond a whole bucket, which a bucket admits when full)."""

    wait_s: float
    charged: Mapping[str, float] = field(default_factory=dict)
    levels: Mapping[str, float] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)
    capacities: Mapping[str, float] = field(default_factory=dict)


@dataclass
class KeyRecord:
    """The shared state of one endpoint × model (see the module for the rules)."""

    dimensions: dict[str, DimensionRecord] = field(default_factory=dict)
    paused_until: float = 0.0
    # The latest decrease of a learned limit: the cool-down between decreases counts from it.
    lowered_at: float | None = None
    # The current ramp: when it started, and when its climb starts (the first answer).
    ramp_started_at: float | None = None
    ramp_from: float | None = None
    # What the server let through: a sum that decays, as of admitted_at; since when it counts.
    admitted: Amounts = field(default_factory=Amounts)
    admitted_at: float = 0.0
    measured_since: float | None = None

    # -- reading -----------------------------------------------------------------------------

    def limit(self, dimension: str, configured: RateLimits, now: float) -> float | None:
        """The per-minute limit in force for a dimension at ``now``, or None."""
        floor = _floor(dimension, configured)
        found = []
        record = self.dimensions.get(dimension)
        if record is not None:
            heard = (record.announced, self._learned(dimension, record, configured, now))
            found = [max(value, floor) for value in heard if value is not None]
        if (limit := configured.get(dimension)) is not None:
            found.append(limit)
        return min(found) if found else None

    def limits(self, configured: RateLimits, now: float) -> dict[str, float]:
        """Every limit in force at ``now``, per minute, by dimension."""
        found = {}
        for dimension in DIMENSIONS.names():
            limit = self.limit(dimension, configured, now)
            if limit is not None:
                found[dimension] = limit
        return found

    def ramp_share(self, now: float, ramp_s: float) -> float:
        """The share of the limits in force that the ramp allows at ``now`` (1: no ramp)."""
        if ramp_s <= 0 or self.ramp_from is None:
            return 1.0
        if now < self.ramp_from:
            return RAMP_START_SHARE
        climbed = (now - self.ramp_from) / ramp_s
        return 1.0 if climbed >= 1 else RAMP_START_SHARE + (1 - RAMP_START_SHARE) * climbed

    def measured_per_min(self, dimension: str, now: float) -> float | None:
        """What the server let through per minute lately, if there is enough history."""
        if self.measured_since is None or now - self.measured_since < MIN_MEASURE_S:
            return None
        # A constant rate r since measured_since has summed to r·τ·(1 - e^(-span/τ)) by now.
        weight_s = MEASURE_TAU_S * (1 - math.exp(-(now - self.measured_since) / MEASURE_TAU_S))
        return DIMENSIONS.get(dimension).measure(self._admitted_at(now)) * 60.0 / weight_s

    def _learned(
        self, dimension: str, record: DimensionRecord, configured: RateLimits, now: float
    ) -> float | None:
        """The learned limit at ``now``, after its climb; None once back at the ceiling."""
        if record.learned is None:
            return None
        ceiling = _ceiling(dimension, record, configured)
        if ceiling is None:
            if self.lowered_at is None:
                return record.learned  # a slow start: it grows with answers (see apply)
            # Probing: only while answers come, at most one step beyond the latest.
            until = min(now, max(self.admitted_at, record.learned_at) + INCREASE_INTERVAL_S)
            return record.learned * (1 + PROBE_SHARE * self._steps(record.learned_at, until))
        value = record.learned + self._steps(record.learned_at, now) * INCREASE_SHARE * ceiling
        return None if value >= ceiling else value

    @staticmethod
    def _steps(since: float, until: float) -> int:
        return max(math.floor((until - since) / INCREASE_INTERVAL_S + _STEP_TOLERANCE), 0)

    def slow_starting(self, configured: RateLimits) -> bool:
        """Whether the key's requests are in a slow start (see the module)."""
        record = self.dimensions.get("rpm")
        return (
            self.lowered_at is None
            and record is not None
            and record.learned is not None
            and _ceiling("rpm", record, configured) is None
        )

    def _admitted_at(self, now: float) -> Amounts:
        if now <= self.admitted_at:
            return self.admitted
        kept = math.exp(-(now - self.admitted_at) / MEASURE_TAU_S)
        return Amounts(
            self.admitted.requests * kept,
            self.admitted.input_tokens * kept,
            self.admitted.output_tokens * kept,
        )

    # -- changing ----------------------------------------------------------------------------

    def apply(self, changes: PendingChanges, configured: RateLimits, now: float) -> None:
        """Apply what a worker learned (``configured``: that worker's configured limits)."""
        if changes.announced and self.slow_starting(configured):
            # The server said its limits: no need to find them.
            self.dimensions["rpm"].learned = None
        for dimension, limit in changes.announced.items():
            self._dimension(dimension).announced = limit
        if changes.admitted.requests > 0 and self.slow_starting(configured):
            record = self.dimensions["rpm"]
            assert record.learned is not None
            record.learned += SLOW_START_STEP_PER_MIN * changes.admitted.requests
        if changes.admitted.requests > 0:
            self.admitted = self._admitted_at(now) + changes.admitted
            self.admitted_at = max(now, self.admitted_at)
            if self.measured_since is None:
                self.measured_since = now
        for at, named in changes.rate_limited:
            self._rate_limited(at, named, configured)
        for dimension, delta in changes.deltas.items():
            if (bucket := self._bucket(dimension)) is not None:
                bucket.adjust(delta, now)
        for dimension, remaining in changes.clamps.items():
            if (bucket := self._bucket(dimension)) is not None:
                bucket.clamp(remaining, now)
        if changes.exhausted_at:
            # Nothing left on the server: the next request waits a slot at the limit.
            for record in self.dimensions.values():
                if record.bucket is not None:
                    record.bucket.clamp(0.0, now)
        self.paused_until = max(self.paused_until, changes.pause_until)
        answered_at = changes.answered_at
        if (
            answered_at is not None
            and self.ramp_started_at is not None
            and self.ramp_from is not None
            and answered_at >= self.ramp_started_at
        ):
            self.ramp_from = min(self.ramp_from, answered_at)

    def take(
        self,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        now: float,
        changes: PendingChanges | None = None,
        *,
        reserve: bool = False,
    ) -> Grant:
        """Apply ``changes``, then take ``costs`` (per dimension) from every bucket in force if
        all of them have it; starts a ramp first when the key was idle (see the module).

        With ``reserve``, the costs are taken whatever the buckets hold (a reservation in
        debt: the grant says when it is paid, see :class:`Grant`), unless the key is paused
        (then nothing is taken and the grant's wait is the pause's) or ramping up (then a
        take they cannot cover is refused, with a wait of at most :data:`RAMP_RECHECK_S`)."""
        # Since when nothing was taken or waited for (every bucket full); -inf: no buckets.
        idle_since = max(
            (record.bucket.full_at() for record in self.dimensions.values() if record.bucket),
            default=-math.inf,
        )
        if changes is not None:
            self.apply(changes, policy.configured, now)
        limits = self.limits(policy.configured, now)
        if not limits and policy.start_per_min is not None:
            # Nothing known: find the limits from a conservative rate (see the module).
            record = self._dimension("rpm")
            record.learned, record.learned_at = policy.start_per_min, now
            limits = self.limits(policy.configured, now)
        self._forget_climbed(policy.configured, now)
        ramping = self.ramp_from is not None and now < self.ramp_from + policy.ramp_s
        if (
            limits
            and idle_since <= now - RAMP_IDLE_S
            and policy.ramp_s > 0
            and not ramping
            and not self.slow_starting(policy.configured)
        ):
            self._start_ramp(now)
            answered_at = changes.answered_at if changes is not None else None
            if answered_at is not None and answered_at >= idle_since:
                # An answer came since the key went idle (a long first answer, one during a
                # pause, the one that announced the first limits): climb from now.
                self.ramp_from = now
        share = self.ramp_share(now, policy.ramp_s)
        wait_s = self.paused_until - now
        if wait_s < _PAUSE_TOLERANCE_S:
            # Float residue of now + pause read back: a clock that counts in microseconds
            # (the event loop's, virtual in tests) would never get past it.
            wait_s = 0.0
        buckets = {}
        for dimension, limit in limits.items():
            # The ramp slows the refill, not the bucket's size: a size that grew with the
            # ramp would never be full for a cost above it (admitted only when full).
            rate_per_s = limit / 60.0 * share
            capacity = limit / 60.0 * policy.burst_s
            record = self._dimension(dimension)
            bucket = record.bucket
            if bucket is None:
                # The first request goes when it would without the ramp (after cost ÷ the
                # full rate): one request is no sharp rise, and a low limit would otherwise
                # hold it for five times as long. The ramp slows those after it.
                first = min(costs.get(dimension, 0.0) * (1 - share), capacity)
                bucket = record.bucket = TokenBucket(rate_per_s, capacity, first, now)
            elif (bucket.rate_per_s, bucket.capacity) != (rate_per_s, capacity):
                bucket.set_rate(rate_per_s, capacity, now)
            wait_s = max(wait_s, bucket.wait_s(costs.get(dimension, 0.0), now))
            buckets[dimension] = bucket
        # A reservation waits for a known moment, worked out at the rate of now: during the
        # ramp that rate climbs, so a refused take there is asked again soon instead.
        if wait_s > 0 and (not reserve or self.paused_until > now or share < 1):
            if share < 1 and self.paused_until <= now:
                wait_s = min(wait_s, RAMP_RECHECK_S)
            return Grant(wait_s)
        charged = {dimension: costs.get(dimension, 0.0) for dimension in buckets}
        levels = {dimension: bucket.level for dimension, bucket in buckets.items()}
        for dimension, bucket in buckets.items():
            bucket.take(charged[dimension], now)
        return Grant(
            wait_s,
            charged,
            levels,
            {dimension: bucket.rate_per_s for dimension, bucket in buckets.items()},
            {dimension: bucket.capacity for dimension, bucket in buckets.items()},
        )

    def _start_ramp(self, now: float) -> None:
        self.ramp_started_at = now
        self.ramp_from = now + RAMP_FIRST_ANSWER_MAX_S
        for record in self.dimensions.values():
            if record.bucket is not None:
                # An idle bucket is full: no burst of more than the ramp's start.
                record.bucket.clamp(record.bucket.capacity * RAMP_START_SHARE, now)
        # What was let through before the gap says nothing about the server now.
        self.admitted, self.admitted_at, self.measured_since = Amounts(), now, None

    def _rate_limited(self, at: float, named: frozenset[str], configured: RateLimits) -> None:
        """A 429 at ``at``: restart every climb, and lower the limits (see the module)."""
        for dimension, record in self.dimensions.items():
            if record.learned is not None and at > record.learned_at:
                value = self._learned(dimension, record, configured, at)
                if value is None:
                    record.learned = None
                else:
                    record.learned, record.learned_at = value, at
        if self.lowered_at is not None and abs(at - self.lowered_at) < DECREASE_COOLDOWN_S:
            return  # the other 429s of the same burst say nothing new
        slow_start = self.slow_starting(configured)
        self.lowered_at = at
        in_force = [d for d in DIMENSIONS.names() if self.limit(d, configured, at) is not None]
        for dimension in sorted(named) or in_force or ["rpm"]:
            self._lower(dimension, configured, at, slow_start and dimension == "rpm")

    def _lower(
        self, dimension: str, configured: RateLimits, at: float, slow_start: bool = False
    ) -> None:
        current = self.limit(dimension, configured, at)
        measured = self.measured_per_min(dimension, at)
        record = self._dimension(dimension)
        if slow_start and current is not None:
            # The rate that met the first 429 overshot by what the server's burst hid while
            # the rate doubled: half of it, or what was let through if that is more.
            lowered = current * SLOW_START_DECREASE
            if measured is not None:
                lowered = max(lowered, measured * DECREASE_TO_MEASURED)
            # What the slow start let through says little about the limit: measure anew.
            self.admitted, self.admitted_at, self.measured_since = Amounts(), at, None
        elif measured is not None and measured > 0:
            lowered = measured * DECREASE_TO_MEASURED
            if current is not None:
                lowered = min(lowered, current * DECREASE_TO_MEASURED)
        elif current is not None and record.announced is None:
            lowered = current * DECREASE_BLIND
        else:
            return
        record.learned, record.learned_at = max(lowered, MIN_LIMIT_PER_MIN), at

    def _forget_climbed(self, configured: RateLimits, now: float) -> None:
        for dimension, record in self.dimensions.items():
            if (
                record.learned is not None
                and self._learned(dimension, record, configured, now) is None
            ):
                record.learned = None

    def _dimension(self, dimension: str) -> DimensionRecord:
        return self.dimensions.setdefault(dimension, DimensionRecord())

    def _bucket(self, dimension: str) -> TokenBucket | None:
        record = self.dimensions.get(dimension)
        return None if record is None else record.bucket


def _floor(dimension: str, configured: RateLimits) -> float:
    """The lowest limit a server's word or learning can set."""
    limit = configured.get(dimension)
    return limit * MIN_SHARE_OF_CONFIGURED if limit else MIN_LIMIT_PER_MIN


def _ceiling(dimension: str, record: DimensionRecord, configured: RateLimits) -> float | None:
    """The limit without what was learned: where learning climbs back to."""
    candidates = [v for v in (configured.get(dimension), record.announced) if v]
    return min(candidates) if candidates else None
