"""a batch's cache TTL policy (batches.cache_ttl), for the auto lane's move to the batch lane

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 20:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batches submitted before the policy was stored keep their requests as written.
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(
            sa.Column(
                "cache_ttl",
                sa.String(length=8),
                nullable=False,
                server_default="keep",
                comment="the TTL policy of its prompt-cache groups in the batch lane (auto: "
                "1 hour; keep), applied when the auto lane moves them there",
            )
        )


def downgrade() -> None:
    # recreate="never": see 0015 (a rebuilt batches table would take its requests with it).
    with op.batch_alter_table("batches", recreate="never") as batch_op:
        batch_op.drop_column("cache_ttl")
