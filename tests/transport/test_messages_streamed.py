"""MessagesClient with streaming: the simulator in-process and on a socket, servers that
replay recorded streams, and the hostile server. A streamed answer is stored as the Message
the unstreamed call returns; cuts, stalls and error events are retried or classified as the
same failure unstreamed would be."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest
from anthropic.types import Message

from batchrun.records import Fatal, Outcome, Retryable, Succeeded
from batchrun.simulator import SimulatorApp, SimulatorConfig, create_app, running_simulator
from batchrun.transport.endpoints import SIMULATOR, Endpoint, auth_headers, builtin_endpoints
from batchrun.transport.http import create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient
from tests.hostile import running_hostile_server
from tests.transport.test_streaming import EVENTS, EXPECTED, RECORDED, START, sse

pytestmark = pytest.mark.asyncio

KEY = "sk-streaming-test-key-0123456789"
MODEL = "claude-sonnet-4-5"


def body(text: str = "hello", *, max_tokens: int = 1000, **extra: Any) -> str:
    return json.dumps(
        {
            "model": extra.pop("model", MODEL),
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}],
            **extra,
        }
    )


def simulator_endpoint(threshold: int | None, **changes: Any) -> Endpoint:
    return replace(builtin_endpoints({})[SIMULATOR], stream_threshold_tokens=threshold, **changes)


async def send_in_process(
    app: object, params: list[str], *, threshold: int | None, timeout_s: float = 30
) -> list[Outcome]:
    endpoint = simulator_endpoint(threshold)
    transport = in_process_transport(app)
    async with create_http_client(timeout_s=timeout_s, max_connections=2, transport=transport) as h:
        client = MessagesClient(
            h, endpoint=endpoint, headers=auth_headers(endpoint, {}), timeout_s=timeout_s
        )
        return [await client.send(one) for one in params]


async def send_to(
    url: str,
    params: list[str],
    *,
    threshold: int | None = 0,
    timeout_s: float = 10,
    max_response_bytes: int | None = None,
) -> list[Outcome]:
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": KEY}
    endpoint = replace(builtin_endpoints(env)["anthropic"], stream_threshold_tokens=threshold)
    async with create_http_client(timeout_s=timeout_s, max_connections=2) as http:
        client = MessagesClient(
            http,
            endpoint=endpoint,
            headers=auth_headers(endpoint, env),
            timeout_s=timeout_s,
            max_response_bytes=max_response_bytes or endpoint.max_response_bytes,
        )
        return [await client.send(one) for one in params]


def succeeded(outcome: Outcome) -> Succeeded:
    assert isinstance(outcome, Succeeded), outcome
    return outcome


def logged_messages(app: SimulatorApp) -> list[dict[str, Any]]:
    return [json.loads(entry.message) for entry in app.stats.log if entry.message is not None]


MIXED = [
    body("a short one"),
    body(
        "a tool",
        tools=[{"name": "get_time", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any"},
    ),
    body("capped at max_tokens", max_tokens=20),
    body("[[sim:output_tokens=0]] nothing to say"),
]


async def test_streamed_in_process_equals_unstreamed_for_the_same_seed() -> None:
    config = SimulatorConfig(seed=11, output_tokens=300, log_messages=True)
    streamed_app, plain_app = create_app(config), create_app(config)

    streamed = await send_in_process(streamed_app, MIXED, threshold=0)
    plain = await send_in_process(plain_app, MIXED, threshold=None)

    for one, other in zip(streamed, plain, strict=True):
        assert json.loads(succeeded(one).body) == json.loads(succeeded(other).body)
        assert succeeded(one).usage == succeeded(other).usage
        assert succeeded(one).stop_reason == succeeded(other).stop_reason
        Message.model_validate_json(succeeded(one).body)
    assert [entry.streamed for entry in streamed_app.stats.log] == [True] * len(MIXED)
    assert [entry.streamed for entry in plain_app.stats.log] == [False] * len(MIXED)
    assert streamed_app.stats.streamed == len(MIXED) and plain_app.stats.streamed == 0
    # What the simulator logged as its final message is what the client assembled.
    assert logged_messages(streamed_app) == [json.loads(succeeded(o).body) for o in streamed]
    stop_reasons = [succeeded(one).stop_reason for one in streamed]
    assert stop_reasons == ["end_turn", "tool_use", "max_tokens", "end_turn"]


async def test_streamed_on_a_socket_equals_unstreamed_for_the_same_seed() -> None:
    config = SimulatorConfig(
        seed=12, output_tokens=500, latency_per_output_token_s=0.0005, log_messages=True
    )
    streamed_app, plain_app = create_app(config), create_app(config)
    with running_simulator(app=streamed_app) as url:
        streamed = await send_to(url, MIXED, threshold=0)
    with running_simulator(app=plain_app) as url:
        plain = await send_to(url, MIXED, threshold=None)

    for one, other in zip(streamed, plain, strict=True):
        assert json.loads(succeeded(one).body) == json.loads(succeeded(other).body)
        assert succeeded(one).request_id == succeeded(other).request_id
        assert succeeded(one).server_limits == succeeded(other).server_limits
    assert logged_messages(streamed_app) == [json.loads(succeeded(o).body) for o in streamed]
    assert streamed_app.stats.by_status == {"200": len(MIXED)}


@pytest.mark.parametrize(
    ("model", "max_tokens", "threshold", "streamed"),
    [
        (MODEL, 21_333, None, False),
        (MODEL, 21_334, None, True),
        ("claude-opus-4-0", 8_192, None, False),
        ("claude-opus-4-1-20250805", 8_193, None, True),
        (MODEL, 1, 0, True),
        ("claude-opus-4-0", 30_000, 10**9, False),
    ],
)
async def test_the_threshold_decides_what_is_sent_with_stream_true(
    model: str, max_tokens: int, threshold: int | None, streamed: bool
) -> None:
    app = create_app(SimulatorConfig(output_tokens=5))
    params = body(max_tokens=max_tokens, model=model)
    (outcome,) = await send_in_process(app, [params], threshold=threshold)

    assert succeeded(outcome)
    (entry,) = app.stats.log
    assert entry.streamed is streamed
    if not streamed:
        # An unstreamed request is still sent byte for byte as stored.
        assert entry.body_sha256 == hashlib.sha256(params.encode()).hexdigest()


def recording(app: Any, bodies: list[bytes]) -> Any:
    """``app``, with the request bodies it receives appended to ``bodies``."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def receive_and_keep() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                bodies.append(message.get("body", b""))
            return message

        await app(scope, receive_and_keep, send)

    return wrapped


