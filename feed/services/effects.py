"""What each kind of write causes, stated once, next to the writes (posts, likes, follows, sessions, accounts).

A writer builds its effects with one of the functions below, records them with :func:`record` inside its own
transaction (the outbox row commits or rolls back with the write), and calls :func:`committed` after the commit.
:func:`committed` drops the stale keys from this process and Redis at once (the writer's next page must not show the
old value) and wakes the relay; the relay (``feed.relay``) then does everything in the row everywhere: invalidations
on every process, jobs, live events. If this process dies right after the commit, another one's relay does it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from feed.cache import (
    API_TOKENS,
    BLOCKED,
    BOOKMARKED,
    BOOSTED,
    COUNTS,
    FOLLOWING,
    FRAME_SPACES,
    HOME,
    LIKED,
    MUTED,
    POSTS,
    SESSIONS,
    SPACES,
    TIMELINES,
    UNREAD,
    USER_KEYS,
    USERS,
    Space,
)
from feed.events import DELETE, EDIT, NEW, NOTE, Effects, Event, Job
from feed.services.context import Services, now
from feed.storage import outbox

_SPACES = {space.name: space for space in SPACES}


def _keys(*pairs: tuple[Space, int | str]) -> tuple[tuple[str, int | str], ...]:
    return tuple(dict.fromkeys((space.name, key) for space, key in pairs))


async def record(session: AsyncSession, effects: Effects) -> None:
    """Write ``effects`` to the outbox, in the caller's transaction."""
    if effects:
        await outbox.add(session, effects.encode(), now())


async def committed(svc: Services, effects: Effects) -> None:
    """After the commit: this process and Redis stop serving what the write made stale, and the relay is woken."""
    if svc.crash_after_commit:  # a test's fault point: die as a process killed at the worst moment would
        os.kill(os.getpid(), signal.SIGKILL)
    if effects.invalidate:
        await svc.cache.invalidate(((_SPACES[space], key) for space, key in effects.invalidate), broadcast=False)
    await svc.cache.note_shown(effects.shown)  # after the invalidation (feed.cache.shown)
    for user_id in effects.forget_users:
        svc.keys.forget(user_id)
    if svc.relay is not None:
        svc.relay.poke()


# -- posts


def post_created(
    post_id: int, author_id: int, visibility: str, parent_id: int | None, mentions: Iterable[int]
) -> Effects:
    """A new post: its parent's reply count, the public timeline, the author's home (at once; followers' homes
    by the fan-out job), and the live "new post" event."""
    stale: list[tuple[Space, int | str]] = [(HOME, author_id), (COUNTS, author_id)]
    if parent_id:
        stale.append((POSTS, parent_id))
    if visibility == "public":
        stale.append((TIMELINES, "public"))
    return Effects(
        invalidate=_keys(*stale),
        jobs=(Job("fan_out", (post_id,)),),
        events=(Event(NEW, post_id, author_id, visibility, tuple(mentions), parent_id or 0),),
        counts=(parent_id,) if parent_id else (),
    )


def post_edited(post_id: int, author_id: int, visibility: str, mentions: Iterable[int]) -> Effects:
    """A new revision: the record and its cached frame; a direct post reaches the homes of whom it mentions now."""
    mentioned = tuple(mentions)
    jobs = (Job("fan_out", (post_id,)),) if visibility == "direct" and mentioned else ()
    return Effects(
        invalidate=_keys((POSTS, post_id), *((space, post_id) for space in FRAME_SPACES)),
        jobs=jobs,
        events=(Event(EDIT, post_id, author_id, visibility, mentioned),),
        shown=(post_id,),
    )


def post_deleted(
    post_id: int, author_id: int, visibility: str, parent_id: int | None, mentions: Iterable[int]
) -> Effects:
    """A deletion: the record, its frame, the public timeline, the parent's reply count, the homes it was in (the
    author's and the mentioned at once, the followers' by the ``unfan`` job), and the live "deleted" event."""
    mentioned = tuple(mentions)
    stale: list[tuple[Space, int | str]] = [(POSTS, post_id), (TIMELINES, "public"), (COUNTS, author_id)]
    stale += [(space, post_id) for space in FRAME_SPACES]
    stale += [(HOME, user_id) for user_id in (author_id, *mentioned)]
    stale += [(UNREAD, user_id) for user_id in mentioned]  # their notifications of it went with it
    if parent_id:
        stale.append((POSTS, parent_id))
    return Effects(
        invalidate=_keys(*stale),
        jobs=(Job("unfan", (post_id, author_id)),) if visibility != "direct" else (),
        events=(Event(DELETE, post_id, author_id, visibility, mentioned, parent_id or 0),),
        counts=(parent_id,) if parent_id else (),
        shown=(post_id,),
    )


