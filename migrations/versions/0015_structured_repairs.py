"""structured answers repaired: a batch's repair limit and repair counters, each request's
repairs, and the answers that did not match the schema (answer_turns)

Revision ID: 0015_structured_repairs
Revises: 0014
Create Date: 2026-12-07 19:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_structured_repairs"
down_revision = "0014"
branch_labels = None
depends_on = None

_TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(
            sa.Column(
                "repair_limit",
                sa.Integer(),
                server_default="1",
                nullable=False,
                comment="repair sends per request at most for an answer that does not match "
                "its schema (0: none)",
            )
        )
        batch.add_column(
            sa.Column(
                "n_repairs",
                sa.Integer(),
                server_default="0",
                nullable=False,
                comment="repair sends answered",
            )
        )
    with op.batch_alter_table("requests") as batch:
        batch.add_column(
            sa.Column(
                "repairs",
                sa.Integer(),
                server_default="0",
                nullable=False,
                comment="its answers that did not match the schema (answer_turns rows)",
            )
        )
    op.create_table(
        "answer_turns",
        sa.Column(
            "request_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("turn", sa.Integer(), nullable=False, comment="1 for the first invalid answer"),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("repair_send", sa.Integer(), nullable=False, comment="1: answered a repair send"),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("lane", sa.String(length=8), nullable=True),
        sa.Column("cost_factor", sa.Float(), nullable=True),
        sa.Column("endpoint", sa.String(length=100), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=True) for name in _TOKENS),
        sa.Column("body", sa.Text(), nullable=False, comment="the Message, JSON"),
        sa.Column("errors", sa.Text(), nullable=False, comment="the validation errors, JSON list"),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_answer_turns_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_answer_turns_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", "turn", name=op.f("pk_answer_turns")),
    )
    op.create_index(op.f("ix_answer_turns_batch_id"), "answer_turns", ["batch_id"], unique=False)
    op.create_table(
        "batch_repairs",
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("lane", sa.String(length=8), nullable=False),
        sa.Column("cost_factor", sa.Float(), nullable=False),
        sa.Column("sends", sa.Integer(), nullable=False, comment="repair sends answered"),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _TOKENS),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_repairs_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "batch_id", "model", "lane", "cost_factor", name=op.f("pk_batch_repairs")
        ),
    )


def downgrade() -> None:
    op.drop_table("batch_repairs")
    op.drop_index(op.f("ix_answer_turns_batch_id"), table_name="answer_turns")
    op.drop_table("answer_turns")
    # recreate="never": a rebuilt table would be dropped with foreign keys on, and SQLite
    # would delete every row that refers to it (3.35+ drops a column in place).
    with op.batch_alter_table("requests", recreate="never") as batch:
        batch.drop_column("repairs")
    with op.batch_alter_table("batches", recreate="never") as batch:
        batch.drop_column("n_repairs")
        batch.drop_column("repair_limit")
