"""The Messages sender against the simulator on a real socket: headers, timeouts, cut bodies."""

from __future__ import annotations

import hashlib
import json

import pytest

from batchrun.records import Retryable, Succeeded
from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from batchrun.transport.endpoints import SIMULATOR, auth_headers, builtin_endpoints
from batchrun.transport.http import create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient

pytestmark = pytest.mark.asyncio


def body(text: str) -> str:
    return json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": text}],
        }
    )


async def send(url: str, text: str, *, timeout_s: float = 10.0, key: str = "sk-test") -> object:
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": key}
    endpoint = builtin_endpoints(env)["anthropic"]
    async with create_http_client(timeout_s=timeout_s, max_connections=4) as http:
        client = MessagesClient(
            http, endpoint=endpoint, headers=auth_headers(endpoint, env), timeout_s=timeout_s
        )
        return await client.send(body(text))


async def test_the_anthropic_endpoint_sends_key_version_and_content_type() -> None:
    app = create_app(SimulatorConfig(required_api_key="sk-test"))
    with running_simulator(app=app) as url:
        outcome = await send(url, "hello")

    assert isinstance(outcome, Succeeded)
    (entry,) = app.stats.log
    assert entry.path == "/v1/messages"
    assert entry.headers["anthropic-version"] == "2023-06-01"
    assert entry.headers["auth_scheme"] == "x-api-key"
    assert entry.headers["content-type"] == "application/json"


async def test_the_simulator_endpoint_runs_in_process_without_a_key() -> None:
    app = create_app(SimulatorConfig())
    endpoint = builtin_endpoints({})[SIMULATOR]
    params_json = body("hello")
    transport = in_process_transport(app)
    async with create_http_client(timeout_s=10, max_connections=1, transport=transport) as http:
        client = MessagesClient(http, endpoint=endpoint, headers=auth_headers(endpoint, {}))
        outcome = await client.send(params_json)

    assert isinstance(outcome, Succeeded)
    (entry,) = app.stats.log
    assert entry.path == "/v1/messages"
    assert entry.headers["auth_scheme"] == "none"
    assert entry.headers["anthropic-version"] == "2023-06-01"
    # Without an extra_body the stored params are sent byte for byte, never re-encoded.
    assert entry.body_sha256 == hashlib.sha256(params_json.encode()).hexdigest()


async def test_a_hung_request_times_out_as_a_retryable_timeout_error() -> None:
    with running_simulator() as url:
        outcome = await send(url, "[[sim:hang=1]]", timeout_s=0.5)

    assert isinstance(outcome, Retryable)
    assert outcome.error["error"]["type"] == "timeout_error"
    assert outcome.reason == "no complete answer within 0.5 s (timeout_s)"


async def test_the_timeout_bounds_the_in_process_simulator_too() -> None:
    endpoint = builtin_endpoints({})[SIMULATOR]
    transport = in_process_transport(create_app())
    async with create_http_client(timeout_s=0.5, max_connections=1, transport=transport) as http:
        client = MessagesClient(
            http, endpoint=endpoint, headers=auth_headers(endpoint, {}), timeout_s=0.5
        )
        outcome = await client.send(body("[[sim:hang=1]]"))

    assert isinstance(outcome, Retryable)
    assert outcome.reason == "no complete answer within 0.5 s (timeout_s)"


async def test_a_connection_cut_mid_body_is_retryable() -> None:
    with running_simulator() as url:
        outcome = await send(url, "[[sim:cut=1]]")

    assert isinstance(outcome, Retryable)
    assert outcome.error["error"]["type"] == "api_error"
    assert "connection failed" in outcome.reason


async def test_a_refused_connection_is_retryable() -> None:
    with running_simulator() as url:
        pass  # the server is gone: its port now refuses connections

    outcome = await send(url, "hello", timeout_s=2)

    assert isinstance(outcome, Retryable)
    assert "connection failed" in outcome.reason
