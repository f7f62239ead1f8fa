"""The Messages sender keeps the API key to itself: a key that an endpoint echoes back is cut
out of what batchrun keeps (unsendable keys are refused up front: tests/transport/test_http.py)."""

from __future__ import annotations

import json

import pytest

from batchrun.records import Fatal, Halt
from batchrun.simulator import running_simulator
from batchrun.transport.auth import REDACTED, request_headers
from batchrun.transport.endpoints import builtin_endpoints
from batchrun.transport.http import create_http_client
from batchrun.transport.messages import MessagesClient

TOKEN = "gw-SECRET-token-0987654321"


def body(text: str) -> str:
    return json.dumps(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
async def test_a_key_echoed_in_an_error_is_redacted(style: str) -> None:
    headers = request_headers(style=style, key=TOKEN, fixed={}, from_env={})
    with running_simulator() as url:
        endpoint = builtin_endpoints({"ANTHROPIC_BASE_URL": url})["anthropic"]
        async with create_http_client(timeout_s=10, max_connections=2) as http:
            client = MessagesClient(http, endpoint=endpoint, headers=headers)
            fatal = await client.send(body("[[sim:status=400:echo_key=1]]"))
            halt = await client.send(body("[[sim:status=402:echo_key=1]]"))

    assert isinstance(fatal, Fatal)
    assert fatal.error["error"]["message"].endswith(f"(API key presented: {REDACTED})")
    assert isinstance(halt, Halt)
    assert halt.detail.endswith(f"(API key presented: {REDACTED})")
    assert TOKEN not in repr((fatal, halt))
