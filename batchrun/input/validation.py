"""Checks for one line of a request file: bytes in, a `ValidRequest` or an `InvalidLine` out.

A line is an Anthropic Message Batches request, ``{"custom_id": ..., "params": {...}}``, or the
OpenAI batch style ``{"custom_id": ..., "method": "POST", "url": "/v1/messages", "body": {...}}``
whose ``body`` is taken as the params. Everything here is pure: no I/O, no state between lines.
This module checks the line's envelope and the params' required fields; what the messages and
the system prompt hold (content blocks, images) is checked in `batchrun.input.content`, and
problems are worded with `batchrun.input.wording`. File-level rules (BOM, blank lines,
duplicate custom_ids, caps) live in `batchrun.input.reader`.

Decisions:

- A line of the common shape (string or text-block content, nothing unusual) is accepted by a
  short check that words nothing; any other line, valid or not, gets every check
  (`check_parsed_line`), so each problem is worded in one place.
- All problems of a line are collected, not only the first (capped at
  `MAX_PROBLEMS_PER_LINE` so a pathological line cannot produce millions). Each message says
  what is wrong and how to fix it; the caller prefixes ``file:line: ``.
- Unknown top-level keys are rejected (a typo such as ``param`` must not silently drop the
  params); unknown keys *inside* params pass through untouched, because gateways add their own.
- Only what the Messages API certainly rejects, or what batchrun cannot run, is checked:
  ``model``, ``max_tokens``, ``messages`` and the top level of each message's content blocks,
  ``system``, and ``stream`` (batchrun collects whole responses).
- Limits are read generously (MiB rather than MB) so batchrun never rejects what the API
  accepts.
- Lines are parsed with orjson, which is strict JSON (no NaN/Infinity) and reports a column.
  Integers beyond 64 bits become floats, as orjson reads them.
- A line may nest objects and arrays at most `MAX_JSON_DEPTH` levels deep (the line itself is
  level 1, ``params`` level 2). Messages need about 8 (a tool result's content blocks), a
  tool's ``input_schema`` two per nested schema; deeper lines cannot be written by orjson
  (255) and would crash whatever walks them recursively, so they are refused here, naming
  the field.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from batchrun.input.content import (
    CONTENT_BLOCK_TYPES,
    IMAGE_MEDIA_TYPES,
    IMAGE_SOURCE_TYPES,
    MAX_IMAGE_BASE64_BYTES,
    MESSAGE_ROLES,
    check_message,
    check_system,
)
from batchrun.input.wording import (
    MAX_PROBLEMS_PER_LINE,
    MIB,
    capped,
    json_type,
    show,
    show_json,
    size_text,
)
from batchrun.limits.families import ALL_MODELS

__all__ = [
    "CONTENT_BLOCK_TYPES",
    "CUSTOM_ID_MAX_CHARS",
    "IMAGE_MEDIA_TYPES",
    "IMAGE_SOURCE_TYPES",
    "MAX_IMAGE_BASE64_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_LINE_BYTES",
    "MAX_PROBLEMS_PER_LINE",
    "MESSAGE_ROLES",
    "MIB",
    "InvalidLine",
    "ValidRequest",
    "check_parsed_line",
    "custom_id_fits",
    "deep_problem",
    "nested_too_deep",
    "oversized_line",
    "validate_line",
]

# The Messages API request size limit (32 MB); one line is one request.
MAX_LINE_BYTES = 32 * MIB
# Levels of objects and arrays one request line may nest (the line is level 1, params 2):
# generous for any Messages request (tool schemas, tool results), far below orjson's limit
# of 255 for writing and Python's recursion limit.
MAX_JSON_DEPTH = 128

CUSTOM_ID_MAX_CHARS = 64
# The largest max_tokens and the longest model id stored (the job table's columns). No model
# comes near either; a larger value is a mistake to point out, not a request to send.
MAX_TOKENS = 2**31 - 1
MAX_MODEL_CHARS = 200
_CUSTOM_ID_CHARS = re.compile(r"[A-Za-z0-9_-]+")

ANTHROPIC_LINE_KEYS: frozenset[str] = frozenset({"custom_id", "params"})
OPENAI_LINE_KEYS: frozenset[str] = frozenset({"custom_id", "method", "url", "body"})
# OpenAI-style lines must target the Messages API, with or without a version prefix.
MESSAGES_URL_SUFFIX = "/messages"

_SHOWN_UNKNOWN_KEYS = 5
_SHOWN_PLACE_CHARS = 80
# The tokens a scan for the place of too deep a nesting needs: strings whole, brackets, ":".
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:]')


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
        if exc.msg.startswith("depth limit exceeded"):
            # orjson reads at most 1024 levels; the place is found by a scan of the tokens.
            place, found_id = _deep_place(raw)
            custom_id = _check_custom_id({"custom_id": found_id}, [])
            return InvalidLine(line_no, custom_id, (deep_problem(place),))
        return InvalidLine(line_no, None, (_parse_problem(raw, exc),))
    # Only a line with more openers than the limit can be too deep: most skip the walk.
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH:
        deep_place = nested_too_deep(obj)
        if deep_place is not None:
            line_id = _check_custom_id(obj, []) if isinstance(obj, dict) else None
            return InvalidLine(line_no, line_id, (deep_problem(deep_place),))
    common = _common_request(obj)
    if common is not None:
        return common
    return check_parsed_line(obj, line_no, default_model=default_model)


def check_parsed_line(
    obj: Any, line_no: int, *, default_model: str | None = None
) -> ValidRequest | InvalidLine:
    """Every check of a parsed line (``obj``, not nested too deep), each problem worded: what
    :func:`validate_line` does for any line that is not of the common shape."""
    if not isinstance(obj, dict):
        return InvalidLine(
            line_no,
            None,
            (
                f"line must be a JSON object, not {json_type(obj)}; write each request as "
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
        return InvalidLine(line_no, custom_id, capped(problems))
    params, model, max_tokens = checked
    assert custom_id is not None  # no problems means the custom_id was valid
    return ValidRequest(
        custom_id=custom_id,
        params=params,
        params_json=orjson.dumps(params).decode(),
        model=model,
        max_tokens=max_tokens,
    )


def _common_request(obj: Any) -> ValidRequest | None:
    """The `ValidRequest` of a line of the common shape, checked without building any message:
    ``{"custom_id": ..., "params": {...}}`` whose custom_id fits, with a model, a max_tokens in
    range, messages of role user or assistant whose content is a string or text blocks, a
    system prompt (if any) of the same kinds, and no ``stream`` but false. None for any other
    line, valid or not: :func:`check_parsed_line` decides it, so every problem is worded there
    and only there. Every line submitted pays for the checks, and the full ones build a path
    text and call a function per field and per message."""
    if type(obj) is not dict or len(obj) != 2:
        return None
    custom_id = obj.get("custom_id")
    params = obj.get("params")
    if type(custom_id) is not str or type(params) is not dict or not custom_id_fits(custom_id):
        return None
    model = params.get("model")
    max_tokens = params.get("max_tokens")
    messages = params.get("messages")
    if (
        type(model) is not str
        or len(model) > MAX_MODEL_CHARS
        or not model.strip()
        or model == ALL_MODELS
        or type(max_tokens) is not int
        or not 1 <= max_tokens <= MAX_TOKENS
        or type(messages) is not list
        or not messages
    ):
        return None
    for message in messages:
        if (
            type(message) is not dict
            or message.get("role") not in MESSAGE_ROLES
            or not _plain_content(message.get("content"))
        ):
            return None
    if "system" in params and not _plain_content(params["system"]):
        return None
    if "stream" in params and params["stream"] is not False:
        return None
    return ValidRequest(
        custom_id=custom_id,
        params=params,
        params_json=orjson.dumps(params).decode(),
        model=model,
        max_tokens=max_tokens,
    )


def _plain_content(content: Any) -> bool:
    """Whether ``content`` is a string or a non-empty list of text blocks with string text:
    content the full checks (`batchrun.input.content`) accept as it is."""
    if type(content) is str:
        return True
    if type(content) is not list or not content:
        return False
    for block in content:
        if type(block) is not dict or block.get("type") != "text":
            return False
        if type(block.get("text")) is not str:
            return False
    return True


def oversized_line(line_no: int, size_bytes: int, *, max_line_bytes: int) -> InvalidLine:
    """The problem for a line of ``size_bytes`` over ``max_line_bytes``, which is not parsed."""
    return InvalidLine(
        line_no,
        None,
        (
            f"line is {size_text(size_bytes)}, over the limit of {size_text(max_line_bytes)} "
            "for one request; "
            "make the request smaller (fewer or smaller images and documents)",
        ),
    )


def nested_too_deep(value: object, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Where ``value`` (level 1) nests objects and arrays more than ``max_depth`` levels deep:
    the keys of its first two levels (``.params.metadata``; ``""`` for ``value`` itself, and
    the path stops at the first array); None when it does not. Walks without recursion, so
    any depth is safe."""
    # (container, its level, the keys on the way, whether more keys are added).
    stack: list[tuple[object, int, str, bool]] = [(value, 1, "", True)]
    while stack:
        container, depth, place, open_place = stack.pop()
        if depth > max_depth:
            return place
        if isinstance(container, dict):
            for key, child in container.items():
                if isinstance(child, dict | list):
                    more = open_place and place.count(".") < 2
                    stack.append((child, depth + 1, place + f".{key}" if more else place, more))
        elif isinstance(container, list):
            stack.extend((child, depth + 1, place, False) for child in container)
    return None


