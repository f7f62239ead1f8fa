"""Structured answers: JSON that matches the schema a request asks for, or, for a share of
requests, JSON that does not.

A request asks for a structured answer natively (``output_config.format`` of type
``json_schema``: the answer's text is the JSON) or by forcing a tool (``tool_choice``): the
``tool_use`` block's ``input`` matches the tool's ``input_schema``. `answer_value` makes the
value from the schema, deterministically from a seed (the request's fingerprint): objects
with their required properties (and some optional ones), strings within their lengths (an
``enum`` or ``const`` value when given), numbers within their bounds, arrays within their
sizes; ``$ref`` to ``#/$defs``, ``anyOf``/``oneOf`` (the first choice) and type lists are
followed. ``pattern`` and ``format`` are not honoured beyond a few common formats.

With ``invalid_output=P`` (a directive, or the config's rate) a share P of requests, chosen
by their fingerprint, get an answer that breaks the schema: a required property missing, a
property of the wrong type, not an object at all, or (native only) JSON cut short. This
module implements its own generator, not batchrun's validator: it is the oracle the
validation is tested against.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping
from typing import Any, Literal

# How deep generated values nest before objects keep only their required properties and
# arrays their fewest items (a recursive schema would otherwise never end).
_MAX_DEPTH = 8
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")

Asked = tuple[Literal["native", "tool"], Mapping[str, Any], str | None]


def asked_schema(params: Mapping[str, Any], forced_tool: str | None) -> Asked | None:
    """How ``params`` ask for a structured answer: ``("native", schema, None)``, ``("tool",
    input_schema, tool name)`` for a forced tool with an object schema, or None."""
    config = params.get("output_config")
    if isinstance(config, Mapping):
        fmt = config.get("format")
        if (
            isinstance(fmt, Mapping)
            and fmt.get("type") == "json_schema"
            and isinstance(fmt.get("schema"), Mapping)
        ):
            return "native", fmt["schema"], None
    if forced_tool is not None:
        for tool in params.get("tools") or []:
            if isinstance(tool, Mapping) and tool.get("name") == forced_tool:
                schema = tool.get("input_schema")
                if isinstance(schema, Mapping):
                    return "tool", schema, forced_tool
    return None


def draws_invalid(fingerprint: str, share: float) -> bool:
    """Whether the request with this fingerprint gets an invalid answer, for a ``share``."""
    if share <= 0.0:
        return False
    digest = hashlib.sha256(f"invalid:{fingerprint}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def answer_value(schema: Mapping[str, Any], seed: str) -> Any:
    """A value that matches ``schema`` (see the module docstring), the same for one seed."""
    return _value(schema, schema, random.Random(seed), 0)


def spoiled(value: Any, schema: Mapping[str, Any], seed: str, *, native: bool) -> Any | str:
    """A value that breaks ``schema`` (an object schema), made from a valid ``value``; for
    ``native`` answers possibly a `CutJson` text instead."""
    rng = random.Random(f"spoil:{seed}")
    schema = _resolved(schema, schema)
    spoilers: list[str] = ["not_object"]
    required = [key for key in schema.get("required") or [] if isinstance(value, dict)]
    if required:
        spoilers.append("missing")
    typed = [
        key
        for key, sub in (schema.get("properties") or {}).items()
        if isinstance(value, dict) and key in value and _wrong_value(_resolved(sub, schema))
    ]
    if typed:
        spoilers.append("wrong_type")
    if native:
        spoilers.append("cut")
    match rng.choice(spoilers):
        case "missing":
            broken = dict(value)
            del broken[rng.choice(required)]
            return broken
        case "wrong_type":
            key = rng.choice(typed)
            broken = dict(value)
            broken[key] = _wrong_value(_resolved(schema["properties"][key], schema))
            return broken
        case "cut":
            text = json.dumps(value)
            return CutJson(text[: max(1, len(text) // 2)])
        case _:
            return [value]


class CutJson(str):
    """A native answer's text that is not even JSON (cut short)."""

    __slots__ = ()


