"""The job tables, written for SQLite and Postgres alike.

Request states and the only transitions between them::

    (new)   → queued     a valid line is submitted
    (new)   → errored    an invalid line is submitted with --skip-invalid; its result row (an
                         invalid_request_error) is written in the same transaction
    queued  → running    a worker claims it (lease taken; attempts counts sends, not claims)
    queued  → canceled   the batch is canceled before the request was claimed
    queued  → expired    the batch expired before the request was claimed
    running → succeeded  the response was a Message; its result row is written in the same
                         transaction
    running → errored    a final failure, or the attempts ran out
    running → queued     a transient failure (not_before set for the back-off), a 429 (its
                         retry-after), a halt of the batch (authentication, billing), or a lease
                         that expired because its worker died
    running → canceled   the batch was canceled while the worker held the request unsent
    queued  → provider   taken into a provider batch (batch lane), in the same transaction as
                         that provider batch's intent row (see batchrun.batch_lane)
    provider → succeeded | errored | canceled | expired
                         its provider batch's result was imported (result row written with it)
    provider → queued    the provider expired it or failed it transiently, or canceled it at
                         the auto lane's cut-off (now in the real-time lane); or the create is
                         known not to have happened (back in the batch lane)
    (new)   → succeeded  ``submit --reuse``: the same params already succeeded (any batch); a
                         copy of that result row is written in the same transaction
    queued  → succeeded  a copy (``copy_of``, ``submit --reuse``): the request it waits for
                         succeeded; a copy of its result row is written in the same transaction

A queued request with ``wait_for`` set is not claimed while that request is open (the first
of a prompt-cache group answers alone; a duplicate waits for its original). Only requests of
the ``realtime`` lane are claimed by the dispatcher; ``batch`` ones go to provider batches.

succeeded, errored, canceled and expired are final: each final request has exactly one row in
``results`` (primary key ``request_id``), written in the same transaction as the final state.
Each batch row counts its requests per reported state and sums its results' tokens
(``n_*``, ``sum_*``; see batchrun.store.counters): a statement that changes either changes
the counters in the same transaction.

A batch is ``in_progress`` until ``cancel_initiated_at`` is set (``canceling``) and ``ended``
once ``ended_at`` is set, which happens when none of its requests is queued or running.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

from batchrun.records import Lane
from batchrun.store.textsafe import safe_json_text, safe_text

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
ERRORED = "errored"
CANCELED = "canceled"
EXPIRED = "expired"
# Held by a provider batch (the batch lane): sent there, or about to be.
PROVIDER = "provider"
FINAL_STATES = (SUCCEEDED, ERRORED, CANCELED, EXPIRED)
OPEN_STATES = (QUEUED, RUNNING, PROVIDER)

# The lanes (batchrun.records.Lane): requests.lane and results.lane hold realtime or batch,
# batches.lane any of the three.
# requests.lane of a queued request no lane sends: its model has no price and its batch a
# budget (submit/run --hold-unpriced); a run gives it back to its lane once it has a price.
HELD = "held"

# A provider batch's record (provider_batches.state):
INTENT = "intent"  # about to be created; whether it was is not known yet
CREATED = "created"  # the provider has it (provider_id known); polled until it ends
IMPORTED = "imported"  # its results are in the results table
NOT_CREATED = "not_created"  # known never to have been created; its requests went back
AMBIGUOUS = "ambiguous"  # a create whose fate the evidence cannot settle; needs a person
PROVIDER_OPEN_STATES = (INTENT, CREATED, AMBIGUOUS)

# Alembic names constraints from this, so migrations are identical on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """A UTC instant: ``timestamptz`` on Postgres, naive UTC text on SQLite (which sorts and
    compares correctly as text); always an aware UTC datetime in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SafeString(TypeDecorator[str]):
    """A ``VARCHAR(n)``/``VARCHAR`` that stores any str: a NUL or a lone surrogate (which an
    answer's JSON may hold as an escape) becomes U+FFFD (``textsafe.safe_text``)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else safe_text(value)


class SafeText(TypeDecorator[str]):
    """A ``TEXT`` that stores any str, as :class:`SafeString` does."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else safe_text(value)


