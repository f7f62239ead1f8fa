"""a budget per batch

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 06:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "max_cost_usd",
                sa.Float(),
                nullable=True,
                comment="budget: no request is sent that could take the batch's cost past it",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("max_cost_usd")
