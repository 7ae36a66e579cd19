"""Users, their wrapped keys, sessions and API tokens."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.tables import api_tokens, follows, posts, sessions, user_keys, users

USER_COLUMNS = (
    users.c.id,
    users.c.username,
    users.c.display_name,
    users.c.bio,
    users.c.key_version,
    users.c.created_at,
    users.c.locked,
)


async def insert_user(session: AsyncSession, **values: Any) -> None:
    await session.execute(users.insert().values(**values))


async def username_taken(session: AsyncSession, username_lower: str) -> bool:
    found = await session.scalar(sa.select(users.c.id).where(users.c.username_lower == username_lower))
    return found is not None


async def lock_email(session: AsyncSession, lock: int) -> None:
    """Hold ``lock`` (a signed 64-bit number naming one address) until the transaction ends, so that two processes
    saving one address under different root key versions (in the middle of a rollout) cannot both find it free.
    SQLite needs none: its write transactions run one at a time."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(sa.text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": lock})


async def email_taken(session: AsyncSession, email_indexes: Iterable[bytes], *, except_user: int | None = None) -> bool:
    """Whether another user's email index is one of ``email_indexes`` (the address's index under each key)."""
    query = sa.select(users.c.id).where(users.c.email_index.in_(list(email_indexes))).limit(1)
    if except_user is not None:
        query = query.where(users.c.id != except_user)
    return (await session.scalar(query)) is not None


async def get_user(session: AsyncSession, user_id: int) -> Record | None:
    return (await session.execute(sa.select(*USER_COLUMNS).where(users.c.id == user_id))).first()


async def get_user_by_username(session: AsyncSession, username_lower: str) -> Record | None:
    query = sa.select(*USER_COLUMNS).where(users.c.username_lower == username_lower)
    return (await session.execute(query)).first()


async def get_users(session: AsyncSession, ids: Iterable[int]) -> dict[int, Record]:
    wanted = set(ids)
    if not wanted:
        return {}
    rows = await session.execute(sa.select(*USER_COLUMNS).where(users.c.id.in_(wanted)))
    return {row.id: row for row in rows}


async def get_ids_by_usernames(session: AsyncSession, usernames_lower: Sequence[str]) -> dict[str, int]:
    if not usernames_lower:
        return {}
    rows = await session.execute(
        sa.select(users.c.username_lower, users.c.id).where(users.c.username_lower.in_(usernames_lower))
    )
    return {row.username_lower: row.id for row in rows}


async def get_credentials(session: AsyncSession, username_lower: str) -> Record | None:
    query = sa.select(users.c.id, users.c.password_hash).where(users.c.username_lower == username_lower)
    return (await session.execute(query)).first()


async def get_password_hash(session: AsyncSession, user_id: int) -> str | None:
    return await session.scalar(sa.select(users.c.password_hash).where(users.c.id == user_id))


async def get_email_sealed(session: AsyncSession, user_id: int) -> Record | None:
    query = sa.select(users.c.email_sealed, users.c.key_version).where(users.c.id == user_id)
    return (await session.execute(query)).first()


async def update_user(session: AsyncSession, user_id: int, **values: Any) -> None:
    await session.execute(users.update().where(users.c.id == user_id).values(**values))


# -- keys


async def insert_user_key(
    session: AsyncSession, *, user_id: int, version: int, root_version: int, wrapped: bytes, now: datetime
) -> None:
    await session.execute(
        user_keys.insert().values(
            user_id=user_id, version=version, root_version=root_version, wrapped=wrapped, created_at=now
        )
    )


