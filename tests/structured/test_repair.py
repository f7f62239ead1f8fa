"""The pure parts of repairs, as tables: which requests asked for a schema, the follow-up
turn, and what `review` makes of a final answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from batchrun.records import AnswerTurn, FinishedRequest, Usage
from batchrun.structured.repair import (
    INVALID_OUTPUT_ERROR_TYPE,
    asked_structure,
    invalid_output_error,
    may_ask_structure,
    repair_params,
)
from batchrun.structured.review import review
from batchrun.structured.schemas import ask_for

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["n"],
    "properties": {"n": {"type": "integer"}},
}
PLAIN: dict[str, Any] = {
    "model": "m",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "count"}],
}
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def message(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": list(blocks)}


def finished(body: dict[str, Any], result_type: str = "succeeded") -> FinishedRequest:
    return FinishedRequest(
        request_id=7,
        batch_id="b",
        custom_id="c",
        result_type=result_type,
        attempts=1,
        completed_at=NOW,
        model="m",
        usage=Usage(11, 5),
        body=json.dumps(body),
        endpoint="sim",
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (ask_for(PLAIN, SCHEMA, "native"), (SCHEMA, "native")),
        (ask_for(PLAIN, SCHEMA, "tool"), (SCHEMA, "tool")),
        (PLAIN, None),
        ({**PLAIN, "output_config": {"effort": "low"}}, None),
        ({**PLAIN, "tool_choice": {"type": "tool", "name": "answer"}}, None),
        (
            {**PLAIN, "tools": [{"name": "answer", "input_schema": SCHEMA}]},
            None,
        ),
    ],
    ids=["native", "tool", "plain", "other-output-config", "forced-but-no-tool", "not-forced"],
)
def test_which_requests_asked_for_a_schema(params: dict[str, Any], expected: object) -> None:
    assert asked_structure(params) == expected
    if expected is not None:
        assert may_ask_structure(json.dumps(params))
    if params is PLAIN:
        assert not may_ask_structure(json.dumps(params))


def test_a_native_repair_adds_the_answer_and_the_errors_and_keeps_the_rest() -> None:
    params = ask_for({**PLAIN, "system": "s", "temperature": 0.5}, SCHEMA, "native")
    answer = message({"type": "text", "text": '{"n": "x"}'})

    repaired = repair_params(params, answer, ("at $.n: 'x' is not of type 'integer'",))

    assert {k: v for k, v in repaired.items() if k != "messages"} == {
        k: v for k, v in params.items() if k != "messages"
    }
    first, assistant, user = repaired["messages"]
    assert first == params["messages"][0]
    assert assistant == {"role": "assistant", "content": answer["content"]}
    (ask,) = user["content"]
    assert ask["type"] == "text"
    assert "- at $.n: 'x' is not of type 'integer'" in ask["text"]
    assert "only the corrected JSON" in ask["text"]
    assert params["messages"] == PLAIN["messages"], "the original params are not changed"


def test_an_answer_with_no_content_is_shown_as_such_never_as_an_empty_turn() -> None:
    repaired = repair_params(ask_for(PLAIN, SCHEMA, "native"), message(), ("no text",))

    assert repaired["messages"][1]["content"] == [{"type": "text", "text": "(no answer)"}]


def test_a_tool_repair_answers_every_tool_call_with_a_result() -> None:
    params = ask_for(PLAIN, SCHEMA, "tool")
    answer = message(
        {"type": "text", "text": "here"},
        {"type": "tool_use", "id": "tu_1", "name": "answer", "input": {"n": "x"}},
        {"type": "tool_use", "id": "tu_2", "name": "other", "input": {}},
    )

    repaired = repair_params(params, answer, ("e1", "e2"))

    results = repaired["messages"][2]["content"]
    assert [block["type"] for block in results] == ["tool_result", "tool_result", "text"]
    assert results[0] == {
        "type": "tool_result",
        "tool_use_id": "tu_1",
        "is_error": True,
        "content": "- e1\n- e2",
    }
    assert results[1]["tool_use_id"] == "tu_2" and results[1]["is_error"] is True
    assert "'answer' tool again" in results[2]["text"]


@pytest.mark.parametrize(
    ("body", "repairs", "limit", "expected"),
    [
        (message({"type": "text", "text": '{"n": 1}'}), 0, 1, "succeeded"),
        (message({"type": "text", "text": '{"n": 1}'}), 1, 1, "succeeded-repair"),
        (message({"type": "text", "text": '{"n": "x"}'}), 0, 1, "turn"),
        (message({"type": "text", "text": '{"n": "x"}'}), 1, 2, "turn-repair"),
        (message({"type": "text", "text": '{"n": "x"}'}), 1, 1, "invalid"),
        (message({"type": "text", "text": "not json"}), 0, 0, "invalid"),
    ],
)
def test_review_of_a_final_answer(
    body: dict[str, Any], repairs: int, limit: int, expected: str
) -> None:
    params = ask_for(PLAIN, SCHEMA, "native")

    found = review(finished(body), params, repairs=repairs, repair_limit=limit)

    if expected.startswith("turn"):
        assert isinstance(found, AnswerTurn)
        assert (found.turn, found.repair_send) == (repairs + 1, expected == "turn-repair")
        assert found.body == json.dumps(body) and found.errors and found.usage == Usage(11, 5)
        return
    assert isinstance(found, FinishedRequest)
    assert found.repair_send == (repairs > 0)
    if expected == "invalid":
        assert found.result_type == "errored" and found.error_type == INVALID_OUTPUT_ERROR_TYPE
        assert found.raw_body == json.dumps(body) and found.usage == Usage(11, 5)
        error = json.loads(found.body or "")
        assert error["error"]["message"] == found.error_message
    else:
        assert found.result_type == "succeeded" and found.body == json.dumps(body)


def test_errored_results_and_plain_requests_are_left_as_they_are() -> None:
    error = finished({"type": "error", "error": {"type": "overloaded_error"}}, "errored")
    plain = finished(message({"type": "text", "text": "hello"}))

    assert review(error, ask_for(PLAIN, SCHEMA, "native"), repairs=0, repair_limit=1) == error
    assert review(plain, None, repairs=0, repair_limit=1) == plain


@pytest.mark.parametrize(
    ("repairs", "said"),
    [(0, "and no repair is allowed"), (1, "after 1 repair:"), (3, "after 3 repairs:")],
)
def test_the_invalid_output_message_says_how_many_repairs_were_made(
    repairs: int, said: str
) -> None:
    error = invalid_output_error(("at $.n: bad", "at $: more"), repairs)

    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    message_text = error["error"]["message"]
    assert message_text.startswith("invalid_output: the answer does not match the schema")
    assert said in message_text and message_text.endswith("at $.n: bad; at $: more")
