"""The JSON API under ``/api/v1`` and ``/api/v2``, in the shapes of the Mastodon client API.

Authentication is by bearer token only (never cookies), so these endpoints need no CSRF token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from feed.errors import Forbidden, Invalid, NotFound
from feed.media import images
from feed.services import accounts, bookmarks, boosts, follows, media, oauth, posts, relations, site, timelines
from feed.services.models import Page, PostView, TimelinePage, User
from feed.services.text import MAX_POST_CHARS
from feed.web import mastodon, page_blobs
from feed.web.auth import api_user, services
from feed.web.forms import BadRequest, parse_count, parse_id, path_id, read_body
from feed.web.openapi import BOOLEAN, ID, PAGING, STATUS_FORM, STRING, VISIBILITY, array, operation, ref

VERSION = "4.3.0 (compatible; cipherfeed 0.1.0)"
DESCRIPTION = "A social timeline that stores only encrypted posts."
DEFAULT_LIMIT = 20
MAX_LIMIT = 40


def query_id(request: Request, name: str) -> int | None:
    """A cursor from the query; 0 is allowed (``since_id=0``: from the very beginning)."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    if raw == "0":
        return 0
    try:
        return parse_id(raw, name)
    except Invalid as exc:
        raise BadRequest(exc.message) from None


def page_of(request: Request, default: int = DEFAULT_LIMIT, most: int = MAX_LIMIT) -> Page:
    """The paging parameters of a list (``limit`` up to ``most``, ``default`` without one)."""
    raw = request.query_params.get("limit")
    return Page(
        limit=parse_count(raw, "limit", most) if raw else default,
        max_id=query_id(request, "max_id"),
        since_id=query_id(request, "since_id"),
        min_id=query_id(request, "min_id"),
    )


def _page(request: Request) -> Page:
    return page_of(request)


def truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "on"))


def _people(found: list[PostView]) -> list[User]:
    """The authors of ``found``, and whoever boosted them into a timeline."""
    people = {p.author.id: p.author for p in found} | {p.booster.id: p.booster for p in found if p.booster}
    return list(people.values())


async def statuses_json(request: Request, found: list[PostView]) -> list[dict[str, Any]]:
    svc = services(request)
    profiles = await accounts.profiles(svc, _people(found))
    apps = await oauth.applications(svc, {p.app_id for p in found})
    return [mastodon.status(request, p, profiles, apps) for p in found]


async def statuses_response(request: Request, found: list[PostView], headers: dict[str, str]) -> Response:
    """A list of statuses, written from their cached frames (see ``mastodon.statuses_text``)."""
    svc = services(request)
    profiles = await accounts.profiles(svc, _people(found))
    apps = await oauth.applications(svc, {p.app_id for p in found})
    body = mastodon.statuses_text(request, found, profiles, apps)
    return Response(body, media_type="application/json", headers=headers)


async def _status_response(request: Request, post: PostView, *, with_source: bool = False) -> JSONResponse:
    svc = services(request)
    profiles = await accounts.profiles(svc, _people([post]))
    apps = await oauth.applications(svc, [post.app_id])
    return JSONResponse(mastodon.status(request, post, profiles, apps, with_source=with_source))


async def _timeline_response(request: Request, page: Page, result: TimelinePage) -> Response:
    headers = {}
    links = []
    base = str(request.url.replace(query=""))
    keep = {k: v for k, v in request.query_params.items() if k not in ("max_id", "since_id", "min_id", "limit")}
    if result.next_max_id:
        links.append(f'<{base}?{urlencode({**keep, "limit": page.limit, "max_id": result.next_max_id})}>; rel="next"')
    if result.posts and result.prev_min_id:
        links.append(f'<{base}?{urlencode({**keep, "limit": page.limit, "min_id": result.prev_min_id})}>; rel="prev"')
    if links:
        headers["Link"] = ", ".join(links)
    return await statuses_response(request, result.posts, headers)


