"""The queries of the key rotation jobs (``feed.services.rotation``): user keys by root key version, posts and
emails by user key version and Sealed format, and what ``keys status`` counts of them.

Every write is a compare-and-set on what the job read and returns whether the row was still as read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.tables import media, posts, user_keys, users

# -- user keys by root key version


async def count_user_keys_not_under(session: AsyncSession, root_version: int) -> int:
    return await _count(session, user_keys, user_keys.c.root_version != root_version)


async def count_user_keys_under(session: AsyncSession, root_version: int) -> int:
    return await _count(session, user_keys, user_keys.c.root_version == root_version)


async def user_keys_not_under(
    session: AsyncSession, root_version: int, *, after: int | None, limit: int
) -> list[Record]:
    """Every user key not under ``root_version`` of the next ``limit`` users with id above ``after``, by user and
    version."""
    pending = user_keys.c.root_version != root_version
    query = sa.select(user_keys.c.user_id).where(pending).distinct().order_by(user_keys.c.user_id).limit(limit)
    if after is not None:
        query = query.where(user_keys.c.user_id > after)
    ids = list(await session.scalars(query))
    if not ids:
        return []
    rows = await session.execute(
        sa.select(user_keys.c.user_id, user_keys.c.version, user_keys.c.wrapped)
        .where(user_keys.c.user_id.in_(ids), pending)
        .order_by(user_keys.c.user_id, user_keys.c.version)
    )
    return list(rows.all())


async def replace_wrapped_key(
    session: AsyncSession, user_id: int, version: int, *, expected: bytes, wrapped: bytes, root_version: int
) -> bool:
    """Store ``wrapped`` (under ``root_version``) in place of ``expected``, if the row still holds it."""
    result = await session.execute(
        user_keys.update()
        .where(
            user_keys.c.user_id == user_id,
            user_keys.c.version == version,
            user_keys.c.wrapped == expected,
        )
        .values(wrapped=wrapped, root_version=root_version)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# -- user key versions


async def get_user_for_rotation(session: AsyncSession, user_id: int, *, lock: bool) -> Record | None:
    """The user's current key version and sealed email; ``lock`` locks their row until the transaction ends."""
    query = sa.select(users.c.key_version, users.c.email_sealed).where(users.c.id == user_id)
    return (await session.execute(query.with_for_update() if lock else query)).first()


async def key_versions_of(session: AsyncSession, user_id: int) -> list[int]:
    """Every key version the user still has."""
    query = sa.select(user_keys.c.version).where(user_keys.c.user_id == user_id)
    return [int(v) for v in (await session.scalars(query)).all()]


async def latest_key_version(session: AsyncSession, user_id: int) -> int | None:
    latest = await session.scalar(sa.select(sa.func.max(user_keys.c.version)).where(user_keys.c.user_id == user_id))
    return None if latest is None else int(latest)


async def set_current_key(
    session: AsyncSession, user_id: int, *, from_version: int, version: int, email_sealed: bytes | None
) -> None:
    """Make ``version`` the user's current key version, with ``email_sealed`` under it, if ``from_version`` still
    is."""
    await session.execute(
        users.update()
        .where(users.c.id == user_id, users.c.key_version == from_version)
        .values(key_version=version, email_sealed=email_sealed)
    )


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(users)) or 0)


