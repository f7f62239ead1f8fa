"""The dispatcher's part in repairing structured answers (``batchrun.structured.repair``):
a claimed request with an answer that did not match its schema is sent as its repair (the
follow-up turn, made from the latest such answer, read back from the store), and every
answer to a request that asked for a structured answer is reviewed before it is recorded:
it stands, goes back for a repair (:class:`Repair`, a write the group writer commits), or
ends the request ``invalid_output`` (``batchrun.structured.review``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from batchrun.dispatch.decisions import Decision, Finish
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.records import AnswerTurn, ClaimedRequest
from batchrun.structured.repair import may_ask_structure, repair_params
from batchrun.structured.review import review


@dataclass(frozen=True)
class Repair:
    """An answer that did not match its schema, with a repair left: kept in the request's
    history, and the request back to the queue for its repair send."""

    turn: AnswerTurn


class RepairDesk:
    """Repairs for one dispatcher: the batches' repair limits (read once per batch) and the
    two steps above."""

    def __init__(self, db: WorkerDatabase) -> None:
        self._db = db
        self._limits: dict[str, int] = {}

    async def prepared(self, request: ClaimedRequest) -> ClaimedRequest:
        """``request`` as it is to be sent: its repair when it has an answer that did not
        match its schema (params with the answer and the errors; its input estimate made
        again from them), else as claimed."""
        if request.repairs <= 0:
            return request
        found = await self._db.last_answer_turn(request.id)
        if found is None:
            return request
        body, errors = found
        params = repair_params(json.loads(request.params_json), json.loads(body), errors)
        return replace(request, params_json=_json_text(params), estimated_input_tokens=None)

    async def reviewed(self, request: ClaimedRequest, decision: Decision) -> Decision | Repair:
        """``decision`` after the review of its answer (see the module)."""
        if not isinstance(decision, Finish):
            return decision
        structured = may_ask_structure(request.params_json)
        if not structured and request.repairs == 0:
            return decision
        params = json.loads(request.params_json) if structured else None
        limit = await self._limit(request.batch_id) if params is not None else 0
        found = review(decision.result, params, repairs=request.repairs, repair_limit=limit)
        return Repair(found) if isinstance(found, AnswerTurn) else Finish(found)

    async def _limit(self, batch_id: str) -> int:
        if batch_id not in self._limits:
            self._limits.update(await self._db.repair_limits([batch_id]))
        return self._limits.get(batch_id, 0)


def _json_text(params: dict[str, object]) -> str:
    """``params`` as JSON that encodes to UTF-8: an answer may hold a lone surrogate (a server
    may send anything), which only an escape (``\\ud800``) can carry."""
    text = json.dumps(params, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(params, separators=(",", ":"))
    return text
