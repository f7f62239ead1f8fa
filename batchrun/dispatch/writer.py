"""Group commit: the dispatcher's outcomes written many at a time, each durable before it
counts.

A request's task queues its write and waits; the writer task commits everything that has
piled up since its last commit in one transaction (up to ``batch_size``), then wakes the
tasks whose writes it committed. While one group commits, the next gathers, so under load
each commit carries many results and costs one fsync.

At a lower pace (a worker held to its share of a rate limit sends a few requests a second),
a group is also given time to gather: the writer commits once :data:`GROUP_WRITES` writes
wait, or once the oldest has waited :data:`GROUP_WINDOW_S`, whichever comes first, so that
a worker makes a few commits a second rather than one per request. The price is what a
``kill -9`` can cost: the answers received but not yet committed are sent again by the
worker that takes the requests over, and those are at most the writes waiting for the window
(fewer than :data:`GROUP_WRITES`, or what arrived in the last :data:`GROUP_WINDOW_S`) plus
the group being committed when the process died.
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
from batchrun.dispatch.repairs import Repair
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.records import AnswerTurn, FinishedRequest, RetryLater

# A group is committed once this many writes wait...
GROUP_WRITES = 5
# ... or once the oldest of them has waited this long (loop seconds).
GROUP_WINDOW_S = 0.5


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
        group_writes: int = GROUP_WRITES,
        window_s: float = GROUP_WINDOW_S,
    ) -> None:
        """``group_writes`` and ``window_s``: a group commits once that many writes wait or
        the oldest waited that long (see the module)."""
        self._db = db
        self._group_writes = group_writes
        self._window_s = window_s

        self._owner = owner
        self._clock = clock
        self._batch_size = batch_size
        # Writes waiting, each with its future and when it was queued (loop time).
        self._pending: list[tuple[Write | Repair, asyncio.Future[None], float]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._loop(), name="batchrun-writer")

    async def write(self, write: Write | Repair) -> None:
        """Queue a write for the next group commit and wait until it is committed (the
        commit's error, if it failed)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((write, done, loop.time()))
        self._wake.set()
        await done

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._gather(loop)
            group = [(write, done) for write, done, _ in self._pending[: self._batch_size]]
            del self._pending[: len(group)]
            if group:
                await self._commit(group)
            if self._pending:
                self._wake.set()
            elif self._closing:
                return

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the group is big enough or its oldest write old enough (see the
        module), or the writer closes."""
        while 0 < len(self._pending) < self._group_writes and not self._closing:
            left_s = self._pending[0][2] + self._window_s - loop.time()
            if left_s <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), left_s)
            except TimeoutError:
                return
            self._wake.clear()

    async def _commit(self, group: list[tuple[Write | Repair, asyncio.Future[None]]]) -> None:
        finished: list[FinishedRequest] = []
        retries: list[RetryLater] = []
        turns: list[AnswerTurn] = []
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
                case Repair(turn=turn):
                    turns.append(turn)
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
                turns=turns,
            )
        except Exception as exc:
            for _, done in group:
                if not done.done():
                    done.set_exception(exc)
            return
        for _, done in group:
            if not done.done():
                done.set_result(None)
