"""A provider batch's result line → what becomes of its request (pure).

- ``succeeded``: the Message is judged as a real-time 200 is (``transport.classify``), so a
  poisoned one is refused the same way; stored with the lane's discount.
- ``errored`` with a final type (``invalid_request_error``, ...): stored errored.
- ``errored`` with a transient type (``api_error``, ``overloaded_error``, ``rate_limit_error``,
  ``timeout_error``) and ``expired``: back to the queue in real time while the batch's own
  deadline has not passed and it is not being canceled; else stored errored / expired.
- ``canceled``: stored canceled when the batch is being canceled; otherwise (the auto lane's
  cut-off canceled it) back to the queue in real time.
- A line that cannot be read gives None: the caller counts it; its request is not sent again
  (it may have been billed), see ``ProviderBatches.close``
  (:mod:`batchrun.store.provider_batches`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batchrun.records import (
    FinishedRequest,
    ImportedResult,
    Lane,
    Requeue,
    Succeeded,
)
from batchrun.transport.classify import KNOWN_ERROR_TYPES, classify_response

# Error types a provider batch reports for failures worth another try (Anthropic's guide:
# anything but invalid_request_error can be retried as it is; these are the transient ones).
TRANSIENT_ERROR_TYPES = frozenset(
    {"api_error", "overloaded_error", "rate_limit_error", "timeout_error"}
)
_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class ImportContext:
    """What the reading of a line depends on: the provider batch, the endpoint that answered
    and its discount, the time, whether the batch is being canceled and whether its
    deadline has passed."""

    provider_id: str
    endpoint: str
    discount: float
    now: datetime
    canceling: bool
    deadline_passed: bool


def read_result_line(line: bytes, context: ImportContext) -> ImportedResult | Requeue | None:
    """What the line means for its request; None when it cannot be read."""
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(item, dict):
        return None
    custom_id = item.get("custom_id")
    result = item.get("result")
    if not isinstance(custom_id, str) or not isinstance(result, dict):
        return None
    kind = result.get("type")
    where = f"provider batch {context.provider_id}"
    if kind == "succeeded":
        return _succeeded(custom_id, result.get("message"), context)
    # Nothing goes back to the queue of a batch being canceled or past its deadline.
    final_only = context.canceling or context.deadline_passed
    if kind == "errored":
        error_type, message, body = _error_of(result.get("error"))
        if error_type in TRANSIENT_ERROR_TYPES and not final_only:
            return Requeue(custom_id, f"{where}: {error_type}: {message}"[:_MESSAGE_CHARS])
        return _final(custom_id, "errored", context, error_type, message, body)
    if kind == "expired":
        if final_only:
            return _final(custom_id, "expired", context)
        return Requeue(custom_id, f"{where}: expired by the provider")
    if kind == "canceled":
        if context.canceling:
            return _final(custom_id, "canceled", context)
        return Requeue(custom_id, f"{where}: canceled at the auto lane's cut-off")
    return None


def _succeeded(custom_id: str, message: Any, context: ImportContext) -> ImportedResult:
    outcome = classify_response(200, {}, json.dumps(message).encode())
    if isinstance(outcome, Succeeded):
        return ImportedResult(
            custom_id,
            FinishedRequest(
                request_id=0,
                batch_id="",
                custom_id=custom_id,
                result_type="succeeded",
                attempts=0,
                completed_at=context.now,
                http_status=200,
                model=outcome.model,
                stop_reason=outcome.stop_reason,
                usage=outcome.usage,
                request_ref=_message_id(message),
                body=outcome.body,
                raw_body=outcome.raw_body,
                endpoint=context.endpoint,
                lane=Lane.BATCH,
                cost_factor=context.discount,
            ),
        )
    error = getattr(outcome, "error", None) or {}
    inner = error.get("error", {}) if isinstance(error, dict) else {}
    return _final(
        custom_id,
        "errored",
        context,
        str(inner.get("type", "api_error")),
        str(inner.get("message", "the provider's message could not be read")),
        json.dumps(error) if error else None,
    )


def _final(
    custom_id: str,
    result_type: str,
    context: ImportContext,
    error_type: str | None = None,
    message: str | None = None,
    body: str | None = None,
) -> ImportedResult:
    return ImportedResult(
        custom_id,
        FinishedRequest(
            request_id=0,
            batch_id="",
            custom_id=custom_id,
            result_type=result_type,
            attempts=0,
            completed_at=context.now,
            error_type=error_type,
            error_message=message,
            body=body,
            endpoint=context.endpoint,
            lane=Lane.BATCH,
            cost_factor=context.discount,
        ),
    )


def _error_of(error: Any) -> tuple[str, str, str]:
    """The error type, message and the error response to store, from a result's ``error``
    (Anthropic nests it: ``{"type": "error", "error": {"type", "message"}}``)."""
    inner = error.get("error") if isinstance(error, dict) else None
    if not isinstance(inner, dict):
        inner = error if isinstance(error, dict) else {}
    error_type = str(inner.get("type") or "api_error")[:64]
    message = str(inner.get("message") or "")[:_MESSAGE_CHARS]
    stored_type = error_type if error_type in KNOWN_ERROR_TYPES else "api_error"
    body: dict[str, Any] = {"type": "error", "error": {"type": stored_type, "message": message}}
    if stored_type != error_type:
        body["error"]["original_type"] = error_type
    if isinstance(error, dict) and isinstance(error.get("request_id"), str):
        body["request_id"] = error["request_id"][:200]
    return stored_type, message, json.dumps(body)


def _message_id(message: Any) -> str | None:
    if isinstance(message, dict) and isinstance(message.get("id"), str):
        return str(message["id"])[:200]
    return None
