"""The simulated Messages API: wire shapes, token counts, directives, rate limits, stats.

In-process tests talk to the ASGI app through ``httpx.ASGITransport`` and run in virtual time
(``looptime``) where time matters; a few tests use the real uvicorn server on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageTokensCount
from anthropic.types.shared import ErrorResponse
from jsonschema import Draft202012Validator

from batchrun.input.images import image_tokens
from batchrun.simulator import (
    FaultRates,
    ModelLimits,
    SimulatorApp,
    SimulatorConfig,
    SimulatorStats,
    create_app,
    running_simulator,
)

MODEL = "claude-sim-1"
API_KEY = "sk-test-simulator-key-0123"


@asynccontextmanager
async def simulator_client(app: SimulatorApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://simulator") as client:
        yield client


def params(
    text: str = "Hello, simulator!", *, max_tokens: int = 100, **extra: Any
) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def expected_tokens(chars: int, messages: int = 1, images: int = 0) -> int:
    """The simulator's documented formula."""
    return math.ceil(chars / 4) + 4 * messages + images


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


async def post(
    app: SimulatorApp, body: dict[str, Any], path: str = "/v1/messages"
) -> httpx.Response:
    async with simulator_client(app) as client:
        return await client.post(path, json=body)


# -- success shape and usage ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_success_is_a_valid_anthropic_message_with_request_id() -> None:
    app = create_app()
    system = [{"type": "text", "text": "You are terse."}]
    response = await post(app, params("What is the capital of France?", system=system))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    message = Message.model_validate(response.json())
    assert message.id.startswith("msg_") and len(message.id) == 4 + 24
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("Simulated reply to: What is the capital of France?")
    assert message.usage.input_tokens == expected_tokens(len("You are terse.") + 30)
    assert message.usage.output_tokens == 40
    assert message.usage.cache_read_input_tokens == 0
    assert response.headers["request-id"].startswith("req_")
    assert "anthropic-ratelimit-requests-limit" not in response.headers


@pytest.mark.asyncio
async def test_any_path_ending_in_messages_is_the_messages_api() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        for path in ("/v1/messages", "/anthropic/eu/v1/messages", "/messages"):
            assert (await client.post(path, json=params())).status_code == 200
        missing = await client.post("/v1/complete", json=params())
        wrong_method = await client.get("/v1/messages")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert wrong_method.status_code == 405


@pytest.mark.asyncio
async def test_max_tokens_caps_output_and_sets_stop_reason() -> None:
    response = await post(create_app(), params(max_tokens=5))
    message = Message.model_validate(response.json())
    assert message.usage.output_tokens == 5
    assert message.stop_reason == "max_tokens"


@pytest.mark.asyncio
async def test_prefill_reply_continues_the_assistant_turn() -> None:
    body = params()
    body["messages"] = [
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": [{"type": "text", "text": "Once upon a time"}]},
    ]
    message = Message.model_validate((await post(create_app(), body)).json())
    text = message.content[0].text  # type: ignore[union-attr]
    assert text.startswith(" (continuing 'Once upon a time')")
    assert "Simulated reply" not in text
    assert message.usage.input_tokens == expected_tokens(15 + 16, messages=2)


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME_TOOL = {"name": "get_time", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("tool_choice", "expected_name"),
    [({"type": "any"}, "get_weather"), ({"type": "tool", "name": "get_time"}, "get_time")],
)
@pytest.mark.asyncio
async def test_forced_tool_choice_answers_with_tool_use(
    tool_choice: dict[str, str], expected_name: str
) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    response = await post(create_app(), params("Weather?", tools=tools, tool_choice=tool_choice))
    message = Message.model_validate(response.json())
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.name == expected_name
    # The input is made from the tool's input_schema, as a model fills it in.
    (tool,) = [tool for tool in tools if tool["name"] == expected_name]
    assert Draft202012Validator(tool["input_schema"]).is_valid(block.input)
    assert block.id.startswith("toolu_")
    assert message.usage.input_tokens == expected_tokens(len("Weather?") + len(compact(tools)))


@pytest.mark.asyncio
async def test_auto_tool_choice_answers_with_text() -> None:
    body = params(tools=[WEATHER_TOOL], tool_choice={"type": "auto"})
    message = Message.model_validate((await post(create_app(), body)).json())
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"


# -- images -----------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"