def deep_problem(place: str) -> str:
    """The problem of a line (or the field ``place`` of it) nested past MAX_JSON_DEPTH."""
    where = place.removeprefix(".") or "line"
    if len(where) > _SHOWN_PLACE_CHARS:
        where = where[:_SHOWN_PLACE_CHARS] + "…"
    return (
        f"{where} nests objects and arrays deeper than {MAX_JSON_DEPTH} levels, the most a "
        "request line may have (no Messages API request needs that many); flatten it"
    )


def _deep_place(raw: bytes) -> tuple[str, object]:
    """The first two keys on the way into a line too deep for orjson to read (as
    :func:`nested_too_deep` says them) and the line's custom_id (None if not met on the way).
    Read as tokens (strings whole, brackets, ``:``), stopping past the limit."""
    keys: list[str] = []
    kinds: list[bytes] = []
    custom_id: object = None
    depth = 0
    last: bytes = b""
    key: bytes | None = None
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token in (b"{", b"["):
            depth += 1
            kinds.append(token)
            if depth > MAX_JSON_DEPTH:
                break
        elif token in (b"}", b"]"):
            depth -= 1
            del kinds[max(depth, 0) :]
            del keys[max(depth, 0) :]
        elif token == b":":
            key = last if last.startswith(b'"') else None
            if key is not None and depth <= 2:
                del keys[depth - 1 :]
                keys.append(_json_text(key))
        elif token.startswith(b'"') and last == b":" and depth == 1 and key == b'"custom_id"':
            custom_id = _json_text(token)
        last = token
    # The keys up to the first array on the way.
    arrays = [level for level, kind in enumerate(kinds) if kind == b"["]
    shown = keys[: min([2, *arrays])]
    return "".join(f".{part}" for part in shown), custom_id