async def test_streaming_overrides_a_stored_stream_false_and_keeps_extra_body() -> None:
    bodies: list[bytes] = []
    app = recording(create_app(SimulatorConfig(output_tokens=5)), bodies)
    endpoint = simulator_endpoint(0, extra_body={"temperature": 0, "top_k": 3})
    async with create_http_client(
        timeout_s=10, max_connections=1, transport=in_process_transport(app)
    ) as http:
        client = MessagesClient(http, endpoint=endpoint, headers=auth_headers(endpoint, {}))
        outcome = await client.send(body(stream=False, top_k=5))

    assert succeeded(outcome)
    sent = b"".join(bodies)
    assert json.loads(sent) == {
        **json.loads(body()),
        "temperature": 0,
        "top_k": 5,
        "stream": True,
    }


async def test_a_stream_cut_midway_is_retryable_and_the_retry_succeeds() -> None:
    app = create_app(SimulatorConfig(output_tokens=400, log_messages=True))
    params = body("[[sim:cut=1:times=1]] please")
    with running_simulator(app=app) as url:
        cut, retried = await send_to(url, [params, params])

    assert isinstance(cut, Retryable)
    assert cut.reason.startswith("the stream was cut after ")
    assert "RemoteProtocolError" in cut.reason
    assert cut.http_status is None and not cut.at_most_once
    assert cut.raw_body is not None and cut.raw_body.startswith("event: message_start")
    assert json.loads(succeeded(retried).body) == logged_messages(app)[0]
    assert app.stats.by_status == {"cut": 1, "200": 1}


