"""What becomes of a final answer to a request that asked for a structured answer: it
stands, it goes back for a repair, or it ends the request ``invalid_output``.

`review` is shared by the real-time lane (the dispatcher, on each answer it is about to
record) and the batch lane (the import of a provider batch's results), so both decide alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from batchrun.records import AnswerTurn, FinishedRequest
from batchrun.structured.repair import (
    INVALID_OUTPUT_ERROR_TYPE,
    check_answer,
    invalid_output_error,
)


def review(
    result: FinishedRequest,
    params: Mapping[str, Any] | None,
    *,
    repairs: int,
    repair_limit: int,
) -> FinishedRequest | AnswerTurn:
    """``result`` (a request's final answer) checked against the schema ``params`` asked for
    (None: the request asked for none, or it is not known to have).

    - an answer to a request that asked for no schema, an errored result, or an answer that
      matches: ``result`` as it is (marked a repair send when ``repairs`` > 0);
    - an answer that does not match, with fewer than ``repair_limit`` repairs made
      (``repairs``): an `AnswerTurn` to record, the request going back for a repair;
    - otherwise the result turned ``errored`` with :data:`INVALID_OUTPUT_ERROR_TYPE`: the
      errors in its message, the answer kept as its ``raw_body``, its usage kept.
    """
    result = replace(result, repair_send=repairs > 0)
    if params is None or result.result_type != "succeeded" or result.body is None:
        return result
    try:
        message = json.loads(result.body)
    except ValueError:
        return result
    if not isinstance(message, Mapping):
        return result
    invalid = check_answer(params, message)
    if invalid is None:
        return result
    if repairs < repair_limit:
        return AnswerTurn(
            request_id=result.request_id,
            batch_id=result.batch_id,
            turn=repairs + 1,
            repair_send=repairs > 0,
            body=result.body,
            errors=invalid.errors,
            completed_at=result.completed_at,
            model=result.model,
            usage=result.usage,
            endpoint=result.endpoint,
            lane=result.lane,
            cost_factor=result.cost_factor,
            sent_at=result.sent_at,
            latency_ms=result.latency_ms,
        )
    error = invalid_output_error(invalid.errors, repairs)
    return replace(
        result,
        result_type="errored",
        error_type=INVALID_OUTPUT_ERROR_TYPE,
        error_message=error["error"]["message"],
        body=json.dumps(error, separators=(",", ":"), ensure_ascii=False),
        raw_body=result.raw_body or result.body,
    )
