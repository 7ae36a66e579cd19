"""Reads through the two-tier cache: post records, users, wrapped keys, sessions and follow lists.

Each function pairs a cache space with its database loader. Writers invalidate through :func:`invalidate`
after their commit (see ``feed.cache`` for the guarantees).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

from crypto import Sealed
from feed.bus import Invalidation
from feed.cache import (
    API_TOKENS,
    BLOCKED,
    BOOKMARKED,
    BOOSTED,
    COUNTS,
    FOLLOWING,
    FRAMES,
    LIKED,
    MUTED,
    POSTS,
    SESSIONS,
    TIMELINES,
    USER_KEYS,
    USERS,
    Key,
    Loader,
    Request,
    Space,
)
from feed.records import (
    AccountCounts,
    Attachment,
    Cacheable,
    IdList,
    IdSet,
    PostRecord,
    RefList,
    SealedFrame,
    SessionRecord,
    UserRecord,
    WrappedKey,
)
from feed.services.context import Services
from feed.services.models import Marks
from feed.storage import bookmarks as bookmark_store
from feed.storage import boosts as boost_store
from feed.storage import follows as follow_store
from feed.storage import likes as like_store
from feed.storage import media as media_store
from feed.storage import posts as post_store
from feed.storage import relations as relation_store
from feed.storage import users as user_store

NEVER = datetime(9999, 1, 1, tzinfo=UTC)
MARKS_KEPT = 500  # how many of a user's liked (or bookmarked) post ids, the newest posts, the cache keeps


def attachment(row: Any) -> Attachment:
    sizes = json.loads(row.variants) if row.variants else {}
    return Attachment(
        id=row.id,
        kind=row.kind,
        width=row.width or 0,
        height=row.height or 0,
        variants=tuple((name, int(w), int(h)) for name, (w, h) in sizes.items()),
        focus=(float(row.focus_x), float(row.focus_y)),
        key_version=row.key_version,
        revision=row.revision,
        description=Sealed(bytes(row.description)) if row.description is not None else None,
        blurhash=Sealed(bytes(row.blurhash)) if row.blurhash is not None else None,
    )


def post_record(row: Any, mentions: Sequence[Any], media: Sequence[Any] = ()) -> PostRecord:
    return PostRecord(
        id=row.id,
        author_id=row.author_id,
        visibility=row.visibility,
        in_reply_to_id=row.in_reply_to_id,
        in_reply_to_author_id=row.in_reply_to_author_id,
        revision=row.revision,
        key_version=row.key_version,
        likes_count=row.likes_count,
        replies_count=row.replies_count,
        created_at=row.created_at,
        edited_at=row.edited_at,
        body=Sealed(row.body),
        cw=Sealed(row.cw) if row.cw is not None else None,
        mentions=tuple((m.id, m.username) for m in mentions),
        sensitive=bool(row.sensitive),
        language=row.language,
        app_id=row.app_id or 0,
        reblogs_count=row.reblogs_count,
        media=tuple(attachment(m) for m in media if m.state == "ready"),
    )


async def counts(svc: Services, user_ids: Iterable[int]) -> dict[int, AccountCounts]:
    """Follower, following and post counts and the latest post time of accounts (cached)."""

    async def load(missing: list[int]) -> Mapping[int, AccountCounts]:
        async with svc.db() as session:
            found = await user_store.counts_many(session, missing)
        return {uid: AccountCounts(*row) for uid, row in found.items()}

    return await svc.cache.get_many(COUNTS, list(dict.fromkeys(user_ids)), load)  # type: ignore[return-value]


def user_record(row: Any) -> UserRecord:
    return UserRecord(row.id, row.username, row.display_name, row.bio, row.key_version, row.created_at, row.locked)


def _load_posts(svc: Services) -> Loader:
    async def load(missing: list[int]) -> Mapping[int, PostRecord]:
        async with svc.db() as session:
            rows = await post_store.get_posts(session, missing)
            mentioned = await post_store.mentions_of(session, missing)
            attached = await media_store.of_posts(session, missing)
        return {row.id: post_record(row, mentioned.get(row.id, []), attached.get(row.id, ())) for row in rows}

    return load


def _load_users(svc: Services) -> Loader:
    async def load(missing: list[int]) -> Mapping[int, UserRecord]:
        async with svc.db() as session:
            rows = await user_store.get_users(session, missing)
        return {uid: user_record(row) for uid, row in rows.items()}

    return load


def _load_user_keys(svc: Services) -> Loader:
    async def load(missing: list[str]) -> Mapping[str, WrappedKey]:
        wanted = [(int(u), int(v)) for u, v in (name.split(":") for name in missing)]
        async with svc.db() as session:
            found = await user_store.get_wrapped_keys(session, wanted)
        return {key_name(*pair): WrappedKey(blob) for pair, blob in found.items()}

    return load


def key_name(user_id: int, version: int) -> str:
    return f"{user_id}:{version}"


def posts_request(svc: Services, ids: Iterable[int]) -> Request:
    return Request(POSTS, list(ids), _load_posts(svc))


def users_request(svc: Services, ids: Iterable[int]) -> Request:
    return Request(USERS, list(ids), _load_users(svc))


def frames_request(ids: Iterable[int], space: Space = FRAMES) -> Request:
    """Cached post frames (of pages, or in ``space`` of the API): drawn by the reader that misses them, so there is
    nothing to load."""
    return Request(space, list(ids), _no_frames)


async def _no_frames(missing: list[int]) -> Mapping[int, SealedFrame]:
    return {}


def user_keys_request(svc: Services, pairs: Iterable[tuple[int, int]]) -> Request:
    return Request(USER_KEYS, [key_name(u, v) for u, v in pairs], _load_user_keys(svc))


async def posts(svc: Services, ids: Iterable[int]) -> dict[int, PostRecord]:
    return await svc.cache.get_many(POSTS, list(ids), _load_posts(svc))  # type: ignore[return-value]


async def post(svc: Services, post_id: int) -> PostRecord | None:
    return (await posts(svc, [post_id])).get(post_id)


async def users(svc: Services, ids: Iterable[int]) -> dict[int, UserRecord]:
    return await svc.cache.get_many(USERS, list(ids), _load_users(svc))  # type: ignore[return-value]


async def user(svc: Services, user_id: int) -> UserRecord | None:
    return (await users(svc, [user_id])).get(user_id)


def following_request(svc: Services, user_id: int) -> Request:
    """Everyone ``user_id`` follows (read it with :func:`ids_of`)."""

    async def load(missing: list[int]) -> Mapping[int, IdList]:
        async with svc.db() as session:
            return {user_id: IdList(tuple(await follow_store.followee_ids(session, user_id)))}

    return Request(FOLLOWING, [user_id], load)


def ids_of(found: Cacheable | None) -> frozenset[int]:
    return frozenset(found.ids) if isinstance(found, IdList) else frozenset()


async def following(svc: Services, user_id: int) -> frozenset[int]:
    """Everyone ``user_id`` follows."""
    return ids_of((await svc.cache.get_multi([following_request(svc, user_id)]))[0].get(user_id))


def session_request(svc: Services, id_hash: bytes) -> Request:
    async def load(missing: list[str]) -> Mapping[str, SessionRecord]:
        async with svc.db() as db:
            row = await user_store.session_row(db, id_hash)
        return {id_hash.hex(): SessionRecord(row.user_id, row.expires_at)} if row else {}

    return Request(SESSIONS, (id_hash.hex(),), load)


async def session(svc: Services, id_hash: bytes) -> SessionRecord | None:
    request = session_request(svc, id_hash)
    found = await svc.cache.get(SESSIONS, request.keys[0], request.load)
    return found if isinstance(found, SessionRecord) else None


async def api_token(svc: Services, id_hash: bytes) -> SessionRecord | None:
    """An API token, like a session: whose it is and until when (a token without expiry: the far future)."""

    async def load(missing: list[str]) -> Mapping[str, SessionRecord]:
        async with svc.db() as db:
            row = await user_store.token_row(db, id_hash)
        if row is None:
            return {}
        return {id_hash.hex(): SessionRecord(row.user_id or 0, row.expires_at or NEVER, row.app_id or 0, row.scopes)}

    found = await svc.cache.get(API_TOKENS, id_hash.hex(), load)
    return found if isinstance(found, SessionRecord) else None


class Ref(NamedTuple):
    """What a timeline query gives for each post (the columns of ``feed.storage.posts.REF_COLUMNS``; for a boost,
    those of ``feed.storage.boosts.BOOST_REF_COLUMNS``: the boosted post's, and the boost's id and booster)."""

    id: int
    author_id: int
    key_version: int
    in_reply_to_author_id: int | None
    boost_id: int = 0
    booster_id: int = 0


def position(ref: Any) -> int:
    """Where a timeline entry stands (its cursor): a boost's own id, or the post's."""
    return int(getattr(ref, "boost_id", 0) or ref.id)


def ref_tuple(ref: Any) -> tuple[int, ...]:
    base = (ref.id, ref.author_id, ref.key_version, ref.in_reply_to_author_id or 0)
    boost = getattr(ref, "boost_id", 0)
    return (*base, boost, ref.booster_id) if boost else base


def shared_ids_request(name: str, load: Callable[[], Awaitable[Sequence[int]]]) -> Request:
    """A cached list of ids shared by everyone (``load()`` gives it), in the TIMELINES space (read it with
    :func:`ids_of`)."""

    async def loader(missing: list[str]) -> Mapping[str, IdList]:
        return {name: IdList(tuple(await load()))}

    return Request(TIMELINES, [name], loader)


def timeline_request(space: Space, key: Key, load: Callable[[], Awaitable[Sequence[Any]]]) -> Request:
    """A cached first page of a timeline; ``load()`` gives its refs newest first (read it with :func:`refs_of`)."""

    async def loader(missing: list[Key]) -> Mapping[Key, RefList]:
        rows = await load()
        return {key: RefList(tuple(ref_tuple(r) for r in rows))}

    return Request(space, [key], loader)


def refs_of(found: Cacheable | None, limit: int | None = None) -> list[Ref]:
    """The refs of a cached timeline page (its first ``limit``)."""
    if not isinstance(found, RefList):
        return []
    return [Ref(ref[0], ref[1], ref[2], ref[3] or None, *ref[4:6]) for ref in found.refs[:limit]]


def has_boosts(found: Cacheable | None) -> bool:
    """Whether a cached timeline page holds a boost."""
    return isinstance(found, RefList) and any(len(ref) > 4 for ref in found.refs)


async def timeline_refs(
    svc: Services, space: Space, key: Key, load: Callable[[], Awaitable[Sequence[Any]]]
) -> list[Ref]:
    return refs_of((await svc.cache.get_multi([timeline_request(space, key, load)]))[0].get(key))


@dataclass(frozen=True, slots=True)
class MarkKind:
    """A kind of mark a person puts on posts (a like, a bookmark): the newest are cached per person (in ``space``,
    as an :class:`IdSet` of post ids), the rest asked of the database when a page shows older posts."""

    space: Space
    newest: Callable[[AsyncSession, int, int], Awaitable[list[int]]]  # (user, limit): post ids, newest first
    among: Callable[[AsyncSession, int, Sequence[int]], Awaitable[set[int]]]  # (user, post ids): those marked


LIKES = MarkKind(LIKED, like_store.recent_likes, like_store.liked_by)
BOOKMARKS = MarkKind(BOOKMARKED, bookmark_store.newest_posts, bookmark_store.marked)
BOOSTS = MarkKind(BOOSTED, boost_store.newest_posts, boost_store.boosted_by)
MARK_KINDS = (LIKES, BOOKMARKS, BOOSTS)  # in the order of the fields of ``Marks``


def mark_request(svc: Services, kind: MarkKind, user_id: int) -> Request:
    """The user's newest marks of a kind (read them with :func:`marks_among`)."""

    async def load(missing: list[int]) -> Mapping[int, IdSet]:
        async with svc.db() as session:
            newest = await kind.newest(session, user_id, MARKS_KEPT + 1)
        if len(newest) <= MARKS_KEPT:
            return {user_id: IdSet(frozenset(newest))}
        return {user_id: IdSet(frozenset(newest[:MARKS_KEPT]), floor=newest[MARKS_KEPT - 1])}

    return Request(kind.space, [user_id], load)