def jpeg(width: int, height: int) -> bytes:
    # A large APP1 (EXIF) segment pushes the frame header past the first decoded kilobyte.
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 4000) + b"\0" * 4000
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\0" * 9
    return b"\xff\xd8" + app1 + sof0 + b"\xff\xd9"


def webp(chunk_name: bytes, payload: bytes) -> bytes:
    chunk = chunk_name + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_vp8(width: int, height: int) -> bytes:
    return webp(b"VP8 ", b"\0\0\0\x9d\x01\x2a" + struct.pack("<HH", width, height))


def webp_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    return webp(b"VP8L", b"\x2f" + bits.to_bytes(4, "little"))


def webp_vp8x(width: int, height: int) -> bytes:
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return webp(b"VP8X", b"\0\0\0\0" + size)


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [(200, 200, 64), (1000, 1000, 1296), (1920, 1080, 1560), (1075, 1520, 1551), (3000, 100, 112)],
)
def test_image_tokens_follow_anthropics_documented_examples(
    width: int, height: int, tokens: int
) -> None:
    assert image_tokens(width, height) == tokens


@pytest.mark.parametrize(
    ("media_type", "data", "tokens"),
    [
        ("image/png", png(200, 200), 64),
        ("image/gif", gif(1000, 1000), 1296),
        ("image/jpeg", jpeg(1920, 1080), 1560),
        ("image/webp", webp_vp8(1075, 1520), 1551),
        ("image/webp", webp_vp8l(28, 56), 2),
        ("image/webp", webp_vp8x(3000, 100), 112),
        ("image/png", b"not an image at all", 1000),
    ],
)
@pytest.mark.asyncio
async def test_image_input_tokens_come_from_the_image_header(
    media_type: str, data: bytes, tokens: int
) -> None:
    source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    content = [{"type": "text", "text": "Describe"}, {"type": "image", "source": source}]
    body = params()
    body["messages"] = [{"role": "user", "content": content}]
    message = Message.model_validate((await post(create_app(), body)).json())
    assert message.usage.input_tokens == expected_tokens(len("Describe"), images=tokens)


# -- validation -------------------------------------------------------------------------------

USER_TURN = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("raw", "message_part"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({"max_tokens": 5, "messages": USER_TURN}).encode(), "model: Field required"),
        (json.dumps({"model": MODEL, "messages": USER_TURN}).encode(), "max_tokens: Field"),
        (json.dumps(params(max_tokens=0)).encode(), "greater than or equal to 1"),
        (json.dumps({**params(), "max_tokens": "10"}).encode(), "valid integer"),
        (json.dumps({**params(), "max_tokens": True}).encode(), "valid integer"),
        (json.dumps({"model": MODEL, "max_tokens": 5}).encode(), "messages: Field required"),
        (json.dumps({**params(), "messages": []}).encode(), "at least one message"),
        (json.dumps({**params(), "messages": "hi"}).encode(), "valid list"),
        (json.dumps(params(stream="yes")).encode(), "stream: Input should be a valid boolean"),
    ],
)
@pytest.mark.asyncio
async def test_invalid_requests_get_invalid_request_error(raw: bytes, message_part: str) -> None:
    async with simulator_client(create_app()) as client:
        response = await client.post("/v1/messages", content=raw)
    assert response.status_code == 400
    error = ErrorResponse.model_validate(response.json())
    assert error.error.type == "invalid_request_error"
    assert message_part in error.error.message
    assert error.request_id == response.headers["request-id"]


# -- count_tokens -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_count_tokens_matches_message_usage() -> None:
    app = create_app()
    body = params("Count these tokens, please.", system="Be brief.", tools=[WEATHER_TOOL])
    count_body = {key: value for key, value in body.items() if key != "max_tokens"}
    async with simulator_client(app) as client:
        message = Message.model_validate((await client.post("/v1/messages", json=body)).json())
        counted = await client.post("/anthropic/us/v1/messages/count_tokens", json=count_body)
        invalid = await client.post("/v1/messages/count_tokens", json={"model": MODEL})
    assert MessageTokensCount.model_validate(counted.json()).input_tokens == (
        message.usage.input_tokens
    )
    assert invalid.status_code == 400
    assert app.stats.count_tokens_received == 2
    assert app.stats.received == 1


