"""Usage by model: the one statement that totals the tokens of a set of batches' answers per
model, lane and share of the list price (:func:`read_usage`), and :class:`UsageReads`, the
store's section that runs it.

The dashboard's cards (with the recent window for throughput), the report's cost over time
(per bucket of ``completed_at``: an answer costs when it is in) and ``/metrics`` (per
requested model too) read it. ``status``, the batch object, budgets and cost notices during
a run and the batch lane read the same totals from the batches' counters instead
(:meth:`UsageReads.by_model`, ``batch_usage`` in `batchrun.store.breakdowns`), which the
tests hold equal to what :func:`priced` gives of this statement.

An answer is a succeeded or errored result; the tokens of the answers that did not match
their schema (``answer_turns``, their requests repaired since) are added to the groups
(:func:`read_turn_usage`), so the totals are the counters'; per request, for the exports'
rows, by :func:`read_request_turns`. An answer's model is the one it
names, else the request's (looked up only for an answer that names none: no join with the
requests, which on a large batch would be most of the time).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select

from batchrun.records import Lane, ModelTokens
from batchrun.store import tables as t
from batchrun.store.breakdowns import usage_of
from batchrun.store.database import transaction
from batchrun.store.series import epoch_bucket, limit_input_tokens


@dataclass(frozen=True)
class Usage:
    """A batch's answers of one kind: the ``model`` that answered (the request's when the
    answer names none), the ``lane``, the share of the list price paid (``cost_factor``; 0
    for an answer reused from the database) and whether they were ``sent`` (False: reused).

    ``answers`` counts them, ``with_usage`` those that report usage, whose tokens the token
    fields add up; ``sends`` sums their attempts and ``sent`` counts those sent at least
    once; ``first_at`` and ``last_at`` are the first and last ``completed_at``. Asked per
    bucket, ``start`` is the bucket's (by ``completed_at``; else None). Asked per request,
    ``requested_model`` is the request's and ``state`` the result's (else None), and every
    final result counts (canceled and expired ones too, which report no usage). Asked with a
    window,
    the ``recent_*`` fields count the answers completed at its start or later, with their
    input tokens as limits count them (input plus cache writes) and output tokens.
    """

    batch_id: str
    model: str
    lane: str
    cost_factor: float
    sent: bool
    answers: int
    with_usage: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    sends: int = 0
    sent_once: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    start: datetime | None = None
    requested_model: str | None = None
    state: str | None = None
    recent_answers: int = 0
    recent_input_tokens: int = 0
    recent_output_tokens: int = 0
    # The 1-hour part of the cache writes (the results'; repaired answers keep none).
    cache_creation_1h_input_tokens: int = 0

    @property
    def has_tokens(self) -> bool:
        """Whether any token is counted here (answers without usage count none)."""
        return bool(
            self.input_tokens
            or self.output_tokens
            or self.cache_creation_input_tokens
            or self.cache_read_input_tokens
        )

    def tokens(self) -> ModelTokens:
        """The token totals that price these answers (``requests``: those with usage)."""
        return ModelTokens(
            self.model,
            self.with_usage,
            self.input_tokens,
            self.output_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
            lane=self.lane,
            cost_factor=self.cost_factor,
            cache_creation_1h_input_tokens=self.cache_creation_1h_input_tokens,
        )


def read_usage(
    conn: Connection,
    batch_ids: Collection[str] | None,
    *,
    since: datetime | None = None,
    width_s: int | None = None,
    per_request: bool = False,
    with_turns: bool = True,
) -> list[Usage]:
    """The answers of these batches (None: of every batch) grouped by batch, model, lane,
    share of the list price and sent or reused (see :class:`Usage`), in one grouped
    statement, sorted by those. ``since``: the start of the recent window; ``width_s``: also
    per bucket of that many seconds of ``completed_at``; ``per_request``: every final
    result, also per the model the request names (joined with the requests) and the
    result's state (what ``/metrics`` counts requests and usage by, in one scan), then the
    groups of :func:`read_turn_usage` per requested model, with no state (they count no
    request). ``with_turns`` False: the results only (a database from before repairs).

    Measured on a 100,000-request batch with every result stored (2 kB prompts, 1 kB
    answers), with the window: 0.21 s on SQLite (a file on local disk), 0.14 s on Postgres
    15 (local socket), warm caches.
    """
    res, req = t.results.c, t.requests.c
    requested = select(req.model).where(req.id == res.request_id).scalar_subquery()
    model = func.coalesce(res.model, req.model if per_request else requested)
    groups: list[Any] = [res.batch_id]
    if width_s is not None:
        groups.append(
            epoch_bucket(res.completed_at, width_s, dialect=conn.dialect.name, name="bucket")
        )
    if per_request:
        groups += [req.model, res.result_type]
    groups += [
        model,
        func.coalesce(res.lane, Lane.REALTIME),
        func.coalesce(res.cost_factor, 1.0),
        case((res.reused_from.is_(None), 1), else_=0),
    ]
    recent = res.completed_at >= since if since is not None else None
    windowed = (
        [
            func.sum(case((recent, 1), else_=0)),
            func.sum(case((recent, limit_input_tokens()), else_=0)),
            func.sum(case((recent, func.coalesce(res.output_tokens, 0)), else_=0)),
        ]
        if recent is not None
        else []
    )
    statement = select(
        *groups,
        func.count(),
        func.coalesce(func.sum(res.attempts), 0),
        func.coalesce(func.sum(case((res.attempts > 0, 1), else_=0)), 0),
        func.count(res.input_tokens),
        func.coalesce(func.sum(res.input_tokens), 0),
        func.coalesce(func.sum(res.output_tokens), 0),
        func.coalesce(func.sum(res.cache_creation_input_tokens), 0),
        func.coalesce(func.sum(res.cache_read_input_tokens), 0),
        func.coalesce(func.sum(res.cache_creation_1h_input_tokens), 0),
        func.min(res.completed_at),
        func.max(res.completed_at),
        *windowed,
    )
    if per_request:
        statement = statement.select_from(t.results.join(t.requests, req.id == res.request_id))
    else:
        statement = statement.where(res.result_type.in_([t.SUCCEEDED, t.ERRORED]))
    if batch_ids is not None:
        statement = statement.where(res.batch_id.in_(list(batch_ids)))
    statement = statement.group_by(*groups).order_by(*groups)
    found = []
    for row in conn.execute(statement).all():
        values = list(row)
        batch_id = values.pop(0)
        start = (
            datetime.fromtimestamp(int(values.pop(0)) * width_s, UTC)
            if width_s is not None
            else None
        )
        requested_model, state = (values.pop(0), values.pop(0)) if per_request else (None, None)
        name, lane, share, sent, count, sends, sent_once, priced, *numbers = values
        tokens_in, tokens_out, writes, reads, writes_1h = (int(value) for value in numbers[:5])
        first, last, *window = numbers[5:]
        n, n_in, n_out = (int(value or 0) for value in window) if window else (0, 0, 0)
        found.append(
            Usage(
                batch_id=batch_id,
                model=name,
                lane=lane,
                cost_factor=float(share),
                sent=bool(sent),
                answers=int(count),
                sends=int(sends),
                sent_once=int(sent_once),
                with_usage=int(priced),
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cache_creation_input_tokens=writes,
                cache_read_input_tokens=reads,
                cache_creation_1h_input_tokens=writes_1h,
                first_at=_utc(first),
                last_at=_utc(last),
                start=start,
                requested_model=requested_model,
                state=state,
                recent_answers=n,
                recent_input_tokens=n_in,
                recent_output_tokens=n_out,
            )
        )
    if with_turns and per_request:
        found += read_turn_usage(conn, batch_ids, per_request=True)
    elif with_turns:
        found = _with_turns(found, read_turn_usage(conn, batch_ids, since=since, width_s=width_s))
    return found


def read_turn_usage(
    conn: Connection,
    batch_ids: Collection[str] | None,
    *,
    since: datetime | None = None,
    width_s: int | None = None,
    per_request: bool = False,
) -> list[Usage]:
    """The tokens of these batches' answers that did not match their schema
    (``answer_turns``: sent, answered and paid, their requests repaired since), grouped as
    :func:`read_usage` groups results, as sent answers that count no answer (``answers``,
    ``with_usage`` and ``sends`` 0: their request's result counts it) but their tokens, times
    and, in the recent window, their sends. ``per_request``: also per the model the request
    names (``requested_model``; joined with the requests), ``state`` None."""
    a, req = t.answer_turns.c, t.requests.c
    requested = select(req.model).where(req.id == a.request_id).scalar_subquery()
    model = func.coalesce(a.model, req.model if per_request else requested)
    groups: list[Any] = [a.batch_id]
    if width_s is not None:
        groups.append(
            epoch_bucket(a.completed_at, width_s, dialect=conn.dialect.name, name="bucket")
        )
    if per_request:
        groups.append(req.model)
    groups += [model, func.coalesce(a.lane, Lane.REALTIME), func.coalesce(a.cost_factor, 1.0)]
    recent = a.completed_at >= since if since is not None else None
    limit_input = func.coalesce(a.input_tokens, 0) + func.coalesce(a.cache_creation_input_tokens, 0)
    windowed = (
        [
            func.sum(case((recent, 1), else_=0)),
            func.sum(case((recent, limit_input), else_=0)),
            func.sum(case((recent, func.coalesce(a.output_tokens, 0)), else_=0)),
        ]
        if recent is not None
        else []
    )
    statement = select(
        *groups,
        *(func.coalesce(func.sum(a[name]), 0) for name in _TOKEN_NAMES),
        func.min(a.completed_at),
        func.max(a.completed_at),
        *windowed,
    )
    if per_request:
        statement = statement.select_from(t.answer_turns.join(t.requests, req.id == a.request_id))
    if batch_ids is not None:
        statement = statement.where(a.batch_id.in_(list(batch_ids)))
    found = []
    for row in conn.execute(statement.group_by(*groups).order_by(*groups)).all():
        values = list(row)
        batch_id = values.pop(0)
        start = (
            datetime.fromtimestamp(int(values.pop(0)) * width_s, UTC)
            if width_s is not None
            else None
        )
        requested_model = values.pop(0) if per_request else None
        name, lane, share, tokens_in, tokens_out, writes, reads, first, last, *window = values
        n, n_in, n_out = (int(value or 0) for value in window) if window else (0, 0, 0)
        found.append(
            Usage(
                batch_id=batch_id,
                model=name,
                lane=lane,
                cost_factor=float(share),
                sent=True,
                answers=0,
                with_usage=0,
                input_tokens=int(tokens_in),
                output_tokens=int(tokens_out),
                cache_creation_input_tokens=int(writes),
                cache_read_input_tokens=int(reads),
                first_at=_utc(first),
                last_at=_utc(last),
                start=start,
                requested_model=requested_model,
                recent_answers=n,
                recent_input_tokens=n_in,
                recent_output_tokens=n_out,
            )
        )
    return found


_TOKEN_NAMES = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def read_request_turns(
    conn: Connection, request_ids: Sequence[int]
) -> dict[int, tuple[int, tuple[ModelTokens, ...]]]:
    """Per request (of these, which have turns), its answers that did not match their schema
    (``answer_turns``): how many answered a repair send, and their tokens per model (the
    turn's, else the request's), lane and share of the list price, as the batch's counters
    key them (``batchrun.store.repair_counts``); one grouped statement. The exports add them
    to each row (``ResultDetail.turns``)."""
    a, req = t.answer_turns.c, t.requests.c
    keys = (
        a.request_id,
        func.coalesce(a.model, req.model),
        func.coalesce(a.lane, Lane.REALTIME),
        func.coalesce(a.cost_factor, 1.0),
    )
    rows = conn.execute(
        select(
            *keys,
            func.sum(a.repair_send),
            func.count(a.input_tokens),
            *(func.coalesce(func.sum(a[name]), 0) for name in _TOKEN_NAMES),
        )
        .select_from(t.answer_turns.join(t.requests, req.id == a.request_id))
        .where(a.request_id.in_(list(request_ids)))
        .group_by(*keys)
        .order_by(*keys)
    )
    found: dict[int, tuple[int, tuple[ModelTokens, ...]]] = {}
    for request_id, model, lane, factor, sent, with_usage, *tokens in rows:
        before_sent, before = found.get(request_id, (0, ()))
        tokens_in, tokens_out, writes, reads = (int(value) for value in tokens)
        item = ModelTokens(
            model,
            int(with_usage),
            tokens_in,
            tokens_out,
            writes,
            reads,
            lane=lane,
            cost_factor=float(factor),
        )
        found[request_id] = (before_sent + int(sent or 0), (*before, item))
    return found


def _with_turns(found: list[Usage], turns: list[Usage]) -> list[Usage]:
    """``found`` (results' groups) with ``turns`` added: to the group of the same key, else
    as groups of their own, kept in the order of the keys."""
    if not turns:
        return found
    index = {_key(usage): position for position, usage in enumerate(found)}
    added = False
    for turn in turns:
        position = index.get(_key(turn))
        if position is None:
            index[_key(turn)] = len(found)
            found.append(turn)
            added = True
            continue
        seen = found[position]
        found[position] = replace(
            seen,
            **{name: getattr(seen, name) + getattr(turn, name) for name in _TOKEN_NAMES},
            first_at=_earliest(seen.first_at, turn.first_at),
            last_at=_latest(seen.last_at, turn.last_at),
            recent_answers=seen.recent_answers + turn.recent_answers,
            recent_input_tokens=seen.recent_input_tokens + turn.recent_input_tokens,
            recent_output_tokens=seen.recent_output_tokens + turn.recent_output_tokens,
        )
    if added:
        found.sort(key=_key)
    return found


def _key(usage: Usage) -> tuple[str, float, str, str, float, bool]:
    start = usage.start.timestamp() if usage.start is not None else 0.0
    return (usage.batch_id, start, usage.model, usage.lane, usage.cost_factor, usage.sent)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def priced(usages: Iterable[Usage]) -> list[ModelTokens]:
    """The token totals that price ``usages``: per model, lane and share of the list price,
    sent and reused answers together, those without usage left out; in the order given."""
    merged: dict[tuple[str, str, float], ModelTokens] = {}
    for usage in usages:
        if not usage.with_usage and not usage.has_tokens:
            continue
        tokens = usage.tokens()
        key = (tokens.model, tokens.lane, tokens.cost_factor)
        seen = merged.get(key)
        merged[key] = tokens if seen is None else _added(seen, tokens)
    return list(merged.values())


class UsageReads:
    """The store's section that reads usage (see the module)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def of_batches(
        self,
        batch_ids: Collection[str] | None,
        *,
        since: datetime | None = None,
        width_s: int | None = None,
    ) -> list[Usage]:
        """:func:`read_usage` in a read transaction of its own."""
        with transaction(self._engine, write=False) as conn:
            return read_usage(conn, batch_ids, since=since, width_s=width_s)

    def by_model(self, batch_ids: Sequence[str]) -> dict[str, list[ModelTokens]]:
        """Token totals of the answers that report usage, per batch (every one asked for,
        empty when it has none), model, lane and share of the list price paid, for pricing:
        what :func:`priced` gives of :func:`read_usage`, read from the batches' counters
        (``batch_usage``, see `batchrun.store.breakdowns`)."""
        with transaction(self._engine, write=False) as conn:
            return usage_of(conn, batch_ids)


def _added(a: ModelTokens, b: ModelTokens) -> ModelTokens:
    return ModelTokens(
        a.model,
        a.requests + b.requests,
        a.input_tokens + b.input_tokens,
        a.output_tokens + b.output_tokens,
        a.cache_creation_input_tokens + b.cache_creation_input_tokens,
        a.cache_read_input_tokens + b.cache_read_input_tokens,
        lane=a.lane,
        cost_factor=a.cost_factor,
        cache_creation_1h_input_tokens=(
            a.cache_creation_1h_input_tokens + b.cache_creation_1h_input_tokens
        ),
    )


def _utc(value: Any) -> datetime | None:
    """An aggregate's time as an aware UTC datetime: ``min``/``max`` of a column come back
    without its type's conversion on SQLite (text there)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
