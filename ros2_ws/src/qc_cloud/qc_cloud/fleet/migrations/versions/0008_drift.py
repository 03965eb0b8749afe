"""drift alerts: KPI records' histograms, drift references, drift episodes (issue 22, "Drift alerts")

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("kpis") as batch:
        batch.add_column(sa.Column("distributions", sa.JSON(), nullable=True))
    op.create_table(
        "drift_references",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("cell", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=256), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("parts", sa.BigInteger(), nullable=False),
        sa.Column("histograms", sa.JSON(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("cell", "model_version", "source", name="uq_drift_references"),
    )
    op.create_table(
        "drift_episodes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("cell", sa.String(length=200), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("model_version", sa.String(length=256), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("cleared_at", sa.DateTime(), nullable=True),
        sa.Column("peak_psi", sa.Float(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("last_evidence", sa.JSON(), nullable=False),
        sa.Column("alert_id", BigId, nullable=True),
    )
    op.create_index("ix_drift_episodes_cell_code", "drift_episodes", ["cell", "code", "cleared_at"])


def downgrade() -> None:
    op.drop_index("ix_drift_episodes_cell_code", table_name="drift_episodes")
    op.drop_table("drift_episodes")
    op.drop_table("drift_references")
    with op.batch_alter_table("kpis") as batch:
        batch.drop_column("distributions")
