"""The transport against the hostile server: every answer ends as one Outcome for its one
request, never as an exception, a hang or a memory blow-up."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from anthropic.types import Message

from batchrun.records import Fatal, Outcome, Retryable, Succeeded, Usage
from batchrun.transport.auth import REDACTED
from batchrun.transport.classify import MAX_WAIT_S
from batchrun.transport.endpoints import auth_headers, builtin_endpoints
from batchrun.transport.http import create_http_client
from batchrun.transport.messages import MessagesClient
from tests.hostile import HostileServer, running_hostile_server

pytestmark = pytest.mark.asyncio

KEY = "sk-hostile-KEY-0123456789"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with running_hostile_server() as server:
        yield server


def body(mode: str) -> str:
    return json.dumps(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": f"hi <<hostile:{mode}>>"}],
        }
    )


async def send(
    server: HostileServer, mode: str, *, timeout_s: float = 10.0, max_bytes: int | None = None
) -> Outcome:
    env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": KEY}
    endpoint = builtin_endpoints(env)["anthropic"]
    async with create_http_client(timeout_s=timeout_s, max_connections=2) as http:
        client = MessagesClient(
            http,
            endpoint=endpoint,
            headers=auth_headers(endpoint, env),
            timeout_s=timeout_s,
            **({"max_response_bytes": max_bytes} if max_bytes else {}),
        )
        return await client.send(body(mode))


async def test_an_openai_shaped_answer_is_a_message_with_the_original_kept(
    hostile: HostileServer,
) -> None:
    outcome = await send(hostile, "openai")

    assert isinstance(outcome, Succeeded)
    message = Message.model_validate_json(outcome.body)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "hi from openai shape"  # type: ignore[union-attr]
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == (
        "end_turn",
        12,
        4,
    )
    assert outcome.usage == Usage(12, 4)
    assert outcome.raw_body is not None and json.loads(outcome.raw_body)["object"] == (
        "chat.completion"
    )


async def test_foreign_json_is_final_at_once_and_kept(hostile: HostileServer) -> None:
    outcome = await send(hostile, "foreign")

    assert isinstance(outcome, Fatal)
    assert "JSON, but not a Message" in outcome.error["error"]["message"]
    assert outcome.raw_body == '{"hello": "world"}'


async def test_a_body_that_is_not_json_is_worth_one_more_try(hostile: HostileServer) -> None:
    outcome = await send(hostile, "not_json")

    assert isinstance(outcome, Retryable)
    assert outcome.at_most_once
    assert outcome.raw_body == '{"type": "message", "content": ['


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("deep", "nested too deep"),
        ("usage_2_63", "more than 2,147,483,647 tokens"),
        ("usage_2_31", "more than 2,147,483,647 tokens"),
    ],
)
async def test_poisoned_answers_end_their_request_with_the_answer_kept(
    hostile: HostileServer, mode: str, why: str
) -> None:
    outcome = await send(hostile, mode)

    assert isinstance(outcome, Fatal)
    assert why in outcome.error["error"]["message"]
    assert outcome.raw_body


async def test_negative_usage_is_counted_as_zero_and_the_original_kept(
    hostile: HostileServer,
) -> None:
    outcome = await send(hostile, "negative_usage")

    assert isinstance(outcome, Succeeded)
    assert outcome.usage == Usage(10, 0)
    assert json.loads(outcome.body)["usage"]["output_tokens"] == 0
    assert outcome.raw_body is not None and '"output_tokens": -5' in outcome.raw_body


@pytest.mark.parametrize("mode", ["retry_after_huge", "retry_after_ms_huge", "reset_9999"])
async def test_an_absurd_wait_is_shortened_to_a_day(hostile: HostileServer, mode: str) -> None:
    outcome = await send(hostile, mode)

    assert isinstance(outcome, Retryable)
    assert outcome.retry_after_s is not None
    assert 0 < outcome.retry_after_s <= MAX_WAIT_S


async def test_the_timeout_bounds_a_body_that_drips(hostile: HostileServer) -> None:
    hostile.drip_interval_s = 0.5
    started = time.monotonic()

    outcome = await send(hostile, "drip", timeout_s=2.0)

    assert isinstance(outcome, Retryable)
    assert outcome.reason == "no complete answer within 2 s (timeout_s)"
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("mode", ["endless", "gzip_bomb", "oversized"])
async def test_an_answer_over_the_size_cap_is_cut_off_in_bounded_memory(
    hostile: HostileServer, mode: str
) -> None:
    tracemalloc.start()
    try:
        outcome = await send(hostile, mode, max_bytes=4 * 1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert isinstance(outcome, Fatal)
    assert "was larger than 4,194,304 bytes" in outcome.error["error"]["message"]
    assert outcome.raw_body is not None and len(outcome.raw_body) <= 64 * 1024
    # The 300 MB bomb and the endless body never sit in memory.
    assert peak < 100 * 1024 * 1024


async def test_a_key_echoed_in_headers_and_body_is_cut_out(hostile: HostileServer) -> None:
    outcome = await send(hostile, "echo_key")

    assert isinstance(outcome, Succeeded)
    assert outcome.request_id == REDACTED
    assert KEY not in outcome.body
    assert f"your key is {REDACTED}" in outcome.body
    assert hostile.log[-1].headers["user-agent"].startswith("batchrun/")
