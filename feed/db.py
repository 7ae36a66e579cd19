"""The database engine and migrations. One Alembic history serves SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from alembic import command
from feed.resources import resource_path

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5  # seconds to open a connection: a database that does not answer is down, not slow
# SQLSTATE classes that say the server is away, not that the statement was wrong: 08 connection exception,
# 57P operator intervention (shutting down, cannot connect now), 53300 too many connections.
_DOWN_STATES = ("08", "57P", "53300")


def make_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    connect_timeout: float = CONNECT_TIMEOUT,
    command_timeout: float | None = None,
) -> AsyncEngine:
    if database_url.startswith("sqlite"):
        _private_files(database_url)
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
        pool_timeout=connect_timeout,
        hide_parameters=True,
        connect_args={"timeout": connect_timeout, "command_timeout": command_timeout},
    )


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached (down, restarting, the connection lost, every
    connection busy), rather than that a statement was wrong."""
    if isinstance(exc, OSError | TimeoutError | sa_exc.TimeoutError):
        return True  # refused, reset, no route; a connect or a pool checkout that timed out
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
        return True
    for cause in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str) and state.startswith(_DOWN_STATES):
            return True
        if isinstance(cause, OSError | TimeoutError):
            return True
    if isinstance(exc, sa_exc.OperationalError) and exc.orig is not None and type(exc.orig).__module__ == "sqlite3":
        return True  # the file cannot be opened, or stays locked past the busy timeout
    return False


class Outage:
    """Whether this process's database is reachable, with one log line when it stops answering and one when it
    is back (not one per failed request). ``down`` is called by whoever saw a failure; ``up`` by the engine when a
    statement went through again (:meth:`watch`)."""

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def is_down(self) -> bool:
        return self.since is not None

    def down(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("database unreachable (%s); answering 503 until it is back", type(exc).__name__)

    def up(self) -> None:
        if self.since is not None:
            log.warning("database is back after %.1f s", time.monotonic() - self.since)
            self.since = None

    def watch(self, engine: AsyncEngine) -> None:
        """Mark the database up when a statement of ``engine`` went through (a check of one attribute each)."""

        def executed(*_: Any) -> None:
            if self.since is not None:
                self.up()

        event.listen(engine.sync_engine, "after_cursor_execute", executed)


def _private_files(database_url: str) -> None:
    """The database file readable by this user only (SQLite makes its -wal and -shm files with the same mode), and
    so are those a previous release left readable to others."""
    path = make_url(database_url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    # Created here only if new: opening and closing an existing database file would drop the locks SQLite holds on
    # it in this process (POSIX locks belong to the process and go with any of its descriptors).
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(FileNotFoundError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages
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
