"""Wall-clock times derived from the event-loop clock.

Scheduling reads only ``loop.time()`` (as aiolimiter does), so tests that fast-forward the
loop clock (the looptime plugin) move every deadline with it. Times written to the database
(leases, back-off) need a wall-clock instant that other processes understand: this clock
anchors the loop clock to the wall clock once, at start. Hosts sharing one database must keep
their clocks in sync (NTP); a skew well below the lease length is harmless.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class LoopClock:
    """Current UTC time, advancing with the running event loop's clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._anchor_wall = datetime.now(UTC)
        self._anchor_loop = self._loop.time()

    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""
        return self._anchor_wall + timedelta(seconds=self._loop.time() - self._anchor_loop)

    def monotonic(self) -> float:
        """The event loop's clock, in seconds."""
        return self._loop.time()
