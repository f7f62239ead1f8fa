"""How many requests a worker keeps in hand: worked out from the limits and the latency.

To send at a rate, a worker needs rate × latency requests in flight (Little's law): 4,000
requests a minute answered in 20 s need about 1,333 at once, and a fixed cap of 256 would
hold that endpoint to 19 % of its limit. So unless ``max_concurrency`` is given, the cap is
the sum over the endpoint × model keys in use of (the requests a second their limits allow ×
the endpoint's average latency), times :data:`HEADROOM` for the spread of latencies, plus the
requests that wait for the limiter; never below :data:`BASE_IN_FLIGHT` (what was enough for
everything before, and what endpoints without limits get), never above the ceiling.

The ceiling guards what each request in flight holds: a socket (a file descriptor) and its
body and answer in memory. It is :data:`~batchrun.dispatch.settings.MAX_IN_FLIGHT`, or less
when the process may open fewer files (the soft ``RLIMIT_NOFILE`` minus
:data:`~batchrun.ops.runner.RESERVED_FILES` for the database,
logs and the rest); at about 100 KB per request (a large prompt and its answer) 4,096 in
flight hold some 400 MB.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from batchrun.dispatch.settings import BASE_IN_FLIGHT, DispatchConfig

if TYPE_CHECKING:
    from batchrun.dispatch.routing import RateView, Router

# In flight needed = rate × average latency × this: answers slower than the average keep
# their slots longer.
HEADROOM = 1.5
# The latency assumed for an endpoint before its first answer.
DEFAULT_LATENCY_S = 10.0
# The cap is worked out again at most this often, and a key counts as in use this long.
RECOMPUTE_S = 1.0
IN_USE_S = 60.0


class Capacity:
    """The cap on requests a dispatcher holds (waiting for limits, or in flight)."""

    def __init__(self, config: DispatchConfig, router: Router, rates: RateView) -> None:
        self._fixed = config.max_concurrency
        self.ceiling = config.max_concurrency or config.in_flight_ceiling
        self._router = router
        self._rates = rates
        self._keys: dict[tuple[str, str], float] = {}
        self._cap = min(BASE_IN_FLIGHT, self.ceiling)
        self._computed_at = -math.inf

    def used(self, key: tuple[str, str], now: float) -> None:
        """An endpoint × model key got a request at ``now`` (loop time)."""
        self._keys[key] = now

    def now(self, now: float, *, waiting: int = 0) -> int:
        """The cap at loop time ``now``; ``waiting``: requests allowed to wait for limits."""
        if self._fixed is not None:
            return self._fixed
        if now - self._computed_at >= RECOMPUTE_S:
            self._computed_at = now
            self._cap = self._work_out(now, waiting)
        return self._cap

    def _work_out(self, now: float, waiting: int) -> int:
        needed = 0.0
        for key, last in list(self._keys.items()):
            if now - last > IN_USE_S:
                del self._keys[key]
                continue
            rate = self._rates.request_rate_per_s(*key)
            if rate is None:
                continue
            latency = self._router.latency_s(key[0])
            needed += rate * (DEFAULT_LATENCY_S if latency is None else latency)
        cap = max(BASE_IN_FLIGHT, math.ceil(needed * HEADROOM) + waiting)
        return min(cap, self.ceiling)
