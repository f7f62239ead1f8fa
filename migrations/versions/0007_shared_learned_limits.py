"""shared learned and announced limits, and the start-up ramp: rate_keys replaces rate_pauses

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rate_buckets", schema=None) as batch_op:
        batch_op.alter_column(
            "model",
            existing_type=sa.String(length=200),
            existing_nullable=False,
            comment="a model or a family pattern",
        )
        batch_op.add_column(
            sa.Column(
                "announced",
                sa.Float(),
                nullable=True,
                comment="the limit per minute the server announced last "
                "(anthropic-ratelimit-*-limit)",
            )
        )
        batch_op.add_column(
            sa.Column(
                "learned",
                sa.Float(),
                nullable=True,
                comment="a lower limit per minute learned from 429s, as at learned_at; "
                "climbs from there",
            )
        )
        batch_op.add_column(
            sa.Column("learned_at", sa.Float(), nullable=True, comment="Unix seconds")
        )
    op.create_table(
        "rate_keys",
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column(
            "model", sa.String(length=200), nullable=False, comment="a model or a family pattern"
        ),
        sa.Column(
            "paused_until",
            sa.Float(),
            nullable=False,
            comment="Unix seconds: nothing is sent before (after a 429 or 529)",
        ),
        sa.Column(
            "lowered_at",
            sa.Float(),
            nullable=True,
            comment="the latest decrease of a learned limit (the cool-down counts from it)",
        ),
        sa.Column(
            "ramp_started_at", sa.Float(), nullable=True, comment="the start-up ramp's start"
        ),
        sa.Column(
            "ramp_from",
            sa.Float(),
            nullable=True,
            comment="when the ramp's climb starts (the first answer, at the latest a minute on)",
        ),
        sa.Column(
            "admitted_requests",
            sa.Float(),
            nullable=False,
            comment="what the server let through lately: a sum decaying with time, "
            "as at admitted_at",
        ),
        sa.Column("admitted_input_tokens", sa.Float(), nullable=False),
        sa.Column("admitted_output_tokens", sa.Float(), nullable=False),
        sa.Column("admitted_at", sa.Float(), nullable=False, comment="Unix seconds"),
        sa.Column(
            "measured_since",
            sa.Float(),
            nullable=True,
            comment="since when the admitted sums count",
        ),
        sa.PrimaryKeyConstraint("endpoint", "model", name=op.f("pk_rate_keys")),
    )
    # Pauses in force carry over; nothing else was kept before.
    op.execute(
        "INSERT INTO rate_keys (endpoint, model, paused_until, admitted_requests, "
        "admitted_input_tokens, admitted_output_tokens, admitted_at) "
        "SELECT endpoint, model, paused_until, 0, 0, 0, 0 FROM rate_pauses"
    )
    op.drop_table("rate_pauses")


def downgrade() -> None:
    op.create_table(
        "rate_pauses",
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("paused_until", sa.Float(), nullable=False, comment="Unix seconds"),
        sa.PrimaryKeyConstraint("endpoint", "model", name=op.f("pk_rate_pauses")),
    )
    op.execute(
        "INSERT INTO rate_pauses (endpoint, model, paused_until) "
        "SELECT endpoint, model, paused_until FROM rate_keys"
    )
    op.drop_table("rate_keys")
    with op.batch_alter_table("rate_buckets", schema=None) as batch_op:
        batch_op.drop_column("learned_at")
        batch_op.drop_column("learned")
        batch_op.drop_column("announced")
        batch_op.alter_column(
            "model",
            existing_type=sa.String(length=200),
            existing_nullable=False,
            comment=None,
            existing_comment="a model or a family pattern",
        )
