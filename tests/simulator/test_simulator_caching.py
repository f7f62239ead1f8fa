"""The simulator's prompt caching: breakpoints, reads and writes, TTLs, the minimum size,
the ITPM rule, and caching inside batches (waves).

Expected token counts come from the simulator's documented formula (⌈characters / 4⌉ + 4 per
message), computed here, not from its code. Everything runs in virtual time (``looptime``).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from anthropic.types import Message

from batchrun.simulator import ModelLimits, SimulatorApp, SimulatorConfig, create_app

MODEL = "claude-sim-1"
# 8,000 characters: a 2,000-token prefix, over the default minimum of 1,024.
LONG_SYSTEM = "You are a careful assistant. " * 275 + "x" * 25
SYSTEM_TOKENS = 2000
EPHEMERAL = {"type": "ephemeral"}


@asynccontextmanager
async def simulator_client(app: SimulatorApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://simulator") as client:
        yield client


def cached_params(
    question: str = "Hello", *, system: str = LONG_SYSTEM, ttl: str | None = None
) -> dict[str, Any]:
    control: dict[str, str] = {"type": "ephemeral"} if ttl is None else {**EPHEMERAL, "ttl": ttl}
    return {
        "model": MODEL,
        "max_tokens": 50,
        "system": [{"type": "text", "text": system, "cache_control": control}],
        "messages": [{"role": "user", "content": question}],
    }


def total_tokens(system: str, question: str, messages: int = 1) -> int:
    return math.ceil((len(system) + len(question)) / 4) + 4 * messages


async def usage_of(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


def test_the_long_system_prompt_is_the_size_the_tests_assume() -> None:
    assert len(LONG_SYSTEM) == 4 * SYSTEM_TOKENS


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_first_request_writes_the_prefix_and_a_later_one_reads_it() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        first = await usage_of(client, cached_params("Hello"))
        second = await usage_of(client, cached_params("Another question"))
    assert first["cache_creation_input_tokens"] == SYSTEM_TOKENS
    assert first["cache_read_input_tokens"] == 0
    assert first["cache_creation"] == {
        "ephemeral_5m_input_tokens": SYSTEM_TOKENS,
        "ephemeral_1h_input_tokens": 0,
    }
    assert first["input_tokens"] == total_tokens(LONG_SYSTEM, "Hello") - SYSTEM_TOKENS
    assert second["cache_read_input_tokens"] == SYSTEM_TOKENS
    assert second["cache_creation_input_tokens"] == 0
    assert second["input_tokens"] == total_tokens(LONG_SYSTEM, "Another question") - SYSTEM_TOKENS
    Message.model_validate({**_message_shell(), "usage": second})
    assert app.stats.cache_creation_input_tokens_total == SYSTEM_TOKENS
    assert app.stats.cache_read_input_tokens_total == SYSTEM_TOKENS


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_concurrent_requests_all_miss_because_a_write_is_readable_only_once_answered() -> (
    None
):
    app = create_app(SimulatorConfig(latency_s=1.0))
    async with simulator_client(app) as client:
        together = await asyncio.gather(
            *(usage_of(client, cached_params(f"question {i}")) for i in range(3))
        )
        after = await usage_of(client, cached_params("later"))
    assert [usage["cache_creation_input_tokens"] for usage in together] == [SYSTEM_TOKENS] * 3
    assert [usage["cache_read_input_tokens"] for usage in together] == [0] * 3
    assert after["cache_read_input_tokens"] == SYSTEM_TOKENS


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_entry_lives_five_minutes_from_its_last_use() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        await usage_of(client, cached_params("write at 0"))
        await asyncio.sleep(299)
        refreshed = await usage_of(client, cached_params("read at 299"))
        await asyncio.sleep(299)
        still = await usage_of(client, cached_params("read at 598"))
        await asyncio.sleep(301)
        expired = await usage_of(client, cached_params("miss at 899"))
    assert refreshed["cache_read_input_tokens"] == SYSTEM_TOKENS
    assert still["cache_read_input_tokens"] == SYSTEM_TOKENS
    assert expired["cache_read_input_tokens"] == 0
    assert expired["cache_creation_input_tokens"] == SYSTEM_TOKENS


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_one_hour_breakpoint_outlives_five_minutes_but_not_an_hour() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        written = await usage_of(client, cached_params("write", ttl="1h"))
        await asyncio.sleep(1800)
        read = await usage_of(client, cached_params("read", ttl="1h"))
        await asyncio.sleep(3601)
        missed = await usage_of(client, cached_params("miss", ttl="1h"))
    assert written["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": SYSTEM_TOKENS,
    }
    assert read["cache_read_input_tokens"] == SYSTEM_TOKENS
    assert missed["cache_read_input_tokens"] == 0
    assert missed["cache_creation"]["ephemeral_1h_input_tokens"] == SYSTEM_TOKENS


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_prefixes_under_the_minimum_are_neither_written_nor_read() -> None:
    short = "Be brief. " * 100  # 1,000 characters: 250 tokens
    async with simulator_client(create_app()) as client:
        uncached = [await usage_of(client, cached_params(q, system=short)) for q in ("a", "b")]
    async with simulator_client(create_app(SimulatorConfig(cache_min_tokens=200))) as client:
        cached = [await usage_of(client, cached_params(q, system=short)) for q in ("a", "b")]
    for usage in uncached:
        assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
        assert usage["input_tokens"] == total_tokens(short, "a")
    assert cached[0]["cache_creation_input_tokens"] == 250
    assert cached[1]["cache_read_input_tokens"] == 250


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_breakpoints_in_tools_system_and_messages_read_the_longest_cached_prefix() -> None:
    tool = {
        "name": "lookup",
        "description": "d" * 4400,
        "input_schema": {"type": "object"},
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }

    def body(document: str, question: str) -> dict[str, Any]:
        return {
            "model": MODEL,
            "max_tokens": 20,
            "tools": [tool],
            "system": [{"type": "text", "text": LONG_SYSTEM, "cache_control": EPHEMERAL}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": document, "cache_control": EPHEMERAL},
                        {"type": "text", "text": question},
                    ],
                }
            ],
        }

    tools_tokens = math.ceil(len(_compact([tool])) / 4)
    system_prefix = math.ceil((len(_compact([tool])) + len(LONG_SYSTEM)) / 4)
    doc_a, doc_b = "A" * 6000, "B" * 6000
    document_prefix = math.ceil((len(_compact([tool])) + len(LONG_SYSTEM) + 6000) / 4) + 4
    async with simulator_client(create_app()) as client:
        first = await usage_of(client, body(doc_a, "q1"))
        same_document = await usage_of(client, body(doc_a, "q2"))
        other_document = await usage_of(client, body(doc_b, "q3"))
    assert first["cache_read_input_tokens"] == 0
    assert first["cache_creation"] == {
        "ephemeral_1h_input_tokens": tools_tokens,
        "ephemeral_5m_input_tokens": document_prefix - tools_tokens,
    }
    assert same_document["cache_read_input_tokens"] == document_prefix
    assert same_document["cache_creation_input_tokens"] == 0
    assert other_document["cache_read_input_tokens"] == system_prefix
    assert other_document["cache_creation_input_tokens"] == document_prefix - system_prefix


@pytest.mark.parametrize(
    ("control", "message_part"),
    [
        ({"type": "persistent"}, "system.0.cache_control.type"),
        ({"type": "ephemeral", "ttl": "2h"}, "system.0.cache_control.ttl"),
        ("ephemeral", "system.0.cache_control: Input should be a valid dictionary"),
    ],
)
@pytest.mark.asyncio
async def test_a_bad_cache_control_is_a_400_naming_it(control: object, message_part: str) -> None:
    body = cached_params()
    body["system"][0]["cache_control"] = control
    async with simulator_client(create_app()) as client:
        response = await client.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert message_part in response.json()["error"]["message"]


@pytest.mark.asyncio
async def test_more_than_four_breakpoints_is_a_400() -> None:
    blocks = [{"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL} for i in range(5)]
    body = {**cached_params(), "system": blocks}
    async with simulator_client(create_app()) as client:
        response = await client.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert "maximum of 4 blocks with cache_control" in response.json()["error"]["message"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_streamed_answers_carry_the_cache_usage_in_message_start() -> None:
    async with simulator_client(create_app()) as client:
        await usage_of(client, cached_params("warm"))
        response = await client.post("/v1/messages", json={**cached_params(), "stream": True})
    start = next(
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ") and '"message_start"' in line
    )
    assert start["message"]["usage"]["cache_read_input_tokens"] == SYSTEM_TOKENS


# -- the ITPM rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "header", "output_counted"), [("itpm", "input-tokens", 0), ("tpm", "tokens", 40)]
)
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cache_reads_are_not_charged_to_the_input_token_limits_but_writes_are(
    limit: str, header: str, output_counted: int
) -> None:
    app = create_app(SimulatorConfig(limits={"*": ModelLimits(**{limit: 6000})}))
    async with simulator_client(app) as client:
        responses = [await client.post("/v1/messages", json=cached_params("Hello")) for _ in "abc"]
    total = total_tokens(LONG_SYSTEM, "Hello")
    uncached = total - SYSTEM_TOKENS
    remaining = [
        int(response.headers[f"anthropic-ratelimit-{header}-remaining"]) for response in responses
    ]
    # The first request writes the prefix (counted); the others read it (not counted). The
    # combined TPM limit counts the same input plus the 40 output tokens of each reply.
    first = total + output_counted
    later = uncached + output_counted
    assert remaining == [6000 - first, 6000 - first - later, 6000 - first - 2 * later]
    assert app.stats.admitted_by_second == {0: [3, total + 2 * uncached, 3 * 40]}
    assert app.stats.input_tokens_total == 3 * uncached


# -- caching inside batches -------------------------------------------------------------------


async def _batch_usages(app: SimulatorApp, count: int) -> list[dict[str, Any]]:
    async with simulator_client(app) as client:
        requests = [{"custom_id": f"r{i}", "params": cached_params(f"q{i}")} for i in range(count)]
        created = await client.post("/v1/messages/batches", json={"requests": requests})
        await asyncio.sleep(app.config.batch_processing_s)
        response = await client.get(f"/v1/messages/batches/{created.json()['id']}/results")
    lines = [json.loads(line) for line in response.text.splitlines()]
    return [line["result"]["message"]["usage"] for line in lines]


@pytest.mark.parametrize("processing_s", [2.0, 0.0])
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_wave_does_not_see_its_own_writes_but_later_waves_do(
    processing_s: float,
) -> None:
    app = create_app(SimulatorConfig(batch_concurrency=2, batch_processing_s=processing_s))
    usages = await _batch_usages(app, 5)
    writes = [usage for usage in usages if usage["cache_creation_input_tokens"]]
    reads = [usage for usage in usages if usage["cache_read_input_tokens"]]
    assert len(writes) == 2 and len(reads) == 3
    assert {usage["cache_read_input_tokens"] for usage in reads} == {SYSTEM_TOKENS}
    assert app.stats.cache_read_input_tokens_total == 3 * SYSTEM_TOKENS
    assert app.stats.cache_creation_input_tokens_total == 2 * SYSTEM_TOKENS


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_in_one_wave_writes_for_every_request() -> None:
    usages = await _batch_usages(create_app(), 5)
    assert [usage["cache_creation_input_tokens"] for usage in usages] == [SYSTEM_TOKENS] * 5


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_reads_what_a_realtime_request_wrote_and_the_reverse() -> None:
    app = create_app()
    async with simulator_client(app) as client:
        await usage_of(client, cached_params("warm-up in real time"))
        usages = await _batch_usages(app, 4)
        other = "Another long prompt. " * 400
        requests = [{"custom_id": "w", "params": cached_params("q", system=other)}]
        await client.post("/v1/messages/batches", json={"requests": requests})
        await asyncio.sleep(2.0)
        realtime = await usage_of(client, cached_params("after the batch", system=other))
    assert [usage["cache_read_input_tokens"] for usage in usages] == [SYSTEM_TOKENS] * 4
    assert realtime["cache_read_input_tokens"] == math.ceil(len(other) / 4)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _message_shell() -> dict[str, Any]:
    return {
        "id": "msg_x",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }


# -- the cold batch: a provider that starts late, TTLs scaled down ----------------------------

# Scaled lifetimes: 5 minutes → 3 s, 1 hour → 36 s.
TTL_SCALE = 0.01


async def _warm_then_batch(app: SimulatorApp, count: int, ttl: str | None) -> list[dict[str, Any]]:
    """A real-time request writes the prefix, then a batch of ``count`` requests sharing it
    is created at once; the usages of the batch's results."""
    async with simulator_client(app) as client:
        await usage_of(client, cached_params("the leader, in real time", ttl=ttl))
        requests = [
            {"custom_id": f"r{i}", "params": cached_params(f"q{i}", ttl=ttl)} for i in range(count)
        ]
        created = await client.post("/v1/messages/batches", json={"requests": requests})
        await asyncio.sleep(app.config.batch_start_s + app.config.batch_processing_s)
        response = await client.get(f"/v1/messages/batches/{created.json()['id']}/results")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert {line["result"]["type"] for line in lines} == {"succeeded"}
    return [line["result"]["message"]["usage"] for line in lines]


