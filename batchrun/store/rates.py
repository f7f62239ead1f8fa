"""Rate-limit buckets shared by every worker of a database (Postgres, or SQLite on one host).

Each endpoint × model × limit is one row; a worker takes capacity in one transaction that
locks the key's rows (FOR UPDATE on Postgres; SQLite serialises writers), refills them to
now, applies the corrections the worker has learned since its last visit, and takes the cost
if every bucket has it. The arithmetic is the same :class:`batchrun.buckets.TokenBucket` the
single-worker limiter uses; times are Unix seconds from the workers' clocks (kept in sync by
NTP; a skew well under a second is harmless).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Engine, case, select, update

from batchrun.limits.banks import PendingChanges
from batchrun.limits.buckets import TokenBucket
from batchrun.store import tables as t
from batchrun.store.database import transaction, upsert_insert


class RateStore:
    """Statements on the shared rate buckets and pauses."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = upsert_insert(engine)

    def take(
        self,
        *,
        endpoint: str,
        model: str,
        costs: Mapping[str, float],
        rates: Mapping[str, tuple[float, float]],
        changes: PendingChanges,
        now: float,
    ) -> tuple[float, float]:
        """Take ``costs`` from the key's buckets (rate per second and capacity per limit in
        ``rates``) if all of them have it, after applying ``changes``; returns (seconds to
        wait, 0 when taken; the key's pause end in Unix seconds)."""
        b = t.rate_buckets.c
        key = (b.endpoint == endpoint) & (b.model == model)
        with transaction(self._engine, write=True) as conn:
            if changes.pause_until:
                self._pause(conn, endpoint, model, changes.pause_until)
            if rates:
                conn.execute(
                    self._insert(t.rate_buckets).on_conflict_do_nothing(),
                    [
                        {
                            "endpoint": endpoint,
                            "model": model,
                            "dimension": dimension,
                            "level": 0.0,
                            "rate_per_s": rate,
                            "capacity": capacity,
                            "updated_at": now,
                        }
                        for dimension, (rate, capacity) in rates.items()
                    ],
                )
            rows = conn.execute(
                select(b.dimension, b.rate_per_s, b.capacity, b.level, b.updated_at)
                .where(key)
                .with_for_update()
            ).all()
            paused_until = (
                conn.execute(
                    select(t.rate_pauses.c.paused_until).where(
                        t.rate_pauses.c.endpoint == endpoint, t.rate_pauses.c.model == model
                    )
                ).scalar_one_or_none()
                or 0.0
            )
            buckets = {row.dimension: TokenBucket(*row[1:]) for row in rows}
            wait_s = max(paused_until - now, 0.0)
            for dimension, bucket in buckets.items():
                if dimension in rates:
                    rate, capacity = rates[dimension]
                    if (bucket.rate_per_s, bucket.capacity) != (rate, capacity):
                        bucket.set_rate(rate, capacity / rate, now)
                if dimension in changes.deltas:
                    bucket.adjust(changes.deltas[dimension], now)
                if dimension in changes.clamps:
                    bucket.clamp(changes.clamps[dimension], now)
                if dimension in costs:
                    wait_s = max(wait_s, bucket.wait_s(costs[dimension], now))
            if wait_s <= 0:
                for dimension, cost in costs.items():
                    if dimension in buckets:
                        buckets[dimension].take(cost, now)
            for dimension, bucket in buckets.items():
                bucket.available(now)
                conn.execute(
                    update(t.rate_buckets)
                    .where(key, b.dimension == dimension)
                    .values(
                        level=bucket.level,
                        rate_per_s=bucket.rate_per_s,
                        capacity=bucket.capacity,
                        updated_at=bucket.updated_at,
                    )
                )
        return wait_s, paused_until

    def _pause(self, conn: object, endpoint: str, model: str, until: float) -> None:
        p = t.rate_pauses.c
        statement = self._insert(t.rate_pauses).values(
            endpoint=endpoint, model=model, paused_until=until
        )
        later = case(
            (statement.excluded.paused_until > p.paused_until, statement.excluded.paused_until),
            else_=p.paused_until,
        )
        conn.execute(  # type: ignore[attr-defined]
            statement.on_conflict_do_update(
                index_elements=["endpoint", "model"], set_={"paused_until": later}
            )
        )
