"""A viewer's first page of a timeline, kept whole as one blob sealed under the viewer's own key.

Drawing a home page takes a dozen cached values, twenty sealed frames (two AES-GCM operations each) and a template,
while what the page shows changes far less often than it is read. So the page is drawn once with holes where a
request's own parts go, sealed under a data key wrapped by the viewer's user key (nobody else's key opens it, and
erasing the viewer shreds it), and cached in L1 and Redis (space ``PAGES``, keyed by the viewer). A request then
costs its session, the blob, one decryption and the holes:

- the CSRF token, the unread count, the moment the live stream starts from, the composer's idempotency key;
- per post: its relative time, its reply count and its controls (like and boost counts; the viewer's likes,
  bookmarks and boosts), from the cached post records and the viewer's cached marks.

Freshness, as strong as a page drawn each time:

- What decides which posts the page shows is keyed by the viewer: their home refs, whom they block (either way),
  mute and follow, and their own profile. Every invalidation of one of those drops the blob too
  (``feed.cache.DERIVED``): in this process, in Redis and, over the bus, in every other, through the outbox and
  the fan-out that feed live push (a new post, a boost, a delete, a follow, a block, a mute).
- What the posts and the people on it look like is checked at each read against their cached records: a post's
  revision (an edit; a deleted post has no record), a person's names, and erasure. A blob that fails is drawn again.
- A blob is drawn again when a mute on it ends, when the templates change (its variant), and at most a minute
  after it was drawn when its viewer follows a popular author (whose posts are merged into homes when read, not
  fanned out).
- An erased account's words may be in anyone's page: an erasure drops every blob, in every L1 and in Redis.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.requests import Request

from crypto import FieldContext, InvalidToken, UserKey, open_field_utf8, seal_fields
from feed.cache import HOME, PAGES, POSTS, USERS
from feed.records import PostRecord, SealedPage, UserRecord, WrappedKey
from feed.services import fanout, lookup
from feed.services.context import Services
from feed.services.models import PostView, TimelinePage, User
from feed.storage.erasure import ERASED
from feed.web.auth import csrf_token
from feed.web.post_html import PostHtml, reply_count_html
from feed.web.templating import draft_key, unread_badge
from feed.web.times import reltime

HOLE = "\x02"  # no post text, name or count can hold it: normalisation refuses control characters
_HOLE_BYTE = HOLE.encode()
_CSRF, _UNREAD, _SINCE, _DRAFT = (Markup(f"{HOLE}{code}{HOLE}") for code in "culd")  # noqa: S704 - constants
_TIME, _REPLIES, _LIKES, _BOOSTS = (f"{HOLE}{code}{HOLE}" for code in "prkb")  # a post's
_UNSHOWN = "\x00"  # a person named on a page by username only
LONGEST = 600  # seconds a blob is kept at most (PAGES.l2_ttl)

Draw = Callable[[], Awaitable[tuple[TimelinePage, dict[str, Any]]]]


@cache
def templates_version(env: jinja2.Environment) -> str:
    """Changes with any template, so that a deploy never serves pages of the old markup."""
    assert env.loader is not None
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(env.list_templates()):
        digest.update(name.encode() + b"\x00" + env.loader.get_source(env, name)[0].encode() + b"\x00")
    return digest.hexdigest()


def variant(env: jinja2.Environment, timeline: str, audience: str) -> str:
    return f"{timeline}|{templates_version(env)}|{audience}"


class _Holes(PostHtml):
    """Posts drawn with holes where :class:`PostHtml` puts what changes by the minute or with others' actions: each
    post's relative time (``p``, which starts a post), reply count (``r``), like count (``k``) and boost count
    (``b``); the CSRF token in the viewer's own posts' controls (``c``). The viewer's own marks (liked, bookmarked,
    boosted) are drawn in: a change of theirs drops the blob."""

    def __init__(self, env: jinja2.Environment, viewer: User, here: str) -> None:
        super().__init__(env, viewer, str(_CSRF), here)
        self.shown: list[PostView] = []

    def _html(self, post: PostView, is_focus: bool = False) -> str:
        self.shown.append(post)
        pieces = self._pieces(post)
        actions = self.actions_of(post.id, post.author.id, post.visibility, _LIKES, _BOOSTS, post.liked,  # type: ignore[arg-type]
                                  post.bookmarked, post.reblogged)  # fmt: skip
        return "".join((self._boosted_by(post), pieces[0], " thread-focus" if is_focus else "", pieces[1], _TIME,
                        pieces[2], _REPLIES, pieces[3], actions, pieces[4]))  # fmt: skip


def _holes_of(html: str) -> str:
    """The letters of the page's holes, in order."""
    return "".join(html.split(HOLE)[1::2])


