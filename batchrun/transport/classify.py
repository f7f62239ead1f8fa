"""What an HTTP answer means: a status, headers and a body in, an :data:`Outcome` value out.

``classify_response`` is pure; the Messages sender (``transport.messages``) produces the
transport-failure outcomes itself. The rules follow the Anthropic API's documented errors and
its official SDK's retry rules:

- an ``x-should-retry`` header decides when present;
- 408, 409, 429, 5xx and 529 are transient; other 4xx are final;
- 401, 402, 403 and a 429 that reports a spend limit would fail every request of the batch
  the same way, so they halt the batch instead of producing one errored result each;
- an ``error`` event in a stream counts as the status of its type (``status_for_error_type``);
- a 200 is a success when its body is a Message, or an OpenAI-shaped chat completion (made
  into a Message, the original kept: ``transport.foreign``); a 200 whose body is not JSON
  (cut short) is worth one more try; well-formed JSON that is no Message is final, kept;
  both are ``unreadable``: a failure of the endpoint too (a pool's breaker counts them, and
  another member is asked once: ``dispatch.routing``);
- nothing a server sends may end more than its one request: numbers out of range, nesting
  too deep, absurd waits and over-long strings are refused or clamped here, so the store
  never sees them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from batchrun.records import (
    ErrorBody,
    Fatal,
    Halt,
    HaltKind,
    Outcome,
    Retryable,
    ServerLimits,
    Succeeded,
    Usage,
    error_body,
)
from batchrun.store.textsafe import safe_text
from batchrun.transport.foreign import message_from_openai
from batchrun.transport.ratelimit_headers import dimensions_named, parse_server_limits

log = logging.getLogger(__name__)

# The error types the official SDK's ErrorResponse accepts. Exported results must parse with
# it, so an error of another type (the API's own request_too_large and conflict_error, or a
# gateway's invention) is recorded under the type its status implies, keeping the original
# in "original_type".
KNOWN_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "timeout_error",
        "api_error",
        "overloaded_error",
    }
)
_ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_TRANSIENT_STATUSES = frozenset({408, 409, 429})
_HALT_BY_STATUS: dict[int, HaltKind] = {401: "authentication", 402: "billing", 403: "permission"}
SPEND_LIMIT_ERROR_CODE = "enforced_spend_limit_reached"
# The most tokens one answer can report: the store keeps counts as 32-bit integers, and no
# real Message comes near. A larger count is a poisoned answer, refused.
MAX_TOKEN_COUNT = 2**31 - 1
# The longest wait a server can ask for (retry-after, a rate-limit reset): a batch's default
# life. Longer asks are shortened to this; the batch's expiry ends the rest.
MAX_WAIT_S = 24 * 3600.0
# What a result keeps of the fields it stores as strings.
MAX_MODEL_CHARS = 200
MAX_STOP_REASON_CHARS = 64
MAX_REQUEST_ID_CHARS = 200
MALFORMED = "malformed response"


# The HTTP status an error type stands for: an ``error`` event in a stream (sent after its
# 200) is judged as the unstreamed answer with that status would be. Types not listed (a
# gateway's own) count as a server error.
_STATUS_BY_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def status_for_error_type(error_type: str) -> int:
    """The HTTP status that goes with an Anthropic error type (500 for an unknown type)."""
    return _STATUS_BY_ERROR_TYPE.get(error_type, 500)


def error_type_for_status(status: int) -> str:
    """The Anthropic error type that goes with an HTTP status."""
    if status in _ERROR_TYPE_BY_STATUS:
        return _ERROR_TYPE_BY_STATUS[status]
    return (
        "api_error" if status >= 500 or status == 408 or status == 409 else "invalid_request_error"
    )


def classify_response(
    status: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None
) -> Outcome:
    """Decide what one HTTP answer from a Messages endpoint means."""
    request_id = _clip(
        headers.get("request-id") or headers.get("x-request-id"), MAX_REQUEST_ID_CHARS
    )
    server_limits = parse_server_limits(headers)
    if status == 200:
        return _classify_success(body, request_id, server_limits)
    error = _error_from_body(status, body, request_id)
    should_retry = headers.get("x-should-retry", "").strip().lower()
    retry_after_s = parse_retry_after_s(headers, now=now)
    if retry_after_s is None and status == 429 and server_limits is not None:
        reset_s = server_limits.wait_s(now or datetime.now(UTC))
        retry_after_s = None if reset_s is None else min(reset_s, MAX_WAIT_S)
    halt = _halt_kind(status, error)
    if halt is not None and should_retry != "true":
        # Said to people (the pause reason run prints) as well as stored: text that prints.
        return Halt(halt, status, safe_text(str(error["error"].get("message", ""))))
    if should_retry == "false":
        return Fatal(error, status)
    if should_retry == "true" or status in _TRANSIENT_STATUSES or status >= 500:
        reason = f"HTTP {status} {error['error'].get('type', '')}".strip()
        named = dimensions_named(str(error["error"].get("message", ""))) if status == 429 else None
        return Retryable(reason, error, status, retry_after_s, server_limits, named or frozenset())
    return Fatal(error, status)


def _classify_success(
    body: bytes, request_id: str | None, server_limits: ServerLimits | None
) -> Outcome:
    raw = body.decode(errors="replace")
    try:
        parsed = json.loads(body)
    except RecursionError:
        return _refused("its JSON is nested too deep to be a Message", raw, request_id)
    except ValueError:
        # Cut short on the way, most likely: worth one more try.
        return Retryable(
            reason=f"{MALFORMED}: the response body is not JSON",
            error=error_body(
                "api_error", "The endpoint answered 200 but the body is not JSON.", request_id
            ),
            http_status=200,
            at_most_once=True,
            raw_body=raw,
            unreadable=True,
        )
    message = parsed
    normalised = False
    if not _looks_like_message(parsed) and (converted := message_from_openai(parsed)):
        message, normalised = converted, True
    if not _looks_like_message(message):
        return _refused("the body is JSON, but not a Message", raw, request_id)
    usage, clamped = _usage_of(message["usage"])
    if usage is None:
        return _refused("its usage is not a set of token counts", raw, request_id)
    if (
        max(
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
        )
        > MAX_TOKEN_COUNT
    ):
        return _refused(f"its usage reports more than {MAX_TOKEN_COUNT:,} tokens", raw, request_id)
    if clamped:
        log.warning(
            "a 200 answer (request-id %s) reported negative usage; counted as 0", request_id
        )
        message = {**message, "usage": {**message["usage"], **_usage_json(usage)}}
    if normalised or clamped:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    else:
        text = raw
        if "\n" in text or "\r" in text or "\ufffd" in text:
            # Results are exported one per line; a pretty-printed body would break JSONL.
            text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    model = message.get("model")
    stop_reason = message.get("stop_reason")
    return Succeeded(
        body=text,
        model=_clip(model, MAX_MODEL_CHARS) if isinstance(model, str) else None,
        stop_reason=_clip(stop_reason, MAX_STOP_REASON_CHARS)
        if isinstance(stop_reason, str)
        else None,
        usage=usage,
        request_id=request_id,
        server_limits=server_limits,
        raw_body=raw if normalised or clamped else None,
    )


def _looks_like_message(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("type") == "message"
        and isinstance(value.get("content"), list)
        and isinstance(value.get("usage"), dict)
    )


_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def _usage_of(usage_json: Mapping[str, Any]) -> tuple[Usage | None, bool]:
    """The usage's token counts (negative ones counted as 0) with the 1-hour part of its
    cache write, and whether any count was negative; (None, False) when a count is not a
    whole number."""
    counts = [usage_json.get(key) or 0 for key in _USAGE_KEYS]
    if not all(isinstance(count, int) and not isinstance(count, bool) for count in counts):
        return None, False
    clamped = any(count < 0 for count in counts)
    usage = Usage(*(max(count, 0) for count in counts))
    return replace(
        usage, cache_creation_1h_input_tokens=one_hour_write_tokens(usage, usage_json)
    ), clamped


def one_hour_write_tokens(usage: Usage, usage_json: Mapping[str, Any]) -> int:
    """The 1-hour part of ``usage``'s cache write: the usage's
    ``cache_creation.ephemeral_1h_input_tokens``, at most the whole write; 0 when absent or
    not a whole number (the write is then priced at the 5-minute price)."""
    breakdown = usage_json.get("cache_creation")
    if not isinstance(breakdown, Mapping):
        return 0
    count = breakdown.get("ephemeral_1h_input_tokens")
    if not isinstance(count, int) or isinstance(count, bool):
        return 0
    return min(max(count, 0), usage.cache_creation_input_tokens)


def _usage_json(usage: Usage) -> dict[str, int]:
    return {key: getattr(usage, key) for key in _USAGE_KEYS}


def _refused(why: str, raw: str, request_id: str | None) -> Fatal:
    """A 200 that cannot be recorded as a Message: final, with what the server sent kept."""
    message = f"The endpoint answered 200 but {why}; the answer is kept as the raw body."
    return Fatal(error_body("api_error", message, request_id), 200, raw_body=raw, unreadable=True)


def _clip(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit]


def _error_from_body(status: int, body: bytes, request_id: str | None) -> ErrorBody:
    """The API's own error object when the body has one, else one made from the status."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if (
        isinstance(parsed, dict)
        and isinstance(parsed.get("error"), dict)
        and isinstance(parsed["error"].get("type"), str)
    ):
        error = dict(parsed["error"])
        if not isinstance(error.get("message"), str):
            error["message"] = str(error.get("message", ""))
        if error["type"] not in KNOWN_ERROR_TYPES:
            error["original_type"] = error["type"]
            error["type"] = error_type_for_status(status)
        return {"type": "error", "error": error, "request_id": parsed.get("request_id", request_id)}
    snippet = body[:200].decode(errors="replace").strip()
    message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    return error_body(error_type_for_status(status), message, request_id)


def _halt_kind(status: int, error: ErrorBody) -> HaltKind | None:
    if status in _HALT_BY_STATUS:
        return _HALT_BY_STATUS[status]
    details = error["error"].get("details")
    if (
        status == 429
        and isinstance(details, dict)
        and details.get("error_code") == SPEND_LIMIT_ERROR_CODE
    ):
        return "spend_limit"
    return None


def parse_retry_after_s(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, then ``retry-after`` (seconds
    or an HTTP date). Unlike the SDK, long values are honoured: a batch can afford to wait,
    and retrying earlier only fails again; beyond :data:`MAX_WAIT_S` they are shortened."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value_ms = float(raw_ms)
        except ValueError:
            value_ms = math.nan
        if math.isfinite(value_ms) and value_ms >= 0:
            return min(value_ms / 1000, MAX_WAIT_S)
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
        return min(max(seconds, 0.0), MAX_WAIT_S)
    return min(seconds, MAX_WAIT_S) if math.isfinite(seconds) and seconds >= 0 else None
