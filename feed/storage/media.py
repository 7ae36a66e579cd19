"""Media rows (``tables.media``): ids, state and sizes, with the alt text and blurhash sealed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage.tables import media, posts, users


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


async def for_update(session: AsyncSession, ids: list[int]) -> list[Any]:
    """Rows ``ids``, locked (PostgreSQL) until the transaction ends: a post taking them."""
    query = sa.select(media).where(media.c.id.in_(ids)).with_for_update()
    return list((await session.execute(query)).all())


async def attach(session: AsyncSession, post_id: int, ids: list[int]) -> None:
    """Media ``ids`` become the post's, in this order; any other media of the post is let go (its owner's again, until
    the cleanup job removes it)."""
    await session.execute(
        media.update().where(media.c.post_id == post_id, media.c.id.not_in(ids)).values(post_id=None, position=0)
    )
    for position, media_id in enumerate(ids):
        await session.execute(media.update().where(media.c.id == media_id).values(post_id=post_id, position=position))


async def of_posts(session: AsyncSession, post_ids: list[int]) -> dict[int, list[Any]]:
    """The media of each post (that has any), in their order."""
    if not post_ids:
        return {}
    query = sa.select(media).where(media.c.post_id.in_(post_ids)).order_by(media.c.post_id, media.c.position)
    out: dict[int, list[Any]] = {}
    for row in (await session.execute(query)).all():
        out.setdefault(int(row.post_id), []).append(row)
    return out


async def describe(session: AsyncSession, media_id: int, **values: Any) -> bool:
    """Change the alt text (sealed at its new ``revision``) or focus of an upload no post took yet."""
    done = await session.execute(
        media.update().where(media.c.id == media_id, media.c.post_id.is_(None)).values(**values)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


async def delete_unattached(session: AsyncSession, media_id: int) -> bool:
    done = await session.execute(media.delete().where(media.c.id == media_id, media.c.post_id.is_(None)))
    return bool(done.rowcount)  # type: ignore[attr-defined]


async def behind(session: AsyncSession, user_id: int | None, *, after: int, limit: int) -> list[Any]:
    """The next ``limit`` media (of ``user_id``, or everyone's) with id above ``after`` not under their owner's
    current key version, with that version as ``current``; but uploads whose job has not run (it seals their
    variants under the row's version: the next rotation takes them)."""
    query = (
        sa.select(media, users.c.key_version.label("current"))
        .join(users, users.c.id == media.c.user_id)
        .where(media.c.key_version != users.c.key_version, media.c.state != "processing", media.c.id > after)
    )
    if user_id is not None:
        query = query.where(media.c.user_id == user_id)
    return list((await session.execute(query.order_by(media.c.id).limit(limit))).all())


async def count_behind(session: AsyncSession, user_id: int | None) -> int:
    query = (
        sa.select(sa.func.count())
        .select_from(media.join(users, users.c.id == media.c.user_id))
        .where(media.c.key_version != users.c.key_version, media.c.state != "processing")
    )
    if user_id is not None:
        query = query.where(media.c.user_id == user_id)
    return int(await session.scalar(query) or 0)


async def rekey_if_unchanged(
    session: AsyncSession, media_id: int, *, key_version: int, revision: int, values: dict[str, Any]
) -> bool:
    """Write the alt text and blurhash rewrapped under a new key version, if the row is still as it was read."""
    done = await session.execute(
        media.update()
        .where(media.c.id == media_id, media.c.key_version == key_version, media.c.revision == revision)
        .values(**values)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]
