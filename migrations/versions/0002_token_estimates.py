"""token estimates

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:11:22.215292
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "estimated_input_tokens",
                sa.Integer(),
                nullable=True,
                comment="raw input-token estimate made at submit (see batchrun.input.estimate)",
            )
        )

    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "estimated_input_tokens",
                sa.Integer(),
                nullable=True,
                comment="the calibrated input estimate the limiter reserved for the final attempt",
            )
        )


def downgrade() -> None:

    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("estimated_input_tokens")

    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("estimated_input_tokens")
