"""Live events seen by one viewer: which events a viewer may get, and a post as pushed (decrypted in this process,
through the frame cache, only for the connections that may see it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from feed.cache import FRAME_SPACES, POSTS, redis_key
from feed.events import Event
from feed.records import PostRecord
from feed.services import fanout, lookup, timelines
from feed.services.context import Services
from feed.services.models import FrameStyle, Marks, PostView, User


async def may_see(svc: Services, viewer: User | None, author_id: int, visibility: str, mentions: Iterable[int]) -> bool:
    """The visibility rule (``timelines.can_see``) for a post known by its metadata only (one that is gone)."""
    if visibility in ("public", "unlisted"):
        return True
    if viewer is None:
        return False
    if author_id == viewer.id or viewer.id in mentions:
        return True
    return visibility == "followers" and author_id in await lookup.following(svc, viewer.id)


async def may_see_event(svc: Services, viewer: User | None, event: Event) -> bool:
    return await may_see(svc, viewer, event.author, event.visibility, event.mentions)


async def joins_home_when_read(svc: Services, viewer: User, event: Event) -> bool:
    """A new post that no fan-out brings to the viewer's home stream (its author has too many followers for one),
    which belongs in their home timeline."""
    if event.visibility == "direct" or event.author == viewer.id:
        return False
    return event.author in await fanout.popular_authors(svc) and await in_home_of(svc, viewer, event)


async def boost_joins_home_when_read(svc: Services, viewer: User, event: Event) -> bool:
    """A boost (an event of kind BOOST) that no fan-out brings to the viewer's home stream (its booster has too many
    followers for one), which belongs in their home timeline: they follow the booster, and are neither the booster
    (whose own boosts reach them by the fan-out) nor the post's author (whom a boost's fan-out skips)."""
    if viewer.id in (event.booster, event.author):
        return False
    popular = await fanout.popular_authors(svc)
    return event.booster in popular and event.booster in await lookup.following(svc, viewer.id)


async def in_home_of(svc: Services, viewer: User, event: Event) -> bool:
    """Whether the post belongs in the viewer's home timeline: their own, a followee's, or one mentioning them."""
    if event.author == viewer.id or viewer.id in event.mentions:
        return True
    return event.visibility != "direct" and event.author in await lookup.following(svc, viewer.id)


async def post(
    svc: Services, post_id: int, style: FrameStyle | None, *, fresh: bool = False
) -> tuple[PostRecord, PostView] | None:
    """The post as it is now, with its frame, for every viewer at once; None if it is gone or does not open.

    ``fresh``: for an edit. The event and the invalidation of the old revision reach this process by different
    ways (a stream and pub/sub), in either order: this process's copies are dropped first, so the post is read
    from Redis (which the writer updated before its commit returned) or the database."""
    if fresh:
        svc.cache.drop([redis_key(POSTS, post_id), *(redis_key(space, post_id) for space in FRAME_SPACES)])
    record = await lookup.post(svc, post_id)
    if record is None:
        return None
    found = await timelines.views(svc, [record], None, Marks(), style=style)
    return (record, found[0]) if found else None


async def person(svc: Services, user_id: int) -> User | None:
    """Someone named beside a pushed post (who boosted it)."""
    found = await lookup.user(svc, user_id)
    return User.from_row(found) if found is not None else None


async def for_viewer(
    svc: Services,
    post_id: int,
    viewer: User | None,
    style: FrameStyle | None,
    memo: dict[Any, Any],
    *,
    fresh: bool = False,
    hide_muted: bool = False,
) -> tuple[PostRecord, PostView, Marks] | None:
    """The post for one viewer of a live event: the record, the view shared by every viewer (opened once per event,
    kept in ``memo``) and what this viewer marked of it (nothing of someone a block stands between, nor with
    ``hide_muted``, for a home or public timeline, of someone they mute); None if they may not see it, or it is gone."""
    key = ("post", post_id, style is not None)
    if key not in memo:
        memo[key] = await post(svc, post_id, style, fresh=fresh)
    found = memo[key]
    if found is None:
        return None
    record, view = found
    if record.visibility not in ("public", "unlisted") and not await may_see(
        svc, viewer, record.author_id, record.visibility, [uid for uid, _ in record.mentions]
    ):
        return None
    marks = await lookup.marks(svc, viewer.id if viewer else None, [post_id])
    if record.author_id in marks.blocked or (hide_muted and record.author_id in marks.muted):
        return None
    return record, view, marks
