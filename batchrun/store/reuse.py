"""Not paying twice, and letting a prompt cache pay off: what a new request waits for, and
the answers that are copied instead of sent.

While a batch is stored, :class:`NewRequestPlan` decides for each chunk of requests, in line
order, before the chunk is inserted (so that most rows are written once, as they stay):

1. ``submit --reuse``: a request whose ``params_digest`` equals that of a request (any batch)
   that succeeded is answered at once: it is stored succeeded, with a copy of the result of
   the lowest such request id.
2. ``submit --reuse``: of the batch's other requests with equal digests, the first (lowest
   line) is sent; the rest are its copies (``copy_of`` = ``wait_for`` = its id).
3. Every submit: requests whose prompts share a ``cache_control`` prefix form a group; the
   first that is neither reused nor a copy leads, and the others wait for it
   (``wait_for``). A group of one gets nothing. In the batch lane the leader goes alone in
   real time; with ``one_hour_groups`` (``--cache-ttl auto``) the leader's and the
   followers' stored params get ``"ttl": "1h"`` on their breakpoints
   (:mod:`batchrun.store.cache_ttl`), so the leader's write outlives the provider's wait.

Whenever final results are stored (real time, a provider batch's import), call
:func:`settle_copies` in the same transaction: the copies of requests that succeeded take
their result.

The statements use indexes that fit whatever the planner knows: right after a large submit
neither SQLite (no ANALYZE) nor Postgres (no autovacuum yet) has statistics, and a lookup
that took ``(batch_id, state)`` or ``result_type`` instead of ``params_digest`` would turn
quadratic. So lookups filter on the digest alone (the state is tested inside the aggregate),
and rows are then reached by primary key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    exists,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.sql import FromClause

from batchrun.records import Lane, NewRequest
from batchrun.store import tables as t
from batchrun.store.base import end_finished_batches
from batchrun.store.cache_ttl import with_one_hour_ttl
from batchrun.store.counters import CounterChanges, counted_result_columns
from batchrun.store.database import upsert_insert

# Request ids per statement when settling copies (bound parameters in one IN list).
SETTLE_CHUNK_IDS = 1000
# Requests waiting for the same one are updated in one statement (``id IN (...)``) from
# this many in a chunk; fewer, row by row in one executemany with the others.
_IN_LIST_MIN_ROWS = 8

# A copied result: what it takes from the result it copies, and what it sets itself.
_COPIED_COLUMNS = (
    "result_type",
    "http_status",
    "model",
    "stop_reason",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_1h_input_tokens",
    "request_ref",
    "body",
    "raw_body",
    "endpoint",
    "lane",
)
_OWN_COLUMNS = (
    "request_id",
    "batch_id",
    "custom_id",
    "attempts",
    "completed_at",
    "cost_factor",
    "reused_from",
)


def _copied_result(
    source: Any,
    *,
    request_id: ColumnElement[Any],
    batch_id: ColumnElement[Any],
    custom_id: ColumnElement[Any],
    reused_from: ColumnElement[Any],
    now: datetime,
) -> tuple[list[str], list[ColumnElement[Any]]]:
    """The columns and values of a copy of the result row ``source``: the same answer and
    usage; nothing sent (0 attempts, no latency, no estimate), nothing paid (cost factor 0)."""
    values: list[ColumnElement[Any]] = [
        request_id,
        batch_id,
        custom_id,
        literal(0, Integer()),
        literal(now, t.UtcDateTime()),
        literal(0.0, t.results.c.cost_factor.type),
        reused_from,
    ]
    values.extend(source.c[name] for name in _COPIED_COLUMNS)
    return [*_OWN_COLUMNS, *_COPIED_COLUMNS], values


def _json_rows(
    conn: Connection, name: str, columns: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> FromClause:
    """``rows`` as a table ``name`` with ``columns`` (name → type), bound as one JSON
    parameter: the statement text is the same whatever their number, so it is compiled once
    and cached, and its planner sees a small table to drive index probes from."""
    document = bindparam(f"{name}_json", json.dumps(list(rows)), type_=String())
    if conn.dialect.name == "postgresql":
        return (
            func.json_to_recordset(cast(document, JSON()))
            .table_valued(*(column(key, kind) for key, kind in columns.items()))
            .render_derived(name=name, with_types=True)
        )
    each = func.json_each(document).table_valued("value")
    return select(
        *(func.json_extract(each.c.value, f"$.{key}").label(key) for key in columns)
    ).subquery(name)


def _requests_by_digest(
    conn: Connection, digests: Sequence[str], batch_id: str
) -> tuple[dict[str, int], dict[str, int]]:
    """For these params digests, those that have one: the lowest id of a succeeded request
    (any batch), and of an original of ``batch_id`` (a queued request that copies nothing:
    stored from an earlier chunk of this submit). One probe per digest, on the digest alone
    (the rest is tested inside the aggregates, which also keeps Postgres from walking the
    primary key for a min()). The originals are looked up rather than remembered, so a
    submit's memory does not grow with its distinct requests."""
    wanted = _json_rows(conn, "wanted", {"digest": Text()}, [{"digest": d} for d in digests])
    req = t.requests.c
    original = and_(req.batch_id == batch_id, req.state == t.QUEUED, req.copy_of.is_(None))
    found = conn.execute(
        select(
            wanted.c.digest,
            select(func.min(case((req.state == t.SUCCEEDED, req.id))))
            .where(req.params_digest == wanted.c.digest)
            .scalar_subquery(),
            select(func.min(case((original, req.id))))
            .where(req.params_digest == wanted.c.digest)
            .scalar_subquery(),
        )
    )
    succeeded: dict[str, int] = {}
    originals: dict[str, int] = {}
    for digest, succeeded_id, original_id in found:
        if succeeded_id is not None:
            succeeded[digest] = succeeded_id
        if original_id is not None:
            originals[digest] = original_id
    return succeeded, originals


