"""The simulator's streamed answers (``"stream": true``), its proxy-style idle cut of slow
answers, and its fault that cuts streams midway.

The ASGI app is called directly where the timing of each piece matters (in virtual time,
``looptime``); the official SDK reads the streams on a socket.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from typing import Any

import anthropic
import httpx
import pytest

from batchrun.simulator import (
    FaultRates,
    SimulatedConnectionCut,
    SimulatedIdleCut,
    SimulatorApp,
    SimulatorConfig,
    SimulatorStats,
    create_app,
    running_simulator,
)

MODEL = "claude-sim-1"


def params(
    text: str = "Tell me a story", *, max_tokens: int = 1000, **extra: Any
) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


class Exchange:
    """One request sent straight to the ASGI app; what it sent back, and when."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.pieces: list[tuple[float, bytes]] = []
        self.ended = False

    @property
    def body(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """(event name, data) of each event of the body."""
        found = []
        for block in self.body.decode().split("\n\n"):
            if block.strip():
                lines = dict(line.split(": ", 1) for line in block.split("\n"))
                found.append((lines["event"], json.loads(lines["data"])))
        return found

    def times(self, kind: str) -> list[float]:
        """When each event of ``kind`` was sent (one event per piece)."""
        return [at for at, piece in self.pieces if piece.startswith(f"event: {kind}\n".encode())]


async def call(
    app: SimulatorApp,
    body: dict[str, Any],
    *,
    leave_after_s: float | None = None,
    exchange: Exchange | None = None,
) -> Exchange:
    """POST ``body`` to ``app`` through its ASGI interface, filling ``exchange``; the client
    leaves after ``leave_after_s`` (the next ``receive`` says so)."""
    loop = asyncio.get_running_loop()
    exchange = exchange or Exchange()
    raw = json.dumps(body).encode()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": raw, "more_body": False}
        if leave_after_s is not None:
            await asyncio.sleep(leave_after_s)
        else:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            if message.get("body"):
                exchange.pieces.append((loop.time(), message["body"]))
            exchange.ended = not message.get("more_body", False)

    scope = {"type": "http", "path": "/v1/messages", "method": "POST", "headers": []}
    await app(scope, receive, send)
    return exchange


def assembled(exchange: Exchange) -> dict[str, Any]:
    """The Message a client builds from the events (text and tool input only)."""
    message: dict[str, Any] = {}
    for kind, data in exchange.events():
        if kind == "message_start":
            message = data["message"]
        elif kind == "content_block_start":
            message["content"].append(data["content_block"])
        elif kind == "content_block_delta":
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                block["partial"] = block.get("partial", "") + delta["partial_json"]
        elif kind == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    for block in message["content"]:
        if "partial" in block:
            block["input"] = json.loads(block.pop("partial"))
    return message


# -- the event sequence -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_streamed_answer_is_the_event_sequence_of_the_messages_api() -> None:
    app = create_app(SimulatorConfig(output_tokens=100))
    exchange = await call(app, params(stream=True))

    assert exchange.status == 200 and exchange.ended
    assert exchange.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert exchange.headers["request-id"].startswith("req_")
    assert "content-length" not in exchange.headers
    kinds = [kind for kind, _ in exchange.events()]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert set(kinds[3:-3]) == {"content_block_delta"} and len(kinds[3:-3]) == 7
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == kind for kind, data in exchange.events())
    start = exchange.events()[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 1 and start["usage"]["input_tokens"] > 0
    _, message_delta = exchange.events()[-2]
    assert message_delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message_delta["usage"] == {"output_tokens": 100}


@pytest.mark.asyncio
async def test_the_events_make_up_the_unstreamed_message_for_the_same_seed() -> None:
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    bodies = [
        params("one"),
        params("two", tools=tools, tool_choice={"type": "any"}),
        params("three", max_tokens=7),
    ]
    config = SimulatorConfig(seed=3, output_tokens=50, latency_jitter_s=0.5)
    streamed_app, plain_app = create_app(config), create_app(config)
    deltas = []
    for body in bodies:
        streamed = await call(streamed_app, {**body, "stream": True})
        plain = await call(plain_app, body)
        assert assembled(streamed) == json.loads(plain.body)
        kinds = {d["delta"]["type"] for k, d in streamed.events() if k == "content_block_delta"}
        deltas.append(kinds)
    assert deltas[1] == {"input_json_delta"} and deltas[0] == deltas[2] == {"text_delta"}


@pytest.mark.asyncio
async def test_stream_false_is_answered_whole_and_a_non_boolean_stream_is_refused() -> None:
    app = create_app()
    plain = await call(app, params(stream=False))
    bad = await call(app, params(stream="yes"))
    assert plain.headers["content-type"] == "application/json"
    assert json.loads(plain.body)["type"] == "message"
    assert bad.status == 400
    assert json.loads(bad.body)["error"]["message"] == "stream: Input should be a valid boolean"


# -- time: the latency spread over the events -------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_tokens_arrive_over_the_latency_with_pings_while_waiting() -> None:
    config = SimulatorConfig(
        output_tokens=2_000, latency_s=3.5, latency_per_output_token_s=0.005, log_messages=True
    )
    app = create_app(config)
    loop = asyncio.get_running_loop()
    start = loop.time()
    exchange = await call(app, params(stream=True, max_tokens=4_000))

    assert exchange.times("message_start") == [start]
    deltas = exchange.times("content_block_delta")
    # A delta carries at least 0.1 s of tokens (21 tokens, 84 characters), not one token.
    assert len(deltas) == math.ceil(2_000 * 4 / 84)
    assert deltas[0] - start == pytest.approx(3.5 + 10.0 * 84 / 8_000)
    assert exchange.times("message_stop")[0] - start == pytest.approx(3.5 + 10.0)
    # No silence longer than the ping interval (1 s) or the spacing of the deltas.
    times = [at for at, _ in exchange.pieces]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 1.0 + 1e-9
    assert len(exchange.times("ping")) == 1 + 3  # one at the start, three while waiting
    assert app.stats.by_status == {"200": 1}
    (entry,) = app.stats.log
    assert entry.streamed and json.loads(entry.message or "") == assembled(exchange)


# -- the proxy: idle cuts ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_unstreamed_answer_slower_than_the_idle_timeout_is_cut_after_it() -> None:
    config = SimulatorConfig(latency_s=12.0, idle_timeout_s=5.0, log_messages=True)
    app = create_app(config)
    loop = asyncio.get_running_loop()
    with pytest.raises(SimulatedIdleCut):
        await call(app, params())
    assert loop.time() == pytest.approx(5.0)
    fast = await call(create_app(SimulatorConfig(latency_s=5.0, idle_timeout_s=5.0)), params())
    assert fast.status == 200
    assert app.stats.by_status == {"idle_cut": 1}
    assert app.stats.log[0].message is None


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_slow_error_answer_is_cut_too() -> None:
    app = create_app(SimulatorConfig(latency_s=12.0, idle_timeout_s=5.0))
    with pytest.raises(SimulatedIdleCut):
        await call(app, params("[[sim:status=500]]"))
    assert app.stats.by_status == {"idle_cut": 1}


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_stream_survives_the_idle_timeout_on_its_pings() -> None:
    config = SimulatorConfig(
        output_tokens=1_000, latency_s=12.0, latency_per_output_token_s=0.01, idle_timeout_s=5.0
    )
    exchange = await call(create_app(config), params(stream=True))
    assert exchange.ended and exchange.events()[-1][0] == "message_stop"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_stream_silent_longer_than_the_idle_timeout_is_cut() -> None:
    config = SimulatorConfig(latency_s=12.0, idle_timeout_s=5.0, stream_ping_interval_s=6.0)
    app = create_app(config)
    loop = asyncio.get_running_loop()
    with pytest.raises(SimulatedIdleCut):
        await call(app, params(stream=True))
    assert loop.time() == pytest.approx(5.0)
    assert app.stats.by_status == {"idle_cut": 1}


def test_on_a_socket_an_idle_cut_closes_the_connection_without_a_byte() -> None:
    config = SimulatorConfig(latency_s=1.0, idle_timeout_s=0.2)
    with running_simulator(config) as url, httpx.Client(base_url=url) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            client.post("/v1/messages", json=params())
        stats = client.get("/_simulator/stats").json()
    assert stats["by_status"] == {"idle_cut": 1}


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_stream_cut_fault_stops_after_half_the_events_and_spares_unstreamed() -> None:
    app = create_app(SimulatorConfig(output_tokens=200, faults=FaultRates(stream_cut=1.0)))
    plain = await call(app, params())
    with pytest.raises(SimulatedConnectionCut):
        await call(app, params(stream=True))
    assert plain.status == 200
    assert app.stats.by_status == {"200": 1, "cut": 1}
    assert app.stats.streamed == 1


@pytest.mark.asyncio
async def test_a_cut_stream_sent_half_its_events() -> None:
    body = params("[[sim:cut=1:times=1]]", stream=True)
    app = create_app(SimulatorConfig(output_tokens=200))
    cut = Exchange()
    with pytest.raises(SimulatedConnectionCut):
        await call(app, body, exchange=cut)
    whole = await call(app, body)
    events = [kind for kind, _ in whole.events() if kind != "ping"]
    sent = [kind for kind, _ in cut.events() if kind != "ping"]
    assert sent == events[: len(events) // 2] and not cut.ended
    assert app.stats.by_status == {"cut": 1, "200": 1}


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_client_that_leaves_mid_stream_ends_the_stream() -> None:
    config = SimulatorConfig(output_tokens=1_000, latency_per_output_token_s=0.01)
    app = create_app(config)
    exchange = await call(app, params(stream=True), leave_after_s=3.0)
    assert not exchange.ended
    assert exchange.times("content_block_delta")[-1] <= 3.0 + 0.2
    assert app.stats.by_status == {"abandoned": 1}


@pytest.mark.asyncio
async def test_the_stats_keep_streamed_counts_and_messages_through_json() -> None:
    app = create_app(SimulatorConfig(log_messages=True))
    await call(app, params(stream=True))
    await call(app, params())
    copy = SimulatorStats.from_dict(json.loads(app.stats.to_json()))
    assert copy.streamed == 1
    assert [entry.streamed for entry in copy.log] == [True, False]
    assert all(json.loads(entry.message or "")["type"] == "message" for entry in copy.log)
    assert create_app().stats.log_size == 1000


def test_from_options_sets_the_streaming_and_proxy_settings() -> None:
    config = SimulatorConfig.from_options(
        latency_per_output_token_s=0.004,
        stream_cut=0.1,
        idle_timeout_s=5.0,
        stream_ping_interval_s=0.5,
        log_size=10,
        log_messages=True,
    )
    assert config.faults.stream_cut == 0.1 and config.idle_timeout_s == 5.0
    assert config.stream_ping_interval_s == 0.5 and config.latency_per_output_token_s == 0.004
    assert config.log_size == 10 and config.log_messages
    with pytest.raises(ValueError, match="idle_timeout_s"):
        SimulatorConfig(idle_timeout_s=0)
    with pytest.raises(ValueError, match="stream_ping_interval_s"):
        SimulatorConfig(stream_ping_interval_s=0)


# -- the official SDK reads the streams -------------------------------------------------------


def test_the_sdks_final_message_equals_the_unstreamed_message_for_the_same_seed() -> None:
    config = SimulatorConfig(seed=9, output_tokens=300, latency_per_output_token_s=0.0005)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "Hi there"}],
    }
    with running_simulator(config) as url:
        sdk = anthropic.Anthropic(base_url=url, api_key="sk-x", max_retries=0)
        with sdk, sdk.messages.stream(**kwargs) as stream:
            texts = list(stream.text_stream)
            final = stream.get_final_message()
    with running_simulator(config) as url:
        sdk = anthropic.Anthropic(base_url=url, api_key="sk-x", max_retries=0)
        with sdk:
            plain = sdk.messages.create(**kwargs)
    assert len(texts) > 1 and "".join(texts) == final.content[0].text  # type: ignore[union-attr]
    assert final.model_dump(exclude_none=True) == plain.model_dump(exclude_none=True)
