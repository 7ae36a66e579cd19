"""The email index is keyed from the root key ring: each row says which root key version keys its index.

Rows written before keep NULL (keyed from the server secret) until ``reindex_emails`` or ``rewrap_user_keys``
recomputes them under the primary root key version.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("email_index_version", sa.Integer, nullable=True))


def downgrade() -> None:
    # Indexes keyed from the root key stay as they are: the code before 0008 does not find them, so an address
    # saved since could be saved again by another account until it is changed (nothing is lost or shown).
    op.drop_column("users", "email_index_version")  # SQLite drops a column in place (3.35 and later)
