"""A run's notifications (``run --notify URL``): what became of a batch, as one small JSON
document (:class:`Notice`) POSTed to a webhook by
:class:`~batchrun.transport.notify.WebhookNotifier`.

The events (:data:`NoticeEvent`):

- ``ended``: every request has a result; ``canceled``: it ended after a cancel; ``expired``:
  its time ran out with requests unsent (it ended, or ends once the requests in flight
  elsewhere are in);
- ``paused``: the run stopped sending it (a budget, a key refused, a provider batch that
  needs a person), with the reason;
- ``interrupted``: Ctrl-C, SIGTERM or a host's ``stop()`` ended the run with its work left.
  A run that stops at ``--max-runtime`` says nothing: that is the plan, and the next run
  continues.

When: :class:`RunNotices` is told by the run session when a pass starts, looks every
:data:`NOTIFY_POLL_S` while it dispatches (one database read for the pass's batches, so a
batch that ends or pauses early is told then, not hours later when a long pass ends), and
is told each pass's outcome when it ends. Each notification is a task of its own, sent while
the run goes on; when the run ends, what is still being tried gets at most
:data:`NOTIFY_EXIT_WAIT_S`.

Once: a batch's event is sent at most once per run (for a pass it is a (batch, event, end
time or reason) it has not sent), however many times it is looked at. A batch that was
already paused, for the very same reason, when a pass started it and pauses again is not
told again: a cron job re-running a batch whose key is still refused, or whose budget is
still spent, does not repeat the news every hour. A ``--forever`` run does not start again
what it paused (see :class:`~batchrun.ops.session.RunSession`), so it is told once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_serializer

from batchrun import __version__
from batchrun.config.prices import CostTotal, PriceTable, cost_of
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.records import BatchSummary
from batchrun.transport.notify import (
    NOTIFY_ATTEMPT_TIMEOUT_S,
    NOTIFY_RETRY_WINDOW_S,
    WebhookNotifier,
)

log = logging.getLogger(__name__)

NoticeEvent = Literal["ended", "canceled", "expired", "paused", "interrupted"]
# The document's format: a field added keeps it, a field changed or removed raises it.
NOTICE_VERSION = 1
# How often a pass in progress looks for batches that ended or paused.
NOTIFY_POLL_S = 5.0
# The most a run waits, when it ends, for the notifications still being tried.
NOTIFY_EXIT_WAIT_S = NOTIFY_RETRY_WINDOW_S + NOTIFY_ATTEMPT_TIMEOUT_S
# The new expiry the continue command of an expired batch gives it.
_RESUME_EXPIRES_IN = "24h"


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoticeBatch(_Document):
    """Which batch: its id, its name (None: unnamed) and its endpoint."""

    id: str
    name: str | None
    endpoint: str


class NoticeCounts(_Document):
    """The batch's requests per state when the notification was made, as ``status``."""

    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class Notice(_Document):
    """The JSON document a webhook receives (docs: operations.md, "Notifications")."""

    event: NoticeEvent
    batch: NoticeBatch
    request_counts: NoticeCounts
    # USD; None when part of it is unknown (a model without a price).
    cost_usd: float | None
    # Why it paused, expired or was interrupted; None when it ended or was canceled.
    reason: str | None
    # What continues it (None when there is nothing to continue), without global options
    # (--db, --config), which the receiver's reader knows better than the document would.
    continue_command: str | None
    at: datetime
    version: int = NOTICE_VERSION
    batchrun_version: str = __version__

    @field_serializer("at")
    def _iso(self, value: datetime) -> str:
        return value.isoformat()


def notice_of(
    batch: BatchSummary, event: NoticeEvent, *, reason: str | None, cost: CostTotal, at: datetime
) -> Notice:
    """The document of ``event`` for ``batch`` as it is now."""
    counts = batch.counts
    return Notice(
        event=event,
        batch=NoticeBatch(id=batch.id, name=batch.name, endpoint=batch.endpoint),
        request_counts=NoticeCounts(
            processing=counts.processing,
            succeeded=counts.succeeded,
            errored=counts.errored,
            canceled=counts.canceled,
            expired=counts.expired,
        ),
        cost_usd=None if cost.usd is None else round(cost.usd, 8),
        reason=reason,
        continue_command=continue_command(batch, event),
        at=at.replace(microsecond=0),
    )


def continue_command(batch: BatchSummary, event: NoticeEvent) -> str | None:
    """The command that carries the batch on after ``event``: ``run`` after a pause (once
    what the reason says is fixed) or an interruption, ``resume`` with a new expiry after
    the expiry, ``resume`` after a cancel that left requests unsent; None after a plain end."""
    match event:
        case "paused" | "interrupted":
            return f"batchrun run {batch.id}"
        case "expired":
            return f"batchrun resume {batch.id} --expires-in {_RESUME_EXPIRES_IN}"
        case "canceled" if batch.counts.canceled:
            return f"batchrun resume {batch.id}"
    return None


