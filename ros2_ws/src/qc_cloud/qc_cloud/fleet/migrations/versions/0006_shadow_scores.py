"""shadow_scores: a shadow model's score per part (issue 22, shadow runs); model_statuses gains the shadow's
version, counts and the update's role

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_scores",
        sa.Column("cell", sa.String(length=200), nullable=False),
        sa.Column("record_id", sa.String(length=128), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("part_id", sa.String(length=256), nullable=False),
        sa.Column("shadow_version", sa.String(length=256), nullable=False),
        sa.Column("live_version", sa.String(length=256), nullable=False),
        sa.Column("defect_probability", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("cell", "record_id"),
    )
    op.create_index("ix_shadow_cell_version_time", "shadow_scores", ["cell", "shadow_version", "time"])
    op.create_index("ix_shadow_cell_part", "shadow_scores", ["cell", "part_id"])
    with op.batch_alter_table("model_statuses") as batch:
        batch.add_column(sa.Column("role", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("shadow_version", sa.String(length=256), nullable=True))
        batch.add_column(sa.Column("shadow_counts", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_statuses") as batch:
        batch.drop_column("shadow_counts")
        batch.drop_column("shadow_version")
        batch.drop_column("role")
    op.drop_index("ix_shadow_cell_part", table_name="shadow_scores")
    op.drop_index("ix_shadow_cell_version_time", table_name="shadow_scores")
    op.drop_table("shadow_scores")
