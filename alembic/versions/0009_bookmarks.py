"""Bookmarks: the posts a person keeps for later, private to them (ids only).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bookmarks",
        sa.Column("id", BigId, nullable=False, autoincrement=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("post_id", BigId, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bookmarks"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_bookmarks_user_id_users"),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE", name="fk_bookmarks_post_id_posts"),
        sa.UniqueConstraint("user_id", "post_id", name="uq_bookmarks_user_id"),
    )
    op.create_index("ix_bookmarks_post_id", "bookmarks", ["post_id"])


def downgrade() -> None:
    op.drop_index("ix_bookmarks_post_id", "bookmarks")
    op.drop_table("bookmarks")