# -- directives -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_status_directive_fails_the_first_n_receptions_of_that_body() -> None:
    app = create_app()
    body = params("flaky [[sim:status=500:times=2]]")
    async with simulator_client(app) as client:
        statuses = [(await client.post("/v1/messages", json=body)).status_code for _ in range(3)]
        other = await client.post("/v1/messages", json=params("flaky [[sim:status=500:times=2]]!"))
    assert statuses == [500, 500, 200]
    assert other.status_code == 500  # another body has its own count
    assert app.stats.duplicate_receptions == 2
    assert app.stats.distinct_bodies == 2


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (408, "api_error"),
        (409, "conflict_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (500, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
@pytest.mark.asyncio
async def test_status_directive_uses_anthropics_error_type(status: int, error_type: str) -> None:
    response = await post(create_app(), params(f"[[sim:status={status}]]"))
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert body["request_id"] == response.headers["request-id"]
    if error_type not in ("conflict_error", "request_too_large"):  # newer than the SDK's types
        ErrorResponse.model_validate(body)


@pytest.mark.asyncio
async def test_429_directive_sends_retry_after_unless_it_is_the_spend_cap() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        default = await client.post("/v1/messages", json=params("[[sim:status=429]]"))
        chosen = await client.post("/v1/messages", json=params("[[sim:status=429:retry_after=7]]"))
        spend = await client.post("/v1/messages", json=params("[[sim:status=429:spend_limit=1]]"))
    assert default.headers["retry-after"] == "1"
    assert chosen.headers["retry-after"] == "7"
    assert "retry-after" not in spend.headers
    assert spend.json()["error"]["type"] == "rate_limit_error"
    assert spend.json()["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}


@pytest.mark.asyncio
async def test_echo_key_directive_quotes_the_presented_key_in_the_error() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        echoed = await client.post(
            "/v1/messages",
            json=params("[[sim:status=401:echo_key=1]]"),
            headers={"x-api-key": "sk-echo-me"},
        )
    assert echoed.status_code == 401
    assert echoed.json()["error"]["message"].endswith("(API key presented: sk-echo-me)")


@pytest.mark.asyncio
async def test_should_retry_directive_sets_the_header_on_errors_only() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        no = await client.post("/v1/messages", json=params("[[sim:status=503:should_retry=false]]"))
        yes = await client.post("/v1/messages", json=params("[[sim:status=400:should_retry=true]]"))
        ok = await client.post("/v1/messages", json=params("[[sim:should_retry=false]]"))
    assert no.headers["x-should-retry"] == "false"
    assert yes.headers["x-should-retry"] == "true"
    assert ok.status_code == 200 and "x-should-retry" not in ok.headers


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_hang_directive_never_answers_until_the_client_gives_up() -> None:
    app = create_app()
    loop = asyncio.get_running_loop()
    body = params("[[sim:hang=1:times=1]]")
    async with simulator_client(app) as client:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.post("/v1/messages", json=body), timeout=30)
        assert loop.time() == pytest.approx(30)
        retried = await client.post("/v1/messages", json=body)
    assert retried.status_code == 200
    assert app.stats.by_status == {"hang": 1, "200": 1}


@pytest.mark.asyncio
async def test_malformed_and_not_message_directives_answer_200_with_unusable_bodies() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        malformed = await client.post("/v1/messages", json=params("[[sim:malformed=1]]"))
        not_message = await client.post("/v1/messages", json=params("[[sim:not_message=1]]"))
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    assert not_message.status_code == 200
    assert not_message.json() == {"ok": True}


@pytest.mark.asyncio
async def test_cut_directive_in_process_delivers_half_a_body() -> None:
    app = create_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://simulator") as client:
        response = await client.post("/v1/messages", json=params("[[sim:cut=1]]"))
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert app.stats.by_status == {"cut": 1}


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_output_tokens_and_latency_directives() -> None:
    loop = asyncio.get_running_loop()
    app = create_app(SimulatorConfig(latency_s=100.0))
    async with simulator_client(app) as client:
        start = loop.time()
        response = await client.post(
            "/v1/messages", json=params("[[sim:output_tokens=7:latency=2.5]]")
        )
        assert loop.time() - start == pytest.approx(2.5)
    message = Message.model_validate(response.json())
    assert message.usage.output_tokens == 7
    assert len(message.content[0].text) == 4 * 7  # type: ignore[union-attr]
    assert "[[sim:" not in message.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("directive", "message_part"),
    [
        ("[[sim:sttaus=500]]", "unknown simulator directive key 'sttaus'"),
        ("[[sim:times=x]]", "times"),
    ],
)
@pytest.mark.asyncio
async def test_bad_directive_is_a_400_naming_it(directive: str, message_part: str) -> None:
    response = await post(create_app(), params(directive))
    assert response.status_code == 400
    assert message_part in response.json()["error"]["message"]


