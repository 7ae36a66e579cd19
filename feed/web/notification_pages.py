"""The notifications page (grouped, newest first; opening it marks them read) and the notification settings."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from feed.services import markers, notifications
from feed.services.models import Page
from feed.web.auth import require_user, services
from feed.web.forms import parse_id, read_form
from feed.web.pages import see_other
from feed.web.templating import render

PAGE_SIZE = 40


async def page(request: Request) -> Response:
    user = await require_user(request)
    svc = services(request)
    raw = request.query_params.get("max_id")
    bounds = Page(limit=PAGE_SIZE, max_id=parse_id(raw, "max_id") if raw else None)
    read = await markers.read(svc, user, ["notifications"])
    last_read = read[0].last_read_id if read else 0
    groups, people, next_max, newest = await notifications.grouped(svc, user, bounds)
    if newest and bounds.max_id is None:  # read up to the newest on the page, shown or not (a muted person's)
        await notifications.mark_read(svc, user, newest)
        request.state.unread = 0
    more = f"/notifications?{urlencode({'max_id': next_max})}" if next_max else None
    context = {"groups": groups, "people": people, "last_read": last_read, "more_url": more}
    return render(request, "notifications.html", context)


async def save_settings(request: Request) -> Response:
    """Settings, notifications: the kinds ticked are received; optionally only from people the user follows."""
    form = await read_form(request)
    user = await require_user(request)
    wanted = [kind for kind in notifications.KINDS if form.get(f"kind_{kind}") == "on"]
    await notifications.save_settings(services(request), user, wanted, form.get("only_following") == "on")
    return see_other("/settings?notice=notifications#notifications")
