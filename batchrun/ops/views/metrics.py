"""What batchrun is doing, for monitoring: one snapshot of the job database (and, where only
the sending process knows a number, of that process's counters).

``batchrun serve`` (and ``batchrun run --metrics-port``) keeps a :class:`MetricsGatherer`
and turns its :class:`MetricsSnapshot` into Prometheus metrics at each scrape
(:mod:`batchrun.server.metrics`); :func:`gather_metrics` is one snapshot read in full. The
job table is shared by every worker of the database, so the numbers read from it are right
whichever processes do the sending, and survive their restarts. Where each number comes
from:

- **requests per state**: ``requests.state``, per endpoint × model × state. The state is
  batchrun's own (``tables.py`` has the transitions); :data:`ANTHROPIC_STATES` maps it to the
  key of Anthropic's ``request_counts`` it counts under: queued, running and provider (held by
  a provider batch) are all ``processing``.
- **in flight**: the requests in state ``running``: claimed by a worker under its lease, being
  sent or about to be (those a provider batch holds are state ``provider``).
- **sends**: the sum of the requests' ``attempts`` (a send, not a claim, counts one; an
  answer reused at submit counts none; a final request's result row keeps the same number,
  and is where it is read). **retries**: the sends beyond each request's first.
- **tokens** by kind and **cost**: the usage each answer keeps (``results``, and
  ``answer_turns``: the answers that did not match their schema and were repaired, paid
  too), read by the one statement ``status`` reads it with too
  (:func:`batchrun.store.usage.read_usage`, per requested model here) (answers reused from
  the database included, at their cost factor of 0); cost is
  :func:`~batchrun.config.prices.cost_of` that usage
  (:func:`~batchrun.store.usage.priced`) with the prices given,
  per the model the answer names and the lane's share of the list price. Results whose model
  has no price are counted apart: their cost is unknown, not 0.
- **rate-limit utilisation**: the ``rate_buckets`` the workers share (see
  :mod:`batchrun.store.rates`), as the last take wrote them, refilled to ``now``; and the
  pauses a 429 or 529 set, from ``rate_keys.paused_until``.
- **failed sends** (429s, 529s, other 5xx, transport failures) that sent a request back to
  the queue: ``send_failures``, a row per failed send, per endpoint sent to (a pool's
  member) × requested model × reason. A final failure is the request's result, counted with
  the errored requests.
- **429s of this process**: the :class:`~batchrun.dispatch.counts.RunReport` of the runs in
  this process count every 429 they received, final ones too; pass
  :class:`ProcessCounters` when the sending happens in this process.

Labels are endpoint, model, state and dimension only: no batch or request ids. A request's
``model`` is any text its submitter chose, and every scraper sees the labels, so a model is
its own label only when batchrun knows it: it has a price (built in or the config file's
``[prices]``) or the config file names it (or its family pattern) in an endpoint's
``limits``. Every other model is counted under :data:`OTHER_MODEL` (``other``), added up
(for rate limits: the highest of the models it gathers), so the number of series stays that
of the endpoints × known models, whatever tenants send. Endpoints are config names already
(a create must name a configured one). For requests, tokens and cost the
endpoint is the batch's as it is now (a pool's name for a pool; ``run --endpoint`` moves a
batch's history with it) and the model is the one the request names; for rate limits they
are the limiter key's: the endpoint sent to (a pool's member) and the model or family
pattern its limits are kept under.

Every total is over the batches in the database now: deleting or pruning batches, or
requeueing errored results, lowers them (Prometheus reads that as a counter reset).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from batchrun.config.prices import PriceTable, cost_of
from batchrun.limits.buckets import TokenBucket
from batchrun.records import TokenTotals

if TYPE_CHECKING:
    from batchrun.ops.run_types import ProcessCounters
    from batchrun.store.rates import BucketRow
    from batchrun.store.store import Store
    from batchrun.store.tallies import FailedSendCount, RequestTally
    from batchrun.store.usage import Usage
    from batchrun.transport.endpoints import Endpoints

# batchrun's request states → the key of Anthropic's MessageBatch request_counts.
ANTHROPIC_STATES = {
    "queued": "processing",
    "running": "processing",
    "provider": "processing",
    "succeeded": "succeeded",
    "errored": "errored",
    "canceled": "canceled",
    "expired": "expired",
}
SECONDS_PER_MINUTE = 60.0
# The model label of every model batchrun does not know (see the module).
OTHER_MODEL = "other"
# A limits entry that covers every model: it names none.
_EVERY_MODEL = "*"
# Up to this many batches to read are named in the statement; more, and every batch is read.
_MAX_LISTED_BATCHES = 500


@dataclass(frozen=True)
class ModelLabels:
    """A model's label in the metrics: its name if it has a price in ``prices`` or is in
    ``named`` (models and family patterns the config file's limits name), else
    :data:`OTHER_MODEL`."""

    prices: PriceTable
    named: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, prices: PriceTable, endpoints: Endpoints | None = None) -> ModelLabels:
        """The labels of a server or run priced with ``prices``, whose ``endpoints`` name
        models in their limits."""
        named = frozenset(
            entry
            for endpoint in (endpoints.by_name.values() if endpoints is not None else ())
            for entry in endpoint.limits
            if entry != _EVERY_MODEL
        )
        return cls(prices, named)

    def __call__(self, model: str) -> str:
        if model in self.named or self.prices.price_for(model) is not None:
            return model
        return OTHER_MODEL


@dataclass(frozen=True)
class RequestCount:
    """Requests of one endpoint × model in one state."""

    endpoint: str
    model: str
    state: str
    count: int

    @property
    def anthropic_state(self) -> str:
        """The key of Anthropic's ``request_counts`` this state counts under."""
        return ANTHROPIC_STATES.get(self.state, self.state)


@dataclass(frozen=True)
class ModelTotals:
    """What the requests of one endpoint × model sent, hold and used.

    ``cost_usd`` is the priced part; ``unpriced_results`` counts the results with usage
    whose model has no price (their cost is unknown, and not in ``cost_usd``)."""

    endpoint: str
    model: str
    sends: int
    retries: int
    in_flight: int
    tokens: TokenTotals
    cost_usd: float
    unpriced_results: int


@dataclass(frozen=True)
class BucketUse:
    """One rate limit in force of one key (endpoint × model or family pattern) at ``now``.

    ``utilisation`` is the share of the bucket's capacity in use: (capacity − level) ÷
    capacity, with the level refilled from the last take to ``now`` at the bucket's rate.
    0 is a full bucket (an idle key), 1 an empty one (sending as fast as the limit allows:
    the binding limit). A bucket in debt (a take larger than what was left, or usage above
    its reservation) would be above 1; it is clamped to 1, and the debt is ``debt_s``: the
    seconds of refill until the bucket is out of it (0 when there is none). ``limit_per_min``
    is the rate in force (the lowest of the configured, announced and learned limits, lower
    still during the start-up ramp), in the dimension's unit per minute."""

    endpoint: str
    model: str
    dimension: str
    utilisation: float
    debt_s: float
    limit_per_min: float


@dataclass(frozen=True)
class KeyPause:
    """A key paused by a 429 or 529 (a retry-after): nothing is sent for ``remaining_s``."""

    endpoint: str
    model: str
    remaining_s: float


@dataclass(frozen=True)
class MetricsSnapshot:
    """The job database at one moment, and the process's counters when given.

    ``gathered_s`` is how long reading the database took (a scrape's own cost)."""

    requests: tuple[RequestCount, ...]
    models: tuple[ModelTotals, ...]
    buckets: tuple[BucketUse, ...]
    pauses: tuple[KeyPause, ...]
    process: ProcessCounters | None
    gathered_s: float
    failed_sends: tuple[FailedSendCount, ...] = ()


@dataclass(frozen=True)
class Tally:
    """A batch's :class:`~batchrun.store.tallies.RequestTally` with the batch's endpoint."""

    endpoint: str
    item: RequestTally


@dataclass(frozen=True)
class Used:
    """A batch's :class:`~batchrun.store.usage.Usage` (per requested model) with the
    batch's endpoint."""

    endpoint: str
    item: Usage


class MetricsGatherer:
    """Snapshots of one store, priced with ``prices``, for a scrape every few seconds.

    An ended batch's totals do not change while its ``ended_at`` stays the same (a requeue
    reopens it; a delete removes it), so the gatherer keeps them and reads again only the
    batches that are open, or ended since the last snapshot: a scrape costs what the open
    batches hold, however much history the database keeps. The first snapshot reads
    everything. Not thread-safe: one snapshot at a time.
    """

    def __init__(
        self, store: Store, *, prices: PriceTable, labels: ModelLabels | None = None
    ) -> None:
        """``labels``: which models are labelled by name (default: the priced ones)."""
        self._store = store
        self._prices = prices
        self._label = labels or ModelLabels(prices)
        # Ended batches: batch id → (its ended_at, its request totals, its usage).
        self._ended: dict[str, tuple[datetime, tuple[RequestTally, ...], tuple[Usage, ...]]] = {}

    def gather(
        self, *, now_unix_s: float | None = None, process: ProcessCounters | None = None
    ) -> MetricsSnapshot:
        """A snapshot of the store (see the module for where each number comes from);
        buckets are refilled and pauses counted down to ``now_unix_s`` (default: the system
        clock, which the workers' rate records count in too). ``process``: the 429s of the
        runs in this process, when the sending happens here.

        Five read transactions: the batches (id, endpoint, end); the totals of the batches
        not kept from before (two grouped statements: open requests through the state index,
        final ones and their usage from their results, by
        :func:`~batchrun.store.usage.read_usage`); the rate buckets; the paused keys; the
        failed sends. Blocking: call it off the event loop.

        Measured once on 100,000 requests (2 kB prompts, 1 kB answers, two models; warm
        caches; 2 vCPUs shared with other test runs, so the figures are on the high side):

        - 20 ended batches of 5,000: the first snapshot (nothing kept) 0.45-0.75 s on SQLite,
          0.27-0.35 s on Postgres 15; every later one 4-8 ms on SQLite, 4 ms on Postgres;
        - one open batch of 100,000 (99,000 answered, 1,000 queued): every snapshot
          0.36-0.58 s on SQLite, 0.32-0.38 s on Postgres (grouping the open batch's result
          rows is most of it).

        Measured again when the usage statement became the one ``status`` reads too (one
        batch of 50,000 answered, SQLite, warm caches, 2 vCPUs shared): the first snapshot
        0.18 s, against 0.16 s before.
        """
        started = time.perf_counter()
        now = time.time() if now_unix_s is None else now_unix_s
        tallies, used = self._tallies()
        bucket_rows = self._store.rates.buckets()
        paused = self._store.rates.paused_keys(now)
        failed_sends = tuple(self._store.tallies.failed_sends())
        gathered_s = time.perf_counter() - started
        label = self._label
        return MetricsSnapshot(
            requests=_request_counts(tallies, label),
            models=_model_totals(tallies, used, self._prices, label),
            buckets=_bucket_uses(
                (use for row in bucket_rows if (use := bucket_use(row, now)) is not None), label
            ),
            pauses=_pauses(((key, until - now) for key, until in paused.items()), label),
            process=process,
            gathered_s=gathered_s,
            failed_sends=_failed_sends(failed_sends, label),
        )

    def _tallies(self) -> tuple[list[Tally], list[Used]]:
        """Every batch's totals and usage with its endpoint: kept ones, and the others read
        now."""
        batches = self._store.tallies.batch_ends()
        ended = {batch.id: batch.ended_at for batch in batches if batch.ended_at is not None}
        self._ended = {
            batch_id: kept
            for batch_id, kept in self._ended.items()
            if ended.get(batch_id) == kept[0]
        }
        unread = [batch.id for batch in batches if batch.id not in self._ended]
        # A long list of ids makes a long statement (and SQLite takes at most 32,766
        # parameters): past a few hundred, every batch is read.
        listed = unread if len(unread) <= _MAX_LISTED_BATCHES else None
        fresh: dict[str, tuple[list[RequestTally], list[Usage]]] = {
            batch_id: ([], []) for batch_id in unread
        }
        totals = self._store.tallies.requests(listed)
        for tally in totals.requests:
            if tally.batch_id in fresh:
                fresh[tally.batch_id][0].append(tally)
        for usage in totals.usage:
            if usage.batch_id in fresh:
                fresh[usage.batch_id][1].append(usage)
        for batch_id, (items, usages) in fresh.items():
            if (ended_at := ended.get(batch_id)) is not None:
                self._ended[batch_id] = (ended_at, tuple(items), tuple(usages))
        found: list[Tally] = []
        used: list[Used] = []
        for batch in batches:
            kept = self._ended.get(batch.id)
            if kept is not None:
                _, batch_tallies, batch_usage = kept
            else:
                batch_tallies, batch_usage = tuple(fresh[batch.id][0]), tuple(fresh[batch.id][1])
            found.extend(Tally(batch.endpoint, item) for item in batch_tallies)
            used.extend(Used(batch.endpoint, item) for item in batch_usage)
        return found, used


def gather_metrics(
    store: Store,
    *,
    prices: PriceTable,
    now_unix_s: float | None = None,
    process: ProcessCounters | None = None,
    labels: ModelLabels | None = None,
) -> MetricsSnapshot:
    """One snapshot of ``store``, read in full (:meth:`MetricsGatherer.gather` without
    anything kept from before)."""
    gatherer = MetricsGatherer(store, prices=prices, labels=labels)
    return gatherer.gather(now_unix_s=now_unix_s, process=process)


def bucket_use(row: BucketRow, now_unix_s: float) -> BucketUse | None:
    """How much of the bucket is in use at ``now_unix_s`` (see :class:`BucketUse`); None for
    a limit heard of but not in force (no bucket: rate 0)."""
    if row.rate_per_s <= 0 or row.capacity <= 0:
        return None
    bucket = TokenBucket(row.rate_per_s, row.capacity, row.level, row.updated_at)
    left = bucket.available(now_unix_s)
    used = (row.capacity - left) / row.capacity
    return BucketUse(
        endpoint=row.endpoint,
        model=row.model,
        dimension=row.dimension,
        utilisation=min(max(used, 0.0), 1.0),
        debt_s=max(-left, 0.0) / row.rate_per_s,
        limit_per_min=row.rate_per_s * SECONDS_PER_MINUTE,
    )


def _request_counts(
    tallies: Iterable[Tally], label: Callable[[str], str]
) -> tuple[RequestCount, ...]:
    counts: dict[tuple[str, str, str], int] = {}
    for tally in tallies:
        key = (tally.endpoint, label(tally.item.model), tally.item.state)
        counts[key] = counts.get(key, 0) + tally.item.requests
    return tuple(RequestCount(*key, count) for key, count in sorted(counts.items()))


def _model_totals(
    tallies: Iterable[Tally],
    used: Iterable[Used],
    prices: PriceTable,
    label: Callable[[str], str],
) -> tuple[ModelTotals, ...]:
    from batchrun.store.usage import priced

    grouped: dict[tuple[str, str], list[RequestTally]] = {}
    for tally in tallies:
        grouped.setdefault((tally.endpoint, label(tally.item.model)), []).append(tally.item)
    usages: dict[tuple[str, str], list[Usage]] = {}
    for use in used:
        requested = use.item.requested_model or use.item.model
        usages.setdefault((use.endpoint, label(requested)), []).append(use.item)
    totals = []
    for (endpoint, model), items in sorted(grouped.items()):
        sends = sum(item.sends for item in items)
        mine = usages.get((endpoint, model), [])
        # Priced as the answer names its model (status does the same), counted under the
        # request's, so every metric of a request has the same labels.
        cost = cost_of(priced(mine), prices)  # repaired answers' tokens included
        totals.append(
            ModelTotals(
                endpoint=endpoint,
                model=model,
                sends=sends,
                retries=sends - sum(item.sent for item in items),
                in_flight=sum(item.requests for item in items if item.state == "running"),
                tokens=TokenTotals(
                    sum(usage.input_tokens for usage in mine),
                    sum(usage.output_tokens for usage in mine),
                    sum(usage.cache_creation_input_tokens for usage in mine),
                    sum(usage.cache_read_input_tokens for usage in mine),
                ),
                cost_usd=cost.known_usd,
                unpriced_results=sum(cost.unpriced.values()),
            )
        )
    return tuple(totals)


def _bucket_uses(uses: Iterable[BucketUse], label: Callable[[str], str]) -> tuple[BucketUse, ...]:
    """The buckets by labelled key: several models under one label show the highest
    utilisation, debt and limit among them."""
    merged: dict[tuple[str, str, str], BucketUse] = {}
    for use in uses:
        use = replace(use, model=label(use.model))
        key = (use.endpoint, use.model, use.dimension)
        seen = merged.get(key)
        if seen is not None:
            use = replace(
                use,
                utilisation=max(use.utilisation, seen.utilisation),
                debt_s=max(use.debt_s, seen.debt_s),
                limit_per_min=max(use.limit_per_min, seen.limit_per_min),
            )
        merged[key] = use
    return tuple(merged.values())


def _pauses(
    pauses: Iterable[tuple[tuple[str, str], float]], label: Callable[[str], str]
) -> tuple[KeyPause, ...]:
    """The paused keys by labelled key, each with its longest pause."""
    longest: dict[tuple[str, str], float] = {}
    for (endpoint, model), remaining_s in pauses:
        key = (endpoint, label(model))
        longest[key] = max(remaining_s, longest.get(key, remaining_s))
    return tuple(KeyPause(*key, remaining_s) for key, remaining_s in sorted(longest.items()))


def _failed_sends(
    counts: Iterable[FailedSendCount], label: Callable[[str], str]
) -> tuple[FailedSendCount, ...]:
    """The failed sends by labelled model, added up."""
    merged: dict[tuple[str, str, str], FailedSendCount] = {}
    for item in counts:
        item = replace(item, model=label(item.model))
        key = (item.endpoint, item.model, item.reason)
        seen = merged.get(key)
        merged[key] = item if seen is None else replace(item, count=item.count + seen.count)
    return tuple(merged.values())