def _json_text(token: bytes) -> str:
    """A JSON string token's text (``""`` if it is not valid)."""
    try:
        text = orjson.loads(token)
    except orjson.JSONDecodeError:
        return ""
    return text if isinstance(text, str) else ""


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
            f"unknown key {show(key)}{hint}; a request line has only {expected}; "
            "rename or remove it"
        )
        return
    shown = ", ".join(show(key) for key in unknown[:_SHOWN_UNKNOWN_KEYS])
    more = len(unknown) - _SHOWN_UNKNOWN_KEYS
    if more > 0:
        shown += f" and {more} more"
    problems.append(
        f"unknown keys {shown}; a request line has only {expected}; rename or remove them"
    )


def custom_id_fits(value: str) -> bool:
    """Whether ``value`` is a custom_id Anthropic accepts: 1-64 letters, digits, ``_``, ``-``."""
    return len(value) <= CUSTOM_ID_MAX_CHARS and _CUSTOM_ID_CHARS.fullmatch(value) is not None


def _check_custom_id(obj: dict[str, Any], problems: list[str]) -> str | None:
    """Return the custom_id if it is valid; otherwise record why and return None."""
    rule = "letters, digits, '_' and '-' (1-64 chars)"
    if "custom_id" not in obj:
        problems.append(f'custom_id is missing; add "custom_id": "<unique id>" using {rule}')
        return None
    value = obj["custom_id"]
    if not isinstance(value, str):
        problems.append(
            f"custom_id must be a string, not {json_type(value)} ({show_json(value)}); "
            "put it in quotes"
        )
        return None
    if not value:
        problems.append(f"custom_id is empty; give each request a unique id of {rule}")
        return None
    valid = True
    if len(value) > CUSTOM_ID_MAX_CHARS:
        problems.append(
            f"custom_id {show(value)} is {len(value):,} characters long; "
            f"use at most {CUSTOM_ID_MAX_CHARS}"
        )
        valid = False
    if _CUSTOM_ID_CHARS.fullmatch(value) is None:
        problems.append(f"custom_id {show(value)} may only contain {rule}")
        valid = False
    return value if valid else None