async def _visible_account(request: Request, viewer: User | None, user: User) -> User:
    """``user``, unless they blocked the viewer (who then finds nothing of them)."""
    if await relations.hides_profile(services(request), viewer, user):
        raise NotFound()
    return user


@operation("Verify account credentials", ref("Account"), scope="read:accounts")
async def verify_credentials(request: Request) -> Response:
    user = await api_user(request, ("profile", "read:accounts"))
    assert user is not None
    svc = services(request)
    profile = await accounts.profile(svc, user, None)
    waiting = await follows.request_count(svc, user)
    return JSONResponse(mastodon.account(request, profile, with_source=True, follow_requests=waiting))


@operation("Look up an account by its name", ref("Account"), scope="read:accounts", public=True, query={"acct": STRING})
async def lookup_account(request: Request) -> Response:
    acct = request.query_params.get("acct", "").strip()
    if not acct:
        raise BadRequest("acct is required")
    name, _, domain = acct.lstrip("@").partition("@")
    if domain and domain.lower() not in (request.url.hostname, request.url.netloc.lower()):
        raise NotFound()
    viewer = await api_user(request, "read:accounts", required=False)
    user = await _visible_account(request, viewer, await accounts.find_user(services(request), name))
    return JSONResponse(mastodon.account(request, await accounts.profile(services(request), user, None)))


@operation("Get an account", ref("Account"), scope="read:accounts", public=True)
async def get_account(request: Request) -> Response:
    viewer = await api_user(request, "read:accounts", required=False)
    user = await accounts.get_user(services(request), path_id(request, "account_id"))
    await _visible_account(request, viewer, user)
    return JSONResponse(mastodon.account(request, await accounts.profile(services(request), user, None)))


@operation(
    "An account's statuses",
    array(ref("Status")),
    scope="read:statuses",
    public=True,
    query=PAGING | {"exclude_replies": BOOLEAN, "only_media": BOOLEAN, "pinned": BOOLEAN},
)
async def account_statuses(request: Request) -> Response:
    viewer = await api_user(request, "read:statuses", required=False)
    svc = services(request)
    author = await _visible_account(request, viewer, await accounts.get_user(svc, path_id(request, "account_id")))
    page = _page(request)
    if truthy(request.query_params.get("pinned")):
        return JSONResponse([])  # we have no pins
    result = await timelines.by_author(
        svc, author, viewer, page, exclude_replies=truthy(request.query_params.get("exclude_replies")),
        only_media=truthy(request.query_params.get("only_media")), style=mastodon.status_style(request),
    )  # fmt: skip
    return await _timeline_response(request, page, result)


@operation("Relationships with accounts", array(ref("Relationship")), scope="read:follows", query={"id[]": array(ID)})
async def relationships(request: Request) -> Response:
    """One Relationship per distinct existing account asked for, in the order asked; others are left out."""
    user = await api_user(request, "read:follows")
    assert user is not None
    svc = services(request)
    ids = request.query_params.getlist("id[]") or request.query_params.getlist("id")
    targets: dict[int, None] = {}
    for raw in ids[:40]:
        try:
            targets.setdefault(parse_id(raw), None)
        except Invalid:
            continue
    out = []
    for target in targets:
        try:
            await accounts.get_user(svc, target)
        except NotFound:
            continue
        out.append(mastodon.relationship(await follows.relationship(svc, user, target)))
    return JSONResponse(out)


@operation("Follow an account", ref("Relationship"), scope="write:follows")
async def follow(request: Request) -> Response:
    user = await api_user(request, "write:follows")
    assert user is not None
    rel = await follows.follow(services(request), user, path_id(request, "account_id"))
    return JSONResponse(mastodon.relationship(rel))


@operation("Unfollow an account", ref("Relationship"), scope="write:follows")
async def unfollow(request: Request) -> Response:
    user = await api_user(request, "write:follows")
    assert user is not None
    rel = await follows.unfollow(services(request), user, path_id(request, "account_id"))
    return JSONResponse(mastodon.relationship(rel))


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string", name)
    return value