@pytest.mark.asyncio
async def test_directives_are_read_from_the_system_prompt_too() -> None:
    response = await post(create_app(), params(system="[[sim:status=529]]"))
    assert response.status_code == 529


# -- latency and random faults ----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_latency_is_fixed_plus_per_output_token_in_loop_time() -> None:
    loop = asyncio.get_running_loop()
    slow = create_app(SimulatorConfig(latency_s=1.5, latency_per_output_token_s=0.01))
    async with simulator_client(slow) as client:
        await client.post("/v1/messages", json=params())
    assert loop.time() == pytest.approx(1.5 + 0.01 * 40)
    async with simulator_client(create_app()) as client:
        await client.post("/v1/messages", json=params())
    assert loop.time() == pytest.approx(1.9)


async def _statuses_with_random_faults(seed: int) -> list[str]:
    config = SimulatorConfig(
        faults=FaultRates(error_500=0.3, overloaded_529=0.2, malformed=0.1), seed=seed
    )
    app = create_app(config)
    outcomes = []
    async with simulator_client(app) as client:
        for index in range(60):
            response = await client.post("/v1/messages", json=params(f"request {index}"))
            try:
                response.json()
                outcomes.append(str(response.status_code))
            except json.JSONDecodeError:
                outcomes.append("malformed")
    return outcomes


@pytest.mark.asyncio
async def test_random_faults_are_reproducible_with_a_seed() -> None:
    first = await _statuses_with_random_faults(seed=7)
    assert first == await _statuses_with_random_faults(seed=7)
    assert {"200", "500", "529", "malformed"} <= set(first)


def test_config_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="sum to at most 1"):
        FaultRates(error_500=0.7, hang=0.5)
    with pytest.raises(ValueError, match="rpm"):
        ModelLimits(rpm=0)
    with pytest.raises(ValueError, match="burst_s"):
        ModelLimits(rpm=10, burst_s=0)


def test_from_options_applies_limits_to_every_model() -> None:
    config = SimulatorConfig.from_options(rpm=500, tpm=60_000, latency_s=0.2, error_500=0.01)
    assert config.limits == {"*": ModelLimits(rpm=500, tpm=60_000)}
    assert config.limits_for("any-model") == ModelLimits(rpm=500, tpm=60_000)
    assert config.faults.error_500 == 0.01
    assert SimulatorConfig.from_options().limits == {}
    assert API_KEY not in repr(SimulatorConfig(required_api_key=API_KEY))


# -- rate limits ------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_rpm_bucket_allows_the_burst_then_refills_continuously() -> None:
    app = create_app(SimulatorConfig(limits={"*": ModelLimits(rpm=60, burst_s=2)}))
    loop = asyncio.get_running_loop()
    admitted: list[float] = []
    retry_afters: set[str] = set()
    async with simulator_client(app) as client:
        for _ in range(40):  # one request every 0.25 s for 10 s
            response = await client.post("/v1/messages", json=params())
            if response.status_code == 200:
                admitted.append(loop.time())
            else:
                assert response.status_code == 429
                assert response.json()["error"]["type"] == "rate_limit_error"
                assert "60 requests per minute" in response.json()["error"]["message"]
                retry_afters.add(response.headers["retry-after"])
            await asyncio.sleep(0.25)
    # Two at once (2 s of burst), then one per second as the bucket refills at 1/s.
    assert admitted == pytest.approx([0.0, 0.25, *range(1, 10)])
    assert retry_afters == {"1"}
    assert app.stats.by_status == {"200": 11, "429": 29}


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_waiting_for_retry_after_is_exactly_enough() -> None:
    # Capacity 1 request, refilled at one per 10 s.
    app = create_app(SimulatorConfig(limits={"*": ModelLimits(rpm=6, burst_s=10)}))
    async with simulator_client(app) as client:
        assert (await client.post("/v1/messages", json=params())).status_code == 200
        rejected = await client.post("/v1/messages", json=params())
        assert rejected.status_code == 429
        assert rejected.headers["retry-after"] == "10"
        await asyncio.sleep(9.5)
        early = await client.post("/v1/messages", json=params())
        assert (early.status_code, early.headers["retry-after"]) == (429, "1")
        await asyncio.sleep(0.5)
        assert (await client.post("/v1/messages", json=params())).status_code == 200


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_tpm_bucket_counts_input_plus_output_tokens() -> None:
    config = SimulatorConfig(limits={"*": ModelLimits(tpm=600)}, output_tokens=45)
    app = create_app(config)
    body = params("x" * 44)  # 11 + 4 input tokens, 45 output: 60 tokens per request
    async with simulator_client(app) as client:
        first = [await client.post("/v1/messages", json=body) for _ in range(11)]
        assert [response.status_code for response in first] == [200] * 10 + [429]
        rejected = first[-1]
        assert "600 tokens per minute" in rejected.json()["error"]["message"]
        assert rejected.headers["retry-after"] == "6"  # 60 tokens at 10 per second
        assert rejected.headers["anthropic-ratelimit-tokens-remaining"] == "0"
        await asyncio.sleep(6)
        assert (await client.post("/v1/messages", json=body)).status_code == 200
    assert app.stats.input_tokens_total == 11 * 15
    assert app.stats.output_tokens_total == 11 * 45


