"""The limits each run sent a batch under, read back from what the run recorded
(``batch_limits``, written by :mod:`batchrun.ops.limit_recorder`): what the report and the
dashboard show of a batch that was sent, instead of the limits its endpoint has today.

Per run and dimension, summed over the keys the run sent the batch under (endpoint × model
or family pattern; a pool's members each), as the dashboard sums them: the ``flag``,
``configured`` and ``announced`` limits as the run last recorded them; the limit in force
over time (``steps``: per key the lowest of the flag, else the configured limit, the
announced and the learned one; a dimension one of the keys has no limit in is unlimited);
the limit in force at the end (``limit``) and the lowest it took (``lowest``); and
``learned``, the lowest limit in force while a learned limit was the one in force.

An endpoint's limits across all its models (the key ``(endpoint, ALL_MODELS)``) cap the sum
of its models' instead of adding to it: per endpoint the lower of the two counts (the sum of
the models' when the endpoint has none in that dimension, the endpoint's when a model has
none), and the endpoints' figures are summed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batchrun.limits.dimensions import DIMENSIONS
from batchrun.limits.families import ALL_MODELS
from batchrun.ops.limit_recorder import MAX_CHANGES_PER_LIMIT
from batchrun.store.run_limits import (
    ANNOUNCED,
    CONFIGURED,
    FLAG,
    LEARNED,
    SENT,
    LimitRecord,
)

Key = tuple[str, str]
# Values of one key: (dimension, source) → per minute.
_Values = dict[tuple[str, str], float]


@dataclass(frozen=True)
class RunLimit:
    """One dimension of the limits one run sent a batch under (see the module)."""

    dimension: str
    flag: float | None
    configured: float | None
    announced: float | None
    learned: float | None
    limit: float | None
    lowest: float | None
    steps: tuple[tuple[datetime, float | None], ...]
    capped: bool

    @property
    def changes(self) -> int:
        """How often the limit in force changed during the run (as recorded)."""
        return max(len(self.steps) - 1, 0)

    def as_json(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "flag": self.flag,
            "configured": self.configured,
            "announced": self.announced,
            "learned": _round(self.learned),
            "limit": _round(self.limit),
            "lowest": _round(self.lowest),
            "changes": self.changes,
            "capped": self.capped,
        }


@dataclass(frozen=True)
class RunLimits:
    """The limits one run sent a batch under: the run (``run_id``, ``started_at``), when it
    first sent the batch, the keys it sent it under, and per dimension with a limit the
    :class:`RunLimit` (none: no limit was known to the run)."""

    run_id: str
    started_at: datetime
    first_sent_at: datetime
    keys: tuple[Key, ...]
    limits: tuple[RunLimit, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "first_sent_at": self.first_sent_at,
            "keys": [{"endpoint": endpoint, "model": model} for endpoint, model in self.keys],
            "limits": [limit.as_json() for limit in self.limits],
        }


def runs_of(records: Iterable[LimitRecord]) -> tuple[RunLimits, ...]:
    """The runs of one batch's records (in the order they were written), oldest first."""
    by_run: dict[str, list[LimitRecord]] = {}
    for record in records:
        by_run.setdefault(record.run_id, []).append(record)
    runs = [_run(rows) for rows in by_run.values()]
    return tuple(sorted(runs, key=lambda run: (run.started_at, run.first_sent_at)))


