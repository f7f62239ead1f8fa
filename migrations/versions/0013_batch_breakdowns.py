"""counters for status: usage by model, error types, endpoints, held per batch; first claim,
last answer and reused results on batches

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 16:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
_TABLES = ("batch_usage", "batch_errors", "batch_endpoints", "batch_held")


def _batch_id(table: str) -> list[sa.SchemaItem]:
    return [
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f(f"fk_{table}_batch_id_batches"),
            ondelete="CASCADE",
        ),
    ]


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(
            sa.Column(
                "n_reused",
                sa.Integer(),
                server_default="0",
                nullable=False,
                comment="results that are a stored answer (submit --reuse): nothing was sent",
            )
        )
        batch_op.add_column(
            sa.Column(
                "first_started_at",
                sa.DateTime(timezone=True),
                nullable=True,
                comment="the first claim",
            )
        )
        batch_op.add_column(
            sa.Column(
                "last_completed_at",
                sa.DateTime(timezone=True),
                nullable=True,
                comment="the last succeeded or errored result's completed_at",
            )
        )
    op.create_table(
        "batch_usage",
        *_batch_id("batch_usage"),
        sa.Column(
            "model",
            sa.String(length=200),
            nullable=False,
            comment="the model the answer names, else the request's",
        ),
        sa.Column("lane", sa.String(length=8), nullable=False, comment="realtime or batch"),
        sa.Column(
            "cost_factor", sa.Float(), nullable=False, comment="the share of the list price paid"
        ),
        sa.Column(
            "answers",
            sa.Integer(),
            nullable=False,
            comment="succeeded or errored results with usage",
        ),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _TOKENS),
        sa.PrimaryKeyConstraint(
            "batch_id", "model", "lane", "cost_factor", name=op.f("pk_batch_usage")
        ),
    )
    op.create_table(
        "batch_errors",
        *_batch_id("batch_errors"),
        sa.Column("error_type", sa.String(length=64), nullable=False, comment="'' for none"),
        sa.Column("results", sa.Integer(), nullable=False, comment="errored results of this type"),
        sa.Column(
            "example", sa.Text(), nullable=True, comment="their least message (binary order)"
        ),
        sa.PrimaryKeyConstraint("batch_id", "error_type", name=op.f("pk_batch_errors")),
    )
    op.create_table(
        "batch_endpoints",
        *_batch_id("batch_endpoints"),
        sa.Column(
            "endpoint", sa.String(length=100), nullable=False, comment="for a pool: the member"
        ),
        sa.Column(
            "answers", sa.Integer(), nullable=False, comment="succeeded or errored, not reused"
        ),
        sa.PrimaryKeyConstraint("batch_id", "endpoint", name=op.f("pk_batch_endpoints")),
    )
    op.create_table(
        "batch_held",
        *_batch_id("batch_held"),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False, comment="queued in lane held"),
        sa.PrimaryKeyConstraint("batch_id", "model", name=op.f("pk_batch_held")),
    )
    op.create_index(
        op.f("ix_results_batch_id_completed_at"),
        "results",
        ["batch_id", "completed_at"],
        unique=False,
    )
    _backfill(op.get_bind().dialect.name)


def _backfill(dialect: str) -> None:
    """The counters from the rows: what the aggregates ``status`` ran give."""
    answered = "results.result_type IN ('succeeded', 'errored')"
    op.execute(
        "UPDATE batches SET "
        "n_reused = (SELECT count(*) FROM results WHERE results.batch_id = batches.id "
        "AND results.reused_from IS NOT NULL), "
        "first_started_at = (SELECT min(requests.started_at) FROM requests "
        "WHERE requests.batch_id = batches.id), "
        "last_completed_at = (SELECT max(results.completed_at) FROM results "
        f"WHERE results.batch_id = batches.id AND {answered})"
    )
    sums = ", ".join(f"coalesce(sum(results.{name}), 0)" for name in _TOKENS)
    op.execute(
        f"INSERT INTO batch_usage (batch_id, model, lane, cost_factor, answers, "
        f"{', '.join(_TOKENS)}) "
        "SELECT results.batch_id, coalesce(results.model, requests.model), "
        "coalesce(results.lane, 'realtime'), coalesce(results.cost_factor, 1.0), "
        f"count(*), {sums} FROM results JOIN requests ON requests.id = results.request_id "
        f"WHERE {answered} AND results.input_tokens IS NOT NULL "
        "GROUP BY results.batch_id, coalesce(results.model, requests.model), "
        "coalesce(results.lane, 'realtime'), coalesce(results.cost_factor, 1.0)"
    )
    binary = ' COLLATE "C"' if dialect == "postgresql" else ""
    op.execute(
        "INSERT INTO batch_errors (batch_id, error_type, results, example) "
        "SELECT batch_id, coalesce(error_type, ''), count(*), "
        f"min(error_message{binary}) FROM results WHERE result_type = 'errored' "
        "GROUP BY batch_id, coalesce(error_type, '')"
    )
    op.execute(
        "INSERT INTO batch_endpoints (batch_id, endpoint, answers) "
        "SELECT batch_id, endpoint, count(*) FROM results "
        f"WHERE {answered} AND endpoint IS NOT NULL AND reused_from IS NULL "
        "GROUP BY batch_id, endpoint"
    )
    op.execute(
        "INSERT INTO batch_held (batch_id, model, requests) "
        "SELECT batch_id, model, count(*) FROM requests "
        "WHERE state = 'queued' AND lane = 'held' GROUP BY batch_id, model"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_results_batch_id_completed_at"), table_name="results")
    for table in reversed(_TABLES):
        op.drop_table(table)
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never a copy of the table: dropping the old
    # batches table would cascade to every request and result.
    with op.batch_alter_table("batches", recreate="never") as batch_op:
        for name in ("last_completed_at", "first_started_at", "n_reused"):
            batch_op.drop_column(name)
