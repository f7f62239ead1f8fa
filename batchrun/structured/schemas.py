"""A JSON Schema for the answers, checked, and the request that asks for it.

Two ways to ask (an endpoint's ``structured_outputs`` setting chooses,
`batchrun.transport.endpoints`):

- ``native``: ``output_config.format = {"type": "json_schema", "schema": ...}``; the answer's
  text is the JSON (the Messages API's structured outputs);
- ``tool``: one tool whose ``input_schema`` is the schema, forced with ``tool_choice``; the
  answer is the ``tool_use`` block's ``input``. It works on gateways that drop or refuse
  ``output_config``.

Whatever the endpoint claims, every answer is validated locally
(`batchrun.structured.answers`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

from batchrun.errors import ConfigError

StructuredMode = Literal["native", "tool"]
DEFAULT_STRUCTURED_MODE: StructuredMode = "native"
# The forced tool's name in ``tool`` mode, and what it tells the model.
ANSWER_TOOL_NAME = "answer"
ANSWER_TOOL_DESCRIPTION = "Give the answer, as the input of this tool."


def check_schema(schema: object, *, where: str) -> dict[str, Any]:
    """``schema`` if it is a JSON Schema object describing a JSON object; ConfigError naming
    ``where`` (``tickets.toml: [output]``) and what is wrong otherwise.

    The check is the ``jsonschema`` library's meta-schema check, for the draft the schema's
    ``$schema`` names (the newest draft when it names none). The top level must describe an
    object (``"type": "object"``): a tool's ``input_schema`` has to, and a table's answer
    columns are its properties.
    """
    # Loaded here: the endpoints name the modes, and should not load jsonschema for that.
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, Mapping):
        raise ConfigError(
            f"{where}: a JSON Schema is an object (a TOML table), not {type(schema).__name__}"
        )
    schema = dict(schema)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        at = "".join(f"[{part!r}]" if isinstance(part, int) else f".{part}" for part in exc.path)
        raise ConfigError(
            f"{where}: not a JSON Schema: {exc.message}"
            + (f" (at {at.removeprefix('.')})" if at else "")
            + "; see https://json-schema.org/understanding-json-schema"
        ) from None
    if schema.get("type") != "object":
        raise ConfigError(
            f'{where}: the schema must describe an object: add type = "object" and the answer\'s '
            "fields under properties"
        )
    return schema


def ask_for(
    params: Mapping[str, Any], schema: Mapping[str, Any], mode: StructuredMode
) -> dict[str, Any]:
    """``params`` asking for an answer that matches ``schema`` the ``mode`` way.

    ``native`` adds ``output_config.format`` (keeping the request's other ``output_config``
    keys); ``tool`` adds the answer tool to the request's tools and forces it.
    """
    asked = dict(params)
    if mode == "native":
        config = dict(asked.get("output_config") or {})
        config["format"] = {"type": "json_schema", "schema": copy.deepcopy(dict(schema))}
        asked["output_config"] = config
        return asked
    tool = {
        "name": ANSWER_TOOL_NAME,
        "description": ANSWER_TOOL_DESCRIPTION,
        "input_schema": copy.deepcopy(dict(schema)),
    }
    asked["tools"] = [*list(asked.get("tools") or []), tool]
    asked["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL_NAME}
    return asked


def asked_schema(params: Mapping[str, Any]) -> tuple[dict[str, Any], StructuredMode] | None:
    """The schema a request's ``params`` ask the answer to match, and how they ask (the
    inverse of `ask_for`); None when they ask for no structured answer."""
    config = params.get("output_config")
    form = config.get("format") if isinstance(config, Mapping) else None
    if (
        isinstance(form, Mapping)
        and form.get("type") == "json_schema"
        and isinstance(form.get("schema"), Mapping)
    ):
        return dict(form["schema"]), "native"
    choice = params.get("tool_choice")
    tools = params.get("tools")
    if (
        isinstance(choice, Mapping)
        and choice.get("type") == "tool"
        and choice.get("name") == ANSWER_TOOL_NAME
        and isinstance(tools, list)
    ):
        for tool in tools:
            if (
                isinstance(tool, Mapping)
                and tool.get("name") == ANSWER_TOOL_NAME
                and isinstance(tool.get("input_schema"), Mapping)
            ):
                return dict(tool["input_schema"]), "tool"
    return None
