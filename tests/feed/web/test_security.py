"""CSRF, cross-site checks, security headers and the shape of our HTML, through real HTTP requests to the app."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from feed.storage import tables
from tests.conftest import PASSWORD, snapshot

pytestmark = pytest.mark.anyio

ORIGIN = "http://testserver"
NEW_PASSWORD = "a brand new passphrase here"


async def count(app: Any, table: sa.Table) -> int:
    async with app.state.engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


class Page(HTMLParser):
    """The parts of a page these tests look at."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def check_markup(html: str, where: str) -> None:
    """No inline script, no style attribute or element, no inline event handler; htmx locked down."""
    page = parse(html)
    assert not page.inline_scripts, where
    for tag, attrs in page.tags:
        assert tag != "style", where
        assert "style" not in attrs, (where, tag, attrs)
        assert not [a for a in attrs if a.startswith("on")], (where, tag, attrs)
        if tag == "script":
            assert attrs.get("src", "").startswith("/static/"), (where, attrs)
    configs = [a["content"] for t, a in page.tags if t == "meta" and a.get("name") == "htmx-config"]
    if any(t == "html" for t, _ in page.tags):  # a full page, not a fragment
        assert len(configs) == 1, where
        config = json.loads(configs[0])
        assert config["allowEval"] is False
        assert config["historyCacheSize"] == 0
        assert config.get("allowScriptTags") is False
        assert config.get("selfRequestsOnly", True) is True


