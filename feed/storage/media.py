"""Media rows (``tables.media``): ids, state and sizes, with the alt text and blurhash sealed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage.tables import media, posts


async def insert(session: AsyncSession, **values: Any) -> None:
    await session.execute(media.insert().values(**values))


async def get(session: AsyncSession, media_id: int) -> Any:
    return (await session.execute(sa.select(media).where(media.c.id == media_id))).first()


async def mark_ready(
    session: AsyncSession,
    media_id: int,
    *,
    kind: str,
    source_type: str,
    width: int,
    height: int,
    variants: str,
    blurhash: bytes,
    when: datetime,
) -> bool:
    """The upload's variants are made; False if it was not waiting for them (done already, or gone)."""
    done = await session.execute(
        media.update()
        .where(media.c.id == media_id, media.c.state == "processing")
        .values(
            state="ready",
            kind=kind,
            source_type=source_type,
            width=width,
            height=height,
            variants=variants,
            blurhash=blurhash,
            processed_at=when,
        )
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


async def mark_failed(session: AsyncSession, media_id: int, when: datetime) -> bool:
    done = await session.execute(
        media.update()
        .where(media.c.id == media_id, media.c.state == "processing")
        .values(state="failed", processed_at=when)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def _doomed(cutoff: datetime) -> Any:
    """Uploads never attached (or that failed) before ``cutoff``, and media of posts that are gone."""
    post_gone = ~sa.exists().where(posts.c.id == media.c.post_id)
    return sa.or_(
        sa.and_(media.c.post_id.is_(None), media.c.created_at < cutoff),
        sa.and_(media.c.state == "failed", media.c.created_at < cutoff),
        sa.and_(media.c.post_id.is_not(None), post_gone),
    )


async def doomed_after(session: AsyncSession, after: int, limit: int, cutoff: datetime) -> list[int]:
    query = sa.select(media.c.id).where(media.c.id > after, _doomed(cutoff)).order_by(media.c.id).limit(limit)
    return [int(i) for i in (await session.scalars(query)).all()]


async def count_doomed(session: AsyncSession, cutoff: datetime) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(media).where(_doomed(cutoff))) or 0)


async def of_user_after(session: AsyncSession, user_id: int, after: int, limit: int) -> list[int]:
    query = sa.select(media.c.id).where(media.c.user_id == user_id, media.c.id > after).order_by(media.c.id)
    return [int(i) for i in (await session.scalars(query.limit(limit))).all()]


async def delete(session: AsyncSession, ids: list[int]) -> int:
    done = await session.execute(media.delete().where(media.c.id.in_(ids)))
    return int(done.rowcount)  # type: ignore[attr-defined]


async def existing(session: AsyncSession, ids: list[int]) -> set[int]:
    return {int(i) for i in (await session.scalars(sa.select(media.c.id).where(media.c.id.in_(ids)))).all()}