@pytest.mark.parametrize(("otpm_counts", "admitted"), [("actual", 25), ("max_tokens", 13)])
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_otpm_counts_actual_output_or_reserves_max_tokens(
    otpm_counts: str, admitted: int
) -> None:
    # 1000 output tokens; each reply is 40. "actual" admits while the bucket is not empty;
    # "max_tokens" needs 500 free before each request and refunds the unused 460.
    config = SimulatorConfig(limits={"*": ModelLimits(otpm=1000)}, otpm_counts=otpm_counts)  # type: ignore[arg-type]
    app = create_app(config)
    async with simulator_client(app) as client:
        statuses = [
            (await client.post("/v1/messages", json=params(max_tokens=500))).status_code
            for _ in range(30)
        ]
    assert statuses == [200] * admitted + [429] * (30 - admitted)


@pytest.mark.parametrize(("tpm_counts", "charged_output"), [("actual", 40), ("max_tokens", 500)])
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_tpm_counts_actual_output_or_max_tokens_never_reconciled(
    tpm_counts: str, charged_output: int
) -> None:
    # Replies of 40 tokens against max_tokens 500: "max_tokens" keeps all 500 charged.
    config = SimulatorConfig(limits={"*": ModelLimits(tpm=10_000)}, tpm_counts=tpm_counts)  # type: ignore[arg-type]
    app = create_app(config)
    async with simulator_client(app) as client:
        first = await client.post("/v1/messages", json=params(max_tokens=500))
        second = await client.post("/v1/messages", json=params(max_tokens=500))
    input_tokens = first.json()["usage"]["input_tokens"]
    assert first.json()["usage"]["output_tokens"] == 40
    for response, count in ((first, 1), (second, 2)):
        left = int(response.headers["anthropic-ratelimit-tokens-remaining"])
        assert left == 10_000 - count * (input_tokens + charged_output)


