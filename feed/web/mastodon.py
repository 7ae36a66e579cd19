"""Mastodon client API entities (https://docs.joinmastodon.org/entities/) built from our service values."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from cachetools import LRUCache
from starlette.requests import HTTPConnection
from starlette.types import Scope

from feed.cache import STATUS_FRAMES
from feed.services.follows import Relationship
from feed.services.models import FrameStyle, Media, PostView, Profile
from feed.services.notifications import Group, Notification
from feed.services.oauth import Application
from feed.services.text import render_html
from feed.services.timelines import Revision

VISIBILITY_OUT = {"public": "public", "unlisted": "unlisted", "followers": "private", "direct": "direct"}


def base_url(request: HTTPConnection) -> str:
    """The server's address as the client asked for it (made once per address: ``request.base_url`` builds a URL)."""
    key = _base_key(request.scope)
    found = _bases.get(key)
    if found is None:
        if len(_bases) >= 64:
            _bases.clear()
        found = _bases[key] = str(request.base_url).rstrip("/")
    return found


def known_base(scope: Scope) -> str | None:
    """:func:`base_url` of a request to an address asked for before (None: not yet)."""
    return _bases.get(_base_key(scope))


def _base_key(scope: Scope) -> tuple[Any, ...]:
    host = next((value for name, value in scope["headers"] if name == b"host"), b"")
    return scope.get("scheme"), host, scope.get("server"), scope.get("root_path"), scope.get("app_root_path")


_bases: dict[tuple[Any, ...], str] = {}


def _absolute(base: str, html: str) -> str:
    """``render_html`` links mentions site-relative (``/@name``), which is right for our pages. API clients have no
    base to resolve that against, and open a mention in-app only when its ``href`` equals ``mentions[].url``.
    The rendered text is fully escaped, so every ``<a href="/`` in it is one of our own mention anchors.
    """
    return html.replace('<a href="/@', f'<a href="{base}/@')


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account(
    request: HTTPConnection, profile: Profile, *, with_source: bool = False, follow_requests: int = 0
) -> dict[str, Any]:
    user = profile.user
    base = base_url(request)
    url = f"{base}/@{user.username}"
    avatar = f"{base}/static/avatar.svg"
    out: dict[str, Any] = {
        "id": str(user.id),
        "username": user.username,
        "acct": user.username,
        "display_name": user.name,  # the username until one is set, as Mastodon does
        "locked": user.locked,
        "bot": False,
        "discoverable": True,
        "indexable": False,  # post text cannot be searched (it is sealed)
        "noindex": False,
        "memorial": False,
        "suspended": False,
        "limited": False,
        "moved": None,
        "group": False,
        "hide_collections": False,
        # Mastodon reports account creation to the day.
        "created_at": iso(user.created_at.replace(hour=0, minute=0, second=0, microsecond=0)),
        "note": _absolute(base, str(render_html(user.bio))) if user.bio else "",
        "url": url,
        "uri": url,
        "avatar": avatar,
        "avatar_static": avatar,
        "header": "",
        "header_static": "",
        "followers_count": profile.followers,
        "following_count": profile.following,
        "statuses_count": profile.posts,
        "last_status_at": profile.last_post_at.date().isoformat() if profile.last_post_at else None,
        "emojis": [],
        "fields": [],
        "roles": [],
    }
    if with_source:
        out["source"] = {
            "privacy": "public",
            "sensitive": False,
            "language": None,
            "note": user.bio,
            "fields": [],
            "follow_requests_count": follow_requests,
        }
    return out


def status(
    request: HTTPConnection,
    post: PostView,
    profiles: dict[int, Profile],
    apps: Mapping[int, Application] | None = None,
    *,
    with_source: bool = False,
) -> dict[str, Any]:
    """Mastodon's Status entity; ``apps``: the apps of the statuses (``oauth.applications``)."""
    out = _static(base_url(request), post)
    out |= {
        "account": account(request, profiles[post.author.id]),
        "application": _application(apps, post.app_id),
        "favourites_count": post.likes_count,
        "replies_count": post.replies_count,
        "favourited": post.liked,
        "bookmarked": post.bookmarked,
        "reblogs_count": post.reblogs_count,
        "reblogged": post.reblogged,
    }
    if with_source:
        out["text"] = post.text
    if post.booster is not None and post.booster.id in profiles:
        booster = dumps(account(request, profiles[post.booster.id]))
        wrapped: dict[str, Any] = json.loads(_reblog_text(request, post, dumps(out), booster))
        return wrapped
    return out


