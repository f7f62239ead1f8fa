"""Structured answers: schemas checked against the meta-schema, the two ways a request asks,
and an answer read back and validated (pure, table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from batchrun.errors import ConfigError
from batchrun.structured.answers import InvalidAnswer, ValidAnswer, read_answer
from batchrun.structured.schemas import ANSWER_TOOL_NAME, ask_for, check_schema

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["label", "score"],
    "properties": {
        "label": {"type": "string", "enum": ["yes", "no"]},
        "score": {"type": "integer", "minimum": 0},
    },
}


def text_message(text: str) -> dict[str, Any]:
    return {"type": "message", "content": [{"type": "text", "text": text}]}


def tool_message(value: Any, name: str = ANSWER_TOOL_NAME) -> dict[str, Any]:
    return {
        "type": "message",
        "content": [
            {"type": "text", "text": "thinking out loud"},
            {"type": "tool_use", "id": "toolu_1", "name": name, "input": value},
        ],
    }


def test_native_asks_with_output_config_and_keeps_its_other_keys() -> None:
    params = {"model": "m", "output_config": {"effort": "low"}}

    asked = ask_for(params, SCHEMA, "native")

    assert asked["output_config"] == {
        "effort": "low",
        "format": {"type": "json_schema", "schema": SCHEMA},
    }
    assert params == {"model": "m", "output_config": {"effort": "low"}}  # not changed


def test_tool_mode_adds_the_answer_tool_and_forces_it() -> None:
    other = {"name": "search", "input_schema": {"type": "object"}}

    asked = ask_for({"model": "m", "tools": [other]}, SCHEMA, "tool")

    assert asked["tools"][0] == other
    assert asked["tools"][1]["name"] == ANSWER_TOOL_NAME
    assert asked["tools"][1]["input_schema"] == SCHEMA
    assert asked["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL_NAME}
    assert "output_config" not in asked


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ([], "a JSON Schema is an object"),
        ({"type": "object", "properties": {"a": {"type": 3}}}, "not a JSON Schema: 3 is not valid"),
        ({"type": "object", "minProperties": -1}, "not a JSON Schema: -1 is less than"),
        ({"type": "string"}, "the schema must describe an object"),
    ],
)
def test_what_is_not_a_json_schema_of_an_object_is_refused(schema: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"^t.toml: \[output\]: ") as caught:
        check_schema(schema, where="t.toml: [output]")
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("message", "mode", "expected"),
    [
        (text_message('{"label": "yes", "score": 3}'), "native", {"label": "yes", "score": 3}),
        (tool_message({"label": "no", "score": 0}), "tool", {"label": "no", "score": 0}),
    ],
)
def test_a_valid_answer_is_parsed(message: dict[str, Any], mode: Any, expected: Any) -> None:
    assert read_answer(message, SCHEMA, mode) == ValidAnswer(expected)


@pytest.mark.parametrize(
    ("message", "mode", "errors"),
    [
        (
            text_message('{"label": "maybe"}'),
            "native",
            [
                "at $: 'score' is a required property",
                "at $.label: 'maybe' is not one of ['yes', 'no']",
            ],
        ),
        (text_message('{"label": "yes", "sc'), "native", ["the answer is not valid JSON: "]),
        (text_message(""), "native", ["the answer has no text"]),
        (
            tool_message({"label": "yes", "score": -1}),
            "tool",
            [
                "at $.score: -1 is less than the minimum of 0",
            ],
        ),
        (
            tool_message({"label": "yes", "score": 1}, name="other"),
            "tool",
            [
                "the answer is not a call of the 'answer' tool",
            ],
        ),
        (
            text_message('{"label": "yes", "score": 1}'),
            "tool",
            [
                "the answer is not a call of the 'answer' tool",
            ],
        ),
    ],
)
def test_an_invalid_answer_gives_what_was_found_and_every_error(
    message: dict[str, Any], mode: Any, errors: list[str]
) -> None:
    answer = read_answer(message, SCHEMA, mode)

    assert isinstance(answer, InvalidAnswer)
    assert len(answer.errors) == len(errors)
    for got, expected in zip(answer.errors, errors, strict=True):
        assert got.startswith(expected), got
    if mode == "native":
        assert answer.found == message["content"][0]["text"]
