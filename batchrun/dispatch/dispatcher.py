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

Batches may join a dispatch while it runs (:meth:`Dispatcher.join`): a long-running worker
(``run --forever``, ``serve``) starts a batch submitted meanwhile at once instead of after the
work in hand, which may take hours.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Callable, Mapping

from batchrun.dispatch.capacity import Capacity
from batchrun.dispatch.clock import LoopClock
from batchrun.dispatch.counts import DispatchProgress, RunReport
from batchrun.dispatch.decisions import (
    Backoff,
    Finish,
    Pause,
    Released,
    Retry,
    StopKind,
    Unsent,
    after_stop,
    decide,
    unreadable_from,
)
from batchrun.dispatch.health import publish
from batchrun.dispatch.leases import LeaseKeeper
from batchrun.dispatch.owners import new_owner_id
from batchrun.dispatch.repairs import Repair, RepairDesk
from batchrun.dispatch.routing import Assignment, Halted, Router
from batchrun.dispatch.seams import Linger, RunObserver, Sender
from batchrun.dispatch.settings import DispatchConfig
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.dispatch.writer import GroupWriter
from batchrun.input.estimate import estimate_input_tokens
from batchrun.limits.limiter import Demand, Limiter, Permit
from batchrun.records import ClaimedRequest, Fatal, Outcome, Pool, error_body

log = logging.getLogger(__name__)

