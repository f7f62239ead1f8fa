"""A batch's results: the worker's group commit, and reading results back for the exports.

Writing is :mod:`batchrun.store.recording`'s, in one transaction per group; this section
holds the one fact it keeps between groups (batches known to have no copies).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, func, or_, select

from batchrun.records import AnswerTurn, FinishedRequest, ResultDetail, ResultRow, RetryLater
from batchrun.store import tables as t
from batchrun.store.base import Section, stopped_batches
from batchrun.store.recording import record_outcomes
from batchrun.store.usage import read_request_turns

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
        self.record_watching(
            owner=owner,
            now=now,
            finished=finished,
            retries=retries,
            unsent=unsent,
            released=released,
            canceled=canceled,
            expired=expired,
            turns=turns,
        )

    def record_watching(
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
        batch_ids: Sequence[str] = (),
        batches_now: datetime | None = None,
    ) -> dict[str, str]:
        """:meth:`record`, and in the same transaction which of ``batch_ids`` are stopped as
        of ``batches_now`` (``BatchLifecycle.stopped``; none read without ``batch_ids``): a
        worker's control check rides on a group commit it makes anyway. Returns the stopped
        batches."""
        with self._write() as conn:
            stopped = stopped_batches(conn, batch_ids, batches_now or now) if batch_ids else {}
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
        return stopped

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
        result, usage and times, the usage of its answers repaired since and its repair sends
        (``ResultDetail.turns``, ``repair_sends``), in input order, streamed."""
        req = t.requests.c
        states = [only] if only else list(t.FINAL_STATES)
        statement = (
            select(*_detail_columns(), req.id, req.repairs)
            .select_from(_details_from())
            .where(req.batch_id == batch_id, req.state.in_(states))
            .order_by(req.line_no)
        )
        for detail, _ in self._stream_details(statement, extra=0):
            yield detail

    def iter_joined(self, batch_id: str) -> Iterator[tuple[ResultDetail, str | None]]:
        """Every request of the batch, finished or not, with its result (if any; its turns
        and repair sends as in :meth:`iter_details`) and the
        JSON of the table row it was rendered from (None: no row kept for it), in input
        order, streamed (``results --with-input``)."""
        req, rows = t.requests.c, t.table_rows.c
        statement = (
            select(*_detail_columns(), req.id, req.repairs, rows.data)
            .select_from(
                _details_from().outerjoin(
                    t.table_rows, (rows.batch_id == req.batch_id) & (rows.row_no == req.line_no)
                )
            )
            .where(req.batch_id == batch_id)
            .order_by(req.line_no)
        )
        for detail, extra in self._stream_details(statement, extra=1):
            yield detail, extra[0]

    def answer_params(self, batch_id: str) -> str | None:
        """The params (JSON) of the batch's first request that asks for a structured answer
        (``output_config`` with a JSON schema, or a forced tool call), None if none does: the
        schema its results are read with."""
        req = t.requests.c
        asks = or_(req.params.like('%"json_schema"%'), req.params.like('%"tool_choice"%'))
        with self._read() as conn:
            found: str | None = conn.scalar(
                select(req.params)
                .where(req.batch_id == batch_id, asks)
                .order_by(req.line_no)
                .limit(1)
            )
        return found

    def _stream_details(
        self, statement: Select[Any], *, extra: int
    ) -> Iterator[tuple[ResultDetail, tuple[Any, ...]]]:
        """The rows of ``statement`` (the :class:`ResultDetail` columns, the request's id and
        its ``repairs``, then ``extra`` more) as details with their turns and repair sends,
        and the extra values; the turns are read per chunk of rows, for the chunk's requests
        that have any (one grouped statement:
        :func:`~batchrun.store.usage.read_request_turns`)."""
        width = len(_detail_columns())
        with (
            self._read() as conn,
            conn.execution_options(yield_per=_EXPORT_CHUNK_ROWS).execute(statement) as result,
        ):
            # The result is closed even when the reader stops early (Postgres: its cursor).
            for partition in result.partitions():
                values = [tuple(row) for row in partition]
                repaired = [row[width] for row in values if row[width + 1]]
                turns = read_request_turns(conn, repaired) if repaired else {}
                for row in values:
                    # The last column is a field after the defaulted ones.
                    detail = replace(
                        ResultDetail(*row[: width - 1]),
                        cache_creation_1h_input_tokens=row[width - 1],
                    )
                    request_id, repairs = row[width], row[width + 1]
                    if repairs:
                        sent, tokens = turns.get(request_id, (0, ()))
                        answered = (
                            detail.state in (t.SUCCEEDED, t.ERRORED) and detail.reused_from is None
                        )
                        detail = replace(
                            detail, turns=tokens, repair_sends=sent + (1 if answered else 0)
                        )
                    yield detail, row[width + 2 : width + 2 + extra]


def _detail_columns() -> tuple[Any, ...]:
    """The columns of a :class:`ResultDetail`, in its fields' order up to ``lane``, then
    ``cache_creation_1h_input_tokens``."""
    req, res = t.requests.c, t.results.c
    return (
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
        res.cache_creation_1h_input_tokens,
    )


def _details_from() -> Any:
    """Requests with their batch and their result, if any."""
    req, res = t.requests.c, t.results.c
    return t.requests.join(t.batches, t.batches.c.id == req.batch_id).outerjoin(
        t.results, res.request_id == req.id
    )
