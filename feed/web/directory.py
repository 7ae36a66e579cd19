"""Finding people through the API: search (``/api/v2/search``, ``/api/v1/accounts/search``) and follow lists
(``/api/v1/accounts/:id/followers`` and ``/following``), in Mastodon's shapes.

Search finds local accounts by the start of their username or display name, and statuses by their address or id
when the viewer may see them. It never finds statuses by their words: post text is sealed, and an index of its words
(plain or blind) would give the text away, so a search for words has an empty ``statuses`` list.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from feed.errors import Invalid, NotFound, Unauthorized
from feed.services import accounts, timelines
from feed.services.models import PostView, User
from feed.web import mastodon
from feed.web.api import statuses_json, truthy
from feed.web.auth import api_user, services
from feed.web.forms import BadRequest, parse_count, parse_id, path_id
from feed.web.openapi import PAGING, SEARCH_QUERY, array, operation, ref

FOLLOW_LIMIT, FOLLOW_MAX = 40, 80
SEARCH_LIMIT, SEARCH_MAX = 20, 40
_STATUS_PATH = re.compile(r"/(?:posts|@[A-Za-z0-9_]+|api/v1/statuses)/([0-9]{1,19})/?")
TYPES = ("accounts", "statuses", "hashtags")


def _cursor(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return parse_id(raw, name)
    except Invalid as exc:
        raise BadRequest(exc.message) from None


async def _accounts_json(request: Request, users: list[User]) -> list[dict[str, Any]]:
    profiles = await accounts.profiles(services(request), users)
    return [mastodon.account(request, profiles[u.id]) for u in users]


async def _follow_list(request: Request, *, followers: bool) -> Response:
    await api_user(request, "read:accounts", required=False)
    svc = services(request)
    user = await accounts.get_user(svc, path_id(request, "account_id"))
    raw = request.query_params.get("limit")
    limit = parse_count(raw, "limit", FOLLOW_MAX) if raw else FOLLOW_LIMIT
    max_id, since_id = _cursor(request, "max_id"), _cursor(request, "since_id")
    found = await accounts.follow_list(svc, user, followers=followers, limit=limit, max_id=max_id, since_id=since_id)
    headers = {}
    if found:
        base = str(request.url.replace(query=""))
        links = [f'<{base}?{urlencode({"limit": limit, "since_id": found[0].id})}>; rel="prev"']
        if len(found) == limit:
            links.insert(0, f'<{base}?{urlencode({"limit": limit, "max_id": found[-1].id})}>; rel="next"')
        headers["Link"] = ", ".join(links)
    return JSONResponse(await _accounts_json(request, found), headers=headers)


@operation(
    "The accounts that follow an account", array(ref("Account")), scope="read:accounts", public=True, query=PAGING
)
async def followers(request: Request) -> Response:
    return await _follow_list(request, followers=True)


@operation("The accounts an account follows", array(ref("Account")), scope="read:accounts", public=True, query=PAGING)
async def following(request: Request) -> Response:
    return await _follow_list(request, followers=False)


def _account_query(request: Request, q: str) -> str | None:
    """The name to look for: ``q`` without a leading ``@`` and without this server's ``@domain``; None when it names
    another server (cipherfeed does not federate: nothing to find there)."""
    name, _, domain = q.strip().lstrip("@").partition("@")
    if domain and domain.lower() not in ((request.url.hostname or "").lower(), request.url.netloc.lower()):
        return None
    return name


async def _search_accounts(request: Request, q: str, viewer: User | None, limit: int, offset: int) -> list[User]:
    name = _account_query(request, q)
    if not name:
        return []
    following_only = truthy(request.query_params.get("following"))
    if following_only and viewer is None:
        raise Unauthorized("The access token is invalid")
    return await accounts.search(services(request), name, limit=limit, offset=offset,
                                 followed_by=viewer if following_only else None, viewer=viewer)  # fmt: skip


async def _search_statuses(request: Request, q: str, viewer: User | None) -> list[PostView]:
    """The status ``q`` names, by this server's address of it or by its id, if the viewer may see it."""
    text = q.strip()
    post_id: int | None = None
    if text.isascii() and text.isdigit() and len(text) <= 19:
        post_id = int(text)
    elif text.startswith(("http://", "https://")):
        parts = urlsplit(text)
        found = _STATUS_PATH.fullmatch(parts.path)
        if found and parts.netloc.lower() == request.url.netloc.lower():
            post_id = int(found.group(1))
    if not post_id or post_id >= 2**63:
        return []
    try:
        return [await timelines.get(services(request), post_id, viewer)]
    except NotFound:
        return []


def _paging(request: Request) -> tuple[int, int]:
    raw_limit, raw_offset = request.query_params.get("limit"), request.query_params.get("offset")
    limit = parse_count(raw_limit, "limit", SEARCH_MAX) if raw_limit else SEARCH_LIMIT
    offset = 0
    if raw_offset:
        if not (raw_offset.isascii() and raw_offset.isdigit()) or len(raw_offset) > 6:
            raise BadRequest("offset must be a number below a million")
        offset = int(raw_offset)
    return limit, offset


@operation(
    "Search",
    ref("Search"),
    scope="read:search",
    public=True,
    query=SEARCH_QUERY | {"type": {"enum": ["accounts", "statuses", "hashtags"]}},
)
async def search_v2(request: Request) -> Response:
    viewer = await api_user(request, "read:search", required=False)
    q = request.query_params.get("q", "")
    kind = request.query_params.get("type") or None
    if kind is not None and kind not in TYPES:
        raise BadRequest("type must be accounts, statuses or hashtags")
    limit, offset = _paging(request)
    found_accounts: list[User] = []
    found_statuses: list[PostView] = []
    if q.strip() and kind in (None, "accounts"):
        found_accounts = await _search_accounts(request, q, viewer, limit, offset)
    if q.strip() and kind in (None, "statuses") and offset == 0:
        found_statuses = await _search_statuses(request, q, viewer)
    return JSONResponse(
        {
            "accounts": await _accounts_json(request, found_accounts),
            "statuses": await statuses_json(request, found_statuses),
            "hashtags": [],
        }
    )


@operation("Search for matching accounts", array(ref("Account")), scope="read:accounts", query=SEARCH_QUERY)
async def search_accounts(request: Request) -> Response:
    viewer = await api_user(request, "read:accounts")
    q = request.query_params.get("q", "")
    limit, offset = _paging(request)
    found = await _search_accounts(request, q, viewer, limit, offset) if q.strip() else []
    return JSONResponse(await _accounts_json(request, found))
