"""The batch lane at work: create provider batches, reconcile unknown creates, poll, cancel,
import.

One :class:`LaneDriver` runs beside the real-time dispatcher in a run. Each round it

1. moves the ready batch-lane requests of each batch into provider batches: the intent row
   and the requests' move to state ``provider`` are one transaction, then the create is sent
   (one at a time per run, so at most one create per worker is ever in doubt);
2. settles intent rows whose create answer was lost (:mod:`batchrun.batch_lane.reconcile`);
3. cancels provider batches of canceled batches, and those past the auto lane's cut-off;
4. polls each created provider batch at most once per ``poll_interval_s`` (shared by every
   worker through ``next_poll_at``; longer after failures, and as ``retry-after`` asks);
5. keeps the prompt-cache entries of the groups whose followers created provider batches
   hold warm: one small real-time request per group before its entry expires
   (:mod:`batchrun.batch_lane.warmth`; sent through the target's ``refresh``, recorded in
   the store with its tokens);
6. imports the results of ended ones as they are read (:mod:`batchrun.batch_lane.importing`:
   successes at once, the other lines after the whole file, so a success always wins; a
   line for a request already imported changes nothing, so an import interrupted by a crash
   or a stop runs again from the start), then closes them. A download past the endpoint's
   bounds (``batch_results_max_bytes``, ``batch_results_max_s``) keeps what it imported and
   pauses the batch, naming the bound; a stop ends a download at once.

Requests that come back (expired, transient errors, the auto cut-off) are queued in the
real-time lane, and the dispatcher, lingering while the driver is active, is woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from batchrun.batch_lane.importing import ResultsImport
from batchrun.batch_lane.reconcile import Adopt, Ambiguous, NotCreated, reconcile
from batchrun.batch_lane.results import ImportContext
from batchrun.batch_lane.warmth import (
    REFRESH_AT_SHARE,
    kept_warm_ttl_s,
    refresh_body,
    refresh_due_at,
)
from batchrun.dispatch.clock import LoopClock
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.records import (
    BatchSummary,
    BudgetStop,
    Lane,
    ProviderBatchRow,
    Usage,
)
from batchrun.store.provider_batches import request_line
from batchrun.transport.batch_api import (
    BatchApiClient,
    CallFailed,
    ProviderBatchInfo,
    created_batch_body,
)
from batchrun.transport.endpoints import Endpoint
from batchrun.transport.messages import request_body

log = logging.getLogger(__name__)

# The longest wait between two polls of one provider batch after failures.
MAX_POLL_BACKOFF_S = 600.0
# How long after an intent a create still in flight could land (beyond its timeout).
CREATE_GRACE_MARGIN_S = 30.0
# While batch-lane requests wait for a real-time leader, look again this often.
WAITING_RECHECK_S = 1.0


@dataclass
class LaneReport:
    """What the batch lane leaves to the run when it ends."""

    # Batches the lane cannot go on with, and why (bad credentials, an ambiguous create).
    paused: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchBudget:
    """A batch's budget as the lane sees it: what may still be committed (the budget less
    what was spent and what provider batches hold, at their worst case; None: no budget),
    and a request's worst-case cost in this lane (model, input estimate, max_tokens)."""

    remaining_usd: Callable[[], Awaitable[float | None]]
    worst_cost_usd: Callable[[str, int, int], float]


# Sends a cache refresh (model, body) in real time, paced; its usage, or None unanswered.
Refresh = Callable[[str, str], Awaitable[Usage | None]]


@dataclass(frozen=True)
class LaneTarget:
    """Where a batch's batch-lane requests go: the endpoint with the batch API, its client,
    the auto lane's cut-off (when real time takes over), if any, its budget, and what sends
    its cache refreshes (None: its groups are not kept warm)."""

    endpoint: Endpoint
    client: BatchApiClient
    cancel_at: datetime | None = None
    budget: BatchBudget | None = None
    refresh: Refresh | None = None


