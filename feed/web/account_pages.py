"""Sign-up, login, logout, the settings page and deleting one's account."""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from feed.errors import Conflict, Invalid, RateLimited, Unauthorized
from feed.services import accounts, follows, notifications, oauth
from feed.services.models import User
from feed.web.auth import (
    device_tokens,
    end_session,
    remember_device,
    require_user,
    services,
    session_token,
    start_session,
    viewer,
)
from feed.web.forms import parse_id, read_form
from feed.web.pages import safe_next, see_other
from feed.web.templating import render

ACCOUNT_DELETED = "Your account is deleted, and you are logged out."


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def login_form(request: Request) -> Response:
    if await viewer(request):
        return see_other(safe_next(request.query_params.get("next"), "/"))
    expired = request.query_params.get("expired") == "1"
    return render(
        request,
        "login.html",
        {
            "values": {"next": request.query_params.get("next", "")},
            "error": "Your session has expired; log in again." if expired else None,
        },
    )


async def login(request: Request) -> Response:
    form = await read_form(request)
    svc = services(request)
    values = {"username": form.get("username", ""), "next": form.get("next", "")}
    try:
        session = await accounts.login(
            svc, form.get("username", ""), form.get("password", ""), _client_ip(request), device_tokens(request)
        )
    except (Unauthorized, RateLimited) as exc:
        status = 429 if isinstance(exc, RateLimited) else 401
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        return render(request, "login.html", {"values": values, "error": exc.message}, status=status, headers=headers)
    previous = session_token(request)
    if previous:  # a new session id at every login; the one this browser had is ended, not left alive
        await accounts.logout(svc, previous)
    response = see_other(safe_next(form.get("next"), "/"))
    start_session(request, response, session.token, int(svc.session_ttl.total_seconds()))
    remember_device(request, response, session.device, session.replaces)
    return response


async def register_form(request: Request) -> Response:
    if await viewer(request):
        return see_other("/")
    return render(request, "register.html", {"values": {}, "errors": {}})


async def register(request: Request) -> Response:
    form = await read_form(request)
    svc = services(request)
    values = {"username": form.get("username", ""), "email": form.get("email", "")}
    try:
        if form.get("password", "") != form.get("password_confirm", ""):
            raise Invalid("The two passwords differ", "password_confirm")
        user = await accounts.register(svc, form.get("username", ""), form.get("password", ""), form.get("email", ""))
    except (Invalid, Conflict) as exc:
        field = exc.field if isinstance(exc, Invalid) and exc.field else "username"
        if isinstance(exc, Conflict) and "email" in exc.message:
            field = "email"
        return render(request, "register.html", {"values": values, "errors": {field: exc.message}}, status=422)
    # The password was just chosen: no second hash check, and no login throttle to trip over.
    session = await accounts.open_session(svc, user.id)
    previous = session_token(request)
    if previous:
        await accounts.logout(svc, previous)
    response = see_other("/?notice=welcome")
    start_session(request, response, session.token, int(svc.session_ttl.total_seconds()))
    remember_device(request, response, session.device, None)
    return response


async def logout(request: Request) -> Response:
    await read_form(request)
    token = session_token(request)
    if token:
        await accounts.logout(services(request), token)
    response = see_other("/login?notice=loggedout")
    end_session(request, response)
    return response


async def _settings(
    request: Request, user: User, values: dict[str, str] | None = None, errors: dict[str, str] | None = None
) -> Response:
    """The settings page: the profile as saved (or ``values`` sent with ``errors``), and the authorised apps."""
    svc = services(request)
    if values is None:
        email = await accounts.email_of(svc, user)
        values = {
            "display_name": user.display_name,
            "bio": user.bio,
            "email": email,
            "locked": "on" if user.locked else "",
        }
    context = {
        "values": values,
        "errors": errors or {},
        "apps": await oauth.authorised_apps(svc, user),
        "notify": await notifications.settings(svc, user),
        "requests": await follows.request_count(svc, user),
        "kinds": notifications.LABELS,
    }
    return render(request, "settings.html", context, status=422 if errors else 200)


async def settings_page(request: Request) -> Response:
    return await _settings(request, await require_user(request))


async def revoke_app(request: Request) -> Response:
    """Settings, authorised apps: the app loses its access (every token the person gave it ends on every process)."""
    await read_form(request)
    user = await require_user(request)
    await oauth.revoke_app(services(request), user, parse_id(request.path_params["app_id"], "app"))
    return see_other("/settings?notice=revoked#apps")


async def save_profile(request: Request) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    values = {k: form.get(k, "") for k in ("display_name", "bio", "email")}
    locked = form.get("locked") == "on"
    try:
        await accounts.update_profile(services(request), user, **values)
    except (Invalid, Conflict) as exc:
        field = exc.field if isinstance(exc, Invalid) and exc.field else "email"
        return await _settings(request, user, values | {"locked": "on" if locked else ""}, {field: exc.message})
    if locked != user.locked:
        await follows.set_locked(services(request), user, locked)
    return see_other("/settings?notice=saved")


async def change_password(request: Request) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    svc = services(request)
    try:
        if form.get("new_password", "") != form.get("new_password_confirm", ""):
            raise Invalid("The two new passwords differ", "new_password_confirm")
        await accounts.change_password(
            svc, user, form.get("current_password", ""), form.get("new_password", ""), session_token(request)
        )
    except Invalid as exc:
        # The password rules name their field "password"; on this form that is the new one.
        field = "new_password" if exc.field in (None, "password") else exc.field
        return await _settings(request, user, errors={field: exc.message})
    return see_other("/settings?notice=password")


async def delete_account(request: Request) -> Response:
    """The settings page's "delete my account": with the right password the account is erased at once (its keys
    destroyed, every session ended) and this browser's session cookie goes; the answer is a page saying so."""
    form = await read_form(request)
    user = await require_user(request)
    svc = services(request)
    try:
        await accounts.delete_account(svc, user, form.get("password", ""))
    except Invalid as exc:
        return await _settings(request, user, errors={exc.field or "delete_password": exc.message})
    request.state.viewer = None  # this page is drawn for nobody: the account is gone
    response = render(request, "account_deleted.html", {"notice": ACCOUNT_DELETED})
    end_session(request, response)
    return response


def login_redirect(request: Request, expired: bool) -> Response:
    """Where an anonymous browser goes when a page needs a login: back here after it."""
    target = request.url.path if request.method == "GET" else request.headers.get("referer", "/")
    if not target.startswith("/"):
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    query = f"next={quote(safe_next(target, '/'))}" + ("&expired=1" if expired else "")
    return see_other(f"/login?{query}")
