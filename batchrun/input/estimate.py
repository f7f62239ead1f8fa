"""Input and output token estimates without the network, and how they learn.

The raw input estimate counts about 3.5 characters per token (Anthropic's figure for English
text) over the system prompt, the text of every message, tool definitions and tool calls, a
structured answer's format (``output_config.format``: its JSON Schema), plus
a few tokens of framing per message, plus images by Anthropic's patch formula from the pixel
size in the image header. It is computed once, when a request is submitted, and stored.

During a run the limiter calibrates it per endpoint × model
(:class:`batchrun.limits.learning.InputCalibration`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from batchrun.input.images import UNREADABLE_IMAGE_TOKENS, base64_image_tokens, is_high_res_model

CHARS_PER_TOKEN = 3.5
# Role markers and turn separators around each message.
MESSAGE_FRAMING_TOKENS = 3
# Documents (PDFs) cost what their pages' text and images cost; without rendering them, a
# base64 byte is a rough stand-in.
DOCUMENT_BASE64_CHARS_PER_TOKEN = 6.0


def estimate_input_tokens(params: Mapping[str, Any]) -> int:
    """The raw (uncalibrated) input-token estimate of a Messages request body."""
    counter = _Counter(params.get("model"))
    system = params.get("system")
    if isinstance(system, str):
        counter.chars += len(system)
    elif system is not None:
        counter.content(system)
    tools = params.get("tools")
    if tools:
        counter.chars += len(json.dumps(tools, separators=(",", ":")))
    config = params.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        # A structured answer's schema travels with the request and is read as input, as
        # a tool's input_schema is (the forced-tool form is counted with the tools above).
        counter.chars += len(json.dumps(config["format"], separators=(",", ":")))
    messages = params.get("messages")
    if isinstance(messages, list):
        counter.tokens += MESSAGE_FRAMING_TOKENS * len(messages)
        for message in messages:
            if isinstance(message, dict):
                # A string content counted here: most lines have only those, and every
                # line of a submit is estimated.
                content = message.get("content")
                if isinstance(content, str):
                    counter.chars += len(content)
                else:
                    counter.content(content)
    return max(1, math.ceil(counter.chars / CHARS_PER_TOKEN) + counter.tokens)


def estimate_prefix_tokens(params: Mapping[str, Any]) -> int:
    """The raw estimate of a request's cached prefix: tools, then system, then messages, up
    to and including its last ``cache_control`` block; 0 without one."""
    tools, system, messages = params.get("tools"), params.get("system"), params.get("messages")
    head: dict[str, Any] = {"model": params.get("model")}
    if isinstance(tools, list):
        head["tools"] = tools
    if system is not None:
        head["system"] = system
    if isinstance(messages, list):
        for number in range(len(messages) - 1, -1, -1):
            message = messages[number]
            content = message.get("content") if isinstance(message, dict) else None
            last = _last_marked(content)
            if last is not None and isinstance(content, list):
                partial = {**message, "content": content[: last + 1]}
                return estimate_input_tokens({**head, "messages": [*messages[:number], partial]})
    if isinstance(system, list) and (last := _last_marked(system)) is not None:
        return estimate_input_tokens({**head, "system": system[: last + 1]})
    if isinstance(tools, list) and (last := _last_marked(tools)) is not None:
        return estimate_input_tokens({"model": head["model"], "tools": tools[: last + 1]})
    return 0


def _last_marked(blocks: Any) -> int | None:
    """The index of the last block of ``blocks`` with ``cache_control``, if any."""
    if not isinstance(blocks, list):
        return None
    for index in range(len(blocks) - 1, -1, -1):
        if isinstance(blocks[index], dict) and "cache_control" in blocks[index]:
            return index
    return None


class _Counter:
    __slots__ = ("chars", "model", "tokens")

    def __init__(self, model: Any) -> None:
        self.model = model
        self.chars = 0
        self.tokens = 0

    def content(self, content: Any) -> None:
        if isinstance(content, str):
            self.chars += len(content)
        elif isinstance(content, list):
            for block in content:
                self.block(block)

    def block(self, block: Any) -> None:
        if not isinstance(block, dict):
            return
        kind = block.get("type")
        if kind == "text":
            self.chars += len(block.get("text") or "")
        elif kind == "image":
            self.tokens += self._image(block.get("source"))
        elif kind == "document":
            source = block.get("source")
            source = source if isinstance(source, dict) else {}
            data = source.get("data")
            if isinstance(data, str) and source.get("type") == "base64":
                self.tokens += math.ceil(len(data) / DOCUMENT_BASE64_CHARS_PER_TOKEN)
            elif isinstance(data, str):
                self.chars += len(data)
            else:
                self.tokens += UNREADABLE_IMAGE_TOKENS
        elif kind == "tool_result":
            self.content(block.get("content"))
        elif kind in ("thinking", "redacted_thinking"):
            self.chars += len(block.get("thinking") or block.get("data") or "")
        else:
            self.chars += len(json.dumps(block, separators=(",", ":")))

    def _image(self, source: Any) -> int:
        if isinstance(source, dict) and source.get("type") == "base64":
            data = source.get("data")
            if isinstance(data, str):
                high_res = isinstance(self.model, str) and is_high_res_model(self.model)
                return base64_image_tokens(data, high_res=high_res)
        return UNREADABLE_IMAGE_TOKENS
