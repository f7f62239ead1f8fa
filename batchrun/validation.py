"""Checks for one line of a request file: bytes in, a `ValidRequest` or an `InvalidLine` out.

A line is an Anthropic Message Batches request, ``{"custom_id": ..., "params": {...}}``, or the
OpenAI batch style ``{"custom_id": ..., "method": "POST", "url": "/v1/messages", "body": {...}}``
whose ``body`` is taken as the params. Everything here is pure: no I/O, no state between lines.
File-level rules (BOM, blank lines, duplicate custom_ids, caps) live in `batchrun.reader`.

Decisions:

- All problems of a line are collected, not only the first (capped at
  `MAX_PROBLEMS_PER_LINE` so a pathological line cannot produce millions). Each message says
  what is wrong and how to fix it; the caller prefixes ``file:line: ``.
- Unknown top-level keys are rejected (a typo such as ``param`` must not silently drop the
  params); unknown keys *inside* params pass through untouched, because gateways add their own.
- Only what the Messages API certainly rejects, or what batchrun cannot run, is checked:
  ``model``, ``max_tokens``, ``messages`` and the top level of each message's content blocks,
  ``system``, and ``stream`` (batchrun collects whole responses). Nested content (tool results,
  documents) is left to the API.
- Content block types are the current API's, beta ones included (`CONTENT_BLOCK_TYPES`); an
  unknown type is rejected, as the API would.
- A base64 image is decoded once to prove it is valid base64 (the decoded bytes are dropped at
  once); its size is checked against the API's per-image limit first, so a huge image is not
  decoded at all. When the decoded bytes are plainly another supported format than
  ``media_type`` says, that is reported too, since the API rejects the mismatch.
- Limits are read generously (MiB rather than MB) so batchrun never rejects what the API
  accepts.
- Lines are parsed with orjson, which is strict JSON (no NaN/Infinity) and reports a column.
  Integers beyond 64 bits become floats, as orjson reads them.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from dataclasses import dataclass
from typing import Any

import orjson

MIB = 1024 * 1024
# The Messages API request size limit (32 MB); one line is one request.
MAX_LINE_BYTES = 32 * MIB
# The direct API's limit for one base64 image (10 MB of base64 text).
MAX_IMAGE_BASE64_BYTES = 10 * MIB
# Beyond this a line's problems are summarised; a line rarely has more than a handful.
MAX_PROBLEMS_PER_LINE = 100

CUSTOM_ID_MAX_CHARS = 64
_CUSTOM_ID_CHARS = re.compile(r"[A-Za-z0-9_-]+")

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

ANTHROPIC_LINE_KEYS: frozenset[str] = frozenset({"custom_id", "params"})
OPENAI_LINE_KEYS: frozenset[str] = frozenset({"custom_id", "method", "url", "body"})
# OpenAI-style lines must target the Messages API, with or without a version prefix.
MESSAGES_URL_SUFFIX = "/messages"

_JSON_TYPE_NAMES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
_SHOWN_VALUE_CHARS = 40
_SHOWN_UNKNOWN_KEYS = 5


@dataclass(frozen=True, slots=True)
class ValidRequest:
    """A request line that passed every check.

    ``params_json`` is the compact JSON text of ``params`` (with the default model filled in
    when it was applied); the store saves it as-is and it is the body that gets sent.
    """

    custom_id: str
    params: dict[str, Any]
    params_json: str
    model: str
    max_tokens: int


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """A request line with at least one problem.

    ``custom_id`` is set only when the line's own custom_id is valid (and, from the reader,
    not a duplicate), so the caller can still record an errored result under it.
    """

    line_no: int
    custom_id: str | None
    problems: tuple[str, ...]


def validate_line(
    raw: bytes,
    line_no: int,
    *,
    default_model: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> ValidRequest | InvalidLine:
    """Check one request line (without its line terminator) and return what it holds.

    ``default_model`` fills in a missing ``params.model``. A line longer than
    ``max_line_bytes`` is rejected without being parsed.
    """
    if len(raw) > max_line_bytes:
        return oversized_line(line_no, len(raw), max_line_bytes=max_line_bytes)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return InvalidLine(line_no, None, (_parse_problem(raw, exc),))
    if not isinstance(obj, dict):
        return InvalidLine(
            line_no,
            None,
            (
                f"line must be a JSON object, not {_json_type(obj)}; write each request as "
                '{"custom_id": "...", "params": {...}}',
            ),
        )

    problems: list[str] = []
    openai_style = "body" in obj or ("params" not in obj and ("method" in obj or "url" in obj))
    params_key = "body" if openai_style else "params"
    _check_line_keys(obj, openai_style, problems)
    custom_id = _check_custom_id(obj, problems)
    if openai_style:
        _check_openai_envelope(obj, problems)

    checked = _check_params(obj, params_key, default_model, problems)
    if problems or checked is None:
        return InvalidLine(line_no, custom_id, _capped(problems))
    params, model, max_tokens = checked
    assert custom_id is not None  # no problems means the custom_id was valid
    return ValidRequest(
        custom_id=custom_id,
        params=params,
        params_json=orjson.dumps(params).decode(),
        model=model,
        max_tokens=max_tokens,
    )


def oversized_line(line_no: int, size_bytes: int, *, max_line_bytes: int) -> InvalidLine:
    """The problem for a line of ``size_bytes`` over ``max_line_bytes``, which is not parsed."""
    return InvalidLine(
        line_no,
        None,
        (
            f"line is {_bytes(size_bytes)}, over the limit of {_bytes(max_line_bytes)} "
            "for one request; "
            "make the request smaller (fewer or smaller images and documents)",
        ),
    )


# --- the line as a whole ---------------------------------------------------------------------


def _parse_problem(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"line is not valid UTF-8 at byte {bad.start + 1}; save the file as UTF-8"
    return (
        f"line is not valid JSON: {exc.msg} at column {exc.colno}; each request must be one "
        "complete JSON object on a single line"
    )


def _check_line_keys(obj: dict[str, Any], openai_style: bool, problems: list[str]) -> None:
    if "params" in obj and "body" in obj:
        problems.append('line has both "params" and "body"; keep only one of them')
    allowed = OPENAI_LINE_KEYS if openai_style else ANTHROPIC_LINE_KEYS
    unknown = [key for key in obj if key not in allowed and not (key == "params" and "body" in obj)]
    if not unknown:
        return
    if openai_style:
        expected = '"custom_id", "method", "url" and "body" (OpenAI style)'
    else:
        expected = '"custom_id" and "params"'
    if len(unknown) == 1:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(
            f"unknown key {_show(key)}{hint}; a request line has only {expected}; "
            "rename or remove it"
        )
        return
    shown = ", ".join(_show(key) for key in unknown[:_SHOWN_UNKNOWN_KEYS])
    more = len(unknown) - _SHOWN_UNKNOWN_KEYS
    if more > 0:
        shown += f" and {more} more"
    problems.append(
        f"unknown keys {shown}; a request line has only {expected}; rename or remove them"
    )


def _check_custom_id(obj: dict[str, Any], problems: list[str]) -> str | None:
    """Return the custom_id if it is valid; otherwise record why and return None."""
    rule = "letters, digits, '_' and '-' (1-64 chars)"
    if "custom_id" not in obj:
        problems.append(f'custom_id is missing; add "custom_id": "<unique id>" using {rule}')
        return None
    value = obj["custom_id"]
    if not isinstance(value, str):
        problems.append(
            f"custom_id must be a string, not {_json_type(value)} ({_show_json(value)}); "
            "put it in quotes"
        )
        return None
    if not value:
        problems.append(f"custom_id is empty; give each request a unique id of {rule}")
        return None
    valid = True
    if len(value) > CUSTOM_ID_MAX_CHARS:
        problems.append(
            f"custom_id {_show(value)} is {len(value):,} characters long; "
            f"use at most {CUSTOM_ID_MAX_CHARS}"
        )
        valid = False
    if _CUSTOM_ID_CHARS.fullmatch(value) is None:
        problems.append(f"custom_id {_show(value)} may only contain {rule}")
        valid = False
    return value if valid else None


def _check_openai_envelope(obj: dict[str, Any], problems: list[str]) -> None:
    if "method" not in obj:
        problems.append('method is missing; OpenAI-style lines need "method": "POST"')
    elif obj["method"] != "POST":
        problems.append(f'method {_show_json(obj["method"])} is not supported; use "POST"')
    if "url" not in obj:
        problems.append('url is missing; OpenAI-style lines need "url": "/v1/messages"')
    else:
        url = obj["url"]
        if not isinstance(url, str) or not url.endswith(MESSAGES_URL_SUFFIX):
            problems.append(
                f'url {_show_json(url)} is not the Messages API; use "/v1/messages" '
                "(batchrun sends Anthropic Messages requests)"
            )


# --- params ----------------------------------------------------------------------------------


def _check_params(
    obj: dict[str, Any], key: str, default_model: str | None, problems: list[str]
) -> tuple[dict[str, Any], str, int] | None:
    """Check the params object; return it (model filled in), its model and max_tokens."""
    if key not in obj:
        if key == "body":
            problems.append('body is missing; put the Messages API request under "body"')
        else:
            problems.append('params is missing; put the Messages API request under "params"')
        return None
    params = obj[key]
    if not isinstance(params, dict):
        problems.append(
            f"{key} must be an object holding the Messages API request, not {_json_type(params)}"
        )
        return None

    model = _check_model(params, key, default_model, problems)
    max_tokens = _check_max_tokens(params, key, problems)
    _check_messages(params, key, problems)
    if "system" in params:
        _check_system(params["system"], f"{key}.system", problems)
    if "stream" in params and params["stream"] is not False:
        problems.append(
            f"{key}.stream is {_show_json(params['stream'])}, which a batch does not allow; "
            'remove "stream" (batchrun collects whole responses)'
        )
    if model is None or max_tokens is None:
        return None
    if "model" not in params:
        params = {"model": model, **params}
    return params, model, max_tokens


def _check_model(
    params: dict[str, Any], key: str, default_model: str | None, problems: list[str]
) -> str | None:
    if "model" not in params:
        if default_model is not None:
            return default_model
        problems.append(
            f'{key}.model is missing; add "model": "<model id>" to the request '
            "or set a default model"
        )
        return None
    model = params["model"]
    if not isinstance(model, str) or not model.strip():
        problems.append(
            f"{key}.model must be a non-empty string naming the model, not {_show_json(model)}"
        )
        return None
    return model


def _check_max_tokens(params: dict[str, Any], key: str, problems: list[str]) -> int | None:
    if "max_tokens" not in params:
        problems.append(
            f'{key}.max_tokens is missing; add "max_tokens": <a positive integer>, e.g. 1024'
        )
        return None
    value = params["max_tokens"]
    # bool is an int subclass in Python, but `true` is not a token count.
    if isinstance(value, bool) or not isinstance(value, int):
        fix = ""
        if isinstance(value, float) and value.is_integer():
            fix = f"; write {int(value)}"
        elif isinstance(value, str) and value.strip().isdecimal():
            fix = f"; write {value.strip()} without quotes"
        problems.append(
            f"{key}.max_tokens must be an integer, not {_json_type(value)} "
            f"({_show_json(value)}){fix}"
        )
        return None
    if value < 1:
        problems.append(f"{key}.max_tokens is {value}; it must be at least 1")
        return None
    return value


def _check_messages(params: dict[str, Any], key: str, problems: list[str]) -> None:
    example = '{"role": "user", "content": "..."}'
    if "messages" not in params:
        problems.append(f'{key}.messages is missing; add "messages": [{example}]')
        return
    messages = params["messages"]
    if not isinstance(messages, list):
        problems.append(f"{key}.messages must be an array of messages, not {_json_type(messages)}")
        return
    if not messages:
        problems.append(f"{key}.messages is empty; add at least one message such as {example}")
        return
    for index, message in enumerate(messages):
        _check_message(message, f"{key}.messages[{index}]", problems)
        if len(problems) > MAX_PROBLEMS_PER_LINE:
            return


def _check_message(message: Any, path: str, problems: list[str]) -> None:
    if not isinstance(message, dict):
        problems.append(
            f'{path} must be an object with "role" and "content", not {_json_type(message)}'
        )
        return
    roles = '"user" or "assistant"'
    if "role" not in message:
        problems.append(f"{path}.role is missing; use {roles}")
    elif message["role"] not in MESSAGE_ROLES:
        role = message["role"]
        hint = " (put a system prompt in params.system)" if role == "system" else ""
        problems.append(f"{path}.role {_show_json(role)} is not allowed; use {roles}{hint}")

    if "content" not in message:
        problems.append(f"{path}.content is missing; add a string or a list of content blocks")
        return
    content = message["content"]
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        problems.append(
            f"{path}.content must be a string or a list of content blocks, "
            f"not {_json_type(content)}"
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
            f'{path} must be a content block object with a "type", not {_json_type(block)}'
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
            f"{path}.type {_show_json(block_type)} is not a Messages API content block type; {hint}"
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
        problems.append(f"{path}.text must be a string, not {_json_type(block['text'])}")


def _check_system(system: Any, path: str, problems: list[str]) -> None:
    if isinstance(system, str):
        return
    if not isinstance(system, list):
        problems.append(
            f"{path} must be a string or a list of text blocks, not {_json_type(system)}"
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
        what = "is missing" if source is None else f"must be an object, not {_json_type(source)}"
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
            f"{path}.source.type {_show_json(source_type)} is not an image source type; use {types}"
        )


def _check_base64_image(source: dict[str, Any], path: str, problems: list[str]) -> None:
    supported = ", ".join(IMAGE_MEDIA_TYPES)
    media_type = source.get("media_type")
    if "media_type" not in source:
        problems.append(f"{path}.media_type is missing; use one of {supported}")
        media_type = None
    elif media_type not in IMAGE_MEDIA_TYPES:
        problems.append(
            f"{path}.media_type {_show_json(media_type)} is not supported; "
            f"use one of {supported} (convert the image if needed)"
        )
        media_type = None

    data = source.get("data")
    if not isinstance(data, str):
        what = "is missing" if "data" not in source else f"must be a string, not {_json_type(data)}"
        problems.append(f"{path}.data {what}; give the image file's bytes as base64")
        return
    if not data:
        problems.append(f"{path}.data is empty; give the image file's bytes as base64")
        return
    if data.startswith("data:"):
        prefix = data[: data.find(",") + 1] if "," in data[:100] else "data:...,"
        problems.append(
            f"{path}.data is a data URL; remove the {_show(prefix)} prefix and keep only the "
            "base64 text"
        )
        return
    if len(data) > MAX_IMAGE_BASE64_BYTES:
        problems.append(
            f"{path}.data is {len(data):,} bytes of base64, over the API's "
            f"{_mib(MAX_IMAGE_BASE64_BYTES)} per-image limit; downscale or recompress the image"
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
    actual = _sniff_image(head)
    if media_type is not None and actual is not None and actual != media_type:
        problems.append(
            f"{path}.media_type is {media_type} but the data is {actual}; "
            f'set "media_type": "{actual}"'
        )


def _sniff_image(head: bytes) -> str | None:
    for media_type, signature, offset in _IMAGE_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return media_type
    return None


# --- message helpers -------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _show(text: str) -> str:
    """Quote a user's string for a message, shortened so one huge value cannot flood it."""
    if len(text) > _SHOWN_VALUE_CHARS:
        text = text[:_SHOWN_VALUE_CHARS] + "…"
    return repr(text)


def _show_json(value: Any) -> str:
    """Show a JSON value as the user wrote it (strings quoted), shortened."""
    if isinstance(value, str):
        return _show(value)
    if isinstance(value, dict | list):
        return "{...}" if isinstance(value, dict) else "[...]"
    return orjson.dumps(value).decode()


def _bytes(size_bytes: int) -> str:
    if size_bytes < MIB:
        return f"{size_bytes:,} bytes"
    return f"{size_bytes:,} bytes ({_mib(size_bytes)})"


def _mib(size_bytes: int) -> str:
    mib = size_bytes / MIB
    return f"{mib:.0f} MiB" if mib.is_integer() else f"{mib:.1f} MiB"


def _capped(problems: list[str]) -> tuple[str, ...]:
    # The checks stop early once the cap is passed, so the true count is unknown.
    if len(problems) <= MAX_PROBLEMS_PER_LINE:
        return tuple(problems)
    return (
        *problems[:MAX_PROBLEMS_PER_LINE],
        f"… more problems on this line; fix the first {MAX_PROBLEMS_PER_LINE} and check again",
    )