async def users_with_current_key(session: AsyncSession, *, after: int | None, limit: int) -> list[Record]:
    """The next ``limit`` users with id above ``after``: id, key version and the creation time of that key."""
    query = (
        sa.select(users.c.id, users.c.key_version, user_keys.c.created_at)
        .join(user_keys, sa.and_(user_keys.c.user_id == users.c.id, user_keys.c.version == users.c.key_version))
        .order_by(users.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(users.c.id > after)
    return list((await session.execute(query)).all())


async def unused_superseded_keys(
    session: AsyncSession, *, current_before: datetime, user_id: int | None
) -> list[Record]:
    """User key versions older than their user's current one and used by no post and no media, of the users
    (``user_id``, or everyone) whose current version was created at or before ``current_before``, by user and
    version, each with the user's sealed email (which may still be under it)."""
    current = user_keys.alias("current")
    used = sa.or_(
        sa.exists().where(posts.c.author_id == user_keys.c.user_id, posts.c.key_version == user_keys.c.version),
        # Media files are not rewrapped yet: a version that wraps any is kept.
        sa.exists().where(media.c.user_id == user_keys.c.user_id, media.c.key_version == user_keys.c.version),
    )
    candidates = (
        sa.select(user_keys.c.user_id, user_keys.c.version, users.c.email_sealed)
        .join(users, users.c.id == user_keys.c.user_id)
        .join(current, sa.and_(current.c.user_id == users.c.id, current.c.version == users.c.key_version))
        .where(user_keys.c.version < users.c.key_version, current.c.created_at <= current_before, ~used)
        .order_by(user_keys.c.user_id, user_keys.c.version)
    )
    if user_id is not None:
        candidates = candidates.where(user_keys.c.user_id == user_id)
    return list((await session.execute(candidates)).all())


async def delete_unused_key(session: AsyncSession, user_id: int, version: int) -> bool:
    """Delete the user key version if it is still older than the user's current one and no post or media uses it."""
    # Checked again in the statement: a post written under this version since the read keeps it.
    still_unused = sa.and_(
        ~sa.exists().where(posts.c.author_id == user_id, posts.c.key_version == version),
        ~sa.exists().where(media.c.user_id == user_id, media.c.key_version == version),
    )
    below_current = sa.select(users.c.key_version).where(users.c.id == user_id).scalar_subquery()
    result = await session.execute(
        user_keys.delete().where(
            user_keys.c.user_id == user_id,
            user_keys.c.version == version,
            user_keys.c.version < below_current,
            still_unused,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# -- posts and emails by user key version


def _behind(user_id: int | None) -> sa.Select[Any]:
    """Posts not under their author's current key version, with that version as ``current``."""
    query = (
        sa.select(
            posts.c.id,
            posts.c.author_id,
            posts.c.revision,
            posts.c.key_version,
            posts.c.body,
            posts.c.cw,
            users.c.key_version.label("current"),
        )
        .join(users, users.c.id == posts.c.author_id)
        .where(posts.c.key_version != users.c.key_version)
    )
    return query.where(posts.c.author_id == user_id) if user_id is not None else query


async def count_posts_behind(session: AsyncSession, user_id: int | None) -> int:
    """How many posts (of ``user_id``, or everyone's) are not under their author's current key version."""
    return int(await session.scalar(sa.select(sa.func.count()).select_from(_behind(user_id).subquery())) or 0)


async def posts_behind(session: AsyncSession, user_id: int | None, *, after: int | None, limit: int) -> list[Record]:
    """The next ``limit`` posts (of ``user_id``, or everyone's) with id above ``after`` not under their author's
    current key version, with that version as ``current``."""
    return await _posts_after(session, _behind(user_id), after, limit)


async def count_posts_of(session: AsyncSession, author_ids: Sequence[int]) -> int:
    return await _count(session, posts, posts.c.author_id.in_(author_ids))


async def count_posts_not_under(session: AsyncSession, user_id: int, version: int) -> int:
    """How many of the user's posts a key version other than ``version`` wraps."""
    return await _count(session, posts, sa.and_(posts.c.author_id == user_id, posts.c.key_version != version))


async def update_post_if_unchanged(
    session: AsyncSession, post_id: int, values: dict[str, Any], *, revision: int, key_version: int, body: bytes
) -> bool:
    """Write ``values`` if the post still has this revision, key version and body."""
    result = await session.execute(
        posts.update()
        .where(
            posts.c.id == post_id,
            posts.c.revision == revision,
            posts.c.key_version == key_version,
            posts.c.body == body,
        )
        .values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def sealed_emails(session: AsyncSession, user_id: int | None, *, after: int | None, limit: int) -> list[Record]:
    """The next ``limit`` users (``user_id`` only, or everyone) with id above ``after`` and a sealed email: id, key
    version and the email."""
    query = sa.select(users.c.id, users.c.key_version, users.c.email_sealed).where(users.c.email_sealed.is_not(None))
    if user_id is not None:
        query = query.where(users.c.id == user_id)
    page = query.where(users.c.id > after) if after is not None else query
    return list((await session.execute(page.order_by(users.c.id).limit(limit))).all())


async def update_email_if_unchanged(
    session: AsyncSession, user_id: int, *, key_version: int, expected: bytes, email_sealed: bytes | None
) -> bool:
    """Store ``email_sealed`` if the user's key version and sealed email are still ``key_version`` and
    ``expected``."""
    result = await session.execute(
        users.update()
        .where(users.c.id == user_id, users.c.key_version == key_version, users.c.email_sealed == expected)
        .values(email_sealed=email_sealed)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# -- email indexes by root key version


def _email_index_not_under(root_version: int) -> Any:
    # Versions only grow: an index keyed from a newer version than this process's primary was written by a
    # process that heard of a promotion first, and is left alone.
    return sa.and_(
        users.c.email_index.is_not(None),
        sa.or_(users.c.email_index_version.is_(None), users.c.email_index_version < root_version),
    )


async def count_email_indexes_not_under(session: AsyncSession, root_version: int) -> int:
    """Email indexes keyed from a root key version older than ``root_version``, or from the server secret."""
    return await _count(session, users, _email_index_not_under(root_version))


async def count_email_indexes_under(session: AsyncSession, root_version: int) -> int:
    return await _count(session, users, users.c.email_index_version == root_version)


async def email_indexes_not_under(
    session: AsyncSession, root_version: int, *, after: int | None, limit: int
) -> list[Record]:
    """The next ``limit`` users with id above ``after`` whose email index is keyed from an older root key version
    than ``root_version``, or from the server secret: id, key version, sealed email and index."""
    query = sa.select(users.c.id, users.c.key_version, users.c.email_sealed, users.c.email_index).where(
        _email_index_not_under(root_version), users.c.email_sealed.is_not(None)
    )
    page = query.where(users.c.id > after) if after is not None else query
    return list((await session.execute(page.order_by(users.c.id).limit(limit))).all())


async def replace_email_index(
    session: AsyncSession, user_id: int, *, expected: bytes, email_sealed: bytes, index: bytes, root_version: int
) -> bool:
    """Store ``index``, keyed from ``root_version``, if the user's index and sealed email are still ``expected``
    and ``email_sealed``."""
    result = await session.execute(
        users.update()
        .where(users.c.id == user_id, users.c.email_index == expected, users.c.email_sealed == email_sealed)
        .values(email_index=index, email_index_version=root_version)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def clear_email_index(session: AsyncSession, user_id: int, *, expected: bytes) -> bool:
    """Drop the user's email index (the sealed address stays) if it is still ``expected``."""
    result = await session.execute(
        users.update()
        .where(users.c.id == user_id, users.c.email_index == expected)
        .values(email_index=None, email_index_version=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# -- posts by Sealed format


def _format_byte(column: Any) -> Any:
    """The format version byte of a sealed column (the third byte), as a one-byte binary value."""
    # Literal positions, so that PostgreSQL sees the same expression in SELECT and GROUP BY.
    return sa.type_coerce(sa.func.substr(column, sa.literal_column("3"), sa.literal_column("1")), sa.LargeBinary)


def _older_format(version: int) -> sa.Select[Any]:
    """Posts whose body or content warning is sealed in a format older than ``version``."""
    older = sa.bindparam("format", bytes([version]), type_=sa.LargeBinary)
    return sa.select(
        posts.c.id, posts.c.author_id, posts.c.revision, posts.c.key_version, posts.c.body, posts.c.cw
    ).where(sa.or_(_format_byte(posts.c.body) < older, _format_byte(posts.c.cw) < older))


async def count_posts_in_format_below(session: AsyncSession, version: int) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(_older_format(version).subquery())) or 0)


async def posts_in_format_below(session: AsyncSession, version: int, *, after: int | None, limit: int) -> list[Record]:
    """The next ``limit`` posts with id above ``after`` whose body or content warning is sealed in a format older
    than ``version``."""
    return await _posts_after(session, _older_format(version), after, limit)


# -- what ``keys status`` shows of posts


async def posts_by_key_version(session: AsyncSession) -> dict[int, int]:
    return await _grouped(session, posts.c.key_version)


async def sealed_fields_by_format(session: AsyncSession) -> dict[int, int]:
    """Sealed post fields (bodies and content warnings) by Sealed format version."""
    formats: dict[int, int] = {}
    for column in (posts.c.body, posts.c.cw):
        byte = _format_byte(column)
        rows = await session.execute(sa.select(byte, sa.func.count()).where(column.is_not(None)).group_by(byte))
        for value, count in rows:
            version = bytes(value)[0] if value else 0
            formats[version] = formats.get(version, 0) + int(count)
    return formats


async def user_keys_by_version(session: AsyncSession) -> dict[int, int]:
    return await _grouped(session, user_keys.c.version)


async def count_superseded_keys(session: AsyncSession) -> int:
    """How many user key versions are older than their user's current one."""
    superseded = await session.scalar(
        sa.select(sa.func.count())
        .select_from(user_keys.join(users, users.c.id == user_keys.c.user_id))
        .where(user_keys.c.version < users.c.key_version)
    )
    return int(superseded or 0)


# -- helpers


async def _posts_after(session: AsyncSession, query: sa.Select[Any], after: int | None, limit: int) -> list[Record]:
    if after is not None:
        query = query.where(posts.c.id > after)
    return list((await session.execute(query.order_by(posts.c.id).limit(limit))).all())


async def _count(session: AsyncSession, table: sa.Table, where: Any) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(table).where(where)) or 0)


async def _grouped(session: AsyncSession, column: Any) -> dict[int, int]:
    rows = await session.execute(sa.select(column, sa.func.count()).group_by(column))
    return {int(v): int(n) for v, n in rows}