async def test_a_stream_cut_in_process_is_retryable_too() -> None:
    app = create_app(SimulatorConfig(output_tokens=400))
    (cut,) = await send_in_process(app, [body("[[sim:cut=1]]")], threshold=0)
    assert isinstance(cut, Retryable)
    assert "the stream ended before message_stop" in cut.reason


async def test_a_malformed_stream_is_retryable() -> None:
    app = create_app(SimulatorConfig(output_tokens=40))
    (outcome,) = await send_in_process(app, [body("[[sim:malformed=1]]")], threshold=0)
    assert isinstance(outcome, Retryable)
    assert outcome.reason.startswith("malformed stream: ")


async def test_an_error_status_to_a_streamed_request_is_a_normal_json_error() -> None:
    app = create_app()
    overloaded, bad = await send_in_process(
        app, [body("[[sim:status=529]]"), body("[[sim:status=400]]")], threshold=0
    )
    assert isinstance(overloaded, Retryable) and overloaded.http_status == 529
    assert overloaded.reason == "HTTP 529 overloaded_error"
    assert isinstance(bad, Fatal) and bad.http_status == 400


# -- recorded streams, replayed by a small ASGI server -------------------------------------------


def replay(raw: bytes, *, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    """An ASGI app that answers every request with ``raw``, in pieces of 7 bytes."""
    sent_headers = {"content-type": "text/event-stream", "request-id": "req_replayed"}
    sent_headers |= headers or {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        start = {"type": "http.response.start", "status": status}
        await send(
            {**start, "headers": [(k.encode(), v.encode()) for k, v in sent_headers.items()]}
        )
        for at in range(0, len(raw), 7):
            await send({"type": "http.response.body", "body": raw[at : at + 7], "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_every_block_type_of_a_recorded_stream_is_stored_as_the_unstreamed_message() -> None:
    (outcome,) = await send_in_process(replay(RECORDED), [body()], threshold=0)
    stored = succeeded(outcome)
    assert json.loads(stored.body) == EXPECTED
    assert stored.request_id == "req_replayed"
    assert stored.usage.output_tokens == 89 and stored.usage.cache_creation_input_tokens == 12
    assert stored.stop_reason == "tool_use" and stored.raw_body is None


async def test_a_gzipped_event_stream_is_read() -> None:
    app = replay(gzip.compress(RECORDED), headers={"content-encoding": "gzip"})
    (outcome,) = await send_in_process(app, [body()], threshold=0)
    assert json.loads(succeeded(outcome).body) == EXPECTED


async def test_a_server_that_ignores_stream_and_answers_json_is_read_as_json() -> None:
    message = json.dumps(EXPECTED).encode()
    app = replay(message, headers={"content-type": "application/json"})
    (outcome,) = await send_in_process(app, [body()], threshold=0)
    assert json.loads(succeeded(outcome).body) == EXPECTED


@pytest.mark.parametrize(
    ("error_type", "status", "kind"),
    [
        ("overloaded_error", 529, Retryable),
        ("api_error", 500, Retryable),
        ("rate_limit_error", 429, Retryable),
        ("gateway_invention", 500, Retryable),
        ("invalid_request_error", 400, Fatal),
    ],
)
async def test_an_error_event_counts_as_the_status_of_its_type(
    error_type: str, status: int, kind: type
) -> None:
    error = {"type": "error", "error": {"type": error_type, "message": "Overloaded"}}
    raw = sse([*EVENTS[:5], error])
    (outcome,) = await send_in_process(replay(raw), [body()], threshold=0)
    assert isinstance(outcome, kind)
    assert outcome.http_status == status  # type: ignore[attr-defined]
    if isinstance(outcome, Retryable):
        assert (
            outcome.reason == f"error event in the stream: {error_type} (HTTP {status} unstreamed)"
        )
        assert outcome.rate_limited is (status == 429)


async def test_an_authentication_error_event_halts_like_a_401() -> None:
    error = {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}
    (outcome,) = await send_in_process(replay(sse([START, error])), [body()], threshold=0)
    assert type(outcome).__name__ == "Halt"


async def test_a_streamed_message_over_max_response_bytes_is_refused_with_its_start_kept() -> None:
    huge = [*EVENTS[:17], *[EVENTS[17]] * 2000, *EVENTS[18:]]
    endpoint = simulator_endpoint(0, max_response_bytes=16 * 1024)
    async with create_http_client(
        timeout_s=10, max_connections=1, transport=in_process_transport(replay(sse(huge)))
    ) as http:
        client = MessagesClient(
            http,
            endpoint=endpoint,
            headers=auth_headers(endpoint, {}),
            max_response_bytes=16 * 1024,
        )
        outcome = await client.send(body())
    assert isinstance(outcome, Fatal)
    assert "grew past 16,384 bytes (max_response_bytes)" in outcome.error["error"]["message"]
    assert outcome.raw_body is not None and outcome.raw_body.startswith("event: message_start")


# -- time: a healthy long stream is not cut, a stalled one is -----------------------------------


async def test_timeout_s_bounds_the_silence_of_a_stream_not_its_length() -> None:
    # About 1.5 s of output, an event every 0.1 s or so, with a 0.5 s timeout.
    config = SimulatorConfig(output_tokens=300, latency_per_output_token_s=0.005)
    with running_simulator(config) as url:
        streamed, plain = [
            (await send_to(url, [body()], threshold=threshold, timeout_s=0.5))[0]
            for threshold in (0, None)
        ]
    assert succeeded(streamed).usage.output_tokens == 300
    assert isinstance(plain, Retryable)
    assert plain.reason == "no complete answer within 0.5 s (timeout_s)"


async def test_a_stream_of_pings_or_of_one_endless_event_stalls_after_timeout_s() -> None:
    with running_hostile_server() as hostile:
        hostile.drip_interval_s = 0.05
        for mode in ("sse_pings", "sse_drip"):
            (outcome,) = await send_to(hostile.url, [body(f"<<hostile:{mode}>>")], timeout_s=1)
            assert isinstance(outcome, Retryable)
            assert outcome.reason == (
                "the stream stalled: no event within 1 s after 1 events (timeout_s)"
            )
            assert outcome.error["error"]["type"] == "timeout_error"


# -- the proxy in the simulator: idle cuts ------------------------------------------------------


async def test_a_proxy_idle_timeout_cuts_slow_unstreamed_answers_but_not_streams() -> None:
    config = SimulatorConfig(
        output_tokens=200,
        latency_s=0.3,
        latency_per_output_token_s=0.005,
        idle_timeout_s=0.5,
        stream_ping_interval_s=0.2,
        log_messages=True,
    )
    app = create_app(config)
    with running_simulator(app=app) as url:
        (cut,) = await send_to(url, [body()], threshold=None)
        (streamed,) = await send_to(url, [body()], threshold=0)
    assert isinstance(cut, Retryable)
    assert "the connection failed (RemoteProtocolError: Server disconnected" in cut.reason
    assert succeeded(streamed).usage.output_tokens == 200
    assert app.stats.by_status == {"idle_cut": 1, "200": 1}


async def test_a_key_echoed_in_a_streamed_message_is_cut_out() -> None:
    app = create_app(SimulatorConfig(required_api_key=KEY))
    with running_simulator(app=app) as url:
        (outcome,) = await send_to(url, [body("[[sim:echo_key=1]]")])
    stored = succeeded(outcome)
    assert KEY not in stored.body and KEY not in (stored.request_id or "")
    assert json.loads(stored.body)["content"][0]["text"].startswith("your key is ")
