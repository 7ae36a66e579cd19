"""Media attachments: one row per uploaded image; its files are sealed streams in the media store.

The row holds ids, state, sizes and the user key version that wraps the files' data keys. The alt text and the
blurhash (a sketch of the picture) are sealed fields, like a post's text.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "media",
        sa.Column("id", BigId, nullable=False, autoincrement=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("post_id", BigId, nullable=True),
        sa.Column("position", sa.SmallInteger, nullable=False, server_default="0"),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False, server_default="image"),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
        sa.Column("description", sa.LargeBinary, nullable=True),
        sa.Column("blurhash", sa.LargeBinary, nullable=True),
        sa.Column("source_type", sa.String(16), nullable=True),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("variants", sa.String(200), nullable=True),
        sa.Column("focus_x", sa.Float, nullable=False, server_default="0"),
        sa.Column("focus_y", sa.Float, nullable=False, server_default="0"),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_media"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_media_user_id_users"),
    )
    op.create_index("ix_media_user_id", "media", ["user_id"])
    op.create_index("ix_media_post_id", "media", ["post_id"])


def downgrade() -> None:
    op.drop_table("media")