def _context(timeline: str, viewer: User) -> FieldContext:
    return FieldContext(f"page:{timeline}", viewer.id, viewer.id, 0)


async def _viewer_key(svc: Services, viewer: User, version: int) -> UserKey | None:
    held = svc.keys.held(viewer.id, version)
    if held is not None:
        return held
    pair = (viewer.id, version)
    wrapped = (await svc.cache.get_multi([lookup.user_keys_request(svc, {pair})]))[0].get(lookup.key_name(*pair))
    if not isinstance(wrapped, WrappedKey):
        return None
    return svc.keys.open_many({pair: wrapped.blob}).get(pair)


async def _expires(svc: Services, viewer: User) -> int:
    """When a blob drawn now must be drawn again: when the first of the viewer's mutes ends; within a minute if they
    follow a popular author (whose new posts reach homes when read); else at the end of its time in the caches."""
    now = time.time()
    longest = now + LONGEST
    found = (await svc.cache.get_multi([lookup.muted_request(svc, viewer.id)]))[0].get(viewer.id)
    ids = getattr(found, "ids", ())
    ends = [until for until in ids[1::2] if until > now]
    if ends:
        longest = min(longest, min(ends))
    if await fanout.popular_authors(svc) & await lookup.following(svc, viewer.id):
        longest = min(longest, now + HOME.l1_ttl)
    return int(longest)


async def _draw(request: Request, svc: Services, viewer: User, timeline: str, template: str, draw: Draw,
                audience: str) -> SealedPage | None:  # fmt: skip
    """Draw the page with holes and seal it (None: the viewer's key cannot be had)."""
    key = await _viewer_key(svc, viewer, viewer.key_version)
    if key is None:
        return None
    expires = await _expires(svc, viewer)  # read before the page: a mute made meanwhile drops the blob anyway
    page, context = await draw()
    env: jinja2.Environment = request.app.state.templates
    here = request.url.path
    holes = _Holes(env, viewer, here)
    ids = ",".join(str(post.id) for post in page.posts[:100])
    ctx: dict[str, Any] = {
        "request": request,
        "viewer": viewer,
        "unread": 0,
        "unread_badge": lambda _: _UNREAD,
        "draft_key": lambda: _DRAFT,
        "csrf": _CSRF,
        "path": here,
        "here": here,
        "notice": "",
        "render_post": holes,
        "live": Markup(f"/events?timeline={timeline}&amp;since={_SINCE}&amp;posts={ids}"),  # noqa: S704 - ids
        "refresh": f"{here}?fragment=timeline",
        **context,
    }
    html = env.get_template(template).render(ctx)
    people: dict[int, tuple[int, str, str]] = {}
    for post in holes.shown:
        for person in (post.author, post.booster):
            if person is not None:
                people[person.id] = (person.id, person.username, person.display_name)
        if post.in_reply_to_author_id:  # shown by username only ("replying to")
            parent = post.in_reply_to_author_id
            people.setdefault(parent, (parent, post.reply_to_username or "", _UNSHOWN))
    posts = tuple((p.id, p.revision, p.booster.id if p.booster else 0) for p in holes.shown)
    codes = _holes_of(html)
    sealed = seal_fields(key, {f"page:{timeline}": html}, object_id=viewer.id, owner_id=viewer.id, revision=0)
    return SealedPage(variant(env, timeline, audience), key.version, expires, posts, tuple(people.values()), codes,
                      sealed[f"page:{timeline}"])  # fmt: skip


