"""How request-file problems are worded: values quoted as the user wrote them, sizes, caps.

Shared by the per-line checks (`batchrun.input.validation`, `batchrun.input.content`) so every
message shows a user's value the same way: JSON types by their JSON names, strings quoted
and shortened so that one huge value cannot flood the terminal, sizes in bytes and MiB.
"""

from __future__ import annotations

from typing import Any

import orjson

MIB = 1024 * 1024
# Beyond this a line's problems are summarised; a line rarely has more than a handful.
MAX_PROBLEMS_PER_LINE = 100

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


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, with its article ("an object", "null")."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def show(text: str) -> str:
    """Quote a user's string for a message, shortened so one huge value cannot flood it."""
    if len(text) > _SHOWN_VALUE_CHARS:
        text = text[:_SHOWN_VALUE_CHARS] + "…"
    return repr(text)


def show_json(value: Any) -> str:
    """Show a JSON value as the user wrote it (strings quoted), shortened."""
    if isinstance(value, str):
        return show(value)
    if isinstance(value, dict | list):
        return "{...}" if isinstance(value, dict) else "[...]"
    return orjson.dumps(value).decode()


def size_text(size_bytes: int) -> str:
    """A size in bytes, with MiB added once it reaches one MiB."""
    if size_bytes < MIB:
        return f"{size_bytes:,} bytes"
    return f"{size_bytes:,} bytes ({mib_text(size_bytes)})"


def mib_text(size_bytes: int) -> str:
    """A size in MiB, whole when it is whole (``32 MiB``), else to one decimal."""
    mib = size_bytes / MIB
    return f"{mib:.0f} MiB" if mib.is_integer() else f"{mib:.1f} MiB"


def capped(problems: list[str]) -> tuple[str, ...]:
    """At most `MAX_PROBLEMS_PER_LINE` problems, then one line saying there are more."""
    # The checks stop early once the cap is passed, so the true count is unknown.
    if len(problems) <= MAX_PROBLEMS_PER_LINE:
        return tuple(problems)
    return (
        *problems[:MAX_PROBLEMS_PER_LINE],
        f"… more problems on this line; fix the first {MAX_PROBLEMS_PER_LINE} and check again",
    )
