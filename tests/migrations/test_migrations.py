"""The Alembic migrations produce exactly the tables the code describes."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from batchrun.errors import DatabaseError
from batchrun.store.database import (
    SCHEMA_REVISION,
    create_database_engine,
    current_revision,
    head_revision,
    upgrade_database,
)
from batchrun.store.tables import metadata

# Each test starts from an empty database and migrates it itself.
pytestmark = pytest.mark.empty_database


def test_migrations_produce_the_models_schema(db_url: str) -> None:
    engine = create_database_engine(db_url)
    upgrade_database(engine)

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    engine.dispose()

    assert differences == []


def test_the_revision_the_store_opens_without_alembic_is_the_migrations_head() -> None:
    assert head_revision() == SCHEMA_REVISION


def test_upgrade_is_recorded_and_idempotent(db_url: str) -> None:
    engine = create_database_engine(db_url)

    assert upgrade_database(engine) == (None, head_revision())
    assert upgrade_database(engine) == (head_revision(), head_revision())
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_a_database_from_a_newer_batchrun_is_refused_untouched(db_url: str) -> None:
    engine = create_database_engine(db_url)
    upgrade_database(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))

    with pytest.raises(DatabaseError, match="newer batchrun"):
        upgrade_database(engine)
    assert current_revision(engine) == "9999_future"
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    engine = create_database_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
