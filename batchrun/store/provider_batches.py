"""The batch lane's records: provider batches, from the intent row written before a create to
the import of their results.

The protocol these statements serve is described in ``batchrun.batch_lane``; the rule that makes
it safe is that requests move into a provider batch (state ``provider``) in the same
transaction that writes its ``intent`` row, before anything is sent, and leave it only when
its results are imported or its create is known not to have happened.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, literal, or_, select, tuple_, update

from batchrun.records import (
    BudgetStop,
    ImportedResult,
    ImportTally,
    Lane,
    ProviderBatchRow,
    ProviderIntent,
    Requeue,
)
from batchrun.store import tables as t
from batchrun.store.base import Section, end_finished_batches, insert_bare_results
from batchrun.store.counters import CounterChanges
from batchrun.store.leases import not_waiting
from batchrun.store.recording import record_finished
from batchrun.store.repairs import record_turns, review_imported
from batchrun.store.reuse import settle_copies

# Candidate requests read per round trip while filling a provider batch.
_TAKE_CHUNK_ROWS = 2000
# The create body's own bytes around the request lines: {"requests":[ and ]}.
_BODY_OVERHEAD_BYTES = 16


def request_line(custom_id: str, params_json: str) -> bytes:
    """One request of a create body, as the provider receives it."""
    return (
        b'{"custom_id":'
        + json.dumps(custom_id).encode()
        + b',"params":'
        + params_json.encode()
        + b"}"
    )


class ProviderBatches(Section):
    """Statements on provider batches and the requests they hold."""

    def take(
        self,
        *,
        batch_id: str,
        endpoint: str,
        max_requests: int,
        max_bytes: int,
        now: datetime,
        cancel_at: datetime | None = None,
        make_line: Callable[[str, str], bytes] = request_line,
        max_cost_usd: float | None = None,
        worst_cost_usd: Callable[[str, int, int], float] | None = None,
    ) -> ProviderIntent | BudgetStop | None:
        """Move the batch's ready batch-lane requests (a prompt-cache group's together, in
        group then input order, then the others in input order; up to ``max_requests``
        and a create body of ``max_bytes``) into a new provider batch in state ``intent``, in
        one transaction; returns them with their body lines, or None if none is ready.
        Safe against other workers (FOR UPDATE SKIP LOCKED on Postgres). ``make_line``
        makes a request's body line from its custom_id and params (the sizes count it). With
        ``max_cost_usd``, the requests taken cost at most that in the worst case, by
        ``worst_cost_usd(model, input estimate, max_tokens)`` (a budget); BudgetStop when
        not even the first ready request fits."""
        req = t.requests.c
        ready = (
            req.batch_id == batch_id,
            req.state == t.QUEUED,
            req.lane == Lane.BATCH,
            not_waiting(),
        )
        columns = (
            req.id,
            req.custom_id,
            req.params,
            req.model,
            req.estimated_input_tokens,
            req.max_tokens,
            req.wait_for,
        )
        with self._write() as conn:
            chosen: list[int] = []
            lines: list[bytes] = []
            size = _BODY_OVERHEAD_BYTES
            worst_usd = 0.0
            stopped_at: float | None = None
            # Grouped requests first, by group (the leader they wait for) then line, so a
            # group's followers fill as few provider batches as possible and its entry needs
            # keeping warm only while those run; then the others, in line order. Both read
            # by keyset along ix_requests_batch_id_state_wait_for_id.
            last_group, last_id = 0, 0
            grouped = True
            full = False
            while not full and len(chosen) < max_requests:
                if grouped:
                    after = tuple_(req.wait_for, req.id) > tuple_(last_group, last_id)
                    statement = (
                        select(*columns)
                        .where(*ready, req.wait_for.is_not(None), after)
                        .order_by(req.wait_for, req.id)
                    )
                else:
                    statement = (
                        select(*columns)
                        .where(*ready, req.wait_for.is_(None), req.id > last_id)
                        .order_by(req.id)
                    )
                rows = conn.execute(
                    statement.limit(
                        min(_TAKE_CHUNK_ROWS, max_requests - len(chosen))
                    ).with_for_update(skip_locked=True)
                ).all()
                if not rows:
                    if not grouped:
                        break
                    grouped, last_id = False, 0
                    continue
                for request_id, custom_id, params, model, estimate, max_tokens, group in rows:
                    line = make_line(custom_id, params)
                    if size + len(line) + 1 > max_bytes and chosen:
                        full = True
                        break
                    if max_cost_usd is not None and worst_cost_usd is not None:
                        cost = worst_cost_usd(model, estimate or 0, max_tokens)
                        if worst_usd + cost > max_cost_usd:
                            full, stopped_at = True, cost
                            break
                        worst_usd += cost
                    chosen.append(request_id)
                    lines.append(line)
                    size += len(line) + 1
                    last_group, last_id = group or 0, request_id
                    if len(chosen) >= max_requests:
                        break
            if not chosen:
                return None if stopped_at is None else BudgetStop(stopped_at)
            row_id = conn.execute(
                insert(t.provider_batches)
                .values(
                    batch_id=batch_id,
                    endpoint=endpoint,
                    state=t.INTENT,
                    request_count=len(chosen),
                    body_bytes=size,
                    intent_at=now,
                    cancel_at=cancel_at,
                    polls=0,
                    poll_failures=0,
                )
                .returning(t.provider_batches.c.id)
            ).scalar_one()
            for start in range(0, len(chosen), _TAKE_CHUNK_ROWS):
                conn.execute(
                    update(t.requests)
                    .where(req.id.in_(chosen[start : start + _TAKE_CHUNK_ROWS]))
                    .values(state=t.PROVIDER, provider_batch=row_id, lease_owner=None)
                )
        return ProviderIntent(row_id, batch_id, endpoint, lines, size)

    def created(
        self, row_id: int, *, provider_id: str, created_at: datetime | None, next_poll_at: datetime
    ) -> None:
        """The provider has the batch (the create answered, or reconciliation found it)."""
        with self._write() as conn:
            conn.execute(
                update(t.provider_batches)
                .where(
                    t.provider_batches.c.id == row_id,
                    t.provider_batches.c.state.in_((t.INTENT, t.AMBIGUOUS)),
                )
                .values(
                    state=t.CREATED,
                    provider_id=provider_id,
                    created_at=created_at,
                    next_poll_at=next_poll_at,
                    note=None,
                )
            )

    def not_created(self, row_id: int, *, note: str, lane: str = Lane.BATCH, now: datetime) -> int:
        """The create is known not to have happened: the row ends ``not_created`` and its
        requests go back to the queue in ``lane``; returns how many."""
        req = t.requests.c
        with self._write() as conn:
            conn.execute(
                update(t.provider_batches)
                .where(t.provider_batches.c.id == row_id)
                .values(state=t.NOT_CREATED, note=note, imported_at=now)
            )
            back = conn.execute(
                update(t.requests)
                .where(req.provider_batch == row_id, req.state == t.PROVIDER)
                .values(state=t.QUEUED, lane=lane, provider_batch=None, last_error=note)
            ).rowcount
        return int(back)

    def ambiguous(self, row_id: int, note: str) -> None:
        """The fate of the create cannot be told: its requests stay held (never sent again
        by batchrun) until a person settles it (``batchrun lanes``)."""
        with self._write() as conn:
            conn.execute(
                update(t.provider_batches)
                .where(t.provider_batches.c.id == row_id)
                .values(state=t.AMBIGUOUS, note=note)
            )

    def of_batches(
        self, batch_ids: Sequence[str], *, open_only: bool = False
    ) -> list[ProviderBatchRow]:
        """The provider batches of these batches (only the open ones: intent, created,
        ambiguous), oldest first."""
        pb = t.provider_batches.c
        statement = select(t.provider_batches).where(pb.batch_id.in_(batch_ids))
        if open_only:
            statement = statement.where(pb.state.in_(t.PROVIDER_OPEN_STATES))
        with self._read() as conn:
            rows = conn.execute(statement.order_by(pb.id)).all()
        return [ProviderBatchRow(**row._mapping) for row in rows]

    def get(self, row_id: int) -> ProviderBatchRow | None:
        """One provider batch record, or None."""
        with self._read() as conn:
            row = conn.execute(
                select(t.provider_batches).where(t.provider_batches.c.id == row_id)
            ).one_or_none()
        return None if row is None else ProviderBatchRow(**row._mapping)

    def claimed_ids(self, endpoint: str) -> set[str]:
        """The provider batch ids this database already knows on ``endpoint``."""
        pb = t.provider_batches.c
        with self._read() as conn:
            return set(
                conn.scalars(
                    select(pb.provider_id).where(
                        pb.endpoint == endpoint, pb.provider_id.is_not(None)
                    )
                )
            )

    def take_poll(self, row_id: int, *, now: datetime, next_poll_at: datetime) -> bool:
        """Reserve the next look at a provider batch: True (and ``next_poll_at`` moved on)
        if it was due, False if another worker looked since (at most one poll per interval,
        whatever the number of workers)."""
        pb = t.provider_batches.c
        with self._write() as conn:
            changed = conn.execute(
                update(t.provider_batches)
                .where(
                    pb.id == row_id,
                    pb.state.in_(t.PROVIDER_OPEN_STATES),
                    or_(pb.next_poll_at.is_(None), pb.next_poll_at <= now),
                )
                .values(next_poll_at=next_poll_at, polls=pb.polls + 1)
            ).rowcount
        return bool(changed)

    def polled(
        self,
        row_id: int,
        *,
        status: str | None = None,
        counts: Mapping[str, int] | None = None,
        results_url: str | None = None,
        ended_at: datetime | None = None,
        next_poll_at: datetime | None = None,
        failed_note: str | None = None,
    ) -> None:
        """What a poll found: the provider's status and counts, or (``failed_note``) why it
        failed, with the next poll's time."""
        pb = t.provider_batches.c
        values: dict[str, Any] = {}
        if failed_note is not None:
            values.update(note=failed_note, poll_failures=pb.poll_failures + 1)
        else:
            values.update(poll_failures=0, note=None)
        if status is not None:
            values["status"] = status
        if counts is not None:
            values["counts"] = json.dumps(dict(counts), sort_keys=True)
        if results_url is not None:
            values["results_url"] = results_url
        if ended_at is not None:
            values["ended_at"] = ended_at
        if next_poll_at is not None:
            values["next_poll_at"] = next_poll_at
        with self._write() as conn:
            conn.execute(update(t.provider_batches).where(pb.id == row_id).values(**values))

    def cancel_sent(self, row_id: int, now: datetime) -> None:
        """batchrun asked the provider to cancel the batch."""
        with self._write() as conn:
            conn.execute(
                update(t.provider_batches)
                .where(t.provider_batches.c.id == row_id)
                .values(cancel_sent_at=now)
            )

    def import_results(
        self,
        row_id: int,
        results: Sequence[ImportedResult],
        requeues: Sequence[Requeue],
        *,
        now: datetime,
    ) -> ImportTally:
        """Store one chunk of a provider batch's results in one transaction: final results
        for the requests it still holds, and the requests going back to the real-time queue.
        Lines for requests it no longer holds (imported before a crash) change nothing, so
        an import can run again from the start. Batches left with nothing open end."""
        with self._write() as conn:
            finished, back, tally = prepare_import(conn, row_id, results, requeues)
            # Structured answers that do not match their schema go back for a repair, in
            # real time (batchrun.store.repairs).
            finished, turns = review_imported(conn, finished)
            if finished or turns:
                changes = CounterChanges()
                record_finished(conn, finished, changes=changes, from_state=t.PROVIDER)
                settle_copies(conn, [item.request_id for item in finished], now, changes)
                repairing = record_turns(conn, turns, changes=changes, from_state=t.PROVIDER)
                changes.apply(conn)
                tally = replace(
                    tally,
                    stored=tally.stored - len(turns),
                    requeued=tally.requeued + len(repairing),
                )
            apply_requeues(conn, back)
            end_finished_batches(conn, batches_of_provider_batch(conn, row_id), now)
        return tally

    def close(
        self, row_id: int, *, now: datetime, leftover_reason: str, requeue: bool = True
    ) -> int:
        """The provider batch's results are all in: requests it still holds go back to the
        real-time queue, or end errored when some lines could not be read (``requeue``
        False; see :func:`close_provider_batch`); the row ends ``imported``. Returns how
        many it still held."""
        with self._write() as conn:
            back = close_provider_batch(
                conn, row_id, now=now, leftover_reason=leftover_reason, requeue=requeue
            )
            end_finished_batches(conn, batches_of_provider_batch(conn, row_id), now)
        return back


