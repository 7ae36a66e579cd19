"""Notifications in the Mastodon API: ``/api/v1/notifications`` (one by one) and ``/api/v2/notifications`` (grouped).

Shapes from https://docs.joinmastodon.org/methods/notifications/ and .../methods/grouped_notifications/.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from feed.errors import Invalid
from feed.services import accounts, notifications, oauth
from feed.services.models import Page, PostView, User
from feed.services.notifications import Group, Notification
from feed.web import mastodon
from feed.web.api import page_of, query_id
from feed.web.auth import api_user, services
from feed.web.forms import BadRequest, parse_count, path_id
from feed.web.openapi import ID, INTEGER, STRING, array, operation, ref

DEFAULT_LIMIT = 40
MAX_LIMIT = 80
TYPES: dict[str, Any] = {"types[]": array(STRING), "exclude_types[]": array(STRING)}
PAGING: dict[str, Any] = {
    "max_id": ID,
    "since_id": ID,
    "min_id": ID,
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
}


def _page(request: Request) -> Page:
    return page_of(request, DEFAULT_LIMIT, MAX_LIMIT)


def _kinds(request: Request, name: str) -> list[str]:
    raw = request.query_params.getlist(f"{name}[]") or request.query_params.getlist(name)
    try:
        return notifications.parse_kinds(raw, name)
    except Invalid as exc:
        raise BadRequest(exc.message) from None


def _asked_types(request: Request) -> bool:
    return bool(request.query_params.getlist("types[]") or request.query_params.getlist("types"))


def _links(request: Request, page: Page, next_max: int | None, prev_min: int | None, shown: bool) -> dict[str, str]:
    base = str(request.url.replace(query=""))
    keep = [(k, v) for k, v in request.query_params.multi_items() if k not in ("max_id", "since_id", "min_id", "limit")]
    links = []
    if next_max:
        links.append(f'<{base}?{urlencode([*keep, ("limit", page.limit), ("max_id", next_max)])}>; rel="next"')
    if shown and prev_min:
        links.append(f'<{base}?{urlencode([*keep, ("limit", page.limit), ("min_id", prev_min)])}>; rel="prev"')
    return {"Link": ", ".join(links)} if links else {}


async def _statuses(request: Request, posts: list[PostView]) -> dict[int, dict[str, Any]]:
    svc = services(request)
    profiles = await accounts.profiles(svc, list({p.author.id: p.author for p in posts}.values()))
    apps = await oauth.applications(svc, {p.app_id for p in posts})
    return {p.id: mastodon.status(request, p, profiles, apps) for p in posts}


async def _entities(request: Request, found: list[Notification]) -> list[dict[str, Any]]:
    svc = services(request)
    profiles = await accounts.profiles(svc, list({n.account.id: n.account for n in found}.values()))
    statuses = await _statuses(request, list({n.post.id: n.post for n in found if n.post}.values()))
    return [mastodon.notification(request, n, profiles, statuses) for n in found]


async def _user(request: Request, scope: str) -> User:
    user = await api_user(request, scope)
    assert user is not None
    return user


@operation(
    "All notifications", array(ref("Notification")), scope="read:notifications",
    query=PAGING | TYPES | {"account_id": ID},
)  # fmt: skip
async def listing(request: Request) -> Response:
    """Newest first, one by one; a notification whose status the caller can no longer see is left out."""
    user = await _user(request, "read:notifications")
    page = _page(request)
    found, next_max, prev_min = await notifications.listing(
        services(request),
        user,
        page,
        types=_kinds(request, "types"),
        exclude=_kinds(request, "exclude_types"),
        account_id=query_id(request, "account_id"),
        asked_types=_asked_types(request),
    )
    headers = _links(request, page, next_max, prev_min, bool(found))
    return JSONResponse(await _entities(request, found), headers=headers)


@operation("A single notification", ref("Notification"), scope="read:notifications")
async def one(request: Request) -> Response:
    user = await _user(request, "read:notifications")
    found = await notifications.one(services(request), user, path_id(request, "notification_id"))
    return JSONResponse((await _entities(request, [found]))[0])


@operation("Dismiss a single notification", ref("Empty"), scope="write:notifications")
async def dismiss(request: Request) -> Response:
    user = await _user(request, "write:notifications")
    await notifications.dismiss(services(request), user, path_id(request, "notification_id"))
    return JSONResponse({})


@operation("Dismiss all notifications", ref("Empty"), scope="write:notifications")
async def clear(request: Request) -> Response:
    await notifications.clear(services(request), await _user(request, "write:notifications"))
    return JSONResponse({})


@operation(
    "The number of unread notifications", ref("UnreadCount"), scope="read:notifications",
    query=TYPES | {"limit": INTEGER},
)  # fmt: skip
async def unread_count(request: Request) -> Response:
    """Newer than the ``notifications`` marker; capped at ``limit`` (100 unless asked, 1000 at most)."""
    user = await _user(request, "read:notifications")
    raw = request.query_params.get("limit")
    cap = parse_count(raw, "limit", 1000) if raw else notifications.UNREAD_CAP
    types, exclude = _kinds(request, "types"), _kinds(request, "exclude_types")
    if _asked_types(request) and not types:
        return JSONResponse({"count": 0})  # only kinds this server never makes
    count = await notifications.unread_count(services(request), user, cap=cap, types=types, exclude=exclude)
    return JSONResponse({"count": count})


@operation(
    "Grouped notifications", ref("GroupedNotificationsResults"), scope="read:notifications",
    query=PAGING | TYPES | {"grouped_types[]": array(STRING), "expand_accounts": STRING},
)  # fmt: skip
async def grouped(request: Request) -> Response:
    user = await _user(request, "read:notifications")
    page = _page(request)
    grouped_raw = request.query_params.getlist("grouped_types[]") or request.query_params.getlist("grouped_types")
    grouped_types = _kinds(request, "grouped_types") if grouped_raw else None
    groups, people, next_max, prev_min = await notifications.grouped(
        services(request),
        user,
        page,
        types=_kinds(request, "types"),
        exclude=_kinds(request, "exclude_types"),
        asked_types=_asked_types(request),
        **({"grouped_types": grouped_types} if grouped_types is not None else {}),
    )
    headers = _links(request, page, next_max, prev_min, bool(groups))
    return JSONResponse(await _grouped_body(request, groups, people), headers=headers)


async def _grouped_body(request: Request, groups: list[Group], people: dict[int, User]) -> dict[str, Any]:
    svc = services(request)
    named = {uid for group in groups for uid in group.sample_account_ids} | {g.newest.account.id for g in groups}
    profiles = await accounts.profiles(svc, [people[uid] for uid in named if uid in people])
    posts = list({g.newest.post.id: g.newest.post for g in groups if g.newest.post}.values())
    statuses = await _statuses(request, posts)
    return {
        "accounts": [mastodon.account(request, profiles[uid]) for uid in named if uid in profiles],
        "statuses": list(statuses.values()),
        "notification_groups": [mastodon.notification_group(g) for g in groups],
    }


@operation("Dismiss a group of notifications", ref("Empty"), scope="write:notifications")
async def dismiss_group(request: Request) -> Response:
    user = await _user(request, "write:notifications")
    await notifications.dismiss_group(services(request), user, request.path_params["group_key"])
    return JSONResponse({})
