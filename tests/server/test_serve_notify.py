"""`batchrun serve` with `[notify]` in the config file: its in-process workers tell the
webhook (a real receiver on 127.0.0.1) when a batch created through the API ends."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import request_line
from tests.server.serving import KEY_A, running_server, server_env
from tests.webhooks import running_webhook_receiver

WAIT_S = 60.0


def test_the_workers_tell_the_config_files_webhook_when_a_batch_ends(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[notify]\nurl_env = "TEST_HOOK_URL"\n')
    lines = [request_line(f"r{i}") for i in range(3)]

    with running_webhook_receiver() as receiver:
        env = server_env(tmp_path) | {"TEST_HOOK_URL": receiver.url}
        with (
            running_server(sqlite_url, env, config=config) as (url, _server),
            httpx.Client(base_url=url, headers={"x-api-key": KEY_A}) as http,
        ):
            created = http.post("/v1/messages/batches", json={"requests": lines})
            assert created.status_code == 200, created.text
            batch_id = created.json()["id"]
            deadline = time.monotonic() + WAIT_S
            while not receiver.delivered():
                assert time.monotonic() < deadline
                time.sleep(0.1)

    (document,) = receiver.delivered()
    assert document["event"] == "ended"
    assert document["batch"]["id"] == batch_id
    assert document["request_counts"]["succeeded"] == 3
