"""Mastodon client API entities (https://docs.joinmastodon.org/entities/) built from our service values."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import HTTPConnection

from feed.services.follows import Relationship
from feed.services.models import PostView, Profile
from feed.services.oauth import Application
from feed.services.text import render_html
from feed.services.timelines import Revision

VISIBILITY_OUT = {"public": "public", "unlisted": "unlisted", "followers": "private", "direct": "direct"}


def _base(request: HTTPConnection) -> str:
    return str(request.base_url).rstrip("/")


def _absolute(base: str, html: str) -> str:
    """``render_html`` links mentions site-relative (``/@name``), which is right for our pages. API clients have no
    base to resolve that against, and open a mention in-app only when its ``href`` equals ``mentions[].url``.
    The rendered text is fully escaped, so every ``<a href="/`` in it is one of our own mention anchors.
    """
    return html.replace('<a href="/@', f'<a href="{base}/@')


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account(request: HTTPConnection, profile: Profile, *, with_source: bool = False) -> dict[str, Any]:
    user = profile.user
    base = _base(request)
    url = f"{base}/@{user.username}"
    avatar = f"{base}/static/avatar.svg"
    out: dict[str, Any] = {
        "id": str(user.id),
        "username": user.username,
        "acct": user.username,
        "display_name": user.display_name,
        "locked": False,
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
            "follow_requests_count": 0,
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
    base = _base(request)
    url = f"{base}/posts/{post.id}"
    out: dict[str, Any] = {
        "id": str(post.id),
        "uri": url,
        "url": url,
        "created_at": iso(post.created_at),
        "edited_at": iso(post.edited_at) if post.edited_at else None,
        "account": account(request, profiles[post.author.id]),
        "content": _absolute(base, str(post.html)),
        "visibility": VISIBILITY_OUT[post.visibility],
        "sensitive": post.sensitive or bool(post.cw),
        "spoiler_text": post.cw or "",
        "media_attachments": [],
        "application": _application(apps, post.app_id),
        "mentions": [
            {"id": str(m.id), "username": m.username, "acct": m.username, "url": f"{base}/@{m.username}"}
            for m in post.mentions
        ],
        "tags": [],
        "emojis": [],
        "reblogs_count": 0,
        "favourites_count": post.likes_count,
        "replies_count": post.replies_count,
        "in_reply_to_id": str(post.in_reply_to_id) if post.in_reply_to_id else None,
        "in_reply_to_account_id": str(post.in_reply_to_author_id) if post.in_reply_to_author_id else None,
        "reblog": None,
        "poll": None,
        "card": None,
        "language": post.language,
        "favourited": post.liked,
        "reblogged": False,
        "muted": False,
        "bookmarked": False,
        "pinned": False,
        "filtered": [],
    }
    if with_source:
        out["text"] = post.text
    return out


def status_edit(
    request: HTTPConnection, post: PostView, version: Revision, profiles: dict[int, Profile]
) -> dict[str, Any]:
    """Mastodon's StatusEdit entity: one version of a status."""
    return {
        "content": _absolute(_base(request), str(version.content.html)),
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
        "blocking": False,
        "blocked_by": False,
        "muting": False,
        "muting_notifications": False,
        "requested": False,
        "requested_by": False,
        "domain_blocking": False,
        "endorsed": False,
        "note": "",
    }