@dataclass
class _Chunk:
    """One chunk's decisions, made before it is inserted, completed after."""

    # Reused: (line, custom_id, source request id).
    reused: list[tuple[int, str, int]] = field(default_factory=list)
    # The first of a digest or of a prefix in this chunk: key → line.
    originals: dict[str, int] = field(default_factory=dict)
    leaders: dict[str, int] = field(default_factory=dict)
    # Rows waiting for a row of this same chunk, whose id is known once inserted:
    # (line, line waited for, whether a copy).
    waits_in_chunk: list[tuple[int, int, bool]] = field(default_factory=list)
    # Leaders of earlier chunks that got their first follower now.
    led_earlier: list[int] = field(default_factory=list)


class NewRequestPlan:
    """What the requests of a batch being stored wait for, and which are answered at once
    (see the module docstring), decided chunk by chunk in line order: :meth:`decide` fills
    in a chunk's rows before they are inserted, :meth:`complete` finishes after.

    Holds the first request id of each prefix key seen so far (about 150 bytes each); the
    first of each params digest (with ``reuse``) is looked up in the database, chunk by
    chunk, so the plan does not grow with a file of distinct requests.
    """

    def __init__(
        self,
        batch_id: str,
        now: datetime,
        *,
        reuse: bool,
        leaders_in_real_time: bool,
        one_hour_groups: bool = False,
    ) -> None:
        self._batch_id = batch_id
        self._now = now
        self._reuse = reuse
        # A provider batch takes minutes to hours, and a cache entry lives for minutes: in
        # the batch lane a leader's cache write would have expired before its followers ran.
        # So a leader goes alone in real time, and its followers then go in provider batches.
        self._leaders_in_real_time = leaders_in_real_time
        # The group's write must also outlive the wait: the 1-hour TTL (store.cache_ttl).
        self._one_hour = one_hour_groups and leaders_in_real_time
        self._leaders: dict[str, int] = {}
        self._led: set[int] = set()
        self._chunk = _Chunk()

    def decide(
        self,
        conn: Connection,
        chunk: Sequence[NewRequest],
        rows: Sequence[MutableMapping[str, Any]],
    ) -> None:
        """Set the state, ``wait_for``, ``copy_of`` and lane of ``rows`` (the chunk's rows,
        about to be inserted) as far as they are known before the insert."""
        plan = self._chunk = _Chunk()
        sources: dict[str, int] = {}
        originals: dict[str, int] = {}
        if self._reuse:
            digests = sorted({r.params_digest for r in chunk if r.params_digest and not r.rejected})
            if digests:
                sources, originals = _requests_by_digest(conn, digests, self._batch_id)
        row_at = {request.line_no: row for request, row in zip(chunk, rows, strict=True)}
        for request, row in zip(chunk, rows, strict=True):
            if request.rejected is not None:
                continue
            line = request.line_no
            if self._reuse and request.params_digest is not None:
                source = sources.get(request.params_digest)
                if source is not None:
                    row["state"] = t.SUCCEEDED
                    assert request.custom_id is not None  # valid lines have one
                    plan.reused.append((line, request.custom_id, source))
                    continue
                key = request.params_digest
                if self._wait(row, key, originals, plan.originals, line, copy=True):
                    continue
            prefix = request.cache_prefix
            if prefix is not None and self._wait(
                row, prefix, self._leaders, plan.leaders, line, copy=False
            ):
                if self._one_hour:
                    row["params"] = with_one_hour_ttl(row["params"])
                leader = self._leaders.get(prefix)
                if leader is None:
                    leader_row = row_at[plan.leaders[prefix]]
                    if self._leaders_in_real_time and leader_row["lane"] != Lane.REALTIME:
                        leader_row["lane"] = Lane.REALTIME
                        if self._one_hour:
                            leader_row["params"] = with_one_hour_ttl(leader_row["params"])
                elif leader not in self._led:
                    self._led.add(leader)
                    plan.led_earlier.append(leader)

    def _wait(
        self,
        row: MutableMapping[str, Any],
        key: Any,
        earlier: Mapping[Any, int],
        in_chunk: dict[Any, int],
        line: int,
        *,
        copy: bool,
    ) -> bool:
        """Make ``row`` wait for the first request with ``key`` if there is one (True), or
        make it that first (False)."""
        first = earlier.get(key)
        if first is not None:
            row["wait_for"] = first
            if copy:
                row["copy_of"] = first
            return True
        first_line = in_chunk.setdefault(key, line)
        if first_line == line:
            return False
        self._chunk.waits_in_chunk.append((line, first_line, copy))
        return True

    def complete(
        self, conn: Connection, chunk: Sequence[NewRequest], changes: CounterChanges
    ) -> int:
        """After the chunk's insert: copy the reused results, set what could not be set
        before (waits on rows of the same chunk, leaders of earlier chunks going real time)
        and remember the chunk's firsts. Returns how many requests were answered; the
        copied results, and the requests whose source was gone, are added to ``changes``."""
        plan = self._chunk
        req = t.requests.c
        ids: dict[int, int] = {}
        if plan.reused or plan.waits_in_chunk or plan.leaders:
            found = conn.execute(
                select(req.line_no, req.id).where(
                    req.batch_id == self._batch_id,
                    req.line_no.between(chunk[0].line_no, chunk[-1].line_no),
                )
            )
            ids = {line: request_id for line, request_id in found}
        for prefix, line in plan.leaders.items():
            self._leaders[prefix] = ids[line]
        waits: dict[tuple[int, int | None], list[int]] = {}
        for line, first_line, copy in plan.waits_in_chunk:
            first = ids[first_line]
            waits.setdefault((first, first if copy else None), []).append(ids[line])
        _set_waits(conn, waits)
        if self._leaders_in_real_time and plan.led_earlier:
            conn.execute(
                update(t.requests).where(req.id.in_(plan.led_earlier)).values(lane=Lane.REALTIME)
            )
            if self._one_hour:
                _one_hour_leaders(conn, plan.led_earlier)
        reused = [(ids[line], cid, src) for line, cid, src in plan.reused]
        return self._copy_reused(conn, reused, changes)

    def _copy_reused(
        self, conn: Connection, reused: Sequence[tuple[int, str, int]], changes: CounterChanges
    ) -> int:
        """Give each (request id, custom_id, source request id) a copy of the source's
        result; a request whose source is gone (deleted since it was looked up) goes back
        to the queue. Returns how many were answered."""
        if not reused:
            return 0
        pairs = _json_rows(
            conn,
            "pairs",
            {"rid": BigInteger(), "cid": Text(), "sid": BigInteger()},
            [{"rid": rid, "cid": cid, "sid": sid} for rid, cid, sid in reused],
        )
        source = t.results.alias("source")
        source_request = t.requests.alias("source_request")
        columns, copied = _copied_result(
            source,
            request_id=pairs.c.rid,
            batch_id=literal(self._batch_id, t.requests.c.batch_id.type),
            custom_id=pairs.c.cid,
            reused_from=source_request.c.batch_id,
            now=self._now,
        )
        # Driven by the pairs, whose number the planner knows: results by primary key.
        written = (
            conn.execute(
                _copy_insert(conn)
                .from_select(
                    columns,
                    select(*copied)
                    .select_from(
                        pairs.join(source, source.c.request_id == pairs.c.sid).join(
                            source_request, source_request.c.id == source.c.request_id
                        )
                    )
                    .where(source.c.result_type == t.SUCCEEDED),
                )
                .returning(*counted_result_columns())
            )
            .mappings()
            .all()
        )
        changes.results(written)
        answered = {row["request_id"] for row in written}
        gone = [rid for rid, _, _ in reused if rid not in answered]
        if gone:
            conn.execute(update(t.requests).where(t.requests.c.id.in_(gone)).values(state=t.QUEUED))
            changes.moved(self._batch_id, t.SUCCEEDED, t.QUEUED, len(gone))
        return len(answered)


