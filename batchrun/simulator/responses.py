"""Bodies and headers of the simulator's answers: Messages, errors, ids.

Everything here is pure: it turns values into the exact bytes the Anthropic API would send.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Mapping
from typing import Any

from batchrun.simulator.directives import strip_directives
from batchrun.simulator.stats import request_fingerprint
from batchrun.simulator.structured import (
    Asked,
    CutJson,
    answer_value,
    asked_schema,
    draws_invalid,
    spoiled,
)
from batchrun.simulator.tokens import CHARS_PER_TOKEN, plain_text

_BASE62 = string.digits + string.ascii_letters
ID_CHARS = 24

# Error types by HTTP status (Anthropic's errors page). 408 is not documented; the SDK
# only retries it, so it gets the generic ``api_error``.
ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "api_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_DEFAULT_MESSAGES: Mapping[int, str] = {
    400: "Invalid request (simulated).",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API (simulated).",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found",
    408: "Request timed out",
    409: "Conflict (simulated).",
    413: "Request exceeds the maximum allowed number of bytes.",
    422: "Unprocessable request (simulated).",
    429: "This request would exceed your rate limit (simulated). Please try again later.",
    500: "Internal server error",
    503: "Service unavailable",
    504: "Request timed out",
    529: "Overloaded",
}

SPEND_LIMIT_MESSAGE = (
    "This request would exceed your organization's spend limit (simulated). "
    "You will regain access at the start of the next billing period."
)
SPEND_LIMIT_ERROR_CODE = "enforced_spend_limit_reached"

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
MALFORMED_BODY = b'{"id":"msg_simulated","type":"message","content":[{"type":"text","text":"trun'
# The event a malformed stream sends: its data is cut short.
MALFORMED_EVENT = b'event: content_block_start\ndata: {"type":"content_block_start","ind\n\n'
NOT_MESSAGE_BODY = b'{"ok":true}'

_FILLER_WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud "
)
_SNIPPET_CHARS = 40


class IdMaker:
    """Anthropic-style ids (``msg_``, ``req_``, ``toolu_`` + 24 base62 characters)."""

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self.reset()

    def reset(self) -> None:
        """Restart the stream of ids from the seed."""
        self._rng = random.Random(None if self._seed is None else f"ids:{self._seed}")

    def make(self, prefix: str) -> str:
        """A new id with ``prefix``."""
        return prefix + "_" + "".join(self._rng.choices(_BASE62, k=ID_CHARS))


def error_type_for(status: int) -> str:
    """Anthropic's ``error.type`` for an HTTP status."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "api_error" if status >= 500 else "invalid_request_error"


def default_error_message(status: int) -> str:
    """A realistic message for an error status."""
    return _DEFAULT_MESSAGES.get(status) or f"Simulated error {status}."


def error_body(
    status: int,
    message: str,
    request_id: str,
    *,
    details: Mapping[str, Any] | None = None,
) -> bytes:
    """``{"type": "error", "error": {...}, "request_id": ...}`` for ``status``."""
    error: dict[str, Any] = {"type": error_type_for(status), "message": message}
    if details is not None:
        error["details"] = dict(details)
    return json.dumps({"type": "error", "error": error, "request_id": request_id}).encode()


def message_body(
    *,
    message_id: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str,
    usage: Mapping[str, Any],
) -> bytes:
    """A complete non-streaming ``Message``."""
    return json.dumps(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": dict(usage),
        },
        ensure_ascii=False,
    ).encode()


def reply_tokens(max_tokens: int, directed: int | None, default: int) -> tuple[int, bool]:
    """The reply's output tokens: a directive's ``output_tokens`` (``directed``) or the
    configured length, capped by ``max_tokens``; and whether that cap cut it short."""
    asked = default if directed is None else directed
    return min(max_tokens, asked), asked > max_tokens


