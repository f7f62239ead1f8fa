"""Checks of what a request's messages and system prompt hold: content blocks and images.

Called by `batchrun.input.validation` for each message and for ``system``; each check appends its
problems (what is wrong and how to fix it) to a list, without the ``file:line: `` prefix.

Decisions:

- Content block types are the current API's, beta ones included (`CONTENT_BLOCK_TYPES`); an
  unknown type is rejected, as the API would. Only the top level of each block is checked;
  nested content (tool results, documents) is left to the API.
- A base64 image is decoded once to prove it is valid base64 (the decoded bytes are dropped at
  once); its size is checked against the API's per-image limit first, so a huge image is not
  decoded at all. When the decoded bytes are plainly another supported format than
  ``media_type`` says, that is reported too, since the API rejects the mismatch.
"""

from __future__ import annotations

import base64
import binascii
import difflib
from typing import Any

from batchrun.input.wording import MAX_PROBLEMS_PER_LINE, MIB, json_type, mib_text, show, show_json

# The direct API's limit for one base64 image (10 MB of base64 text).
MAX_IMAGE_BASE64_BYTES = 10 * MIB

# Message content block types the Messages API accepts in a request (anthropic SDK 0.x/2.x
# `ContentBlockParam`, plus the beta `BetaContentBlockParam` types, which gateways and
# `anthropic-beta` headers enable).
CONTENT_BLOCK_TYPES: frozenset[str] = frozenset(
    {
        # Generally available.
        "text",
        "image",
        "document",
        "search_result",
        "thinking",
        "redacted_thinking",
        "tool_use",
        "tool_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
        # Beta.
        "advisor_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "mcp_tool_listing",
        "compaction",
        "tool_addition",
        "tool_removal",
        "fallback",
    }
)
IMAGE_MEDIA_TYPES: tuple[str, ...] = ("image/jpeg", "image/png", "image/gif", "image/webp")
IMAGE_SOURCE_TYPES: tuple[str, ...] = ("base64", "url", "file")
MESSAGE_ROLES: tuple[str, ...] = ("user", "assistant")


def check_message(message: Any, path: str, problems: list[str]) -> None:
    """Check one entry of ``messages`` (at ``path``): its role, then its content blocks."""
    if not isinstance(message, dict):
        problems.append(
            f'{path} must be an object with "role" and "content", not {json_type(message)}'
        )
        return
    roles = '"user" or "assistant"'
    if "role" not in message:
        problems.append(f"{path}.role is missing; use {roles}")
    elif message["role"] not in MESSAGE_ROLES:
        role = message["role"]
        hint = " (put a system prompt in params.system)" if role == "system" else ""
        problems.append(f"{path}.role {show_json(role)} is not allowed; use {roles}{hint}")

    if "content" not in message:
        problems.append(f"{path}.content is missing; add a string or a list of content blocks")
        return
    content = message["content"]
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        problems.append(
            f"{path}.content must be a string or a list of content blocks, not {json_type(content)}"
        )
        return
    if not content:
        problems.append(
            f"{path}.content is an empty list; add at least one content block or use a string"
        )
        return
    for index, block in enumerate(content):
        _check_block(block, f"{path}.content[{index}]", problems)
        if len(problems) > MAX_PROBLEMS_PER_LINE:
            return


def _check_block(block: Any, path: str, problems: list[str]) -> None:
    if not isinstance(block, dict):
        problems.append(
            f'{path} must be a content block object with a "type", not {json_type(block)}'
        )
        return
    if "type" not in block:
        problems.append(f'{path}.type is missing; set it to a content block type such as "text"')
        return
    block_type = block["type"]
    if not isinstance(block_type, str) or block_type not in CONTENT_BLOCK_TYPES:
        close = (
            difflib.get_close_matches(block_type, sorted(CONTENT_BLOCK_TYPES), n=1)
            if isinstance(block_type, str)
            else []
        )
        hint = f"did you mean {close[0]!r}?" if close else "use e.g. text, image or document"
        problems.append(
            f"{path}.type {show_json(block_type)} is not a Messages API content block type; {hint}"
        )
        return
    if block_type == "text":
        _check_text_field(block, path, problems)
    elif block_type == "image":
        _check_image(block, path, problems)


def _check_text_field(block: dict[str, Any], path: str, problems: list[str]) -> None:
    if "text" not in block:
        problems.append(f'{path}.text is missing; a text block needs "text": "..."')
    elif not isinstance(block["text"], str):
        problems.append(f"{path}.text must be a string, not {json_type(block['text'])}")


