"""A continuously refilling token bucket that can go into debt. Pure: time is passed in.

Capacity refills at ``rate_per_s`` up to ``capacity``. A cost is admitted once the bucket
holds it (or, for a cost larger than the whole bucket, once the bucket is full); taking it may
leave the bucket negative, and the debt is paid back by refill before the next admission.
Corrections after the fact (a reservation that turned out too big or too small) move the
level up or down, never above capacity. Over any long span, admitted cost therefore equals
``rate × time + capacity`` at most: the average rate is exact, and bursts never exceed the
capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Bucket size in seconds of refill: the most that is ever sent in one burst. Small, because a
# server may allow less burst than a minute's worth (see the rate-limits docs).
DEFAULT_BURST_S = 1.0
# Levels this close to the cost count as enough: refill arithmetic in floats leaves
# 0.9999999999 where 1 was meant, and a clock may not advance by a picosecond.
_TOLERANCE = 1e-6


@dataclass
class TokenBucket:
    """One limit of one endpoint × model."""

    rate_per_s: float
    capacity: float
    level: float
    updated_at: float

    @classmethod
    def empty(cls, *, rate_per_s: float, burst_s: float, now: float) -> TokenBucket:
        """A bucket that starts empty, so sending is paced from the first request."""
        return cls(rate_per_s, rate_per_s * burst_s, 0.0, now)

    def _refill(self, now: float) -> None:
        if now > self.updated_at:
            self.level = min(self.capacity, self.level + (now - self.updated_at) * self.rate_per_s)
            self.updated_at = now

    def available(self, now: float) -> float:
        """Capacity that could be taken at ``now`` (negative while in debt)."""
        self._refill(now)
        return self.level

    def level_at(self, now: float) -> float:
        """What the bucket holds at ``now`` with nothing more taken (negative while in debt),
        without changing it (so :meth:`full_at` still says when it filled)."""
        if now <= self.updated_at:
            return self.level
        return min(self.capacity, self.level + (now - self.updated_at) * self.rate_per_s)

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` may be taken."""
        self._refill(now)
        needed = min(cost, self.capacity)
        if self.level + _TOLERANCE >= needed:
            return 0.0
        return (needed - self.level) / self.rate_per_s

    def full_at(self) -> float:
        """When the bucket fills up (or filled, at the latest: a bucket found full when it was
        last updated may have been full before), with no more taken; infinity at rate 0."""
        if self.rate_per_s <= 0:
            return math.inf
        return self.updated_at + max(self.capacity - self.level, 0.0) / self.rate_per_s

    def take(self, cost: float, now: float) -> None:
        """Take ``cost`` (after :meth:`wait_s` said 0)."""
        self._refill(now)
        self.level -= cost

    def adjust(self, delta: float, now: float) -> None:
        """Correct a reservation: positive gives capacity back, negative takes more."""
        self._refill(now)
        self.level = min(self.capacity, self.level + delta)

    def clamp(self, at_most: float, now: float) -> None:
        """Lower the level to what the server says remains, if that is lower."""
        self._refill(now)
        self.level = min(self.level, at_most)

    def set_rate(self, rate_per_s: float, capacity: float, now: float) -> None:
        """Change the rate and the capacity from now on (a learned or announced limit, a
        ramp)."""
        self._refill(now)
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self.level = min(self.level, self.capacity)
