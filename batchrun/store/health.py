"""How each endpoint fares, as workers publish it, and which endpoints answered a batch.

A worker writes a row when one of its endpoints goes out of rotation or comes back (a pool
member failing, or halted by bad credentials; see ``batchrun.dispatch.routing``); ``status``
reads the rows beside each endpoint's share of a batch's answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from batchrun.records import EndpointHealth, EndpointShare
from batchrun.store import tables as t
from batchrun.store.base import Section
from batchrun.store.breakdowns import endpoint_answers, recent_endpoint_answers


class Health(Section):
    """Statements on endpoint health and on who answered."""

    def record(
        self, *, endpoint: str, state: str, reason: str | None, until: float | None, now: float
    ) -> None:
        """Store the endpoint's state (closed, open or halted) as of ``now`` (Unix seconds);
        ``until``: when an open endpoint is probed again."""
        h = t.endpoint_health.c
        statement = self._insert(t.endpoint_health).values(
            endpoint=endpoint, state=state, reason=reason, until=until, updated_at=now
        )
        with self._write() as conn:
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[h.endpoint],
                    set_={
                        "state": statement.excluded.state,
                        "reason": statement.excluded.reason,
                        "until": statement.excluded.until,
                        "updated_at": statement.excluded.updated_at,
                    },
                )
            )

    def of_endpoints(self, endpoints: Sequence[str]) -> dict[str, EndpointHealth]:
        """The last published state of each of these endpoints that has one."""
        h = t.endpoint_health.c
        with self._read() as conn:
            rows = conn.execute(
                select(h.endpoint, h.state, h.reason, h.until, h.updated_at).where(
                    h.endpoint.in_(list(endpoints))
                )
            ).all()
        return {row.endpoint: EndpointHealth(*row) for row in rows}

    def answers_by_endpoint(self, batch_id: str, since: datetime) -> list[EndpointShare]:
        """For each endpoint that answered the batch: its succeeded and errored results (not
        the reused ones: nothing was sent for them; the batch's counters), and how many of
        them came after ``since``; most answers first."""
        with self._read() as conn:
            answers = endpoint_answers(conn, batch_id)
            recent = recent_endpoint_answers(conn, batch_id, since) if answers else {}
        shares = [EndpointShare(name, n, recent.get(name, 0)) for name, n in answers.items()]
        return sorted(shares, key=lambda share: (-share.answered, share.endpoint))