def blocked_request(svc: Services, user_id: int) -> Request:
    """Everyone the user blocked or was blocked by (read it with :func:`ids_of`)."""

    async def load(missing: list[int]) -> Mapping[int, IdList]:
        async with svc.db() as session:
            return {user_id: IdList(tuple(await relation_store.blocked_either_way(session, user_id)))}

    return Request(BLOCKED, [user_id], load)


def muted_request(svc: Services, user_id: int) -> Request:
    """Everyone the user mutes, as pairs (id, when the mute ends in epoch seconds or 0), flat in one list (read it
    with :func:`muted_of`, which leaves out mutes that ended since: the list is not dropped when one ends)."""

    async def load(missing: list[int]) -> Mapping[int, IdList]:
        async with svc.db() as session:
            found = await relation_store.mutes_until(session, user_id, datetime.now(UTC))
        return {
            user_id: IdList(tuple(x for uid, until in found for x in (uid, int(until.timestamp()) if until else 0)))
        }

    return Request(MUTED, [user_id], load)


def muted_of(found: Cacheable | None) -> frozenset[int]:
    if not isinstance(found, IdList) or not found.ids:
        return frozenset()
    now = time.time()
    pairs = zip(found.ids[::2], found.ids[1::2], strict=True)
    return frozenset(uid for uid, until in pairs if not until or until > now)


