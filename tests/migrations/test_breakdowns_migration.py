"""Migration 0013: the counters ``status`` reads beyond the counts (usage by model, error
types, endpoints, held requests, first claim, last answer, reused results) of batches made
before it are backfilled from their rows, and a downgrade drops them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import func, insert, inspect, select

from batchrun.records import ModelTokens
from batchrun.store import tables as t
from batchrun.store.database import create_database_engine, migrations_path
from tests.counters import aggregated_details, maintained_details

# The test migrates an empty database step by step.
pytestmark = pytest.mark.empty_database

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

# (state, lane, result: model, lane, cost factor, input tokens, error type, message, endpoint,
# reused from, seconds after NOW)
ROWS = [
    ("succeeded", "realtime", ("claude-a", None, None, 100, None, None, "one", None, 5)),
    ("succeeded", "realtime", (None, None, None, 10, None, None, "two", None, 9)),
    ("succeeded", "batch", ("claude-a", "batch", 0.5, 1000, None, None, None, None, 7)),
    ("succeeded", "realtime", ("claude-a", None, 0.0, 100, None, None, "one", "other", 30)),
    (
        "errored",
        "realtime",
        (None, None, None, None, "overloaded_error", "zz busy", "one", None, 3),
    ),
    ("errored", "realtime", (None, None, None, None, "overloaded_error", "Busy", "two", None, 4)),
    ("errored", "realtime", (None, None, None, None, None, None, None, None, 2)),
    ("canceled", "realtime", (None, None, None, None, None, None, None, None, 60)),
    ("queued", "held", None),
    ("queued", "held", None),
    ("queued", "realtime", None),
]


def _config(connection: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.attributes["connection"] = connection
    return config


def test_status_counters_of_existing_batches_are_backfilled_from_their_rows(db_url: str) -> None:
    engine = create_database_engine(db_url)
    with engine.begin() as connection:
        # Rows made before 0012 too, whose backfill sets the counts the check after the
        # test compares.
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
        for n, (state, lane, result) in enumerate(ROWS, start=1):
            connection.execute(
                insert(t.requests).values(
                    id=n,
                    batch_id="full",
                    line_no=n,
                    custom_id=f"r{n}",
                    model="claude-b" if n % 2 == 0 else "claude-a",
                    max_tokens=10,
                    params="{}",
                    state=state,
                    lane=lane,
                    started_at=NOW + timedelta(seconds=n) if state != "queued" else None,
                )
            )
            if result is None:
                continue
            model, res_lane, factor, tokens, kind, message, endpoint, reused, after_s = result
            connection.execute(
                insert(t.results).values(
                    request_id=n,
                    batch_id="full",
                    custom_id=f"r{n}",
                    result_type=state,
                    attempts=1,
                    completed_at=NOW + timedelta(seconds=after_s),
                    model=model,
                    lane=res_lane,
                    cost_factor=factor,
                    input_tokens=tokens,
                    output_tokens=1 if tokens is not None else None,
                    cache_creation_input_tokens=0 if tokens is not None else None,
                    cache_read_input_tokens=0 if tokens is not None else None,
                    error_type=kind,
                    error_message=message,
                    endpoint=endpoint,
                    reused_from=reused,
                )
            )
        command.upgrade(_config(connection), "0013")
        command.downgrade(_config(connection), "0012")
        downgraded = set(inspect(connection).get_table_names())
        columns = {column["name"] for column in inspect(connection).get_columns("batches")}
        kept = connection.execute(select(func.count()).select_from(t.requests)).scalar_one()
        # 0013 again, then the rest: the counters are read with today's statements, which
        # know the columns of later migrations.
        command.upgrade(_config(connection), "head")
        counters = maintained_details(connection)
        expected = aggregated_details(connection)
    engine.dispose()

    assert counters == expected
    full = counters["full"]
    assert full["usage"] == [
        ModelTokens("claude-a", 1, 1000, 1, 0, 0, lane="batch", cost_factor=0.5),
        ModelTokens("claude-a", 1, 100, 1, 0, 0, lane="realtime", cost_factor=0.0),
        ModelTokens("claude-a", 1, 100, 1, 0, 0, lane="realtime", cost_factor=1.0),
        # No model in the answer: the request's.
        ModelTokens("claude-b", 1, 10, 1, 0, 0, lane="realtime", cost_factor=1.0),
    ]
    assert full["first_started_at"] == NOW + timedelta(seconds=1)
    assert full["last_completed_at"] == NOW + timedelta(seconds=30)  # not the canceled one
    assert full["reused"] == 1
    assert full["errors"] == {"overloaded_error": (2, "Busy"), "": (1, None)}
    assert full["endpoints"] == {"one": 2, "two": 2}  # the reused answer was not sent
    assert full["held"] == {"claude-a": 1, "claude-b": 1}
    assert counters["empty"] == {
        "usage": [],
        "first_started_at": None,
        "last_completed_at": None,
        "reused": 0,
        "errors": {},
        "endpoints": {},
        "held": {},
    }
    assert "batch_usage" not in downgraded and "n_reused" not in columns
    assert kept == len(ROWS)  # the downgrade keeps the batch's requests
