"""Cache spaces, each a kind of cached value with its TTLs, and the Redis key names made from them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

Key = int | str
PREFIX = "cf"


@dataclass(frozen=True, slots=True)
class Space:
    name: str
    l1_ttl: float  # seconds
    l2_ttl: float  # 0: this space lives in L1 only (its values are cheap to load, or Redis holds them otherwise)
    # Refresh in the background once this fraction of the L1 TTL has passed and the key is read again.
    refresh_after: float = 0.8
    # Refills are expensive (a timeline query): one process refills while the others wait for its result.
    shared_refill: bool = False
    key_prefix: str = field(init=False, repr=False, compare=False)  # what redis_key() puts before a key

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_prefix", f"{PREFIX}:{{{self.name}:")


POSTS = Space("p", l1_ttl=120, l2_ttl=600)
USERS = Space("u", l1_ttl=120, l2_ttl=600)
SESSIONS = Space("s", l1_ttl=30, l2_ttl=300)
API_TOKENS = Space("a", l1_ttl=30, l2_ttl=300)  # a revoked token must be invalidated like a logged-out session
USER_KEYS = Space("k", l1_ttl=300, l2_ttl=600)  # wrapped user keys; unwrapped ones live in KeyStore only
FOLLOWING = Space("f", l1_ttl=60, l2_ttl=600)
TIMELINES = Space("t", l1_ttl=10, l2_ttl=60, shared_refill=True)
# The first page of each user's home timeline (post refs), in L1 only (l2_ttl 0: its shared copy is the user's feed
# in Redis, see feed.home_feeds), dropped by every fan-out, delete and follow that changes it.
HOME = Space("h", l1_ttl=60, l2_ttl=0)
LIKED = Space("l", l1_ttl=120, l2_ttl=600)  # the newest post ids a user liked, dropped by their like or unlike
BOOKMARKED = Space("b", l1_ttl=120, l2_ttl=600)  # the same for bookmarks, dropped by a bookmark or its removal
BOOSTED = Space("o", l1_ttl=120, l2_ttl=600)  # the same for boosts
# Rendered post frames, sealed (feed.web.post_html); checked against the post's revision when read, dropped by an
# edit or delete so no ciphertext of an old revision outlives the row.
FRAMES = Space("r", l1_ttl=300, l2_ttl=600)
# The same for the API: each status's JSON but for what changes per reader or by the minute (feed.web.mastodon).
STATUS_FRAMES = Space("j", l1_ttl=300, l2_ttl=600)
FRAME_SPACES = (FRAMES, STATUS_FRAMES)  # what an edit or a delete of a post drops with its record
# An account's follower, following and post counts and latest post time (every status in the API embeds them),
# dropped by the follows and posts that change them.
COUNTS = Space("c", l1_ttl=60, l2_ttl=600)
# How many notifications a person has not read (the number in the navigation), dropped by each new one and by reading.
UNREAD = Space("n", l1_ttl=60, l2_ttl=600)
# Whom a person blocked or was blocked by (neither sees the other), and whom they mute now (a mute can end by
# itself, so its list lives a minute at most), dropped by each block, mute and their undoing.
BLOCKED = Space("x", l1_ttl=120, l2_ttl=600)
MUTED = Space("m", l1_ttl=60, l2_ttl=60)
# A viewer's first page of a timeline, drawn whole and sealed under their own key, with holes for what changes per
# request (feed.web.page_blobs). Keyed by the viewer; dropped with any of the viewer's keys in DERIVED below (what
# the page's choice of posts depends on), and checked against the records of the posts and people on it (or against
# the shown log, feed.cache.shown, when read from Redis).
PAGES = Space("w", l1_ttl=60, l2_ttl=120)  # a blob lives a minute at most (feed.web.page_blobs)
# The same for the API's JSON, in L1 only (as HOME, which the bus drops in every process): a fan-out drops it in
# every follower's entry without one more Redis write each.
# An L1-only blob has nothing to be refreshed from before it expires (a refresh would find nothing), so it is not
# due for one: read until it expires, then drawn again.
STATUS_PAGES = Space("v", l1_ttl=60, l2_ttl=0, refresh_after=1.0)
# The public timeline's first page, per viewer (their blocks, mutes and marks), in L1 only: checked, when read, also
# against the public timeline's refs it was drawn from.
PUBLIC_PAGES = Space("q", l1_ttl=60, l2_ttl=0, refresh_after=1.0)
# And the API's public timeline, the same way.
PUBLIC_STATUS_PAGES = Space("y", l1_ttl=60, l2_ttl=0, refresh_after=1.0)
PAGE_SPACES = (PAGES, STATUS_PAGES, PUBLIC_PAGES, PUBLIC_STATUS_PAGES)
SPACES = (
    POSTS,
    USERS,
    SESSIONS,
    API_TOKENS,
    USER_KEYS,
    FOLLOWING,
    TIMELINES,
    HOME,
    LIKED,
    BOOKMARKED,
    BOOSTED,
    FRAMES,
    STATUS_FRAMES,
    COUNTS,
    UNREAD,
    BLOCKED,
    MUTED,
    PAGES,
    STATUS_PAGES,
    PUBLIC_PAGES,
    PUBLIC_STATUS_PAGES,
)
# An invalidation of a key of one of these spaces drops the same key of the spaces it names too: each of a viewer's
# page blobs goes with whom they block and mute, their own profile, and what they liked, bookmarked and boosted; their
# home page blobs also with their home refs and whom they follow (which choose no post of the public timeline).
_HOME_INPUTS = (HOME, FOLLOWING)
_PAGE_INPUTS = (BLOCKED, MUTED, USERS, LIKED, BOOKMARKED, BOOSTED)
DERIVED: dict[str, tuple[Space, ...]] = {
    **{space.name: (PAGES, STATUS_PAGES) for space in _HOME_INPUTS},
    **{space.name: PAGE_SPACES for space in _PAGE_INPUTS},
}


_BY_NAME = {space.name: space for space in SPACES}


def with_derived(names: Iterable[str]) -> list[str]:
    """``names`` (of values, as :func:`redis_key` makes them) and those their invalidation drops too (``DERIVED``):
    what a process that receives an invalidation drops, whichever release sent it (an older one may not know a
    space derived since)."""
    out = list(names)
    for name in out[:]:
        head, _, rest = name.partition(":{")
        space = _BY_NAME.get(rest[:1])
        if head == PREFIX and space is not None and rest[1:2] == ":" and rest.endswith("}"):
            out += [f"{also.key_prefix}{rest[2:-1]}}}" for also in DERIVED.get(space.name, ())]
    return list(dict.fromkeys(out))


# A value's key holds its space and key in a hash tag (``cf:{p:123}``), and so do its generation counter
# (``cf:g:{p:123}``) and its refill lock (``cf:lock:{t:public}``): on a Redis Cluster the three live in one slot, so
# that a script reading one and writing another works there too.


def redis_key(space: Space, key: Key) -> str:
    return f"{space.key_prefix}{key}}}"


def generation_key(space: Space, key: Key) -> str:
    return f"{PREFIX}:g:{{{space.name}:{key}}}"


def generation_of(name: str) -> str:
    """The generation key of a value's key."""
    return f"{PREFIX}:g:{name.split(':', 1)[1]}"


def lock_key(name: str) -> str:
    """The refill lock of a value's key."""
    return f"{PREFIX}:lock:{name.split(':', 1)[1]}"
