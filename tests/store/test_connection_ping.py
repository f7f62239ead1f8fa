"""Postgres connections are tried before use only after sitting idle: a worker busy with one
statement after another costs the server one transaction per store transaction, not two (as
``pool_pre_ping`` made it), and a connection the server dropped while idle is still replaced
before it is used."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from batchrun.store import database
from batchrun.store.database import create_database_engine, transaction
from tests.conftest import _postgres_admin_url, fresh_postgres_database

pytestmark = pytest.mark.postgres


def _committed(url: str) -> int:
    """Transactions the database of ``url`` committed, once its sessions have ended."""
    admin = create_engine(_postgres_admin_url(), isolation_level="AUTOCOMMIT")
    query = text("SELECT numbackends, xact_commit FROM pg_stat_database WHERE datname = :name")
    try:
        with admin.connect() as connection:
            deadline = time.monotonic() + 10
            while True:
                connection.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
                sessions, count = connection.execute(query, {"name": make_url(url).database}).one()
                if sessions == 0 or time.monotonic() > deadline:
                    return int(count)
                time.sleep(0.05)
    finally:
        admin.dispose()


def test_a_busy_connection_costs_one_server_transaction_per_store_transaction() -> None:
    with fresh_postgres_database() as url:
        before = _committed(url)
        engine = create_database_engine(url)
        try:
            for _ in range(40):
                with transaction(engine, write=False) as connection:
                    connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        # Session ends are counted a moment after the backend exits.
        time.sleep(1.0)
        # 40 (and one as the engine first connects and reads the server's settings), not 80
        # as with pool_pre_ping: a busy connection is not pinged.
        assert _committed(url) - before in (40, 41)


def test_a_connection_dropped_by_the_server_while_idle_is_replaced_before_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every checkout counts as after an idle spell, without waiting one out.
    monkeypatch.setattr(database, "PING_IDLE_S", 0.0)
    with fresh_postgres_database() as url:
        engine = create_database_engine(url)
        admin = create_engine(_postgres_admin_url(), isolation_level="AUTOCOMMIT")
        try:
            with transaction(engine, write=False) as connection:
                pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with admin.connect() as connection:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with transaction(engine, write=False) as connection:
                assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        finally:
            engine.dispose()
            admin.dispose()
