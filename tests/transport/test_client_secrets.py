"""The transport keeps the API key to itself: unsendable keys are refused up front, and a
key that an endpoint echoes back is cut out of what batchrun keeps."""

from __future__ import annotations

import json

import pytest

from batchrun.errors import ConfigError
from batchrun.records import Fatal, Halt
from batchrun.simulator import running_simulator
from batchrun.transport.auth import REDACTED, request_headers
from batchrun.transport.client import MessagesClient, check_header_values, create_http_client
from batchrun.transport.endpoints import builtin_endpoints

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


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("sk-ant-abc\ndef", "a line break"),
        ("sk-ant-abc\u2019def", "a non-ASCII character"),
        ("sk-ant-abc\x7fdef", "a control character"),
    ],
)
def test_a_key_that_http_cannot_carry_is_refused_without_showing_it(key: str, kind: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_header_values({"x-api-key": key}, endpoint="anthropic", key_hint="ANTHROPIC_API_KEY")

    assert raised.value.message == (
        f"character 11 of the x-api-key header for endpoint anthropic is {kind}, which HTTP "
        "headers cannot carry; check ANTHROPIC_API_KEY: copy the key again, without line "
        "breaks or typographic quotes"
    )
    assert "abc" not in raised.value.message


def test_printable_keys_spaces_and_tabs_are_accepted() -> None:
    check_header_values(
        {"x-api-key": "sk-ant-api03-AZaz09_-", "x-note": "a b\tc"},
        endpoint="anthropic",
        key_hint="ANTHROPIC_API_KEY",
    )
