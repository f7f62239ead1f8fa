"""shared rate buckets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 05:34:35.186023
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "rate_buckets",
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column(
            "dimension", sa.String(length=8), nullable=False, comment="rpm, tpm, itpm or otpm"
        ),
        sa.Column("level", sa.Float(), nullable=False, comment="capacity left; negative is debt"),
        sa.Column("rate_per_s", sa.Float(), nullable=False),
        sa.Column("capacity", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False, comment="Unix seconds"),
        sa.PrimaryKeyConstraint("endpoint", "model", "dimension", name=op.f("pk_rate_buckets")),
    )
    op.create_table(
        "rate_pauses",
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("paused_until", sa.Float(), nullable=False, comment="Unix seconds"),
        sa.PrimaryKeyConstraint("endpoint", "model", name=op.f("pk_rate_pauses")),
    )


def downgrade() -> None:

    op.drop_table("rate_pauses")
    op.drop_table("rate_buckets")
