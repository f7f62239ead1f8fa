"""How a test chooses its database backends: ``db_url`` gives every test both (a SQLite file
and a fresh Postgres database) unless the test or its module is marked ``sqlite_only``."""

from __future__ import annotations

import pytest


def test_probe_on_both_backends(db_url: str) -> None:
    assert db_url.startswith(("sqlite:///", "postgresql"))


@pytest.mark.sqlite_only
def test_probe_on_sqlite_only(db_url: str) -> None:
    assert db_url.startswith("sqlite:///")


@pytest.mark.sqlite_only
def test_probe_without_a_database() -> None:
    assert True


def test_sqlite_only_drops_the_postgres_case_and_leaves_the_rest_alone(
    request: pytest.FixtureRequest,
) -> None:
    # Collected afresh, so that -k or a node id choosing this test alone changes nothing.
    module = request.node.getparent(pytest.Module)
    assert module is not None
    names = [item.name for item in module.collect() if item.name.startswith("test_probe")]

    assert names == [
        "test_probe_on_both_backends[sqlite]",
        "test_probe_on_both_backends[postgres]",
        "test_probe_on_sqlite_only[sqlite]",
        "test_probe_without_a_database",
    ]
