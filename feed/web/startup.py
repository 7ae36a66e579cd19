"""The calls Mastodon apps make at start-up, beside the timelines: preferences, read positions (markers), and the
features cipherfeed does not have yet, answered as Mastodon answers when there is nothing (custom emojis, filters,
lists, follow requests, announcements); and NodeInfo, which directories and some apps read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from feed.services import markers, site
from feed.web.auth import api_user, services
from feed.web.forms import BadRequest, parse_id, read_body
from feed.web.mastodon import iso
from feed.web.openapi import ANYTHING, ID, array, operation, ref

SOFTWARE = "cipherfeed"
SOFTWARE_VERSION = "0.1.0"


@operation("The account's preferences", ref("Preferences"), scope="read:accounts")
async def preferences(request: Request) -> Response:
    await api_user(request, "read:accounts")
    return JSONResponse(
        {
            "posting:default:visibility": "public",
            "posting:default:sensitive": False,
            "posting:default:language": None,
            "reading:expand:media": "default",
            "reading:expand:spoilers": False,
        }
    )


def nothing_yet(scope: str) -> Callable[[Request], Awaitable[Response]]:
    """A list cipherfeed has no entries for yet (filters, lists, follow requests, announcements): empty, for the
    signed-in user whose token holds ``scope``."""

    @operation("An empty list (cipherfeed has none of these yet)", array(ANYTHING), scope=scope)
    async def empty(request: Request) -> Response:
        await api_user(request, scope)
        return JSONResponse([])

    return empty


@operation("Custom emojis (none)", array(ANYTHING), public=True)
async def custom_emojis(request: Request) -> Response:
    return JSONResponse([])


def _marker(marker: markers.Marker) -> dict[str, Any]:
    return {"last_read_id": str(marker.last_read_id), "version": marker.version, "updated_at": iso(marker.updated_at)}


@operation(
    "Read positions",
    ref("Markers"),
    scope="read:statuses",
    query={"timeline[]": array({"enum": ["home", "notifications"]})},
)
async def get_markers(request: Request) -> Response:
    user = await api_user(request, "read:statuses")
    assert user is not None
    wanted = request.query_params.getlist("timeline[]") or request.query_params.getlist("timeline")
    found = await markers.read(services(request), user, wanted)
    return JSONResponse({m.timeline: _marker(m) for m in found})


@operation(
    "Save read positions",
    ref("Markers"),
    scope="write:statuses",
    form={"home[last_read_id]": ID, "notifications[last_read_id]": ID},
)
async def save_markers(request: Request) -> Response:
    """``home[last_read_id]=ID`` (a form) or ``{"home": {"last_read_id": "ID"}}`` (JSON), for home and/or
    notifications."""
    user = await api_user(request, "write:statuses")
    assert user is not None
    data = await read_body(request)
    positions: dict[str, int] = {}
    for timeline in markers.TIMELINES:
        raw = data.get(f"{timeline}[last_read_id]")
        if raw is None and isinstance(nested := data.get(timeline), dict):
            raw = nested.get("last_read_id")
        if raw is None:
            continue
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise BadRequest(f"{timeline}[last_read_id] must be an id")
        positions[timeline] = parse_id(str(raw), f"{timeline}[last_read_id]")
    found = await markers.save(services(request), user, positions)
    return JSONResponse({m.timeline: _marker(m) for m in found})


async def nodeinfo_links(request: Request) -> Response:
    base = str(request.base_url).rstrip("/")
    schema = "http://nodeinfo.diaspora.software/ns/schema/2.0"
    return JSONResponse({"links": [{"rel": schema, "href": f"{base}/nodeinfo/2.0"}]})


async def nodeinfo(request: Request) -> Response:
    figures = await site.stats(services(request))
    return JSONResponse(
        {
            "version": "2.0",
            "software": {"name": SOFTWARE, "version": SOFTWARE_VERSION},
            "protocols": [],
            "services": {"outbound": [], "inbound": []},
            "usage": {
                "users": {"total": figures.users, "activeMonth": figures.active_month},
                "localPosts": figures.posts,
            },
            "openRegistrations": True,
            "metadata": {},
        },
        media_type='application/json; profile="http://nodeinfo.diaspora.software/ns/schema/2.0#"',
    )
