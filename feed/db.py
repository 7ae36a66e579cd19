"""The database engine and migrations. One Alembic history serves SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from alembic import command
from feed.resources import resource_path


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    if database_url.startswith("sqlite"):
        engine = create_async_engine(database_url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    # hide_parameters: a database error's message must not carry the values of the statement.
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        hide_parameters=True,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # We issue BEGIN ourselves (below); the driver would otherwise begin only at the first write, leaving the
    # reads before it outside the transaction.
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    """Write transactions take the write lock up front, so read-then-write is atomic and never hits
    SQLITE_BUSY on upgrade (which busy_timeout does not retry)."""
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return  # reads: each statement on its own
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("cipherfeed_write", False) else "BEGIN")


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resource_path("alembic")))
    if database_url:
        cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


# Any constant shared by every cipherfeed process: concurrent upgrades on PostgreSQL wait for each other.
_MIGRATION_LOCK = 0x63697068  # "ciph"


def _upgrade_on(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` on an open engine (safe to call from a running event loop)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_on, revision)


def _current_on(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_on)
