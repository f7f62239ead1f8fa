"""Migration 0007: the pauses in force in ``rate_pauses`` carry over to ``rate_keys``, and back
on a downgrade."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from batchrun.store.database import create_database_engine, migrations_path

# The test migrates an empty database step by step.
pytestmark = pytest.mark.empty_database


def _config(connection: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.attributes["connection"] = connection
    return config


def test_pauses_in_force_carry_over_to_rate_keys_and_back(db_url: str) -> None:
    engine = create_database_engine(db_url)
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0006")
        connection.execute(
            text(
                "INSERT INTO rate_pauses (endpoint, model, paused_until) "
                "VALUES ('ep', 'claude-sonnet-4-5', 1700000100.0)"
            )
        )
        command.upgrade(_config(connection), "0007")
        upgraded = connection.execute(
            text("SELECT endpoint, model, paused_until, admitted_requests FROM rate_keys")
        ).all()
        command.downgrade(_config(connection), "0006")
        downgraded = connection.execute(
            text("SELECT endpoint, model, paused_until FROM rate_pauses")
        ).all()
    engine.dispose()

    assert [tuple(row) for row in upgraded] == [("ep", "claude-sonnet-4-5", 1700000100.0, 0.0)]
    assert [tuple(row) for row in downgraded] == [("ep", "claude-sonnet-4-5", 1700000100.0)]
