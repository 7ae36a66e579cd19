"""One Alembic history serves both databases and matches the tables the code queries."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from feed import db
from feed.storage.tables import metadata

pytestmark = pytest.mark.anyio


def _diff(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_table_definitions(app: Any) -> None:
    async with app.state.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_upgrade_is_idempotent_and_at_head(app: Any) -> None:
    await db.upgrade(app.state.engine)  # a second run changes nothing and does not fail
    assert await db.current_revision(app.state.engine) == "0006"
