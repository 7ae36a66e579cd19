"""Locked accounts and their follow requests, blocks and mutes (ids and times only).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("users", sa.Column("locked", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "follow_requests",
        sa.Column("id", BigId, nullable=False, autoincrement=False),
        sa.Column("follower_id", BigId, nullable=False),
        sa.Column("followee_id", BigId, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_follow_requests"),
        sa.ForeignKeyConstraint(["follower_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_follow_requests_follower_id_users"),
        sa.ForeignKeyConstraint(["followee_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_follow_requests_followee_id_users"),
        sa.UniqueConstraint("follower_id", "followee_id", name="uq_follow_requests_follower_id"),
    )  # fmt: skip
    op.create_index("ix_follow_requests_followee_id_id", "follow_requests", ["followee_id", "id"])
    op.create_table(
        "blocks",
        sa.Column("id", BigId, nullable=False, autoincrement=False),
        sa.Column("blocker_id", BigId, nullable=False),
        sa.Column("blocked_id", BigId, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_blocks"),
        sa.ForeignKeyConstraint(["blocker_id"], ["users.id"], ondelete="CASCADE", name="fk_blocks_blocker_id_users"),
        sa.ForeignKeyConstraint(["blocked_id"], ["users.id"], ondelete="CASCADE", name="fk_blocks_blocked_id_users"),
        sa.UniqueConstraint("blocker_id", "blocked_id", name="uq_blocks_blocker_id"),
    )
    op.create_index("ix_blocks_blocked_id", "blocks", ["blocked_id"])
    op.create_table(
        "mutes",
        sa.Column("id", BigId, nullable=False, autoincrement=False),
        sa.Column("muter_id", BigId, nullable=False),
        sa.Column("muted_id", BigId, nullable=False),
        sa.Column("notifications", sa.Boolean, nullable=False),
        sa.Column("expires_at", When, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_mutes"),
        sa.ForeignKeyConstraint(["muter_id"], ["users.id"], ondelete="CASCADE", name="fk_mutes_muter_id_users"),
        sa.ForeignKeyConstraint(["muted_id"], ["users.id"], ondelete="CASCADE", name="fk_mutes_muted_id_users"),
        sa.UniqueConstraint("muter_id", "muted_id", name="uq_mutes_muter_id"),
    )
    op.create_index("ix_mutes_muted_id", "mutes", ["muted_id"])


def downgrade() -> None:
    op.drop_table("mutes")
    op.drop_table("blocks")
    op.drop_table("follow_requests")
    op.drop_column("users", "locked")
