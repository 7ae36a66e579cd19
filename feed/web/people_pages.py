"""Pages to keep people at a distance: block and mute from a profile, the lists of blocks and mutes to undo them,
and a locked account's follow requests to approve or reject."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from feed.errors import Invalid
from feed.services import accounts, follows, relations
from feed.services.models import Page
from feed.web.auth import require_user, services
from feed.web.forms import parse_id, path_id, read_form
from feed.web.pages import safe_next, see_other
from feed.web.templating import render

PAGE_SIZE = 40


def _page(request: Request) -> Page:
    raw = request.query_params.get("max_id")
    return Page(limit=PAGE_SIZE, max_id=parse_id(raw, "max_id") if raw else None)


def _more(request: Request, next_max: int | None) -> str | None:
    return f"{request.url.path}?{urlencode({'max_id': next_max})}" if next_max else None


async def _act(request: Request, action: str) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    svc = services(request)
    target = await accounts.find_user(svc, request.path_params["username"])
    if action == "block":
        await relations.block(svc, user, target.id)
    elif action == "unblock":
        await relations.unblock(svc, user, target.id)
    elif action == "mute":
        raw = form.get("duration", "0") or "0"
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
            raise Invalid("The length of a mute is a number of seconds", "duration")
        await relations.mute(svc, user, target.id, notifications=form.get("notifications", "on") == "on",
                             duration=int(raw))  # fmt: skip
    else:
        await relations.unmute(svc, user, target.id)
    return see_other(safe_next(form.get("next"), f"/@{target.username}"))


async def block(request: Request) -> Response:
    return await _act(request, "block")


async def unblock(request: Request) -> Response:
    return await _act(request, "unblock")


async def mute(request: Request) -> Response:
    return await _act(request, "mute")


async def unmute(request: Request) -> Response:
    return await _act(request, "unmute")


async def blocked(request: Request) -> Response:
    user = await require_user(request)
    people, next_max, _ = await relations.blocked_list(services(request), user, _page(request))
    return render(request, "people_list.html", {
        "heading": "Blocked people", "people": people, "more_url": _more(request, next_max),
        "explanation": "Neither you nor they see each other's posts, replies or profile; they cannot follow you.",
        "empty": "You have blocked nobody.", "actions": [("/@{name}/unblock", "Unblock", "secondary")],
    })  # fmt: skip


async def muted(request: Request) -> Response:
    user = await require_user(request)
    people, next_max, _ = await relations.muted_list(services(request), user, _page(request))
    return render(request, "people_list.html", {
        "heading": "Muted people", "people": people, "more_url": _more(request, next_max),
        "explanation": "Their posts stay out of your home and public timelines and their notifications out of yours. "
                       "They are not told.",
        "empty": "You have muted nobody.", "actions": [("/@{name}/unmute", "Unmute", "secondary")],
    })  # fmt: skip


async def follow_requests(request: Request) -> Response:
    user = await require_user(request)
    people, next_max, _ = await follows.requests(services(request), user, _page(request))
    explanation = (
        "Your account is locked: people you approve follow you and read your followers-only posts."
        if user.locked
        else "Your account is not locked, so new followers need no approval."
    )
    return render(request, "people_list.html", {
        "heading": "Follow requests", "people": people, "more_url": _more(request, next_max),
        "explanation": explanation, "empty": "Nobody is waiting for your approval.",
        "actions": [("/follow_requests/{id}/authorize", "Approve", "primary"),
                    ("/follow_requests/{id}/reject", "Reject", "secondary")],
    })  # fmt: skip


async def _decide(request: Request, *, approve: bool) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    requester = path_id(request, "account_id")
    await (follows.authorize if approve else follows.reject)(services(request), user, requester)
    return see_other(safe_next(form.get("next"), "/follow_requests"))


async def authorize(request: Request) -> Response:
    return await _decide(request, approve=True)


async def reject(request: Request) -> Response:
    return await _decide(request, approve=False)
