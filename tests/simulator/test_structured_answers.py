"""The simulator answers structured requests with JSON made from the schema (natively or as
a forced tool call's input), and `[[sim:invalid_output=P]]` breaks a share P of them: checked
with the jsonschema library, not batchrun's reading of answers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from batchrun.simulator import SimulatorConfig, create_app

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kind", "count", "tags", "owner"],
    "$defs": {
        "person": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 3}},
        }
    },
    "properties": {
        "kind": {"enum": ["a", "b"]},
        "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 3},
        "ratio": {"type": "number", "minimum": 0.5, "maximum": 0.9},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
        "owner": {"$ref": "#/$defs/person"},
        "note": {"type": ["string", "null"], "maxLength": 5},
        "flag": {"type": "boolean"},
    },
}


def body(n: int, mode: str, directive: str = "") -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 400,
        "messages": [{"role": "user", "content": f"row {n} {directive}"}],
    }
    if mode == "native":
        params["output_config"] = {"format": {"type": "json_schema", "schema": SCHEMA}}
    else:
        params["tools"] = [{"name": "answer", "input_schema": SCHEMA}]
        params["tool_choice"] = {"type": "tool", "name": "answer"}
    return params


async def answers(mode: str, count: int, directive: str = "") -> list[Any]:
    app = create_app(SimulatorConfig(seed=1))
    transport = httpx.ASGITransport(app=app)
    values: list[Any] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        for n in range(count):
            response = await client.post("/v1/messages", json=body(n, mode, directive))
            assert response.status_code == 200, response.text
            content = response.json()["content"]
            if mode == "native":
                (block,) = content
                assert block["type"] == "text"
                try:
                    values.append(json.loads(block["text"]))
                except json.JSONDecodeError:
                    values.append(("not json", block["text"]))
            else:
                (block,) = content
                assert block["type"] == "tool_use" and block["name"] == "answer"
                values.append(block["input"])
    return values


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["native", "tool"])
async def test_every_answer_matches_the_requested_schema(mode: str) -> None:
    values = await answers(mode, 40)

    validator = Draft202012Validator(SCHEMA)
    assert [list(validator.iter_errors(v)) for v in values] == [[] for _ in values]
    assert len({json.dumps(v, sort_keys=True) for v in values}) > 10  # not one fixed answer


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["native", "tool"])
async def test_invalid_output_breaks_about_its_share_of_answers(mode: str) -> None:
    values = await answers(mode, 200, "[[sim:invalid_output=0.3]]")

    validator = Draft202012Validator(SCHEMA)
    invalid = [v for v in values if isinstance(v, tuple) or not validator.is_valid(v)]
    # 200 draws of 30 %: 60 expected; outside 35..85 the share is broken, not unlucky.
    assert 35 <= len(invalid) <= 85
    if mode == "tool":
        assert not any(isinstance(v, tuple) for v in values)  # a tool input is always JSON


@pytest.mark.asyncio
async def test_the_same_request_gets_the_same_answer() -> None:
    first = await answers("native", 5, "[[sim:invalid_output=0.5]]")
    again = await answers("native", 5, "[[sim:invalid_output=0.5]]")

    assert first == again


@pytest.mark.asyncio
async def test_an_invalid_share_outside_0_to_1_is_refused() -> None:
    app = create_app(SimulatorConfig())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        response = await client.post(
            "/v1/messages", json=body(0, "native", "[[sim:invalid_output=1.5]]")
        )

    assert response.status_code == 400
    assert "invalid_output='1.5' has an invalid value" in response.text
