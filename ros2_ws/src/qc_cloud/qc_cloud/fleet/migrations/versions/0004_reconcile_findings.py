"""reconcile_findings: the edge reconciler's record per part (issue 17)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 08:25:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_findings",
        sa.Column("cell", sa.String(length=200), nullable=False),
        sa.Column("record_id", sa.String(length=128), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("part_id", sa.String(length=256), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("has_verdict", sa.Boolean(), nullable=False),
        sa.Column("lane", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("terminal_events", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("cell", "record_id"),
    )
    op.create_index("ix_reconcile_cell_part", "reconcile_findings", ["cell", "part_id"])
    op.create_index("ix_reconcile_status", "reconcile_findings", ["status"])


def downgrade() -> None:
    op.drop_index("ix_reconcile_status", table_name="reconcile_findings")
    op.drop_index("ix_reconcile_cell_part", table_name="reconcile_findings")
    op.drop_table("reconcile_findings")
