"""The live page stream, ``GET /events``: what a page shows changes as it happens (htmx's SSE extension connects,
``static/js/app.js`` applies the events).

Query: ``timeline`` (``home``, ``public``, ``author:<id>`` or ``post:<id>``), ``posts`` (the ids on the page, so
their counts, edits and deletions follow), and either ``since`` (the page's render time in milliseconds: what
happened after it is sent) or the position to resume from (``Last-Event-ID``, or ``last`` when the browser could not
send the header). Events, each rendered here for this viewer:

- ``post``: a new post for the top of the timeline (``<li>``): a followee's on home, a public post on the public
  page, the author's on their profile; a post the viewer may not see, or one deleted meanwhile, is never sent.
- ``edit`` (the post's new ``<article>``), ``delete`` (its id) and ``counts`` (JSON ``{"id": [likes, replies]}``),
  for the posts on the page.
- ``resync``: what the page missed is gone; it fetches its timeline again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from feed.cache import SESSIONS, redis_key
from feed.errors import Forbidden, NotFound, RateLimited, Unauthorized
from feed.events import BOOST, DELETE, EDIT, NEW, NOTE
from feed.services import accounts, notifications, push
from feed.services.context import Services
from feed.services.models import FrameStyle, User
from feed.streams import Entry
from feed.web.auth import csrf_token, services, session_token, viewer
from feed.web.hub import Connection, Hub, Message, parse_cursor
from feed.web.middleware import own_origin
from feed.web.post_html import PostHtml
from feed.web.sse import EventStream
from feed.web.templating import frame_style

CSRF_MARK = "\x02csrf\x02"  # rendered once for every viewer of a kind, then each connection's token put in
MAX_WATCHED = 200


@dataclass(eq=False)
class PageSink:
    svc: Services
    env: jinja2.Environment
    style: FrameStyle
    timeline: str  # home, public, author or post
    subject: int | None  # the author of a profile, the post of a thread
    here: str  # the page, for the no-JS "next" of forms in what is sent
    csrf: str
    kind: str = "page"
    wants_posts: bool = True

    def __post_init__(self) -> None:
        # Every page of a logged-in reader follows their own stream: new notifications (the count in the
        # navigation) come by it, and on the home page the posts that join it.
        self.wants_home = True
        self.topics = frozenset(
            {"public": {"public"}, "author": {f"author:{self.subject}"}, "home": {"home"}}.get(self.timeline, set())
        )

    async def home(self, conn: Connection, entry: Entry, memo: dict[Any, Any]) -> list[Message]:
        if entry.event.kind == NOTE:
            if conn.user is None:
                return []
            # Read from the database, not the cache: the event may come before the invalidation that goes with it.
            count = await notifications.unread_count(self.svc, conn.user, fresh=True)
            return [Message("unread", str(count))]
        if self.timeline != "home":
            return []
        return await self._new_post(conn, entry.event.post, memo, booster=entry.event.booster)

    async def posts(self, conn: Connection, entry: Entry, memo: dict[Any, Any]) -> list[Message]:
        event = entry.event
        if event.kind == NEW:
            shown = (self.timeline == "public" and event.visibility == "public") or (
                self.timeline == "author" and event.author == self.subject
            )
            if not shown and self.timeline == "home" and conn.user is not None:
                shown = await push.joins_home_when_read(self.svc, conn.user, event)
            return await self._new_post(conn, event.post, memo) if shown else []
        if event.kind == BOOST:
            if self.timeline != "home" or conn.user is None:
                return []
            if not await push.boost_joins_home_when_read(self.svc, conn.user, event):
                return []
            return await self._new_post(conn, event.post, memo, booster=event.booster)
        if event.post not in conn.on_screen:
            return []
        if event.kind == DELETE:
            return [Message("delete", str(event.post))]
        if event.kind == EDIT:
            html = await self._article(conn, event.post, memo, fresh=True)
            return [Message("edit", html, fill=(CSRF_MARK, self.csrf))] if html else []
        return []

    def counts(self, conn: Connection, counts: dict[int, tuple[int, int]]) -> list[Message]:
        return [Message("counts", json.dumps({str(post): list(pair) for post, pair in counts.items()}))]

    def resync(self, conn: Connection) -> list[Message]:
        return [Message("resync", "", id=conn.cursor())]

    async def _new_post(
        self, conn: Connection, post_id: int, memo: dict[Any, Any], *, booster: int = 0
    ) -> list[Message]:
        html = await self._article(conn, post_id, memo, booster=booster)
        if not html:
            return []
        conn.watch([post_id])
        item = memo.get(("li", html))
        if item is None:
            item = memo[("li", html)] = f"<li>{html}</li>"
        return [Message("post", item, fill=(CSRF_MARK, self.csrf))]

    async def _article(
        self, conn: Connection, post_id: int, memo: dict[Any, Any], *, fresh: bool = False, booster: int = 0
    ) -> str | None:
        """The post as this viewer sees it now, with :data:`CSRF_MARK` for the token in its forms (the same string
        for every viewer of a kind, see ``Message.fill``); None if they may not see it, or it is gone."""
        anonymous = ("anonymous", post_id, self.here)
        if conn.user is None and anonymous in memo:  # every logged-out viewer of this page sees the same
            return memo[anonymous]  # type: ignore[no-any-return]
        hide_muted = self.timeline in ("home", "public")
        found = await push.for_viewer(
            self.svc, post_id, conn.user, self.style, memo, fresh=fresh, hide_muted=hide_muted
        )
        if found is None:
            html = None
        else:
            record, view, marks = found
            own = conn.user is not None and conn.user.id == record.author_id
            marked = (post_id in marks.liked, post_id in marks.bookmarked, post_id in marks.boosted)
            variant = ("html", post_id, conn.user is not None, marked, own, self.here, booster)
            if booster and booster in marks.blocked | marks.muted:
                return None
            if variant not in memo:
                marks.put_on(view)
                view.booster = await push.person(self.svc, booster) if booster else None
                memo[variant] = str(PostHtml(self.env, conn.user, CSRF_MARK, self.here)(view))
            html = memo[variant]
        if conn.user is None:
            memo[anonymous] = html
        return html


def _ids(raw: str) -> list[int]:
    out = []
    for part in raw.split(",")[:MAX_WATCHED]:
        if part.isascii() and part.isdigit() and len(part) <= 19:
            out.append(int(part))
    return out


def _same_origin(request: Request) -> bool:
    """The page stream is for our own pages: a cross-site page may not read a viewer's timeline through it."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or origin == own_origin(request.scope, request.headers)


