"""the limits each run sent a batch under: configured, flags, announced, learned (the report)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batch_limits",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column(
            "run_id",
            sa.String(length=32),
            nullable=False,
            comment="one run (or serve worker session)",
        ),
        sa.Column("run_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "endpoint", sa.String(length=100), nullable=False, comment="for a pool: the member"
        ),
        sa.Column(
            "model", sa.String(length=200), nullable=False, comment="a model or a family pattern"
        ),
        sa.Column(
            "dimension",
            sa.String(length=8),
            nullable=True,
            comment="rpm, tpm, itpm or otpm; null: sent",
        ),
        sa.Column(
            "source",
            sa.String(length=16),
            nullable=False,
            comment="flag, configured, announced, learned, sent",
        ),
        sa.Column(
            "value",
            sa.Float(),
            nullable=True,
            comment="per minute; null: no limit from this source",
        ),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_limits_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_limits")),
    )
    op.create_index(
        op.f("ix_batch_limits_batch_id_run_started_at"),
        "batch_limits",
        ["batch_id", "run_started_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_batch_limits_batch_id_run_started_at"), table_name="batch_limits")
    op.drop_table("batch_limits")
