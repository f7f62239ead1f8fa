"""Rate-limit records shared by every worker of a database (Postgres, or SQLite on one host).

A limiter key (endpoint × model or family pattern) is one ``rate_keys`` row (its pause, ramp
and what the server let through) and one ``rate_buckets`` row per limit (its bucket, and the
limits the server announced and the workers learned). A take is one transaction: it locks the
key's row (an upsert, which creates it the first time; SQLite serialises writers anyway),
reads the key's record, applies the changes the worker learned since its last visit, takes
the cost if every bucket in force has it, and writes the record back. The rules are
:class:`batchrun.limits.keyrecord.KeyRecord`'s, the same code a single worker runs in
memory; times are Unix seconds from the workers' clocks (kept in sync by NTP; a skew well
under a second is harmless). A worker's take may also read which of its batches are stopped,
in the same transaction (:meth:`RateStore.take_watching`): its control check rides on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, select, update

from batchrun.limits.buckets import TokenBucket
from batchrun.limits.dimensions import Amounts
from batchrun.limits.keyrecord import DimensionRecord, Grant, KeyPolicy, KeyRecord, PendingChanges
from batchrun.store import tables as t
from batchrun.store.base import stopped_batches
from batchrun.store.database import transaction, upsert_insert


@dataclass(frozen=True)
class BucketRow:
    """One limit of a limiter key as the last take left it (``rate_buckets``): ``level`` is
    the capacity left at ``updated_at`` (Unix seconds; negative is debt), refilling at
    ``rate_per_s`` up to ``capacity``. A rate of 0 is a limit heard of but not in force."""

    endpoint: str
    model: str
    dimension: str
    level: float
    rate_per_s: float
    capacity: float
    updated_at: float


@dataclass(frozen=True)
class LearnedLimit:
    """A limit the workers learned from 429s for a limiter key (``rate_buckets``): its value
    per minute as of ``learned_at`` (Unix seconds; it climbs from there by the rules of
    :mod:`batchrun.limits.keyrecord`)."""

    endpoint: str
    model: str
    dimension: str
    learned_per_min: float
    learned_at: float


class RateStore:
    """Statements on the shared rate records."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = upsert_insert(engine)

    def take(
        self,
        *,
        endpoint: str,
        model: str,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        changes: PendingChanges,
        now: float,
        reserve: bool = False,
    ) -> tuple[Grant, KeyRecord]:
        """Apply ``changes`` to the key's record, then take ``costs`` (per dimension) from its
        buckets in force (``policy``: the worker's configured limits, bucket size and ramp) if
        all of them have it, or whatever they hold with ``reserve`` (a reservation in debt,
        see :meth:`KeyRecord.take`); returns the grant and the record as written."""
        with transaction(self._engine, write=True) as conn:
            return self._take(conn, endpoint, model, costs, policy, changes, now, reserve)

    def take_watching(
        self,
        *,
        endpoint: str,
        model: str,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        changes: PendingChanges,
        now: float,
        reserve: bool = False,
        batch_ids: Sequence[str] = (),
        batches_now: datetime | None = None,
    ) -> tuple[Grant, KeyRecord, dict[str, str]]:
        """:meth:`take`, and in the same transaction which of ``batch_ids`` are stopped as
        of ``batches_now`` (``BatchLifecycle.stopped``; none read without both): a worker's
        control check rides on a take it makes anyway. Returns the grant, the record and the
        stopped batches."""
        with transaction(self._engine, write=True) as conn:
            # Read before the key's row is locked: the lock is held no longer for it.
            stopped = (
                stopped_batches(conn, batch_ids, batches_now)
                if batch_ids and batches_now is not None
                else {}
            )
            grant, record = self._take(conn, endpoint, model, costs, policy, changes, now, reserve)
        return grant, record, stopped

    def _take(
        self,
        conn: Connection,
        endpoint: str,
        model: str,
        costs: Mapping[str, float],
        policy: KeyPolicy,
        changes: PendingChanges,
        now: float,
        reserve: bool,
    ) -> tuple[Grant, KeyRecord]:
        k = t.rate_keys.c
        insert = self._insert(t.rate_keys).values(
            endpoint=endpoint,
            model=model,
            paused_until=0.0,
            admitted_requests=0.0,
            admitted_input_tokens=0.0,
            admitted_output_tokens=0.0,
            admitted_at=now,
        )
        # The no-op update on conflict locks an existing row until the commit: takes of one
        # key run one at a time, whichever worker makes them.
        key_row = conn.execute(
            insert.on_conflict_do_update(
                index_elements=["endpoint", "model"], set_={"paused_until": k.paused_until}
            ).returning(*t.rate_keys.c)
        ).one()
        b = t.rate_buckets.c
        bucket_rows = conn.execute(
            select(t.rate_buckets).where(b.endpoint == endpoint, b.model == model)
        ).all()
        record = _record(key_row, bucket_rows)
        grant = record.take(costs, policy, now, changes, reserve=reserve)
        conn.execute(
            update(t.rate_keys)
            .where(k.endpoint == endpoint, k.model == model)
            .values(**_key_values(record))
        )
        if record.dimensions:
            statement = self._insert(t.rate_buckets)
            columns = [c.name for c in t.rate_buckets.c if not c.primary_key]
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["endpoint", "model", "dimension"],
                    set_={name: statement.excluded[name] for name in columns},
                ),
                [
                    _bucket_values(endpoint, model, dimension, item, now)
                    for dimension, item in record.dimensions.items()
                ],
            )
        return grant, record

    def buckets(self) -> list[BucketRow]:
        """Every key's buckets as last written (see :class:`BucketRow`), sorted by endpoint,
        model and dimension."""
        b = t.rate_buckets.c
        with transaction(self._engine, write=False) as conn:
            key = (b.endpoint, b.model, b.dimension)
            rows = conn.execute(
                select(*key, b.level, b.rate_per_s, b.capacity, b.updated_at).order_by(*key)
            ).all()
        return [BucketRow(*row) for row in rows]

    def learned(self) -> list[LearnedLimit]:
        """Every learned limit kept in the database (the next run starts from them), sorted
        by endpoint, model and dimension."""
        b = t.rate_buckets.c
        with transaction(self._engine, write=False) as conn:
            key = (b.endpoint, b.model, b.dimension)
            rows = conn.execute(
                select(*key, b.learned, b.learned_at).where(b.learned.is_not(None)).order_by(*key)
            ).all()
        return [LearnedLimit(*row[:4], row.learned_at or 0.0) for row in rows]

    def paused_keys(self, now: float) -> dict[tuple[str, str], float]:
        """The keys paused at ``now`` (Unix seconds) by a 429 or 529: (endpoint, model) →
        Unix seconds the pause ends."""
        k = t.rate_keys.c
        with transaction(self._engine, write=False) as conn:
            rows = conn.execute(
                select(k.endpoint, k.model, k.paused_until).where(k.paused_until > now)
            ).all()
        return {(endpoint, model): until for endpoint, model, until in rows}


