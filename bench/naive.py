"""The naive peer (scenario 2): the home timeline page with no cache at all.

One SQL query per page (the session, the viewer, the newest 20 posts of the viewer and of the accounts they follow,
each with its author, wrapped key and whether the viewer liked it), then every user key unwrapped and every post
decrypted, rendered with the same Jinja2 templates as cipherfeed. Served by uvicorn with the same settings
(``bench.naive:asgi_factory --factory``) and the same ``CIPHERFEED_*`` environment.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from crypto import FieldContext, RootKeyRing, open_field
from feed import db
from feed.keyfile import derive
from feed.services.models import Content, PostView, TimelinePage, User
from feed.settings import load_settings
from feed.web.live import live_url
from feed.web.templating import make_environment, render

PAGE = 20
HOME = sa.text(
    """
    WITH me AS (
      SELECT u.id, u.username, u.display_name, u.bio, u.created_at, u.key_version
      FROM sessions s JOIN users u ON u.id = s.user_id
      WHERE s.id_hash = :id_hash AND s.expires_at > now()
    )
    SELECT me.id AS me_id, me.username AS me_username, me.display_name AS me_display_name, me.bio AS me_bio,
           me.created_at AS me_created_at, me.key_version AS me_key_version,
           p.id, p.author_id, p.visibility, p.in_reply_to_id, p.in_reply_to_author_id, p.revision, p.key_version,
           p.body, p.cw, p.likes_count, p.replies_count, p.created_at, p.edited_at,
           a.username, a.display_name, a.bio, a.created_at AS author_created_at, a.key_version AS author_key_version,
           k.wrapped, l.post_id IS NOT NULL AS liked
    FROM me
    LEFT JOIN LATERAL (
      SELECT * FROM posts p
      WHERE p.author_id = me.id
         OR (p.author_id IN (SELECT followee_id FROM follows WHERE follower_id = me.id) AND p.visibility <> 'direct')
      ORDER BY p.id DESC
      LIMIT :page
    ) p ON true
    LEFT JOIN users a ON a.id = p.author_id
    LEFT JOIN user_keys k ON k.user_id = p.author_id AND k.version = p.key_version
    LEFT JOIN likes l ON l.post_id = p.id AND l.user_id = me.id
    ORDER BY p.id DESC
    """
)


def _view(row: Any, ring: RootKeyRing) -> PostView:
    key = ring.unwrap_user_key(row.wrapped, user_id=row.author_id, version=row.key_version)
    text = open_field(key, row.body, FieldContext("body", row.id, row.author_id, row.revision))
    cw = open_field(key, row.cw, FieldContext("cw", row.id, row.author_id, row.revision)) if row.cw else None
    author = User(row.author_id, row.username, row.display_name, row.bio, row.author_created_at, row.author_key_version)
    return PostView(
        id=row.id,
        author=author,
        visibility=row.visibility,
        content=Content.plain(text, cw),
        in_reply_to_id=row.in_reply_to_id,
        in_reply_to_author_id=row.in_reply_to_author_id,
        revision=row.revision,
        likes_count=row.likes_count,
        replies_count=row.replies_count,
        created_at=row.created_at,
        edited_at=row.edited_at,
        liked=row.liked,
    )


def asgi_factory() -> Starlette:
    settings = load_settings()
    assert settings.root_key is not None and settings.secret_key is not None, "set the bench's CIPHERFEED_* keys"
    ring = RootKeyRing.from_json(settings.root_key.reveal())
    secret = settings.secret_key.reveal().encode()
    token_key = derive(secret, "token")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.engine = db.make_engine(settings.database_url)
        app.state.templates = make_environment()
        app.state.csrf_key = derive(secret, "csrf")
        try:
            yield
        finally:
            await app.state.engine.dispose()

    async def home(request: Request) -> Response:
        token = request.cookies.get("cf_session", "")
        id_hash = hmac.new(token_key, token.encode(), hashlib.sha256).digest()
        async with request.app.state.engine.connect() as conn:
            rows = (await conn.execute(HOME, {"id_hash": id_hash, "page": PAGE})).all()
        if not rows:
            return PlainTextResponse("log in first", status_code=401)
        me = rows[0]
        request.state.viewer = User(
            me.me_id, me.me_username, me.me_display_name, me.me_bio, me.me_created_at, me.me_key_version
        )
        posts = [_view(row, ring) for row in rows if row.id is not None]
        next_max_id = posts[-1].id if len(posts) >= PAGE else None
        page = TimelinePage(posts=posts, next_max_id=next_max_id, prev_min_id=posts[0].id if posts else None)
        more_url = f"/?max_id={next_max_id}" if next_max_id else None
        live = live_url("home", [p.id for p in posts], int(time.time() * 1000))
        context: dict[str, object] = {
            "page": page,
            "more_url": more_url,
            "composer": {},
            "live": live,
            "refresh": "/?fragment=timeline",
        }
        return render(request, "home.html", context)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", home), Route("/healthz", healthz)], lifespan=lifespan)