def _media_ids(data: dict[str, Any]) -> list[int] | None:
    """``media_ids`` (a JSON array) or ``media_ids[]`` (form fields), in order; None when neither is sent. Polls
    are refused here: there are none."""
    if data.get("poll") or data.get("poll[options][]"):
        raise Invalid("Polls are not supported")
    if "media_ids" not in data and "media_ids[]" not in data:
        return None
    raw = data.get("media_ids", data.get("media_ids[]"))
    if raw in (None, ""):
        return []
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        raw = [raw]  # one id, sent as a plain field
    if not isinstance(raw, list):
        raise Invalid("media_ids must be a list of ids", "media_ids")
    if any(isinstance(i, bool) or not isinstance(i, str | int) for i in raw):
        raise Invalid("media_ids must be a list of ids", "media_ids")
    return [parse_id(str(i), "media_ids") for i in raw if i != ""]


@operation(
    "Post a new status",
    ref("Status"),
    scope="write:statuses",
    form=STATUS_FORM | {"visibility": VISIBILITY, "in_reply_to_id": ID, "media_ids": array(ID)},
)
async def create_status(request: Request) -> Response:
    user = await api_user(request, "write:statuses")
    assert user is not None
    data = await read_body(request)
    media_ids = _media_ids(data) or []
    reply_raw = data.get("in_reply_to_id")
    reply_to = parse_id(str(reply_raw), "in_reply_to_id") if reply_raw not in (None, "") else None
    post = await posts.create(
        services(request),
        user,
        _optional_text(data, "status") or "",
        visibility=_optional_text(data, "visibility") or "public",
        cw=_optional_text(data, "spoiler_text"),
        in_reply_to_id=reply_to,
        idempotency_key=request.headers.get("idempotency-key") or None,
        sensitive=truthy(data.get("sensitive")),
        language=_optional_text(data, "language"),
        app_id=grant.app_id if (grant := getattr(request.state, "grant", None)) else None,
        media_ids=media_ids,
    )
    return await _status_response(request, post)


@operation("Edit a status", ref("Status"), scope="write:statuses", form=STATUS_FORM | {"media_ids": array(ID)})
async def edit_status(request: Request) -> Response:
    """Change only the fields sent, as Mastodon's UpdateStatusService does: an edit that leaves out
    ``spoiler_text`` keeps the content warning, one that sends ``spoiler_text: ""`` removes it.
    Someone else's status is "not found" here, as in Mastodon.
    """
    user = await api_user(request, "write:statuses")
    assert user is not None
    svc = services(request)
    post_id = path_id(request, "status_id")
    data = await read_body(request)
    media_ids = _media_ids(data)
    text = _optional_text(data, "status")
    cw = _optional_text(data, "spoiler_text")
    try:
        expected = None
        if text is None or "spoiler_text" not in data:
            current = await timelines.source_of(svc, post_id, user)
            text = current.text if text is None else text
            cw = current.cw if "spoiler_text" not in data else cw
            expected = current.revision  # what was kept must still be what is there
        meta: dict[str, Any] = {}
        if "sensitive" in data:
            meta["sensitive"] = truthy(data.get("sensitive"))
        if "language" in data:
            meta["language"] = _optional_text(data, "language")
        post = await posts.edit(svc, user, post_id, text, cw, expected_revision=expected, media_ids=media_ids, **meta)
    except Forbidden:
        raise NotFound() from None
    return await _status_response(request, post)


@operation("View a single status", ref("Status"), scope="read:statuses", public=True)
async def get_status(request: Request) -> Response:
    """A post, or a boost under its own id (the reblog status Mastodon gives it; clients ask for those by id)."""
    viewer = await api_user(request, "read:statuses", required=False)
    svc, status_id = services(request), path_id(request, "status_id")
    try:
        post = await timelines.get(svc, status_id, viewer)
    except NotFound:
        post = await timelines.boost_status(svc, status_id, viewer)
    return await _status_response(request, post)


