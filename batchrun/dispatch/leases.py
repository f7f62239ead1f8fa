"""A worker's leases: taken with each claim, renewed by a heartbeat, checked before a send.

A claimed request is leased to its worker for ``lease_s``; the heartbeat renews the leases of
every request the worker holds each quarter of that, and returns the requests of workers that
died. Before a request is sent, :meth:`LeaseKeeper.still_held` makes sure no other worker
took it over meanwhile (which happens only when this one stood still longer than a lease).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable

from batchrun.dispatch.clock import LoopClock
from batchrun.dispatch.owners import is_dead_here
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.records import ClaimedRequest

log = logging.getLogger(__name__)


class LeaseKeeper:
    """The leases of one worker (``owner``) on one database."""

    def __init__(self, *, db: WorkerDatabase, owner: str, lease_s: float, clock: LoopClock) -> None:
        self._db = db
        self._owner = owner
        self._lease_s = lease_s
        self._clock = clock
        # When each held request's lease was taken or last renewed (loop time).
        self._leased_at: dict[int, float] = {}

    def taken(self, requests: Iterable[ClaimedRequest]) -> None:
        """These requests were just claimed (leased) by this worker."""
        now = self._clock.monotonic()
        for request in requests:
            self._leased_at[request.id] = now

    def forget(self, request_id: int) -> None:
        """The request left this worker's hands."""
        self._leased_at.pop(request_id, None)

    async def reclaim_abandoned(self) -> None:
        """Requests of workers that died: at once for dead processes on this host, after
        their lease for the others."""
        owners = await self._db.lease_owners()
        dead = [owner for owner in owners if owner and is_dead_here(owner)]
        if dead:
            released = await self._db.release_leases(dead)
            log.info("took back %d requests of %d stopped workers", released, len(dead))
        await self._db.reclaim_expired_leases(self._clock.now())

    async def heartbeat(self, held: Callable[[], list[int]]) -> None:
        """Forever: renew the leases of the requests ``held()`` names each quarter lease, and
        return dead workers' requests."""
        while True:
            await asyncio.sleep(self._lease_s / 4)
            await self.renew(held())
            await self._db.reclaim_expired_leases(self._clock.now())

    async def renew(self, request_ids: list[int]) -> set[int]:
        """Renew the leases of these requests; returns those this worker still holds."""
        renewed_at = self._clock.monotonic()
        renewed = await self._db.renew_leases(
            owner=self._owner,
            request_ids=request_ids,
            now=self._clock.now(),
            lease_s=self._lease_s,
        )
        for request_id in renewed:
            self._leased_at[request_id] = renewed_at
        return renewed

    async def still_held(self, request: ClaimedRequest) -> bool:
        """Whether this worker still holds the request's lease. Asks the database only when
        the lease has not been renewed for half its length: the heartbeat renews every
        quarter, so that happens only after the worker stood still (a SIGSTOP, a frozen
        machine, a database unreachable for a while)."""
        leased_at = self._leased_at.get(request.id, -math.inf)
        if self._clock.monotonic() - leased_at < self._lease_s / 2:
            return True
        return request.id in await self.renew([request.id])
