"""Capacity a worker takes from a key's shared buckets in blocks, and spends on its own.

Taking from the bank for every request costs a bank call each (a database transaction with
the database bank). Instead, a worker takes a **block** from a key's buckets (every dimension
in force at once: requests, input, output, total tokens) sized to what it sent lately in
:data:`BLOCK_HORIZON_S`, and spends it request by request with no bank call. Pure: times are
the bank's clock, passed in.

**Reservations in debt.** A block is always taken (the buckets go negative when they lack it;
only a pause refuses), and its grant tells how much the buckets held just before and how fast
they refill. The part of the block reaching ``x`` into it is paid once ``level + rate ×
elapsed >= x``: exactly when a bucket taken from one request at a time would have admitted
that request. So a worker spends a block at the pace the shared buckets set, waiting once per
request for a known moment instead of asking again; several workers' blocks queue one behind
the other in the buckets' debt as their requests would have.

**Size and bound.** A block holds, per dimension, the current request's cost times the
requests this worker spent per second since its previous block times
:data:`BLOCK_HORIZON_S` (at least one request's cost), and never more than
:data:`BLOCK_HORIZON_S` seconds of the dimension's limit in force (or one request's cost,
when that is more). What a worker does not spend it gives back with its next take, on a
pause (a 429's retry-after, a 529), when the limits change or the server says it has less
left than the block holds, and when it stops; a block it
has not touched for :data:`BLOCK_IDLE_S` after it is paid lapses (given back with the next
take, never spent). Hence, for any span of ``T`` seconds, what a cluster of ``N`` workers
sends under a limit of ``L`` per second is at most ``L × T`` + the buckets' burst
(``L × burst_s``) + what the blocks held unspent when the span began, which is at most
``N × L ×`` :data:`BLOCK_HORIZON_S` (and about ``L ×`` :data:`BLOCK_HORIZON_S` when the
workers' blocks follow their shares of the limit). Blocks taken during the start-up ramp
are no larger (below), so the bound holds through it.

**During the start-up ramp** (:mod:`batchrun.limits.keyrecord`) the buckets refill at the
ramp's share of each limit, and a take they cannot cover now is refused (asked again within
:data:`~batchrun.limits.keyrecord.RAMP_RECHECK_S`), not reserved in debt: a debt is paid at
the rate of the moment, which would lag the climb. So a block taken during the ramp is paid
as soon as it is granted, and it is sized as at any other time (the worker's pace ×
:data:`BLOCK_HORIZON_S`) with two more caps: never more than :data:`BLOCK_HORIZON_S` seconds
of the *ramped* limits (the ramp's share × the limit in force, as this worker last heard of
the ramp), and never more requests than the buckets hold now as this worker last saw them
(:func:`held_requests`; one request at least). A ramp that does not bind thus costs a take
per half second of sending, as after it, not a take per request; one that binds gets blocks
of what the buckets hold, which a take per request would have spent at once too, and of one
request when they hold less: its pace is the one-request takes' pace. The worker's view may
be stale (another worker took meanwhile, or started a ramp this worker has not heard of):
when a block of more than one request (in some limit in force) is refused, the worker asks
at once for one request, so a binding ramp is never slower than with one-request blocks (at
the price of a second take then).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# A block holds what this worker sent lately in this long: the bank is visited about this
# often per key while the worker sends, and a cluster may exceed a limit by at most this many
# seconds of it per worker beyond the buckets' burst (see the module).
BLOCK_HORIZON_S = 0.5
# A block not touched for this long after it is paid lapses.
BLOCK_IDLE_S = 1.0
# A block of a key without a limit in force (nothing to take) is good for this long: then the
# bank is visited again for pauses, and for limits announced or learned meanwhile.
UNLIMITED_BLOCK_S = 1.0
# Spending rates are measured over at least this long, so that two blocks taken within a
# moment do not read as an endless rate.
_MIN_MEASURE_S = 0.01
# Costs within this much of what is left count as covered (float sums of many costs).
_TOLERANCE = 1e-6


@dataclass
class Block:
    """Capacity taken from one key's buckets at ``taken_at``, spent by one worker.

    ``total`` per dimension in force (none: no limit in force, good until ``expires_at``);
    ``paid_from``: the buckets' level just before the take (plus the share of the block
    beyond a whole bucket, which a bucket admits when full); ``rates``: their refill per
    second then."""

    taken_at: float
    total: dict[str, float]
    paid_from: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    expires_at: float = math.inf

    @classmethod
    def granted(
        cls,
        *,
        now: float,
        charged: Mapping[str, float],
        levels: Mapping[str, float],
        rates: Mapping[str, float],
        capacities: Mapping[str, float],
    ) -> Block:
        """The block a reservation granted (see
        :class:`~batchrun.limits.keyrecord.Grant`)."""
        paid_from = {
            dimension: levels[dimension] + max(amount - capacities[dimension], 0.0)
            for dimension, amount in charged.items()
        }
        block = cls(now, dict(charged), paid_from, dict(rates), dict.fromkeys(charged, 0.0), 0)
        block.expires_at = block.paid_at() + BLOCK_IDLE_S
        return block

    @classmethod
    def unlimited(cls, now: float) -> Block:
        """A block for a key with no limit in force: nothing to spend, good for a while."""
        return cls(now, {}, expires_at=now + UNLIMITED_BLOCK_S)

    def covers(self, costs: Mapping[str, float]) -> bool:
        """Whether what is left of the block holds ``costs`` in every dimension."""
        return all(
            self.spent[dimension] + costs.get(dimension, 0.0) <= total + _TOLERANCE
            for dimension, total in self.total.items()
        )

    def wait_s(self, costs: Mapping[str, float], now: float) -> float:
        """Seconds until the part of the block ``costs`` would spend next is paid."""
        wait_s = 0.0
        elapsed = now - self.taken_at
        for dimension, rate in self.rates.items():
            reach = self.spent[dimension] + costs.get(dimension, 0.0)
            short = reach - self.paid_from[dimension] - rate * elapsed
            if short > _TOLERANCE:
                wait_s = max(wait_s, short / rate if rate > 0 else math.inf)
        return wait_s

    def spend(self, costs: Mapping[str, float], now: float) -> dict[str, float]:
        """Spend ``costs`` (once covered and paid); returns what was spent per dimension."""
        spent = {}
        for dimension in self.total:
            cost = costs.get(dimension, 0.0)
            self.spent[dimension] += cost
            spent[dimension] = cost
        self.requests += 1
        if self.total:
            self.expires_at = max(self.expires_at, now + BLOCK_IDLE_S)
        return spent

    def left(self) -> dict[str, float]:
        """What is left unspent, per dimension: what to give back."""
        return {
            dimension: total - self.spent[dimension]
            for dimension, total in self.total.items()
            if total - self.spent[dimension] > _TOLERANCE
        }

    def paid_at(self) -> float:
        """When the whole block is paid."""
        due = [
            (total - self.paid_from[dimension]) / rate
            for dimension, total in self.total.items()
            if (rate := self.rates[dimension]) > 0
        ]
        return self.taken_at + max(max(due, default=0.0), 0.0)

    def next_requests(self, now: float) -> float:
        """How many requests the next block should hold: what this one was spent at, per
        second, over :data:`BLOCK_HORIZON_S` (at least one)."""
        rate = self.requests / max(now - self.taken_at, _MIN_MEASURE_S)
        return max(rate * BLOCK_HORIZON_S, 1.0)


def block_costs(
    costs: Mapping[str, float], requests: float, limits_per_min: Mapping[str, float]
) -> dict[str, float]:
    """What a block of ``requests`` requests like this one (``costs`` per dimension) should
    take, per dimension: never more than :data:`BLOCK_HORIZON_S` seconds of the limit in
    force, never less than the request's own cost."""
    sized = {}
    for dimension, cost in costs.items():
        amount = cost * requests
        if (limit := limits_per_min.get(dimension)) is not None:
            amount = min(amount, limit / 60.0 * BLOCK_HORIZON_S)
        sized[dimension] = max(amount, cost)
    return sized


def held_requests(costs: Mapping[str, float], levels: Mapping[str, float]) -> float:
    """How many whole requests like this one (``costs`` per dimension) the buckets hold, by
    their ``levels`` per dimension in force (negative while in debt); infinity when no
    dimension in force costs anything."""
    held = math.inf
    for dimension, level in levels.items():
        if (cost := costs.get(dimension, 0.0)) > 0:
            held = min(held, float(math.floor(level / cost + _TOLERANCE)))
    return held
