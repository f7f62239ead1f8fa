"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 04:42:55.556177
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("source", sa.Text(), nullable=True, comment="the file the requests came from"),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancel_initiated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "paused_reason",
            sa.Text(),
            nullable=True,
            comment="why dispatch stopped (e.g. authentication failed); cleared by the next run",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_table(
        "requests",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column(
            "line_no", sa.Integer(), nullable=False, comment="1-based line in the submitted file"
        ),
        sa.Column("custom_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False, comment="Messages API body, JSON"),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, comment="times sent"),
        sa.Column(
            "failures",
            sa.Integer(),
            nullable=False,
            comment="transient failures that used up the retry budget",
        ),
        sa.Column(
            "not_before",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="earliest next send (back-off)",
        ),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True, comment="the latest transient failure"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True, comment="first claim"),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_requests_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
        sa.UniqueConstraint("batch_id", "custom_id", name=op.f("uq_requests_batch_id_custom_id")),
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_requests_batch_id_line_no"), ["batch_id", "line_no"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_requests_batch_id_state"), ["batch_id", "state"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_requests_state_batch_id_id"), ["state", "batch_id", "id"], unique=False
        )

    op.create_table(
        "results",
        sa.Column(
            "request_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("custom_id", sa.String(length=64), nullable=False),
        sa.Column("result_type", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("stop_reason", sa.String(length=64), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_creation_input_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_read_input_tokens", sa.Integer(), nullable=True),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True, comment="of the final attempt"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "request_ref", sa.String(length=200), nullable=True, comment="the API's request-id"
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "body",
            sa.Text(),
            nullable=True,
            comment="the Message (succeeded) or the error response (errored), JSON",
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_results_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_results_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_results")),
    )
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_results_batch_id_result_type"), ["batch_id", "result_type"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_results_batch_id_result_type"))

    op.drop_table("results")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_requests_state_batch_id_id"))
        batch_op.drop_index(batch_op.f("ix_requests_batch_id_state"))
        batch_op.drop_index(batch_op.f("ix_requests_batch_id_line_no"))

    op.drop_table("requests")
    op.drop_table("batches")
