"""the batch lane (provider batches), reuse of stored answers, prompt-cache groups

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 01:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "provider_batches",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column(
            "provider_id", sa.String(length=200), nullable=True, comment="the provider's batch id"
        ),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("body_bytes", sa.BigInteger(), nullable=False, comment="size of the create body"),
        sa.Column(
            "intent_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="database clock, before the create",
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="the provider's created_at",
        ),
        sa.Column(
            "ended_at", sa.DateTime(timezone=True), nullable=True, comment="the provider's ended_at"
        ),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "cancel_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="auto lane: cancel it if it has not ended by then (real time takes over)",
        ),
        sa.Column(
            "cancel_sent_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="when batchrun canceled it",
        ),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("poll_failures", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.String(length=16),
            nullable=True,
            comment="the provider's processing_status",
        ),
        sa.Column(
            "counts", sa.Text(), nullable=True, comment="the provider's request_counts, JSON"
        ),
        sa.Column("results_url", sa.Text(), nullable=True),
        sa.Column(
            "note", sa.Text(), nullable=True, comment="the latest problem, or why it is ambiguous"
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_provider_batches_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_batches")),
        sa.UniqueConstraint(
            "endpoint", "provider_id", name=op.f("uq_provider_batches_endpoint_provider_id")
        ),
    )
    op.create_index(
        op.f("ix_provider_batches_batch_id_state"),
        "provider_batches",
        ["batch_id", "state"],
        unique=False,
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "lane",
                sa.String(length=8),
                server_default="realtime",
                nullable=False,
                comment="realtime, batch (the provider's batch API) or auto",
            )
        )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "lane",
                sa.String(length=8),
                server_default="realtime",
                nullable=False,
                comment="where it is sent next: realtime (the dispatcher) or batch "
                "(a provider batch)",
            )
        )
        batch_op.add_column(
            sa.Column(
                "provider_batch",
                _BigId,
                nullable=True,
                comment="the provider batch that holds it (state provider) or last held it",
            )
        )
        batch_op.add_column(
            sa.Column(
                "params_digest",
                sa.String(length=64),
                nullable=True,
                comment="SHA-256 of the params as canonical JSON (sorted keys), for submit --reuse",
            )
        )
        batch_op.add_column(
            sa.Column(
                "wait_for",
                _BigId,
                nullable=True,
                comment="not claimed while this request is open (prompt-cache group, duplicate)",
            )
        )
        batch_op.add_column(
            sa.Column(
                "copy_of",
                _BigId,
                nullable=True,
                comment="a duplicate in its batch: takes this request's result if it succeeds",
            )
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_requests_provider_batch_provider_batches"),
            "provider_batches",
            ["provider_batch"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(batch_op.f("ix_requests_params_digest"), ["params_digest"])
        batch_op.create_index(
            batch_op.f("ix_requests_provider_batch_custom_id"), ["provider_batch", "custom_id"]
        )
        batch_op.create_index(batch_op.f("ix_requests_copy_of"), ["copy_of"])
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "lane",
                sa.String(length=8),
                nullable=True,
                comment="realtime (also when null) or batch: where it was answered",
            )
        )
        batch_op.add_column(
            sa.Column(
                "cost_factor",
                sa.Float(),
                nullable=True,
                comment="the share of the list price paid (the batch discount; 0 when "
                "reused); null is 1",
            )
        )
        batch_op.add_column(
            sa.Column(
                "reused_from",
                sa.String(length=64),
                nullable=True,
                comment="the batch whose stored answer this is (submit --reuse): nothing was sent",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("reused_from")
        batch_op.drop_column("cost_factor")
        batch_op.drop_column("lane")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_requests_copy_of"))
        batch_op.drop_index(batch_op.f("ix_requests_provider_batch_custom_id"))
        batch_op.drop_index(batch_op.f("ix_requests_params_digest"))
        batch_op.drop_constraint(
            batch_op.f("fk_requests_provider_batch_provider_batches"), type_="foreignkey"
        )
        batch_op.drop_column("copy_of")
        batch_op.drop_column("wait_for")
        batch_op.drop_column("params_digest")
        batch_op.drop_column("provider_batch")
        batch_op.drop_column("lane")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("lane")
    op.drop_index(op.f("ix_provider_batches_batch_id_state"), table_name="provider_batches")
    op.drop_table("provider_batches")
