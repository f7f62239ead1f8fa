"""the server key that created a batch (`batchrun serve`'s tenants)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 05:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(
            sa.Column(
                "owner",
                sa.String(length=64),
                nullable=True,
                comment="the id of the serve key that created it (a hash, never the key)",
            )
        )
        batch_op.create_index(
            "ix_batches_owner_created_at_id", ["owner", "created_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_index("ix_batches_owner_created_at_id")
        batch_op.drop_column("owner")
