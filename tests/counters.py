"""The proof of the maintained counters (``batches.n_*``, ``batches.sum_*``, see
batchrun.store.counters): what an aggregate over every request and result row gives, by the
statements ``status`` ran before the counters existed, compared with what the rows of
``batches`` hold. ``tests/conftest.py`` runs :func:`assert_counters_agree` after every test
that has a database."""

from __future__ import annotations

from sqlalchemy import Connection, create_engine, func, inspect, select

from batchrun.records import RequestCounts, TokenTotals
from batchrun.store import tables as t
from batchrun.store.counters import COUNT_COLUMNS, TOKEN_COLUMNS


def aggregated(conn: Connection) -> dict[str, tuple[RequestCounts, TokenTotals]]:
    """Every batch's counts and token totals, aggregated over its rows."""
    counts: dict[str, dict[str, int]] = {}
    for batch_id, state, count in conn.execute(
        select(t.requests.c.batch_id, t.requests.c.state, func.count()).group_by(
            t.requests.c.batch_id, t.requests.c.state
        )
    ):
        per_state = counts.setdefault(batch_id, {})
        key = "processing" if state in t.OPEN_STATES else state
        per_state[key] = per_state.get(key, 0) + count
    r = t.results.c
    tokens = {
        row[0]: TokenTotals(*(int(value) for value in row[1:]))
        for row in conn.execute(
            select(
                r.batch_id,
                func.coalesce(func.sum(r.input_tokens), 0),
                func.coalesce(func.sum(r.output_tokens), 0),
                func.coalesce(func.sum(r.cache_creation_input_tokens), 0),
                func.coalesce(func.sum(r.cache_read_input_tokens), 0),
            ).group_by(r.batch_id)
        )
    }
    return {
        batch_id: (
            RequestCounts(**counts.get(batch_id, {})),
            tokens.get(batch_id, TokenTotals()),
        )
        for batch_id in conn.scalars(select(t.batches.c.id))
    }


def maintained(conn: Connection) -> dict[str, tuple[RequestCounts, TokenTotals]]:
    """Every batch's counters as its row holds them."""
    return {
        row.id: (
            RequestCounts(**{key: row._mapping[c] for key, c in COUNT_COLUMNS.items()}),
            TokenTotals(**{key: int(row._mapping[c]) for key, c in TOKEN_COLUMNS.items()}),
        )
        for row in conn.execute(select(t.batches))
    }


def assert_counters_agree(url: str) -> None:
    """The counters of every batch in the database at ``url`` equal the aggregate over its
    rows. A database without the counters (never migrated, or migrated to an older
    revision by the test) has nothing to check."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            columns = (
                {column["name"] for column in inspect(conn).get_columns("batches")}
                if inspect(conn).has_table("batches")
                else set()
            )
            if "n_processing" not in columns:
                return
            assert maintained(conn) == aggregated(conn)
    finally:
        engine.dispose()
