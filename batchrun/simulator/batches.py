"""Message Batches: what a batch holds and how it is processed over time (HTTP is in
``simulator.batch_api``).

A batch waits ``batch_start_s`` in the provider's queue, then its ``n`` requests are
processed in a shuffled order (seeded by its id), in waves of ``batch_concurrency`` run in
parallel: the request at position ``k`` of that order is done at
``started + batch_processing_s * (k + 1) / n`` (loop clock; ``started = created +
batch_start_s``), and the requests of a wave all read the prompt cache as it was when the
wave started (when the previous wave's last request was done), so they do not see each
other's writes and later waves (and later requests elsewhere) do. A batch in one wave thus
runs as of one processing time: with a shared prefix that is not cached by then, every
request writes it and none reads it (the cold batch). The batch ends ``batch_start_s +
batch_processing_s`` after its creation; after a cancel, ``batch_cancel_s`` later if that
is sooner: the requests done by then keep their results, the rest are ``canceled``.

Each request is answered as ``POST /v1/messages`` answers the same params (same checks, same
Message, same usage, ``service_tier: "batch"``), except that:

- invalid params make an ``errored`` result (``invalid_request_error``), as Anthropic
  validates batch params asynchronously; so does ``"stream": true``;
- a ``[[sim:status=N]]`` directive makes an ``errored`` result with the error type of ``N``
  (its ``times`` counts the requests with the same fingerprint processed in batches); the
  other directives that break delivery (hang, cut, malformed, not_message) and the random
  faults do not apply, and latency directives change nothing;
- a share ``batch_expired_rate`` of the requests, picked by a hash of batch id and
  custom_id, ends ``expired`` without being processed;
- the Messages rate limits are not used.

Work happens lazily: :meth:`Batches.advance` does everything due up to a loop time, in time
order across batches. The app calls it before anything that reads the cache or a batch, and
a timer (``loop.call_at``) calls it when a batch ends, so the stats (billing of succeeded
results, counted when the batch ends) are current without a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from batchrun.simulator.caching import CachePlan, PromptCache
from batchrun.simulator.config import SimulatorConfig
from batchrun.simulator.directives import DirectiveError, parse_directives
from batchrun.simulator.responses import (
    SPEND_LIMIT_ERROR_CODE,
    SPEND_LIMIT_MESSAGE,
    IdMaker,
    build_message,
    default_error_message,
    error_body,
    reply_tokens,
)
from batchrun.simulator.stats import SimulatorStats, request_fingerprint
from batchrun.simulator.tokens import count_input_tokens
from batchrun.simulator.validation import checked_breakpoints

IN_PROGRESS = "in_progress"
CANCELING = "canceling"
ENDED = "ended"
EXPIRES_AFTER = timedelta(hours=24)
_OUTCOMES = ("succeeded", "errored", "canceled", "expired")
_CANCELED_RESULT = b'{"type":"canceled"}'
_EXPIRED_RESULT = b'{"type":"expired"}'
_STREAM_IN_BATCH = "stream: streaming is not supported for requests in a Message Batch"


@dataclass(slots=True)
class _Item:
    """One request of a batch; ``params`` is dropped once it is answered."""

    custom_id: str
    params: dict[str, Any] | None
    expired: bool = False
    outcome: str = "processing"
    result: bytes = b""
    billing: tuple[str, dict[str, Any]] | None = None


@dataclass(slots=True, eq=False)
class Batch:
    """One Message Batch. Times ending in ``_at`` are loop-clock readings; ``_wall`` ones
    are the wall clock's."""

    id: str
    items: list[_Item]
    order: list[int]
    created_at: float
    created_wall: datetime
    started_at: float  # when the provider starts processing (created_at + its queue wait)
    processing_s: float
    concurrency: int
    ends_at: float
    status: str = IN_PROGRESS
    done: int = 0  # positions of ``order`` answered so far
    cancel_wall: datetime | None = None
    ended_wall: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    results: bytes = b""  # the results file, once ended
    timer: asyncio.TimerHandle | None = None

    @property
    def ended(self) -> bool:
        """True once processing has ended (results available)."""
        return self.status == ENDED

    def done_by(self, at: float) -> int:
        """How many positions of the processing order are done at loop time ``at``."""
        total = len(self.items)
        if at < self.started_at:
            return 0
        if self.processing_s <= 0.0 or at >= self.started_at + self.processing_s:
            return total
        share = (at - self.started_at) / self.processing_s
        done = max(0, min(total, math.floor(share * total)))
        # Agree exactly with done_at, whatever the rounding.
        while done < total and self.done_at(done) <= at:
            done += 1
        while done > 0 and self.done_at(done - 1) > at:
            done -= 1
        return done

    def done_at(self, position: int) -> float:
        """When the request at ``position`` of the processing order is done."""
        return self.started_at + self.processing_s * (position + 1) / len(self.items)

    def wave_starts_at(self, position: int) -> float:
        """When the wave of ``position`` starts: it reads the cache as it was then."""
        first = position // self.concurrency * self.concurrency
        return self.started_at + self.processing_s * first / len(self.items)

    def to_object(self, results_url: str | None) -> dict[str, Any]:
        """The ``MessageBatch`` object; ``results_url`` is given only once ended."""
        counts = self.counts or {"processing": len(self.items)}
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": {name: counts.get(name, 0) for name in ("processing", *_OUTCOMES)},
            "ended_at": rfc3339(self.ended_wall),
            "created_at": rfc3339(self.created_wall),
            "expires_at": rfc3339(self.created_wall + EXPIRES_AFTER),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(self.cancel_wall),
            "results_url": results_url if self.ended else None,
        }