def _cold_batch_config(**changes: Any) -> SimulatorConfig:
    # The provider starts the batch 10 s (scaled: well past 5 minutes, within the hour)
    # after its creation and runs its 400 requests in parallel, as of one processing time.
    settings: dict[str, Any] = {
        "batch_start_s": 10.0,
        "batch_processing_s": 1.0,
        "batch_concurrency": 1000,
        "cache_ttl_scale": TTL_SCALE,
    }
    return SimulatorConfig(**(settings | changes))


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_run_after_the_five_minute_entry_expired_reads_nothing() -> None:
    app = create_app(_cold_batch_config())
    usages = await _warm_then_batch(app, 400, ttl=None)
    assert sum(usage["cache_read_input_tokens"] for usage in usages) == 0
    # Every request of the parallel run writes the prefix again; none sees a sibling's write.
    assert [usage["cache_creation_input_tokens"] for usage in usages] == [SYSTEM_TOKENS] * 400


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_one_hour_entry_written_before_the_wait_is_read_by_every_batch_request() -> None:
    app = create_app(_cold_batch_config())
    usages = await _warm_then_batch(app, 400, ttl="1h")
    assert [usage["cache_read_input_tokens"] for usage in usages] == [SYSTEM_TOKENS] * 400
    assert sum(usage["cache_creation_input_tokens"] for usage in usages) == 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_started_past_the_hour_reads_nothing_even_with_the_one_hour_ttl() -> None:
    app = create_app(_cold_batch_config(batch_start_s=40.0))
    usages = await _warm_then_batch(app, 20, ttl="1h")
    assert sum(usage["cache_read_input_tokens"] for usage in usages) == 0
    assert {usage["cache_creation"]["ephemeral_1h_input_tokens"] for usage in usages} == {
        SYSTEM_TOKENS
    }


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_ttl_scale_shortens_both_lifetimes() -> None:
    app = create_app(SimulatorConfig(cache_ttl_scale=TTL_SCALE))
    async with simulator_client(app) as client:
        await usage_of(client, cached_params("write 5m"))
        await usage_of(client, cached_params("write 1h", system=LONG_SYSTEM + "!", ttl="1h"))
        await asyncio.sleep(2.9)
        five_alive = await usage_of(client, cached_params("read 5m"))
        await asyncio.sleep(3.1)
        five_dead = await usage_of(client, cached_params("missed 5m", system="x" * 9000))
        await asyncio.sleep(29.0)
        hour_alive = await usage_of(
            client, cached_params("read 1h", system=LONG_SYSTEM + "!", ttl="1h")
        )
        await asyncio.sleep(36.1)
        hour_dead = await usage_of(
            client, cached_params("miss 1h", system=LONG_SYSTEM + "!", ttl="1h")
        )
    assert five_alive["cache_read_input_tokens"] == SYSTEM_TOKENS
    # Read at 2.9 s, so alive until 5.9 s; asked at 6.0 s.
    assert five_dead["cache_read_input_tokens"] == 0
    assert hour_alive["cache_read_input_tokens"] > 0
    assert hour_dead["cache_read_input_tokens"] == 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_one_hour_breakpoint_after_a_five_minute_one_is_a_400() -> None:
    body = cached_params("q")
    body["messages"] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "y" * 5000, "cache_control": {**EPHEMERAL, "ttl": "1h"}}
            ],
        }
    ]
    allowed = cached_params("q", ttl="1h")
    allowed["messages"] = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "y" * 5000, "cache_control": EPHEMERAL}],
        }
    ]
    async with simulator_client(create_app()) as client:
        refused = await client.post("/v1/messages", json=body)
        accepted = await client.post("/v1/messages", json=allowed)
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert "messages.0.content.0.cache_control.ttl" in message and "longer TTLs" in message
    assert accepted.status_code == 200, accepted.text
