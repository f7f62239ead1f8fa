"""The proof of the maintained counters (``batches.n_*``, ``sum_*``, ``n_reused``,
``first_started_at``, ``last_completed_at`` and the per-key ``batch_usage``, ``batch_errors``,
``batch_endpoints``, ``batch_held``; see batchrun.store.counters and
batchrun.store.breakdowns): what an aggregate over every request and result row gives, by the
statements ``status`` ran before the counters existed, compared with what the counters hold.
``tests/conftest.py`` runs :func:`assert_counters_agree` after every test that has a
database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, create_engine, func, inspect, select

from batchrun.records import RequestCounts, TokenTotals
from batchrun.store import breakdowns
from batchrun.store import tables as t
from batchrun.store.counters import COUNT_COLUMNS, TOKEN_COLUMNS
from batchrun.store.usage import _utc, priced, read_usage


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
    if inspect(conn).has_table("answer_turns"):
        # The answers that did not match their schema count in the totals as they are kept.
        a = t.answer_turns.c
        for row in conn.execute(
            select(
                a.batch_id,
                *(func.coalesce(func.sum(a[name]), 0) for name in TOKEN_COLUMNS),
            ).group_by(a.batch_id)
        ):
            found = tokens.get(row[0], TokenTotals())
            tokens[row[0]] = TokenTotals(
                *(
                    int(getattr(found, name)) + int(value)
                    for name, value in zip(TOKEN_COLUMNS, row[1:], strict=True)
                )
            )
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
        for row in conn.execute(
            select(
                t.batches.c.id,
                *(t.batches.c[c] for c in (*COUNT_COLUMNS.values(), *TOKEN_COLUMNS.values())),
            )
        )
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
            if "n_reused" in columns:
                assert maintained_details(conn) == aggregated_details(conn)
    finally:
        engine.dispose()


def aggregated_details(conn: Connection) -> dict[str, Any]:
    """What ``status`` showed beyond the counts, aggregated over the rows of every batch:
    usage by model (priced), reused results, first claim, last answer, error types with
    their least message, answers per endpoint, held requests per model."""
    res, req = t.results.c, t.requests.c
    ids = list(conn.scalars(select(t.batches.c.id).order_by(t.batches.c.id)))
    usage: dict[str, list[Any]] = {batch_id: [] for batch_id in ids}
    for item in read_usage(conn, None, with_turns=inspect(conn).has_table("answer_turns")):
        usage[item.batch_id].append(item)
    answered = res.result_type.in_([t.SUCCEEDED, t.ERRORED])
    details: dict[str, Any] = {}
    for batch_id in ids:
        first = conn.execute(
            select(func.min(req.started_at)).where(req.batch_id == batch_id)
        ).scalar()
        last = conn.execute(
            select(func.max(res.completed_at)).where(res.batch_id == batch_id, answered)
        ).scalar()
        reused = conn.execute(
            select(func.count()).where(res.batch_id == batch_id, res.reused_from.is_not(None))
        ).scalar_one()
        kind = func.coalesce(res.error_type, "")
        errors = conn.execute(
            select(
                kind,
                func.count(),
                func.min(breakdowns.binary(res.error_message, conn.dialect.name)),
            )
            .where(res.batch_id == batch_id, res.result_type == t.ERRORED)
            .group_by(kind)
        ).all()
        endpoints = conn.execute(
            select(res.endpoint, func.count())
            .where(
                res.batch_id == batch_id,
                answered,
                res.endpoint.is_not(None),
                res.reused_from.is_(None),
            )
            .group_by(res.endpoint)
        ).all()
        held = conn.execute(
            select(req.model, func.count())
            .where(req.batch_id == batch_id, req.state == t.QUEUED, req.lane == t.HELD)
            .group_by(req.model)
        ).all()
        details[batch_id] = {
            "usage": priced(usage[batch_id]),
            "first_started_at": _utc(first),
            "last_completed_at": _utc(last),
            "reused": int(reused),
            "errors": {kind: (int(n), example) for kind, n, example in errors},
            "endpoints": {name: int(n) for name, n in endpoints},
            "held": {model: int(n) for model, n in held},
        }
    return details


def maintained_details(conn: Connection) -> dict[str, Any]:
    """The same figures as the counters hold them."""
    b, e, p = t.batches.c, t.batch_errors.c, t.batch_endpoints.c
    ids = list(conn.scalars(select(b.id).order_by(b.id)))
    usage = breakdowns.usage_of(conn, ids)
    held = breakdowns.held_of(conn, ids)
    details: dict[str, Any] = {}
    for row in conn.execute(select(b.id, b.first_started_at, b.last_completed_at, b.n_reused)):
        errors = conn.execute(
            select(e.error_type, e.results, e.example).where(e.batch_id == row.id, e.results > 0)
        ).all()
        endpoints = conn.execute(
            select(p.endpoint, p.answers).where(p.batch_id == row.id, p.answers > 0)
        ).all()
        details[row.id] = {
            "usage": usage[row.id],
            "first_started_at": _utc(row.first_started_at),
            "last_completed_at": _utc(row.last_completed_at),
            "reused": int(row.n_reused),
            "errors": {kind: (int(n), example) for kind, n, example in errors},
            "endpoints": {name: int(n) for name, n in endpoints},
            "held": held.get(row.id, {}),
        }
    return details
