"""The HTTP plumbing: header values HTTP cannot carry are refused up front without showing
them, and a run's pool of httpx clients makes clients only as requests need them."""

from __future__ import annotations

import json

import pytest

from batchrun.errors import ConfigError
from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from batchrun.transport.http import check_header_values, create_http_client


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


@pytest.mark.asyncio
async def test_the_client_is_made_when_the_first_request_needs_it() -> None:
    # A run that sends nothing builds no client and no TLS context.
    app = create_app(SimulatorConfig())
    with running_simulator(app=app) as url:
        async with create_http_client(timeout_s=10, max_connections=4096) as pool:
            assert not pool.made
            for _ in range(3):
                response = await pool.post(
                    f"{url}/v1/messages",
                    content=json.dumps(
                        {
                            "model": "m",
                            "max_tokens": 5,
                            "messages": [{"role": "user", "content": "hi"}],
                        }
                    ).encode(),
                    headers={"content-type": "application/json"},
                )
                assert response.status_code == 200
            assert pool.made
