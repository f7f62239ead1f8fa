"""Where the limiter keeps its bucket levels: in memory, or in the database for all workers.

The limiter decides what to take and learns from answers; a bank only holds levels, rates
and pauses. :class:`LocalBank` serves one worker (event-loop time, no I/O);
:class:`DatabaseBank` shares them between every worker of a database, so several processes
or hosts together stay under one limit. It reaches the database through the worker's one
route there (``batchrun.dispatch.worker_db``), passed in as :class:`SharedBuckets`: this
layer imports no storage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from batchrun.limits.buckets import TokenBucket

LimitKey = tuple[str, str]


@dataclass
class PendingChanges:
    """What a worker learned about a key since it last wrote it to the shared buckets."""

    deltas: dict[str, float] = field(default_factory=dict)
    clamps: dict[str, float] = field(default_factory=dict)
    pause_until: float = 0.0

    def empty(self) -> bool:
        return not self.deltas and not self.clamps and not self.pause_until


class SharedBuckets(Protocol):
    """The database's rate buckets (``Store.rates.take``, awaited)."""

    async def take_rates(
        self,
        *,
        endpoint: str,
        model: str,
        costs: Mapping[str, float],
        rates: Mapping[str, tuple[float, float]],
        changes: PendingChanges,
        now: float,
    ) -> tuple[float, float]:
        """Apply ``changes``, then take ``costs`` if every bucket has them; returns (seconds
        to wait, 0 when taken; the key's pause end in Unix seconds)."""
        ...


class Bank(Protocol):
    """Bucket levels and pauses per endpoint × model."""

    async def take(
        self,
        key: LimitKey,
        costs: Mapping[str, float],
        rates: Mapping[str, tuple[float, float]],
    ) -> float:
        """Take ``costs`` if every bucket has them; seconds to wait first (0: taken)."""
        ...

    def correct(self, key: LimitKey, deltas: Mapping[str, float]) -> None:
        """Give back (positive) or take more (negative) after a response."""
        ...

    def clamp(self, key: LimitKey, dimension: str, remaining: float) -> None:
        """Never count on more than the server says remains."""
        ...

    def pause(self, key: LimitKey, seconds: float) -> None:
        """Send nothing for this key for ``seconds``."""
        ...


class LocalBank:
    """Buckets in memory, on the event loop's clock: one worker."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[LimitKey, str], TokenBucket] = {}
        self._paused_until: dict[LimitKey, float] = {}

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def take(
        self,
        key: LimitKey,
        costs: Mapping[str, float],
        rates: Mapping[str, tuple[float, float]],
    ) -> float:
        now = self._now()
        wait_s = self._paused_until.get(key, 0.0) - now
        buckets = {}
        for dimension, (rate, capacity) in rates.items():
            bucket = self._buckets.get((key, dimension))
            if bucket is None:
                bucket = TokenBucket(rate, capacity, 0.0, now)
                self._buckets[(key, dimension)] = bucket
            elif (bucket.rate_per_s, bucket.capacity) != (rate, capacity):
                bucket.set_rate(rate, capacity / rate, now)
            buckets[dimension] = bucket
            wait_s = max(wait_s, bucket.wait_s(costs[dimension], now))
        if wait_s <= 0:
            for dimension, bucket in buckets.items():
                bucket.take(costs[dimension], now)
        return max(wait_s, 0.0)

    def correct(self, key: LimitKey, deltas: Mapping[str, float]) -> None:
        now = self._now()
        for dimension, delta in deltas.items():
            bucket = self._buckets.get((key, dimension))
            if bucket is not None:
                bucket.adjust(delta, now)

    def clamp(self, key: LimitKey, dimension: str, remaining: float) -> None:
        bucket = self._buckets.get((key, dimension))
        if bucket is not None:
            bucket.clamp(remaining, self._now())

    def pause(self, key: LimitKey, seconds: float) -> None:
        until = self._now() + seconds
        self._paused_until[key] = max(self._paused_until.get(key, 0.0), until)


class DatabaseBank:
    """Buckets in the job database, shared by every worker that uses it.

    Corrections, clamps and pauses are collected in memory and written with the key's next
    take, so a response costs no extra round trip; a take is one transaction.
    """

    def __init__(self, shared: SharedBuckets, *, clock: Callable[[], float] = time.time) -> None:
        """``clock``: Unix seconds, as every worker of the database counts them."""
        self._shared = shared
        self._clock = clock
        self._pending: dict[LimitKey, PendingChanges] = {}
        self._paused_until: dict[LimitKey, float] = {}

    def _changes(self, key: LimitKey) -> PendingChanges:
        return self._pending.setdefault(key, PendingChanges())

    async def take(
        self,
        key: LimitKey,
        costs: Mapping[str, float],
        rates: Mapping[str, tuple[float, float]],
    ) -> float:
        now = self._clock()
        changes = self._pending.pop(key, None) or PendingChanges()
        if not rates and changes.empty():
            # No limit in force: only a pause this worker knows of can hold it back.
            return max(self._paused_until.get(key, 0.0) - now, 0.0)
        endpoint, model = key
        wait_s, paused_until = await self._shared.take_rates(
            endpoint=endpoint,
            model=model,
            costs={d: costs[d] for d in rates},
            rates=rates,
            changes=changes,
            now=now,
        )
        self._paused_until[key] = max(self._paused_until.get(key, 0.0), paused_until)
        return wait_s

    def correct(self, key: LimitKey, deltas: Mapping[str, float]) -> None:
        pending = self._changes(key).deltas
        for dimension, delta in deltas.items():
            pending[dimension] = pending.get(dimension, 0.0) + delta

    def clamp(self, key: LimitKey, dimension: str, remaining: float) -> None:
        clamps = self._changes(key).clamps
        clamps[dimension] = min(clamps.get(dimension, remaining), remaining)

    def pause(self, key: LimitKey, seconds: float) -> None:
        until = self._clock() + seconds
        changes = self._changes(key)
        changes.pause_until = max(changes.pause_until, until)
        self._paused_until[key] = max(self._paused_until.get(key, 0.0), until)