@pytest.mark.parametrize("admit_after_latency", [False, True])
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_admit_after_latency_charges_when_the_answer_is_ready(
    admit_after_latency: bool,
) -> None:
    # Two requests a second apart, answered 2 s after each arrives. Charged on arrival, the
    # first answer's -remaining already shows the second; charged when the answer is ready
    # (llmock's way), it shows the first alone.
    config = SimulatorConfig(
        limits={"*": ModelLimits(tpm=6_000)},
        latency_s=2.0,
        output_tokens=1_000,
        admit_after_latency=admit_after_latency,
    )
    app = create_app(config)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def second() -> httpx.Response:
        await asyncio.sleep(1.0)
        return await client.post("/v1/messages", json=params(max_tokens=1_000))

    async with simulator_client(app) as client:
        first, later = await asyncio.gather(
            client.post("/v1/messages", json=params(max_tokens=1_000)), second()
        )
    assert (first.status_code, later.status_code) == (200, 200)
    assert loop.time() - started == pytest.approx(3.0)
    charged = first.json()["usage"]["input_tokens"] + 1_000
    left = int(first.headers["anthropic-ratelimit-tokens-remaining"])
    if admit_after_latency:
        assert left == 6_000 - charged
    else:
        assert left < 6_000 - 1.5 * charged


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_request_larger_than_the_bucket_is_never_admitted() -> None:
    app = create_app(SimulatorConfig(limits={"*": ModelLimits(itpm=100)}))
    body = params("y" * 404)  # 105 input tokens > 100
    async with simulator_client(app) as client:
        first = await client.post("/v1/messages", json=body)
        await asyncio.sleep(int(first.headers["retry-after"]))
        second = await client.post("/v1/messages", json=body)
    for response in (first, second):
        assert response.status_code == 429
        assert "can never be admitted" in response.json()["error"]["message"]
    assert first.headers["retry-after"] == "60"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_ratelimit_headers_describe_every_bucket() -> None:
    limits = ModelLimits(rpm=100, itpm=10_000, otpm=2_000, tpm=5_000)
    app = create_app(SimulatorConfig(limits={MODEL: limits}))
    wall_before = datetime.now(UTC).replace(microsecond=0)
    async with simulator_client(app) as client:
        response = await client.post("/v1/messages", json=params())
        unlimited = await client.post("/v1/messages", json={**params(), "model": "other-model"})
    usage = response.json()["usage"]
    headers = response.headers
    expected = {
        "requests": (100, 99),
        "input-tokens": (10_000, 10_000 - usage["input_tokens"]),
        "output-tokens": (2_000, 2_000 - usage["output_tokens"]),
        # The most restrictive token bucket is the output one.
        "tokens": (2_000, 2_000 - usage["output_tokens"]),
    }
    for name, (limit, remaining) in expected.items():
        prefix = f"anthropic-ratelimit-{name}-"
        assert int(headers[prefix + "limit"]) == limit
        assert int(headers[prefix + "remaining"]) == remaining
        # Full again within a second or two of loop time, mapped to wall time.
        reset = datetime.fromisoformat(headers[prefix + "reset"])
        assert 0 <= (reset - wall_before).total_seconds() <= 5
    assert not any(name.startswith("anthropic-ratelimit") for name in unlimited.headers)


@pytest.mark.parametrize(
    ("send_ratelimit_headers", "send_retry_after"), [(False, True), (True, False)]
)
@pytest.mark.asyncio
async def test_ratelimit_headers_and_retry_after_can_be_switched_off(
    send_ratelimit_headers: bool, send_retry_after: bool
) -> None:
    config = SimulatorConfig(
        limits={"*": ModelLimits(rpm=1)},
        send_ratelimit_headers=send_ratelimit_headers,
        send_retry_after=send_retry_after,
    )
    async with simulator_client(create_app(config)) as client:
        await client.post("/v1/messages", json=params())
        rejected = await client.post("/v1/messages", json=params())
    assert rejected.status_code == 429
    assert ("retry-after" in rejected.headers) is send_retry_after
    has_ratelimit = "anthropic-ratelimit-requests-limit" in rejected.headers
    assert has_ratelimit is send_ratelimit_headers


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_required_api_key_accepts_x_api_key_or_bearer_and_never_echoes_it() -> None:
    app = create_app(SimulatorConfig(required_api_key=API_KEY))
    async with simulator_client(app) as client:
        missing = await client.post("/v1/messages", json=params())
        wrong = await client.post("/v1/messages", json=params(), headers={"x-api-key": "nope"})
        by_header = await client.post(
            "/v1/messages",
            json=params(),
            headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
        )
        by_bearer = await client.post(
            "/v1/messages", json=params(), headers={"authorization": f"Bearer {API_KEY}"}
        )
        counted = await client.post(
            "/v1/messages/count_tokens", json={"model": MODEL, "messages": USER_TURN}
        )
    assert [missing.status_code, wrong.status_code, counted.status_code] == [401, 401, 401]
    assert missing.json()["error"]["type"] == "authentication_error"
    assert [by_header.status_code, by_bearer.status_code] == [200, 200]
    logged = [entry.headers for entry in app.stats.log]
    assert [headers["auth_scheme"] for headers in logged] == [
        "none",
        "x-api-key",
        "x-api-key",
        "bearer",
        "none",
    ]
    key_prefix = hashlib.sha256(API_KEY.encode()).hexdigest()[:12]
    assert logged[2]["api_key_sha256_prefix"] == key_prefix
    assert logged[2]["anthropic-version"] == "2023-06-01"
    everything = app.stats.to_json() + "".join(
        response.text for response in (missing, wrong, by_header, by_bearer, counted)
    )
    assert API_KEY not in everything


