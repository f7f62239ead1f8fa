"""A downgrade of the migrations after the table rows (0015-0019) keeps every batch and
request: dropping a column must not rebuild a table, which SQLite (foreign keys on) would do
by dropping it and so deleting every row that refers to it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, func, select

from batchrun.records import NewBatch, NewRequest
from batchrun.store import tables as t
from batchrun.store.database import create_database_engine, migrations_path, upgrade_database
from batchrun.store.store import Store

# The test migrates an empty database itself.
pytestmark = pytest.mark.empty_database

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PARAMS = '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'


def _config(connection: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.attributes["connection"] = connection
    return config


def _counts(connection: Connection) -> tuple[int, int]:
    batches, requests = (
        connection.execute(select(func.count()).select_from(table)).scalar_one()
        for table in (t.batches, t.requests)
    )
    return batches, requests


def test_downgrading_to_the_table_rows_and_back_keeps_every_batch_and_request(
    db_url: str,
) -> None:
    engine = create_database_engine(db_url)
    upgrade_database(engine)
    store = Store(engine)
    store.batches.create(
        NewBatch(
            id="b1",
            name=None,
            endpoint="simulator",
            source="test",
            created_at=NOW,
            expires_at=NOW + timedelta(days=1),
        ),
        (
            NewRequest(line_no=n, custom_id=f"r{n}", model="m", max_tokens=5, params_json=PARAMS)
            for n in range(1, 12)
        ),
    )
    with engine.begin() as connection:
        before = _counts(connection)
        command.downgrade(_config(connection), "0014")
        downgraded = _counts(connection)
        command.upgrade(_config(connection), "head")
        again = _counts(connection)
    engine.dispose()

    assert before == downgraded == again == (1, 11)