def _static(base: str, post: PostView) -> dict[str, Any]:
    """The fields of a status that are the same for every reader of one revision (its frame, see below)."""
    url = f"{base}/posts/{post.id}"
    return {
        "id": str(post.id),
        "uri": url,
        "url": url,
        "created_at": iso(post.created_at),
        "edited_at": iso(post.edited_at) if post.edited_at else None,
        "content": _absolute(base, str(post.html)),
        "visibility": VISIBILITY_OUT[post.visibility],
        "sensitive": post.sensitive or bool(post.cw),
        "spoiler_text": post.cw or "",
        "media_attachments": [media_attachment(base, m) for m in post.media],
        "mentions": [
            {"id": str(m.id), "username": m.username, "acct": m.username, "url": f"{base}/@{m.username}"}
            for m in post.mentions
        ],
        "tags": [],
        "emojis": [],
        "in_reply_to_id": str(post.in_reply_to_id) if post.in_reply_to_id else None,
        "in_reply_to_account_id": str(post.in_reply_to_author_id) if post.in_reply_to_author_id else None,
        "reblog": None,
        "poll": None,
        "card": None,
        "language": post.language,
        "muted": False,
        "pinned": False,
        "filtered": [],
    }


def _size(width: int, height: int) -> dict[str, Any]:
    return {"width": width, "height": height, "size": f"{width}x{height}", "aspect": width / height if height else 0}


def media_attachment(base: str, media: Media) -> dict[str, Any]:
    """Mastodon's MediaAttachment. ``url`` is the largest variant (the "original" clients open; the upload itself is
    not kept), ``preview_url`` the small one; both null until the variants exist. An animated image is an animated
    WebP, so it is an ``image`` here (Mastodon's ``gifv`` is a video, which clients would try to play as one)."""
    ready = media.state == "ready"
    meta: dict[str, Any] = {"focus": {"x": media.focus[0], "y": media.focus[1]}}
    if ready and "large" in media.variants and "small" in media.variants:
        meta |= {"original": _size(*media.variants["large"]), "small": _size(*media.variants["small"])}
    return {
        "id": str(media.id),
        "type": "image",
        "url": f"{base}/media/{media.id}/large" if ready else None,
        "preview_url": f"{base}/media/{media.id}/small" if ready else None,
        "remote_url": None,
        "preview_remote_url": None,
        "text_url": None,
        "meta": meta,
        "description": media.description,
        "blurhash": media.blurhash,
    }


# -- statuses as cached frames: the JSON of :func:`_static`, sealed in the cache like a page's post frames, with the
# account, the app, the counts, ``favourited`` and ``bookmarked`` put in for each reader.

FRAME_VERSION = b"status-json-4"
_styles: dict[str, FrameStyle] = {}
# Accounts as JSON, by server address and profile (public profile data and counts: nothing sealed is in them).
_accounts: LRUCache[tuple[str, Profile], str] = LRUCache(maxsize=4096)


def dumps(value: Any) -> str:
    """JSON as Starlette's JSONResponse writes it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def status_style(request: HTTPConnection) -> FrameStyle:
    """How statuses are framed for this server address (their links carry it, so each address has its own)."""
    base = base_url(request)
    style = _styles.get(base)
    if style is None:
        if len(_styles) >= 16:
            _styles.clear()
        version = hashlib.blake2b(FRAME_VERSION + base.encode(), digest_size=8).digest()
        style = _styles[base] = FrameStyle(version, partial(_frame, base), _whole, STATUS_FRAMES)
    return style


def account_text(request: HTTPConnection, base: str, profile: Profile) -> str:
    key = (base, profile)
    text = _accounts.get(key)
    if text is None:
        text = _accounts[key] = dumps(account(request, profile))
    return text


def _frame(base: str, post: PostView) -> str:
    return dumps(_static(base, post))[:-1]  # without its closing brace: the reader's fields follow


def _whole(frame: str) -> tuple[str, ...] | None:
    return (frame,) if frame.startswith("{") and not frame.endswith("}") else None


def statuses_text(
    request: HTTPConnection,
    posts: Sequence[PostView],
    profiles: dict[int, Profile],
    apps: Mapping[int, Application],
    *,
    holes: Mapping[str, str] | None = None,
) -> str:
    """A JSON array of statuses, from their frames where they have one (the same JSON as :func:`status` gives).
    ``holes``: marks to write in place of the accounts and the counts, for a page blob (``feed.web.page_blobs``),
    which fills them when read; ``profiles`` is not read then."""
    base = base_url(request)
    if holes is None:
        accounts = {uid: account_text(request, base, profile) for uid, profile in profiles.items()}
    items = []
    for post in posts:
        frame = post.frame[0] if post.frame else _frame(base, post)
        application = dumps(_application(apps, post.app_id))
        if holes is None:
            account = accounts[post.author.id]
            likes, replies, boosts = str(post.likes_count), str(post.replies_count), str(post.reblogs_count)
            booster = accounts.get(post.booster.id) if post.booster is not None else None
        else:
            account, likes, replies, boosts = holes["account"], holes["likes"], holes["replies"], holes["boosts"]
            booster = holes["booster"] if post.booster is not None else None
        item = (
            f'{frame},"account":{account},"application":{application},'
            f'"favourites_count":{likes},"replies_count":{replies},'
            f'"favourited":{_bool(post.liked)},"bookmarked":{_bool(post.bookmarked)},'
            f'"reblogs_count":{boosts},"reblogged":{_bool(post.reblogged)}}}'
        )
        if booster is not None:
            item = _reblog_text(request, post, item, booster)
        items.append(item if holes is None else holes["start"] + item)
    return "[" + ",".join(items) + "]"


def _reblog_text(request: HTTPConnection, post: PostView, original: str, booster_account: str) -> str:
    """The reblog status of a boost (Mastodon's shape: a status of the booster's whose ``reblog`` is the post), as
    JSON text around the post's own."""
    assert post.booster is not None
    base = base_url(request)
    when = iso(datetime.fromtimestamp((post.boost_id >> 16) / 1000, UTC))
    head: dict[str, Any] = {
        "id": str(post.boost_id),
        "uri": f"{base}/@{post.booster.username}/boosts/{post.boost_id}",
        "url": None,
        "created_at": when,
        "edited_at": None,
        "content": "",
        "visibility": VISIBILITY_OUT[post.visibility],
        "sensitive": False,
        "spoiler_text": "",
        "media_attachments": [],
        "application": None,
        "mentions": [],
        "tags": [],
        "emojis": [],
        "reblogs_count": 0,
        "favourites_count": 0,
        "replies_count": 0,
        "in_reply_to_id": None,
        "in_reply_to_account_id": None,
        "poll": None,
        "card": None,
        "language": None,
        "favourited": post.liked,
        "reblogged": post.reblogged,
        "muted": False,
        "bookmarked": post.bookmarked,
        "pinned": False,
        "filtered": [],
    }
    return f'{dumps(head)[:-1]},"account":{booster_account},"reblog":{original}}}'