def _one_hour_leaders(conn: Connection, leader_ids: Sequence[int]) -> None:
    """Give the stored params of these leaders (of earlier chunks) the 1-hour TTL."""
    req = t.requests.c
    found = conn.execute(select(req.id, req.params).where(req.id.in_(leader_ids))).all()
    changed = [
        {"rid": request_id, "new_params": new}
        for request_id, params in found
        if (new := with_one_hour_ttl(params)) != params
    ]
    if changed:
        conn.execute(
            update(t.requests)
            .where(req.id == bindparam("rid"))
            .values(params=bindparam("new_params")),
            changed,
        )


def _set_waits(conn: Connection, waits: Mapping[tuple[int, int | None], list[int]]) -> None:
    """Set ``wait_for`` and ``copy_of`` of the requests listed under each (wait_for,
    copy_of): one ``id IN (...)`` statement for a value shared by many, one executemany for
    the rest."""
    req = t.requests.c
    one_by_one: list[dict[str, int | None]] = []
    for (wait_for, copy_of), ids in waits.items():
        if len(ids) >= _IN_LIST_MIN_ROWS:
            conn.execute(
                update(t.requests).where(req.id.in_(ids)).values(wait_for=wait_for, copy_of=copy_of)
            )
        else:
            one_by_one.extend(
                {"rid": request_id, "wait": wait_for, "copy": copy_of} for request_id in ids
            )
    if one_by_one:
        conn.execute(
            update(t.requests)
            .where(req.id == bindparam("rid"))
            .values(wait_for=bindparam("wait"), copy_of=bindparam("copy")),
            one_by_one,
        )


