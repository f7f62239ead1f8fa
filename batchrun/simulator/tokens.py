"""The simulator's "true" tokenizer.

It deliberately differs from the common client-side estimate of 3.5 characters per token, so
a client's estimator has something real to calibrate against::

    input_tokens = ceil(C / 4) + 4 * number_of_messages + sum(image tokens)

where ``C`` counts the characters (code points) of:

- ``system`` (a string, or the ``text`` of its blocks);
- each message's string content or ``text`` blocks; a ``tool_use`` block's name and its
  ``input`` as compact JSON; a ``tool_result`` block's content, recursively; any other
  block as compact JSON;
- ``tools`` as compact JSON with sorted keys.

Images cost what :mod:`batchrun.input.images` says. ``/v1/messages`` and
``/v1/messages/count_tokens`` use the same count, and it is never below 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchrun.input.images import UNREADABLE_IMAGE_TOKENS, base64_image_tokens

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4


def compact_json(value: object) -> str:
    """``value`` as JSON without spaces, keys sorted: the form counted for tools."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def count_input_tokens(params: Mapping[str, Any]) -> int:
    """Input tokens of a Messages request body (already checked to be an object)."""
    chars, image_tokens = _content_cost(params.get("system"))
    messages = params.get("messages")
    message_count = 0
    if isinstance(messages, list):
        message_count = len(messages)
        for message in messages:
            if isinstance(message, Mapping):
                more_chars, more_images = _content_cost(message.get("content"))
                chars += more_chars
                image_tokens += more_images
    tools = params.get("tools")
    if tools:
        chars += len(compact_json(tools))
    text_tokens = -(-chars // CHARS_PER_TOKEN)
    return max(1, text_tokens + MESSAGE_OVERHEAD_TOKENS * message_count + image_tokens)


def _content_cost(content: object) -> tuple[int, int]:
    """(characters, image tokens) of a ``content`` value: a string or a list of blocks."""
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return len(content), 0
    if not isinstance(content, list):
        return len(compact_json(content)), 0
    chars = image_tokens = 0
    for block in content:
        more_chars, more_images = _block_cost(block)
        chars += more_chars
        image_tokens += more_images
    return chars, image_tokens


def _block_cost(block: object) -> tuple[int, int]:
    if not isinstance(block, Mapping):
        return len(compact_json(block)), 0
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return (len(text) if isinstance(text, str) else 0), 0
    if kind == "image":
        return 0, _image_block_tokens(block)
    if kind == "tool_result":
        return _content_cost(block.get("content"))
    if kind == "tool_use":
        name = block.get("name")
        name_chars = len(name) if isinstance(name, str) else 0
        return name_chars + len(compact_json(block.get("input", {}))), 0
    return len(compact_json(block)), 0


def _image_block_tokens(block: Mapping[str, Any]) -> int:
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "base64":
        data = source.get("data")
        if isinstance(data, str):
            return base64_image_tokens(data)
    return UNREADABLE_IMAGE_TOKENS


def plain_text(content: object) -> str:
    """The text of a ``content`` value: the string itself, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = [
        block["text"]
        for block in content
        if isinstance(block, Mapping)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    ]
    return "".join(parts)
