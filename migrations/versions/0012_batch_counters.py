"""maintained counters on batches: requests per reported state, token totals of results

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 14:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_COUNTS = {
    "n_processing": ("requests queued, running or held by a provider batch", None),
    "n_succeeded": ("requests succeeded", "succeeded"),
    "n_errored": ("requests errored", "errored"),
    "n_canceled": ("requests canceled", "canceled"),
    "n_expired": ("requests expired", "expired"),
}
_TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        for name, (comment, _) in _COUNTS.items():
            batch_op.add_column(
                sa.Column(name, sa.Integer(), server_default="0", nullable=False, comment=comment)
            )
        for name in _TOKENS:
            batch_op.add_column(
                sa.Column(f"sum_{name}", sa.BigInteger(), server_default="0", nullable=False)
            )
    # Backfill from the rows: the counters hold what an aggregate over them gives.
    counts = ", ".join(
        f"{name} = (SELECT count(*) FROM requests WHERE requests.batch_id = batches.id AND "
        + (
            "requests.state IN ('queued', 'running', 'provider'))"
            if state is None
            else f"requests.state = '{state}')"
        )
        for name, (_, state) in _COUNTS.items()
    )
    sums = ", ".join(
        f"sum_{name} = (SELECT coalesce(sum(results.{name}), 0) FROM results "
        "WHERE results.batch_id = batches.id)"
        for name in _TOKENS
    )
    op.execute(f"UPDATE batches SET {counts}, {sums}")


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never a copy of the table: dropping the old
    # batches table would cascade to every request and result.
    with op.batch_alter_table("batches", recreate="never") as batch_op:
        for name in reversed(_TOKENS):
            batch_op.drop_column(f"sum_{name}")
        for name in reversed(_COUNTS):
            batch_op.drop_column(name)