def like_changed(post_id: int, user_id: int) -> Effects:
    return Effects(invalidate=_keys((POSTS, post_id), (LIKED, user_id)), counts=(post_id,))


def boost_changed(boost_id: int, post_id: int, user_id: int, *, boosted: bool) -> Effects:
    """A boost, or its undoing: the post's count, the booster's own marks, and the boost into (or out of) the home
    timelines of the booster and their followers, by a job like a new post's fan-out."""
    job = Job("fan_out_boost", (boost_id,)) if boosted else Job("unfan_boost", (boost_id, user_id))
    return Effects(invalidate=_keys((POSTS, post_id), (BOOSTED, user_id), (HOME, user_id)), jobs=(job,))


def bookmark_changed(user_id: int) -> Effects:
    """A bookmark is its owner's alone: only their cached bookmarks change, and nobody is told."""
    return Effects(invalidate=_keys((BOOKMARKED, user_id)))


# -- notifications


def notified(notification_id: int, user_id: int) -> Effects:
    """A new notification: its recipient's unread count, and the live event to their streams."""
    return Effects(invalidate=_keys((UNREAD, user_id)), events=(Event(NOTE, notification_id, user_id, "direct"),))


def unread_changed(user_id: int) -> Effects:
    """Notifications read, dismissed or withdrawn: the number in the navigation changes."""
    return Effects(invalidate=_keys((UNREAD, user_id)))


def merge_unread(user_ids: Iterable[int]) -> Effects:
    """The same for several people at once (a deleted post's notifications)."""
    return Effects(invalidate=_keys(*((UNREAD, user_id) for user_id in user_ids)))


# -- people


def follow_changed(follower_id: int, followee_id: int, *, following: bool, popular_changed: bool = False) -> Effects:
    """A follow brings the followee's recent posts into the follower's feed; an unfollow takes them out. One that
    takes the followee across the fan-out threshold changes the list of popular authors."""
    job = Job("merge_follow" if following else "unmerge_follow", (follower_id, followee_id))
    stale: list[tuple[Space, int | str]] = [(FOLLOWING, follower_id), (HOME, follower_id)]
    stale += [(COUNTS, follower_id), (COUNTS, followee_id)]
    if popular_changed:
        stale.append((TIMELINES, "popular"))
    return Effects(invalidate=_keys(*stale), jobs=(job,))


def requests_changed(user_id: int) -> Effects:
    """A follow request made, withdrawn, approved or rejected: its account's counts (the number of requests)."""
    return Effects(invalidate=_keys((COUNTS, user_id)))


def block_changed(blocker_id: int, blocked_id: int) -> Effects:
    """A block or its undoing: both people's lists of whom they do not see, their first home pages and counts."""
    stale: list[tuple[Space, int | str]] = []
    for user_id in (blocker_id, blocked_id):
        stale += [(BLOCKED, user_id), (HOME, user_id), (COUNTS, user_id), (FOLLOWING, user_id)]
    return Effects(invalidate=_keys(*stale))


def mute_changed(muter_id: int) -> Effects:
    """A mute, new, changed or undone: only the muter's view changes (the muted person is not told)."""
    return Effects(invalidate=_keys((MUTED, muter_id), (HOME, muter_id), (UNREAD, muter_id)))


def sessions_ended(id_hashes: Iterable[bytes]) -> Effects:
    """Sessions logged out or ended: every process forgets them, and their live streams close."""
    return Effects(invalidate=_keys(*((SESSIONS, h.hex()) for h in id_hashes)))


def tokens_revoked(id_hashes: Iterable[bytes]) -> Effects:
    """API tokens revoked: every process forgets them, and their streams close."""
    return Effects(invalidate=_keys(*((API_TOKENS, h.hex()) for h in id_hashes)))


def profile_changed(user_id: int) -> Effects:
    return Effects(invalidate=_keys((USERS, user_id)), shown=(user_id,))


def user_erased(user_id: int, key_names: Iterable[str]) -> Effects:
    """An erased account: its keys leave every process, and so do its profile, follows, home and likes."""
    stale: list[tuple[Space, int | str]] = [(USERS, user_id), (FOLLOWING, user_id), (HOME, user_id), (LIKED, user_id)]
    stale.append((BOOKMARKED, user_id))
    stale.append((COUNTS, user_id))
    stale.append((TIMELINES, "public"))
    stale += [(USER_KEYS, name) for name in key_names]
    return Effects(invalidate=_keys(*stale), forget_users=(user_id,), shown=(user_id,))