@operation("View a status's source", ref("StatusSource"), scope="read:statuses")
async def status_source(request: Request) -> Response:
    """The text and content warning of the caller's own status as they were written, for an edit form (Mastodon's
    StatusSource); someone else's status is "not found", as in Mastodon."""
    user = await api_user(request, "read:statuses")
    assert user is not None
    try:
        post = await timelines.source_of(services(request), path_id(request, "status_id"), user)
    except Forbidden:
        raise NotFound() from None
    return JSONResponse({"id": str(post.id), "text": post.text, "spoiler_text": post.cw or ""})


@operation("View a status's edit history", array(ref("StatusEdit")), scope="read:statuses", public=True)
async def status_history(request: Request) -> Response:
    """Every version of the status, oldest first (Mastodon's StatusEdit entities)."""
    viewer = await api_user(request, "read:statuses", required=False)
    svc = services(request)
    post, versions = await timelines.history(svc, path_id(request, "status_id"), viewer)
    profiles = await accounts.profiles(svc, [post.author])
    return JSONResponse([mastodon.status_edit(request, post, version, profiles) for version in versions])


@operation("Delete a status", ref("Status"), scope="write:statuses")
async def delete_status(request: Request) -> Response:
    """The caller's post, or their boost under its own id (deleting a reblog status undoes the boost)."""
    user = await api_user(request, "write:statuses")
    assert user is not None
    svc, status_id = services(request), path_id(request, "status_id")
    try:
        post = await posts.delete(svc, user, status_id)
    except Forbidden:
        raise NotFound() from None  # someone else's status, as in Mastodon
    except NotFound:
        return await _status_response(request, await boosts.unboost_by_id(svc, user, status_id))
    return await _status_response(request, post, with_source=True)


@operation("Parent and child statuses", ref("Context"), scope="read:statuses", public=True)
async def status_context(request: Request) -> Response:
    viewer = await api_user(request, "read:statuses", required=False)
    ancestors, _, descendants = await timelines.thread(services(request), path_id(request, "status_id"), viewer)
    return JSONResponse(
        {"ancestors": await statuses_json(request, ancestors), "descendants": await statuses_json(request, descendants)}
    )


@operation("Favourite a status", ref("Status"), scope="write:favourites")
async def favourite(request: Request) -> Response:
    user = await api_user(request, "write:favourites")
    assert user is not None
    return await _status_response(request, await posts.like(services(request), user, path_id(request, "status_id")))


@operation("Undo the favourite of a status", ref("Status"), scope="write:favourites")
async def unfavourite(request: Request) -> Response:
    user = await api_user(request, "write:favourites")
    assert user is not None
    return await _status_response(request, await posts.unlike(services(request), user, path_id(request, "status_id")))


@operation("Boost a status", ref("Status"), scope="write:statuses")
async def reblog(request: Request) -> Response:
    """The reblog status (Mastodon's shape: the booster's status whose ``reblog`` is the boosted one)."""
    user = await api_user(request, "write:statuses")
    assert user is not None
    post, boost_id = await boosts.boost(services(request), user, path_id(request, "status_id"))
    post.boost_id, post.booster = boost_id, user
    return await _status_response(request, post)


@operation("Undo the boost of a status", ref("Status"), scope="write:statuses")
async def unreblog(request: Request) -> Response:
    user = await api_user(request, "write:statuses")
    assert user is not None
    return await _status_response(request, await boosts.unboost(services(request), user, path_id(request, "status_id")))


@operation("Who boosted a status", array(ref("Account")), scope="read:statuses", public=True, query=PAGING)
async def reblogged_by(request: Request) -> Response:
    viewer = await api_user(request, "read:statuses", required=False)
    svc = services(request)
    page = _page(request)
    people, next_max = await boosts.boosters(svc, viewer, path_id(request, "status_id"), page)
    profiles = await accounts.profiles(svc, people)
    headers = {}
    if next_max:
        base = str(request.url.replace(query=""))
        headers["Link"] = f'<{base}?{urlencode({"limit": page.limit, "max_id": next_max})}>; rel="next"'
    return JSONResponse([mastodon.account(request, profiles[p.id]) for p in people], headers=headers)


