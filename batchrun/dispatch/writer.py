"""Group commit: the dispatcher's outcomes written many at a time, each durable before it
counts.

A request's task queues its write and waits; the writer task commits everything that has
piled up since its last commit in one transaction (up to ``batch_size``), then wakes the
tasks whose writes it committed. While one group commits, the next gathers, so under load
each commit carries many results and costs one fsync; at low load each goes alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from batchrun.dispatch.decisions import (
    Canceled,
    Expired,
    Finish,
    Released,
    Retry,
    Unsent,
    Write,
)
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.records import FinishedRequest, RetryLater


class GroupWriter:
    """Commits :data:`~batchrun.dispatch.decisions.Write` values in groups, one store
    transaction each."""

    def __init__(
        self,
        *,
        db: WorkerDatabase,
        owner: str,
        clock: Callable[[], datetime],
        batch_size: int,
    ) -> None:
        self._db = db
        self._owner = owner
        self._clock = clock
        self._batch_size = batch_size
        self._pending: list[tuple[Write, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._loop(), name="batchrun-writer")

    async def write(self, write: Write) -> None:
        """Queue a write for the next group commit and wait until it is committed (the
        commit's error, if it failed)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((write, done))
        self._wake.set()
        await done

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            group = self._pending[: self._batch_size]
            del self._pending[: len(group)]
            if group:
                await self._commit(group)
            if self._pending:
                self._wake.set()
            elif self._closing:
                return

    async def _commit(self, group: list[tuple[Write, asyncio.Future[None]]]) -> None:
        finished: list[FinishedRequest] = []
        retries: list[RetryLater] = []
        by_kind: dict[type[Write], list[int]] = {
            Unsent: [],
            Released: [],
            Canceled: [],
            Expired: [],
        }
        for write, _ in group:
            match write:
                case Finish(result=result):
                    finished.append(result)
                case Retry(retry=retry):
                    retries.append(retry)
                case _:
                    by_kind[type(write)].append(write.request_id)
        try:
            await self._db.record(
                owner=self._owner,
                now=self._clock(),
                finished=finished,
                retries=retries,
                unsent=by_kind[Unsent],
                released=by_kind[Released],
                canceled=by_kind[Canceled],
                expired=by_kind[Expired],
            )
        except Exception as exc:
            for _, done in group:
                if not done.done():
                    done.set_exception(exc)
            return
        for _, done in group:
            if not done.done():
                done.set_result(None)
