"""Posts and their mentions, and the timeline queries with visibility rules in SQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.tables import blocks, boosts, follows, media, mentions, mutes, post_revisions, posts, users

PUBLIC_VISIBILITIES = ("public", "unlisted")
# What timeline queries return: enough to fetch a page's posts, authors and keys from the cache in one go.
REF_COLUMNS = (posts.c.id, posts.c.author_id, posts.c.key_version, posts.c.in_reply_to_author_id)


@dataclass(frozen=True, slots=True)
class Page:
    """Cursor bounds, all exclusive: ``max_id`` older than, ``since_id``/``min_id`` newer than.

    ``min_id`` asks for the posts immediately newer than it (oldest first, then reversed); ``since_id`` for the
    newest posts down to it.
    """

    limit: int = 20
    max_id: int | None = None
    since_id: int | None = None
    min_id: int | None = None


def unblocked(viewer_id: int) -> sa.ColumnElement[bool]:
    """SQL: no block stands between the viewer and the post's author, either way."""
    return ~sa.exists().where(
        sa.or_(
            sa.and_(blocks.c.blocker_id == viewer_id, blocks.c.blocked_id == posts.c.author_id),
            sa.and_(blocks.c.blocker_id == posts.c.author_id, blocks.c.blocked_id == viewer_id),
        )
    )


def visible_to(viewer_id: int | None) -> sa.ColumnElement[bool]:
    """The SQL condition for "``viewer_id`` may read this post" (None: an anonymous reader)."""
    if viewer_id is None:
        return posts.c.visibility.in_(PUBLIC_VISIBILITIES)
    mentioned = sa.exists().where(mentions.c.post_id == posts.c.id, mentions.c.user_id == viewer_id)
    follower = sa.exists().where(follows.c.follower_id == viewer_id, follows.c.followee_id == posts.c.author_id)
    readable = sa.or_(
        posts.c.visibility.in_(PUBLIC_VISIBILITIES),
        posts.c.author_id == viewer_id,
        sa.and_(posts.c.visibility == "followers", follower),
        mentioned,
    )
    return sa.and_(readable, unblocked(viewer_id))


async def paged(
    session: AsyncSession, query: sa.Select[Any], page: Page, column: sa.ColumnElement[int] = posts.c.id
) -> list[Record]:
    """``query`` bounded by ``page`` on ``column`` (an id that orders by time), newest first."""
    if page.max_id is not None:
        query = query.where(column < page.max_id)
    if page.min_id is not None:
        query = query.where(column > page.min_id).order_by(column.asc()).limit(page.limit)
        return list(reversed((await session.execute(query)).all()))
    if page.since_id is not None:
        query = query.where(column > page.since_id)
    query = query.order_by(column.desc()).limit(page.limit)
    return list((await session.execute(query)).all())


def shown_booster(booster: sa.ColumnElement[int], viewer_id: int, now: datetime) -> sa.ColumnElement[bool]:
    """SQL: a boost by ``booster`` belongs in the viewer's home timeline: theirs, or by someone they follow, whom
    no block separates from them and whom they do not mute now."""
    followees = sa.select(follows.c.followee_id).where(follows.c.follower_id == viewer_id)
    blocked = sa.exists().where(
        sa.or_(
            sa.and_(blocks.c.blocker_id == viewer_id, blocks.c.blocked_id == booster),
            sa.and_(blocks.c.blocker_id == booster, blocks.c.blocked_id == viewer_id),
        )
    )
    muted = sa.exists().where(
        mutes.c.muter_id == viewer_id,
        mutes.c.muted_id == booster,
        sa.or_(mutes.c.expires_at.is_(None), mutes.c.expires_at > now),
    )
    return sa.and_(sa.or_(booster.in_(followees), booster == viewer_id), ~blocked, ~muted)


async def home(session: AsyncSession, viewer_id: int, page: Page, *, once: bool = True) -> list[Record]:
    """The viewer's own posts, what the people they follow may show them, and direct posts that mention them; but
    the posts that they or someone they follow boosted, which the home timeline shows where the boost is
    (``feed.storage.boosts.of_followees``): each post once. (A boost by someone the viewer mutes or is blocked
    from is not shown, so it does not take the post's place.) ``once=False``: those posts too (for a feed, which
    keeps every entry and leaves the choice to its reader)."""
    followees = sa.select(follows.c.followee_id).where(follows.c.follower_id == viewer_id)
    mentioned = sa.exists().where(mentions.c.post_id == posts.c.id, mentions.c.user_id == viewer_id)
    boosted = sa.exists().where(
        boosts.c.post_id == posts.c.id,
        shown_booster(boosts.c.user_id, viewer_id, datetime.now(UTC)),
        posts.c.author_id != viewer_id,
    )
    query = sa.select(*REF_COLUMNS).where(
        sa.or_(
            posts.c.author_id == viewer_id,
            sa.and_(posts.c.author_id.in_(followees), sa.or_(posts.c.visibility != "direct", mentioned)),
            sa.and_(posts.c.visibility == "direct", mentioned),
        ),
        unblocked(viewer_id),
    )
    if once:
        query = query.where(~boosted)
    return await paged(session, query, page)


def with_media() -> sa.ColumnElement[bool]:
    """SQL: the post has an image."""
    return sa.exists().where(media.c.post_id == posts.c.id, media.c.state == "ready")


async def public(session: AsyncSession, page: Page, *, only_media: bool = False) -> list[Record]:
    query = sa.select(*REF_COLUMNS).where(posts.c.visibility == "public")
    return await paged(session, query.where(with_media()) if only_media else query, page)


