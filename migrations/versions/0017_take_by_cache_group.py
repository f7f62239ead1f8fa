"""an index to fill provider batches by prompt-cache group (requests: batch_id, state,
wait_for, id)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 20:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_requests_batch_id_state_wait_for_id"),
        "requests",
        ["batch_id", "state", "wait_for", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_requests_batch_id_state_wait_for_id"), table_name="requests")
