"""Where the limiter keeps each key's record: in memory, or in the database for all workers.

The limiter decides what to take and what an answer taught; a bank holds each endpoint ×
model's :class:`~batchrun.limits.keyrecord.KeyRecord` (buckets, pause, announced and learned
limits, what the server let through, the ramp) and applies both with the record's own rules.
:class:`LocalBank` serves one worker (event-loop time, no I/O); :class:`DatabaseBank` shares
the records between every worker of a database, so several processes or hosts together stay
under one limit and learn it once. It reaches the database through the worker's one route
there (``batchrun.dispatch.worker_db``), passed in as :class:`SharedBuckets`: this layer
imports no storage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from batchrun.limits.keyrecord import Grant, KeyPolicy, KeyRecord, PendingChanges

LimitKey = tuple[str, str]

# A key with no limit in force skips the database between visits this far apart; a visit
# still brings the pauses, announced and learned limits other workers wrote.
UNLIMITED_VISIT_S = 1.0


class SharedBuckets(Protocol):
    """The database's rate records (``Store.rates.take``, awaited)."""

    async def take_rates(
        self,
        *,
        endpoint: str,
        model: str,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        changes: PendingChanges,
        now: float,
        reserve: bool = False,
    ) -> tuple[Grant, KeyRecord]:
        """Apply ``changes`` to the key's record, then take ``costs`` if every bucket in
        force has them (with ``reserve``: in any case, into debt); returns the grant and the
        record as the take left it."""
        ...


class Bank(Protocol):
    """Records per endpoint × model, on the bank's clock."""

    def now(self) -> float:
        """The bank's clock, in seconds: the times of changes and records count on it."""
        ...

    async def take(
        self,
        key: LimitKey,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        *,
        reserve: bool = False,
    ) -> Grant:
        """Take ``costs`` (per dimension) from every bucket in force if all have them; with
        ``reserve``, whatever they hold (a reservation in debt, unless the key is paused)."""
        ...

    async def flush(self) -> None:
        """Write what answers taught that is not written yet (before the worker stops)."""
        ...

    def update(self, key: LimitKey, changes: PendingChanges, policy: KeyPolicy) -> None:
        """Record what an answer taught (corrections, pauses, limits, usage)."""
        ...

    def record(self, key: LimitKey) -> KeyRecord | None:
        """The key's record as this worker knows it now (for reading), or None."""
        ...


class LocalBank:
    """Records in memory, on the event loop's clock: one worker."""

    def __init__(self) -> None:
        self._records: dict[LimitKey, KeyRecord] = {}

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def take(
        self,
        key: LimitKey,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        *,
        reserve: bool = False,
    ) -> Grant:
        record = self._records.setdefault(key, KeyRecord())
        return record.take(costs, policy, self.now(), reserve=reserve)

    async def flush(self) -> None:
        return None

    def update(self, key: LimitKey, changes: PendingChanges, policy: KeyPolicy) -> None:
        record = self._records.setdefault(key, KeyRecord())
        record.apply(changes, policy.configured, self.now())

    def record(self, key: LimitKey) -> KeyRecord | None:
        return self._records.get(key)


class DatabaseBank:
    """Records in the job database, shared by every worker that uses it.

    What an answer teaches is collected in memory and written with the key's next take, so
    a response costs no extra round trip; a take is one transaction, and brings back the
    record as every worker left it. Between takes, this worker reads the record it last
    brought back with its own changes since applied.
    """

    def __init__(self, shared: SharedBuckets, *, clock: Callable[[], float] = time.time) -> None:
        """``clock``: Unix seconds, as every worker of the database counts them."""
        self._shared = shared
        self._clock = clock
        self._pending: dict[LimitKey, PendingChanges] = {}
        self._records: dict[LimitKey, KeyRecord] = {}
        self._visited_at: dict[LimitKey, float] = {}
        self._policies: dict[LimitKey, KeyPolicy] = {}

    def now(self) -> float:
        return self._clock()

    async def take(
        self,
        key: LimitKey,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        *,
        reserve: bool = False,
    ) -> Grant:
        now = self._clock()
        known = self._records.get(key)
        pending = self._pending.get(key)
        if (
            not (pending and (pending.pause_until or pending.announced or pending.rate_limited))
            and not (known.limits(policy.configured, now) if known else policy.configured)
            and now - self._visited_at.get(key, -math.inf) < UNLIMITED_VISIT_S
        ):
            # No limit in force, and nothing learned that could set one or a pause: only a
            # pause can hold it back; what answers used is written with the next visit.
            return Grant(max((known.paused_until if known else 0.0) - now, 0.0))
        changes = self._pending.pop(key, None) or PendingChanges()
        endpoint, model = key
        grant, record = await self._shared.take_rates(
            endpoint=endpoint,
            model=model,
            costs=costs,
            policy=policy,
            changes=changes,
            now=now,
            reserve=reserve,
        )
        if (newer := self._pending.get(key)) is not None:
            # Learned while the take was on its way: not in the record yet.
            record.apply(newer, policy.configured, self._clock())
        self._records[key] = record
        self._visited_at[key] = now
        return grant

    async def flush(self) -> None:
        for key in list(self._pending):
            if (changes := self._pending.pop(key, None)) is None or changes.empty():
                continue
            endpoint, model = key
            # A take of nothing: one transaction that writes the changes.
            await self._shared.take_rates(
                endpoint=endpoint,
                model=model,
                costs={},
                policy=self._policies.get(key, KeyPolicy()),
                changes=changes,
                now=self._clock(),
            )

    def update(self, key: LimitKey, changes: PendingChanges, policy: KeyPolicy) -> None:
        self._policies[key] = policy
        self._pending.setdefault(key, PendingChanges()).merge(changes)
        record = self._records.setdefault(key, KeyRecord())
        record.apply(changes, policy.configured, self._clock())

    def record(self, key: LimitKey) -> KeyRecord | None:
        return self._records.get(key)