def csp_directives(response: httpx.Response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    out: dict[str, list[str]] = {}
    for directive in policy.split(";"):
        name, *values = directive.split()
        out[name.lower()] = values
    return out


def check_headers(response: httpx.Response, where: str, *, private: bool = True) -> None:
    csp = csp_directives(response)
    everything = " ".join(v for values in csp.values() for v in values)
    assert "'unsafe-inline'" not in everything, where
    assert "'unsafe-eval'" not in everything, where
    assert "*" not in everything.split(), where
    assert csp["frame-ancestors"] == ["'none'"], where
    assert csp.get("default-src") == ["'none'"] or csp.get("script-src") == ["'self'"], where
    for directive in ("script-src", "style-src"):
        assert directive in csp or csp["default-src"] == ["'none'"], where
    assert response.headers["x-content-type-options"] == "nosniff", where
    assert response.headers["referrer-policy"] in ("same-origin", "no-referrer", "strict-origin-when-cross-origin")
    if private:
        assert "no-store" in response.headers["cache-control"], where


# -- CSRF and cross-site requests


@dataclass
class World:
    alice: Any  # posted `post_id`, follows nobody
    bob: Any  # follows alice, liked her post
    anon: Any  # logged out, has the login form open
    post_id: int


async def world(make_browser: Any) -> World:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    post_id = await alice.compose("The original words")
    assert (await bob.post("/@alice/follow")).status_code == 303
    assert (await bob.post(f"/posts/{post_id}/like")).status_code == 303
    anon = await make_browser()
    await anon.get("/login")
    return World(alice, bob, anon, post_id)


def actions(w: World) -> list[tuple[Any, str, dict[str, str]]]:
    """Every state-changing form, each with data that would change something if it were let through."""
    p = w.post_id
    return [
        (w.alice, "/posts", {"status": "A forged post", "visibility": "public"}),
        (w.alice, f"/posts/{p}/edit", {"status": "Forged words", "spoiler_text": ""}),
        (w.alice, f"/posts/{p}/like", {}),
        (w.bob, f"/posts/{p}/unlike", {}),
        (w.alice, "/@bob/follow", {}),
        (w.bob, "/@alice/unfollow", {}),
        (w.alice, "/settings", {"display_name": "Forged", "bio": "forged", "email": "forged@example.com"}),
        (w.alice, f"/posts/{p}/delete", {"confirm": "yes"}),
        (
            w.alice,
            "/settings/password",
            {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "new_password_confirm": NEW_PASSWORD},
        ),
        (w.alice, "/logout", {}),
        (w.anon, "/login", {"username": "alice", "password": PASSWORD}),
        (w.anon, "/register", {"username": "mallory", "password": PASSWORD, "password_confirm": PASSWORD}),
    ]


def forged(variant: str, browser: Any, other: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(extra form fields, headers) for one kind of forged or cross-site request."""
    same = {"Origin": ORIGIN}
    return {
        "missing token": ({}, same),
        "empty token": ({"csrf_token": ""}, same),
        "wrong token": ({"csrf_token": "A" * 43}, same),
        "non-ascii token": ({"csrf_token": "é" * 43}, same),
        "another browser's token": ({"csrf_token": other.csrf}, same),
        "wrong header token": ({}, {**same, "X-CSRF-Token": "A" * 43, "HX-Request": "true"}),
        "cross-site fetch": ({"csrf_token": browser.csrf}, {**same, "Sec-Fetch-Site": "cross-site"}),
        "same-site fetch": ({"csrf_token": browser.csrf}, {**same, "Sec-Fetch-Site": "same-site"}),
        "foreign origin": ({"csrf_token": browser.csrf}, {"Origin": "https://evil.example"}),
        "null origin": ({"csrf_token": browser.csrf}, {"Origin": "null"}),
        "other port origin": ({"csrf_token": browser.csrf}, {"Origin": "http://testserver:8080"}),
    }[variant]


@pytest.mark.parametrize(
    "variant",
    [
        "missing token",
        "empty token",
        "wrong token",
        "non-ascii token",
        "another browser's token",
        "wrong header token",
        "cross-site fetch",
        "same-site fetch",
        "foreign origin",
        "null origin",
        "other port origin",
    ],
)
async def test_forged_and_cross_site_posts_are_refused_and_change_nothing(make_browser, app, variant):
    w = await world(make_browser)
    before = await snapshot(app)
    for browser, url, data in actions(w):
        other = w.bob if browser is not w.bob else w.alice
        fields, headers = forged(variant, browser, other)
        response = await browser.http.post(url, data={**data, **fields}, headers=headers)
        assert response.status_code == 403, (variant, url, response.status_code)
        assert "Traceback" not in response.text
        check_headers(response, url)
    assert await snapshot(app) == before
    # The same browsers are still logged in and unharmed.
    assert (await w.alice.http.get("/settings")).status_code == 200
    assert (await w.bob.http.get("/settings")).status_code == 200


async def test_the_csrf_refusal_is_a_clear_page(make_browser):
    alice = await make_browser("alice")
    response = await alice.http.post("/posts", data={"status": "hi"}, headers={"Origin": ORIGIN})
    assert response.status_code == 403
    assert "text/html" in response.headers["content-type"]
    assert "CSRF check failed" in response.text
    response = await alice.http.post(
        "/posts", data={"status": "hi", "csrf_token": alice.csrf}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403
    assert "Cross-site request refused" in response.text
    response = await alice.http.post(
        "/posts", data={"status": "hi", "csrf_token": alice.csrf}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert "Cross-origin request refused" in response.text


async def test_a_browser_without_cookies_cannot_post(make_browser, app):
    browser = await make_browser()
    page = await browser.get("/login")
    browser.http.cookies.clear()
    response = await browser.http.post(
        "/login", data={"csrf_token": browser.csrf, "username": "x", "password": "y"}, headers={"Origin": ORIGIN}
    )
    assert response.status_code == 403
    assert "cookies are off" in response.text
    assert page.status_code == 200
    assert await count(app, tables.throttle) == 0


async def test_every_form_works_with_its_token(make_browser, app):
    """The control for the refusals above: the same requests, with the right token, do change things."""
    w = await world(make_browser)
    for browser, url, data in actions(w):
        if url in ("/logout", "/login", "/register", "/settings/password"):
            continue  # covered in test_accounts; they would end the sessions the other rows use
        before = await snapshot(app)
        response = await browser.post(url, data)
        assert response.status_code == 303, (url, response.text)
        assert await snapshot(app) != before, url


async def test_the_csrf_header_works_instead_of_the_field(make_browser, app):
    """htmx sends the token in ``X-CSRF-Token`` (from ``hx-headers`` on <body>), not as a form field."""
    alice = await make_browser("alice")
    page = await alice.get("/")
    body = next(a for t, a in parse(page.text).tags if t == "body")
    assert json.loads(body["hx-headers"]) == {"X-CSRF-Token": alice.csrf}
    headers = {"X-CSRF-Token": alice.csrf, "HX-Request": "true", "Origin": ORIGIN}

    response = await alice.http.post("/posts", data={"status": "Sent by htmx"}, headers=headers)
    assert response.status_code == 200, response.text
    assert "Sent by htmx" in response.text
    assert await count(app, tables.posts) == 1
    async with app.state.engine.connect() as conn:
        post_id = await conn.scalar(sa.select(tables.posts.c.id))
    response = await alice.http.post(f"/posts/{post_id}/like", headers=headers)
    assert response.status_code == 200
    assert 'aria-pressed="true"' in response.text
    assert await count(app, tables.likes) == 1
    # Without Origin or Sec-Fetch-Site (an older browser, or a same-origin fetch), the token alone suffices.
    response = await alice.http.post(f"/posts/{post_id}/unlike", headers={"X-CSRF-Token": alice.csrf})
    assert response.status_code == 303
    assert await count(app, tables.likes) == 0
    response = await alice.http.post(f"/posts/{post_id}/like", headers={**headers, "Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 200


async def test_the_csrf_token_changes_with_the_session(make_browser):
    browser = await make_browser()
    await browser.get("/login")
    anonymous = browser.csrf
    await make_browser("alice")
    response = await browser.post("/login", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 303
    await browser.get("/")
    assert browser.csrf != anonymous
    # The token of the anonymous form no longer works now that the browser is logged in.
    response = await browser.http.post(
        "/posts", data={"status": "x", "csrf_token": anonymous}, headers={"Origin": ORIGIN}
    )
    assert response.status_code == 403


async def test_the_api_is_not_subject_to_the_cross_site_check(api):
    """Bearer-token requests carry no ambient credentials, so Origin does not matter there."""
    client = await api("alice")
    response = await client.post(
        "/api/v1/statuses", json={"status": "from a client"}, headers={"Origin": "https://client.example"}
    )
    assert response.status_code == 200, response.text


# -- headers


async def test_security_headers_and_no_store_on_every_page(make_browser):
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    post_id = await alice.compose("Private words @bob", visibility="followers")
    assert (await bob.post("/@alice/follow")).status_code == 303
    anon = await make_browser()
    pages = [
        (alice, "/"),
        (alice, "/public"),
        (alice, "/@alice"),
        (alice, "/@alice/followers"),
        (alice, f"/posts/{post_id}"),
        (alice, f"/posts/{post_id}/edit"),
        (alice, "/settings"),
        (bob, "/"),
        (bob, f"/posts/{post_id}"),
        (anon, "/"),
        (anon, "/login"),
        (anon, "/register"),
        (anon, "/public"),
        (anon, "/no/such/page"),
        (anon, f"/posts/{post_id}"),
    ]
    for browser, url in pages:
        response = await browser.get(url)
        assert response.status_code in (200, 404), url
        check_headers(response, url)
        check_markup(response.text, url)
    for url in ("/", f"/posts/{post_id}", "/@alice"):
        assert "Private words" in (await bob.get(url)).text, url  # the pages checked above really hold text


async def test_fragments_are_no_store(make_browser):
    alice = await make_browser("alice")
    hx = {"HX-Request": "true"}
    response = await alice.htmx_post("/posts", {"status": "Fragment words"})
    assert response.status_code == 200
    assert "Fragment words" in response.text
    check_headers(response, "posted fragment")
    check_markup(response.text, "posted fragment")
    post_id = int(response.text.split('id="post-', 1)[1].split('"', 1)[0])
    response = await alice.htmx_post(f"/posts/{post_id}/like")
    assert response.status_code == 200
    check_headers(response, "like fragment")
    response = await alice.http.get(f"/?max_id={post_id + 1}", headers=hx)
    assert response.status_code == 200
    assert "Fragment words" in response.text
    assert "<html" not in response.text
    check_headers(response, "timeline fragment")
    check_markup(response.text, "timeline fragment")
    response = await alice.htmx_post("/posts", {"status": ""})
    assert response.status_code == 422
    check_headers(response, "composer error fragment")
    response = await alice.htmx_post(f"/posts/{post_id}/delete")
    assert response.status_code == 200
    check_headers(response, "deleted fragment")


async def test_error_responses_carry_the_headers(make_browser):
    browser = await make_browser()
    await browser.get("/login")
    responses = {
        "403 middleware": await browser.http.post("/login", headers={"Sec-Fetch-Site": "cross-site"}),
        "403 csrf": await browser.http.post("/login", data={"csrf_token": "x"}),
        "404": await browser.get("/posts/1"),
        "413": await browser.http.post("/login", content=b"x" * 70_000),
        "422": await browser.get("/public?max_id=abc"),
    }
    for name, response in responses.items():
        assert response.status_code == int(name[:3]), name
        check_headers(response, name)


async def test_https_adds_hsts(app, clean):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://testserver") as http:
        response = await http.get("/login")
    assert "max-age=" in response.headers["strict-transport-security"]
    check_headers(response, "https login")


async def test_static_files_are_cacheable(make_browser):
    browser = await make_browser()
    page = parse((await browser.get("/login")).text)
    assets = [a["src"] for t, a in page.tags if t == "script"]
    assets += [a["href"] for t, a in page.tags if t == "link" and a.get("rel") == "stylesheet"]
    assert len(assets) >= 3
    for url in assets:
        response = await browser.http.get(url)
        assert response.status_code == 200, url
        cache = response.headers["cache-control"]
        assert "no-store" not in cache and "private" not in cache, url
        assert "max-age=" in cache and int(cache.split("max-age=")[1].split(",")[0]) > 0, url
        assert response.headers["x-content-type-options"] == "nosniff"
    missing = await browser.http.get("/static/nope.js")
    assert missing.status_code == 404
    assert "max-age" not in missing.headers.get("cache-control", "")
