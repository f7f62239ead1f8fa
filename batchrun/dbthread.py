"""Runs synchronous store calls on one dedicated thread.

One thread, not a pool: a worker's database calls stay in order, use one connection at a
time, and never contend with each other for SQLite's write lock; the event loop keeps
sending requests while a group of results is committed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class DatabaseThread:
    """An awaitable front for blocking database calls."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrun-db")

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``function(*args, **kwargs)`` on the database thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs)
        )

    def close(self) -> None:
        """Wait for the call in progress, then stop the thread."""
        self._executor.shutdown(wait=True)