# Requests claimed per round trip; small enough that a worker does not hoard work that
# other workers could send.
_CLAIM_CHUNK = 64
# Claimed requests waiting for the limiter, at most. Requests in flight are bounded by
# max_concurrency; under a rate limit, how many are in flight then follows from the rate
# and the latency, instead of a fixed number of requests being held waiting.
_MAX_WAITING = 32
# Under a rate limit, claims wait until this many of the requests waiting for the limiter
# have gone, and then claim them together: a worker held to a few requests a second then
# makes one claim every few seconds, not one per request.
_CLAIM_WAITING_ROOM = _MAX_WAITING // 2
# Batches past their expiry are looked for this often (their expiry is hours away; the
# check is a write transaction).
_EXPIRY_CHECK_S = 5.0
# Waits shorter than this are not waited (see _dispatch_loop).
_CLOCK_RESOLUTION_S = 1e-6
# A control reading made on the way (dispatch.controls) serves a check only while at least
# this much of the control interval is left from it.
_READING_LEFT_S = 0.01
# What the limiter is told about a reservation that was never used.
_NOT_SENT = Fatal(error_body("api_error", "not sent"), 0)


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
        pools: Mapping[str, Pool] | None = None,
        clock: Callable[[], float] | None = None,
        linger: Linger | None = None,
    ) -> None:
        """``senders`` by endpoint name; a batch whose endpoint is one of ``pools`` is sent
        through the pool's members. ``clock``: Unix seconds for what is published to other
        processes (endpoint health). ``linger``: while it is active, an empty queue is
        waited on instead of ending the run (requests may come back from the batch lane)."""
        self._linger = linger
        self._db = db
        self._senders = senders
        self._limiter = limiter
        self._config = config
        self._rng = rng or random.Random()
        self.owner = owner or new_owner_id()
        self.report = RunReport()
        self._tasks: dict[asyncio.Task[None], ClaimedRequest] = {}
        # Tasks that ended with an error, for the loop to raise; and what the loop waits on
        # for the next task to end. Waiting on every task instead (asyncio.wait) costs
        # callbacks on all of them at each wake: with hundreds in flight (1-3 s answers at
        # 10,000 a minute) that was a third of the worker's CPU.
        self._errored: list[asyncio.Task[None]] = []
        self._task_ended: asyncio.Future[None] | None = None
        self._waiting = 0
        self._endpoints: dict[str, str] = {}
        self._active: dict[str, str] = {}
        self._stop_events: dict[str, asyncio.Event] = {}
        # Why each stopped batch stopped.
        self._stop_kinds: dict[str, StopKind] = {}
        self._sending: dict[asyncio.Task[None], ClaimedRequest] = {}
        self._force_stop = asyncio.Event()
        self._observer = observer
        self._backoff = Backoff(config.retry_initial_delay_s, config.retry_max_delay_s)
        self._drained: set[str] = set()
        # Batches added by join(), and how many joins there were (the loop checks it to see
        # whether batches joined while it awaited the database).
        self._joined: set[str] = set()
        self._joins = 0
        # Whether join() may add batches: while run()'s dispatch loop runs.
        self._joinable = False
        # Which claim group goes first next time (see _claim).
        self._claim_turn = 0
        # When _apply_controls next looks for expired batches (loop time).
        self._next_expiry_check = -math.inf
        # Resolved by join() to wake the loop from its wait (made when the loop waits).
        self._nudge: asyncio.Future[None] | None = None
        self.router = Router(pools or {}, limiter)
        self._unix_clock = clock
        # Requests in flight at most: the config's, or worked out from the limits.
        self._capacity = Capacity(config, self.router, limiter)
        self._repairs = RepairDesk(db)
        if observer is not None:
            observer.attach(self, limiter)

    async def run(self, batch_endpoints: Mapping[str, str]) -> RunReport:
        """Dispatch every queued request of these batches (id → endpoint name) until none is
        left; returns what was done. Canceled and paused batches stop early."""
        self._clock = LoopClock()
        self._send_slots = asyncio.Semaphore(self._capacity.ceiling)
        self._endpoints = dict(batch_endpoints)
        self._active = dict(batch_endpoints)
        self._stop_events = {batch_id: asyncio.Event() for batch_id in batch_endpoints}
        # Control checks ride on the rate-bank takes while the dispatch runs.
        self._db.controls.watch(lambda: list(self._active), self._clock.now)
        ids = list(batch_endpoints)
        await self._db.clear_pauses(ids)
        self._leases = LeaseKeeper(
            db=self._db, owner=self.owner, lease_s=self._config.lease_s, clock=self._clock
        )
        await self._leases.reclaim_abandoned()
        writer = GroupWriter(
            db=self._db,
            owner=self.owner,
            clock=self._clock.now,
            batch_size=self._config.write_batch_size,
        )
        self._write = writer.write
        writer.start()
        heartbeat = asyncio.create_task(
            self._leases.heartbeat(lambda: [request.id for request in self._tasks.values()]),
            name="batchrun-heartbeat",
        )
        self._joinable = True
        try:
            await self._dispatch_loop()
        finally:
            self._joinable = False
            self._db.controls.stop_watching()
            heartbeat.cancel()
            await self._finish_in_flight()
            await self._release_limits()
            await writer.close()
            await asyncio.gather(heartbeat, return_exceptions=True)
        return self.report

    async def _release_limits(self) -> None:
        """Give the capacity this worker took from the shared buckets and did not spend
        back, for the workers that carry on (a failure to is logged: what is left over
        would only lapse, refilling at the limit's pace)."""
        try:
            await self._limiter.release()
        except Exception as exc:  # the database went away as the run ended
            log.warning("could not give unspent rate-limit capacity back: %s", exc)

    def join(self, batch_endpoints: Mapping[str, str]) -> set[str]:
        """Add batches (id → endpoint name) to the dispatch :meth:`run` is doing, and return
        the ids that joined. A worker that runs for long (``run --forever``, ``serve``) thus
        starts a batch submitted meanwhile at once, instead of after the batches in hand.

        A batch joins when its endpoint is one this dispatcher has a sender for, or a pool
        whose members it all has: the limits, senders and routes are the run's, made when it
        started. From then on it is one of the run's batches (controls, pauses, progress),
        and shares every claim with them (see :meth:`_claim`), so it starts even when the
        others hold more queued requests than the run can take at once.

        Nothing joins before :meth:`run` started, after its loop ended, or while it stops or
        drains; a batch this dispatch has already had (running, or stopped: ended, paused,
        canceled) is left as it is. The caller checks what the store knows: the batch is in
        progress, not paused, in the real-time lane, without a budget the observer cannot
        keep. Call it on the event loop that runs :meth:`run`."""
        if not self._joinable or self.report.interrupted is not None or self._drained:
            return set()
        joined: set[str] = set()
        for batch_id, name in batch_endpoints.items():
            if batch_id in self._endpoints or not self._sends_to(name):
                continue
            self._endpoints[batch_id] = name
            self._active[batch_id] = name
            self._stop_events[batch_id] = asyncio.Event()
            self._joined.add(batch_id)
            joined.add(batch_id)
        if joined:
            self._joins += 1
            log.info("joined the run: %s", ", ".join(sorted(joined)))
            if self._nudge is not None and not self._nudge.done():
                self._nudge.set_result(None)
        return joined

    def _sends_to(self, name: str) -> bool:
        """Whether every endpoint of the route ``name`` (a pool, or one endpoint) has a
        sender here."""
        return all(member.endpoint in self._senders for member in self.router.route(name).members)

    def request_stop(self, reason: str) -> None:
        """Stop dispatching (Ctrl-C, SIGTERM): nothing new is sent, requests in flight get
        :attr:`DispatchConfig.shutdown_grace_s` to finish and be recorded, the rest go back to the
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

    # -- the loop ---------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_control_check = 0.0
        while True:
            # Within a microsecond counts as due: a wait of 1e-15 s returns at once without
            # the clock moving (a fake clock cannot move by that), and the loop would spin.
            if loop.time() >= next_control_check - _CLOCK_RESOLUTION_S:
                next_control_check = await self._apply_controls() + self._config.control_poll_s
            self._raise_task_errors()
            if not self._active:
                return
            room = min(
                self._capacity.now(loop.time(), waiting=_MAX_WAITING) - len(self._tasks),
                _MAX_WAITING - self._waiting,
            )
            if self._waiting > _MAX_WAITING - _CLAIM_WAITING_ROOM:
                # Enough requests wait for the limiter: claim once there is room for a
                # group of them, not one per request sent (one transaction each).
                room = 0
            claimed: list[ClaimedRequest] = []
            if room > 0:
                claimed = await self._claim(min(room, _CLAIM_CHUNK))
            self._leases.taken(claimed)
            for request in claimed:
                task = asyncio.create_task(self._process(request))
                self._tasks[task] = request
                task.add_done_callback(self._forget_task)
            if len(claimed) == min(room, _CLAIM_CHUNK) and claimed:
                await asyncio.sleep(0)
                continue
            until_control = max(next_control_check - loop.time(), 0.0)
            if self._tasks:
                await asyncio.wait(
                    [self._ended(), self._nudged()],
                    timeout=until_control,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                continue
            joins = self._joins
            wait_s = await self._db.seconds_until_ready(list(self._active), self._clock.now())
            if joins != self._joins:
                # A batch joined while the database was asked about the others.
                continue
            if wait_s is None:
                if self._linger is None or not self._linger.active():
                    return
                await self._linger.wait(until_control)
                continue
            if wait_s > 0:
                await asyncio.wait([self._nudged()], timeout=min(wait_s, until_control))
            else:
                await asyncio.sleep(0)

    def _nudged(self) -> asyncio.Future[None]:
        """What join() resolves to end the loop's wait, so a joining batch starts now."""
        if self._nudge is None or self._nudge.done():
            self._nudge = asyncio.get_running_loop().create_future()
        return self._nudge

    async def _claim(self, limit: int) -> list[ClaimedRequest]:
        """Claim up to ``limit`` ready requests. The run's own batches are claimed together,
        in input order (as before any join). Once batches joined, each of them is a group of
        its own next to that one, and every claim is split between the groups, a different
        group first each time, the last taking what the others left: a joined batch starts
        even when the run's batches hold more queued requests than it can take at once."""
        groups = self._claim_groups()
        share = -(-limit // len(groups))
        claimed: list[ClaimedRequest] = []
        for index, batch_ids in enumerate(groups):
            wanted = limit - len(claimed)
            if index < len(groups) - 1:
                wanted = min(wanted, share)
            if wanted <= 0:
                break
            claimed += await self._db.claim(
                owner=self.owner,
                batch_ids=batch_ids,
                limit=wanted,
                now=self._clock.now(),
                lease_s=self._config.lease_s,
            )
        return claimed

    def _claim_groups(self) -> list[list[str]]:
        """The active batches in claim groups (see :meth:`_claim`), in this claim's order."""
        joined = [batch_id for batch_id in self._active if batch_id in self._joined]
        if not joined:
            return [list(self._active)]
        own = [batch_id for batch_id in self._active if batch_id not in self._joined]
        groups = ([own] if own else []) + [[batch_id] for batch_id in joined]
        first = self._claim_turn % len(groups)
        self._claim_turn += 1
        return groups[first:] + groups[:first]

    def _ended(self) -> asyncio.Future[None]:
        """What the next request task to end resolves (see ``_forget_task``)."""
        if self._task_ended is None or self._task_ended.done():
            self._task_ended = asyncio.get_running_loop().create_future()
        return self._task_ended

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            request = self._tasks.pop(task, None)
            if request is not None:
                self._leases.forget(request.id)
        else:
            self._errored.append(task)
        if self._task_ended is not None and not self._task_ended.done():
            self._task_ended.set_result(None)

    def _raise_task_errors(self) -> None:
        if self._errored:
            task = self._errored.pop(0)
            self._tasks.pop(task, None)
            raise task.exception()  # type: ignore[misc]

    async def _apply_controls(self) -> float:
        """Stop dispatching batches that expired, or that another process canceled or
        paused; returns the loop time the reading of them counts from. A reading that rode
        on a rate-bank take within the control interval serves (``dispatch.controls``);
        else this reads them."""
        now = self._clock.now()
        monotonic = self._clock.monotonic()
        checked = monotonic >= self._next_expiry_check
        if checked:
            self._next_expiry_check = monotonic + _EXPIRY_CHECK_S
            await self._db.expire_due(now)
        # A reading serves if asked for within the interval, leaving some of it: one that
        # would be due again at once would have the loop check again without end.
        since = monotonic - self._config.control_poll_s + _READING_LEFT_S
        reading = self._db.controls.fresh(self._active, since)
        if reading is not None:
            stopped, read_at = dict(reading.stopped), reading.asked_at
        else:
            stopped = await self._db.stopped_batches(list(self._active), now)
            read_at = self._clock.monotonic()
        if not checked and "expired" in stopped.values():
            # One of the run's batches is past its expiry: expire it now, not up to
            # _EXPIRY_CHECK_S later (the run may end before).
            await self._db.expire_due(now)
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
        return read_at

    def _stop(self, batch_id: str, kind: StopKind) -> None:
        self._active.pop(batch_id, None)
        self._stop_kinds.setdefault(batch_id, kind)
        self._stop_events[batch_id].set()

    # -- one request ------------------------------------------------------------------------

    async def _process(self, request: ClaimedRequest) -> None:
        route = self._endpoints[request.batch_id]
        # A request with an answer that did not match its schema is sent as its repair.
        request = await self._repairs.prepared(request)
        self._waiting += 1
        try:
            turn = await self._wait_for_turn(request, route)
        finally:
            self._waiting -= 1
        if turn is None:
            return
        assignment, permit = turn
        outcome: Outcome | None = None
        try:
            outcome, latency_ms = await self._send(request, assignment, permit)
        finally:
            if outcome is None:
                self.router.abandon(assignment)
        if outcome is not None:
            await self._answered(request, route, assignment, permit, outcome, latency_ms)

    async def _send(
        self, request: ClaimedRequest, assignment: Assignment, permit: Permit
    ) -> tuple[Outcome | None, int]:
        """Send the request to its assigned endpoint; (None, 0) if it must not be sent after
        all (its lease was lost, or the observer paused its batch)."""
        if not await self._leases.still_held(request):
            # Another worker took it over while this one was not looking (frozen, or cut off
            # from the database longer than a lease): sending now would pay for it twice.
            self._limiter.settle(permit, _NOT_SENT)
            self.report.lost_leases += 1
            log.warning("request %s: its lease was lost; not sending it", request.custom_id)
            return None, 0
        if self._observer is not None and not await self._admitted(request, permit):
            return None, 0
        sender = self._senders[assignment.endpoint]
        params_json = request.params_json
        if assignment.model != request.model:
            params_json = _with_model(params_json, assignment.model)
        loop = asyncio.get_running_loop()
        async with self._send_slots:
            task = asyncio.current_task()
            assert task is not None
            self._sending[task] = request
            try:
                started = loop.time()
                outcome = await sender.send(params_json)
                latency_ms = round((loop.time() - started) * 1000)
            finally:
                del self._sending[task]
        return outcome, latency_ms

    async def _answered(
        self,
        request: ClaimedRequest,
        route: str,
        assignment: Assignment,
        permit: Permit,
        outcome: Outcome,
        latency_ms: int,
    ) -> None:
        """Settle the limits, learn where to send next, and record what became of it."""
        endpoint = assignment.endpoint
        sender = self._senders[endpoint]
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
            failover=self.router.can_fail_over(route, endpoint),
        )
        reviewed = await self._repairs.reviewed(request, decision)
        self.report.count(reviewed, outcome)
        transition = self.router.finished(
            route,
            assignment,
            outcome,
            latency_s=latency_ms / 1000,
            halt_reason=decision.reason if isinstance(decision, Pause) else "",
        )
        if transition is not None and len(self.router.route(route).members) > 1:
            now = self._unix_clock() if self._unix_clock is not None else None
            await publish(self._db, route, transition, now=now)
        match decision:
            case Pause():
                if self.router.all_halted(route):
                    await self._pause(request, self.router.halt_reasons(route))
                else:
                    # Another member of the pool will take it.
                    await self._write(Unsent(request.id))
            case Retry(retry=retry):
                log.debug(
                    "request %s: %s; retrying at %s",
                    request.custom_id,
                    retry.last_error,
                    retry.not_before,
                )
                await self._write(decision)
        if isinstance(reviewed, Finish | Repair):
            await self._write(reviewed)

    async def _wait_for_turn(
        self, request: ClaimedRequest, route: str
    ) -> tuple[Assignment, Permit] | None:
        """Wait for an endpoint of the route and its limiter; None (and the request handed
        back) if the batch stops first."""
        stop = self._stop_events[request.batch_id]
        if not stop.is_set():
            turn = asyncio.ensure_future(self._assign_and_acquire(request, route))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({turn, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if turn.done() and not stop.is_set():
                found = turn.result()
                if isinstance(found, Halted):
                    await self._pause(request, "; ".join(found.reasons))
                    return None
                return found
            turn.cancel()
            await asyncio.gather(turn, return_exceptions=True)
            if not turn.cancelled() and isinstance(granted := turn.result(), tuple):
                # Granted just as the batch stopped: give the reservation back.
                self._limiter.settle(granted[1], _NOT_SENT)
                self.router.abandon(granted[0])
        kind = self._stop_kinds.get(request.batch_id, "shutdown")
        if kind == "canceling":
            self.report.canceled += 1
        await self._write(after_stop(request, kind))
        return None

    async def _assign_and_acquire(
        self, request: ClaimedRequest, route: str
    ) -> tuple[Assignment, Permit] | Halted:
        """An endpoint of the route (see ``dispatch.routing``), then its limiter's permit;
        again if the endpoint left the rotation while the request waited for its limits."""
        loop = asyncio.get_running_loop()
        while True:
            assignment = await self.router.assign(
                route,
                request.model,
                request.params_json,
                avoid=unreadable_from(request.last_error),
            )
            if isinstance(assignment, Halted):
                return assignment
            try:
                demand = await self._demand(request, assignment.endpoint)
                key = (assignment.endpoint, assignment.model)
                # Counted once per bucket: the models of a family share one.
                self._capacity.used(self._limiter.key_for(*key), loop.time())
                permit = await self._limiter.acquire(key, demand)
            except BaseException:
                self.router.abandon(assignment)
                raise
            if self.router.state(assignment.endpoint).usable(loop.time()):
                return assignment, permit
            self._limiter.settle(permit, _NOT_SENT)
            self.router.abandon(assignment)

    async def _demand(self, request: ClaimedRequest, endpoint: str) -> Demand:
        """What the request may cost: its input estimate (or count) and its max_tokens."""
        raw_estimate = request.estimated_input_tokens
        if self._config.count_tokens:
            counted = await self._senders[endpoint].count_tokens(request.params_json)
            raw_estimate = counted or raw_estimate
        if raw_estimate is None:
            raw_estimate = estimate_input_tokens(json.loads(request.params_json))
        return Demand(raw_estimate, request.max_tokens)

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

    @property
    def uses_pools(self) -> bool:
        """Whether some batch of the run is sent through a pool of several endpoints."""
        return any(len(self.router.route(name).members) > 1 for name in self._endpoints.values())

    def progress(self) -> DispatchProgress:
        """A read-only snapshot of the work in hand."""
        return DispatchProgress(
            in_flight=len(self._tasks) - self._waiting,
            waiting=self._waiting,
        )


def _with_model(params_json: str, model: str) -> str:
    """The request body with another model name (a pool member that names it differently)."""
    params = json.loads(params_json)
    params["model"] = model
    return json.dumps(params, ensure_ascii=False, separators=(",", ":"))
