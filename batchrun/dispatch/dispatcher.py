"""The dispatch loop: take a slot → claim → limit → send → hand over.

The dispatcher gets the worker's database (:class:`~batchrun.dispatch.worker_db.WorkerDatabase`),
one sender per endpoint, a limiter and a config. It imports neither httpx nor SQLAlchemy:
senders return :data:`~batchrun.records.Outcome` values, and what becomes of each request is
decided by the pure :func:`~batchrun.dispatch.decisions.decide`. Time is the event loop's, so
tests drive it with a fake clock.

A claimed request is handled by its own task. Its write goes to the group writer
(``dispatch.writer``); the request's task finishes only after that commit, so a result is
durable before it counts. Retries are data: a transient failure sends the request back to the
queue with a ``not_before``, so a crash during a back-off loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from batchrun.dispatch.clock import LoopClock
from batchrun.dispatch.config import DispatchConfig
from batchrun.dispatch.decisions import (
    Backoff,
    Decision,
    Finish,
    Pause,
    Released,
    Retry,
    StopKind,
    Unsent,
    after_stop,
    decide,
)
from batchrun.dispatch.owners import is_dead_here, new_owner_id
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.dispatch.writer import GroupWriter
from batchrun.input.estimate import estimate_input_tokens
from batchrun.limits.limiter import Demand, Limiter, Permit
from batchrun.records import ClaimedRequest, Fatal, Outcome, Retryable, error_body

log = logging.getLogger(__name__)

# Requests claimed per round trip; small enough that a worker does not hoard work that
# other workers could send.
_CLAIM_CHUNK = 64
# Claimed requests waiting for the limiter, at most. Requests in flight are bounded by
# max_concurrency; under a rate limit, how many are in flight then follows from the rate
# and the latency, instead of a fixed number of requests being held waiting.
_MAX_WAITING = 32
# What the limiter is told about a reservation that was never used.
_NOT_SENT = Fatal(error_body("api_error", "not sent"), 0)


class Sender(Protocol):
    """Sends one Messages request to one endpoint."""

    @property
    def key_hint(self) -> str:
        """What the user should check when authentication fails (e.g. the key variable)."""
        ...

    async def send(self, params_json: str) -> Outcome:
        """POST the body and classify the answer."""
        ...

    async def count_tokens(self, params_json: str) -> int | None:
        """The endpoint's input-token count of the body, or None."""
        ...


@dataclass
class RunReport:
    """What one run did."""

    sent: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    retried: int = 0
    rate_limited: int = 0
    paused: dict[str, str] = field(default_factory=dict)
    error_types: Counter[str] = field(default_factory=Counter)
    interrupted: str | None = None
    released: int = 0
    # Requests not sent because another worker had taken them over meanwhile.
    lost_leases: int = 0
    # Batches this run stopped sending because they were canceled meanwhile.
    canceled_batches: set[str] = field(default_factory=set)
    # The latest failure, short ("HTTP 529 overloaded_error"), for progress lines.
    last_failure: str | None = None

    def count(self, decision: Decision, outcome: Outcome) -> None:
        """Count what an answer led to."""
        if isinstance(outcome, Retryable) and outcome.rate_limited:
            self.rate_limited += 1
        match decision:
            case Finish(result=result) if result.result_type == "succeeded":
                self.succeeded += 1
            case Finish(result=result):
                self.errored += 1
                self.error_types[result.error_type or "api_error"] += 1
                self.last_failure = result.error_type
            case Retry(retry=retry):
                self.retried += 1
                self.last_failure = retry.last_error


