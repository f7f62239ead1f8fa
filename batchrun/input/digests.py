"""Stable digests of a request's params, made at submit.

- :func:`params_digest`: the whole params (model included), as canonical JSON. Two requests
  with equal digests ask for the same thing, whatever the order of their keys: ``submit
  --reuse`` answers one from the other's stored result (see ``batchrun.store.reuse``).
- :func:`cache_prefix_key`: the prompt prefix the API caches, up to the last ``cache_control``
  breakpoint. Requests with the same key read one cache entry: at submit, the first of them
  answers alone before the others are sent (so they read what it wrote), and the dispatcher
  routes them to one pool member (``batchrun.dispatch.routing``).

Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import orjson

# The marker whose absence from the JSON text settles that a request has no breakpoint.
_CACHE_CONTROL = "cache_control"
# Where orjson's text may differ from json's: a number with an exponent (a digit then "e"),
# or a float below 1e-4 that orjson writes in full (json: with an exponent). Looked for with
# every digit made "0" (bytes.translate, then substring searches for "0e", "0E" and "0.0000":
# several times faster than a regular expression). Also found inside strings ("2e5"), which
# only costs the slower writer.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json_bytes(value: Any) -> bytes:
    """:func:`canonical_json` as UTF-8, the same bytes, made by orjson (several times faster,
    and every line of every submit pays for it) wherever orjson writes what ``json`` writes.
    They differ only in how they write some floats (orjson: ``1e-7``, ``0.00001``; json:
    ``1e-07``, ``1e-05``), so text with a possible exponent or a float under 1e-4, and
    whatever orjson cannot write (integers past 64 bits, lone surrogates, deep nesting), is
    written by ``json``: digests stay those of earlier versions, and reuse finds their
    answers."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, RecursionError):
        return canonical_json(value).encode()
    zeroed = text.translate(_DIGITS_TO_ZERO)
    # Spelled out: any() over a tuple of marks made a generator per line, which cost more
    # than the three searches.
    if b"0e" in zeroed or b"0E" in zeroed or b"0.0000" in zeroed:
        return canonical_json(value).encode()
    return text


def params_digest(params: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the params as canonical JSON; the model is part of the params."""
    return hashlib.sha256(canonical_json_bytes(params)).hexdigest()


def cache_prefix_key(params_json: str, params: Mapping[str, Any] | None = None) -> str | None:
    """:func:`prefix_key` of the params given as JSON text (``params``: the same, already
    parsed); None when the text has no breakpoint (checked first, without parsing) or is not
    a JSON object."""
    if _CACHE_CONTROL not in params_json:
        return None
    if params is None:
        try:
            params = json.loads(params_json)
        except ValueError:
            return None
    return prefix_key(params) if isinstance(params, Mapping) else None


def prefix_key(params: Mapping[str, Any]) -> str | None:
    """A key for the request's cached prompt prefix: the model and everything up to its last
    ``cache_control`` breakpoint (tools, then system, then messages, as the API caches them);
    None when the request has no breakpoint."""
    parts: list[Any] = [params.get("model")]
    prefix_end = 0
    for item in _prompt_parts(params):
        parts.append(item)
        if isinstance(item, dict) and _CACHE_CONTROL in item:
            prefix_end = len(parts)
    if prefix_end == 0:
        return None
    # Any stable text will do for this key, which never leaves a run or a submit: orjson is
    # several times faster than json at sorting keys, and every submit pays for it.
    text = orjson.dumps(parts[:prefix_end], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(text, digest_size=16).hexdigest()


def _prompt_parts(params: Mapping[str, Any]) -> list[Any]:
    """The prompt as the cache sees it, block by block: tools, system, then each message's
    content blocks (a string content is one part)."""
    parts: list[Any] = []
    tools = params.get("tools")
    if isinstance(tools, list):
        parts.extend(tools)
    system = params.get("system")
    if isinstance(system, list):
        parts.extend(system)
    elif system is not None:
        parts.append({"system": system})
    messages = params.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            role = message.get("role")
            if isinstance(content, list):
                parts.extend({"role": role, **b} if isinstance(b, dict) else b for b in content)
            else:
                parts.append({"role": role, "content": content})
    return parts