def _check_openai_envelope(obj: dict[str, Any], problems: list[str]) -> None:
    if "method" not in obj:
        problems.append('method is missing; OpenAI-style lines need "method": "POST"')
    elif obj["method"] != "POST":
        problems.append(f'method {show_json(obj["method"])} is not supported; use "POST"')
    if "url" not in obj:
        problems.append('url is missing; OpenAI-style lines need "url": "/v1/messages"')
    else:
        url = obj["url"]
        if not isinstance(url, str) or not url.endswith(MESSAGES_URL_SUFFIX):
            problems.append(
                f'url {show_json(url)} is not the Messages API; use "/v1/messages" '
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
            f"{key} must be an object holding the Messages API request, not {json_type(params)}"
        )
        return None

    model = _check_model(params, key, default_model, problems)
    max_tokens = _check_max_tokens(params, key, problems)
    _check_messages(params, key, problems)
    if "system" in params:
        check_system(params["system"], f"{key}.system", problems)
    if "stream" in params and params["stream"] is not False:
        problems.append(
            f"{key}.stream is {show_json(params['stream'])}, which a batch does not allow; "
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
            return _unreserved(default_model, f"{key}.model (the default model)", problems)
        problems.append(
            f'{key}.model is missing; add "model": "<model id>" to the request '
            "or set a default model"
        )
        return None
    model = params["model"]
    if not isinstance(model, str) or not model.strip():
        problems.append(
            f"{key}.model must be a non-empty string naming the model, not {show_json(model)}"
        )
        return None
    if len(model) > MAX_MODEL_CHARS:
        problems.append(
            f"{key}.model is {len(model):,} characters long; a model id has at most "
            f"{MAX_MODEL_CHARS}"
        )
        return None
    return _unreserved(model, f"{key}.model", problems)


def _unreserved(model: str, where: str, problems: list[str]) -> str | None:
    """``model``, unless it is the name the limiter keeps for an endpoint's limits across all
    its models (its requests would take from that limit as if it were their model's)."""
    if model == ALL_MODELS:
        problems.append(
            f'{where} "{ALL_MODELS}" is reserved for the limits of an endpoint across all its '
            "models; name the model the request is for"
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
    too_big = isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_TOKENS
    if too_big:
        problems.append(
            f"{key}.max_tokens is {show_json(value)}; it can be at most {MAX_TOKENS:,} "
            "(no model writes more; check the number)"
        )
        return None
    # bool is an int subclass in Python, but `true` is not a token count.
    if isinstance(value, bool) or not isinstance(value, int):
        fix = ""
        if isinstance(value, float) and value.is_integer():
            fix = f"; write {int(value)}"
        elif isinstance(value, str) and value.strip().isdecimal():
            fix = f"; write {value.strip()} without quotes"
        problems.append(
            f"{key}.max_tokens must be an integer, not {json_type(value)} ({show_json(value)}){fix}"
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
        problems.append(f"{key}.messages must be an array of messages, not {json_type(messages)}")
        return
    if not messages:
        problems.append(f"{key}.messages is empty; add at least one message such as {example}")
        return
    for index, message in enumerate(messages):
        check_message(message, f"{key}.messages[{index}]", problems)
        if len(problems) > MAX_PROBLEMS_PER_LINE:
            return
