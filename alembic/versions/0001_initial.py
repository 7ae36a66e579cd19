"""Initial schema: users and their wrapped keys, sealed posts, mentions, follows, likes, sessions, tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", BigId, primary_key=True, autoincrement=False),
        sa.Column("username", sa.String(30), nullable=False),
        sa.Column("username_lower", sa.String(30), nullable=False),
        sa.Column("display_name", sa.String(60), nullable=False, server_default=""),
        sa.Column("bio", sa.String(500), nullable=False, server_default=""),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("email_index", sa.LargeBinary(32), nullable=True),
        sa.Column("email_sealed", sa.LargeBinary, nullable=True),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username_lower", name="uq_users_username_lower"),
        sa.UniqueConstraint("email_index", name="uq_users_email_index"),
    )
    op.create_table(
        "user_keys",
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("root_version", sa.Integer, nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "version", name="pk_user_keys"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_user_keys_user_id_users"),
    )
    op.create_table(
        "posts",
        sa.Column("id", BigId, primary_key=True, autoincrement=False),
        sa.Column("author_id", BigId, nullable=False),
        sa.Column("visibility", sa.String(10), nullable=False),
        sa.Column("in_reply_to_id", BigId, nullable=True),
        sa.Column("in_reply_to_author_id", BigId, nullable=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("cw", sa.LargeBinary, nullable=True),
        sa.Column("likes_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("replies_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", When, nullable=False),
        sa.Column("edited_at", When, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_posts"),
        sa.ForeignKeyConstraint(["author_id"], ["users.id"], ondelete="CASCADE", name="fk_posts_author_id_users"),
    )
    op.create_index("ix_posts_author_id_id", "posts", ["author_id", "id"])
    op.create_index("ix_posts_visibility_id", "posts", ["visibility", "id"])
    op.create_index("ix_posts_in_reply_to_id", "posts", ["in_reply_to_id"])
    op.create_table(
        "mentions",
        sa.Column("post_id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.PrimaryKeyConstraint("post_id", "user_id", name="pk_mentions"),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE", name="fk_mentions_post_id_posts"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_mentions_user_id_users"),
    )
    op.create_index("ix_mentions_user_id_post_id", "mentions", ["user_id", "post_id"])
    op.create_table(
        "follows",
        sa.Column("follower_id", BigId, nullable=False),
        sa.Column("followee_id", BigId, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("follower_id", "followee_id", name="pk_follows"),
        sa.ForeignKeyConstraint(["follower_id"], ["users.id"], ondelete="CASCADE", name="fk_follows_follower_id_users"),
        sa.ForeignKeyConstraint(["followee_id"], ["users.id"], ondelete="CASCADE", name="fk_follows_followee_id_users"),
    )
    op.create_index("ix_follows_followee_id_follower_id", "follows", ["followee_id", "follower_id"])
    op.create_table(
        "likes",
        sa.Column("post_id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("post_id", "user_id", name="pk_likes"),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE", name="fk_likes_post_id_posts"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_likes_user_id_users"),
    )
    op.create_index("ix_likes_user_id_post_id", "likes", ["user_id", "post_id"])
    op.create_table(
        "sessions",
        sa.Column("id_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("expires_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name="pk_sessions"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_sessions_user_id_users"),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])
    op.create_table(
        "api_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("expires_at", When, nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_api_tokens"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_api_tokens_user_id_users"),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    op.create_table(
        "throttle",
        sa.Column("bucket", sa.String(100), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("window_ends", When, nullable=False),
        sa.PrimaryKeyConstraint("bucket", name="pk_throttle"),
    )
    op.create_index("ix_throttle_window_ends", "throttle", ["window_ends"])


def downgrade() -> None:
    for table in (
        "throttle",
        "api_tokens",
        "sessions",
        "likes",
        "follows",
        "mentions",
        "posts",
        "user_keys",
        "users",
    ):
        op.drop_table(table)
