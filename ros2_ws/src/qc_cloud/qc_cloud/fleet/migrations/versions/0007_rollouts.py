"""rollouts: staged rollouts of a signed candidate model, their stages, pre-signed rollbacks and event log
(issue 22)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("candidate_version", sa.String(length=256), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.String(length=1024), nullable=False),
        sa.Column("abort_requested_by", sa.String(length=128), nullable=True),
    )
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    op.create_table(
        "rollout_stages",
        sa.Column("rollout_id", BIG_ID, nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("cells", sa.JSON(), nullable=False),
        sa.Column("min_parts", sa.Integer(), nullable=False),
        sa.Column("watch_s", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("health", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("rollout_id", "idx"),
    )
    op.create_table(
        "rollout_rollbacks",
        sa.Column("rollout_id", BIG_ID, nullable=False),
        sa.Column("cell", sa.String(length=200), nullable=False),
        sa.Column("from_version", sa.String(length=256), nullable=False),
        sa.Column("to_version", sa.String(length=256), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("rollout_id", "cell"),
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", BIG_ID, nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_rollout_events_rollout", "rollout_events", ["rollout_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_events_rollout", table_name="rollout_events")
    op.drop_table("rollout_events")
    op.drop_table("rollout_rollbacks")
    op.drop_table("rollout_stages")
    op.drop_index("ix_rollouts_state", table_name="rollouts")
    op.drop_table("rollouts")
