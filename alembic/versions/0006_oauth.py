"""OAuth 2 for Mastodon apps: registered apps, authorization codes, and tokens that belong to an app with scopes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "oauth_apps",
        sa.Column("id", BigId, nullable=False, autoincrement=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("website", sa.String(500), nullable=True),
        sa.Column("redirect_uris", sa.Text, nullable=False),
        sa.Column("scopes", sa.String(1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_oauth_apps"),
        sa.UniqueConstraint("client_id", name="uq_oauth_apps_client_id"),
    )
    op.create_table(
        "oauth_codes",
        sa.Column("code_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("app_id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("scopes", sa.String(1000), nullable=False),
        sa.Column("challenge", sa.String(128), nullable=True),
        sa.Column("challenge_method", sa.String(10), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name="pk_oauth_codes"),
        sa.ForeignKeyConstraint(
            ["app_id"], ["oauth_apps.id"], ondelete="CASCADE", name="fk_oauth_codes_app_id_oauth_apps"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_oauth_codes_user_id_users"),
    )
    op.create_index("ix_oauth_codes_app_id", "oauth_codes", ["app_id"])
    op.create_index("ix_oauth_codes_user_id", "oauth_codes", ["user_id"])
    with op.batch_alter_table("api_tokens") as batch:  # SQLite: the table is made again
        batch.alter_column("user_id", existing_type=BigId, nullable=True)
        batch.add_column(sa.Column("app_id", BigId, nullable=True))
        batch.add_column(
            sa.Column("scopes", sa.String(1000), nullable=False, server_default=sa.text("'read write follow push'"))
        )
        batch.create_foreign_key(
            "fk_api_tokens_app_id_oauth_apps", "oauth_apps", ["app_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_index("ix_api_tokens_app_id", ["app_id"])


def downgrade() -> None:
    op.execute("DELETE FROM api_tokens WHERE user_id IS NULL")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_app_id")
        batch.drop_constraint("fk_api_tokens_app_id_oauth_apps", type_="foreignkey")
        batch.drop_column("scopes")
        batch.drop_column("app_id")
        batch.alter_column("user_id", existing_type=BigId, nullable=False)
    op.drop_index("ix_oauth_codes_user_id", "oauth_codes")
    op.drop_index("ix_oauth_codes_app_id", "oauth_codes")
    op.drop_table("oauth_codes")
    op.drop_table("oauth_apps")