def check_system(system: Any, path: str, problems: list[str]) -> None:
    """Check ``system``: a string, or a list of text blocks."""
    if isinstance(system, str):
        return
    if not isinstance(system, list):
        problems.append(
            f"{path} must be a string or a list of text blocks, not {json_type(system)}"
        )
        return
    for index, block in enumerate(system):
        block_path = f"{path}[{index}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            problems.append(f'{block_path} must be a text block {{"type": "text", "text": "..."}}')
        else:
            _check_text_field(block, block_path, problems)
        if len(problems) > MAX_PROBLEMS_PER_LINE:
            return


# --- images ----------------------------------------------------------------------------------

# Leading bytes that identify each supported image format.
_IMAGE_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("image/jpeg", b"\xff\xd8\xff", 0),
    ("image/png", b"\x89PNG\r\n\x1a\n", 0),
    ("image/gif", b"GIF8", 0),
    ("image/webp", b"WEBP", 8),  # after "RIFF" and a 4-byte length
)


def _check_image(block: dict[str, Any], path: str, problems: list[str]) -> None:
    source = block.get("source")
    types = ", ".join(f'"{name}"' for name in IMAGE_SOURCE_TYPES)
    if not isinstance(source, dict):
        what = "is missing" if source is None else f"must be an object, not {json_type(source)}"
        problems.append(
            f'{path}.source {what}; give {{"type": "base64", "media_type": ..., "data": ...}} '
            'or {"type": "url", "url": ...}'
        )
        return
    source_type = source.get("type")
    if source_type == "base64":
        _check_base64_image(source, f"{path}.source", problems)
    elif source_type == "url":
        if not isinstance(source.get("url"), str):
            problems.append(f'{path}.source.url must be a string; give "url": "https://..."')
    elif source_type == "file":
        if not isinstance(source.get("file_id"), str):
            problems.append(f'{path}.source.file_id must be a string; give "file_id": "file_..."')
    else:
        problems.append(
            f"{path}.source.type {show_json(source_type)} is not an image source type; use {types}"
        )


def _check_base64_image(source: dict[str, Any], path: str, problems: list[str]) -> None:
    supported = ", ".join(IMAGE_MEDIA_TYPES)
    media_type = source.get("media_type")
    if "media_type" not in source:
        problems.append(f"{path}.media_type is missing; use one of {supported}")
        media_type = None
    elif media_type not in IMAGE_MEDIA_TYPES:
        problems.append(
            f"{path}.media_type {show_json(media_type)} is not supported; "
            f"use one of {supported} (convert the image if needed)"
        )
        media_type = None

    data = source.get("data")
    if not isinstance(data, str):
        what = "is missing" if "data" not in source else f"must be a string, not {json_type(data)}"
        problems.append(f"{path}.data {what}; give the image file's bytes as base64")
        return
    if not data:
        problems.append(f"{path}.data is empty; give the image file's bytes as base64")
        return
    if data.startswith("data:"):
        prefix = data[: data.find(",") + 1] if "," in data[:100] else "data:...,"
        problems.append(
            f"{path}.data is a data URL; remove the {show(prefix)} prefix and keep only the "
            "base64 text"
        )
        return
    if len(data) > MAX_IMAGE_BASE64_BYTES:
        problems.append(
            f"{path}.data is {len(data):,} bytes of base64, over the API's "
            f"{mib_text(MAX_IMAGE_BASE64_BYTES)} per-image limit; downscale or recompress the image"
        )
        return
    try:
        head = base64.b64decode(data, validate=True)[:12]
    except (binascii.Error, ValueError) as exc:
        problems.append(
            f"{path}.data is not valid base64 ({exc}); encode the file with standard base64 "
            "(A-Z, a-z, 0-9, '+', '/', '=' padding, no line breaks)"
        )
        return
    actual = sniff_image_type(head)
    if media_type is not None and actual is not None and actual != media_type:
        problems.append(
            f"{path}.media_type is {media_type} but the data is {actual}; "
            f'set "media_type": "{actual}"'
        )


def sniff_image_type(head: bytes) -> str | None:
    """The media type of an image from its first 12 bytes (JPEG, PNG, GIF, WebP), or None."""
    for media_type, signature, offset in _IMAGE_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return media_type
    return None
