"""Writing a new batch: its row, its requests in chunks, and the results of rejected lines.

Called by `Batches.create` (`store.batches`) inside its transaction. A valid line becomes a
queued request.
A rejected line (``submit --skip-invalid``) becomes an errored request with its result row,
so that ``results`` has one line per input line. A rejected line without a usable custom_id
is first stored as ``#N`` (N its line number), which no real custom_id can equal, and renamed
to its placeholder once the whole file is stored and every real custom_id is known: the file
is streamed, so a later line may use the id a placeholder would have taken. For each chunk
`batchrun.store.reuse` decides which requests are answered from a stored result (``submit
--reuse``) and what the others wait for: a duplicate's original, a prompt-cache group's
leader. A request rendered from a table row (``submit --template``) has that row written to
``table_rows`` beside it. The batch's counters (`batchrun.store.counters`) are added up chunk
by chunk from the rows as they are written, and set once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from batchrun.records import (
    PLACEHOLDER_PREFIX,
    CacheTtl,
    Lane,
    NewBatch,
    NewRequest,
    placeholder_custom_ids,
)
from batchrun.store import tables as t
from batchrun.store.counters import TOKEN_COLUMNS, CounterChanges
from batchrun.store.reuse import NewRequestPlan

# Rows per INSERT round trip while ingesting, and the most request text one holds: a file
# of large requests (images) is written in smaller chunks, so memory stays flat.
INGEST_CHUNK_ROWS = 1000
INGEST_CHUNK_BYTES = 16 * 1024 * 1024
# SQLite's page cache while a batch's rows are written (taken only as pages are used).
INGEST_CACHE_KIB = 32 * 1024
_UNNAMED_PREFIX = "#"


def insert_batch(
    conn: Connection, batch: NewBatch, new_requests: Iterable[NewRequest]
) -> tuple[int, int]:
    """Insert the batch and all its requests; returns (requests, of which final already:
    rejected, or answered from a stored result with ``batch.reuse``). Requests sharing a
    cached prompt prefix, and with ``batch.reuse`` duplicates, are set to wait for the first
    of them (see `batchrun.store.reuse`)."""
    conn.execute(
        insert(t.batches).values(
            id=batch.id,
            name=batch.name,
            endpoint=batch.endpoint,
            source=batch.source,
            request_count=0,
            created_at=batch.created_at,
            expires_at=batch.expires_at,
            max_cost_usd=batch.max_cost_usd,
            lane=batch.lane,
            owner=batch.owner,
            repair_limit=batch.repair_limit,
            cache_ttl=batch.cache_ttl,
        )
    )
    count = 0
    final = 0
    unnamed: list[tuple[int, int]] = []
    plan = NewRequestPlan(
        batch.id,
        batch.created_at,
        reuse=batch.reuse,
        leaders_in_real_time=batch.lane == Lane.BATCH,
        one_hour_groups=batch.lane == Lane.BATCH and batch.cache_ttl == CacheTtl.AUTO,
    )
    changes = CounterChanges()
    with _ingest_page_cache(conn):
        for chunk in _chunks(new_requests):
            final += _insert_chunk(conn, batch, chunk, unnamed, plan, changes)
            final += plan.complete(conn, chunk, changes)
            count += len(chunk)
    if unnamed:
        _name_unnamed(conn, batch.id, unnamed)
    conn.execute(update(t.batches).where(t.batches.c.id == batch.id).values(request_count=count))
    changes.apply(conn)
    return count, final


@contextmanager
def _ingest_page_cache(conn: Connection) -> Iterator[None]:
    """On SQLite, a page cache of INGEST_CACHE_KIB while the requests are written, then the
    connection's own again: a large submit writes every index of its requests in one
    transaction (the params digests' in random order), and with the default 2 MiB its pages
    went back and forth to the file (100,000 lines: about a fifth of the store's time)."""
    if conn.dialect.name != "sqlite":
        yield
        return
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size=-{INGEST_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={int(before or 0)}")


def _chunks(requests: Iterable[NewRequest]) -> Iterator[list[NewRequest]]:
    """Consecutive requests, at most INGEST_CHUNK_ROWS or about INGEST_CHUNK_BYTES at a time."""
    chunk: list[NewRequest] = []
    size = 0
    for request in requests:
        chunk.append(request)
        size += len(request.params_json)
        if len(chunk) >= INGEST_CHUNK_ROWS or size >= INGEST_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _insert_chunk(
    conn: Connection,
    batch: NewBatch,
    chunk: Sequence[NewRequest],
    unnamed: list[tuple[int, int]],
    plan: NewRequestPlan,
    changes: CounterChanges,
) -> int:
    """Insert one chunk of requests, as ``plan`` decides them, and the results of its
    rejected lines; returns how many were rejected. Appends (request id, line_no) of the
    unnamed ones to ``unnamed``; adds the rows to ``changes``."""
    # The batch lane's requests wait for a provider batch; "auto" decides at run time. As
    # the plain string: sqlite3 binds a str subclass through its adapter lookup, per row.
    lane = (Lane.BATCH if batch.lane == Lane.BATCH else Lane.REALTIME).value
    rows = [_request_row(batch.id, request, lane) for request in chunk]
    plan.decide(conn, chunk, rows)
    table_rows = [
        {"batch_id": batch.id, "row_no": request.line_no, "data": request.input_row}
        for request in chunk
        if request.input_row is not None
    ]
    if table_rows:
        conn.execute(insert(t.table_rows), table_rows)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    for state, n in states.items():
        changes.created(batch.id, state, n)
    if all(request.rejected is None for request in chunk):
        _insert_valid_rows(conn, rows)
        return 0
    # The result rows need the new request ids, in the order of the rows.
    ids = conn.scalars(
        insert(t.requests).returning(t.requests.c.id, sort_by_parameter_order=True), rows
    ).all()
    results: list[dict[str, Any]] = []
    for request_id, request, row in zip(ids, chunk, rows, strict=True):
        if request.rejected is None:
            continue
        if request.custom_id is None:
            unnamed.append((request_id, request.line_no))
        results.append(
            {
                "request_id": request_id,
                "batch_id": batch.id,
                "custom_id": row["custom_id"],
                "result_type": t.ERRORED,
                "error_type": request.rejected.error_type,
                "error_message": request.rejected.message,
                "attempts": 0,
                "completed_at": batch.created_at,
                "body": request.rejected.body,
            }
        )
    conn.execute(insert(t.results), results)
    changes.results(
        {"model": None, "lane": None, "cost_factor": None, "reused_from": None, "endpoint": None}
        | {name: None for name in TOKEN_COLUMNS}
        | row
        for row in results
    )
    return len(results)


# Columns of a valid line's row whose text is clean already (no NUL, no lone surrogate):
# orjson wrote the params (it escapes NUL and refuses surrogates), a valid custom_id is
# letters, digits, "_" and "-", a valid line has no last error, the digest is hex, and the
# batch id, state and lane are ours. The others (the model) go through their column type's
# bind processor where it changes them.
_CLEAN_COLUMNS = frozenset(
    {"batch_id", "custom_id", "params", "params_digest", "state", "lane", "last_error"}
)


def _insert_valid_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT the rows of valid lines with one ``executemany`` of the driver: the statement
    compiled once, and values bound as tuples (SQLAlchemy's per-row parameter processing
    cost more than the insert itself at ingest). A column that is None in every row of the
    chunk (``last_error``; ``wait_for`` and ``copy_of`` unless requests wait) is written as
    ``NULL`` in the statement instead of bound: sqlite3 binds None through its adapter lookup,
    which cost about a tenth of the insert."""
    dialect = conn.dialect
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    keys = list(rows[0])
    bound = [key for key in keys if any(row[key] is not None for row in rows)]
    # A processor that changes none of the chunk's values (the model: a few distinct ones,
    # almost never with a NUL) is left out, so most chunks need none.
    processors = [
        (index, processor)
        for index, key in enumerate(bound)
        if key not in _CLEAN_COLUMNS
        and (processor := t.requests.c[key].type.bind_processor(dialect)) is not None
        and any(processor(value) != value for value in {row[key] for row in rows})
    ]
    places = ", ".join(marker if key in bound else "NULL" for key in keys)
    statement = f"INSERT INTO requests ({', '.join(keys)}) VALUES ({places})"
    # A tuple per row, made in C (the batch id, line_no, custom_id... are never None, so
    # there are always several keys, and itemgetter gives tuples).
    values: list[tuple[Any, ...]] = list(map(itemgetter(*bound), rows))
    if processors:
        values = [_processed(value, processors) for value in values]
    conn.exec_driver_sql(statement, values)


def _processed(
    value: tuple[Any, ...], processors: Sequence[tuple[int, Callable[[Any], Any]]]
) -> tuple[Any, ...]:
    """``value`` with each ``(index, processor)`` applied at its index."""
    items = list(value)
    for index, processor in processors:
        items[index] = processor(items[index])
    return tuple(items)


def _name_unnamed(conn: Connection, batch_id: str, unnamed: Sequence[tuple[int, int]]) -> None:
    """Give rejected lines without a custom_id their placeholder, unique in the batch."""
    req = t.requests.c
    taken = conn.scalars(
        select(req.custom_id).where(
            req.batch_id == batch_id, req.custom_id.like(PLACEHOLDER_PREFIX + "%")
        )
    ).all()
    names = placeholder_custom_ids((line_no for _, line_no in unnamed), taken)
    renames = [{"rid": request_id, "cid": names[line_no]} for request_id, line_no in unnamed]
    conn.execute(
        update(t.requests).where(req.id == bindparam("rid")).values(custom_id=bindparam("cid")),
        renames,
    )
    conn.execute(
        update(t.results)
        .where(t.results.c.request_id == bindparam("rid"))
        .values(custom_id=bindparam("cid")),
        renames,
    )


def _request_row(batch_id: str, request: NewRequest, lane: str) -> dict[str, Any]:
    custom_id = request.custom_id
    if custom_id is None:
        custom_id = f"{_UNNAMED_PREFIX}{request.line_no}"
    return {
        "batch_id": batch_id,
        "line_no": request.line_no,
        "custom_id": custom_id,
        "model": request.model,
        "max_tokens": request.max_tokens,
        "params": request.params_json,
        "estimated_input_tokens": request.estimated_input_tokens,
        "state": t.QUEUED if request.rejected is None else t.ERRORED,
        "attempts": 0,
        "failures": 0,
        "last_error": None if request.rejected is None else request.rejected.message,
        "lane": lane,
        "params_digest": request.params_digest,
        "wait_for": None,
        "copy_of": None,
    }