def _record(key_row: Row[Any], bucket_rows: Sequence[Row[Any]]) -> KeyRecord:
    dimensions = {}
    for row in bucket_rows:
        bucket = None
        if row.rate_per_s > 0:
            bucket = TokenBucket(row.rate_per_s, row.capacity, row.level, row.updated_at)
        dimensions[row.dimension] = DimensionRecord(
            bucket=bucket,
            announced=row.announced,
            learned=row.learned,
            learned_at=row.learned_at or 0.0,
        )
    return KeyRecord(
        dimensions=dimensions,
        paused_until=key_row.paused_until,
        lowered_at=key_row.lowered_at,
        ramp_started_at=key_row.ramp_started_at,
        ramp_from=key_row.ramp_from,
        admitted=Amounts(
            key_row.admitted_requests,
            key_row.admitted_input_tokens,
            key_row.admitted_output_tokens,
        ),
        admitted_at=key_row.admitted_at,
        measured_since=key_row.measured_since,
    )


def _key_values(record: KeyRecord) -> dict[str, Any]:
    return {
        "paused_until": record.paused_until,
        "lowered_at": record.lowered_at,
        "ramp_started_at": record.ramp_started_at,
        "ramp_from": record.ramp_from,
        "admitted_requests": record.admitted.requests,
        "admitted_input_tokens": record.admitted.input_tokens,
        "admitted_output_tokens": record.admitted.output_tokens,
        "admitted_at": record.admitted_at,
        "measured_since": record.measured_since,
    }


def _bucket_values(
    endpoint: str, model: str, dimension: str, item: DimensionRecord, now: float
) -> dict[str, Any]:
    # A limit heard of but not in force yet has no bucket: a rate of 0 says so.
    bucket = item.bucket or TokenBucket(0.0, 0.0, 0.0, now)
    return {
        "endpoint": endpoint,
        "model": model,
        "dimension": dimension,
        "level": bucket.level,
        "rate_per_s": bucket.rate_per_s,
        "capacity": bucket.capacity,
        "updated_at": bucket.updated_at,
        "announced": item.announced,
        "learned": item.learned,
        "learned_at": item.learned_at if item.learned is not None else None,
    }