@operation("Favourited statuses", array(ref("Status")), scope="read:favourites", query=PAGING)
async def favourites(request: Request) -> Response:
    """The caller's likes, by the liked post's id (newest posts first), which is also the Link header's cursor."""
    user = await api_user(request, "read:favourites")
    assert user is not None
    page = _page(request)
    style = mastodon.status_style(request)
    return await _timeline_response(request, page, await timelines.liked(services(request), user, page, style))


@operation("Bookmark a status", ref("Status"), scope="write:bookmarks")
async def bookmark(request: Request) -> Response:
    user = await api_user(request, "write:bookmarks")
    assert user is not None
    return await _status_response(
        request, await bookmarks.bookmark(services(request), user, path_id(request, "status_id"))
    )


@operation("Undo the bookmark of a status", ref("Status"), scope="write:bookmarks")
async def unbookmark(request: Request) -> Response:
    user = await api_user(request, "write:bookmarks")
    assert user is not None
    post = await bookmarks.unbookmark(services(request), user, path_id(request, "status_id"))
    return await _status_response(request, post)


@operation("View bookmarked statuses", array(ref("Status")), scope="read:bookmarks", query=PAGING)
async def bookmarked(request: Request) -> Response:
    """The caller's bookmarks, the latest kept first; the Link header pages by bookmark, as Mastodon's does."""
    user = await api_user(request, "read:bookmarks")
    assert user is not None
    page = _page(request)
    style = mastodon.status_style(request)
    return await _timeline_response(request, page, await bookmarks.listing(services(request), user, page, style))


@operation("View home timeline", array(ref("Status")), scope="read:statuses", query=PAGING)
async def home_timeline(request: Request) -> Response:
    user = await api_user(request, "read:statuses")
    assert user is not None
    page = _page(request)
    style = mastodon.status_style(request)
    svc = services(request)
    blob = await _first_page_from_blob(request, user, "home", page, partial(timelines.home, svc, user, page, style))
    return blob or await _timeline_response(request, page, await timelines.home(svc, user, page, style))


async def _first_page_from_blob(request: Request, viewer: User, timeline: str, page: Page,
                                draw: Callable[[], Awaitable[TimelinePage]]) -> Response | None:  # fmt: skip
    """The first page of ``timeline`` (a request with no query but ``limit``) from the viewer's sealed blob, drawn
    by ``draw`` if there is none or it is stale; None for any other page, or if it cannot be had."""
    if not request.query_params.keys() <= {"limit"}:
        return None
    found = await page_blobs.serve_statuses(request, services(request), viewer, timeline, page.limit, draw)
    if found is None:
        return None
    body, links = found
    return Response(body, media_type="application/json", headers={"Link": links.decode()} if links else None)


async def home_timeline_from_blob(request: Request) -> tuple[bytes, bytes] | None:
    """The home timeline's first page (a request without a query) if the viewer's blob is in L1 or Redis and good
    now (``feed.web.hot_path``): its JSON and its Link header."""
    user = await api_user(request, "read:statuses")
    assert user is not None
    return await page_blobs.serve_statuses(request, services(request), user, "home", _page(request).limit, None)


async def public_timeline_from_blob(request: Request) -> tuple[bytes, bytes] | None:
    """The public timeline's first page for a signed-in viewer, as :func:`home_timeline_from_blob` (None for
    anyone else: the stack draws theirs)."""
    user = await api_user(request, "read:statuses", required=False)
    if user is None:
        return None
    return await page_blobs.serve_statuses(request, services(request), user, "public", _page(request).limit, None)


