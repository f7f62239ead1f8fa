"""Migration 0012: the counters of batches made before it are backfilled from their rows, and
a downgrade drops them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert, inspect

from batchrun.records import RequestCounts, TokenTotals
from batchrun.store import tables as t
from batchrun.store.database import create_database_engine, migrations_path
from tests.counters import aggregated, maintained

# The test migrates an empty database step by step.
pytestmark = pytest.mark.empty_database

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _config(connection: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.attributes["connection"] = connection
    return config


def test_counters_of_existing_batches_are_backfilled_from_their_rows(db_url: str) -> None:
    engine = create_database_engine(db_url)
    states = ["queued", "running", "provider", "succeeded", "succeeded", "errored", "canceled"]
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0011")
        for batch_id in ("full", "empty"):
            connection.execute(
                insert(t.batches).values(
                    id=batch_id,
                    endpoint="simulator",
                    request_count=0,
                    created_at=NOW,
                    expires_at=NOW + timedelta(days=1),
                )
            )
        for n, state in enumerate(states, start=1):
            connection.execute(
                insert(t.requests).values(
                    id=n,
                    batch_id="full",
                    line_no=n,
                    custom_id=f"r{n}",
                    model="claude-sonnet-4-5",
                    max_tokens=10,
                    params="{}",
                    state=state,
                )
            )
            if state in t.FINAL_STATES:
                connection.execute(
                    insert(t.results).values(
                        request_id=n,
                        batch_id="full",
                        custom_id=f"r{n}",
                        result_type=state,
                        attempts=1,
                        completed_at=NOW,
                        input_tokens=10 * n if state == "succeeded" else None,
                        output_tokens=n,
                        cache_read_input_tokens=2,
                    )
                )
        command.upgrade(_config(connection), "0012")
        counters = maintained(connection)
        expected = aggregated(connection)
        command.downgrade(_config(connection), "0011")
        downgraded = {column["name"] for column in inspect(connection).get_columns("batches")}
    engine.dispose()

    assert counters == expected
    assert counters["full"] == (
        RequestCounts(processing=3, succeeded=2, errored=1, canceled=1),
        TokenTotals(input_tokens=40 + 50, output_tokens=4 + 5 + 6 + 7, cache_read_input_tokens=8),
    )
    assert counters["empty"] == (RequestCounts(), TokenTotals())
    assert "n_processing" not in downgraded