def match_imported(
    conn: Connection, row_id: int, custom_ids: Sequence[str]
) -> dict[str, tuple[int, str, int]]:
    """The requests the provider batch still holds among ``custom_ids``: custom_id →
    (request id, batch id, attempts)."""
    req = t.requests.c
    found: dict[str, tuple[int, str, int]] = {}
    for start in range(0, len(custom_ids), _TAKE_CHUNK_ROWS):
        rows = conn.execute(
            select(req.custom_id, req.id, req.batch_id, req.attempts).where(
                req.provider_batch == row_id,
                req.state == t.PROVIDER,
                req.custom_id.in_(custom_ids[start : start + _TAKE_CHUNK_ROWS]),
            )
        ).all()
        for custom_id, request_id, batch_id, attempts in rows:
            found[custom_id] = (request_id, batch_id, attempts)
    return found


def prepare_import(
    conn: Connection,
    row_id: int,
    results: Sequence[ImportedResult],
    requeues: Sequence[Requeue],
) -> tuple[list[Any], list[dict[str, Any]], ImportTally]:
    """Match a chunk of a provider batch's results to the requests it holds: the finished
    requests to record (with ids filled in) and the requeues to apply; lines for requests
    it no longer holds (imported before a crash, or unknown) are counted as unmatched."""
    wanted = [item.custom_id for item in results] + [item.custom_id for item in requeues]
    held = match_imported(conn, row_id, wanted)
    finished = []
    seen: set[str] = set()
    for item in results:
        found = held.get(item.custom_id)
        if found is None or item.custom_id in seen:
            continue
        seen.add(item.custom_id)
        request_id, batch_id, attempts = found
        finished.append(
            replace(item.result, request_id=request_id, batch_id=batch_id, attempts=attempts + 1)
        )
    back: list[dict[str, Any]] = []
    for requeue in requeues:
        found = held.get(requeue.custom_id)
        if found is None or requeue.custom_id in seen:
            continue
        seen.add(requeue.custom_id)
        back.append({"rid": found[0], "err": requeue.reason})
    unmatched = len(wanted) - len(seen)
    return finished, back, ImportTally(len(finished), len(back), unmatched)