class Dispatcher:
    """Runs batches to completion under one owner id."""

    def __init__(
        self,
        *,
        db: WorkerDatabase,
        senders: Mapping[str, Sender],
        limiter: Limiter,
        config: DispatchConfig,
        rng: random.Random | None = None,
        owner: str | None = None,
        observer: RunObserver | None = None,
    ) -> None:
        self._db = db
        self._senders = senders
        self._limiter = limiter
        self._config = config
        self._rng = rng or random.Random()
        self.owner = owner or new_owner_id()
        self.report = RunReport()
        self._tasks: dict[asyncio.Task[None], ClaimedRequest] = {}
        self._waiting = 0
        self._endpoints: dict[str, str] = {}
        self._active: dict[str, str] = {}
        self._stop_events: dict[str, asyncio.Event] = {}
        # Why each stopped batch stopped.
        self._stop_kinds: dict[str, StopKind] = {}
        self._sending: dict[asyncio.Task[None], ClaimedRequest] = {}
        # When each held request's lease was taken or last renewed (loop time).
        self._leased_at: dict[int, float] = {}
        self._force_stop = asyncio.Event()
        self._observer = observer
        self._backoff = Backoff(config.retry_initial_delay_s, config.retry_max_delay_s)
        self._drained: set[str] = set()
        if observer is not None:
            observer.attach(self, limiter)

    async def run(self, batch_endpoints: Mapping[str, str]) -> RunReport:
        """Dispatch every queued request of these batches (id → endpoint name) until none is
        left; returns what was done. Canceled and paused batches stop early."""
        self._clock = LoopClock()
        self._send_slots = asyncio.Semaphore(self._config.max_concurrency)
        self._endpoints = dict(batch_endpoints)
        self._active = dict(batch_endpoints)
        self._stop_events = {batch_id: asyncio.Event() for batch_id in batch_endpoints}
        ids = list(batch_endpoints)
        await self._db.clear_pauses(ids)
        await self._reclaim_abandoned_requests()
        writer = GroupWriter(
            db=self._db,
            owner=self.owner,
            clock=self._clock.now,
            batch_size=self._config.write_batch_size,
        )
        self._write = writer.write
        writer.start()
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="batchrun-heartbeat")
        try:
            await self._dispatch_loop()
        finally:
            heartbeat.cancel()
            await self._finish_in_flight()
            await writer.close()
            await asyncio.gather(heartbeat, return_exceptions=True)
        return self.report

    def request_stop(self, reason: str) -> None:
        """Stop dispatching (Ctrl-C, SIGTERM): nothing new is sent, requests in flight get
        ``config.shutdown_grace_s`` to finish and be recorded, the rest go back to the
        queue. A second call stops at once."""
        if self.report.interrupted is not None:
            self._force_stop.set()
            return
        self.report.interrupted = reason
        log.warning("%s: stopping; requests in flight are being recorded", reason)
        for batch_id in list(self._active):
            self._stop(batch_id, "shutdown")

    async def _finish_in_flight(self) -> None:
        """Wait for the requests still being handled; after the grace period of a stop (or a
        second stop), interrupt the sends still open and return those requests to the queue."""
        if not self._tasks:
            return
        everything = asyncio.ensure_future(asyncio.wait(list(self._tasks)))
        if self.report.interrupted is None:
            await everything
            return
        forced = asyncio.ensure_future(self._force_stop.wait())
        await asyncio.wait(
            {everything, forced},
            timeout=self._config.shutdown_grace_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        forced.cancel()
        interrupted = dict(self._sending)
        for task in interrupted:
            task.cancel()
        await everything
        if interrupted:
            self.report.released += len(interrupted)
            await asyncio.gather(
                *(self._write(Released(request.id)) for request in interrupted.values())
            )

    async def _reclaim_abandoned_requests(self) -> None:
        """Requests of workers that died: at once for dead processes on this host, after
        their lease for the others."""
        owners = await self._db.lease_owners()
        dead = [owner for owner in owners if owner and is_dead_here(owner)]
        if dead:
            released = await self._db.release_leases(dead)
            log.info("took back %d requests of %d stopped workers", released, len(dead))
        await self._db.reclaim_expired_leases(self._clock.now())

    # -- the loop ---------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_control_check = 0.0
        while True:
            if loop.time() >= next_control_check:
                await self._apply_controls()
                next_control_check = loop.time() + self._config.control_poll_s
            self._raise_task_errors()
            if not self._active:
                return
            room = min(
                self._config.max_concurrency - len(self._tasks), _MAX_WAITING - self._waiting
            )
            claimed: list[ClaimedRequest] = []
            if room > 0:
                claimed = await self._db.claim(
                    owner=self.owner,
                    batch_ids=list(self._active),
                    limit=min(room, _CLAIM_CHUNK),
                    now=self._clock.now(),
                    lease_s=self._config.lease_s,
                )
            claimed_at = self._clock.monotonic()
            for request in claimed:
                self._leased_at[request.id] = claimed_at
                task = asyncio.create_task(self._process(request))
                self._tasks[task] = request
                task.add_done_callback(self._forget_task)
            if len(claimed) == min(room, _CLAIM_CHUNK) and claimed:
                await asyncio.sleep(0)
                continue
            until_control = max(next_control_check - loop.time(), 0.0)
            if self._tasks:
                await asyncio.wait(
                    list(self._tasks), timeout=until_control, return_when=asyncio.FIRST_COMPLETED
                )
                continue
            wait_s = await self._db.seconds_until_ready(list(self._active), self._clock.now())
            if wait_s is None:
                return
            await asyncio.sleep(min(wait_s, until_control) if wait_s > 0 else 0)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            request = self._tasks.pop(task, None)
            if request is not None:
                self._leased_at.pop(request.id, None)

    def _raise_task_errors(self) -> None:
        for task in list(self._tasks):
            if task.done() and not task.cancelled() and task.exception() is not None:
                self._tasks.pop(task)
                raise task.exception()  # type: ignore[misc]

    async def _apply_controls(self) -> None:
        """Stop dispatching batches that expired, or that another process canceled or
        paused."""
        now = self._clock.now()
        await self._db.expire_due(now)
        stopped = await self._db.stopped_batches(list(self._active), now)
        for batch_id, why in stopped.items():
            if why == "canceling":
                self.report.canceled_batches.add(batch_id)
                self._stop(batch_id, "canceling")
            elif why == "ended":
                # Finished elsewhere: what this worker still holds was taken over.
                self._stop(batch_id, "ended")
            elif why == "expired":
                self._stop(batch_id, "expired")
            else:
                self.report.paused.setdefault(batch_id, why)
                self._stop(batch_id, "paused")

    def _stop(self, batch_id: str, kind: StopKind) -> None:
        self._active.pop(batch_id, None)
        self._stop_kinds.setdefault(batch_id, kind)
        self._stop_events[batch_id].set()

    # -- one request ------------------------------------------------------------------------

    async def _process(self, request: ClaimedRequest) -> None:
        endpoint = self._endpoints[request.batch_id]
        self._waiting += 1
        try:
            permit = await self._wait_for_turn(request, endpoint)
        finally:
            self._waiting -= 1
        if permit is None:
            return
        if not await self._still_held(request):
            # Another worker took it over while this one was not looking (frozen, or cut off
            # from the database longer than a lease): sending now would pay for it twice.
            self._limiter.settle(permit, _NOT_SENT)
            self.report.lost_leases += 1
            log.warning("request %s: its lease was lost; not sending it", request.custom_id)
            return
        if self._observer is not None and not await self._admitted(request, permit):
            return
        sender = self._senders[endpoint]
        loop = asyncio.get_running_loop()
        async with self._send_slots:
            task = asyncio.current_task()
            assert task is not None
            self._sending[task] = request
            try:
                started = loop.time()
                outcome = await sender.send(request.params_json)
                latency_ms = round((loop.time() - started) * 1000)
            finally:
                del self._sending[task]
        self.report.sent += 1
        self._limiter.settle(permit, outcome)
        if self._observer is not None:
            self._observer.settled(request, permit, outcome)
        decision = decide(
            request,
            outcome,
            endpoint=endpoint,
            key_hint=sender.key_hint,
            max_attempts=self._config.max_attempts_for(endpoint),
            backoff=self._backoff,
            now=self._clock.now(),
            latency_ms=latency_ms,
            input_estimate=permit.input_estimate,
            jitter=self._rng.random(),
        )
        self.report.count(decision, outcome)
        match decision:
            case Pause(reason=reason):
                await self._pause(request, reason)
            case Retry(retry=retry):
                log.debug(
                    "request %s: %s; retrying at %s",
                    request.custom_id,
                    retry.last_error,
                    retry.not_before,
                )
                await self._write(decision)
            case Finish():
                await self._write(decision)

    async def _wait_for_turn(self, request: ClaimedRequest, endpoint: str) -> Permit | None:
        """Wait for the limiter; None (and the request handed back) if the batch stops first."""
        stop = self._stop_events[request.batch_id]
        if not stop.is_set():
            raw_estimate = request.estimated_input_tokens
            if self._config.count_tokens:
                counted = await self._senders[endpoint].count_tokens(request.params_json)
                raw_estimate = counted or raw_estimate
            if raw_estimate is None:
                raw_estimate = estimate_input_tokens(json.loads(request.params_json))
            demand = Demand(raw_estimate, request.max_tokens)
            turn = asyncio.ensure_future(self._limiter.acquire((endpoint, request.model), demand))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({turn, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if turn.done() and not stop.is_set():
                return turn.result()
            turn.cancel()
            if turn.done() and not turn.cancelled():
                # Granted just as the batch stopped: give the reservation back.
                self._limiter.settle(turn.result(), _NOT_SENT)
        kind = self._stop_kinds.get(request.batch_id, "shutdown")
        if kind == "canceling":
            self.report.canceled += 1
        await self._write(after_stop(request, kind))
        return None

    async def _heartbeat_loop(self) -> None:
        """Keep the leases of held requests alive, and return dead workers' requests."""
        interval_s = self._config.lease_s / 4
        while True:
            await asyncio.sleep(interval_s)
            held = [request.id for request in self._tasks.values()]
            await self._renew(held)
            await self._db.reclaim_expired_leases(self._clock.now())

    async def _renew(self, request_ids: list[int]) -> set[int]:
        """Renew the leases of these requests; returns those this worker still holds."""
        renewed_at = self._clock.monotonic()
        renewed = await self._db.renew_leases(
            owner=self.owner,
            request_ids=request_ids,
            now=self._clock.now(),
            lease_s=self._config.lease_s,
        )
        for request_id in renewed:
            self._leased_at[request_id] = renewed_at
        return renewed

    async def _still_held(self, request: ClaimedRequest) -> bool:
        """Whether this worker still holds the request's lease. Asks the database only when
        the lease has not been renewed for half its length: the heartbeat renews every
        quarter, so that happens only after the worker stood still (a SIGSTOP, a frozen
        machine, a database unreachable for a while)."""
        leased_at = self._leased_at.get(request.id, -math.inf)
        if self._clock.monotonic() - leased_at < self._config.lease_s / 2:
            return True
        return request.id in await self._renew([request.id])

    # -- observing and stopping a run from outside (progress, budgets, time limits) --------

    async def _admitted(self, request: ClaimedRequest, permit: Permit) -> bool:
        """Ask the observer whether the request may be sent; if not, pause its batch with the
        observer's reason (as a halt does) and hand the request back unsent."""
        assert self._observer is not None
        reason = self._observer.admit(request, permit)
        if reason is None:
            return True
        self._limiter.settle(permit, _NOT_SENT)
        await self._pause(request, reason)
        return False

    async def _pause(self, request: ClaimedRequest, reason: str) -> None:
        """Pause the request's batch (once) with ``reason``, and hand the request back."""
        if request.batch_id not in self.report.paused:
            self.report.paused[request.batch_id] = reason
            # The CLI prints the reason once in its summary; logged for -v only.
            log.info("batch %s paused: %s", request.batch_id, reason)
            await self._db.pause_batch(request.batch_id, reason)
            self._stop(request.batch_id, "paused")
        await self._write(Unsent(request.id))

    def drain(self) -> None:
        """Stop claiming and sending: requests claimed but not yet sent go back to the queue
        as they were, requests in flight finish and are recorded, then :meth:`run` returns.
        Unlike a pause, nothing is written to the batches, so other workers carry on."""
        for batch_id in list(self._active):
            self._drained.add(batch_id)
            self._stop(batch_id, "drained")

    def progress(self) -> DispatchProgress:
        """A read-only snapshot of the work in hand."""
        return DispatchProgress(
            in_flight=len(self._tasks) - self._waiting,
            waiting=self._waiting,
            active_batches=tuple(self._active),
            draining=bool(self._drained),
        )


@dataclass(frozen=True)
class DispatchProgress:
    """Requests this worker holds: being sent (or recorded), and waiting for the limiter."""

    in_flight: int
    waiting: int
    active_batches: tuple[str, ...]
    draining: bool


class RunObserver(Protocol):
    """Watches a run from inside the dispatcher: sees each request before it is sent and
    each answer, and may stop a batch (a budget)."""

    def attach(self, dispatcher: Dispatcher, limiter: Limiter) -> None:
        """Called once, when the dispatcher is made (to read its progress, or drain it)."""
        ...

    def admit(self, request: ClaimedRequest, permit: Permit) -> str | None:
        """Called just before ``request`` is sent; a reason instead pauses its batch."""
        ...

    def settled(self, request: ClaimedRequest, permit: Permit, outcome: Outcome) -> None:
        """Called when the answer to a sent request is in, before it is recorded."""
        ...
