"""Reading a structured answer back: the JSON out of a Message, validated against the schema.

`read_answer` is pure: a Message (as the API sent it) and the schema in, a `ValidAnswer` or
an `InvalidAnswer` out. ``native`` answers are the Message's text (its text blocks joined)
parsed as JSON; ``tool`` answers are the ``input`` of the forced tool's ``tool_use`` block.
An `InvalidAnswer` carries what was found (for the repair turn that shows the model its
answer) and every validation error, worded ``at $.path: what``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batchrun.structured.schemas import ANSWER_TOOL_NAME, StructuredMode

# Beyond this an answer's errors are summarised: a repair turn shows them all to the model.
MAX_ERRORS = 20


@dataclass(frozen=True, slots=True)
class ValidAnswer:
    """An answer that matches the schema: its parsed value."""

    value: Any


@dataclass(frozen=True, slots=True)
class InvalidAnswer:
    """An answer that does not: what was found (the text, or the tool input as JSON; "" if
    nothing) and why, one message per problem."""

    found: str
    errors: tuple[str, ...]


def read_answer(
    message: Mapping[str, Any], schema: Mapping[str, Any], mode: StructuredMode
) -> ValidAnswer | InvalidAnswer:
    """The answer in ``message`` checked against ``schema``; see the module docstring."""
    content = message.get("content")
    blocks = (
        [block for block in content if isinstance(block, Mapping)]
        if isinstance(content, list)
        else []
    )
    if mode == "tool":
        calls = [
            block
            for block in blocks
            if block.get("type") == "tool_use" and block.get("name") == ANSWER_TOOL_NAME
        ]
        if not calls:
            text = _text(blocks)
            return InvalidAnswer(
                text, (f"the answer is not a call of the {ANSWER_TOOL_NAME!r} tool",)
            )
        value = calls[0].get("input")
        found = orjson.dumps(value).decode() if _dumpable(value) else repr(value)
        return _validated(value, found, schema)
    text = _text(blocks)
    if not text.strip():
        return InvalidAnswer(text, ("the answer has no text; it should be a JSON value",))
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return InvalidAnswer(
            text,
            (f"the answer is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",),
        )
    return _validated(value, text, schema)


def _text(blocks: list[Mapping[str, Any]]) -> str:
    return "".join(
        block["text"]
        for block in blocks
        if block.get("type") == "text" and isinstance(block.get("text"), str)
    )


def _dumpable(value: object) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _validated(value: Any, found: str, schema: Mapping[str, Any]) -> ValidAnswer | InvalidAnswer:
    # Loaded here: a run without a structured batch (most) should not load jsonschema,
    # which cost about a tenth of a worker's start-up.
    from jsonschema.validators import validator_for

    validator = validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(value), key=lambda error: list(map(str, error.path)))
    if not errors:
        return ValidAnswer(value)
    messages = [f"at {error.json_path}: {error.message}" for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        messages.append(f"… and {len(errors) - MAX_ERRORS} more errors")
    return InvalidAnswer(found, tuple(messages))
