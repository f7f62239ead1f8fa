"""when each answer's final attempt was sent, and every transient send failure (the report)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 01:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "send_failures",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", _BigId, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column(
            "endpoint", sa.String(length=100), nullable=True, comment="for a pool: the member"
        ),
        sa.Column(
            "http_status", sa.Integer(), nullable=True, comment="null: no answer (transport)"
        ),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_send_failures_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_send_failures_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_send_failures")),
    )
    op.create_index(
        op.f("ix_send_failures_batch_id_sent_at"),
        "send_failures",
        ["batch_id", "sent_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_send_failures_request_id"), "send_failures", ["request_id"], unique=False
    )
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "sent_at",
                sa.DateTime(timezone=True),
                nullable=True,
                comment="when the final attempt was sent (null: not sent in real time)",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
    op.drop_index(op.f("ix_send_failures_request_id"), table_name="send_failures")
    op.drop_index(op.f("ix_send_failures_batch_id_sent_at"), table_name="send_failures")
    op.drop_table("send_failures")
