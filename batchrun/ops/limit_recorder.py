"""Recording the limits a run sends each batch under (``batch_limits``, read back by
:mod:`batchrun.ops.views.run_limits` for the report and the dashboard).

A :class:`LimitRecorder` lives as long as a run (a ``batchrun run``, or a worker session of
``serve``) and watches each of its passes through :class:`RecordingObserver`, which wraps the
pass's :class:`~batchrun.ops.monitor.RunMonitor`. Per batch and limiter key (endpoint × model
or family pattern), per dimension, it keeps four sources apart:

- ``flag``: the limit given to the run on the command line (``--rpm``), which wins over
- ``configured``: the endpoint's limit in the config file;
- ``announced``: the latest ``anthropic-ratelimit-*-limit`` the run's answers carried;
- ``learned``: the limit the limiter applies when it is lower than all of those (learned
  from 429s; it climbs back with time). Never for an endpoint's limits across all its
  models (key ``(endpoint, ALL_MODELS)``, recorded beside its models' as a request takes
  from both): nothing is learned there. Only once an answer under the key came in this run:
  before it, a lower limit in the shared record may be one a server announced to another
  run or worker, which this run cannot tell from a learned one.

It writes what it saw when the run first sends a batch under a key (a ``sent`` row, then a
row per source that has a limit), and afterwards a source's new value when it differs from
the one recorded by more than :data:`CHANGE_SHARE` (or appears, or goes), at most
:data:`MAX_CHANGES_PER_LIMIT` rows per batch, key, dimension and source in a run. It looks
at a batch's key at most every :data:`CHECK_INTERVAL_S` while the batch sends (at once after
a 429, which may lower the learned limit), and once more when a pass ends. Rows are written
in the background every :data:`FLUSH_INTERVAL_S` through the run's one database route, and
the rest when the pass ends; a failed write is logged and never stops the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from batchrun.dispatch.clock import LoopClock
from batchrun.limits.dimensions import DIMENSIONS, RateLimits
from batchrun.limits.families import ALL_MODELS, ANY_MODEL
from batchrun.records import ClaimedRequest, Outcome, Retryable, Succeeded
from batchrun.store.run_limits import (
    ANNOUNCED,
    CONFIGURED,
    FLAG,
    LEARNED,
    SENT,
    LimitRecord,
)
from batchrun.transport.endpoints import Endpoints

if TYPE_CHECKING:
    from batchrun.dispatch.seams import DispatcherView, LimiterView, RunObserver
    from batchrun.dispatch.worker_db import WorkerDatabase
    from batchrun.limits.limiter import LimitKey, Permit

log = logging.getLogger(__name__)

# A limit is written again when it moves by more than this share of the value recorded.
CHANGE_SHARE = 0.05
# ... at most this many times per batch, key, dimension and source in one run.
MAX_CHANGES_PER_LIMIT = 100
# A batch's key is looked at no more often than this while the batch sends.
CHECK_INTERVAL_S = 1.0
# Rows waiting are written this often.
FLUSH_INTERVAL_S = 1.0
# What was recorded is kept for this many batch × key pairs (a run of serve may see a great
# many batches); past it, the half looked at longest ago is forgotten: a batch of it that
# sends again is recorded as if first seen (its rows again; what it shows is the same).
PAIRS_KEPT = 10_000
# A limit in force this much under every other source's is a learned one (float noise aside).
_LOWER_BY = 1e-9

Pair = tuple[str, "LimitKey"]
"""(batch id, limiter key)."""


@dataclass
class _PairRecord:
    """What was recorded for one batch under one key in this run."""

    values: dict[tuple[str, str], float | None] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    checked_at: float = -math.inf


class LimitRecorder:
    """The limits of one run, recorded per batch (see the module)."""

    def __init__(
        self,
        *,
        known: Endpoints,
        overrides: RateLimits,
        endpoint_overrides: RateLimits | None = None,
        run_id: str | None = None,
        clock: Callable[[], datetime] | None = None,
        pairs_kept: int = PAIRS_KEPT,
    ) -> None:
        """``known``: the endpoints (their configured limits); ``overrides`` and
        ``endpoint_overrides``: the run's limit flags, per model and across all the models
        of an endpoint; ``clock``: UTC now (by default the event loop's, anchored once);
        ``pairs_kept``: see :data:`PAIRS_KEPT`."""
        self.run_id = run_id or uuid.uuid4().hex
        self._pairs_kept = max(pairs_kept, 2)
        self.started_at: datetime | None = None
        self._known = known
        self._overrides = overrides
        self._endpoint_overrides = endpoint_overrides or RateLimits()
        self._clock = clock
        self._limiter: LimiterView | None = None
        self._pairs: dict[Pair, _PairRecord] = {}
        # The pairs of the pass in progress, looked at once more when it ends.
        self._this_pass: set[Pair] = set()
        self._announced: dict[LimitKey, dict[str, float]] = {}
        # Keys with an answer in this run: their announced limits are known to it.
        self._answered: set[LimitKey] = set()
        self._pending: list[LimitRecord] = []
        self._writer: asyncio.Task[None] | None = None
        # Set when a pass ends: the writer writes what is left and stops (never cancelled
        # mid-write, which would lose the rows it holds).
        self._stop_writing = asyncio.Event()
        self._db: WorkerDatabase | None = None

    # -- a pass -------------------------------------------------------------------------------

    def watching(self, observer: RunObserver, db: WorkerDatabase) -> RecordingObserver:
        """The observer for a pass: ``observer`` (the pass's monitor) with this recorder
        seeing what it sees; rows go to ``db``."""
        self._db = db
        return RecordingObserver(observer, self)

    def attach(self, limiter: LimiterView) -> None:
        """A pass starts with ``limiter``: start writing in the background."""
        self._limiter = limiter
        self._this_pass = set()
        if self._clock is None:
            self._clock = LoopClock().now
        if self.started_at is None:
            self.started_at = self._clock()
        if self._writer is None and self._db is not None:
            self._stop_writing = asyncio.Event()
            self._writer = asyncio.create_task(self._write_often(self._db), name="batchrun-limits")

    async def pass_ended(self) -> None:
        """Look at every batch and key of the pass once more, and write what is left."""
        for pair in sorted(self._this_pass):
            self._check(pair, force=True)
        if self._writer is not None:
            self._stop_writing.set()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._db is not None:
            await self._write(self._db)
        self._limiter = None

    # -- what the observer sees ---------------------------------------------------------------

    def sending(self, batch_id: str, key: LimitKey) -> None:
        """A request of ``batch_id`` goes out under ``key``."""
        pair = (batch_id, key)
        self._this_pass.add(pair)
        self._check(pair, force=pair not in self._pairs)

    def answered(self, batch_id: str, key: LimitKey, outcome: Outcome) -> None:
        """The answer to a request of ``batch_id`` sent under ``key``."""
        self._answered.add(key)
        match outcome:
            case Succeeded(server_limits=heard) | Retryable(server_limits=heard) if heard:
                if heard.limits:
                    self._announced.setdefault(key, {}).update(heard.limits)
        rate_limited = isinstance(outcome, Retryable) and outcome.http_status == 429
        self._check((batch_id, key), force=rate_limited)

    # -- recording ----------------------------------------------------------------------------

    def sources(self, key: LimitKey) -> dict[tuple[str, str], float]:
        """The limits of ``key`` now, per (dimension, source), per minute."""
        endpoint = self._known.by_name.get(key[0])
        entries = endpoint.limits if endpoint is not None else {}
        configured = entries.get(key[1]) or entries.get(ANY_MODEL) or RateLimits()
        flags = self._overrides
        if key[1] == ALL_MODELS:
            configured = endpoint.endpoint_limits if endpoint is not None else RateLimits()
            flags = self._endpoint_overrides
        announced = self._announced.get(key, {})
        found: dict[tuple[str, str], float] = {}
        for dimension in DIMENSIONS.names():
            flag = flags.get(dimension)
            mine = configured.get(dimension)
            heard = announced.get(dimension)
            # A flag replaces the configured limit (the limiter merges them so).
            ceilings = [v for v in (mine if flag is None else flag, heard) if v is not None]
            in_force = None
            if self._limiter is not None:
                in_force = self._limiter.limit_in_force(key, dimension)
            learned = None
            if (
                in_force is not None
                and key in self._answered
                and (not ceilings or in_force < min(ceilings) * (1 - _LOWER_BY))
            ):
                learned = in_force
            for source, value in ((FLAG, flag), (CONFIGURED, mine), (ANNOUNCED, heard)):
                if value is not None:
                    found[(dimension, source)] = value
            if learned is not None:
                found[(dimension, LEARNED)] = learned
        return found

    def _check(self, pair: Pair, *, force: bool) -> None:
        """Queue the rows of what changed for ``pair`` (see the module)."""
        if self._clock is None or self.started_at is None:
            return
        loop_now = asyncio.get_running_loop().time()
        record = self._pairs.get(pair)
        first = record is None
        if record is None:
            if len(self._pairs) >= self._pairs_kept:
                self._forget_oldest()
            record = self._pairs[pair] = _PairRecord()
        elif not force and loop_now - record.checked_at < CHECK_INTERVAL_S:
            return
        record.checked_at = loop_now
        now = self._clock()
        batch_id, (endpoint, model) = pair
        if first:
            self._queue(batch_id, endpoint, model, None, SENT, None, now)
        current = self.sources(pair[1])
        for limit in sorted(set(current) | set(record.values)):
            new = current.get(limit)
            if limit in record.values:
                old = record.values[limit]
                if not _changed(old, new):
                    continue
            elif new is None:
                continue
            count = record.counts.get(limit, 0)
            if count >= MAX_CHANGES_PER_LIMIT:
                continue
            record.counts[limit] = count + 1
            record.values[limit] = new
            dimension, source = limit
            self._queue(batch_id, endpoint, model, dimension, source, new, now)

    def _forget_oldest(self) -> None:
        """Forget the half of the pairs looked at longest ago (see :data:`PAIRS_KEPT`)."""
        by_age = sorted(self._pairs, key=lambda pair: self._pairs[pair].checked_at)
        for pair in by_age[: len(by_age) // 2]:
            del self._pairs[pair]
            self._this_pass.discard(pair)

    def _queue(
        self,
        batch_id: str,
        endpoint: str,
        model: str,
        dimension: str | None,
        source: str,
        value: float | None,
        since: datetime,
    ) -> None:
        assert self.started_at is not None
        self._pending.append(
            LimitRecord(
                batch_id=batch_id,
                run_id=self.run_id,
                run_started_at=self.started_at,
                endpoint=endpoint,
                model=model,
                dimension=dimension,
                source=source,
                value=value,
                since=since.astimezone(UTC),
            )
        )

    async def _write_often(self, db: WorkerDatabase) -> None:
        while not self._stop_writing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_writing.wait(), FLUSH_INTERVAL_S)
            await self._write(db)

    async def _write(self, db: WorkerDatabase) -> None:
        rows, self._pending = self._pending, []
        if not rows:
            return
        try:
            await db.record_run_limits(rows)
        except Exception as exc:  # a record of limits must never stop a run
            log.warning("could not record the limits of %d batch(es): %s", len(rows), exc)


class RecordingObserver:
    """A pass's observer (``inner``, the monitor) with the recorder seeing what it sees."""

    def __init__(self, inner: RunObserver, recorder: LimitRecorder) -> None:
        self._inner = inner
        self._recorder = recorder

    def attach(self, dispatcher: DispatcherView, limiter: LimiterView) -> None:
        self._inner.attach(dispatcher, limiter)
        self._recorder.attach(limiter)

    def admit(self, request: ClaimedRequest, permit: Permit) -> str | None:
        refused = self._inner.admit(request, permit)
        if refused is None:
            self._recorder.sending(request.batch_id, permit.key)
            if permit.endpoint_key is not None:
                self._recorder.sending(request.batch_id, permit.endpoint_key)
        return refused

    def settled(self, request: ClaimedRequest, permit: Permit, outcome: Outcome) -> None:
        self._inner.settled(request, permit, outcome)
        self._recorder.answered(request.batch_id, permit.key, outcome)


def _changed(old: float | None, new: float | None) -> bool:
    """Whether ``new`` is worth a row after ``old``: it appears, goes, or moves by more than
    :data:`CHANGE_SHARE` of ``old``."""
    if old is None or new is None:
        return old is not new
    return abs(new - old) > CHANGE_SHARE * abs(old)
