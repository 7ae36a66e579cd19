"""Background jobs: their runs and checkpoints; erasure receipts; when each user was last seen.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("last_seen_at", When, nullable=True))
    op.create_table(
        "job_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("args", sa.String(200), nullable=False, server_default=""),
        sa.Column("dry_run", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("started_at", When, nullable=False),
        sa.Column("finished_at", When, nullable=True),
        sa.Column("done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total", sa.BigInteger, nullable=True),
        sa.Column("changed", sa.String(1000), nullable=False, server_default=""),
        sa.Column("error", sa.String(300), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_job_runs"),
    )
    op.create_index("ix_job_runs_name_started_at", "job_runs", ["name", "started_at"])
    op.create_index("ix_job_runs_state", "job_runs", ["state"])
    op.create_table(
        "job_cursors",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_job_cursors"),
    )
    op.create_table(
        "erasure_receipts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("subject", sa.LargeBinary(32), nullable=False),
        sa.Column("key_ids", sa.String(500), nullable=False),
        sa.Column("erased_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_erasure_receipts"),
    )
    op.create_index("ix_erasure_receipts_subject", "erasure_receipts", ["subject"])


def downgrade() -> None:
    op.drop_table("erasure_receipts")
    op.drop_table("job_cursors")
    op.drop_index("ix_job_runs_state", "job_runs")
    op.drop_index("ix_job_runs_name_started_at", "job_runs")
    op.drop_table("job_runs")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("last_seen_at")
