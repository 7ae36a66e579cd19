"""Markers: where a person stopped reading their home timeline and their notifications (Mastodon's markers API).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "markers",
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("timeline", sa.String(20), nullable=False),
        sa.Column("last_read_id", BigId, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "timeline", name="pk_markers"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_markers_user_id_users"),
    )


def downgrade() -> None:
    op.drop_table("markers")
