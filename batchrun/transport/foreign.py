"""Answers in another API's shape, made into Anthropic Messages.

Some gateways answer their Anthropic-style endpoint with an OpenAI chat-completion body
(``choices[0].message.content``, ``finish_reason``, ``usage.prompt_tokens``): AIMLAPI
documents its ``/messages`` this way. Such an answer is a paid, complete reply, so it is
recorded as a success: :func:`message_from_openai` turns it into the Message the official
SDK's ``Message`` type parses, and the caller keeps the original body beside it.

Mapping:

- content: the text (a string, or the text parts of a list) as one text block; each
  ``tool_calls`` entry as a ``tool_use`` block (``arguments`` parsed from JSON, ``{}`` when
  they are not JSON);
- ``stop_reason`` from ``finish_reason``: stop → end_turn, length → max_tokens,
  tool_calls / function_call → tool_use, content_filter → refusal, anything else → null;
- usage: ``prompt_tokens`` minus cached tokens → input_tokens, cached
  (``prompt_tokens_details.cached_tokens``) → cache_read_input_tokens,
  ``completion_tokens`` → output_tokens.
"""

from __future__ import annotations

import json
from typing import Any

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_from_openai(body: Any) -> dict[str, Any] | None:
    """The Anthropic Message an OpenAI chat-completion body stands for, or None when the body
    is not one."""
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    usage = body.get("usage")
    if not isinstance(choices, list) or not choices or not isinstance(usage, dict):
        return None
    choice = choices[0]
    reply = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(reply, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    cached = cached if cached is not None and 0 <= cached <= prompt else 0
    content = _text_blocks(reply.get("content")) + _tool_blocks(reply.get("tool_calls"))
    model = body.get("model")
    return {
        "id": str(body.get("id") or "msg_openai_shaped"),
        "type": "message",
        "role": "assistant",
        "model": model if isinstance(model, str) else "",
        "content": content,
        "stop_reason": _STOP_REASONS.get(str(choice.get("finish_reason"))),
        "stop_sequence": None,
        "usage": {
            "input_tokens": prompt - cached,
            "output_tokens": completion,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
        },
    }


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        parts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "output_text")
        ]
        return [{"type": "text", "text": "".join(parts)}] if parts else []
    return []


def _tool_blocks(calls: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for index, call in enumerate(calls if isinstance(calls, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError, RecursionError):
            arguments = {}
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or f"toolu_openai_{index}"),
                "name": str(function.get("name") or ""),
                "input": arguments if isinstance(arguments, dict) else {"value": arguments},
            }
        )
    return blocks
