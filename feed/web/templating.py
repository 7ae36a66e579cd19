"""Jinja2 rendering for pages and htmx fragments."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from feed.resources import resource_path
from feed.services.text import render_html
from feed.web.auth import csrf_token, remember_anon

# Notices are chosen by code (``?notice=saved``), never echoed from the URL, so a link cannot put words in our mouth.
NOTICES = {
    "welcome": "Welcome to cipherfeed! Follow people to fill your home timeline.",
    "saved": "Your profile is saved.",
    "password": "Password changed. Every other session was logged out.",
    "deleted": "The post was deleted.",
    "loggedout": "You are logged out.",
    "edited": "The post was updated.",
}
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def reltime(when: datetime, now: datetime | None = None) -> str:
    """Compact age: now, 45s, 5m, 3h, 2d, then a date. ``static/js/app.js`` keeps it fresh in the browser."""
    now = now or datetime.now(UTC)
    seconds = int((now - when).total_seconds())
    if seconds < 10:
        return "now"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    if seconds < 7 * 86400:
        return f"{seconds // 86400}d"
    date = f"{when.day} {_MONTHS[when.month - 1]}"
    return date if when.year == now.year else f"{date} {when.year}"


def isotime(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fulltime(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC")


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_path("templates")),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
    )
    env.filters.update(reltime=reltime, isotime=isotime, fulltime=fulltime, bio=render_html)
    return env


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    env: jinja2.Environment = request.app.state.templates
    ctx = {
        "request": request,
        "viewer": request.state._state.get("viewer"),
        "csrf": csrf_token(request),
        "path": request.url.path,
        # Where a no-JS form in a post brings the reader back to: this page, an older page (?max_id=) included.
        "here": request.url.path
        + (f"?max_id={max_id}" if (max_id := request.query_params.get("max_id", "")).isdigit() else ""),
        "notice": NOTICES.get(request.query_params.get("notice", ""), ""),
    }
    if context:
        ctx.update(context)
    response = HTMLResponse(env.get_template(template).render(ctx), status_code=status, headers=headers)
    remember_anon(request, response)
    return response
