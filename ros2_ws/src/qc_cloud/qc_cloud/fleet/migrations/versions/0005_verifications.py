"""verifications: the cloud verifier's record per request it handled (issue 21)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verifications",
        sa.Column("cell", sa.String(length=200), nullable=False),
        sa.Column("record_id", sa.String(length=128), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("part_id", sa.String(length=256), nullable=False),
        sa.Column("verifier", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("defect_probability", sa.Float(), nullable=True),
        sa.Column("local_verdict", sa.String(length=16), nullable=True),
        sa.Column("local_defect_probability", sa.Float(), nullable=True),
        sa.Column("edge_model_version", sa.String(length=256), nullable=False),
        sa.Column("model_version", sa.String(length=256), nullable=False),
        sa.Column("received_time", sa.DateTime(), nullable=True),
        sa.Column("deadline", sa.DateTime(), nullable=True),
        sa.Column("queue_ms", sa.Float(), nullable=True),
        sa.Column("service_ms", sa.Float(), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("image_bytes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("cell", "record_id"),
    )
    op.create_index("ix_verifications_cell_part", "verifications", ["cell", "part_id"])
    op.create_index("ix_verifications_cell_time", "verifications", ["cell", "time"])


def downgrade() -> None:
    op.drop_index("ix_verifications_cell_time", table_name="verifications")
    op.drop_index("ix_verifications_cell_part", table_name="verifications")
    op.drop_table("verifications")