def build_message(
    params: Mapping[str, Any],
    *,
    ids: IdMaker,
    usage: Mapping[str, Any],
    capped: bool,
    invalid_output: float = 0.0,
) -> bytes:
    """The Message answering ``params``: a forced ``tool_use`` block, JSON text matching a
    requested ``output_config`` schema (`batchrun.simulator.structured`; for a share
    ``invalid_output`` of requests, JSON that does not), or reply text as long as
    ``usage["output_tokens"]``. Both the Messages route and batches answer with it.

    ``capped`` means ``max_tokens`` cut the reply short (``stop_reason: "max_tokens"``).
    """
    output_tokens: int = usage["output_tokens"]
    tool_name = forced_tool_name(params)
    asked = asked_schema(params, tool_name)
    content: list[dict[str, Any]]
    if asked is not None:
        content = _structured_content(params, asked, ids, invalid_output, capped)
        stop_reason = "tool_use" if tool_name is not None and asked[0] == "tool" else "end_turn"
    elif tool_name is not None:
        tool_use_id = ids.make("toolu")
        content = [{"type": "tool_use", "id": tool_use_id, "name": tool_name, "input": {}}]
        stop_reason = "tool_use"
    else:
        content = [{"type": "text", "text": reply_text(params["messages"], output_tokens)}]
        stop_reason = "end_turn"
    return message_body(
        message_id=ids.make("msg"),
        model=params["model"],
        content=content,
        stop_reason="max_tokens" if capped else stop_reason,
        usage=usage,
    )


def _structured_content(
    params: Mapping[str, Any],
    asked: Asked,
    ids: IdMaker,
    invalid_output: float,
    capped: bool,
) -> list[dict[str, Any]]:
    """The content of a structured answer: the JSON text (native) or the tool call."""
    mode, schema, tool_name = asked
    seed = request_fingerprint(params)
    value = answer_value(schema, seed)
    if draws_invalid(seed, invalid_output):
        value = spoiled(value, schema, seed, native=mode == "native")
    if mode == "tool":
        return [{"type": "tool_use", "id": ids.make("toolu"), "name": tool_name, "input": value}]
    text = value if isinstance(value, CutJson) else json.dumps(value, ensure_ascii=False)
    if capped:
        # max_tokens cut the answer: its JSON ends early, as the API's would.
        text = text[: max(1, len(text) // 2)]
    return [{"type": "text", "text": str(text)}]


def forced_tool_name(params: Mapping[str, Any]) -> str | None:
    """The tool the request forces (``tool_choice`` ``any`` or ``tool``), if any."""
    tools = params.get("tools")
    choice = params.get("tool_choice")
    if not tools or not isinstance(tools, list) or not isinstance(choice, Mapping):
        return None
    if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        name: str = choice["name"]
        return name
    if choice.get("type") == "any":
        for tool in tools:
            if isinstance(tool, Mapping) and isinstance(tool.get("name"), str):
                first: str = tool["name"]
                return first
    return None


def reply_text(messages: list[Any], output_tokens: int) -> str:
    """Deterministic reply text about ``CHARS_PER_TOKEN * output_tokens`` characters long.

    It quotes the start of the last user message; after an assistant prefill it continues
    the prefill instead (and, like the API, does not repeat it).
    """
    last = messages[-1] if messages else None
    if isinstance(last, Mapping) and last.get("role") == "assistant":
        prefill = _collapse(strip_directives(plain_text(last.get("content")))[-200:])
        head = f" (continuing '{prefill[-_SNIPPET_CHARS // 2 :]}')"
    else:
        head = f"Simulated reply to: {_collapse(_last_user_text(messages))[:_SNIPPET_CHARS]}"
    length = CHARS_PER_TOKEN * output_tokens
    missing = length - len(head)
    if missing <= 0:
        return head[:length]
    filler = " " + _FILLER_WORDS
    return (head + filler * (missing // len(filler) + 1))[:length]


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return strip_directives(plain_text(message.get("content"))[:1000])
    return ""


def _collapse(text: str) -> str:
    return " ".join(text[:400].split())