def batches_with_copies(conn: Connection, batch_ids: Iterable[str]) -> set[str]:
    """Those of these batches that have copies (``copy_of``): one look each, which stops at
    the first copy."""
    req = t.requests.c
    return {
        batch_id
        for batch_id in batch_ids
        if conn.scalar(
            select(literal(True)).where(
                exists().where(req.batch_id == batch_id, req.copy_of.is_not(None))
            )
        )
    }


def settle_copies(
    conn: Connection, request_ids: Iterable[int], now: datetime, changes: CounterChanges
) -> int:
    """Give the queued copies (``copy_of``) of these requests, those whose result is stored
    and succeeded, a copy of that result (``reused_from``: their own batch, cost factor 0)
    and the state succeeded; end the batches left with nothing open. Copies of a request
    that ended otherwise are left as they are: the request they wait for is final, so they
    are sent themselves.

    Call it with the ids of requests whose final results were just written, on the same
    connection, inside that transaction; ids of requests without copies cost one indexed
    statement per 1,000. The copies' results and states are added to ``changes`` (the
    caller applies them in the same transaction). Returns how many copies succeeded."""
    settled = 0
    batch_ids: set[str] = set()
    copy = t.requests.c
    original = t.results.alias("original")
    columns, copied = _copied_result(
        original,
        request_id=copy.id,
        batch_id=copy.batch_id,
        custom_id=copy.custom_id,
        reused_from=copy.batch_id,
        now=now,
    )
    for chunk in _chunks(request_ids):
        copies = _queued_copies(conn, chunk)
        for part in _chunks(copies):
            written = conn.execute(
                _copy_insert(conn)
                .from_select(
                    columns,
                    select(*copied)
                    .select_from(t.requests.join(original, original.c.request_id == copy.copy_of))
                    .where(
                        copy.id.in_(part),
                        copy.state == t.QUEUED,
                        original.c.result_type == t.SUCCEEDED,
                    ),
                )
                .returning(*counted_result_columns())
            ).all()
            if not written:
                continue
            changes.results(row._mapping for row in written)
            answered = [row.request_id for row in written]
            touched = conn.scalars(
                update(t.requests)
                .where(copy.id.in_(answered), copy.state == t.QUEUED)
                .values(state=t.SUCCEEDED)
                .returning(copy.batch_id)
            ).all()
            for batch_id in touched:
                changes.moved(batch_id, t.QUEUED, t.SUCCEEDED)
            settled += len(touched)
            batch_ids.update(touched)
    if batch_ids:
        end_finished_batches(conn, sorted(batch_ids), now)
    return settled