def marks_requests(svc: Services, user_id: int) -> list[Request]:
    """What a page needs to know of its viewer: their likes and bookmarks, whom they block (either way) and mute."""
    kinds = [mark_request(svc, kind, user_id) for kind in MARK_KINDS]
    return [*kinds, blocked_request(svc, user_id), muted_request(svc, user_id)]


async def marks_among(
    svc: Services, user_id: int, found: Sequence[Mapping[Any, Cacheable]], post_ids: Sequence[int]
) -> Marks:
    """Which of ``post_ids`` the user marked, from what :func:`marks_requests` found: their cached newest marks, and
    the database only for posts older than all of those when they marked more than :data:`MARKS_KEPT` posts."""
    shown = set(post_ids)
    lowest = min(shown, default=0)
    sets = []
    older_of: list[tuple[MarkKind, list[int]]] = []
    *marked, blocked, muted = found
    for kind, results in zip(MARK_KINDS, marked, strict=True):
        newest = results.get(user_id)
        if not isinstance(newest, IdSet):
            newest = IdSet(frozenset())
        sets.append(shown.intersection(newest.ids))
        if lowest < newest.floor:
            older_of.append((kind, [i for i in post_ids if i < newest.floor]))
    if older_of:
        async with svc.db() as session:
            for kind, older in older_of:
                sets[MARK_KINDS.index(kind)] |= await kind.among(session, user_id, older)
    liked, bookmarked, boosted = sets
    return Marks(liked, bookmarked, boosted, blocked=ids_of(blocked.get(user_id)), muted=muted_of(muted.get(user_id)))