async def by_author(
    session: AsyncSession,
    author_id: int,
    viewer_id: int | None,
    page: Page,
    *,
    exclude_replies: bool = False,
    only_media: bool = False,
) -> list[Record]:
    """An author's posts that the viewer may read; ``exclude_replies`` keeps replies to the author's own posts,
    ``only_media`` the posts with images."""
    query = sa.select(*REF_COLUMNS).where(posts.c.author_id == author_id, visible_to(viewer_id))
    if exclude_replies:
        query = query.where(sa.or_(posts.c.in_reply_to_id.is_(None), posts.c.in_reply_to_author_id == author_id))
    if only_media:
        query = query.where(with_media())
    return await paged(session, query, page)


async def replies(session: AsyncSession, parent_ids: Sequence[int], viewer_id: int | None) -> list[Record]:
    if not parent_ids:
        return []
    query = (
        sa.select(*REF_COLUMNS, posts.c.in_reply_to_id)
        .where(posts.c.in_reply_to_id.in_(parent_ids), visible_to(viewer_id))
        .order_by(posts.c.id.asc())
        .limit(200)
    )
    return list((await session.execute(query)).all())


async def get_posts(session: AsyncSession, post_ids: Sequence[int]) -> list[Record]:
    """Whole rows, sealed fields included (the cache's loader)."""
    if not post_ids:
        return []
    return list((await session.execute(sa.select(posts).where(posts.c.id.in_(post_ids)))).all())


async def visible_ids(session: AsyncSession, post_ids: Sequence[int], viewer_id: int | None) -> set[int]:
    if not post_ids:
        return set()
    return set(await session.scalars(sa.select(posts.c.id).where(posts.c.id.in_(post_ids), visible_to(viewer_id))))


async def get_post(session: AsyncSession, post_id: int, *, for_update: bool = False) -> Record | None:
    query = sa.select(posts).where(posts.c.id == post_id)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).first()


async def get_visible_post(session: AsyncSession, post_id: int, viewer_id: int | None) -> Record | None:
    query = sa.select(posts).where(posts.c.id == post_id, visible_to(viewer_id))
    return (await session.execute(query)).first()


async def insert_post(session: AsyncSession, **values: Any) -> None:
    await session.execute(posts.insert().values(**values))


async def set_mentions(session: AsyncSession, post_id: int, user_ids: Iterable[int]) -> None:
    await session.execute(mentions.delete().where(mentions.c.post_id == post_id))
    rows = [{"post_id": post_id, "user_id": uid} for uid in dict.fromkeys(user_ids)]
    if rows:
        await session.execute(mentions.insert(), rows)


async def update_revision(session: AsyncSession, post_id: int, *, expected_revision: int, **values: Any) -> bool:
    """Compare-and-set on ``revision``: False if someone else changed the post first."""
    result = await session.execute(
        posts.update().where(posts.c.id == post_id, posts.c.revision == expected_revision).values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def keep_revision(session: AsyncSession, row: Any) -> None:
    """Keep a revision an edit replaced (``row``: the post as it was), sealed as it was, under its own key."""
    await session.execute(
        post_revisions.insert().values(
            post_id=row.id,
            revision=row.revision,
            key_version=row.key_version,
            body=row.body,
            cw=row.cw,
            sensitive=row.sensitive,
            created_at=row.edited_at or row.created_at,
        )
    )


async def revisions(session: AsyncSession, post_id: int) -> list[Record]:
    """The revisions a post had before its current one, oldest first."""
    query = sa.select(post_revisions).where(post_revisions.c.post_id == post_id).order_by(post_revisions.c.revision)
    return list((await session.execute(query)).all())


async def delete_post(session: AsyncSession, post_id: int) -> bool:
    result = await session.execute(posts.delete().where(posts.c.id == post_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def bump_replies(session: AsyncSession, post_id: int, delta: int) -> None:
    await session.execute(
        posts.update().where(posts.c.id == post_id).values(replies_count=posts.c.replies_count + delta)
    )


async def mentions_of(session: AsyncSession, post_ids: Sequence[int]) -> dict[int, list[Record]]:
    """Mentioned users (id, username) per post."""
    if not post_ids:
        return {}
    rows = await session.execute(
        sa.select(mentions.c.post_id, users.c.id, users.c.username)
        .join(users, users.c.id == mentions.c.user_id)
        .where(mentions.c.post_id.in_(post_ids))
    )
    out: dict[int, list[Record]] = {}
    for row in rows:
        out.setdefault(row.post_id, []).append(row)
    return out


async def refs(session: AsyncSession, post_ids: Sequence[int]) -> list[Record]:
    """Timeline refs of these posts (those that still exist), newest first."""
    if not post_ids:
        return []
    query = sa.select(*REF_COLUMNS).where(posts.c.id.in_(post_ids)).order_by(posts.c.id.desc())
    return list((await session.execute(query)).all())


async def recent_of(session: AsyncSession, author_ids: Sequence[int], viewer_id: int, limit: int) -> list[Record]:
    """The newest posts of these authors that ``viewer_id`` may read, as refs (merged into home timelines when
    read, and into a feed when its owner follows someone)."""
    if not author_ids:
        return []
    query = (
        sa.select(*REF_COLUMNS)
        .where(posts.c.author_id.in_(author_ids), visible_to(viewer_id))
        .order_by(posts.c.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())
