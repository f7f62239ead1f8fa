"""The minimal request checks the real API would fail with ``invalid_request_error``.

Each function returns the error message, or ``None`` when the body is acceptable. Messages
follow the API's ``field: problem`` style. Unknown fields are ignored, as the API does for
most of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchrun.simulator.caching import Breakpoint, read_breakpoints

_ROLES = ("user", "assistant")


def parse_object(body: bytes) -> dict[str, Any] | str:
    """The JSON object in ``body``, or an error message."""
    try:
        params = json.loads(body)
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        return "There was an error parsing the body of your request: it is not valid JSON."
    if not isinstance(params, dict):
        return "The request body must be a JSON object."
    return params


def message_params_error(params: Mapping[str, Any]) -> str | None:
    """What is wrong with a ``POST /v1/messages`` body, if anything."""
    error = _model_and_messages_error(params)
    if error is not None:
        return error
    if "max_tokens" not in params:
        return "max_tokens: Field required"
    max_tokens = params["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        return "max_tokens: Input should be a valid integer"
    if max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    if "stream" in params and not isinstance(params["stream"], bool):
        return "stream: Input should be a valid boolean"
    return None


def checked_breakpoints(params: Mapping[str, Any]) -> tuple[Breakpoint, ...] | str:
    """The prompt-cache breakpoints of a ``POST /v1/messages`` body, or what is wrong with
    the body (its ``cache_control`` markers included)."""
    problem = message_params_error(params)
    return problem if problem is not None else read_breakpoints(params)


def count_params_error(params: Mapping[str, Any]) -> str | None:
    """What is wrong with a ``POST /v1/messages/count_tokens`` body, if anything."""
    return _model_and_messages_error(params)


def _model_and_messages_error(params: Mapping[str, Any]) -> str | None:
    if "model" not in params:
        return "model: Field required"
    if not isinstance(params["model"], str) or not params["model"]:
        return "model: Input should be a non-empty string"
    if "messages" not in params:
        return "messages: Field required"
    messages = params["messages"]
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"messages.{index}: Input should be an object"
        if message.get("role") not in _ROLES:
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), str | list):
            return f"messages.{index}.content: Input should be a string or a list of blocks"
    return None
