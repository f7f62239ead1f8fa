"""The limits in force of a batch and its use of them: the rows the dashboard's card and the
report both show, computed here once (:func:`read_limits`, and :func:`limits_of` for one
batch).

A batch's limits are those its latest run sent it under, as that run recorded them
(:mod:`batchrun.ops.views.run_limits`): per dimension the limit given as a flag, the
configured one, the one the server announced, the lowest a learned limit took it to, and the
limit in force at the end of the run (``limit``), each summed over the keys the run sent it
under (a dimension is left out when one of the keys has no limit in it), capped per endpoint
by its limits across all its models (:func:`~batchrun.ops.views.run_limits.batch_limit`);
every run's are given too (``runs``). A batch no run has recorded limits for (not sent yet,
or sent before batchrun recorded them) shows the limits of the keys its requests would be
sent under as the database holds them now (``runs`` empty): endpoint × model or family
pattern (and the endpoint's across all its models), for a pool each member's, with the
member's model names; a key with no configured, announced or learned limit but a bucket in
force counts the bucket's rate. While a batch is in progress ``in_force`` is the workers'
bucket rate now (lower during the start-up ramp). The batch's rate in each dimension is read
off its throughput (:mod:`batchrun.ops.views.throughput`); the limit of the dimension the
batch uses the largest share of is the binding one. The limits are shared with whatever else
is sent under the same keys; the rates are the batch's own.

Blocking (store reads): the server calls these on its store threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from batchrun.limits.dimensions import DIMENSIONS, Amounts, Dimension
from batchrun.limits.families import ALL_MODELS, entry_for, is_family
from batchrun.ops.views.run_limits import RunLimits, batch_limit, key_limit, runs_of
from batchrun.ops.views.throughput import Sent, Throughput, recent_since, throughput_of
from batchrun.records import BatchSummary, route_of
from batchrun.transport.endpoints import Endpoints

if TYPE_CHECKING:
    from batchrun.store.store import Store
    from batchrun.store.timelines import RateLimitRow

Measure = Literal["requests", "input_tokens", "output_tokens", "tokens"]


def measure_of(dimension: Dimension) -> Measure:
    """Which of the dashboard's series a dimension limits: requests, input tokens, output
    tokens, or input + output tokens (read off the dimension's own measure)."""
    if dimension.measure(Amounts(requests=1.0)) > 0:
        return "requests"
    takes_input = dimension.measure(Amounts(input_tokens=1.0)) > 0
    takes_output = dimension.measure(Amounts(output_tokens=1.0)) > 0
    if takes_input and takes_output:
        return "tokens"
    return "input_tokens" if takes_input else "output_tokens"


@dataclass(frozen=True)
class LimitUse:
    """One dimension of a batch's limits, per minute (see the module): ``configured``,
    ``announced``, ``learned`` (None when not known or not lower), ``limit`` (the lowest),
    ``in_force`` (the workers' bucket rate now: lower during the start-up ramp; None before
    any send and once a batch with recorded limits ended), the batch's ``rate`` in the
    dimension with its share of the limit, and ``flag`` (a limit given to the run that sent
    it, as ``--rpm``; recorded limits only)."""

    dimension: str
    measures: Measure
    configured: float | None
    announced: float | None
    learned: float | None
    limit: float
    in_force: float | None
    rate: float | None
    utilisation: float | None
    binding: bool = False
    flag: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "measures": self.measures,
            "flag": self.flag,
            "configured": self.configured,
            "announced": self.announced,
            "learned": self.learned,
            "limit": self.limit,
            "in_force": self.in_force,
            "rate": _round(self.rate),
            "utilisation": None if self.utilisation is None else round(self.utilisation, 4),
            "binding": self.binding,
        }


@dataclass(frozen=True)
class BatchLimits:
    """A batch's limits in force, the binding one marked (``limits``: its latest run's, or
    its keys' now when ``runs`` is empty), and the limits each run sent it under, oldest
    first."""

    limits: tuple[LimitUse, ...]
    runs: tuple[RunLimits, ...] = ()


def read_limits(
    store: Store,
    batches: Sequence[BatchSummary],
    *,
    models: Mapping[str, Sequence[str]],
    throughputs: Mapping[str, Throughput | None],
    known: Endpoints,
) -> dict[str, BatchLimits]:
    """The limits of ``batches`` (see the module) by batch id, given the models each one's
    requests name and each one's throughput: two grouped reads for them all (the limits
    the runs recorded, the rate records of their endpoints)."""
    ids = [batch.id for batch in batches]
    keys = {batch.id: _limit_keys(batch.endpoint, models[batch.id], known) for batch in batches}
    endpoints = sorted({endpoint for found in keys.values() for endpoint, _ in found})
    recorded = store.run_limits.of_batches(ids)
    endpoints = sorted(
        {*endpoints, *(row.endpoint for found in recorded.values() for row in found)}
    )
    rows = {
        (row.endpoint, row.model, row.dimension): row
        for row in store.timelines.rate_limit_rows(endpoints)
    }
    found = {}
    for batch in batches:
        throughput = throughputs.get(batch.id)
        runs = runs_of(recorded.get(batch.id, ()))
        limits = (
            _recorded_uses(runs[-1], rows, throughput, running=batch.ended_at is None)
            if runs
            else _limit_uses(keys[batch.id], rows, throughput, known)
        )
        found[batch.id] = BatchLimits(limits, runs)
    return found


