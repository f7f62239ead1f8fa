"""the 1-hour part of cache writes (results, batch_usage, cache_refreshes), for its price

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_LEADER_COMMENT = "the leader's 1-hour cache write (its result prices it at the 1-hour price)"
_OLD_LEADER_COMMENT = "the leader's 1-hour cache write: its result counts it at the 5-minute price"


def upgrade() -> None:
    # Results stored before keep null (and the counters 0): priced at the 5-minute price, as
    # they were.
    with op.batch_alter_table("results") as batch_op:
        batch_op.add_column(
            sa.Column(
                "cache_creation_1h_input_tokens",
                sa.Integer(),
                nullable=True,
                comment="of the cache write, the 1-hour part (null: stored before it was kept)",
            )
        )
    with op.batch_alter_table("batch_usage") as batch_op:
        batch_op.add_column(
            sa.Column(
                "cache_creation_1h_input_tokens",
                sa.BigInteger(),
                nullable=False,
                server_default="0",
                comment="of the cache writes, the 1-hour part",
            )
        )
    with op.batch_alter_table("cache_refreshes") as batch_op:
        batch_op.add_column(
            sa.Column(
                "cache_creation_1h_input_tokens",
                sa.Integer(),
                nullable=False,
                server_default="0",
                comment="of the refreshes' cache writes, the 1-hour part",
            )
        )
    _comment_leader_write(_LEADER_COMMENT, _OLD_LEADER_COMMENT)


def downgrade() -> None:
    _comment_leader_write(_OLD_LEADER_COMMENT, _LEADER_COMMENT)
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never a copy of a table: dropping the old
    # table would cascade to the rows that reference it.
    for table in ("cache_refreshes", "batch_usage", "results"):
        with op.batch_alter_table(table, recreate="never") as batch_op:
            batch_op.drop_column("cache_creation_1h_input_tokens")


def _comment_leader_write(comment: str, before: str) -> None:
    # SQLite keeps no comments (and would copy the table to change one).
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "cache_refreshes",
            "leader_write_1h_tokens",
            existing_type=sa.Integer(),
            existing_nullable=False,
            comment=comment,
            existing_comment=before,
        )
