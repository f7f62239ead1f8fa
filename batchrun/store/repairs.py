"""Answers that did not match their schema: kept in the request's history (``answer_turns``)
as the request goes back to the real-time queue for a repair send, and read back to make
that send (see ``batchrun.structured.repair``).

Writes run on the caller's connection, in the transaction that records the group
(``batchrun.store.recording``) or a provider batch's results
(``batchrun.store.provider_batches``): the turn row, the request's move and the counters
(its usage at once, so budgets and ``status`` see it; a repair send's answer in the repair
counters, ``batchrun.store.repair_counts``) commit together. A ``kill -9`` after that commit
loses neither the answer nor its cost, and the request's next send is the repair, not the
original request again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update

from batchrun.records import AnswerTurn, FinishedRequest, Lane, ModelTokens
from batchrun.store import tables as t
from batchrun.store.base import Section
from batchrun.store.counters import CounterChanges
from batchrun.store.repair_counts import repairs_of, turn_tokens
from batchrun.structured.repair import may_ask_structure
from batchrun.structured.review import review

_INT32_MAX = 2**31 - 1
_REALTIME = Lane.REALTIME.value


def _int32(value: int | None) -> int | None:
    return None if value is None else min(max(value, 0), _INT32_MAX)


def _key(model: str | None, fallback: str, lane: str | None, factor: float | None) -> Any:
    return (model or fallback, lane or _REALTIME, 1.0 if factor is None else float(factor))


def record_turns(
    conn: Connection,
    turns: Sequence[AnswerTurn],
    *,
    changes: CounterChanges,
    from_state: str = t.RUNNING,
    owner: str | None = None,
) -> list[int]:
    """Keep each turn and send its request back to the real-time queue for a repair (its
    send counted in ``attempts``, ``repairs`` now the turn), for requests still in
    ``from_state`` (held by ``owner`` when given) that have not recorded this turn already;
    their usage and repair sends go to ``changes``. Returns the requests moved."""
    req = t.requests.c
    moved: list[int] = []
    for turn in turns:
        where = [req.id == turn.request_id, req.state == from_state, req.repairs == turn.turn - 1]
        if owner is not None:
            where.append(req.lease_owner == owner)
        found = conn.execute(
            update(t.requests)
            .where(and_(*where))
            .values(
                state=t.QUEUED,
                lane=Lane.REALTIME,
                attempts=req.attempts + 1,
                repairs=turn.turn,
                not_before=None,
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(req.model)
        ).first()
        if found is None:
            continue
        moved.append(turn.request_id)
        usage = turn.usage
        conn.execute(
            insert(t.answer_turns).values(
                request_id=turn.request_id,
                turn=turn.turn,
                batch_id=turn.batch_id,
                repair_send=1 if turn.repair_send else 0,
                model=(turn.model or "")[:200] or None,
                lane=turn.lane,
                cost_factor=turn.cost_factor,
                endpoint=(turn.endpoint or "")[:100] or None,
                sent_at=turn.sent_at,
                latency_ms=_int32(turn.latency_ms),
                completed_at=turn.completed_at,
                input_tokens=_int32(usage.input_tokens) if usage else None,
                output_tokens=_int32(usage.output_tokens) if usage else None,
                cache_creation_input_tokens=(
                    _int32(usage.cache_creation_input_tokens) if usage else None
                ),
                cache_read_input_tokens=_int32(usage.cache_read_input_tokens) if usage else None,
                body=turn.body,
                errors=json.dumps(list(turn.errors), ensure_ascii=False),
            )
        )
        key = _key(turn.model, found.model, turn.lane, turn.cost_factor)
        tokens = [min(v, _INT32_MAX) for v in turn_tokens(turn)]
        changes.turn_tokens(turn.batch_id, key, tokens)
        if turn.repair_send:
            changes.repair_send(turn.batch_id, key, tokens)
    return moved


def count_repair_results(
    conn: Connection,
    finished: Sequence[FinishedRequest],
    written: set[int],
    changes: CounterChanges,
) -> None:
    """Count in the repair counters the results just ``written`` that answered a repair send
    (``FinishedRequest.repair_send``)."""
    sent = [item for item in finished if item.repair_send and item.request_id in written]
    if not sent:
        return
    req = t.requests.c
    models = dict(
        conn.execute(
            select(req.id, req.model).where(req.id.in_([item.request_id for item in sent]))
        ).all()
    )
    for item in sent:
        key = _key(item.model, models.get(item.request_id, ""), item.lane, item.cost_factor)
        tokens = [min(v, _INT32_MAX) for v in turn_tokens(item)]
        changes.repair_send(item.batch_id, key, tokens)


def review_imported(
    conn: Connection, finished: Sequence[FinishedRequest]
) -> tuple[list[FinishedRequest], list[AnswerTurn]]:
    """A provider batch's final answers reviewed against the schemas their requests asked
    for (``batchrun.structured.review``): the results to record, and the answers that go
    back for a repair in real time."""
    succeeded = [item.request_id for item in finished if item.result_type == t.SUCCEEDED]
    facts: dict[int, tuple[str, int, int]] = {}
    if succeeded:
        req, b = t.requests.c, t.batches.c
        rows = conn.execute(
            select(req.id, req.params, req.repairs, b.repair_limit)
            .select_from(t.requests.join(t.batches, b.id == req.batch_id))
            .where(req.id.in_(succeeded))
        ).all()
        facts = {row.id: (row.params, row.repairs, row.repair_limit) for row in rows}
    results: list[FinishedRequest] = []
    turns: list[AnswerTurn] = []
    for item in finished:
        params_json, repairs, limit = facts.get(item.request_id, ("", 0, 0))
        params = json.loads(params_json) if may_ask_structure(params_json) else None
        reviewed = review(item, params, repairs=repairs, repair_limit=limit)
        if isinstance(reviewed, AnswerTurn):
            turns.append(reviewed)
        else:
            results.append(reviewed)
    return results, turns


class Repairs(Section):
    """Reads of the repairs of structured answers."""

    def last_turn(self, request_id: int) -> tuple[str, tuple[str, ...]] | None:
        """The request's latest answer that did not match its schema: (the Message as JSON,
        its validation errors); None when it has none."""
        a = t.answer_turns.c
        with self._read() as conn:
            row = conn.execute(
                select(a.body, a.errors)
                .where(a.request_id == request_id)
                .order_by(a.turn.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        return row.body, tuple(str(error) for error in json.loads(row.errors))

    def repair_limits(self, batch_ids: Sequence[str]) -> dict[str, int]:
        """Each batch's repair limit (``repair = N``: repair sends per request at most)."""
        b = t.batches.c
        with self._read() as conn:
            rows = conn.execute(select(b.id, b.repair_limit).where(b.id.in_(list(batch_ids))))
            return {row.id: int(row.repair_limit) for row in rows}

    def sends_of(self, batch_ids: Sequence[str]) -> dict[str, list[ModelTokens]]:
        """Per batch, its repair sends answered and their tokens (the counters:
        ``repair_counts.repairs_of``)."""
        with self._read() as conn:
            return repairs_of(conn, batch_ids)

    def turns_of(self, request_id: int) -> list[dict[str, Any]]:
        """The request's answers that did not match its schema, oldest first: each turn's
        number, whether it answered a repair send, its model, lane, usage, the Message and
        the errors."""
        a = t.answer_turns.c
        with self._read() as conn:
            rows = conn.execute(
                select(t.answer_turns).where(a.request_id == request_id).order_by(a.turn)
            ).all()
        return [
            {
                **{key: value for key, value in row._mapping.items() if key not in ("body",)},
                "repair_send": bool(row.repair_send),
                "message": json.loads(row.body),
                "errors": json.loads(row.errors),
            }
            for row in rows
        ]