async def serve(request: Request, svc: Services, viewer: User, timeline: str, template: str, draw: Draw,
                audience: str) -> bytes | None:  # fmt: skip
    """The viewer's first page of ``timeline``: from their blob, drawn first if there is none or it is stale (None
    when it cannot be: the caller draws the page the ordinary way)."""
    env: jinja2.Environment = request.app.state.templates
    wanted = variant(env, timeline, audience)

    async def load(_: list[int]) -> Mapping[int, SealedPage]:
        drawn = await _draw(request, svc, viewer, timeline, template, draw, audience)
        return {viewer.id: drawn} if drawn is not None else {}

    for attempt in range(2):
        blob = svc.cache.cached(PAGES, viewer.id)
        if blob is None:
            blob = await svc.cache.get(PAGES, viewer.id, load)
        if not isinstance(blob, SealedPage):
            return None
        if blob.variant == wanted and blob.expires > time.time():
            body = await _open(request, svc, viewer, timeline, blob)
            if body is not None:
                return body
        if attempt == 0:  # stale: drawn again (here, in Redis; the other processes check theirs when read)
            await svc.cache.invalidate([(PAGES, viewer.id)], broadcast=False)
    return None


async def _open(request: Request, svc: Services, viewer: User, timeline: str, blob: SealedPage) -> bytes | None:
    ids = [entry[0] for entry in blob.posts]
    people_ids = [person[0] for person in blob.people]
    records: dict[Any, Any] = svc.cache.cached_many(POSTS, ids)
    people: dict[Any, Any] = svc.cache.cached_many(USERS, people_ids)
    if len(records) < len(ids) or len(people) < len(people_ids):  # both in one round trip
        more_records, more_people = await svc.cache.get_multi(
            [lookup.posts_request(svc, [i for i in ids if i not in records]),
             lookup.users_request(svc, [i for i in people_ids if i not in people])]
        )  # fmt: skip
        records.update(more_records)
        people.update(more_people)
    shown: list[PostRecord] = []
    for post_id, revision, _ in blob.posts:
        record = records.get(post_id)
        if record is None or record.revision != revision:
            return None  # edited or deleted since
        shown.append(record)
    for user_id, username, display_name in blob.people:
        person: UserRecord | None = people.get(user_id)
        if person is None or person.key_version == ERASED or person.username != username:
            return None  # erased or renamed since
        if display_name != _UNSHOWN and person.display_name != display_name:
            return None
    key = await _viewer_key(svc, viewer, blob.key_version)
    if key is None:
        return None
    try:
        text = open_field_utf8(key, blob.sealed, _context(timeline, viewer))
    except InvalidToken:
        return None
    return _fill(request, text, blob.holes, shown)


def _fill(request: Request, text: bytes, holes: str, shown: list[PostRecord]) -> bytes | None:
    """The page: ``text`` (UTF-8) with its holes filled for this request (``holes`` names them in order)."""
    env: jinja2.Environment = request.app.state.templates
    csrf = csrf_token(request).encode()
    now = datetime.now(UTC)
    shell = {"c": csrf, "u": unread_badge(request.state._state.get("unread", 0)).encode(),
             "l": b"%d" % int(now.timestamp() * 1000), "d": draft_key().encode()}  # fmt: skip
    posts = iter(shown)
    r: PostRecord | None = None
    values: list[bytes] = []
    for code in holes:
        if code == "p":
            r = next(posts)
            values.append(reltime(r.created_at, now).encode())
        elif r is not None and code == "k":
            values.append(b"%d" % r.likes_count)
        elif r is not None and code == "b":
            values.append(b"%d" % r.reblogs_count)
        elif r is not None and code == "r":
            values.append(reply_count_html(env, r.replies_count).encode())
        else:
            values.append(shell[code])
    parts = text.split(_HOLE_BYTE)
    if len(parts) != 2 * len(values) + 1:
        return None  # drawn by another release: drawn again
    parts[1::2] = values
    return b"".join(parts)