class Batches:
    """Every batch of one simulator, and their processing; ``config``, ``stats`` (where
    they are counted) and ``ids`` (their id maker) are the app's."""

    def __init__(
        self, config: SimulatorConfig, stats: SimulatorStats, cache: PromptCache, ids: IdMaker
    ) -> None:
        self.config = config
        self.stats = stats
        self.ids = ids
        self._cache = cache
        self._batches: dict[str, Batch] = {}  # in creation order
        self._active: list[Batch] = []
        # Requests with a ``times`` directive processed so far, by fingerprint.
        self._receptions: dict[str, int] = {}

    def clear(self) -> None:
        """Forget every batch (their timers are cancelled)."""
        for batch in self._active:
            if batch.timer is not None:
                batch.timer.cancel()
        self._batches.clear()
        self._active.clear()
        self._receptions.clear()

    def find(self, batch_id: str) -> Batch | None:
        """The batch with this id, unless unknown or deleted."""
        return self._batches.get(batch_id)

    def create(self, requests: list[tuple[str, dict[str, Any]]], now: float) -> Batch:
        """A new batch of ``(custom_id, params)`` pairs, created at loop time ``now``."""
        config = self.config
        batch_id = self.ids.make("msgbatch")
        items = [
            _Item(custom_id, params, _expires(batch_id, custom_id, config.batch_expired_rate))
            for custom_id, params in requests
        ]
        order = list(range(len(items)))
        random.Random(f"order:{batch_id}").shuffle(order)
        batch = Batch(
            id=batch_id,
            items=items,
            order=order,
            created_at=now,
            created_wall=self.wall_now(),
            started_at=now + config.batch_start_s,
            processing_s=config.batch_processing_s,
            concurrency=config.batch_concurrency,
            ends_at=now + config.batch_start_s + config.batch_processing_s,
        )
        self._batches[batch_id] = batch
        self._active.append(batch)
        self._schedule(batch)
        self.stats.batches_created += 1
        self.stats.batch_requests_received += len(items)
        return batch

    def cancel(self, batch: Batch, now: float) -> None:
        """Start cancelling ``batch`` at loop time ``now`` (nothing if it is not in progress:
        the reference does not say what Anthropic answers then, so the caller answers the
        batch unchanged)."""
        if batch.status != IN_PROGRESS:
            return
        batch.status = CANCELING
        batch.cancel_wall = self.wall_now()
        batch.ends_at = min(batch.ends_at, now + self.config.batch_cancel_s)
        self._schedule(batch)

    def delete(self, batch: Batch) -> None:
        """Forget an ended batch."""
        del self._batches[batch.id]

    def page(
        self, *, limit: int, before_id: str | None, after_id: str | None
    ) -> tuple[list[Batch], bool] | str:
        """A page of the batches, newest first, and whether there are more in that
        direction; or which cursor is unknown."""
        newest = list(reversed(self._batches.values()))
        cursor = after_id if after_id is not None else before_id
        if cursor is None:
            return newest[:limit], limit < len(newest)
        at = next((i for i, batch in enumerate(newest) if batch.id == cursor), None)
        if at is None:
            name = "after_id" if after_id is not None else "before_id"
            return f"{name}: no message batch with id {cursor!r}"
        if after_id is not None:
            return newest[at + 1 : at + 1 + limit], at + 1 + limit < len(newest)
        start = max(0, at - limit)
        return newest[start:at], start > 0

    def wall_now(self) -> datetime:
        """The wall clock (:attr:`SimulatorConfig.wall_clock`, or the system's) in UTC."""
        clock = self.config.wall_clock
        now = datetime.now(UTC) if clock is None else clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    # -- processing --------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Do everything due by loop time ``now``, earliest first across batches."""
        while self._active:
            step: tuple[float, Batch] | None = None
            for batch in self._active:
                due = batch.done_by(min(now, batch.ends_at))
                if batch.done < due:
                    when = batch.done_at(batch.done)
                elif now >= batch.ends_at:
                    when = batch.ends_at
                else:
                    continue
                if step is None or when < step[0]:
                    step = (when, batch)
            if step is None:
                return
            batch = step[1]
            due = batch.done_by(min(now, batch.ends_at))
            if batch.done < due:
                self._process_wave_part(batch, due)
            else:
                self._end(batch)

    def _process_wave_part(self, batch: Batch, due: int) -> None:
        """Answer the due requests of the current wave: all read the cache as of the wave's
        start, then their writes become readable as each is done."""
        start = batch.done
        stop = min(due, (start // batch.concurrency + 1) * batch.concurrency)
        read_at = batch.wave_starts_at(start)
        plans: list[tuple[int, CachePlan]] = []
        for position in range(start, stop):
            item = batch.items[batch.order[position]]
            plan = self._answer(item, read_at)
            if plan is not None:
                plans.append((position, plan))
        for position, plan in plans:
            self._cache.touch(plan, read_at)
            self._cache.write(plan, batch.done_at(position))
        batch.done = stop

    def _answer(self, item: _Item, read_at: float) -> CachePlan | None:
        """Give ``item`` its result; returns its cache plan when it succeeded."""
        params, item.params = item.params, None
        if item.expired or params is None:
            item.outcome, item.result = "expired", _EXPIRED_RESULT
            return None
        points = checked_breakpoints(params)
        if isinstance(points, str) or params.get("stream") is True:
            self._error(item, 400, points if isinstance(points, str) else _STREAM_IN_BATCH)
            return None
        try:
            directive = parse_directives(params)
        except DirectiveError as exc:
            self._error(item, 400, str(exc))
            return None
        fingerprint = request_fingerprint(params)
        if directive.status is not None and directive.status != 200:
            reception = self._receptions.get(fingerprint, 0) + 1
            self._receptions[fingerprint] = reception
            if directive.faults_apply(reception):
                self._status_error(item, directive.status, spend_limit=directive.spend_limit)
                return None
        output_tokens, capped = reply_tokens(
            params["max_tokens"], directive.output_tokens, self.config.output_tokens
        )
        plan = self._cache.plan(points, count_input_tokens(params), read_at)
        usage = plan.usage(output_tokens, "batch")
        message = build_message(
            params,
            ids=self.ids,
            usage=usage,
            capped=capped,
            invalid_output=directive.invalid_output,
        )
        item.outcome = "succeeded"
        item.result = b'{"type":"succeeded","message":' + message + b"}"
        item.billing = (fingerprint, usage)
        return plan

    def _status_error(self, item: _Item, status: int, *, spend_limit: bool) -> None:
        if status == 429 and spend_limit:
            details = {"error_code": SPEND_LIMIT_ERROR_CODE}
            self._error(item, status, SPEND_LIMIT_MESSAGE, details=details)
        else:
            self._error(item, status, default_error_message(status))

    def _error(
        self, item: _Item, status: int, message: str, *, details: Mapping[str, Any] | None = None
    ) -> None:
        body = error_body(status, message, self.ids.make("req"), details=details)
        item.outcome = "errored"
        item.result = b'{"type":"errored","error":' + body + b"}"

    def _end(self, batch: Batch) -> None:
        """End ``batch``: cancel what is left, bill what succeeded, write the results file."""
        for position in range(batch.done, len(batch.items)):
            item = batch.items[batch.order[position]]
            item.params = None
            item.outcome, item.result = "canceled", _CANCELED_RESULT
        batch.done = len(batch.items)
        counts = dict.fromkeys(("processing", *_OUTCOMES), 0)
        for item in batch.items:
            counts[item.outcome] += 1
            if item.billing is not None:
                self.stats.record_billed(*item.billing)
        batch.counts = counts
        elapsed = timedelta(seconds=batch.ends_at - batch.created_at)
        ended_wall = batch.created_wall + elapsed
        if batch.cancel_wall is not None:
            ended_wall = max(ended_wall, batch.cancel_wall)
        batch.ended_wall = ended_wall
        shuffled = list(range(len(batch.items)))
        random.Random(f"results:{batch.id}").shuffle(shuffled)
        lines = []
        for index in shuffled:
            item = batch.items[index]
            custom_id = json.dumps(item.custom_id).encode()
            lines.append(b'{"custom_id":' + custom_id + b',"result":' + item.result + b"}\n")
        batch.results = b"".join(lines)
        batch.items = [_Item(item.custom_id, None, outcome=item.outcome) for item in batch.items]
        batch.status = ENDED
        self._active.remove(batch)
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None

    def _schedule(self, batch: Batch) -> None:
        """A timer for the end of the current wave (or of the batch), so that the work is
        spread over the processing time and the batch ends on time even if nobody asks."""
        if batch.timer is not None:
            batch.timer.cancel()
        loop = asyncio.get_running_loop()
        wave_end = (batch.done // batch.concurrency + 1) * batch.concurrency
        when = min(batch.ends_at, batch.done_at(min(wave_end, len(batch.items)) - 1))
        batch.timer = loop.call_at(when, self._tick, batch, loop, when)

    def _tick(self, batch: Batch, loop: asyncio.AbstractEventLoop, when: float) -> None:
        batch.timer = None
        # The loop may run a timer a clock tick early: the work due at ``when`` is done.
        self.advance(max(loop.time(), when))
        if not batch.ended and batch.id in self._batches:
            self._schedule(batch)


def rfc3339(moment: datetime | None) -> str | None:
    """``moment`` as RFC 3339 in UTC with microseconds (``2026-01-02T03:04:05.000000Z``)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _expires(batch_id: str, custom_id: str, rate: float) -> bool:
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(f"{batch_id}:{custom_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate
