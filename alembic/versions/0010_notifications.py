"""Notifications, as ids only (who did what to which post, for whom), and each person's notification settings.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", BigId, nullable=False, autoincrement=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("from_id", BigId, nullable=False),
        sa.Column("post_id", BigId, nullable=True),
        sa.Column("group_key", sa.String(60), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_notifications_user_id_users"),
        sa.ForeignKeyConstraint(["from_id"], ["users.id"], ondelete="CASCADE", name="fk_notifications_from_id_users"),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE", name="fk_notifications_post_id_posts"),
    )
    op.create_index("ix_notifications_user_id_id", "notifications", ["user_id", "id"])
    op.create_index("ix_notifications_from_id", "notifications", ["from_id"])
    op.create_index("ix_notifications_post_id", "notifications", ["post_id"])
    op.add_column("users", sa.Column("notify_off", sa.String(100), nullable=False, server_default=""))
    op.add_column("users", sa.Column("notify_only_following", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("users", "notify_only_following")
    op.drop_column("users", "notify_off")
    op.drop_table("notifications")