def limits_of(store: Store, batch: BatchSummary, *, known: Endpoints, now: datetime) -> BatchLimits:
    """The limits of one batch as the dashboard's card shows them at ``now``: its recent
    usage (for its throughput), the models its requests name, and :func:`read_limits`."""
    since = recent_since(now)
    sent = Sent.of(store.usage.of_batches([batch.id], since=since))
    models = store.timelines.request_models([batch.id])
    return read_limits(
        store,
        [batch],
        models={batch.id: tuple(models.get(batch.id, ()))},
        throughputs={batch.id: throughput_of(batch, sent, since=since, now=now)},
        known=known,
    )[batch.id]


def _limit_keys(name: str, models: Iterable[str], known: Endpoints) -> tuple[tuple[str, str], ...]:
    """The limiter keys (endpoint, model or family pattern) of a batch on endpoint or pool
    ``name`` whose requests name ``models``, as the limiter makes them; and ``(endpoint,
    ALL_MODELS)`` for an endpoint with limits across all its models."""
    found: dict[tuple[str, str], None] = {}
    for member in route_of(name, known.pools).members:
        endpoint = known.by_name.get(member.endpoint)
        entries = endpoint.limits if endpoint is not None else {}
        if endpoint is not None and endpoint.endpoint_limits:
            found[(member.endpoint, ALL_MODELS)] = None
        for model in models:
            sent = member.model_for(model)
            entry = entry_for(sent, entries)
            key_model = entry if entry is not None and is_family(entry) else sent
            found[(member.endpoint, key_model)] = None
    return tuple(found)


def _configured(endpoint: str, model: str, known: Endpoints) -> Mapping[str, float]:
    found = known.by_name.get(endpoint)
    if found is not None and model == ALL_MODELS:
        return dict(found.endpoint_limits.items())
    limits = None if found is None else found.limits_for(model)
    return {} if limits is None else dict(limits.items())


def _limit_uses(
    keys: Sequence[tuple[str, str]],
    rows: Mapping[tuple[str, str, str], RateLimitRow],
    throughput: Throughput | None,
    known: Endpoints,
) -> tuple[LimitUse, ...]:
    """The batch's limits per dimension (see the module), the binding one marked."""
    uses = []
    for dimension in DIMENSIONS:
        name = dimension.name
        configured: dict[tuple[str, str], float | None] = {}
        announced: dict[tuple[str, str], float | None] = {}
        lowest: dict[tuple[str, str], float | None] = {}
        in_force: dict[tuple[str, str], float | None] = {}
        learned = False
        for endpoint, model in keys:
            row = rows.get((endpoint, model, name))
            mine = _configured(endpoint, model, known).get(name)
            heard = None if row is None else row.announced
            lowered = None if row is None else row.learned
            least = key_limit(mine, heard, lowered)
            if least is None and row is not None:
                # A limit given to `run` (--rpm ...) is stored only as the bucket's rate.
                least = row.in_force
            key = (endpoint, model)
            configured[key], announced[key], lowest[key] = mine, heard, least
            in_force[key] = None if row is None else row.in_force
            learned = learned or (lowered is not None and least == lowered)
        limit = batch_limit(lowest)
        if limit is None:
            continue
        rate = None if throughput is None else dimension.measure(throughput.amounts)
        uses.append(
            LimitUse(
                dimension=name,
                measures=measure_of(dimension),
                configured=batch_limit(configured),
                announced=batch_limit(announced),
                learned=limit if learned else None,
                limit=limit,
                in_force=batch_limit(in_force),
                rate=rate,
                utilisation=None if rate is None else rate / limit,
            )
        )
    return _mark_binding(uses)


def _recorded_uses(
    run: RunLimits,
    rows: Mapping[tuple[str, str, str], RateLimitRow],
    throughput: Throughput | None,
    *,
    running: bool,
) -> tuple[LimitUse, ...]:
    """The batch's limits as its latest run recorded them (see the module), the binding one
    marked."""
    uses = []
    for limit in run.limits:
        if limit.limit is None:
            continue
        dimension = DIMENSIONS.get(limit.dimension)
        in_force = None
        if running:
            found = {key: rows.get((*key, limit.dimension)) for key in run.keys}
            in_force = batch_limit(
                {key: None if row is None else row.in_force for key, row in found.items()}
            )
        rate = None if throughput is None else dimension.measure(throughput.amounts)
        uses.append(
            LimitUse(
                dimension=limit.dimension,
                measures=measure_of(dimension),
                configured=limit.configured,
                announced=limit.announced,
                learned=limit.learned,
                limit=limit.limit,
                in_force=in_force,
                rate=rate,
                utilisation=None if rate is None else rate / limit.limit,
                flag=limit.flag,
            )
        )
    return _mark_binding(uses)


def _mark_binding(uses: Sequence[LimitUse]) -> tuple[LimitUse, ...]:
    """``uses`` with the one of the largest share used marked binding."""
    measured = [use for use in uses if use.utilisation is not None]
    if not measured:
        return tuple(uses)
    top = max(measured, key=lambda use: use.utilisation or 0.0)
    return tuple(replace(use, binding=True) if use is top else use for use in uses)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