def _queued_copies(conn: Connection, request_ids: Sequence[int]) -> list[int]:
    """The ids of the queued copies of these requests. One lookup per request, by the
    ``copy_of`` index alone (the state is tested inside the aggregate): the common answer,
    none, costs one indexed probe per id whatever the planner knows about the table."""
    finished = _json_rows(
        conn, "finished", {"id": BigInteger()}, [{"id": request_id} for request_id in request_ids]
    )
    copy = t.requests.alias("copy")
    queued = case((copy.c.state == t.QUEUED, cast(copy.c.id, String())))
    listed = (
        select(func.aggregate_strings(queued, ","))
        .where(copy.c.copy_of == finished.c.id)
        .scalar_subquery()
    )
    found: list[int] = []
    for (ids,) in conn.execute(select(listed).select_from(finished)):
        if ids:
            found.extend(int(text) for text in ids.split(","))
    return found


def _copy_insert(conn: Connection) -> Any:
    """An INSERT of copied results that leaves a request that has a result as it is."""
    return upsert_insert(conn.engine)(t.results).on_conflict_do_nothing(
        index_elements=["request_id"]
    )


def _chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    """``ids`` in lists of at most SETTLE_CHUNK_IDS."""
    rest = iter(ids)
    while chunk := list(islice(rest, SETTLE_CHUNK_IDS)):
        yield chunk
