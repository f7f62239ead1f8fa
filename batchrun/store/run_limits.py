"""The limits each run sent a batch under (``batch_limits``): what ``batchrun report`` and the
dashboard show for a batch, rather than the limits its endpoint has today.

A run writes, per batch and limiter key (endpoint × model or family pattern), a row when it
first sends the batch under the key (:data:`SENT`, no dimension), and a row per dimension and
source (:data:`SOURCES`) when the limit is first seen and each time it changes by more than a
few percent (``batchrun.ops.limit_recorder`` decides which changes count and bounds them).
Rows of a batch go when the batch is deleted (the foreign key cascades).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, insert, select

from batchrun.store import tables as t
from batchrun.store.database import transaction

# Where a limit came from: a command-line flag (``run --rpm``), the config file, the server's
# headers (anthropic-ratelimit-*-limit), or a lower limit the workers learned from 429s.
FLAG = "flag"
CONFIGURED = "configured"
ANNOUNCED = "announced"
LEARNED = "learned"
SOURCES = (FLAG, CONFIGURED, ANNOUNCED, LEARNED)
# The row saying when a run first sent a batch under a key (with no limit known, the only one).
SENT = "sent"
# The lengths of the key's columns (longer names are cut: Postgres refuses them).
ENDPOINT_CHARS = 100
MODEL_CHARS = 200


@dataclass(frozen=True)
class LimitRecord:
    """One row of ``batch_limits``: from ``since`` on, the run ``run_id`` (started at
    ``run_started_at``) sent ``batch_id`` under the key ``endpoint`` × ``model`` with the
    per-minute ``value`` of ``dimension`` from ``source`` (None: none from it any more). A
    :data:`SENT` row has no dimension and no value: the run's first send under the key."""

    batch_id: str
    run_id: str
    run_started_at: datetime
    endpoint: str
    model: str
    dimension: str | None
    source: str
    value: float | None
    since: datetime


class RunLimitStore:
    """Statements on the limits runs sent batches under."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, rows: Sequence[LimitRecord]) -> None:
        """Store ``rows`` in one transaction (one multi-row insert)."""
        if not rows:
            return
        values = [
            {
                "batch_id": row.batch_id,
                "run_id": row.run_id,
                "run_started_at": row.run_started_at,
                "endpoint": _fit(row.endpoint, ENDPOINT_CHARS),
                "model": _fit(row.model, MODEL_CHARS),
                "dimension": row.dimension,
                "source": row.source,
                "value": row.value,
                "since": row.since,
            }
            for row in rows
        ]
        with transaction(self._engine, write=True) as conn:
            conn.execute(insert(t.batch_limits), values)

    def of_batches(self, batch_ids: Sequence[str]) -> dict[str, list[LimitRecord]]:
        """The rows of these batches, by batch id, each batch's in the order they were
        written (runs oldest first). One statement over the batches' rows."""
        if not batch_ids:
            return {}
        c = t.batch_limits.c
        statement = (
            select(
                c.batch_id,
                c.run_id,
                c.run_started_at,
                c.endpoint,
                c.model,
                c.dimension,
                c.source,
                c.value,
                c.since,
            )
            .where(c.batch_id.in_(list(batch_ids)))
            .order_by(c.batch_id, c.run_started_at, c.id)
        )
        found: dict[str, list[LimitRecord]] = {}
        with transaction(self._engine, write=False) as conn:
            for row in conn.execute(statement):
                found.setdefault(row.batch_id, []).append(LimitRecord(*row))
        return found


def _fit(value: str, length: int) -> str:
    """``value`` cut to ``length`` characters."""
    return value if len(value) <= length else value[:length]
