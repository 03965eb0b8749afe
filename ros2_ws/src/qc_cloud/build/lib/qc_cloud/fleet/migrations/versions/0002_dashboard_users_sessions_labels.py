"""dashboard: users, sessions, re-inspection labels

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_sessions_expires", "sessions", ["expires_at"])
    op.create_table(
        "labels",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("cell", sa.String(length=200), nullable=False),
        sa.Column("sample_record_id", sa.String(length=128), nullable=False),
        sa.Column("part_id", sa.String(length=256), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("answer", sa.String(length=16), nullable=False),
        sa.Column("defect_type", sa.String(length=128), nullable=True),
        sa.Column("note", sa.String(length=1024), nullable=False, server_default=""),
        sa.Column("labelled_by", sa.String(length=64), nullable=False),
        sa.Column("labelled_at", sa.DateTime(), nullable=False),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.Column("replaces_id", BigId, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_labels_sample", "labels", ["cell", "sample_record_id", "current"])
    op.create_index("ix_labels_time", "labels", ["labelled_at"])


def downgrade() -> None:
    op.drop_index("ix_labels_time", table_name="labels")
    op.drop_index("ix_labels_sample", table_name="labels")
    op.drop_table("labels")
    op.drop_index("ix_sessions_expires", table_name="sessions")
    op.drop_table("sessions")
    op.drop_table("users")