# -- stats ------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stats_count_statuses_duplicates_models_and_tokens() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        await client.post("/v1/messages", json=params("one"))
        await client.post("/v1/messages", json=params("one"))
        await asyncio.sleep(1.5)
        await client.post("/v1/messages", json={**params("two"), "model": "claude-other"})
        await client.post("/v1/messages", content=b"garbage")
        await client.post("/v1/messages", json=params("[[sim:status=529]]"))
        over_http = SimulatorStats.from_dict((await client.get("/_simulator/stats")).json())
        stats = app.stats
        assert stats.received == 5
        assert stats.by_status == {"200": 3, "400": 1, "529": 1}
        assert (stats.distinct_bodies, stats.duplicate_receptions) == (4, 1)
        assert stats.per_model == {MODEL: 3, "claude-other": 1}
        one_tokens = expected_tokens(3)
        assert stats.input_tokens_total == 2 * one_tokens + expected_tokens(3)
        assert stats.output_tokens_total == 3 * 40
        assert stats.admitted_by_second == {0: [2, 2 * one_tokens, 80], 1: [1, one_tokens, 40]}
        assert [entry.status for entry in stats.log] == ["200", "200", "200", "400", "529"]
        assert stats.log[0].body_sha256 == stats.log[1].body_sha256
        assert stats.log[2].loop_time == pytest.approx(1.5)
        assert stats.log[0].headers["content-type"] == "application/json"
        assert over_http.to_dict() == stats.to_dict()

        reset = await client.post("/_simulator/reset")
        assert reset.json() == {"ok": True}
    assert app.stats.received == 0 and not app.stats.log


@pytest.mark.asyncio
async def test_reset_restarts_directive_counts() -> None:
    app = create_app()
    body = params("[[sim:status=500:times=1]]")
    async with simulator_client(app) as client:
        first = await client.post("/v1/messages", json=body)
        await client.post("/_simulator/reset")
        again = await client.post("/v1/messages", json=body)
    assert (first.status_code, again.status_code) == (500, 500)


def test_log_keeps_only_the_last_log_size_requests() -> None:
    async def run() -> SimulatorStats:
        app = create_app(SimulatorConfig(log_size=3))
        async with simulator_client(app) as client:
            for index in range(5):
                await client.post("/v1/messages", json=params(f"#{index}"))
        return app.stats

    stats = asyncio.run(run())
    assert stats.received == 5 and len(stats.log) == 3


# -- the socket server ------------------------------------------------------------------------


def test_socket_server_serves_the_anthropic_sdk_and_stats() -> None:
    config = SimulatorConfig(limits={"*": ModelLimits(rpm=1000)}, required_api_key=API_KEY)
    with running_simulator(config) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        sdk = anthropic.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0)
        with sdk:
            message = sdk.messages.create(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
            )
            counted = sdk.messages.count_tokens(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}]
            )
            with pytest.raises(anthropic.InternalServerError):
                sdk.messages.create(
                    model=MODEL,
                    max_tokens=64,
                    messages=[{"role": "user", "content": "[[sim:status=500]]"}],
                )
        stats = httpx.get(f"{base_url}/_simulator/stats").json()
    assert message.usage.input_tokens == counted.input_tokens == expected_tokens(2)
    assert stats["received"] == 2
    assert stats["by_status"] == {"200": 1, "500": 1}
    assert stats["log"][0]["headers"]["anthropic-version"]  # whatever this SDK version sends
    assert stats["log"][0]["headers"]["auth_scheme"] in ("x-api-key", "bearer")


def test_socket_server_cuts_and_hangs_like_a_broken_network() -> None:
    with running_simulator() as base_url, httpx.Client(base_url=base_url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/v1/messages", json=params("[[sim:cut=1:times=1]]"))
        assert client.post("/v1/messages", json=params("[[sim:cut=1:times=1]]")).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/messages", json=params("[[sim:hang=1]]"), timeout=0.2)
        stats = client.get("/_simulator/stats").json()
    assert stats["by_status"] == {"cut": 1, "200": 1, "hang": 1}
