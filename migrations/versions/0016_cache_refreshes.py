"""the prompt-cache groups the batch lane keeps warm (cache_refreshes)

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-07 19:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015_structured_repairs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_refreshes",
        sa.Column(
            "leader_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            comment="the group's leader: its params are what a refresh sends (max_tokens 1)",
        ),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column(
            "warmed_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="the last refresh that read or wrote the entry (null: none did yet)",
        ),
        sa.Column("refreshes", sa.Integer(), nullable=False, comment="refresh requests sent"),
        sa.Column("failed", sa.Integer(), nullable=False, comment="of which got no answer"),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_creation_input_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_read_input_tokens", sa.Integer(), nullable=False),
        sa.Column(
            "leader_write_1h_tokens",
            sa.Integer(),
            nullable=False,
            comment="the leader's 1-hour cache write: its result counts it at the 5-minute price",
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_cache_refreshes_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["leader_id"],
            ["requests.id"],
            name=op.f("fk_cache_refreshes_leader_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("leader_id", name=op.f("pk_cache_refreshes")),
    )
    op.create_index(
        op.f("ix_cache_refreshes_batch_id"), "cache_refreshes", ["batch_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_cache_refreshes_batch_id"), table_name="cache_refreshes")
    op.drop_table("cache_refreshes")
