"""Shared helpers for the Mastodon API tests: entity shape checks, posting, Link headers, stored-row counts.

The shapes follow https://docs.joinmastodon.org/entities/ (Status, Account, Relationship, Error): ids are strings,
datetimes are ISO 8601 in UTC with a ``Z``, counts are ints, ``content`` is HTML.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import sqlalchemy as sa

from feed.storage.tables import follows, likes, mentions, posts

ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
ID = re.compile(r"[1-9][0-9]{0,18}")
BASE = "http://testserver"
LINK_RE = re.compile(r'<([^>]+)>;\s*rel="([^"]+)"')


def check_account(account: dict[str, Any]) -> None:
    assert ID.fullmatch(account["id"]), account["id"]
    for name in ("username", "acct", "display_name", "note", "url", "uri", "avatar", "avatar_static"):
        assert isinstance(account[name], str), name
    for name in ("header", "header_static"):
        assert isinstance(account[name], str), name
    assert account["acct"] == account["username"]  # local accounts carry no domain
    assert account["url"] == f"{BASE}/@{account['username']}"
    assert account["avatar"].startswith(f"{BASE}/")
    for name in ("locked", "bot", "group", "discoverable", "indexable", "noindex", "memorial", "suspended", "limited",
                 "hide_collections"):  # fmt: skip
        assert isinstance(account[name], bool), name
    assert account["moved"] is None and account["roles"] == []
    for name in ("followers_count", "following_count", "statuses_count"):
        assert type(account[name]) is int and account[name] >= 0, name
    assert ISO_Z.fullmatch(account["created_at"]), account["created_at"]
    assert account["last_status_at"] is None or DATE.fullmatch(account["last_status_at"])
    assert account["emojis"] == [] and account["fields"] == []


def check_status(status: dict[str, Any]) -> None:
    if status["reblog"] is not None:  # a boost: the booster's status around the boosted one
        assert ID.fullmatch(status["id"]) and status["id"] != status["reblog"]["id"]
        assert status["uri"] == f"{BASE}/@{status['account']['username']}/boosts/{status['id']}"
        assert status["url"] is None and status["content"] == "" and status["mentions"] == []
        assert ISO_Z.fullmatch(status["created_at"]) and status["visibility"] == status["reblog"]["visibility"]
        for name in ("favourited", "reblogged", "bookmarked"):
            assert status[name] == status["reblog"][name], name
        check_account(status["account"])
        check_status(status["reblog"])
        return
    assert ID.fullmatch(status["id"]), status["id"]
    assert status["uri"] == status["url"] == f"{BASE}/posts/{status['id']}"
    assert ISO_Z.fullmatch(status["created_at"]), status["created_at"]
    assert status["edited_at"] is None or ISO_Z.fullmatch(status["edited_at"])
    assert isinstance(status["content"], str)
    if status["content"] or not status["media_attachments"]:  # images alone have no text
        assert status["content"].startswith("<p>") and status["content"].endswith("</p>")
    assert status["visibility"] in ("public", "unlisted", "private", "direct")
    assert isinstance(status["sensitive"], bool) and isinstance(status["spoiler_text"], str)
    assert status["sensitive"] or not status["spoiler_text"], "a content warning makes a status sensitive"
    assert status["language"] is None or re.fullmatch(r"[a-z]{2,3}", status["language"])
    application = status["application"]
    assert application is None or (
        isinstance(application["name"], str)
        and (application["website"] is None or isinstance(application["website"], str))
    )
    for name in ("reblogs_count", "favourites_count", "replies_count"):
        assert type(status[name]) is int and status[name] >= 0, name
    for name in ("favourited", "reblogged", "muted", "bookmarked", "pinned"):
        assert isinstance(status[name], bool), name
    for name in ("in_reply_to_id", "in_reply_to_account_id"):
        assert status[name] is None or ID.fullmatch(status[name]), name
    assert (status["in_reply_to_id"] is None) == (status["in_reply_to_account_id"] is None)
    for mention in status["mentions"]:
        assert set(mention) == {"id", "username", "acct", "url"}
        assert ID.fullmatch(mention["id"])
        assert mention["acct"] == mention["username"]
        assert mention["url"] == f"{BASE}/@{mention['username']}"
    for item in status["media_attachments"]:
        check_media(item)
    assert status["tags"] == [] and status["emojis"] == []
    assert status["reblog"] is None and status["poll"] is None and status["card"] is None
    check_account(status["account"])


def check_media(item: dict[str, Any]) -> None:
    """Mastodon's MediaAttachment of a processed image: ours, served from this server, sized."""
    assert ID.fullmatch(item["id"]) and item["type"] == "image"
    assert item["url"] == f"{BASE}/media/{item['id']}/large"
    assert item["preview_url"] == f"{BASE}/media/{item['id']}/small"
    assert (item["remote_url"], item["preview_remote_url"], item["text_url"]) == (None, None, None)
    for size in ("original", "small"):
        meta = item["meta"][size]
        assert meta["size"] == f"{meta['width']}x{meta['height']}" and meta["aspect"] == meta["width"] / meta["height"]
    assert set(item["meta"]["focus"]) == {"x", "y"}
    assert item["description"] is None or isinstance(item["description"], str)
    assert isinstance(item["blurhash"], str) and len(item["blurhash"]) >= 6


RELATIONSHIP_FLAGS = (
    "following",
    "showing_reblogs",
    "notifying",
    "followed_by",
    "blocking",
    "blocked_by",
    "muting",
    "muting_notifications",
    "requested",
    "domain_blocking",
    "endorsed",
)


def check_relationship(rel: dict[str, Any]) -> None:
    assert ID.fullmatch(rel["id"])
    for name in RELATIONSHIP_FLAGS:
        assert isinstance(rel[name], bool), name
    assert isinstance(rel["note"], str)


def check_error(response: httpx.Response, status: int) -> str:
    """The response is a Mastodon Error entity with ``status``; returns its message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


async def post_status(client: httpx.AsyncClient, text: str, **fields: Any) -> dict[str, Any]:
    """Create a status through the API (JSON body); returns the Status entity."""
    response = await client.post("/api/v1/statuses", json={"status": text, **fields})
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


async def get_json(client: httpx.AsyncClient, url: str, **params: Any) -> Any:
    response = await client.get(url, params=params)
    assert response.status_code == 200, (url, response.status_code, response.text)
    return response.json()


async def me(client: httpx.AsyncClient) -> dict[str, Any]:
    account: dict[str, Any] = await get_json(client, "/api/v1/accounts/verify_credentials")
    return account


async def follow(client: httpx.AsyncClient, account_id: str) -> None:
    response = await client.post(f"/api/v1/accounts/{account_id}/follow")
    assert response.status_code == 200 and response.json()["following"] is True, response.text


def links(response: httpx.Response) -> dict[str, str]:
    """The ``Link`` header as {rel: url}."""
    return {rel: url for url, rel in LINK_RE.findall(response.headers.get("link", ""))}


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


async def row_counts(app: Any) -> dict[str, int]:
    """How many posts, mentions, likes and follows are stored, read straight from the database."""
    async with app.state.engine.connect() as conn:
        return {
            table.name: int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())
            for table in (posts, mentions, likes, follows)
        }


async def stored_revisions(app: Any) -> dict[int, int]:
    """{post id: revision} of every stored post, to prove an edit did or did not happen."""
    async with app.state.engine.connect() as conn:
        rows = await conn.execute(sa.select(posts.c.id, posts.c.revision))
        return {row.id: row.revision for row in rows}