class JsonText(TypeDecorator[str]):
    """A ``TEXT`` holding JSON: a raw NUL or lone surrogate is stored as its JSON escape
    (``textsafe.safe_json_text``), so the JSON keeps exactly the value it had."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else safe_json_text(value)


# SQLite only auto-increments an INTEGER PRIMARY KEY; Postgres wants 64 bits for big tables.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

batches = Table(
    "batches",
    metadata,
    Column("id", SafeString(64), primary_key=True),
    Column("name", SafeString(200), nullable=True),
    Column("endpoint", SafeString(100), nullable=False),
    Column("source", SafeText, nullable=True, comment="the file the requests came from"),
    Column("request_count", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("cancel_initiated_at", UtcDateTime, nullable=True),
    Column("ended_at", UtcDateTime, nullable=True),
    Column(
        "paused_reason",
        SafeText,
        nullable=True,
        comment="why dispatch stopped (e.g. authentication failed); cleared by the next run",
    ),
    Column(
        "max_cost_usd",
        Float,
        nullable=True,
        comment="budget: no request is sent that could take the batch's cost past it",
    ),
    Column(
        "lane",
        SafeString(8),
        nullable=False,
        server_default=Lane.REALTIME,
        comment="realtime, batch (the provider's batch API) or auto",
    ),
    Column(
        "owner",
        SafeString(64),
        nullable=True,
        comment="the id of the serve key that created it (a hash, never the key)",
    ),
    Column(
        "repair_limit",
        Integer,
        nullable=False,
        server_default="1",
        comment="repair sends per request at most for an answer that does not match its "
        "schema (0: none)",
    ),
    Column(
        "cache_ttl",
        SafeString(8),
        nullable=False,
        server_default="keep",
        comment="the TTL policy of its prompt-cache groups in the batch lane (auto: 1 hour; "
        "keep), applied when the auto lane moves them there",
    ),
    # Maintained counters (batchrun.store.counters): requests per reported state and the
    # token totals of the results, kept by every statement that changes them.
    *(
        Column(name, Integer, nullable=False, server_default="0", comment=comment)
        for name, comment in (
            ("n_processing", "requests queued, running or held by a provider batch"),
            ("n_succeeded", "requests succeeded"),
            ("n_errored", "requests errored"),
            ("n_canceled", "requests canceled"),
            ("n_expired", "requests expired"),
        )
    ),
    *(
        Column(f"sum_{name}", BigInteger, nullable=False, server_default="0")
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    ),
    Column(
        "n_reused",
        Integer,
        nullable=False,
        server_default="0",
        comment="results that are a stored answer (submit --reuse): nothing was sent",
    ),
    Column(
        "n_repairs", Integer, nullable=False, server_default="0", comment="repair sends answered"
    ),
    Column("first_started_at", UtcDateTime, nullable=True, comment="the first claim"),
    Column(
        "last_completed_at",
        UtcDateTime,
        nullable=True,
        comment="the last succeeded or errored result's completed_at",
    ),
    # `batchrun serve` lists a key's batches newest first, a page at a time.
    Index(None, "owner", "created_at", "id"),
)

# Counters per batch and key, kept as the batch's own counters are (batchrun.store.breakdowns):
# what `status` shows of a batch without reading its requests or results. A row with every
# count 0 counts nothing (a key whose last result was deleted).
batch_usage = Table(
    "batch_usage",
    metadata,
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "model",
        SafeString(200),
        primary_key=True,
        comment="the model the answer names, else the request's",
    ),
    Column("lane", SafeString(8), primary_key=True, comment="realtime or batch"),
    Column("cost_factor", Float, primary_key=True, comment="the share of the list price paid"),
    Column("answers", Integer, nullable=False, comment="succeeded or errored results with usage"),
    *(
        Column(name, BigInteger, nullable=False)
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    ),
    Column(
        "cache_creation_1h_input_tokens",
        BigInteger,
        nullable=False,
        server_default="0",
        comment="of the cache writes, the 1-hour part",
    ),
)

batch_errors = Table(
    "batch_errors",
    metadata,
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("error_type", SafeString(64), primary_key=True, comment="'' for none"),
    Column("results", Integer, nullable=False, comment="errored results of this type"),
    Column("example", SafeText, nullable=True, comment="their least message (binary order)"),
)

batch_endpoints = Table(
    "batch_endpoints",
    metadata,
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("endpoint", SafeString(100), primary_key=True, comment="for a pool: the member"),
    Column("answers", Integer, nullable=False, comment="succeeded or errored, not reused"),
)

batch_held = Table(
    "batch_held",
    metadata,
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("model", SafeString(200), primary_key=True),
    Column("requests", Integer, nullable=False, comment="queued in lane held"),
)

requests = Table(
    "requests",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("line_no", Integer, nullable=False, comment="1-based line in the submitted file"),
    Column("custom_id", SafeString(64), nullable=False),
    Column("model", SafeString(200), nullable=False),
    Column("max_tokens", Integer, nullable=False),
    Column("params", JsonText, nullable=False, comment="Messages API body, JSON"),
    Column(
        "estimated_input_tokens",
        Integer,
        nullable=True,
        comment="raw input-token estimate made at submit (see batchrun.input.estimate)",
    ),
    Column("state", SafeString(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0, comment="times sent"),
    Column(
        "failures",
        Integer,
        nullable=False,
        default=0,
        comment="transient failures that used up the retry budget",
    ),
    Column("not_before", UtcDateTime, nullable=True, comment="earliest next send (back-off)"),
    Column("lease_owner", SafeString(200), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("last_error", SafeText, nullable=True, comment="the latest transient failure"),
    Column("started_at", UtcDateTime, nullable=True, comment="first claim"),
    Column(
        "lane",
        SafeString(8),
        nullable=False,
        server_default=Lane.REALTIME,
        comment="where it is sent next: realtime (the dispatcher) or batch (a provider batch)",
    ),
    Column(
        "provider_batch",
        ForeignKey("provider_batches.id", ondelete="SET NULL"),
        nullable=True,
        comment="the provider batch that holds it (state provider) or last held it",
    ),
    Column(
        "params_digest",
        SafeString(64),
        nullable=True,
        comment="SHA-256 of the params as canonical JSON (sorted keys), for submit --reuse",
    ),
    Column(
        "wait_for",
        _BigId,
        nullable=True,
        comment="not claimed while this request is open (prompt-cache group, duplicate)",
    ),
    Column(
        "copy_of",
        _BigId,
        nullable=True,
        comment="a duplicate in its batch: takes this request's result if it succeeds",
    ),
    Column(
        "repairs",
        Integer,
        nullable=False,
        server_default="0",
        comment="its answers that did not match the schema (answer_turns rows)",
    ),
    UniqueConstraint("batch_id", "custom_id"),
    Index(None, "batch_id", "line_no"),
    Index(None, "batch_id", "state"),
    Index(None, "state", "batch_id", "id"),
    # Filling a provider batch reads a batch's queued requests by prompt-cache group.
    Index(None, "batch_id", "state", "wait_for", "id"),
    Index(None, "params_digest"),
    Index(None, "provider_batch", "custom_id"),
    Index(None, "copy_of"),
)

results = Table(
    "results",
    metadata,
    Column(
        "request_id",
        _BigId,
        ForeignKey("requests.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("custom_id", SafeString(64), nullable=False),
    Column("result_type", SafeString(16), nullable=False),
    Column("http_status", Integer, nullable=True),
    Column("model", SafeString(200), nullable=True),
    Column("stop_reason", SafeString(64), nullable=True),
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("cache_creation_input_tokens", Integer, nullable=True),
    Column("cache_read_input_tokens", Integer, nullable=True),
    Column(
        "cache_creation_1h_input_tokens",
        Integer,
        nullable=True,
        comment="of the cache write, the 1-hour part (null: stored before it was kept)",
    ),
    Column("error_type", SafeString(64), nullable=True),
    Column("error_message", SafeText, nullable=True),
    Column(
        "estimated_input_tokens",
        Integer,
        nullable=True,
        comment="the calibrated input estimate the limiter reserved for the final attempt",
    ),
    Column("latency_ms", Integer, nullable=True, comment="of the final attempt"),
    Column(
        "sent_at",
        UtcDateTime,
        nullable=True,
        comment="when the final attempt was sent (null: not sent in real time)",
    ),
    Column("attempts", Integer, nullable=False),
    Column("request_ref", SafeString(200), nullable=True, comment="the API's request-id"),
    Column("completed_at", UtcDateTime, nullable=False),
    Column(
        "body",
        JsonText,
        nullable=True,
        comment="the Message (succeeded) or the error response (errored), JSON",
    ),
    Column(
        "raw_body",
        JsonText,
        nullable=True,
        comment="what the server sent, when body is not it (normalised, clamped or refused)",
    ),
    Column(
        "endpoint",
        SafeString(100),
        nullable=True,
        comment="the endpoint that answered (for a pool: the member)",
    ),
    Column(
        "lane",
        SafeString(8),
        nullable=True,
        comment="realtime (also when null) or batch: where it was answered",
    ),
    Column(
        "cost_factor",
        Float,
        nullable=True,
        comment="the share of the list price paid (the batch discount; 0 when reused); null is 1",
    ),
    Column(
        "reused_from",
        SafeString(64),
        nullable=True,
        comment="the batch whose stored answer this is (submit --reuse): nothing was sent",
    ),
    Index(None, "batch_id", "result_type"),
    # `status` counts each endpoint's answers of the minute up to the last one.
    Index(None, "batch_id", "completed_at"),
)

# Every real-time send that failed transiently and went back to the queue (a 429, a 529, a
# 5xx, a transport failure): what `batchrun report` draws as 429s and retries over time, and
# counts in the latency of each endpoint. The final attempt of a request is its result row.
send_failures = Table(
    "send_failures",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("request_id", ForeignKey("requests.id", ondelete="CASCADE"), nullable=False),
    Column("sent_at", UtcDateTime, nullable=False),
    Column("latency_ms", Integer, nullable=True),
    Column("endpoint", SafeString(100), nullable=True, comment="for a pool: the member"),
    Column("http_status", Integer, nullable=True, comment="null: no answer (transport)"),
    Column("error_type", SafeString(64), nullable=True),
    Index(None, "batch_id", "sent_at"),
    Index(None, "request_id"),
)

# The provider batches of the batch lane (see batchrun.batch_lane for the create protocol: the
# intent row is written, with its requests moved to state provider, before the create is sent).
provider_batches = Table(
    "provider_batches",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("endpoint", SafeString(100), nullable=False),
    Column("state", SafeString(16), nullable=False),
    Column("provider_id", SafeString(200), nullable=True, comment="the provider's batch id"),
    Column("request_count", Integer, nullable=False),
    Column("body_bytes", BigInteger, nullable=False, comment="size of the create body"),
    Column("intent_at", UtcDateTime, nullable=False, comment="database clock, before the create"),
    Column("created_at", UtcDateTime, nullable=True, comment="the provider's created_at"),
    Column("ended_at", UtcDateTime, nullable=True, comment="the provider's ended_at"),
    Column("imported_at", UtcDateTime, nullable=True),
    Column(
        "cancel_at",
        UtcDateTime,
        nullable=True,
        comment="auto lane: cancel it if it has not ended by then (real time takes over)",
    ),
    Column("cancel_sent_at", UtcDateTime, nullable=True, comment="when batchrun canceled it"),
    Column("next_poll_at", UtcDateTime, nullable=True),
    Column("polls", Integer, nullable=False, default=0),
    Column("poll_failures", Integer, nullable=False, default=0),
    Column("status", SafeString(16), nullable=True, comment="the provider's processing_status"),
    Column("counts", JsonText, nullable=True, comment="the provider's request_counts, JSON"),
    Column("results_url", SafeText, nullable=True),
    Column("note", SafeText, nullable=True, comment="the latest problem, or why it is ambiguous"),
    UniqueConstraint("endpoint", "provider_id"),
    Index(None, "batch_id", "state"),
)

# The rate-limit records that workers share (see batchrun.limits.keyrecord, which has the
# rules, and batchrun.limits.banks): one row per limiter key (endpoint × model, or × family
# pattern) in rate_keys, and one per key × limit in rate_buckets. A take locks the key's
# rate_keys row. Times are Unix seconds from the workers' clocks.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("endpoint", SafeString(100), primary_key=True),
    Column("model", SafeString(200), primary_key=True, comment="a model or a family pattern"),
    Column("dimension", SafeString(8), primary_key=True, comment="rpm, tpm, itpm or otpm"),
    Column("level", Float, nullable=False, comment="capacity left; negative is debt"),
    Column("rate_per_s", Float, nullable=False),
    Column("capacity", Float, nullable=False),
    Column("updated_at", Float, nullable=False, comment="Unix seconds"),
    Column(
        "announced",
        Float,
        nullable=True,
        comment="the limit per minute the server announced last (anthropic-ratelimit-*-limit)",
    ),
    Column(
        "learned",
        Float,
        nullable=True,
        comment="a lower limit per minute learned from 429s, as at learned_at; climbs from there",
    ),
    Column("learned_at", Float, nullable=True, comment="Unix seconds"),
)

rate_keys = Table(
    "rate_keys",
    metadata,
    Column("endpoint", SafeString(100), primary_key=True),
    Column("model", SafeString(200), primary_key=True, comment="a model or a family pattern"),
    Column(
        "paused_until",
        Float,
        nullable=False,
        comment="Unix seconds: nothing is sent before (after a 429 or 529)",
    ),
    Column(
        "lowered_at",
        Float,
        nullable=True,
        comment="the latest decrease of a learned limit (the cool-down counts from it)",
    ),
    Column("ramp_started_at", Float, nullable=True, comment="the start-up ramp's start"),
    Column(
        "ramp_from",
        Float,
        nullable=True,
        comment="when the ramp's climb starts (the first answer, at the latest a minute on)",
    ),
    Column(
        "admitted_requests",
        Float,
        nullable=False,
        comment="what the server let through lately: a sum decaying with time, as at admitted_at",
    ),
    Column("admitted_input_tokens", Float, nullable=False),
    Column("admitted_output_tokens", Float, nullable=False),
    Column("admitted_at", Float, nullable=False, comment="Unix seconds"),
    Column("measured_since", Float, nullable=True, comment="since when the admitted sums count"),
)

# How each endpoint fares as the workers see it (a pool member taken out of rotation after
# failures, or halted by bad credentials): written when it changes, read by `status`.
endpoint_health = Table(
    "endpoint_health",
    metadata,
    Column("endpoint", SafeString(100), primary_key=True),
    Column("state", SafeString(16), nullable=False, comment="closed, open or halted"),
    Column("reason", SafeText, nullable=True, comment="why it was taken out"),
    Column("until", Float, nullable=True, comment="Unix seconds of the next probe"),
    Column("updated_at", Float, nullable=False, comment="Unix seconds"),
)

# The limits each run sent a batch under (``batchrun.store.run_limits``): per run, batch and
# limiter key (endpoint × model or family pattern), a row saying when the run first sent the
# batch under the key (``source`` "sent", no dimension), then a row per limit and source when
# it is first seen and each time it changes by more than a few percent (a bounded number per
# run). A row holds from ``since`` until the next row of the same run, batch, key, dimension
# and source; a null value ends that source's limit (a learned limit climbed back).
batch_limits = Table(
    "batch_limits",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", SafeString(32), nullable=False, comment="one run (or serve worker session)"),
    Column("run_started_at", UtcDateTime, nullable=False),
    Column("endpoint", SafeString(100), nullable=False, comment="for a pool: the member"),
    Column("model", SafeString(200), nullable=False, comment="a model or a family pattern"),
    Column("dimension", SafeString(8), nullable=True, comment="rpm, tpm, itpm or otpm; null: sent"),
    Column(
        "source",
        SafeString(16),
        nullable=False,
        comment="flag, configured, announced, learned, sent",
    ),
    Column("value", Float, nullable=True, comment="per minute; null: no limit from this source"),
    Column("since", UtcDateTime, nullable=False),
    Index(None, "batch_id", "run_started_at"),
)

# The table rows a batch was rendered from (``submit TABLE --template``), one per request, by
# the request's line_no (the row number): written in the batch's own transaction, so results
# can be joined to their rows later without the file.
table_rows = Table(
    "table_rows",
    metadata,
    Column(
        "batch_id",
        ForeignKey("batches.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("row_no", Integer, primary_key=True, comment="1-based, the request's line_no"),
    Column("data", JsonText, nullable=False, comment="the row: column name to value, JSON"),
)

# A request's answers that did not match its schema (batchrun.structured), one per send that
# was answered so, written in the transaction that sends the request back for a repair (or
# ends it ``invalid_output``: then the last answer is the result's raw_body instead). The
# request's history: each such answer, its errors and its usage (counted in the batch's
# counters when written, never again).
answer_turns = Table(
    "answer_turns",
    metadata,
    Column(
        "request_id",
        _BigId,
        ForeignKey("requests.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("turn", Integer, primary_key=True, comment="1 for the first invalid answer"),
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("repair_send", Integer, nullable=False, comment="1: answered a repair send"),
    Column("model", SafeString(200), nullable=True),
    Column("lane", SafeString(8), nullable=True),
    Column("cost_factor", Float, nullable=True),
    Column("endpoint", SafeString(100), nullable=True),
    Column("sent_at", UtcDateTime, nullable=True),
    Column("latency_ms", Integer, nullable=True),
    Column("completed_at", UtcDateTime, nullable=False),
    *(
        Column(name, Integer, nullable=True)
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    ),
    Column("body", JsonText, nullable=False, comment="the Message, JSON"),
    Column("errors", JsonText, nullable=False, comment="the validation errors, JSON list"),
    Index(None, "batch_id"),
)

# Per batch and key, the repair sends answered and their tokens (kept as batch_usage is, by
# batchrun.store.repair_counts): what `status` shows of repairs without reading rows.
batch_repairs = Table(
    "batch_repairs",
    metadata,
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("model", SafeString(200), primary_key=True),
    Column("lane", SafeString(8), primary_key=True),
    Column("cost_factor", Float, primary_key=True),
    Column("sends", Integer, nullable=False, comment="repair sends answered"),
    *(
        Column(name, BigInteger, nullable=False)
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    ),
)
# One row per prompt-cache group the batch lane keeps warm (batchrun.batch_lane.warmth):
# while a provider batch holds the group's followers, a small real-time request re-reads the
# leader's cache entry before it expires. Kept in the database, so a restarted run knows
# when each entry was last warmed; the tokens are the refreshes' own (their overhead).
cache_refreshes = Table(
    "cache_refreshes",
    metadata,
    Column(
        "leader_id",
        _BigId,
        ForeignKey("requests.id", ondelete="CASCADE"),
        primary_key=True,
        comment="the group's leader: its params are what a refresh sends (max_tokens 1)",
    ),
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("model", SafeString(200), nullable=False),
    Column(
        "warmed_at",
        UtcDateTime,
        nullable=True,
        comment="the last refresh that read or wrote the entry (null: none did yet)",
    ),
    Column("refreshes", Integer, nullable=False, default=0, comment="refresh requests sent"),
    Column("failed", Integer, nullable=False, default=0, comment="of which got no answer"),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cache_creation_input_tokens", Integer, nullable=False, default=0),
    Column("cache_read_input_tokens", Integer, nullable=False, default=0),
    Column(
        "cache_creation_1h_input_tokens",
        Integer,
        nullable=False,
        server_default="0",
        comment="of the refreshes' cache writes, the 1-hour part",
    ),
    Column(
        "leader_write_1h_tokens",
        Integer,
        nullable=False,
        default=0,
        comment="the leader's 1-hour cache write (its result prices it at the 1-hour price)",
    ),
    Index(None, "batch_id"),
)
