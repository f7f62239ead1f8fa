"""the table rows a batch was rendered from (submit TABLE --template)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 16:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "table_rows",
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("row_no", sa.Integer(), nullable=False, comment="1-based, the request's line_no"),
        sa.Column("data", sa.Text(), nullable=False, comment="the row: column name to value, JSON"),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_table_rows_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "row_no", name=op.f("pk_table_rows")),
    )


def downgrade() -> None:
    op.drop_table("table_rows")