class LaneDriver:
    """Runs the batch lane of some batches until nothing is left in it."""

    def __init__(
        self,
        db: WorkerDatabase,
        targets: Mapping[str, LaneTarget],
        *,
        poll_interval_s: float,
        create_timeout_s: float,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        """``targets`` by batch id. ``create_timeout_s`` bounds a create; an intent older
        than it (plus a margin) whose batch the provider does not list was never created."""
        self._db = db
        self._targets = dict(targets)
        self._poll_interval_s = poll_interval_s
        self._grace_s = create_timeout_s + CREATE_GRACE_MARGIN_S
        self._note = on_note or (lambda _text: None)
        self._clock = LoopClock()
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        # Set by stop(): ends a results download at once.
        self._stop_event = asyncio.Event()
        # Provider batches whose results download passed a bound: left alone in this run.
        self._cut_off: set[int] = set()
        # True while a create is in flight (see creating).
        self._creating = False
        self._done = False
        self._create_not_before: dict[str, float] = {}
        self._max_bytes: dict[str, int] = {}
        self.report = LaneReport()

    # -- what the dispatcher sees (batchrun.dispatch.seams.Linger) --------------------------

    def active(self) -> bool:
        """True while requests may still come back from the batch lane."""
        return not self._done

    async def wait(self, timeout_s: float) -> None:
        """Until requests came back to the queue, the driver finished, or ``timeout_s``."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            return
        self._changed.clear()

    @property
    def creating(self) -> bool:
        """True while a create is in flight: cutting it off would leave it in doubt (to be
        reconciled, or settled by a person where the provider lists no batches), so a stop
        lets it end (it is bounded by the create timeout)."""
        return self._creating

    def stop(self) -> None:
        """Finish the step in progress (a create or an import chunk; a results download
        stops at once, what it read imported), then stop."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> LaneReport:
        """Work the lane until nothing is left in it, or until stopped."""
        try:
            while not self._stopping:
                next_s = await self._round()
                if next_s is None:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(next_s, 0.0))
        finally:
            self._done = True
            self._changed.set()
        return self.report

    async def _round(self) -> float | None:
        """One round over every batch; seconds until the next is due, None when done."""
        batch_ids = list(self._targets)
        summaries = {batch_id: await self._db.get_batch(batch_id) for batch_id in batch_ids}
        for batch_id, summary in summaries.items():
            if self._stopping:
                return None
            if summary.paused_reason is None and summary.cancel_initiated_at is None:
                await self._create_all(batch_id)
        waits: list[float] = []
        rows = await self._db.provider_batches_of(batch_ids, open_only=True)
        for row in rows:
            if self._stopping:
                return None
            wait_s = await self._attend(row, summaries[row.batch_id])
            if wait_s is not None:
                waits.append(wait_s)
        warm_s = await self._keep_warm(batch_ids)
        if warm_s is not None:
            waits.append(warm_s)
        work = await self._db.lane_work(batch_ids)
        for batch_id, per_lane in work.items():
            summary = summaries[batch_id]
            # Paused in this round (a refused create, the budget): nothing more to wait for.
            paused = summary.paused_reason is not None or batch_id in self.report.paused
            if per_lane.get(Lane.BATCH) and not paused and summary.cancel_initiated_at is None:
                waits.append(self._create_wait_s(self._targets[batch_id].endpoint.name))
        return min(waits) if waits else None

    async def _keep_warm(self, batch_ids: list[str]) -> float | None:
        """Refresh the 1-hour cache entries of the groups that created provider batches hold
        and that are due; seconds until the next is due (None: none is held)."""
        rows = await self._db.provider_batches_of(batch_ids, open_only=True)
        # A provider batch that ended needs its groups no more (its results are in, to
        # import): a group is refreshed only while one of its provider batches runs.
        live = [
            row.id
            for row in rows
            if row.state == "created" and row.ended_at is None and row.id not in self._cut_off
        ]
        if not live:
            return None
        waits: list[float] = []
        for group in await self._db.held_cache_groups(live):
            if self._stopping:
                return None
            target = self._targets.get(group.batch_id)
            if target is None or target.refresh is None or target.endpoint.batch_api is None:
                continue
            scale = target.endpoint.batch_api.cache_ttl_scale
            ttl_s = kept_warm_ttl_s(group.params_json, scale=scale)
            if ttl_s is None:
                continue
            if not group.tracked:
                # The leader's 1-hour write: its premium is the group's priming overhead.
                await self._db.track_cache_group(group, one_hour_write=True)
            now = self._clock.now()
            due = refresh_due_at(group, ttl_s)
            if now < due:
                waits.append((due - now).total_seconds())
                continue
            if not await self._db.take_cache_refresh(group, now=now):
                # Another worker refreshes it; look again at the next poll.
                waits.append(self._poll_interval_s)
                continue
            usage = await target.refresh(group.model, refresh_body(group.params_json))
            await self._db.record_cache_refresh(group, now=now, usage=usage)
            if usage is None:
                # Unanswered: the entry was not read; try again at the next poll.
                waits.append(self._poll_interval_s)
            else:
                waits.append(ttl_s * REFRESH_AT_SHARE)
        return min(waits) if waits else None

    def _create_wait_s(self, endpoint: str) -> float:
        loop_now = asyncio.get_running_loop().time()
        return max(self._create_not_before.get(endpoint, 0.0) - loop_now, WAITING_RECHECK_S)

    # -- creating ---------------------------------------------------------------------------

    async def _create_all(self, batch_id: str) -> None:
        target = self._targets[batch_id]
        endpoint = target.endpoint
        api = endpoint.batch_api
        assert api is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if loop.time() < self._create_not_before.get(endpoint.name, 0.0):
                return
            # From the intent row to the create's outcome recorded: see creating.
            self._creating = True
            try:
                limit_usd = None if target.budget is None else await target.budget.remaining_usd()
                intent = await self._db.take_for_provider_batch(
                    batch_id=batch_id,
                    endpoint=endpoint.name,
                    max_requests=api.max_requests,
                    max_bytes=self._max_bytes.get(endpoint.name, api.max_bytes),
                    now=self._clock.now(),
                    cancel_at=target.cancel_at,
                    make_line=_line_maker(endpoint),
                    max_cost_usd=limit_usd,
                    worst_cost_usd=None if target.budget is None else target.budget.worst_cost_usd,
                )
                if intent is None:
                    return
                if isinstance(intent, BudgetStop):
                    await self._over_budget(batch_id, limit_usd or 0.0, intent.next_usd)
                    return
                body = created_batch_body(intent.lines)
                count = len(intent.lines)
                del intent.lines[:]
                answer = await target.client.create(body)
                del body
                if isinstance(answer, ProviderBatchInfo):
                    await self._db.provider_batch_created(
                        intent.row_id,
                        provider_id=answer.id,
                        created_at=answer.created_at,
                        next_poll_at=self._clock.now() + timedelta(seconds=self._poll_interval_s),
                    )
                    self._note(
                        f"{batch_id}: provider batch {answer.id} created on {endpoint.name} with "
                        f"{count:,} requests"
                    )
                    continue
                if not await self._create_failed(
                    batch_id, intent.row_id, answer, api.max_bytes, alone=count == 1
                ):
                    return
            finally:
                self._creating = False

    async def _over_budget(self, batch_id: str, left_usd: float, next_usd: float) -> None:
        """Pause the batch when its budget leaves room for none of its ready batch-lane
        requests, once nothing its provider batches hold is still to come back (their
        answers may cost less than their worst case and free some of the budget)."""
        work = (await self._db.lane_work([batch_id]))[batch_id]
        if work.get("provider"):
            return
        why = (
            f"max-cost reached: ${max(left_usd, 0):.4f} of the budget is left and the next "
            f"request in the batch lane may cost up to ${next_usd:.4f}; raise the budget with "
            f"`batchrun run {batch_id} --max-cost USD`"
        )
        await self._db.pause_batch(batch_id, why)
        self.report.paused[batch_id] = why

    async def _create_failed(
        self,
        batch_id: str,
        row_id: int,
        failed: CallFailed,
        configured_bytes: int,
        *,
        alone: bool,
    ) -> bool:
        """Settle a failed create (``alone``: of a single request); True to go on creating."""
        endpoint = self._targets[batch_id].endpoint.name
        now = self._clock.now()
        loop = asyncio.get_running_loop()
        if failed.kind == "unknown_outcome":
            # Left as an intent: reconciled against the provider's list before anything else.
            self._note(
                f"{batch_id}: a create on {endpoint} may or may not have happened "
                f"({failed.message}); checking the provider's list before going on"
            )
            return False
        if failed.kind == "too_large" and alone:
            # One request too large for a provider batch goes in real time, where its own
            # size limit applies.
            await self._db.provider_batch_not_created(
                row_id, note=failed.message, lane=Lane.REALTIME, now=now
            )
            self._changed.set()
            return True
        await self._db.provider_batch_not_created(
            row_id, note=failed.message, lane=Lane.BATCH, now=now
        )
        if failed.kind == "too_large":
            current = self._max_bytes.get(endpoint, configured_bytes)
            self._max_bytes[endpoint] = max(current // 2, 1024)
            return True
        if failed.kind in ("auth", "final"):
            why = f"the batch API of {endpoint} refused the create: {failed.message}"
            await self._db.pause_batch(batch_id, why)
            self.report.paused[batch_id] = why
            return False
        delay_s = failed.retry_after_s or self._poll_interval_s
        self._create_not_before[endpoint] = loop.time() + delay_s
        return False

    # -- one provider batch -----------------------------------------------------------------

    async def _attend(self, row: ProviderBatchRow, summary: BatchSummary) -> float | None:
        """Do what the row needs now; seconds until it needs attention again (None: it
        needs none from this run)."""
        target = self._targets[row.batch_id]
        now = self._clock.now()
        if row.id in self._cut_off:
            return None
        if row.state == "ambiguous":
            self.report.paused[row.batch_id] = row.note or "a provider batch is ambiguous"
            return None
        if row.next_poll_at is not None and row.next_poll_at > now:
            due_s = (row.next_poll_at - now).total_seconds()
            if row.state == "created" and await self._cancel_if_due(row, summary, target, now):
                return 0.0
            return due_s
        interval = timedelta(seconds=self._poll_interval_s)
        if not await self._db.take_provider_poll(row.id, now=now, next_poll_at=now + interval):
            return self._poll_interval_s
        if row.state == "intent":
            return await self._reconcile(row, target, now)
        assert row.provider_id is not None
        await self._cancel_if_due(row, summary, target, now)
        info = await target.client.retrieve(row.provider_id)
        if isinstance(info, CallFailed):
            return await self._poll_failed(row, info)
        if not info.ended:
            await self._db.provider_batch_polled(
                row.id, status=info.status, counts=dict(info.counts)
            )
            return self._poll_interval_s
        await self._db.provider_batch_polled(
            row.id,
            status=info.status,
            counts=dict(info.counts),
            results_url=info.results_url,
            ended_at=info.ended_at,
        )
        await self._import(row, info, summary, target)
        return 0.0

    async def _cancel_if_due(
        self, row: ProviderBatchRow, summary: BatchSummary, target: LaneTarget, now: datetime
    ) -> bool:
        """Cancel the provider batch if its batch is canceling or the cut-off passed."""
        if row.cancel_sent_at is not None or row.provider_id is None:
            return False
        canceling = summary.cancel_initiated_at is not None
        cut_off = row.cancel_at is not None and now >= row.cancel_at
        if not canceling and not cut_off:
            return False
        answer = await target.client.cancel(row.provider_id)
        if isinstance(answer, CallFailed) and answer.kind == "transient":
            return False
        await self._db.provider_cancel_sent(row.id, now)
        why = "its batch was canceled" if canceling else "the auto lane's cut-off passed"
        self._note(f"{row.batch_id}: provider batch {row.provider_id} canceled ({why})")
        return True

    async def _poll_failed(self, row: ProviderBatchRow, failed: CallFailed) -> float:
        if failed.kind == "not_found":
            # The provider no longer knows it (deleted; a simulator that restarted): what it
            # held was never answered, so it goes back into the batch lane.
            back = await self._db.provider_batch_not_created(
                row.id,
                note=f"the provider does not know it: {failed.message}",
                lane=Lane.BATCH,
                now=self._clock.now(),
            )
            self._note(
                f"{row.batch_id}: provider batch {row.provider_id} is unknown to the "
                f"provider; its {back:,} requests go back to the batch lane"
            )
            return 0.0
        backoff_s = min(self._poll_interval_s * 2.0 ** (row.poll_failures + 1), MAX_POLL_BACKOFF_S)
        wait_s = float(max(backoff_s, failed.retry_after_s or 0.0))
        await self._db.provider_batch_polled(
            row.id,
            failed_note=failed.message,
            next_poll_at=self._clock.now() + timedelta(seconds=wait_s),
        )
        log.warning(
            "provider batch %s: %s; next look in %g s", row.provider_id, failed.message, wait_s
        )
        return wait_s

    async def _reconcile(self, row: ProviderBatchRow, target: LaneTarget, now: datetime) -> float:
        client = target.client
        if not client.can_list:
            if now - row.intent_at < timedelta(seconds=self._grace_s):
                return self._poll_interval_s
            await self._db.provider_batch_ambiguous(
                row.id,
                f"a create on {client.endpoint} was interrupted and its batch API lists no "
                "batches, so whether it happened cannot be checked",
            )
            return 0.0
        listed = await client.recent(row.intent_at - timedelta(minutes=10))
        if isinstance(listed, CallFailed):
            return await self._poll_failed(row, listed)
        known = await self._db.claimed_provider_ids(row.endpoint)
        verdict = reconcile(row, listed, known_ids=known, now=now, grace_s=self._grace_s)
        match verdict:
            case Adopt(batch=batch):
                await self._db.provider_batch_created(
                    row.id, provider_id=batch.id, created_at=batch.created_at, next_poll_at=now
                )
                self._note(
                    f"{row.batch_id}: an interrupted create had made provider batch "
                    f"{batch.id}; its results will be imported"
                )
                return 0.0
            case NotCreated(why=why):
                await self._db.provider_batch_not_created(
                    row.id, note=why, lane=Lane.BATCH, now=now
                )
                return 0.0
            case Ambiguous(why=why):
                await self._db.provider_batch_ambiguous(row.id, why)
                self.report.paused[row.batch_id] = why
                return 0.0
        wait_s: float = min(self._poll_interval_s, self._grace_s)
        return wait_s

    async def _import(
        self,
        row: ProviderBatchRow,
        info: ProviderBatchInfo,
        summary: BatchSummary,
        target: LaneTarget,
    ) -> None:
        api = target.endpoint.batch_api
        assert api is not None
        now = self._clock.now()
        context = ImportContext(
            provider_id=info.id,
            endpoint=target.endpoint.name,
            discount=api.discount,
            now=now,
            canceling=summary.cancel_initiated_at is not None,
            deadline_passed=now >= summary.expires_at,
        )
        if self._stopping:
            return
        importing = ResultsImport(self._db, row.id, context, self._clock)
        try:
            failed = await target.client.results(info, importing.handle, stop=self._stop_event)
            if failed is None:
                await importing.finish()
        finally:
            importing.close()
        tally, unreadable = importing.tally, importing.unreadable
        if failed is not None:
            await self._download_ended(row, info, failed, tally.stored, target)
            return
        leftover = await self._db.close_provider_batch(
            row.id,
            now=self._clock.now(),
            leftover_reason=(
                f"provider batch {info.id} gave no readable result for it"
                if unreadable
                else f"provider batch {info.id} gave no result for it"
            ),
            requeue=unreadable == 0,
        )
        back = tally.requeued + (leftover if not unreadable else 0)
        self._note(
            f"{row.batch_id}: provider batch {info.id} imported: {tally.stored:,} results"
            + (f", {back:,} back to real time" if back else "")
            + (f", {unreadable:,} unreadable lines" if unreadable else "")
        )
        if back:
            self._changed.set()

    async def _stop_reading(self, row: ProviderBatchRow, failed: CallFailed, why: str) -> None:
        """Leave the provider batch alone for this run, its requests held, and pause its
        batch with ``why``."""
        self._cut_off.add(row.id)
        await self._db.provider_batch_polled(row.id, failed_note=failed.message)
        await self._db.pause_batch(row.batch_id, why)
        self.report.paused[row.batch_id] = why

    async def _download_ended(
        self,
        row: ProviderBatchRow,
        info: ProviderBatchInfo,
        failed: CallFailed,
        stored: int,
        target: LaneTarget,
    ) -> None:
        """A results download that ended before the file did: the successes it read are in;
        the rest of the file is read again from the start by a later import."""
        kept = f"{stored:,} results read before were imported"
        if failed.kind == "stopped":
            self._note(
                f"{row.batch_id}: provider batch {info.id}: reading its results stopped; "
                f"{kept}, the next run reads the rest"
            )
            return
        if failed.kind == "cut_off":
            # Another try would end the same way: the batch waits for a person (a larger
            # bound, or a look at the provider).
            await self._stop_reading(
                row,
                failed,
                f"provider batch {info.id}: {failed.message}; {kept}; raise the bound in "
                f"[endpoints.{target.endpoint.name}] of the config file if the file is that "
                f"large, then `batchrun run {row.batch_id}` reads it again",
            )
            return
        if failed.kind in ("not_found", "auth"):
            # The provider said the batch ended: a 404 (or a refusal) of its results does not
            # mean it never ran, and its requests may have been billed, so none is sent
            # again; the batch waits for a person.
            await self._stop_reading(
                row,
                failed,
                f"provider batch {info.id} has ended but {target.endpoint.name} did not give "
                f"its results ({failed.message}); {kept}; the rest stay held (they may have "
                f"been billed): check the provider, then `batchrun run {row.batch_id}` reads "
                "them again",
            )
            return
        if stored:
            self._note(f"{row.batch_id}: provider batch {info.id}: {kept}")
        await self._poll_failed(row, failed)


def _line_maker(endpoint: Endpoint) -> Callable[[str, str], bytes]:
    """A request's line of the create body: its params with the endpoint's ``extra_body``,
    as the real-time client sends them (``transport.messages.request_body``)."""
    if not endpoint.extra_body:
        return request_line
    extra = dict(endpoint.extra_body)

    def make(custom_id: str, params_json: str) -> bytes:
        return request_line(custom_id, request_body(params_json, None, extra).decode())

    return make