def _bool(value: bool) -> str:
    return "true" if value else "false"


def status_edit(
    request: HTTPConnection, post: PostView, version: Revision, profiles: dict[int, Profile]
) -> dict[str, Any]:
    """Mastodon's StatusEdit entity: one version of a status."""
    return {
        "content": _absolute(base_url(request), str(version.content.html)),
        "spoiler_text": version.content.cw or "",
        "sensitive": version.sensitive or bool(version.content.cw),
        "created_at": iso(version.created_at),
        "account": account(request, profiles[post.author.id]),
        "poll": None,
        "media_attachments": [],
        "emojis": [],
    }


def _application(apps: Mapping[int, Application] | None, app_id: int) -> dict[str, Any] | None:
    found = apps.get(app_id) if apps and app_id else None
    return {"name": found.name, "website": found.website} if found else None


def relationship(rel: Relationship) -> dict[str, Any]:
    return {
        "id": str(rel.id),
        "following": rel.following,
        "showing_reblogs": rel.following,
        "notifying": False,
        "languages": None,
        "followed_by": rel.followed_by,
        "blocking": rel.blocking,
        "blocked_by": rel.blocked_by,
        "muting": rel.muting,
        "muting_notifications": rel.muting_notifications,
        "muting_expires_at": iso(rel.mute_expires_at) if rel.mute_expires_at else None,
        "requested": rel.requested,
        "requested_by": rel.requested_by,
        "domain_blocking": False,
        "endorsed": False,
        "note": "",
    }


def notification(
    request: HTTPConnection,
    note: Notification,
    profiles: dict[int, Profile],
    statuses: Mapping[int, dict[str, Any]],
) -> dict[str, Any]:
    """Mastodon's Notification entity; ``statuses``: the Status entities of the posts, by id."""
    out: dict[str, Any] = {
        "id": str(note.id),
        "type": note.type,
        "group_key": note.group_key,
        "created_at": iso(note.created_at),
        "account": account(request, profiles[note.account.id]),
    }
    if note.post is not None:
        out["status"] = statuses[note.post.id]
    return out


def notification_group(group: Group) -> dict[str, Any]:
    """Mastodon's NotificationGroup (its accounts and status are beside it in the results)."""
    out: dict[str, Any] = {
        "group_key": group.key,
        "notifications_count": group.count,
        "type": group.type,
        "most_recent_notification_id": str(group.newest.id),
        "page_min_id": str(group.page_min_id),
        "page_max_id": str(group.page_max_id),
        "latest_page_notification_at": iso(group.newest.created_at),
        "sample_account_ids": [str(uid) for uid in group.sample_account_ids],
    }
    if group.newest.post is not None:
        out["status_id"] = str(group.newest.post.id)
    return out
