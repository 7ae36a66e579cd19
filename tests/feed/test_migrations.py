"""One Alembic history serves both databases and matches the tables the code queries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from feed import db
from feed.storage.tables import metadata
from tests.conftest import BACKEND

pytestmark = pytest.mark.anyio


def _diff(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_table_definitions(app: Any) -> None:
    async with app.state.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_upgrade_is_idempotent_and_at_head(app: Any) -> None:
    await db.upgrade(app.state.engine)  # a second run changes nothing and does not fail
    assert await db.current_revision(app.state.engine) == "0013"


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's table rebuilds are the danger; once, in the SQLite pass")
async def test_upgrading_a_database_with_data_keeps_every_row(tmp_path: Path) -> None:
    """Each migration after the first, applied to a database that holds a post with a like and a mention: nothing is
    lost on the way (SQLite makes a table again to change it, and dropping the old one runs its cascades)."""
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        await db.upgrade(engine, "0005")
        when = datetime.now(UTC)
        async with engine.begin() as conn:
            for user_id, name in ((1, "alice"), (2, "bob")):
                await conn.execute(
                    sa.text("INSERT INTO users (id, username, username_lower, password_hash, display_name, bio, "
                            "key_version, created_at, updated_at) VALUES (:id, :n, :n, 'x', '', '', 1, :t, :t)"),
                    {"id": user_id, "n": name, "t": when},
                )  # fmt: skip
            await conn.execute(
                sa.text("INSERT INTO posts (id, author_id, visibility, revision, key_version, body, created_at) "
                        "VALUES (10, 1, 'public', 1, 1, x'00', :t)"),
                {"t": when},
            )  # fmt: skip
            await conn.execute(
                sa.text("INSERT INTO likes (post_id, user_id, created_at) VALUES (10, 2, :t)"), {"t": when}
            )
            await conn.execute(sa.text("INSERT INTO mentions (post_id, user_id) VALUES (10, 2)"))
            await conn.execute(sa.text("INSERT INTO api_tokens (token_hash, user_id, name, created_at) "
                                       "VALUES (x'01', 1, 'cli', :t)"), {"t": when})  # fmt: skip
        await db.upgrade(engine)
        async with engine.connect() as conn:
            counts = {
                table: await conn.scalar(sa.text(f"SELECT count(*) FROM {table}"))
                for table in ("users", "posts", "likes", "mentions", "api_tokens")
            }
            scopes = await conn.scalar(sa.text("SELECT scopes FROM api_tokens"))
    finally:
        await engine.dispose()
    assert counts == {"users": 2, "posts": 1, "likes": 1, "mentions": 1, "api_tokens": 1}
    assert scopes == "read write follow push", "a token made before OAuth keeps the scopes it had"
