"""A gateway that announces its limits in ``x-ratelimit-*`` headers, as LiteLLM's proxy does,
and counts them in fixed windows with bare 429s: batchrun with nothing configured reads the
limit from the first answers and paces under it, instead of finding it by refusals. The
simulator on 127.0.0.1 (a real socket, real time), its headers renamed the way LiteLLM
names them."""

from __future__ import annotations

from pathlib import Path

import pytest

import batchrun
from batchrun.simulator import ModelLimits, SimulatorApp, SimulatorConfig, running_simulator
from batchrun.simulator.asgi import Message, Receive, Scope, Send
from tests.conftest import request_line

REQUESTS = 240
SERVER_RPM = 1200
WINDOW_S = 6.0  # 120 requests a window, as LiteLLM's 60 s windows at 1,200 a minute


class LiteLLMHeaders(SimulatorApp):
    """The simulator behind LiteLLM's header names: ``anthropic-ratelimit-requests-limit``
    becomes ``x-ratelimit-api_key-limit-requests`` (and ``-remaining``); resets are dropped,
    as LiteLLM sends none."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def renamed(message: Message) -> None:
            if message["type"] == "http.response.start":
                pairs = (rename(name, value) for name, value in message["headers"])
                message = {**message, "headers": [pair for pair in pairs if pair is not None]}
            await send(message)

        await super().__call__(scope, receive, renamed)


def rename(name: bytes, value: bytes) -> tuple[bytes, bytes] | None:
    prefix = b"anthropic-ratelimit-"
    if not name.startswith(prefix):
        return name, value
    stem, _, kind = name[len(prefix) :].rpartition(b"-")
    if kind == b"reset":
        return None
    return b"x-ratelimit-api_key-" + kind + b"-" + stem, value


@pytest.mark.timeout(180)
def test_nothing_configured_and_a_gateways_own_headers_pace_it_without_a_flood(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = SimulatorConfig(
        limits={"*": ModelLimits(rpm=SERVER_RPM, fixed_window_s=WINDOW_S)},
        latency_s=0.05,
        send_retry_after=False,
    )
    app = LiteLLMHeaders(config)
    with running_simulator(app=app) as url:
        (tmp_path / "batchrun.toml").write_text(
            f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\n'
        )
        env = {"HOME": str(tmp_path)}
        with batchrun.Client(sqlite_url, config=tmp_path / "batchrun.toml", env=env) as client:
            lines = [request_line(f"r{i}", f"q{i}") for i in range(REQUESTS)]
            batch_id = client.submit(lines, endpoint="sim").id
            assert client.run(batch_id).exit_code == 0
            assert client.status(batch_id).request_counts.succeeded == REQUESTS
            (run,) = client.report(batch_id).runs

    # The run sent under the limit the gateway announced (a window's end may still refuse
    # the odd request sent at the limit's pace, and lower it a little for a while).
    (rpm,) = [limit for limit in run.limits if limit.dimension == "rpm"]
    assert (rpm.announced, rpm.configured) == (SERVER_RPM, None)
    stats = app.stats
    assert stats.by_status.get("429", 0) / stats.received <= 0.05
