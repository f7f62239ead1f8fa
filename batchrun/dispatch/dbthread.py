"""Runs synchronous store calls on one dedicated thread, retrying when the connection is lost.

One thread, not a pool: a worker's database calls stay in order, use one connection at a
time, and never contend with each other for SQLite's write lock; the event loop keeps
sending requests while a group of results is committed.

A call that fails with `DatabaseUnavailableError` (Postgres restarted, a network blip, an
administrator terminating backends) is tried again after 0.5, 1, 2, 4 and 8 s, sleeping on
the event loop. Every store call may be repeated: a transaction that failed was rolled back,
and the writes are guarded (a result is inserted only once; requests move only from the
state this worker holds them in), so repeating one whose COMMIT did land changes nothing.
When the last try fails, the error says so; what was committed stays, and the requests this
worker held go back to the queue once their lease runs out, so the next run resumes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from batchrun.errors import DatabaseUnavailableError

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger(__name__)

# Waits before each retry of a call whose database connection was lost: 15.5 s in all.
DEFAULT_RETRY_DELAYS_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


class DatabaseThread:
    """An awaitable front for blocking database calls."""

    def __init__(self, *, retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrun-db")
        self._retry_delays_s = tuple(retry_delays_s)

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``function(*args, **kwargs)`` on the database thread and return its result.

        Retries while the database is unavailable; raises `DatabaseUnavailableError` saying
        how long it tried once the retries are used up.
        """
        loop = asyncio.get_running_loop()
        bound = functools.partial(function, *args, **kwargs)
        for delay_s in self._retry_delays_s:
            try:
                return await loop.run_in_executor(self._executor, bound)
            except DatabaseUnavailableError as exc:
                log.warning("%s; retrying in %g s", exc.message, delay_s)
            await asyncio.sleep(delay_s)
        try:
            return await loop.run_in_executor(self._executor, bound)
        except DatabaseUnavailableError as exc:
            tries = len(self._retry_delays_s) + 1
            raise DatabaseUnavailableError(
                f"{exc.message}; gave up after {tries} tries over "
                f"{sum(self._retry_delays_s):g} s. Every result received was committed or "
                "tried that often; run `batchrun run` again once the database is back (requests "
                "this run held are sent again once their lease runs out)"
            ) from exc

    def close(self) -> None:
        """Wait for the call in progress, then stop the thread."""
        self._executor.shutdown(wait=True)
