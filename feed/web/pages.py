"""HTML pages and htmx fragments: timelines, threads, the composer, likes and follows.

Every action is a plain form that works without JavaScript (POST, then a 303 redirect); with htmx the same
endpoint answers with the fragment to swap in.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from feed.errors import Conflict, Invalid, NotFound
from feed.services import accounts, bookmarks, boosts, follows, media, posts, relations, timelines
from feed.services.models import Page, PostView, TimelinePage, User
from feed.web import page_blobs
from feed.web.auth import require_user, services, viewer
from feed.web.forms import parse_id, path_id, read_form
from feed.web.live import live_url
from feed.web.templating import frame_style, is_htmx, render

PAGE_SIZE = 20


def safe_next(raw: str | None, default: str) -> str:
    """A same-site path to go back to; anything else (other hosts, ``//x``, ``/\\x``) gives ``default``."""
    if raw and raw.startswith("/") and not raw.startswith(("//", "/\\")) and len(raw) < 2000:
        return raw
    return default


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _page(request: Request) -> Page:
    raw = request.query_params.get("max_id")
    return Page(limit=PAGE_SIZE, max_id=parse_id(raw, "max_id") if raw else None)


def _more_url(request: Request, page: TimelinePage) -> str | None:
    return f"{request.url.path}?{urlencode({'max_id': page.next_max_id})}" if page.next_max_id else None


def _timeline(
    request: Request, template: str, page: TimelinePage, live: str | None = None, **context: object
) -> Response:
    """A timeline page; with htmx, an older page (``max_id``) or the first page again (``fragment=timeline``, after
    the live stream said "resync") as a fragment. ``live``: the stream's timeline, for first pages."""
    ctx: dict[str, object] = {"page": page, "more_url": _more_url(request, page), "live": None, "refresh": None,
                              **context}  # fmt: skip
    if is_htmx(request) and (request.query_params.get("max_id") or request.query_params.get("fragment") == "timeline"):
        return render(request, "_partials/timeline_page.html", ctx)
    if live is not None and not request.query_params.get("max_id"):
        ctx["live"] = live_url(live, [post.id for post in page.posts], int(time.time() * 1000))
        ctx["refresh"] = f"{request.url.path}?fragment=timeline"
    return render(request, template, ctx)


async def home(request: Request) -> Response:
    user = await viewer(request)
    if user is None:
        return render(request, "welcome.html")
    svc = services(request)
    composer = {"visibility": _last_visibility(request)}
    if not request.scope["query_string"] and not is_htmx(request):  # the first page, whole: the viewer's blob

        async def draw() -> tuple[TimelinePage, dict[str, object]]:
            page = await timelines.home(svc, user, _page(request), frame_style(request))
            return page, {"page": page, "more_url": _more_url(request, page), "composer": composer}

        body = await page_blobs.serve(request, svc, user, "home", "home.html", draw, composer["visibility"])
        if body is not None:
            return HTMLResponse(body)
    page = await timelines.home(svc, user, _page(request), frame_style(request))
    return _timeline(request, "home.html", page, "home", composer=composer)


async def public_from_blob(request: Request) -> bytes | None:
    """The public page if the viewer's blob is in L1 and good now (``feed.web.hot_path``)."""
    if is_htmx(request):
        return None
    user = await viewer(request)
    if user is None:
        return None
    return await page_blobs.serve(request, services(request), user, "public", "public.html", None, "")


async def public(request: Request) -> Response:
    user = await viewer(request)
    svc = services(request)
    if user is not None and not request.scope["query_string"] and not is_htmx(request):  # the viewer's blob

        async def draw() -> tuple[TimelinePage, dict[str, object]]:
            page = await timelines.public(svc, user, _page(request), frame_style(request))
            return page, {"page": page, "more_url": _more_url(request, page)}

        body = await page_blobs.serve(request, svc, user, "public", "public.html", draw, "")
        if body is not None:
            return HTMLResponse(body)
    page = await timelines.public(svc, user, _page(request), frame_style(request))
    return _timeline(request, "public.html", page, "public")


async def profile(request: Request) -> Response:
    svc = services(request)
    user = await viewer(request)
    author = await accounts.find_user(svc, request.path_params["username"])
    if await relations.hides_profile(svc, user, author):
        raise NotFound()
    page = await timelines.by_author(svc, author, user, _page(request), style=frame_style(request))
    info = await accounts.profile(svc, author, user)
    return _timeline(request, "profile.html", page, f"author:{author.id}", profile=info)


async def thread(request: Request) -> Response:
    user = await viewer(request)
    ancestors, focus, replies = await timelines.thread(
        services(request), path_id(request, "post_id"), user, frame_style(request)
    )
    # A reply starts as private as the post it answers: a reply to a direct post stays direct.
    composer = None
    if user:
        composer = {"status": _reply_prefill(focus, user), "visibility": focus.visibility,
                    "reply_to": focus.author.username}  # fmt: skip
    shown = [post.id for post in (*ancestors, focus, *replies)]
    live = live_url(f"post:{focus.id}", shown, int(time.time() * 1000))
    return render(
        request,
        "thread.html",
        {"ancestors": ancestors, "focus": focus, "replies": replies, "composer": composer, "live": live},
    )


def _reply_prefill(post: PostView, user: User | None) -> str:
    names = [post.author.username, *(m.username for m in post.mentions)]
    mine = user.username.lower() if user else ""
    unique = dict.fromkeys(n for n in names if n.lower() != mine)
    return "".join(f"@{n} " for n in unique)


def _attached(form: dict[str, str]) -> list[tuple[int, str]]:
    """The composer's images, in order: (id, alt text) from ``media_N`` and ``alt_N``."""
    out = []
    for n in range(media.MAX_ATTACHMENTS + 1):  # one past the most, for the service to refuse
        raw = form.get(f"media_{n}")
        if raw:
            out.append((parse_id(raw, "media"), form.get(f"alt_{n}", "")))
    return out


async def _describe(svc: Any, user: User, attached: list[tuple[int, str]]) -> list[int]:
    """Give the composer's images their alt text (asked for each: people who cannot see an image hear it)."""
    for media_id, description in attached:
        if not description.strip():
            raise Invalid("Describe each image for people who cannot see it", "alt")
        await media.describe(svc, user, media_id, description=description)
    return [media_id for media_id, _ in attached]


async def create_post(request: Request) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    svc = services(request)
    reply_to = parse_id(form["in_reply_to_id"], "in_reply_to_id") if form.get("in_reply_to_id") else None
    attached: list[tuple[int, str]] = []
    try:
        attached = _attached(form)
        post = await posts.create(
            svc,
            user,
            form.get("status", ""),
            visibility=form.get("visibility", "public"),
            cw=form.get("spoiler_text"),
            in_reply_to_id=reply_to,
            idempotency_key=form.get("idempotency_key") or None,
            media_ids=await _describe(svc, user, attached),
        )
    except (Invalid, NotFound) as exc:
        composer = {
            "idempotency_key": form.get("idempotency_key", ""),
            "status": form.get("status", ""),
            "spoiler_text": form.get("spoiler_text", ""),
            "visibility": form.get("visibility", "public"),
            "in_reply_to_id": reply_to,
            "error": exc.message if isinstance(exc, Invalid) else "An image was removed meanwhile; attach it again",
            "media": [{"id": media_id, "description": text} for media_id, text in attached],
        }
        if is_htmx(request):
            return render(
                request,
                "_partials/composer.html",
                {"composer": composer},
                status=422,
                headers={"HX-Retarget": "#composer", "HX-Reswap": "outerHTML"},
            )
        parent = await timelines.get(svc, reply_to, user) if reply_to else None
        if parent is not None:
            composer["reply_to"] = parent.author.username
        return render(request, "compose.html", {"composer": composer, "parent": parent}, status=422)
    answer: Response
    if is_htmx(request) and reply_to is None:
        answer = render(request, "_partials/posted.html", {"post": post, "composer": {"visibility": post.visibility}})
    else:  # without JavaScript: back where the post was written, at the post
        answer = see_other(f"/posts/{reply_to}#post-{post.id}" if reply_to else f"/#post-{post.id}")
    if reply_to is None:  # the next post starts with the audience of this one
        answer.set_cookie(VISIBILITY_COOKIE, post.visibility, max_age=365 * 86400, path="/", samesite="lax",
                          secure=request.url.scheme == "https", httponly=True)  # fmt: skip
    return answer


VISIBILITY_COOKIE = "cf_visibility"
_VISIBILITIES = frozenset({"public", "unlisted", "followers", "direct"})


def _last_visibility(request: Request) -> str:
    """The audience of this browser's last new post (not a reply): the composer starts with it."""
    return audience_of(request.cookies.get(VISIBILITY_COOKIE, ""))


def audience_of(cookie: str) -> str:
    """The composer's first audience, from this browser's cookie of its last one."""
    return cookie if cookie in _VISIBILITIES else "public"


async def edit_form(request: Request) -> Response:
    user = await require_user(request)
    post = await timelines.source_of(services(request), path_id(request, "post_id"), user)
    values = {"status": post.text, "spoiler_text": post.cw or "", "revision": post.revision}
    return render(request, "edit.html", {"post": post, "values": values})


async def edit_post(request: Request) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    svc = services(request)
    post_id = path_id(request, "post_id")
    expected = parse_id(form["revision"], "revision") if form.get("revision") else None
    # The images the form listed (each with a box to keep it), in their order: those unticked go.
    kept = [int(name[5:]) for name in form if name.startswith("keep_") and name[5:].isdigit()]
    try:
        kept_ids = None
        if form.get("media_listed"):
            current = await timelines.source_of(svc, post_id, user)
            kept_ids = [m.id for m in current.media if m.id in kept]
        await posts.edit(
            svc, user, post_id, form.get("status", ""), form.get("spoiler_text"), expected_revision=expected,
            media_ids=kept_ids,
        )  # fmt: skip
    except (Invalid, Conflict) as exc:
        # The draft is kept; after a conflict the form now carries the latest revision, so saving again is a
        # deliberate overwrite.
        post = await timelines.source_of(svc, post_id, user)
        values = {
            "status": form.get("status", ""),
            "spoiler_text": form.get("spoiler_text", ""),
            "revision": post.revision,
            "keep": set(kept) if form.get("media_listed") else None,
        }
        status = 409 if isinstance(exc, Conflict) else 422
        return render(request, "edit.html", {"post": post, "values": values, "error": exc.message}, status=status)
    return see_other(f"/posts/{post_id}?notice=edited")


async def delete_post(request: Request) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    post_id = path_id(request, "post_id")
    if not is_htmx(request) and form.get("confirm") != "yes":  # without JavaScript, nothing asked yet
        post = await timelines.source_of(services(request), post_id, user)
        back = safe_next(form.get("next"), f"/posts/{post_id}")
        return render(request, "delete.html", {"post": post, "next": back})
    await posts.delete(services(request), user, post_id)
    if is_htmx(request):
        return render(request, "_partials/deleted.html", {"post_id": post_id})
    target = safe_next(form.get("next"), "/")
    if target.startswith(f"/posts/{post_id}"):  # the page of the deleted post is gone
        target = "/"
    return see_other(target + ("&" if "?" in target else "?") + "notice=deleted")


async def like(request: Request) -> Response:
    return await _like(request, like=True)


async def unlike(request: Request) -> Response:
    return await _like(request, like=False)


async def _like(request: Request, *, like: bool) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    post_id = path_id(request, "post_id")
    action = posts.like if like else posts.unlike
    post = await action(services(request), user, post_id)
    if is_htmx(request):
        # The swapped-in form keeps the page it lives on as its no-JS "next", not this POST URL.
        return render(request, "_partials/like_button.html", {"post": post, "here": safe_next(form.get("next"), "/")})
    return see_other(safe_next(form.get("next"), f"/posts/{post_id}") + f"#post-{post_id}")


async def bookmark(request: Request) -> Response:
    return await _bookmark(request, keep=True)


async def unbookmark(request: Request) -> Response:
    return await _bookmark(request, keep=False)


async def _bookmark(request: Request, *, keep: bool) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    post_id = path_id(request, "post_id")
    action = bookmarks.bookmark if keep else bookmarks.unbookmark
    post = await action(services(request), user, post_id)
    here = safe_next(form.get("next"), "/")
    if is_htmx(request):
        return render(request, "_partials/bookmark_button.html", {"post": post, "here": here})
    return see_other(safe_next(form.get("next"), f"/posts/{post_id}") + f"#post-{post_id}")


async def boost(request: Request) -> Response:
    return await _boost(request, share=True)


async def unboost(request: Request) -> Response:
    return await _boost(request, share=False)


async def _boost(request: Request, *, share: bool) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    post_id = path_id(request, "post_id")
    if share:
        post, _ = await boosts.boost(services(request), user, post_id)
    else:
        post = await boosts.unboost(services(request), user, post_id)
    here = safe_next(form.get("next"), "/")
    if is_htmx(request):
        return render(request, "_partials/boost_button.html", {"post": post, "here": here})
    return see_other(safe_next(form.get("next"), f"/posts/{post_id}") + f"#post-{post_id}")


async def bookmarked(request: Request) -> Response:
    user = await require_user(request)
    page = await bookmarks.listing(services(request), user, _page(request), frame_style(request))
    return _timeline(request, "bookmarks.html", page)


async def follow(request: Request) -> Response:
    return await _follow(request, follow=True)


async def unfollow(request: Request) -> Response:
    return await _follow(request, follow=False)


async def _follow(request: Request, *, follow: bool) -> Response:
    form = await read_form(request)
    user = await require_user(request)
    svc = services(request)
    target = await accounts.find_user(svc, request.path_params["username"])
    await (follows.follow if follow else follows.unfollow)(svc, user, target.id)
    if is_htmx(request):
        info = await accounts.profile(svc, target, user)
        return render(request, "_partials/follow_button.html", {"profile": info, "oob_counts": True})
    return see_other(safe_next(form.get("next"), f"/@{target.username}"))


async def follow_list(request: Request) -> Response:
    svc = services(request)
    user = await viewer(request)
    target = await accounts.find_user(svc, request.path_params["username"])
    if await relations.hides_profile(svc, user, target):
        raise NotFound()
    followers = request.url.path.endswith("/followers")
    people = await accounts.follow_list(svc, target, followers=followers)
    info = await accounts.profile(svc, target, user)
    return render(request, "follows.html", {"profile": info, "people": people, "followers": followers})
