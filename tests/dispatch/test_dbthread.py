"""The database thread retries calls whose connection was lost, then gives up clearly. Runs
in virtual time (looptime). That a reconnect succeeds is shown end to end in
tests/acceptance/test_postgres_outage.py; that a locked SQLite file is not retried, in
tests/test_database_stress.py."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from batchrun.dispatch.dbthread import DatabaseThread
from batchrun.errors import DatabaseUnavailableError
from batchrun.store.store import Store
from tests.conftest import fresh_postgres_database

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


@pytest.mark.postgres
async def test_a_database_that_stays_gone_is_retried_then_reported() -> None:
    with fresh_postgres_database() as db_url:
        store = Store.open(db_url)
        admin = create_engine(
            make_url(db_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as connection:
            name = make_url(db_url).database
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()
        thread = DatabaseThread()
        loop = asyncio.get_running_loop()
        started = loop.time()

        with pytest.raises(DatabaseUnavailableError) as raised:
            await thread.call(store.batches.all)

        thread.close()
        store.close()
    assert loop.time() - started == pytest.approx(15.5)
    message = raised.value.message
    # The database is gone: every reconnect fails at connect, which says so.
    assert message.startswith(f"cannot connect to the database {db_url} (")
    assert "; gave up after 6 tries over 15.5 s. Every result received was committed or " in message
    assert "run `batchrun run` again once the database is back" in message
