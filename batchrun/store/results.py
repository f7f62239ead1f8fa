"""A batch's results: the worker's group commit, and reading results back for the exports.

Writing is :mod:`batchrun.store.recording`'s, in one transaction per group; this section
holds the one fact it keeps between groups (batches known to have no copies).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import Engine, func, select

from batchrun.records import AnswerTurn, FinishedRequest, ResultDetail, ResultRow, RetryLater
from batchrun.store import tables as t
from batchrun.store.base import Section
from batchrun.store.recording import record_outcomes

# Rows fetched per round trip while exporting.
_EXPORT_CHUNK_ROWS = 1000


class Results(Section):
    """Statements that write and read the results of requests."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # Batches found to have no copies (``submit --reuse`` duplicates): copies are made
        # only when a batch is stored, so this stays true, and their results skip the look
        # for copies.
        self._without_copies: set[str] = set()

    def record(
        self,
        *,
        owner: str,
        now: datetime,
        finished: Sequence[FinishedRequest] = (),
        retries: Sequence[RetryLater] = (),
        unsent: Sequence[int] = (),
        released: Sequence[int] = (),
        canceled: Sequence[int] = (),
        expired: Sequence[int] = (),
        turns: Sequence[AnswerTurn] = (),
    ) -> None:
        """Write one group of a worker's outcomes in a single transaction (group commit);
        see :func:`~batchrun.store.recording.record_outcomes` for what each kind does."""
        with self._write() as conn:
            record_outcomes(
                conn,
                owner=owner,
                now=now,
                finished=finished,
                retries=retries,
                unsent=unsent,
                released=released,
                canceled=canceled,
                expired=expired,
                turns=turns,
                without_copies=self._without_copies,
            )

    def iter_rows(self, batch_id: str) -> Iterator[ResultRow]:
        """Every request of the batch with its result (if any), in input order, streamed."""
        req, res = t.requests.c, t.results.c
        statement = (
            select(
                req.custom_id,
                req.line_no,
                req.state,
                res.body,
                res.error_type,
                res.error_message,
            )
            .select_from(t.requests.outerjoin(t.results, res.request_id == req.id))
            .where(req.batch_id == batch_id)
            .order_by(req.line_no)
        )
        with self._read() as conn:
            for partition in (
                conn.execution_options(yield_per=_EXPORT_CHUNK_ROWS).execute(statement).partitions()
            ):
                for row in partition:
                    yield ResultRow(*row)

    def iter_details(self, batch_id: str, only: str | None = None) -> Iterator[ResultDetail]:
        """Every finished request of the batch (or only those that ended ``only``) with its
        result, usage and times, in input order, streamed."""
        req, res = t.requests.c, t.results.c
        states = [only] if only else list(t.FINAL_STATES)
        statement = (
            select(
                req.batch_id,
                req.custom_id,
                req.line_no,
                req.state,
                func.coalesce(res.model, req.model),
                res.stop_reason,
                res.body,
                res.input_tokens,
                res.output_tokens,
                res.cache_creation_input_tokens,
                res.cache_read_input_tokens,
                func.coalesce(res.attempts, req.attempts),
                res.latency_ms,
                res.http_status,
                res.request_ref,
                res.error_type,
                res.error_message,
                t.batches.c.created_at,
                req.started_at,
                res.completed_at,
                res.raw_body,
                res.endpoint,
                res.reused_from,
                res.cost_factor,
                res.lane,
            )
            .select_from(
                t.requests.join(t.batches, t.batches.c.id == req.batch_id).outerjoin(
                    t.results, res.request_id == req.id
                )
            )
            .where(req.batch_id == batch_id, req.state.in_(states))
            .order_by(req.line_no)
        )
        with (
            self._read() as conn,
            conn.execution_options(yield_per=_EXPORT_CHUNK_ROWS).execute(statement) as result,
        ):
            # The result is closed even when the reader stops early (Postgres: its cursor).
            for partition in result.partitions():
                for row in partition:
                    yield ResultDetail(*tuple(row))
