"""A viewer's first page of a timeline, kept whole as one blob sealed under the viewer's own key.

Drawing a home page takes a dozen cached values, twenty sealed frames (two AES-GCM operations each) and a template,
while what the page shows changes far less often than it is read. So the page is drawn once with holes where a
request's own parts go, sealed under a data key wrapped by the viewer's user key (nobody else's key opens it, and
erasing the viewer shreds it; the seal's context holds a digest of the blob's clear fields, so its text never opens
beside another page's), and cached in an L1 of its own and in Redis (space ``PAGES``, keyed by the viewer). A request
then costs its session, the blob, one decryption and the holes:

- the CSRF token, the unread count, the composer's audience and idempotency key;
- per post: its relative time and its reply, like and boost counts, from the cached post records. The viewer's own
  likes, bookmarks and boosts are drawn in (a change of theirs drops the blob).

Freshness, as strong as a page drawn each time:

- What decides which posts the page shows is keyed by the viewer: their home refs, whom they block (either way),
  mute and follow, their own profile and marks. Every invalidation of one of those drops the blob too
  (``feed.cache.DERIVED``): in this process, in Redis and, over the bus, in every other, through the outbox and
  the fan-out that feed live push (a new post, a boost, a delete, a follow, a block, a mute). A blob is drawn from
  Redis and the database, not from this process's copies of those inputs, which the bus may not have dropped yet.
- What the posts and the people on it look like is checked against their cached records: a post's revision (an
  edit; a deleted post has no record), a person's names, and erasure. A blob that fails is drawn again. The check
  is kept with the blob in this process until the cache's stamp of those records moves. A blob read from Redis by
  a process that never checked it is good as drawn (its counts then: the page's live stream brings the browser what
  changed since) if the shown log read in the same round trip names none of its ids since the blob's mark
  (:mod:`feed.cache.shown`); else it is checked.
- A blob ends when a mute on it ends, a minute after it was drawn (as a home timeline's first page is kept: popular
  authors' posts join homes when read, not by a fan-out), and with a release whose templates or code differ.
- An erased account's words may be in anyone's page: an erasure drops every blob, in every L1 and in Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup
from starlette._utils import get_route_path
from starlette.requests import Request

from crypto import FieldContext, InvalidToken, UserKey, open_field_utf8, seal_fields
from feed.cache import (
    BLOCKED,
    BOOKMARKED,
    BOOSTED,
    COUNTS,
    FOLLOWING,
    HOME,
    LIKED,
    MUTED,
    PAGES,
    POSTS,
    PUBLIC_PAGES,
    PUBLIC_STATUS_PAGES,
    STATUS_PAGES,
    TIMELINES,
    USERS,
    Space,
    redis_key,
)
from feed.cache import Request as CacheRequest
from feed.cache import shown as shown_log
from feed.records import (
    Cacheable,
    PostRecord,
    SealedPage,
    UserRecord,
    WrappedKey,
    clear_digest,
    page_clear,
    page_digest,
)
from feed.services import accounts as accounts_service
from feed.services import lookup, oauth, timelines
from feed.services.context import Services
from feed.services.models import PostView, TimelinePage, User
from feed.storage.erasure import ERASED
from feed.web import mastodon
from feed.web.auth import csrf_token
from feed.web.post_html import PostHtml, reply_count_html
from feed.web.templating import draft_key, unread_badge
from feed.web.times import WEEK, date_shown, short_age

HOLE = "\x02"  # no post text, name or count can hold it: normalisation refuses control characters
_CSRF, _UNREAD, _SINCE, _DRAFT = (Markup(f"{HOLE}{code}{HOLE}") for code in "culd")  # noqa: S704 - constants
_TIME, _REPLIES, _LIKES, _BOOSTS = (f"{HOLE}{code}{HOLE}" for code in "prkb")  # a post's
_AUDIENCES = {"public": "P", "unlisted": "U", "followers": "F", "direct": "D"}  # the composer's options
_SHELL = frozenset("cudh" + "".join(_AUDIENCES.values()))  # filled per request (h: the API's server address)
# A status in the API: where each starts (s), its author's and its booster's accounts (a, A), its reply count (y).
_START, _ACCOUNT, _BOOSTER, _REPLY_COUNT, _BASE = (f"{HOLE}{code}{HOLE}" for code in "saAyh")
_CODES = frozenset("lprkbsaAy") | _SHELL
_UNSHOWN = "\x00"  # a person named on a page by username only
# What chose a page's posts and marks, keyed by its viewer (each one's invalidation drops the blob:
# feed.cache.DERIVED); the public page's posts are not chosen by the viewer's home or follows.
_INPUTS = (HOME, FOLLOWING, BLOCKED, MUTED, LIKED, BOOKMARKED, BOOSTED)
_PUBLIC_INPUTS = (BLOCKED, MUTED, LIKED, BOOKMARKED, BOOSTED)

Draw = Callable[[], Awaitable[tuple[TimelinePage, dict[str, Any]]]]
# A blob's text with its holes, and the posts it shows, in the order of their holes.
Paint = Callable[[], Awaitable[tuple[str, list[PostView]]]]


@dataclass(frozen=True)
class _Kind:
    """A kind of blob: its seal's field name, its cache space, and the spaces whose changes its check follows; and
    for a page drawn from a list everyone shares (not dropped by a viewer's own keys), that list's digest now."""

    name: str
    space: Space
    checked: tuple[Space, ...]
    inputs: tuple[Space, ...] = _INPUTS
    # The digest of that list now, and whether the value read is the one L1 holds (as _held_now tells).
    source: Callable[[Services], Awaitable[tuple[str, bool]]] | None = None


async def _public_source(svc: Services) -> tuple[str, bool]:
    """The public timeline's refs now, as a digest: a public page drawn from others is drawn again."""
    found = (await svc.cache.get_multi([timelines.public_request(svc)]))[0].get(timelines.PUBLIC)
    digest = format(page_digest(*(tuple(ref) for ref in lookup.refs_of(found))), "x")
    return digest, found is not None and _held_now(svc, TIMELINES, {timelines.PUBLIC: found})


_HOME_PAGE = _Kind("page:home", PAGES, (POSTS, USERS))
_HOME_STATUSES = _Kind("page:api:home", STATUS_PAGES, (POSTS, USERS, COUNTS))  # its accounts show their counts
_PUBLIC_PAGE = _Kind("page:public", PUBLIC_PAGES, (POSTS, USERS, TIMELINES), _PUBLIC_INPUTS, _public_source)
_PUBLIC_STATUSES = _Kind("page:api:public", PUBLIC_STATUS_PAGES, (POSTS, USERS, COUNTS, TIMELINES), _PUBLIC_INPUTS,
                         _public_source)  # fmt: skip
_PAGE_KINDS = {"home": _HOME_PAGE, "public": _PUBLIC_PAGE}
_STATUS_KINDS = {"home": _HOME_STATUSES, "public": _PUBLIC_STATUSES}


_DRAWING_CODE = ("feed.web.page_blobs", "feed.web.post_html", "feed.web.templating", "feed.web.times",
                 "feed.web.pages", "feed.web.live", "feed.services.timelines", "feed.services.fanout",
                 "feed.web.mastodon", "feed.web.api")  # fmt: skip


@cache
def release(env: jinja2.Environment) -> str:
    """Changes with any template and with the code that draws pages, so that a deploy never serves pages drawn by
    the release before it (nor two releases each other's, while both run)."""
    assert env.loader is not None
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(env.list_templates()):
        digest.update(name.encode() + b"\x00" + env.loader.get_source(env, name)[0].encode() + b"\x00")
    for module in _DRAWING_CODE:
        digest.update(inspect.getsource(sys.modules[module]).encode() if module in sys.modules else module.encode())
    return digest.hexdigest()


def variant(env: jinja2.Environment, timeline: str) -> str:
    return f"{timeline}|{release(env)}"


def _statuses_variant(env: jinja2.Environment, timeline: str, limit: int, base: str) -> str:
    """An API blob's: statuses link to the server's address they were asked at, and a page holds ``limit``."""
    return f"{variant(env, f'api:{timeline}')}|{limit}|{base}"


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


def _holes_of(text: str) -> str | None:
    """The letters of the text's holes, in order (None if a post's text held the hole mark: no blob is kept then)."""
    codes = text.split(HOLE)[1::2]
    return "".join(codes) if all(len(code) == 1 and code in _CODES for code in codes) else None


def _format_of(text: str) -> str:
    """The text as a ``%`` format whose fields are its holes, in order: filled in one pass (``bytes % values``)."""
    parts = text.split(HOLE)
    parts[0::2] = [part.replace("%", "%%") for part in parts[0::2]]
    parts[1::2] = ["%b"] * (len(parts) // 2)
    return "".join(parts)


def _context(kind: _Kind, viewer_id: int, blob: SealedPage) -> FieldContext:
    """The seal's context: the kind, the viewer, and a digest of the blob's clear fields, so that its text opens
    only beside the ids, names, holes and expiry it was drawn with."""
    return FieldContext(kind.name, viewer_id, viewer_id, blob.header_digest())


async def _viewer_key(svc: Services, viewer_id: int, version: int) -> UserKey | None:
    held = svc.keys.held(viewer_id, version)
    if held is not None:
        return held
    pair = (viewer_id, version)
    wrapped = (await svc.cache.get_multi([lookup.user_keys_request(svc, {pair})]))[0].get(lookup.key_name(*pair))
    if not isinstance(wrapped, WrappedKey):
        return None
    return svc.keys.open_many({pair: wrapped.blob}).get(pair)


async def _expires(svc: Services, viewer: User) -> int:
    """When a blob drawn now must be drawn again: when the first of the viewer's mutes ends, and a minute from now at
    the latest, as a home timeline's first page is kept (popular authors' posts join homes when read, not by a
    fan-out that would drop the blob)."""
    now = time.time()
    found = (await svc.cache.get_multi([lookup.muted_request(svc, viewer.id)]))[0].get(viewer.id)
    ids = getattr(found, "ids", ())
    return int(min([now + HOME.l1_ttl, *(until for until in ids[1::2] if until > now)]))


async def _draw(svc: Services, env: jinja2.Environment, viewer: User, kind: _Kind, wanted: str,
                paint: Paint) -> SealedPage | None:  # fmt: skip
    """Paint the blob's text with holes and seal it (None: the viewer's key cannot be had)."""
    key = await _viewer_key(svc, viewer.id, viewer.key_version)
    if key is None:
        return None
    # From Redis and the database, not this process's copies: those are dropped by the relay's message, which may
    # come after the write's own invalidation of the blob in Redis, and a blob drawn from them would be shared.
    svc.cache.drop([redis_key(space, viewer.id) for space in kind.inputs])
    drawn_ms = int(time.time() * 1000)
    # The shown log before anything the page shows: what changes after is named in it after the blob's mark.
    log = await svc.cache.shown_log() if kind.space.l2_ttl else None
    expires = await _expires(svc, viewer)  # read before the page: a mute made meanwhile drops the blob anyway
    source = (await kind.source(svc))[0] if kind.source else ""  # before the page too: a change meanwhile redraws it
    text, shown = await paint()
    people: dict[int, tuple[int, str, str]] = {}
    for post in shown:
        for person in (post.author, post.booster):
            if person is not None:
                people[person.id] = (person.id, person.username, person.display_name)
        if post.in_reply_to_author_id:  # shown by username only ("replying to")
            parent = post.in_reply_to_author_id
            people.setdefault(parent, (parent, post.reply_to_username or "", _UNSHOWN))
    posts = tuple((p.id, p.revision, p.booster.id if p.booster else 0) for p in shown)
    codes = _holes_of(text)
    if codes is None:
        return None
    fields = (wanted, key.version, expires, posts, tuple(people.values()), codes, drawn_ms)
    created = tuple(int(p.created_at.timestamp()) for p in shown)
    filled, mark = b"", ""
    if log is not None:  # kept in Redis: read elsewhere as drawn if the log vouches for it (_as_drawn)
        drawn = [_Drawn(p.created_at.timestamp(), p.likes_count, p.reblogs_count, p.replies_count) for p in shown]
        as_drawn = _fillings(env, codes, posts, drawn_ms, drawn, {}, None) if "a" not in codes else None
        filled = b"\x00".join(as_drawn.values) if as_drawn is not None else b""
        mark = log.mark_for({*(p[0] for p in posts), *people}) if filled else ""
    clear = page_clear(*fields, source, created, filled, mark)
    sealed = seal_fields(key, {kind.name: _format_of(text)}, object_id=viewer.id, owner_id=viewer.id,
                         revision=clear_digest(clear))[kind.name]  # fmt: skip
    return SealedPage(*fields, sealed, source, created, filled, mark)


def _chosen_hole(current: str, value: str) -> Markup:
    """Where the composer's audience is marked chosen: a hole for each option (the browser's last audience)."""
    return Markup(f"{HOLE}{_AUDIENCES[value]}{HOLE}")  # noqa: S704 - a constant letter


async def serve(request: Request, svc: Services, viewer: User, timeline: str, template: str, draw: Draw | None,
                audience: str, log: shown_log.Log | None = None) -> bytes | None:  # fmt: skip
    """The viewer's first page of ``timeline``: from their blob, drawn first if there is none or it is stale (None
    when it cannot be: the caller draws the page the ordinary way). ``audience``: the composer's, chosen. Without
    ``draw``: only from a blob in L1 or Redis that is good now. ``log``: the shown log, if it was read with the
    blob."""
    env: jinja2.Environment = request.app.state.templates

    async def paint() -> tuple[str, list[PostView]]:
        assert draw is not None
        page, context = await draw()
        here = request.url.path
        holes = _Holes(env, viewer, here)
        ids = ",".join(str(post.id) for post in page.posts[:100])
        ctx: dict[str, Any] = {
            "request": request,
            "viewer": viewer,
            "unread": 0,
            "unread_badge": lambda _: _UNREAD,
            "draft_key": lambda: _DRAFT,
            "chosen": _chosen_hole,
            "csrf": _CSRF,
            "path": here,
            "here": here,
            "notice": "",
            "render_post": holes,
            "live": Markup(f"/events?timeline={timeline}&amp;since={_SINCE}&amp;posts={ids}"),  # noqa: S704 - ids
            "refresh": f"{here}?fragment=timeline",
            **context,
        }
        return env.get_template(template).render(ctx), holes.shown

    shell = page_shell(csrf_token(request), request.state._state.get("unread", 0), audience)
    kind = _PAGE_KINDS[timeline]
    return await _serve(request, svc, viewer, kind, variant(env, timeline), paint if draw else None, shell, log)


async def serve_statuses(request: Request, svc: Services, viewer: User, timeline: str, limit: int,
                         draw: Callable[[], Awaitable[TimelinePage]] | None) -> tuple[bytes, bytes] | None:  # fmt: skip
    """The API's first page of ``timeline`` (``limit`` statuses) for the viewer, as :func:`serve` does the HTML
    page: the JSON array and its Link header (None when it cannot be had: the caller writes the page itself)."""
    env: jinja2.Environment = request.app.state.templates
    base = mastodon.base_url(request)  # with the root path, if any
    path = get_route_path(request.scope)

    async def paint() -> tuple[str, list[PostView]]:
        assert draw is not None
        page = await draw()
        links = []
        if page.next_max_id:
            links.append(f'<{_BASE}{path}?{urlencode({"limit": limit, "max_id": page.next_max_id})}>; rel="next"')
        if page.posts and page.prev_min_id:
            links.append(f'<{_BASE}{path}?{urlencode({"limit": limit, "min_id": page.prev_min_id})}>; rel="prev"')
        apps = await oauth.applications(svc, {p.app_id for p in page.posts})
        body = mastodon.statuses_text(request, page.posts, {}, apps, holes=_STATUS_HOLES)
        return f"{', '.join(links)}\n{body}", list(page.posts)

    wanted = _statuses_variant(env, timeline, limit, base)
    kind = _STATUS_KINDS[timeline]
    found = await _serve(request, svc, viewer, kind, wanted, paint if draw else None, {"h": base.encode()})
    if found is None:
        return None
    links, _, body = found.partition(b"\n")
    return body, links


# What mastodon.statuses_text writes in place of what an API blob fills per request or when checked.
_STATUS_HOLES = {"start": _START, "account": _ACCOUNT, "booster": _BOOSTER, "likes": _LIKES,
                 "replies": _REPLY_COUNT, "boosts": _BOOSTS}  # fmt: skip


async def _serve(request: Request, svc: Services, viewer: User | int, kind: _Kind, wanted: str, paint: Paint | None,
                 shell: dict[str, bytes], log: shown_log.Log | None = None,
                 read: Cacheable | None = None) -> bytes | None:  # fmt: skip
    """The blob of ``kind`` for ``viewer``, opened and filled; drawn with ``paint`` if there is none or it is stale.
    Without ``paint``, only a blob that is in L1 or Redis and good now (else None): ``feed.web.hot_path``. ``log``:
    the shown log, and ``read`` the blob, if they were read together (or the log after)."""

    viewer_id = viewer if isinstance(viewer, int) else viewer.id

    async def load(_: list[int]) -> Mapping[int, SealedPage]:
        if paint is None:
            return {}
        assert isinstance(viewer, User)  # only an id: never drawn
        drawn = await _draw(svc, request.app.state.templates, viewer, kind, wanted, paint)
        return {viewer.id: drawn} if drawn is not None else {}

    for attempt in range(2):
        blob = read if attempt == 0 and read is not None else svc.cache.cached(kind.space, viewer_id)
        if blob is None and paint is None and not kind.space.l2_ttl:
            return None  # in L1 only, and not there: nothing more to find (nor a miss to count, before the draw's)
        if blob is None:
            blob = await svc.cache.get(kind.space, viewer_id, load)
        if not isinstance(blob, SealedPage):
            return None
        if blob.variant == wanted and blob.expires > time.time():
            body = await _open(request, svc, viewer_id, kind, blob, shell, log if attempt == 0 else None)
            if body is not None:
                return body
        if paint is None:
            return None
        if attempt == 0:  # stale: drawn again (here, in Redis; the other processes check theirs when read)
            await svc.cache.invalidate([(kind.space, viewer_id)], broadcast=False)
    return None


async def from_store(request: Request, svc: Services, viewer_id: int, shell: dict[str, bytes], read: Cacheable | None,
                     log: shown_log.Log | None) -> bytes | None:  # fmt: skip
    """``viewer_id``'s home page from a blob in L1 or Redis that is good now, never drawn (``feed.web.hot_path``):
    ``shell`` what the request fills (:func:`page_shell`); ``read`` the blob and ``log`` the shown log, as read
    together by :func:`prefetch`'s request."""
    env: jinja2.Environment = request.app.state.templates
    return await _serve(request, svc, viewer_id, _HOME_PAGE, variant(env, "home"), None, shell, log, read)


async def _nothing(_: list[int]) -> Mapping[int, SealedPage]:
    return {}


def _blob_request(viewer_id: int) -> CacheRequest:
    return CacheRequest(PAGES, (viewer_id,), _nothing)


def prefetch(svc: Services) -> Callable[[int], CacheRequest]:
    """For ``feed.web.auth.viewer``: the viewer's home page blob, read into L1 with their own record (never drawn)."""
    return _blob_request


class _Checked(NamedTuple):
    """A blob checked against the posts and people it shows, while the cache's stamp of their spaces stood: until it
    moves, nothing the check read has changed, and a read of the blob skips the check (``SealedPage.checked``)."""

    stamp: tuple[tuple[int, int], ...] | None  # None: as drawn (_as_drawn), not kept
    values: list[bytes]  # each hole's filling, as far as it is the same for every request until the stamp moves
    ages: list[tuple[int, float]]  # (hole, when its post was made in epoch seconds)
    shell: tuple[tuple[int, str], ...]  # (hole, letter) of what each request fills: its token, its unread count...
    aged: list[Any]  # [second, values with the posts' ages then]: the ages change once a second at most


async def _open(request: Request, svc: Services, viewer_id: int, kind: _Kind, blob: SealedPage,
                shell: dict[str, bytes], log: shown_log.Log | None = None) -> bytes | None:  # fmt: skip
    checked: _Checked | None = blob.checked
    if checked is None or checked.stamp != _stamp(svc, kind):
        checked = _as_drawn(blob, log)
        if checked is None:
            checked = await _check_once(request, svc, kind, blob, _stamp(svc, kind))  # stamped before its reads
        if checked is None:
            return None
    key = svc.keys.held(viewer_id, blob.key_version) or await _viewer_key(svc, viewer_id, blob.key_version)
    return None if key is None else _opened(key, viewer_id, kind, blob, checked, shell)


def _stamp(svc: Services, kind: _Kind) -> tuple[tuple[int, int], ...]:
    """The cache's stamp of what a blob of ``kind`` is checked against (``Cache.changes``)."""
    return tuple(svc.cache.changes(space) for space in kind.checked)


def _opened(key: UserKey, viewer_id: int, kind: _Kind, blob: SealedPage, checked: _Checked,
            shell: dict[str, bytes]) -> bytes | None:  # fmt: skip
    try:
        text = open_field_utf8(key, blob.sealed, _context(kind, viewer_id, blob))
    except InvalidToken:
        return None
    return _fill(text, checked, shell)


def held(svc: Services, env: jinja2.Environment, viewer: User, shell: dict[str, bytes], *, limit: int = 0,
         base: str = "", timeline: str = "home") -> bytes | None:  # fmt: skip
    """Without awaiting anything: the viewer's page of ``timeline`` (or, with ``limit`` and the server's ``base``,
    their app's first page of it: its Link header, a newline, its JSON) from a blob this process holds, good now
    and checked since the last change to what it shows; None otherwise (:func:`serve` and :func:`serve_statuses`
    then)."""
    kind = _STATUS_KINDS[timeline] if limit else _PAGE_KINDS[timeline]
    wanted = _statuses_variant(env, timeline, limit, base) if limit else variant(env, timeline)
    blob = svc.cache.cached(kind.space, viewer.id)
    if not isinstance(blob, SealedPage) or blob.variant != wanted or blob.expires <= time.time():
        return None
    checked: _Checked | None = blob.checked
    if checked is None or checked.stamp != _stamp(svc, kind):
        return None
    key = svc.keys.held(viewer.id, blob.key_version)
    return None if key is None else _opened(key, viewer.id, kind, blob, checked, shell)


def page_shell(csrf: str, unread: int, audience: str) -> dict[str, bytes]:
    """What a home page's request fills: its CSRF token, the unread count, a new draft key, the chosen audience."""
    return {"c": csrf.encode(), "u": unread_badge(unread).encode(), "d": draft_key().encode(),
            _AUDIENCES.get(audience, ""): b" selected"}  # fmt: skip


async def _check_once(request: Request, svc: Services, kind: _Kind, blob: SealedPage,
                      stamp: Any) -> _Checked | None:  # fmt: skip
    """:func:`_check`, kept with the blob if it may be, and made once for all the reads of the blob that ask at the
    same stamp: a burst of reads after a change waits for one check instead of making one each. (A read waiting for
    a check that failed draws the page, as after a stale one.)"""
    pending = blob.checking
    if pending is not None and pending[0] == stamp:
        found: _Checked | None = await asyncio.shield(pending[1])
        return found
    pending = (stamp, asyncio.get_running_loop().create_future())
    object.__setattr__(blob, "checking", pending)
    checked: _Checked | None = None
    try:
        checked, lasting = await _check(request, svc, kind, blob, stamp)
        if checked is not None and lasting:
            object.__setattr__(blob, "checked", checked)
        return checked
    finally:
        pending[1].set_result(checked)
        if blob.checking is pending:
            object.__setattr__(blob, "checking", None)


async def _check(request: Request, svc: Services, kind: _Kind, blob: SealedPage,
                 stamp: Any) -> tuple[_Checked | None, bool]:  # fmt: skip
    """Whether each post on the blob is at the revision it was drawn at and each person has the names it shows and
    is not erased; if so, the holes' fillings that stay until one of them changes (None: it must be drawn again).
    And whether the check may be kept: only if each value it read is the one L1 holds now (a read that joined a
    refill begun before an invalidation gets a value L1 then refuses to keep)."""
    source_held = True
    if kind.source is not None:
        source, source_held = await kind.source(svc)
        if source != blob.source:
            return None, False  # the list it was drawn from has changed
    ids = [entry[0] for entry in blob.posts]
    people_ids = [person[0] for person in blob.people]
    records: dict[Any, Any] = svc.cache.cached_many(POSTS, ids)
    people: dict[Any, Any] = svc.cache.cached_many(USERS, people_ids)
    more_records: Mapping[Any, Any] = {}
    more_people: Mapping[Any, Any] = {}
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
            return None, False  # edited or deleted since
        shown.append(record)
    for user_id, username, display_name in blob.people:
        person: UserRecord | None = people.get(user_id)
        if display_name == _UNSHOWN:  # named by username only, as the page was drawn (also one erased or gone)
            if (person.username if person is not None else "") != username:
                return None, False
        elif (
            person is None
            or person.key_version == ERASED
            or (person.username, person.display_name) != (username, display_name)
        ):
            return None, False  # erased or renamed since
    accounts: dict[int, bytes] = {}
    # What came from L1 was L1's at the stamp; what came from further may not be (a joined refill's).
    lasting = source_held and _held_now(svc, POSTS, more_records) and _held_now(svc, USERS, more_people)
    if "a" in blob.holes:  # the API's: each author's and booster's account, with their counts
        base = mastodon.base_url(request)  # the blob's own: its variant holds it
        shown_people = [User.of(people[user_id]) for user_id, _, name in blob.people if name != _UNSHOWN]
        counts = await lookup.counts(svc, [user.id for user in shown_people])  # mostly from L1, checked whole
        profiles = accounts_service.profiles_of(shown_people, counts)
        accounts = {uid: mastodon.account_text(request, base, profile).encode() for uid, profile in profiles.items()}
        lasting = lasting and _held_now(svc, COUNTS, counts)
    lasting = lasting and _stamp(svc, kind) == stamp  # none came meanwhile
    drawn = [_Drawn(r.created_at.timestamp(), r.likes_count, r.reblogs_count, r.replies_count, r.author_id)
             for r in shown]  # fmt: skip
    env = request.app.state.templates
    return _fillings(env, blob.holes, blob.posts, blob.drawn_ms, drawn, accounts, stamp), lasting


class _Drawn(NamedTuple):
    """What :func:`_fillings` reads of a post on a blob, by position: from its record."""

    created: float  # epoch seconds
    likes: int
    boosts: int
    replies: int
    author_id: int = 0  # for an API blob's accounts


def _as_drawn(blob: SealedPage, log: shown_log.Log | None) -> _Checked | None:
    """The blob's holes filled as it was drawn (its counts then; ages now), if the shown log read with it names
    none of its posts and people since it was drawn (:mod:`feed.cache.shown`): a blob read from Redis is good
    without reading their records. Not kept with the blob: this process's next read checks it, and fills the counts
    of now. None if the log cannot vouch for it (then it is checked as usual)."""
    if log is None or not blob.mark or not blob.filled or len(blob.created) != len(blob.posts):
        return None
    added = log.added_since(blob.mark)
    if added is None:
        return None
    if added:
        ids = {entry[0] for entry in blob.posts}
        ids.update(person[0] for person in blob.people)
        if not ids.isdisjoint(added):
            return None
    layout = _layout(blob.holes)
    values = blob.filled.split(b"\x00")
    if layout is None or len(values) != layout.size:
        return None
    created = blob.created
    return _Checked(None, values, [(index, created[entry]) for index, entry in layout.ages], layout.shell,
                    [None, values])  # fmt: skip


def _held_now(svc: Services, space: Space, read: Mapping[Any, Any]) -> bool:
    """Whether L1 holds each of these values of ``space`` now, the very objects that were read."""
    held = svc.cache.cached_many(space, read)
    return len(held) == len(read) and all(held[key] is value for key, value in read.items())


class _Layout(NamedTuple):
    """Where a blob's holes are (:func:`_layout`): per kind of filling, (hole, entry on the page) of each."""

    size: int  # holes
    posts: int  # entries: holes "p" or "s" (each starts one)
    ages: tuple[tuple[int, int], ...]
    shell: tuple[tuple[int, str], ...]  # (hole, letter) of what each request fills
    drawn: tuple[int, ...]  # holes of when it was drawn
    counts: dict[str, tuple[tuple[int, int], ...]]  # per letter of "kbyraA"


@lru_cache(maxsize=256)
def _layout(holes: str) -> _Layout | None:
    """The layout of a blob's ``holes``: the same for each read of a blob (and of the next, mostly). None if a
    post's hole comes before any post."""
    entry = -1
    ages: list[tuple[int, int]] = []
    shell: list[tuple[int, str]] = []
    drawn: list[int] = []
    counts: dict[str, list[tuple[int, int]]] = {code: [] for code in "kbyraA"}
    for index, code in enumerate(holes):
        if code in "ps":  # a post starts: its relative time (the page), nothing (the API)
            entry += 1
            if code == "p":
                ages.append((index, entry))
        elif code == "l":
            drawn.append(index)
        elif code in _SHELL:
            shell.append((index, code))
        elif entry < 0:
            return None
        else:  # _holes_of() let no other letter in
            counts[code].append((index, entry))
    return _Layout(len(holes), entry + 1, tuple(ages), tuple(shell), tuple(drawn),
                   {code: tuple(found) for code, found in counts.items()})  # fmt: skip


def _fillings(env: jinja2.Environment, holes: str, posts: tuple[tuple[int, int, int], ...], drawn_ms: int,
              shown: Sequence[_Drawn], accounts: dict[int, bytes], stamp: Any) -> _Checked | None:  # fmt: skip
    """The fillings of a blob's ``holes`` for its ``posts`` as ``shown`` (and each status's accounts, in the API's)."""
    layout = _layout(holes)
    if layout is None or not layout.posts == len(shown) == len(posts):
        return None
    values = [b""] * layout.size
    for index in layout.drawn:
        values[index] = b"%d" % drawn_ms
    counts = layout.counts
    for index, entry in counts["k"]:
        values[index] = b"%d" % shown[entry][1]
    for index, entry in counts["b"]:
        values[index] = b"%d" % shown[entry][2]
    for index, entry in counts["y"]:
        values[index] = b"%d" % shown[entry][3]
    for index, entry in counts["r"]:
        values[index] = _reply_count(env, shown[entry][3])
    for code in "aA":  # the API's: each status's author's account, and its booster's
        for index, entry in counts[code]:
            found = accounts.get(shown[entry][4] if code == "a" else posts[entry][2])
            if found is None:
                return None
            values[index] = found
    ages = [(index, shown[entry][0]) for index, entry in layout.ages]
    return _Checked(stamp, values, ages, layout.shell, [None, values])


@lru_cache(maxsize=1024)
def _reply_count(env: jinja2.Environment, count: int) -> bytes:
    return reply_count_html(env, count).encode()


@lru_cache(maxsize=4096)
def _age(seconds: int) -> bytes:
    return short_age(seconds).encode()


@lru_cache(maxsize=4096)
def _date(created: int, year: int) -> bytes:
    """A post's date, as a post a week old or older shows it in ``year``."""
    return date_shown(datetime.fromtimestamp(created, UTC), year).encode()


def _fill(text: bytes, checked: _Checked, shell: dict[str, bytes]) -> bytes | None:
    """The page: ``text`` (UTF-8, :func:`_format_of`) with its holes filled for this request (None if they do not
    match the text)."""
    now = int(time.time())
    aged = checked.aged
    if aged[0] != now:  # the posts' ages, once a second
        values = checked.values.copy()
        year = 0
        for index, created in checked.ages:
            seconds = int(now - created)
            if seconds < WEEK:
                values[index] = _age(seconds)
            else:
                year = year or datetime.fromtimestamp(now, UTC).year
                values[index] = _date(int(created), year)
        aged[:] = now, values
    values = aged[1].copy()
    for index, code in checked.shell:
        values[index] = shell.get(code, b"")
    try:
        return text % tuple(values)
    except (TypeError, ValueError):  # not as many holes as the page was drawn with
        return None
