"""Repairing a structured answer that does not match its schema: which requests asked for
one, the follow-up turn that shows the model its answer and the errors, and the error a
request ends with when repairs run out.

All pure: params and a Message in, params or an error object out. The follow-up
(`repair_params`) is the original request, its messages followed by

- the model's answer as the assistant turn (its content blocks as the API sent them);
- a user turn listing the validation errors and asking for a corrected answer. In ``tool``
  mode it opens with a ``tool_result`` (``is_error``: true, the errors as its content) for
  each ``tool_use`` block of the answer, as the Messages API requires after a tool call.

Only the latest invalid answer is shown, not every earlier one: each repair costs about as
much as the first one did, however many came before.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from batchrun.structured.answers import InvalidAnswer, ValidAnswer, read_answer
from batchrun.structured.schemas import ANSWER_TOOL_NAME, StructuredMode

# The stored error type of a request whose answer still did not match its schema after its
# repairs (status, the report and the flat exports show it); its exported error object keeps
# the API's ``api_error``, the only kind of error the results format's parsers know for it.
INVALID_OUTPUT_ERROR_TYPE = "invalid_output"
# What stands for an answer with no content at all (an assistant turn may not be empty).
_EMPTY_ANSWER = "(no answer)"


def asked_structure(params: Mapping[str, Any]) -> tuple[dict[str, Any], StructuredMode] | None:
    """The schema ``params`` ask the answer to match and how they ask (``native``:
    ``output_config.format`` of type ``json_schema``; ``tool``: ``tool_choice`` forcing the
    ``answer`` tool, whose ``input_schema`` it is); None for a request that asks for none."""
    config = params.get("output_config")
    if isinstance(config, Mapping):
        fmt = config.get("format")
        if (
            isinstance(fmt, Mapping)
            and fmt.get("type") == "json_schema"
            and isinstance(fmt.get("schema"), Mapping)
        ):
            return dict(fmt["schema"]), "native"
    choice = params.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("name") == ANSWER_TOOL_NAME:
        for tool in params.get("tools") or []:
            if isinstance(tool, Mapping) and tool.get("name") == ANSWER_TOOL_NAME:
                schema = tool.get("input_schema")
                if isinstance(schema, Mapping):
                    return dict(schema), "tool"
    return None


def may_ask_structure(params_json: str) -> bool:
    """A cheap first look at a request body: False when it certainly asks for no structured
    answer (so most answers of plain batches are never parsed twice)."""
    return '"output_config"' in params_json or '"tool_choice"' in params_json


def check_answer(params: Mapping[str, Any], message: Mapping[str, Any]) -> InvalidAnswer | None:
    """The problems of ``message``'s answer to ``params``; None when it matches the schema
    the request asked for, or when the request asked for none."""
    asked = asked_structure(params)
    if asked is None:
        return None
    schema, mode = asked
    found = read_answer(message, schema, mode)
    return None if isinstance(found, ValidAnswer) else found


def repair_params(
    params: Mapping[str, Any], message: Mapping[str, Any], errors: Sequence[str]
) -> dict[str, Any]:
    """The follow-up request for an answer (``message``) to ``params`` that did not match
    its schema (``errors``); see the module docstring. ``params`` must ask for a structured
    answer (`asked_structure`)."""
    asked = asked_structure(params)
    mode: StructuredMode = "native" if asked is None else asked[1]
    content = message.get("content")
    blocks = (
        [copy.deepcopy(dict(b)) for b in content if isinstance(b, Mapping)]
        if isinstance(content, list)
        else []
    )
    if not blocks:
        blocks = [{"type": "text", "text": _EMPTY_ANSWER}]
    listed = errors_text(errors)
    turn: list[dict[str, Any]] = []
    for block in blocks:
        if block.get("type") == "tool_use" and isinstance(block.get("id"), str):
            turn.append(
                {
                    "type": "tool_result",
                    "tool_use_id": block["id"],
                    "is_error": True,
                    "content": listed
                    if block.get("name") == ANSWER_TOOL_NAME
                    else "Not run: only the answer tool may be called.",
                }
            )
    if mode == "tool":
        ask = (
            f"Your answer does not match the required schema:\n{listed}\nCall the "
            f"{ANSWER_TOOL_NAME!r} tool again with a corrected input that matches its schema."
        )
    else:
        ask = (
            f"Your answer does not match the required JSON Schema:\n{listed}\nReply again "
            "with only the corrected JSON, matching the schema."
        )
    turn.append({"type": "text", "text": ask})
    repaired = dict(params)
    repaired["messages"] = [
        *list(params.get("messages") or []),
        {"role": "assistant", "content": blocks},
        {"role": "user", "content": turn},
    ]
    return repaired


def errors_text(errors: Sequence[str]) -> str:
    """The validation errors as a list, one ``- error`` line each."""
    return "\n".join(f"- {error}" for error in errors)


def invalid_output_error(errors: Sequence[str], repairs: int) -> dict[str, Any]:
    """The error object of a request whose answer still does not match its schema after
    ``repairs`` repair sends (see :data:`INVALID_OUTPUT_ERROR_TYPE`)."""
    after = (
        "and no repair is allowed"
        if repairs == 0
        else f"after {repairs} repair{'s' if repairs != 1 else ''}"
    )
    message = f"{INVALID_OUTPUT_ERROR_TYPE}: the answer does not match the schema {after}: " + (
        "; ".join(errors)
    )
    return {"type": "error", "error": {"type": "api_error", "message": message}}
