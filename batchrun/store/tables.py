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

succeeded, errored, canceled and expired are final: each final request has exactly one row in
``results`` (primary key ``request_id``), written in the same transaction as the final state.

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

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
ERRORED = "errored"
CANCELED = "canceled"
EXPIRED = "expired"
FINAL_STATES = (SUCCEEDED, ERRORED, CANCELED, EXPIRED)
OPEN_STATES = (QUEUED, RUNNING)

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


# SQLite only auto-increments an INTEGER PRIMARY KEY; Postgres wants 64 bits for big tables.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=True),
    Column("endpoint", String(100), nullable=False),
    Column("source", Text, nullable=True, comment="the file the requests came from"),
    Column("request_count", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("cancel_initiated_at", UtcDateTime, nullable=True),
    Column("ended_at", UtcDateTime, nullable=True),
    Column(
        "paused_reason",
        Text,
        nullable=True,
        comment="why dispatch stopped (e.g. authentication failed); cleared by the next run",
    ),
    Column(
        "max_cost_usd",
        Float,
        nullable=True,
        comment="budget: no request is sent that could take the batch's cost past it",
    ),
)

requests = Table(
    "requests",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("line_no", Integer, nullable=False, comment="1-based line in the submitted file"),
    Column("custom_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("max_tokens", Integer, nullable=False),
    Column("params", Text, nullable=False, comment="Messages API body, JSON"),
    Column(
        "estimated_input_tokens",
        Integer,
        nullable=True,
        comment="raw input-token estimate made at submit (see batchrun.input.estimate)",
    ),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0, comment="times sent"),
    Column(
        "failures",
        Integer,
        nullable=False,
        default=0,
        comment="transient failures that used up the retry budget",
    ),
    Column("not_before", UtcDateTime, nullable=True, comment="earliest next send (back-off)"),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True, comment="the latest transient failure"),
    Column("started_at", UtcDateTime, nullable=True, comment="first claim"),
    UniqueConstraint("batch_id", "custom_id"),
    Index(None, "batch_id", "line_no"),
    Index(None, "batch_id", "state"),
    Index(None, "state", "batch_id", "id"),
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
    Column("custom_id", String(64), nullable=False),
    Column("result_type", String(16), nullable=False),
    Column("http_status", Integer, nullable=True),
    Column("model", String(200), nullable=True),
    Column("stop_reason", String(64), nullable=True),
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("cache_creation_input_tokens", Integer, nullable=True),
    Column("cache_read_input_tokens", Integer, nullable=True),
    Column("error_type", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column(
        "estimated_input_tokens",
        Integer,
        nullable=True,
        comment="the calibrated input estimate the limiter reserved for the final attempt",
    ),
    Column("latency_ms", Integer, nullable=True, comment="of the final attempt"),
    Column("attempts", Integer, nullable=False),
    Column("request_ref", String(200), nullable=True, comment="the API's request-id"),
    Column("completed_at", UtcDateTime, nullable=False),
    Column(
        "body",
        Text,
        nullable=True,
        comment="the Message (succeeded) or the error response (errored), JSON",
    ),
    Column(
        "raw_body",
        Text,
        nullable=True,
        comment="what the server sent, when body is not it (normalised, clamped or refused)",
    ),
    Column(
        "endpoint",
        String(100),
        nullable=True,
        comment="the endpoint that answered (for a pool: the member)",
    ),
    Index(None, "batch_id", "result_type"),
)

# The rate-limit records that workers share (see batchrun.limits.keyrecord, which has the
# rules, and batchrun.limits.banks): one row per limiter key (endpoint × model, or × family
# pattern) in rate_keys, and one per key × limit in rate_buckets. A take locks the key's
# rate_keys row. Times are Unix seconds from the workers' clocks.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("endpoint", String(100), primary_key=True),
    Column("model", String(200), primary_key=True, comment="a model or a family pattern"),
    Column("dimension", String(8), primary_key=True, comment="rpm, tpm, itpm or otpm"),
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
    Column("endpoint", String(100), primary_key=True),
    Column("model", String(200), primary_key=True, comment="a model or a family pattern"),
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
    Column("endpoint", String(100), primary_key=True),
    Column("state", String(16), nullable=False, comment="closed, open or halted"),
    Column("reason", Text, nullable=True, comment="why it was taken out"),
    Column("until", Float, nullable=True, comment="Unix seconds of the next probe"),
    Column("updated_at", Float, nullable=False, comment="Unix seconds"),
)