def apply_requeues(conn: Connection, back: Sequence[dict[str, Any]]) -> None:
    """Put these provider-held requests back in the queue, in the real-time lane, the send
    counted (``rid``: request id, ``err``: why)."""
    if not back:
        return
    req = t.requests.c
    conn.execute(
        update(t.requests)
        .where(req.id == bindparam("rid"), req.state == t.PROVIDER)
        .values(
            state=t.QUEUED,
            lane=Lane.REALTIME,
            attempts=req.attempts + 1,
            not_before=None,
            last_error=bindparam("err"),
        ),
        list(back),
    )


def close_provider_batch(
    conn: Connection, row_id: int, *, now: datetime, leftover_reason: str, requeue: bool
) -> int:
    """After the last result line: the requests the provider batch still holds (it gave no
    result for them) go back to the real-time queue (``requeue``), or, when some of its
    lines could not be read (one of them may be theirs, and billed), end errored with
    ``leftover_reason``; in a batch being canceled they end canceled. The row ends
    ``imported``. Returns how many there were. The batch's counters change with them."""
    req = t.requests.c
    changes = CounterChanges()
    canceling = conn.execute(
        select(t.batches.c.cancel_initiated_at)
        .select_from(
            t.batches.join(t.provider_batches, t.provider_batches.c.batch_id == t.batches.c.id)
        )
        .where(t.provider_batches.c.id == row_id)
    ).scalar_one_or_none()
    if canceling is not None:
        back = conn.execute(
            update(t.requests)
            .where(req.provider_batch == row_id, req.state == t.PROVIDER)
            .values(state=t.CANCELED)
        ).rowcount
        for batch_id in batches_of_provider_batch(conn, row_id):
            changes.moved(batch_id, t.PROVIDER, t.CANCELED, back)
            insert_bare_results(conn, batch_id, t.CANCELED, now)
    elif requeue:
        back = conn.execute(
            update(t.requests)
            .where(req.provider_batch == row_id, req.state == t.PROVIDER)
            .values(state=t.QUEUED, lane=Lane.REALTIME, last_error=leftover_reason)
        ).rowcount
    else:
        body = json.dumps(
            {"type": "error", "error": {"type": "api_error", "message": leftover_reason}}
        )
        conn.execute(
            insert(t.results).from_select(
                [
                    "request_id",
                    "batch_id",
                    "custom_id",
                    "attempts",
                    "result_type",
                    "error_type",
                    "error_message",
                    "body",
                    "completed_at",
                    "lane",
                ],
                select(
                    req.id,
                    req.batch_id,
                    req.custom_id,
                    req.attempts + 1,
                    literal(t.ERRORED),
                    literal("api_error"),
                    literal(leftover_reason),
                    literal(body),
                    literal(now, t.UtcDateTime()),
                    literal(Lane.BATCH.value),  # .value: a plain str binds as a string
                ).where(req.provider_batch == row_id, req.state == t.PROVIDER),
            )
        )
        back = conn.execute(
            update(t.requests)
            .where(req.provider_batch == row_id, req.state == t.PROVIDER)
            .values(state=t.ERRORED, attempts=req.attempts + 1)
        ).rowcount
        for batch_id in batches_of_provider_batch(conn, row_id):
            changes.moved(batch_id, t.PROVIDER, t.ERRORED, back)
            if back:
                # Errored results written by a SELECT: their error type, last answer.
                changes.recount(batch_id)
    changes.apply(conn)
    conn.execute(
        update(t.provider_batches)
        .where(t.provider_batches.c.id == row_id)
        .values(state=t.IMPORTED, imported_at=now)
    )
    return int(back)


def batches_of_provider_batch(conn: Connection, row_id: int) -> list[str]:
    """The batch a provider batch belongs to (as a list, for ending finished batches)."""
    return list(
        conn.scalars(select(t.provider_batches.c.batch_id).where(t.provider_batches.c.id == row_id))
    )
