"""Boosts: who shared which post with their followers (ids only), and each post's boost count.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "boosts",
        sa.Column("id", BigId, nullable=False, autoincrement=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("post_id", BigId, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_boosts"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_boosts_user_id_users"),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE", name="fk_boosts_post_id_posts"),
        sa.UniqueConstraint("user_id", "post_id", name="uq_boosts_user_id"),
    )
    op.create_index("ix_boosts_post_id", "boosts", ["post_id"])
    op.add_column("posts", sa.Column("reblogs_count", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("posts", "reblogs_count")
    op.drop_table("boosts")