async def get_wrapped_keys(session: AsyncSession, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    wanted = set(pairs)
    if not wanted:
        return {}
    user_ids = {uid for uid, _ in wanted}
    rows = await session.execute(
        sa.select(user_keys.c.user_id, user_keys.c.version, user_keys.c.wrapped).where(
            user_keys.c.user_id.in_(user_ids)
        )
    )
    return {(r.user_id, r.version): r.wrapped for r in rows if (r.user_id, r.version) in wanted}


async def root_version_counts(session: AsyncSession) -> dict[int, int]:
    rows = await session.execute(
        sa.select(user_keys.c.root_version, sa.func.count()).group_by(user_keys.c.root_version)
    )
    return {int(v): int(n) for v, n in rows}


async def email_index_version_counts(session: AsyncSession) -> dict[int | None, int]:
    """Email indexes by the root key version they are keyed from (None: the server secret, from before)."""
    column = users.c.email_index_version
    rows = await session.execute(
        sa.select(column, sa.func.count()).where(users.c.email_index.is_not(None)).group_by(column)
    )
    return {None if v is None else int(v): int(n) for v, n in rows}


async def user_key_version_counts(session: AsyncSession) -> tuple[int, int]:
    """(user keys, users)."""
    keys = await session.scalar(sa.select(sa.func.count()).select_from(user_keys))
    people = await session.scalar(sa.select(sa.func.count()).select_from(users))
    return int(keys or 0), int(people or 0)


# -- sessions and tokens


async def insert_session(
    session: AsyncSession, *, id_hash: bytes, user_id: int, now: datetime, expires_at: datetime
) -> None:
    await session.execute(
        sessions.insert().values(id_hash=id_hash, user_id=user_id, created_at=now, expires_at=expires_at)
    )


async def session_user(session: AsyncSession, id_hash: bytes, now: datetime) -> Record | None:
    query = (
        sa.select(*USER_COLUMNS)
        .join(sessions, sessions.c.user_id == users.c.id)
        .where(sessions.c.id_hash == id_hash, sessions.c.expires_at > now)
    )
    return (await session.execute(query)).first()


async def session_row(session: AsyncSession, id_hash: bytes) -> Record | None:
    """The session's user and expiry (the caller checks the expiry: this row may be cached)."""
    query = sa.select(sessions.c.user_id, sessions.c.expires_at).where(sessions.c.id_hash == id_hash)
    return (await session.execute(query)).first()


async def delete_session(session: AsyncSession, id_hash: bytes) -> None:
    await session.execute(sessions.delete().where(sessions.c.id_hash == id_hash))


async def delete_other_sessions(session: AsyncSession, user_id: int, keep: bytes | None) -> list[bytes]:
    """Delete the user's sessions but ``keep``; the hashes of those deleted (for the cache)."""
    query = sessions.delete().where(sessions.c.user_id == user_id)
    if keep is not None:
        query = query.where(sessions.c.id_hash != keep)
    return list((await session.execute(query.returning(sessions.c.id_hash))).scalars())


async def insert_token(session: AsyncSession, *, token_hash: bytes, user_id: int, name: str, now: datetime) -> None:
    await session.execute(api_tokens.insert().values(token_hash=token_hash, user_id=user_id, name=name, created_at=now))


async def token_row(session: AsyncSession, token_hash: bytes) -> Record | None:
    """The token's user (None: an app's own token), expiry (None: it does not expire), app and scopes; the caller
    checks the expiry."""
    query = sa.select(api_tokens.c.user_id, api_tokens.c.expires_at, api_tokens.c.app_id, api_tokens.c.scopes).where(
        api_tokens.c.token_hash == token_hash
    )
    return (await session.execute(query)).first()


# -- throttling


class UserCounts(NamedTuple):
    followers: int
    following: int
    posts: int
    last_post_at: datetime | None


async def counts_many(session: AsyncSession, user_ids: Iterable[int]) -> dict[int, UserCounts]:
    """Follower, following and post counts and the latest post time of several users, in four grouped queries."""
    ids = set(user_ids)
    if not ids:
        return {}

    async def grouped(column: sa.ColumnElement[int], value: Any = None) -> dict[int, Any]:
        measure = sa.func.count() if value is None else sa.func.max(value)
        rows = await session.execute(sa.select(column, measure).where(column.in_(ids)).group_by(column))
        return {int(row[0]): row[1] for row in rows}

    followers = await grouped(follows.c.followee_id)
    following = await grouped(follows.c.follower_id)
    post_counts = await grouped(posts.c.author_id)
    latest = await grouped(posts.c.author_id, posts.c.created_at)
    return {i: UserCounts(followers.get(i, 0), following.get(i, 0), post_counts.get(i, 0), latest.get(i)) for i in ids}


async def site_counts(session: AsyncSession, active_since: datetime) -> tuple[int, int, int]:
    """(users, posts, users who posted since ``active_since``)."""
    people = sa.select(sa.func.count()).select_from(users).scalar_subquery()
    post_count = sa.select(sa.func.count()).select_from(posts).scalar_subquery()
    active = (
        sa.select(sa.func.count(sa.distinct(posts.c.author_id)))
        .where(posts.c.created_at >= active_since)
        .scalar_subquery()
    )
    row = (await session.execute(sa.select(people, post_count, active))).one()
    return int(row[0]), int(row[1]), int(row[2])


async def touch_last_seen(session: AsyncSession, user_id: int, now: datetime, every: timedelta) -> None:
    """Note that the user is around, at most once per ``every`` (one cheap UPDATE, usually matching no row)."""
    await session.execute(
        users.update()
        .where(users.c.id == user_id, sa.or_(users.c.last_seen_at.is_(None), users.c.last_seen_at < now - every))
        .values(last_seen_at=now)
    )


async def seen_before(session: AsyncSession, user_ids: Sequence[int], cutoff: datetime) -> list[int]:
    """Which of ``user_ids`` are gone or were last seen before ``cutoff`` (their feeds can go)."""
    if not user_ids:
        return []
    query = sa.select(users.c.id).where(
        users.c.id.in_(user_ids), sa.or_(users.c.last_seen_at.is_(None), users.c.last_seen_at >= cutoff)
    )
    active = set(await session.scalars(query))
    return [uid for uid in user_ids if uid not in active]


async def current_key_version(session: AsyncSession, user_id: int) -> int | None:
    """The user's key version for a write, locking their row until the transaction ends (PostgreSQL; SQLite's
    write transactions are serial anyway): a key rotation, which takes the same lock, then happens wholly before
    this write or wholly after it, and so rewraps it."""
    query = sa.select(users.c.key_version).where(users.c.id == user_id).with_for_update()
    version = await session.scalar(query)
    return int(version) if version is not None else None


def _like_prefix(text: str) -> str:
    """``text`` as a LIKE prefix pattern, its own ``%``, ``_`` and ``\\`` taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def search(
    session: AsyncSession, prefix: str, *, limit: int, offset: int = 0, followed_by: int | None = None
) -> list[int]:
    """Ids of live accounts whose username or display name starts with ``prefix`` (either case), usernames that
    match first, then by username; with ``followed_by``, only accounts that user follows."""
    pattern = _like_prefix(prefix.lower())
    by_name = users.c.username_lower.like(pattern, escape="\\")
    by_display = sa.func.lower(users.c.display_name).like(pattern, escape="\\")
    query = sa.select(users.c.id).where(sa.or_(by_name, by_display), users.c.key_version != 0)
    if followed_by is not None:
        followed = sa.select(follows.c.followee_id).where(follows.c.follower_id == followed_by)
        query = query.where(users.c.id.in_(followed))
    ordered = query.order_by(sa.case((by_name, 0), else_=1), users.c.username_lower).limit(limit).offset(offset)
    return list(await session.scalars(ordered))
