"""samples: heatmap and random-sample flag; model_statuses.defect_types; login_failures (shared log-in throttle)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 07:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("heatmap_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("random_sample", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("model_statuses") as batch:
        batch.add_column(sa.Column("defect_types", sa.JSON(), nullable=True))
    op.create_table(
        "login_failures",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_login_failures_name_at", "login_failures", ["username", "at"])


def downgrade() -> None:
    op.drop_index("ix_login_failures_name_at", table_name="login_failures")
    op.drop_table("login_failures")
    with op.batch_alter_table("model_statuses") as batch:
        batch.drop_column("defect_types")
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("random_sample")
        batch.drop_column("heatmap_sha256")