def unseen_in(user_id: int, found: Sequence[Mapping[Any, Cacheable]]) -> frozenset[int]:
    """Whom the user blocks (either way) or mutes, from what :func:`marks_requests` found."""
    *_, blocked, muted = found
    return ids_of(blocked.get(user_id)) | muted_of(muted.get(user_id))


async def marks(svc: Services, user_id: int | None, post_ids: Sequence[int]) -> Marks:
    if user_id is None:
        return Marks()
    found = await svc.cache.get_multi(marks_requests(svc, user_id))
    return await marks_among(svc, user_id, found, post_ids)


async def marks_in(session: AsyncSession, user_id: int | None, post_ids: Sequence[int]) -> Marks:
    """The same, from the database (for a page read from it anyway)."""
    if user_id is None:
        return Marks()
    liked, bookmarked, boosted = [await kind.among(session, user_id, post_ids) for kind in MARK_KINDS]
    return Marks(
        liked,
        bookmarked,
        boosted,
        blocked=frozenset(await relation_store.blocked_either_way(session, user_id)),
        muted=frozenset(await relation_store.muted_ids(session, user_id, datetime.now(UTC))),
    )


async def blocked(svc: Services, user_id: int) -> frozenset[int]:
    """Everyone the user blocked or was blocked by."""
    return ids_of((await svc.cache.get_multi([blocked_request(svc, user_id)]))[0].get(user_id))


async def invalidate(svc: Services, *keys: tuple[Space, Any]) -> None:
    await svc.cache.invalidate(keys)


async def forget_user_keys(svc: Services, user_id: int, versions: Iterable[int]) -> None:
    """After a user's keys changed or were deleted (commit first): no process keeps them, wrapped or not."""
    svc.keys.forget(user_id)
    await svc.cache.invalidate([(USER_KEYS, key_name(user_id, v)) for v in versions])
    await svc.bus.publish(Invalidation(users=[user_id]))
