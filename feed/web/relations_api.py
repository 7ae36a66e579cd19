"""Blocks, mutes and follow requests in the Mastodon API.

Shapes from https://docs.joinmastodon.org/methods/accounts/ (block, unblock, mute, unmute), .../methods/blocks/,
.../methods/mutes/ and .../methods/follow_requests/: each action answers with the Relationship; each list is of
Accounts, newest first, paged by the block's, mute's or request's own id in the Link header.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from feed.errors import Invalid
from feed.services import accounts, follows, relations
from feed.services.models import Page, User
from feed.web import mastodon
from feed.web.api import page_of, truthy
from feed.web.auth import api_user, services
from feed.web.forms import path_id, read_body
from feed.web.openapi import BOOLEAN, ID, INTEGER, array, operation, ref

DEFAULT_LIMIT = 40
MAX_LIMIT = 80
PAGING: dict[str, Any] = {"max_id": ID, "since_id": ID, "limit": {"type": "integer", "minimum": 1, "maximum": 80}}


async def _user(request: Request, scope: str | tuple[str, ...]) -> User:
    user = await api_user(request, scope)
    assert user is not None
    return user


async def _relationship(request: Request, user: User, target_id: int) -> Response:
    return JSONResponse(mastodon.relationship(await follows.relationship(services(request), user, target_id)))


@operation("Block an account", ref("Relationship"), scope="write:blocks")
async def block(request: Request) -> Response:
    user = await _user(request, "write:blocks")
    target = path_id(request, "account_id")
    await relations.block(services(request), user, target)
    return await _relationship(request, user, target)


@operation("Unblock an account", ref("Relationship"), scope="write:blocks")
async def unblock(request: Request) -> Response:
    user = await _user(request, "write:blocks")
    target = path_id(request, "account_id")
    await relations.unblock(services(request), user, target)
    return await _relationship(request, user, target)


@operation(
    "Mute an account", ref("Relationship"), scope="write:mutes", form={"notifications": BOOLEAN, "duration": INTEGER}
)
async def mute(request: Request) -> Response:
    """``notifications`` (default true): their notifications too; ``duration``: seconds, 0 for until undone."""
    user = await _user(request, "write:mutes")
    target = path_id(request, "account_id")
    data = await read_body(request)
    raw = data.get("duration", 0)
    try:
        duration = int(raw) if raw not in (None, "") else 0
    except (TypeError, ValueError):
        raise Invalid("duration must be a number of seconds", "duration") from None
    notifications = truthy(data["notifications"]) if "notifications" in data else True
    await relations.mute(services(request), user, target, notifications=notifications, duration=duration)
    return await _relationship(request, user, target)


@operation("Unmute an account", ref("Relationship"), scope="write:mutes")
async def unmute(request: Request) -> Response:
    user = await _user(request, "write:mutes")
    target = path_id(request, "account_id")
    await relations.unmute(services(request), user, target)
    return await _relationship(request, user, target)


def _page(request: Request) -> Page:
    return page_of(request, DEFAULT_LIMIT, MAX_LIMIT)


async def _accounts(
    request: Request,
    people: list[User],
    page: Page,
    next_max: int | None,
    prev_min: int | None,
    extra: list[dict[str, Any]] | None = None,
) -> Response:
    """Accounts, with the Link header of their list; ``extra``: fields to add to each (in the same order)."""
    profiles = await accounts.profiles(services(request), people)
    base = str(request.url.replace(query=""))
    links = []
    if next_max:
        links.append(f'<{base}?{urlencode({"limit": page.limit, "max_id": next_max})}>; rel="next"')
    if people and prev_min:
        links.append(f'<{base}?{urlencode({"limit": page.limit, "min_id": prev_min})}>; rel="prev"')
    headers = {"Link": ", ".join(links)} if links else {}
    found = [mastodon.account(request, profiles[p.id]) for p in people]
    for entity, more in zip(found, extra or [], strict=False):
        entity.update(more)
    return JSONResponse(found, headers=headers)


@operation("Blocked accounts", array(ref("Account")), scope="read:blocks", query=PAGING)
async def blocked(request: Request) -> Response:
    user = await _user(request, "read:blocks")
    page = _page(request)
    found, next_max, prev_min = await relations.blocked_list(services(request), user, page)
    return await _accounts(request, [h.user for h in found], page, next_max, prev_min)


@operation("Muted accounts", array(ref("Account")), scope="read:mutes", query=PAGING)
async def muted(request: Request) -> Response:
    user = await _user(request, "read:mutes")
    page = _page(request)
    found, next_max, prev_min = await relations.muted_list(services(request), user, page)
    until = [{"mute_expires_at": mastodon.iso(h.expires_at) if h.expires_at else None} for h in found]
    return await _accounts(request, [h.user for h in found], page, next_max, prev_min, until)


@operation("Pending follow requests", array(ref("Account")), scope="read:follows", query=PAGING)
async def follow_requests(request: Request) -> Response:
    user = await _user(request, "read:follows")
    page = _page(request)
    found, next_max, prev_min = await follows.requests(services(request), user, page)
    return await _accounts(request, found, page, next_max, prev_min)


@operation("Accept a follow request", ref("Relationship"), scope="write:follows")
async def authorize(request: Request) -> Response:
    user = await _user(request, "write:follows")
    rel = await follows.authorize(services(request), user, path_id(request, "account_id"))
    return JSONResponse(mastodon.relationship(rel))


@operation("Reject a follow request", ref("Relationship"), scope="write:follows")
async def reject(request: Request) -> Response:
    user = await _user(request, "write:follows")
    rel = await follows.reject(services(request), user, path_id(request, "account_id"))
    return JSONResponse(mastodon.relationship(rel))