def event_of(
    batch: BatchSummary,
    *,
    paused: str | None,
    paused_before: str | None,
    interrupted: str | None,
    final: bool,
    now: datetime,
) -> tuple[NoticeEvent, str | None] | None:
    """What ``batch`` (as it is now) has to tell, with the reason, or None.

    ``paused``: why this run paused it (None: it did not); ``paused_before``: its pause
    reason when the pass started; ``interrupted``: why the run was stopped, if it was;
    ``final``: the pass is over (an interruption, and an expiry whose batch has not ended
    yet, are told only then)."""
    if batch.ended_at is not None:
        if batch.counts.expired and batch.expires_at <= batch.ended_at:
            return "expired", _expired_at(batch)
        if batch.cancel_initiated_at is not None:
            return "canceled", None
        return "ended", None
    if paused is not None:
        return None if paused == paused_before else ("paused", paused)
    if not final:
        return None
    if batch.expires_at <= now and batch.cancel_initiated_at is None:
        return "expired", _expired_at(batch)
    if interrupted is not None and batch.counts.processing:
        return "interrupted", interrupted
    return None


def _expired_at(batch: BatchSummary) -> str:
    return f"expired at {batch.expires_at:%Y-%m-%d %H:%M:%S} UTC with requests unsent"


class RunNotices:
    """The notifications of one run: which to send (each once), sent in tasks of their
    own, waited for (a bounded time) when the run ends."""

    def __init__(self, notifier: WebhookNotifier, *, prices: PriceTable) -> None:
        self._notifier = notifier
        self._prices = prices
        # (batch, event, when it ended or expired, or why) of the notifications made.
        self._sent: set[tuple[str, str, str]] = set()
        # Each batch's pause reason when the pass that runs it started.
        self._paused_before: dict[str, str | None] = {}
        # Batches of the pass that have nothing more to tell in it (they ended, or paused).
        self._settled: set[str] = set()
        self._tasks: set[asyncio.Task[bool]] = set()

    def begin_pass(self, before: Mapping[str, BatchSummary]) -> None:
        """A pass starts with these batches (as they are before it clears their pauses)."""
        self._paused_before = {batch_id: b.paused_reason for batch_id, b in before.items()}
        self._settled = set()
        # Only what this pass may see again is kept: a forever run (a server's) lasts weeks.
        self._sent = {key for key in self._sent if key[0] in before}

    async def watch(
        self,
        db: WorkerDatabase,
        batch_ids: Callable[[], Collection[str]],
        paused: Callable[[], Mapping[str, str]],
    ) -> None:
        """While a pass dispatches (until cancelled): every NOTIFY_POLL_S, tell the batches
        of ``batch_ids()`` that ended or that this run paused (``paused()``)."""
        while True:
            await asyncio.sleep(NOTIFY_POLL_S)
            ids = [b for b in batch_ids() if b not in self._settled]
            if not ids:
                continue
            try:
                stopped = await db.stopped_batches(ids, datetime.now(UTC))
                now_paused = dict(paused())
                look = [b for b in ids if stopped.get(b) == "ended" or b in now_paused]
                if not look:
                    continue
                usage = await db.usage_by_model(look)
                for batch_id in look:
                    self.consider(
                        await db.get_batch(batch_id),
                        cost_of(usage.get(batch_id, []), self._prices),
                        paused=now_paused.get(batch_id),
                    )
            except Exception as exc:  # a database hiccup must not end the pass
                log.warning("could not look for batches that ended or paused: %s", exc)

    def pass_ended(
        self,
        batches: Collection[BatchSummary],
        *,
        costs: Mapping[str, CostTotal],
        paused: Mapping[str, str],
        interrupted: str | None,
    ) -> None:
        """A pass is over: tell what its batches (as they are now) have to tell."""
        for batch in batches:
            self.consider(
                batch,
                costs.get(batch.id, CostTotal()),
                paused=paused.get(batch.id),
                interrupted=interrupted,
                final=True,
            )

    def consider(
        self,
        batch: BatchSummary,
        cost: CostTotal,
        *,
        paused: str | None,
        interrupted: str | None = None,
        final: bool = False,
    ) -> None:
        """Send what ``batch`` has to tell (see :func:`event_of`), unless it was sent."""
        now = datetime.now(UTC)
        found = event_of(
            batch,
            paused=paused,
            paused_before=self._paused_before.get(batch.id),
            interrupted=interrupted,
            final=final,
            now=now,
        )
        if batch.ended_at is not None or paused is not None:
            self._settled.add(batch.id)
        if found is None:
            return
        event, reason = found
        when = batch.expires_at if event == "expired" else batch.ended_at
        key = (batch.id, event, when.isoformat() if when is not None else reason or "")
        if key in self._sent:
            return
        self._sent.add(key)
        document = notice_of(batch, event, reason=reason, cost=cost, at=now)
        task = asyncio.create_task(
            self._notifier.send(document.model_dump(mode="json"), what=f"batch {batch.id} {event}"),
            name=f"batchrun-notify-{batch.id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the notifications still being tried, at most NOTIFY_EXIT_WAIT_S; then
        give up on the rest, with a warning."""
        pending = set(self._tasks)
        if not pending:
            return
        _, pending = await asyncio.wait(pending, timeout=NOTIFY_EXIT_WAIT_S)
        if pending:
            log.warning(
                "%d notifications to %s were not delivered before the run ended",
                len(pending),
                self._notifier.host,
            )
        await self.abort()

    async def abort(self) -> None:
        """Stop trying the notifications not yet delivered (the run failed, or was
        cancelled)."""
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
