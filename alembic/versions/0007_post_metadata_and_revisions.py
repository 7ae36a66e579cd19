"""Posts keep what Mastodon apps send with them (sensitive, language, the app) and the revisions an edit replaced.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("posts", sa.Column("sensitive", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("posts", sa.Column("language", sa.String(16), nullable=True))
    # The app a post came from, as a plain id: apps are not deleted, and one that were would only leave the
    # post's ``application`` empty (no constraint: SQLite adds one only by making the table again, which would run
    # the cascades of its likes and mentions).
    op.add_column("posts", sa.Column("app_id", BigId, nullable=True))
    op.create_table(
        "post_revisions",
        sa.Column("post_id", BigId, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("cw", sa.LargeBinary, nullable=True),
        sa.Column("sensitive", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("post_id", "revision", name="pk_post_revisions"),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE", name="fk_post_revisions_post_id_posts"),
    )


def downgrade() -> None:
    op.drop_table("post_revisions")
    for column in ("app_id", "language", "sensitive"):  # SQLite drops a column in place (3.35 and later)
        op.drop_column("posts", column)