def _wrong_value(schema: Mapping[str, Any]) -> Any:
    """A value of the wrong type for ``schema``; None when its type is not one known."""
    kind = schema.get("type")
    if "enum" in schema or "const" in schema:
        return "__not_one_of_the_values__"
    return (
        {
            "string": 12345,
            "integer": "not a number",
            "number": "not a number",
            "boolean": "not a boolean",
            "array": "not an array",
            "object": "not an object",
        }.get(kind)
        if isinstance(kind, str)
        else None
    )


def _resolved(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while isinstance(schema.get("$ref"), str) and seen < 32:
        target: Any = root
        for part in schema["$ref"].removeprefix("#").strip("/").split("/"):
            if not part:
                continue
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
            if not isinstance(target, Mapping):
                return {}
        schema = target
        seen += 1
    return schema


def _value(
    schema: Mapping[str, Any], root: Mapping[str, Any], rng: random.Random, depth: int
) -> Any:
    schema = _resolved(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        choices = schema.get(key)
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            return _value(choices[0], root, rng, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or ["null"]
        kind = kinds[0]
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    match kind:
        case "object":
            return _object(schema, root, rng, depth)
        case "array":
            return _array(schema, root, rng, depth)
        case "integer":
            return _integer(schema, rng)
        case "number":
            return _number(schema, rng)
        case "boolean":
            return rng.random() < 0.5
        case "null":
            return None
        case _:
            return _string(schema, rng)


def _object(
    schema: Mapping[str, Any], root: Mapping[str, Any], rng: random.Random, depth: int
) -> Any:
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    value: dict[str, Any] = {}
    for key, sub in properties.items():
        if key in required or (depth < _MAX_DEPTH and rng.random() < 0.5):
            value[key] = _value(sub if isinstance(sub, Mapping) else {}, root, rng, depth + 1)
    for key in required - set(value):
        value[key] = "sim"
    return value


def _array(
    schema: Mapping[str, Any], root: Mapping[str, Any], rng: random.Random, depth: int
) -> Any:
    low = int(schema.get("minItems", 0 if depth >= _MAX_DEPTH else 1))
    high = int(schema.get("maxItems", max(low, 3)))
    count = low if depth >= _MAX_DEPTH else rng.randint(low, max(low, high))
    items = schema.get("items")
    item_schema = items if isinstance(items, Mapping) else {}
    return [_value(item_schema, root, rng, depth + 1) for _ in range(count)]


def _integer(schema: Mapping[str, Any], rng: random.Random) -> int:
    low: int | None = None
    high: int | None = None
    if isinstance(schema.get("minimum"), int | float):
        low = math.ceil(schema["minimum"])
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = math.floor(schema["exclusiveMinimum"]) + 1
    if isinstance(schema.get("maximum"), int | float):
        high = math.floor(schema["maximum"])
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = math.ceil(schema["exclusiveMaximum"]) - 1
    if low is None and high is None:
        low, high = 0, 100
    elif low is None:
        assert high is not None
        low = high - 100
    elif high is None:
        high = low + 100
    return rng.randint(low, max(low, high))


def _number(schema: Mapping[str, Any], rng: random.Random) -> float:
    """A number within the bounds: inside an exclusive bound, on or inside an inclusive one."""
    bounds = {
        key: schema.get(key)
        for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
    }
    numbers = {k: float(v) for k, v in bounds.items() if isinstance(v, int | float)}
    low = max(numbers.get("minimum", -math.inf), numbers.get("exclusiveMinimum", -math.inf))
    high = min(numbers.get("maximum", math.inf), numbers.get("exclusiveMaximum", math.inf))
    if math.isinf(low) and math.isinf(high):
        low, high = 0.0, 100.0
    elif math.isinf(low):
        low = high - 100.0
    elif math.isinf(high):
        high = low + 100.0
    # The middle half of the range: never on an exclusive bound.
    return low + (high - low) * (0.25 + 0.5 * rng.random())


def _string(schema: Mapping[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        return "2026-12-07"
    if fmt == "date-time":
        return "2026-12-07T12:00:00Z"
    if fmt == "email":
        return "sim@example.com"
    if fmt in ("uri", "url"):
        return "https://example.com/sim"
    low = int(schema.get("minLength", 1))
    high = int(schema.get("maxLength", max(low, 40)))
    text = " ".join(rng.choice(_WORDS) for _ in range(6))
    while len(text) < low:
        text += " " + rng.choice(_WORDS)
    return text[: max(low, min(high, len(text)))]
