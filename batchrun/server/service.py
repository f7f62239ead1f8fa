"""What each route of the API does with the store, off the event loop.

Store calls are synchronous; they run on a small thread pool so the server keeps answering
while one is slow. ``retrieve`` is what clients poll, often many at once: a batch's summary
(a count over its requests) is read at most once per ``summary_ttl_s`` however many ask,
and concurrent askers share the one read. What a client changes (create, cancel, delete)
drops the cached copy, so the client that made the change sees it at once.

Every batch belongs to an owner (a key id, or None without authentication): another
owner's batch is answered exactly as an unknown one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, ParamSpec, TypeVar

from batchrun.config.prices import PriceTable
from batchrun.errors import BatchrunError, InputFileError
from batchrun.export.anthropic import anthropic_lines
from batchrun.input.ingest import submit_requests
from batchrun.ops.lane_wiring import cancel_provider_batches
from batchrun.records import BatchSummary
from batchrun.server.bodies import request_lines, request_position
from batchrun.server.errors import ApiError, api_error_of
from batchrun.transport.endpoints import Endpoints, auth_headers

if TYPE_CHECKING:
    from batchrun.store.store import Store

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# How stale a polled batch may be: a second of a batch that runs for minutes.
SUMMARY_TTL_S = 0.5
# Threads for store calls (reads run side by side; SQLite writes queue on its lock).
STORE_THREADS = 4
# Bytes of results lines sent at a time.
RESULTS_CHUNK_BYTES = 256 * 1024
# Cached summaries kept before the stale ones are dropped.
MAX_CACHED_BATCHES = 10_000
# How often batches past their expiry are expired when no worker is running here.
EXPIRE_EVERY_S = 5.0


@dataclass
class _Cached:
    until: float
    summary: BatchSummary


class BatchService:
    """The API's operations on one store, for one owner at a time."""

    def __init__(
        self,
        store: Store,
        *,
        known: Endpoints,
        prices: PriceTable,
        env: Mapping[str, str],
        default_endpoint: str,
        on_created: Callable[[], None] | None = None,
        summary_ttl_s: float = SUMMARY_TTL_S,
        sends_here: bool = False,
    ) -> None:
        """``sends_here``: this process's workers send the batches, so an endpoint whose key
        is not set here is refused at create (and as the default, at start) instead of
        stopping the workers later."""
        self.store = store
        self.known = known
        self.prices = prices
        self._env = env
        self.default_endpoint = known.check(default_endpoint)
        self._sends_here = sends_here
        if sends_here:
            self._check_keys(self.default_endpoint)
        self._on_created = on_created
        self._ttl_s = summary_ttl_s
        self._pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="batchrun-serve")
        self._cache: dict[str, _Cached] = {}
        self._reading: dict[str, asyncio.Task[BatchSummary]] = {}

    def close(self) -> None:
        """Let the store threads go (the store itself belongs to the caller)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` on the store threads; batchrun's errors come back as
        the API's (404, 400, 503)."""
        return await self._call(function, *args, **kwargs)

    async def _call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: function(*args, **kwargs))
        except BatchrunError as exc:
            raise api_error_of(exc) from None

    # -- batches ----------------------------------------------------------------------------

    async def create(
        self, owner: str | None, body: IO[bytes], *, endpoint: str | None
    ) -> BatchSummary:
        """Validate and store the body's requests as one batch of ``owner``'s, sent through
        ``endpoint`` (default: the server's); 400 naming each bad ``requests[i]``."""
        try:
            target = self.known.check(endpoint or self.default_endpoint)
            if self._sends_here:
                self._check_keys(target)
        except BatchrunError as exc:
            raise ApiError(400, f"batchrun-endpoint: {exc}") from None
        try:
            batch_id = await self._call(self._create, owner, body, target)
        except ApiError as exc:
            raise ApiError(exc.status, _one_line(exc.message), exc.error_type) from None
        if self._on_created is not None:
            self._on_created()
        return await self.get(owner, batch_id, fresh=True)

    def _check_keys(self, endpoint: str) -> None:
        """MissingApiKeyError (naming the variable, never a key) unless every endpoint a
        batch on ``endpoint`` is sent to has its key in this process's environment."""
        for member in self.known.members(endpoint).values():
            auth_headers(member, self._env)

    def _create(self, owner: str | None, body: IO[bytes], endpoint: str) -> str:
        try:
            return submit_requests(
                self.store,
                request_lines(body),
                source="requests",
                endpoint=endpoint,
                now=_now(),
                owner=owner,
                locate=request_position,
            )
        except InputFileError as exc:
            raise ApiError(400, str(exc)) from None

    async def get(self, owner: str | None, batch_id: str, *, fresh: bool = False) -> BatchSummary:
        """``owner``'s batch (404 for another's or an unknown one), at most ``summary_ttl_s``
        old unless ``fresh``."""
        loop = asyncio.get_running_loop()
        cached = self._cache.get(batch_id)
        if cached is not None and not fresh and cached.until > loop.time():
            summary = cached.summary
        elif fresh:
            # Its own read: one already under way may have begun before the change.
            summary = self._remember(batch_id, await self._get_batch(batch_id))
        else:
            summary = await self._read_summary(batch_id)
        if summary.owner != owner:
            raise _unknown(batch_id)
        return summary

    async def _read_summary(self, batch_id: str) -> BatchSummary:
        """One read of the batch shared by everyone asking while it runs. The read is a task
        of its own, so an asker that goes away (its client hung up) leaves it to the rest."""
        task = self._reading.get(batch_id)
        if task is None:
            task = asyncio.create_task(self._get_batch(batch_id))
            self._reading[batch_id] = task
            task.add_done_callback(lambda done: self._read_done(batch_id, done))
        return await asyncio.shield(task)

    def _read_done(self, batch_id: str, task: asyncio.Task[BatchSummary]) -> None:
        del self._reading[batch_id]
        # exception() also marks a failure as seen: the askers got it.
        if not task.cancelled() and task.exception() is None:
            self._remember(batch_id, task.result())

    async def _get_batch(self, batch_id: str) -> BatchSummary:
        try:
            return await self._call(self.store.batches.get, batch_id)
        except ApiError as exc:
            raise _unknown(batch_id) if exc.status == 404 else exc from None

    def _remember(self, batch_id: str, summary: BatchSummary) -> BatchSummary:
        """Keep ``summary`` for ``summary_ttl_s`` (dropping stale ones past a size)."""
        now = asyncio.get_running_loop().time()
        if len(self._cache) >= MAX_CACHED_BATCHES:
            self._cache = {k: v for k, v in self._cache.items() if v.until > now}
        self._cache[batch_id] = _Cached(now + self._ttl_s, summary)
        return summary

    async def page(
        self,
        owner: str | None,
        *,
        limit: int,
        before_id: str | None,
        after_id: str | None,
    ) -> tuple[list[BatchSummary], bool]:
        """A page of ``owner``'s batches, newest first, and whether there are more."""
        if before_id is not None and after_id is not None:
            raise ApiError(400, "give before_id or after_id, not both")
        try:
            return await self._call(
                self.store.batches.page,
                owner,
                limit=limit,
                before_id=before_id,
                after_id=after_id,
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            name = "before_id" if before_id is not None else "after_id"
            raise ApiError(
                400,
                f"{name}: no batch {before_id or after_id!r} (deleted meanwhile?); list "
                "again from the start",
            ) from None

    async def cancel(self, owner: str | None, batch_id: str) -> BatchSummary:
        """Start canceling ``owner``'s batch (a no-op once it ended); its provider batches
        are canceled at the provider too."""
        await self.get(owner, batch_id, fresh=True)
        now = _now()
        await self._call(self.store.lifecycle.cancel, batch_id, now)
        open_provider = await self._call(
            self.store.provider_batches.of_batches, [batch_id], open_only=True
        )
        if open_provider:
            notes = await cancel_provider_batches(
                self.store, batch_id, known=self.known, env=self._env, now=now
            )
            for note in notes:
                log.info("%s: %s", batch_id, note)
        return await self.get(owner, batch_id, fresh=True)

    async def delete(self, owner: str | None, batch_id: str) -> None:
        """Delete ``owner``'s ended batch with its requests and results."""
        await self.get(owner, batch_id, fresh=True)
        await self._call(self.store.lifecycle.delete, batch_id)
        self._cache.pop(batch_id, None)

    async def results(
        self, owner: str | None, batch_id: str, *, partial: bool
    ) -> AsyncIterator[bytes]:
        """The results lines of ``owner``'s batch, streamed from the store in chunks; 400
        before the batch ended unless ``partial`` (then the finished requests only)."""
        batch = await self.get(owner, batch_id, fresh=True)
        if batch.processing_status != "ended" and not partial:
            raise ApiError(
                400,
                f"batch {batch_id} has not ended ({batch.counts.processing:,} requests still "
                "processing); poll it until processing_status is ended, or ask with "
                "?partial=true for the finished ones",
            )
        return self._stream_results(batch_id)

    async def _stream_results(self, batch_id: str) -> AsyncIterator[bytes]:
        # One thread reads the whole result set, so its database cursor stays on it.
        with ThreadPoolExecutor(1, thread_name_prefix="batchrun-results") as reader:
            loop = asyncio.get_running_loop()
            lines = anthropic_lines(self.store.results.iter_rows(batch_id))
            try:
                while chunk := await loop.run_in_executor(reader, _take, lines):
                    yield chunk
            finally:
                await loop.run_in_executor(reader, _close, lines)

    # -- housekeeping -----------------------------------------------------------------------

    async def expire_forever(self) -> None:
        """Expire batches past their time every few seconds (workers do it too; this keeps
        an API-only server right when none runs)."""
        while True:
            try:
                expired = await self._call(self.store.lifecycle.expire_due, _now())
            except ApiError as exc:
                log.warning("expiring batches: %s", exc.message)
            else:
                for batch_id in expired:
                    self._cache.pop(batch_id, None)
            await asyncio.sleep(EXPIRE_EVERY_S)


def _take(lines: Iterator[str]) -> bytes:
    """The next lines, about RESULTS_CHUNK_BYTES of them, as bytes (empty at the end)."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        chunk.append(line)
        size += len(line) + 1
        if size >= RESULTS_CHUNK_BYTES:
            break
    return ("\n".join(chunk) + "\n").encode() if chunk else b""


def _close(lines: Iterator[str]) -> None:
    """End the read (and its transaction) now, not when the generator is collected."""
    close = getattr(lines, "close", None)
    if close is not None:
        close()


def _unknown(batch_id: str) -> ApiError:
    return ApiError(404, f"no message batch {batch_id!r}")


def _one_line(message: str) -> str:
    """A multi-line problem list as one message: Anthropic's messages are one line."""
    lines = [line for line in message.splitlines() if line.strip()]
    if lines and lines[-1].startswith("nothing was stored"):
        lines[-1] = "nothing was stored"
    return "; ".join(lines)


def _now() -> datetime:
    return datetime.now(UTC)