@operation(
    "View public timeline",
    array(ref("Status")),
    scope="read:statuses",
    public=True,
    query=PAGING | {"local": BOOLEAN, "remote": BOOLEAN, "only_media": BOOLEAN},
)
async def public_timeline(request: Request) -> Response:
    """For a signed-in viewer, the first page (no query but ``limit``) from their sealed blob, as the home
    timeline's; anyone else's page, and every other, drawn each time."""
    viewer: User | None = await api_user(request, "read:statuses", required=False)
    page = _page(request)
    if truthy(request.query_params.get("remote")):
        return JSONResponse([])  # no federation
    style = mastodon.status_style(request)
    only_media = truthy(request.query_params.get("only_media"))
    svc = services(request)
    if viewer is not None:
        draw = partial(timelines.public, svc, viewer, page, style)
        if blob := await _first_page_from_blob(request, viewer, "public", page, draw):
            return blob
    found = await timelines.public(svc, viewer, page, style, only_media=only_media)
    return await _timeline_response(request, page, found)


def _limits(request: Request) -> dict[str, Any]:
    return {
        "statuses": {
            "max_characters": MAX_POST_CHARS,
            "max_media_attachments": media.MAX_ATTACHMENTS,
            "characters_reserved_per_url": 23,
        },
        "media_attachments": {
            "supported_mime_types": list(images.FORMATS.values()),
            "description_limit": media.MAX_DESCRIPTION,
            "image_size_limit": services(request).media_max_bytes,
            "image_matrix_limit": images.MAX_PIXELS,
            "video_size_limit": 0,
            "video_frame_rate_limit": 0,
            "video_matrix_limit": 0,
        },
        "polls": {"max_options": 0, "max_characters_per_option": 0, "min_expiration": 0, "max_expiration": 0},
    }


def _streaming_url(request: Request) -> str:
    """Where the streaming API is: this server, as a WebSocket address (``wss://host``)."""
    return f"{'wss' if request.url.scheme == 'https' else 'ws'}://{request.url.netloc}"


@operation("The server (v1)", ref("InstanceV1"), public=True)
async def instance_v1(request: Request) -> Response:
    figures = await site.stats(services(request))
    base = str(request.base_url).rstrip("/")
    return JSONResponse(
        {
            "uri": request.url.netloc,
            "title": "cipherfeed",
            "short_description": DESCRIPTION,
            "description": DESCRIPTION,
            "email": "",
            "version": VERSION,
            "urls": {"streaming_api": _streaming_url(request)},
            "stats": {"user_count": figures.users, "status_count": figures.posts, "domain_count": 0},
            "thumbnail": f"{base}/static/favicon.svg",
            "languages": ["en"],
            "registrations": True,
            "approval_required": False,
            "invites_enabled": False,
            "configuration": {"accounts": {"max_featured_tags": 0}, **_limits(request)},
            "contact_account": None,
            "rules": [],
        }
    )


@operation("The server", ref("InstanceV2"), public=True)
async def instance_v2(request: Request) -> Response:
    figures = await site.stats(services(request))
    return JSONResponse(
        {
            "domain": request.url.netloc,
            "title": "cipherfeed",
            "version": VERSION,
            "source_url": "",
            "description": DESCRIPTION,
            "usage": {"users": {"active_month": figures.active_month}},
            "thumbnail": {"url": f"{str(request.base_url).rstrip('/')}/static/favicon.svg"},
            "languages": ["en"],
            "icon": [{"src": f"{str(request.base_url).rstrip('/')}/static/favicon.svg", "size": "36x36"}],
            "api_versions": {"mastodon": 2},
            "configuration": {
                "urls": {"streaming": _streaming_url(request), "status": None, "about": None, "privacy_policy": None},
                "vapid": {"public_key": ""},
                "accounts": {"max_featured_tags": 0, "max_pinned_statuses": 0},
                **_limits(request),
                "translation": {"enabled": False},
            },
            "registrations": {"enabled": True, "approval_required": False, "message": None, "url": None},
            "contact": {"email": "", "account": None},
            "rules": [],
        }
    )


async def not_found(request: Request) -> Response:
    raise NotFound()