async def _subject(svc: Services, timeline: str, user: User | None) -> tuple[str, int | None]:
    if timeline in ("home", "public"):
        if timeline == "home" and user is None:
            raise Unauthorized("Log in to see your home timeline")
        return timeline, None
    kind, _, raw = timeline.partition(":")
    if kind in ("author", "post") and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        if kind == "author":
            await accounts.get_user(svc, int(raw))
        return kind, int(raw)
    raise NotFound("No such timeline")


async def events(request: Request) -> Response:
    if not _same_origin(request):
        raise Forbidden("Cross-site request refused")
    svc = services(request)
    hub: Hub = request.app.state.hub
    user = await viewer(request)
    timeline, subject = await _subject(svc, request.query_params.get("timeline", "home"), user)
    here = {"home": "/", "public": "/public"}.get(timeline, request.headers.get("referer", "/"))
    sink = PageSink(svc, request.app.state.templates, frame_style(request), timeline, subject,
                    _path_of(here), csrf_token(request))  # fmt: skip
    token = session_token(request)
    conn = Connection(
        sink,
        user,
        auth=redis_key(SESSIONS, accounts.token_hash(svc, token).hex()) if user is not None and token else None,
        authorize=(lambda: accounts.session_user(svc, token)) if user is not None and token else None,
    )
    strict = False
    resume = parse_cursor(request.headers.get("last-event-id") or request.query_params.get("last"))
    if resume is not None:
        strict = True
        conn.home_cursor, conn.posts_cursor = resume
    else:
        since = request.query_params.get("since", "")
        if since.isascii() and since.isdigit() and len(since) <= 15:
            conn.home_cursor = conn.posts_cursor = f"{since}-0"
    conn.watch(_ids(request.query_params.get("posts", "")))
    if not await hub.add(conn):
        raise RateLimited("Too many live streams are open; close a tab or two", retry_after=10)
    return EventStream(hub, conn, strict=strict)


def _path_of(url: str) -> str:
    """The path of a same-site page address (a Referer), for the forms' way back; "/" otherwise."""
    path = urlsplit(url).path or "/"
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) and len(path) < 500 else "/"


def live_url(timeline: str, post_ids: list[int], now_ms: int) -> Markup:
    """The ``sse-connect`` address of a page: its timeline, its posts and the moment it was drawn."""
    ids = ",".join(str(i) for i in post_ids[:MAX_WATCHED])
    return Markup(f"/events?timeline={timeline}&amp;since={now_ms}&amp;posts={ids}")  # noqa: S704 - ids and digits
