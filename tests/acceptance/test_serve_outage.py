"""`batchrun serve` whose Postgres connections are all terminated mid-statement while its
in-process worker sends a batch: the API answers (503 at worst, which the SDK retries), the
worker reconnects, and the batch ends with every request sent once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anthropic
import pytest
from sqlalchemy import create_engine

from batchrun.simulator import create_app, running_simulator
from tests.acceptance.servers import announcing
from tests.acceptance.test_postgres_outage import terminate_mid_statement
from tests.conftest import POSTGRES_URL_VARIABLE, fresh_postgres_database, request_line
from tests.server.serving import KEY_A, running_server, server_env

pytestmark = [pytest.mark.acceptance, pytest.mark.postgres]

REQUESTS = 400


def test_serve_survives_its_postgres_connections_being_terminated(tmp_path: Path) -> None:
    app = create_app(announcing(latency_s=0.1))
    with fresh_postgres_database() as db_url, running_simulator(app=app) as sim_url:
        config = tmp_path / "batchrun.toml"
        config.write_text(f'[endpoints.sim]\nbase_url = "{sim_url}"\nauth = "none"\n')
        watcher = create_engine(os.environ[POSTGRES_URL_VARIABLE], isolation_level="AUTOCOMMIT")
        env = server_env(tmp_path)
        try:
            with (
                running_server(db_url, env, endpoint="sim", config=config) as (url, _server),
                anthropic.Anthropic(base_url=url, api_key=KEY_A, max_retries=5) as client,
            ):
                lines = [request_line(f"r{i:03d}", f"q {i}") for i in range(REQUESTS)]
                batch = client.messages.batches.create(requests=lines)  # type: ignore[arg-type]
                killed = []
                for threshold in (REQUESTS // 4, REQUESTS // 2):
                    deadline = time.monotonic() + 60
                    while app.stats.received < threshold:
                        assert time.monotonic() < deadline
                        time.sleep(0.02)
                    killed.append(terminate_mid_statement(db_url, watcher, "requests"))
                    # The API's own connections died too: it answers all the same.
                    assert client.messages.batches.retrieve(batch.id).id == batch.id
                deadline = time.monotonic() + 120
                while (ended := client.messages.batches.retrieve(batch.id)).processing_status != (
                    "ended"
                ):
                    assert time.monotonic() < deadline, ended
                    time.sleep(0.2)
                results = list(client.messages.batches.results(batch.id))
        finally:
            watcher.dispose()

    assert all(count >= 1 for count in killed), killed
    assert ended.request_counts.succeeded == REQUESTS
    assert sorted(item.custom_id for item in results) == [f"r{i:03d}" for i in range(REQUESTS)]
    assert app.stats.received == REQUESTS
    assert app.stats.duplicate_receptions == 0