def _run(rows: Sequence[LimitRecord]) -> RunLimits:
    """One run's limits from its rows (see the module)."""
    ordered = sorted(rows, key=lambda row: row.since)
    keys: dict[Key, _Values] = {}
    counts: dict[tuple[Key, str, str], int] = {}
    steps: dict[str, list[tuple[datetime, float | None]]] = {}
    learned: dict[str, float] = {}
    index = 0
    while index < len(ordered):
        at = ordered[index].since
        while index < len(ordered) and ordered[index].since == at:
            row = ordered[index]
            index += 1
            key = (row.endpoint, row.model)
            values = keys.setdefault(key, {})
            if row.source == SENT or row.dimension is None:
                continue
            counts[(key, row.dimension, row.source)] = (
                counts.get((key, row.dimension, row.source), 0) + 1
            )
            if row.value is None:
                values.pop((row.dimension, row.source), None)
            else:
                values[(row.dimension, row.source)] = row.value
        for dimension in DIMENSIONS.names():
            if not any(d == dimension for values in keys.values() for d, _ in values):
                continue
            in_force = _batch_limit(keys, _in_force_reader(dimension))
            series = steps.setdefault(dimension, [])
            if not series or series[-1][1] != in_force:
                series.append((at, in_force))
            if in_force is not None and any(
                _learned_binds(values, dimension) for values in keys.values()
            ):
                learned[dimension] = min(learned.get(dimension, in_force), in_force)
    limits = []
    for dimension in DIMENSIONS.names():
        if not steps.get(dimension):
            continue
        series = steps[dimension]
        present = [value for _, value in series if value is not None]
        limits.append(
            RunLimit(
                dimension=dimension,
                flag=_batch_limit(keys, _source(dimension, FLAG)),
                configured=_batch_limit(keys, _source(dimension, CONFIGURED)),
                announced=_batch_limit(keys, _source(dimension, ANNOUNCED)),
                learned=learned.get(dimension),
                limit=series[-1][1],
                lowest=min(present) if present else None,
                steps=tuple(series),
                capped=any(
                    n >= MAX_CHANGES_PER_LIMIT
                    for (_, counted, _), n in counts.items()
                    if counted == dimension
                ),
            )
        )
    first = ordered[0]
    return RunLimits(
        run_id=first.run_id,
        started_at=first.run_started_at,
        first_sent_at=first.since,
        keys=tuple(keys),
        limits=tuple(limits),
    )


def key_limit(base: float | None, announced: float | None, learned: float | None) -> float | None:
    """A key's limit in force: the lowest of its ``base`` (the flag given to ``run``, else
    its configured limit), its announced and its learned limit; None when it has none. The
    one rule the dashboard and the report show limits by (a value of 0 or less is none)."""
    found = [value for value in (base, announced, learned) if value is not None and value > 0]
    return min(found) if found else None


def summed_limit(values: Sequence[float | None]) -> float | None:
    """A batch's limit over the keys it is sent under: the sum of theirs, or None if any is
    missing (one key without a limit leaves it unlimited)."""
    if not values or any(value is None for value in values):
        return None
    return sum(value for value in values if value is not None)


def batch_limit(per_key: Mapping[Key, float | None]) -> float | None:
    """A batch's limit over the keys it is sent under (a figure per key, None: none): per
    endpoint the sum of its models' (:func:`summed_limit`), capped by the endpoint's limit
    across all its models (key ``(endpoint, ALL_MODELS)``); summed over the endpoints."""
    models: dict[str, list[float | None]] = {}
    wide: dict[str, float | None] = {}
    for (endpoint, model), value in per_key.items():
        if model == ALL_MODELS:
            wide[endpoint] = value
        else:
            models.setdefault(endpoint, []).append(value)
    per_endpoint = []
    for endpoint in models.keys() | wide.keys():
        found = [
            value
            for value in (summed_limit(models.get(endpoint, [])), wide.get(endpoint))
            if value is not None
        ]
        per_endpoint.append(min(found) if found else None)
    return summed_limit(per_endpoint)


def _batch_limit(
    keys: Mapping[Key, _Values], of_key: Callable[[_Values], float | None]
) -> float | None:
    """:func:`batch_limit` of what ``of_key`` reads of each key's values."""
    return batch_limit({key: of_key(values) for key, values in keys.items()})


def _source(dimension: str, source: str) -> Callable[[_Values], float | None]:
    return lambda values: values.get((dimension, source))


def _in_force_reader(dimension: str) -> Callable[[_Values], float | None]:
    return lambda values: _key_in_force(values, dimension)


def _key_in_force(values: _Values, dimension: str) -> float | None:
    flag = values.get((dimension, FLAG))
    base = flag if flag is not None else values.get((dimension, CONFIGURED))
    return key_limit(base, values.get((dimension, ANNOUNCED)), values.get((dimension, LEARNED)))


def _learned_binds(values: _Values, dimension: str) -> bool:
    learned = values.get((dimension, LEARNED))
    return learned is not None and learned == _key_in_force(values, dimension)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
