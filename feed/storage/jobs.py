"""Maintenance job bookkeeping: runs in ``job_runs`` (what ``cipherfeed jobs status`` shows), checkpoints in
``job_cursors``."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.dialect import insert
from feed.storage.tables import job_cursors, job_runs

# -- runs


async def start_run(session: AsyncSession, name: str, dry_run: bool, now: datetime) -> int | None:
    """Record a run under way; its id."""
    result = await session.execute(
        job_runs.insert().values(name=name, dry_run=dry_run, state="running", started_at=now)
    )
    return result.inserted_primary_key[0] if result.inserted_primary_key else None  # type: ignore[attr-defined]


async def save_progress(session: AsyncSession, run_id: int, done: int, total: int | None) -> None:
    await session.execute(job_runs.update().where(job_runs.c.id == run_id).values(done=done, total=total))


async def end_run(
    session: AsyncSession,
    run_id: int,
    *,
    state: str,
    now: datetime,
    done: int,
    total: int | None,
    changed: str,
    error: str | None,
) -> None:
    await session.execute(
        job_runs.update()
        .where(job_runs.c.id == run_id)
        .values(
            state=state,
            finished_at=now,
            done=done,
            total=total,
            changed=changed,
            error=error,
        )
    )


async def insert_failure(session: AsyncSession, *, name: str, args: str, now: datetime, error: str) -> None:
    """Record a queued job that failed for good, as a run that started and ended ``now``."""
    await session.execute(
        job_runs.insert().values(
            name=name,
            args=args,
            state="failed",
            started_at=now,
            finished_at=now,
            error=error,
        )
    )


async def running(session: AsyncSession) -> list[Record]:
    """The runs under way, oldest first."""
    query = sa.select(job_runs).where(job_runs.c.state == "running").order_by(job_runs.c.started_at)
    return list((await session.execute(query)).all())


async def failed(session: AsyncSession, limit: int) -> list[Record]:
    """The newest ``limit`` failed runs, newest first."""
    query = sa.select(job_runs).where(job_runs.c.state == "failed").order_by(job_runs.c.started_at.desc()).limit(limit)
    return list((await session.execute(query)).all())


async def last_run(session: AsyncSession, name: str) -> Record | None:
    """The job's latest run that was not a dry run."""
    query = (
        sa.select(job_runs)
        .where(job_runs.c.name == name, job_runs.c.dry_run.is_(False))
        .order_by(job_runs.c.started_at.desc())
        .limit(1)
    )
    return (await session.execute(query)).first()


# -- checkpoints


async def get_cursor(session: AsyncSession, name: str) -> int | None:
    value = await session.scalar(sa.select(job_cursors.c.cursor).where(job_cursors.c.name == name))
    return int(value) if value is not None else None


async def save_cursor(session: AsyncSession, name: str, cursor: int, now: datetime) -> None:
    stmt = insert(session, job_cursors).values(name=name, cursor=cursor, updated_at=now)
    await session.execute(
        stmt.on_conflict_do_update(index_elements=[job_cursors.c.name], set_={"cursor": cursor, "updated_at": now})
    )


async def delete_cursor(session: AsyncSession, name: str) -> None:
    await session.execute(job_cursors.delete().where(job_cursors.c.name == name))
