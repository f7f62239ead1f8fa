"""which endpoint answered each request, and each endpoint's health as workers see it

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 22:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "endpoint",
                sa.String(length=100),
                nullable=True,
                comment="the endpoint that answered (for a pool: the member)",
            )
        )
    op.create_table(
        "endpoint_health",
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False, comment="closed, open or halted"),
        sa.Column("reason", sa.Text(), nullable=True, comment="why it was taken out"),
        sa.Column("until", sa.Float(), nullable=True, comment="Unix seconds of the next probe"),
        sa.Column("updated_at", sa.Float(), nullable=False, comment="Unix seconds"),
        sa.PrimaryKeyConstraint("endpoint", name=op.f("pk_endpoint_health")),
    )


def downgrade() -> None:
    op.drop_table("endpoint_health")
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("endpoint")
