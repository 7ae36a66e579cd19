"""Bad input through real HTTP: each gets a clear 4xx, never a 500 or a traceback, and nothing stored changes."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from feed.storage import tables
from tests.conftest import PASSWORD, forget_cached, snapshot

pytestmark = pytest.mark.anyio

ORIGIN = {"Origin": "http://testserver"}
FORM = {**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}


def refused(response: httpx.Response, status: int | tuple[int, ...], message: str = "") -> None:
    """A clear client error: the expected status, a page or JSON that says why, no traceback."""
    expected = status if isinstance(status, tuple) else (status,)
    assert response.status_code in expected, (response.status_code, response.text[:2000])
    assert "Traceback" not in response.text and 'File "' not in response.text
    kind = response.headers.get("content-type", "")
    assert kind.startswith(("text/html", "application/json", "text/plain")), kind
    if message:
        assert message in response.text, response.text


async def raw_post(browser: Any, url: str, body: bytes, **headers: str) -> httpx.Response:
    return await browser.http.post(url, content=body, headers={**FORM, **headers})


# -- post text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Text can&#39;t be blank"),
        ("   \n\t \r\n  ", "Text can&#39;t be blank"),
        ("\u3000\u00a0", "Text can&#39;t be blank"),
        ("x" * 501, "Text is too long (501 characters, at most 500)"),
        ("😀" * 501, "Text is too long (501 characters, at most 500)"),
        ("e\u0301" * 501, "Text is too long (501 characters, at most 500)"),
        ("a\x00b", "Text contains control characters"),
        ("ring \x07 the bell", "Text contains control characters"),
        ("escape \x1b[31m red", "Text contains control characters"),
        ("nonchar \ufffe here", "Text contains control characters"),
        ("nonchar \U0001ffff here", "Text contains control characters"),
        ("line\u2028separator", "Text contains control characters"),
        ("delete \x7f", "Text contains control characters"),
    ],
)
async def test_bad_post_text_is_refused(make_browser, app, text, message):
    alice = await make_browser("alice")
    before = await snapshot(app)
    response = await alice.post("/posts", {"status": text})
    refused(response, 422, message)
    assert 'aria-invalid="true"' in response.text
    response = await alice.htmx_post("/posts", {"status": text})
    refused(response, 422, message)
    assert response.headers["HX-Retarget"] == "#composer"
    assert await snapshot(app) == before


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("x" * 500, "x" * 500),
        ("😀" * 500, "😀" * 500),
        ("e\u0301" * 500, "\u00e9" * 500),  # 1000 code points typed, 500 after NFC
        ("  padded  \n", "padded"),
        ("bidi \u202eoverride\u202c is format, not control", "bidi \u202eoverride\u202c is format"),
        ("zwj 👩\u200d💻 and tab\there", "zwj 👩\u200d💻 and tab\there"),
    ],
)
async def test_text_at_the_limits_is_accepted(make_browser, text, shown):
    alice = await make_browser("alice")
    post_id = await alice.compose(text)
    page = await alice.get(f"/posts/{post_id}")
    assert shown in page.text
    assert len(unicodedata.normalize("NFC", text).strip()) <= 500


async def test_bad_content_warning_is_refused(make_browser, app):
    alice = await make_browser("alice")
    before = await snapshot(app)
    for cw, message in [
        ("w" * 201, "Content warning is too long"),
        ("two\nlines", "Content warning contains control characters"),
        ("nul\x00", "Content warning contains control characters"),
    ]:
        refused(await alice.post("/posts", {"status": "fine", "spoiler_text": cw}), 422, message)
    assert await snapshot(app) == before


async def test_bad_visibility_and_direct_posts_without_a_mention(make_browser, app):
    alice = await make_browser("alice")
    await make_browser("bob")
    before = await snapshot(app)
    message = "A direct post needs at least one @mention of an existing user"
    for text in ("no mention at all", "@nobody is not a user", "@alice is myself", "email bob@example.com"):
        refused(await alice.post("/posts", {"status": text, "visibility": "direct"}), 422, message)
    for visibility in ("secret", "", "PUBLIC", "public\x00"):
        response = await alice.post("/posts", {"status": "hello", "visibility": visibility})
        refused(response, 422, "Visibility must be public, unlisted, followers or direct")
    assert await snapshot(app) == before
    post_id = await alice.compose("@bob just for you", visibility="direct")
    assert "just for you" in (await alice.get(f"/posts/{post_id}")).text


# -- bodies that are not text


async def test_invalid_utf8_in_a_urlencoded_body(make_browser, app):
    alice = await make_browser("alice")
    token = alice.csrf.encode()
    before = await snapshot(app)
    for body in (
        b"csrf_token=" + token + b"&status=%FF%FE",
        b"csrf_token=" + token + b"&status=ok%C3",
        b"csrf_token=" + token + b"&status=%ED%A0%80",  # an encoded surrogate
        b"csrf_token=" + token + b"&status=\xff\xfe",
        b"status=%FF%FE&csrf_token=" + token,
    ):
        refused(await raw_post(alice, "/posts", body), 400, "The form data is not valid UTF-8")
    refused(await raw_post(alice, "/settings", b"csrf_token=" + token + b"&bio=%C0%AF"), 400, "not valid UTF-8")
    refused(await raw_post(alice, "/login", b"csrf_token=" + token + b"&username=%FF"), 400, "not valid UTF-8")
    assert await snapshot(app) == before
    # Raw UTF-8 that a client did not percent-encode is still UTF-8.
    response = await raw_post(alice, "/posts", b"csrf_token=" + token + "&status=crème brûlée".encode())
    assert response.status_code == 303
    assert "crème brûlée" in (await alice.get(response.headers["location"])).text


def multipart(fields: list[tuple[bytes, bytes]], boundary: bytes = b"XyZ") -> bytes:
    parts = [b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + k + b'"\r\n\r\n' + v for k, v in fields]
    return b"\r\n".join(parts) + b"\r\n--" + boundary + b"--\r\n"


async def test_invalid_utf8_and_files_in_a_multipart_body(make_browser, app):
    alice = await make_browser("alice")
    token = alice.csrf.encode()
    kind = "multipart/form-data; boundary=XyZ"
    before = await snapshot(app)
    body = multipart([(b"csrf_token", token), (b"status", b"caf\xe9")])
    refused(await raw_post(alice, "/posts", body, **{"Content-Type": kind}), 400, "not valid UTF-8")
    body = multipart([(b"csrf_token", token), (b"st\xffatus", b"ok")])
    refused(await raw_post(alice, "/posts", body, **{"Content-Type": kind}), 400, "not valid UTF-8")
    body = multipart([(b"csrf_token", token), (b"status", "café".encode("latin-1"))])
    latin = "multipart/form-data; boundary=XyZ; charset=latin-1"
    refused(await raw_post(alice, "/posts", body, **{"Content-Type": latin}), 400)
    refused(await raw_post(alice, "/posts", b"--XyZ\r\nnot a part", **{"Content-Type": kind}), 400)
    refused(await raw_post(alice, "/posts", body, **{"Content-Type": "multipart/form-data"}), 400)
    response = await alice.http.post(
        "/posts", data={"csrf_token": alice.csrf, "status": "x"}, files={"upload": ("a.txt", b"hi")}, headers=ORIGIN
    )
    refused(response, 400)
    assert await snapshot(app) == before
    body = multipart([(b"csrf_token", token), (b"status", "café €".encode())])
    response = await raw_post(alice, "/posts", body, **{"Content-Type": kind})
    assert response.status_code == 303, response.text
    assert "café €" in (await alice.get(response.headers["location"])).text


async def test_broken_json_bodies(make_browser, app):
    alice = await make_browser("alice")
    token = alice.csrf
    json_kind = {"Content-Type": "application/json"}
    before = await snapshot(app)
    cases = [
        (b"{not json", "The body is not valid JSON"),
        (b'{"status": "\xff"}', "The body is not valid JSON"),
        (b'["status"]', "The JSON body must be an object"),
        (b"[" * 100_00 + b"]" * 100_00, ""),
        (f'{{"csrf_token": "{token}", "status": "lone \\ud800 surrogate"}}'.encode(), "not valid UTF-8"),
        (f'{{"csrf_token": "{token}", "bio": "\\udfff"}}'.encode(), "not valid UTF-8"),
        (f'{{"csrf_token": "{token}", "status": ["a", "list"]}}'.encode(), "must be text"),
        (f'{{"csrf_token": "{token}", "status": true}}'.encode(), "must be text"),
    ]
    for body, message in cases:
        refused(await raw_post(alice, "/posts", body, **json_kind), (400, 413), message)
    # A JSON null is a missing field, not the text "None".
    response = await raw_post(alice, "/posts", f'{{"csrf_token": "{token}", "status": null}}'.encode(), **json_kind)
    refused(response, 422, "Text can&#39;t be blank")
    refused(await raw_post(alice, "/posts", b"status=x", **{"Content-Type": "text/csv"}), 400, "Unsupported")
    assert await snapshot(app) == before


async def test_too_many_fields(make_browser, app):
    alice = await make_browser("alice")
    before = await snapshot(app)
    body = b"csrf_token=" + alice.csrf.encode() + b"".join(b"&f%d=1" % i for i in range(60)) + b"&status=x"
    refused(await raw_post(alice, "/posts", body), 400, "The form has too many fields")
    assert await snapshot(app) == before


# -- the body limit


async def test_a_body_over_the_limit_is_413_with_content_length(make_browser, app, settings):
    alice = await make_browser("alice")
    before = await snapshot(app)
    body = b"csrf_token=" + alice.csrf.encode() + b"&status=" + b"x" * settings.max_body_bytes
    response = await raw_post(alice, "/posts", body)
    refused(response, 413, "too large")
    response = await alice.http.post("/posts", content=b"x", headers={**FORM, "Content-Length": "12abc"})
    assert response.status_code in (400, 413)
    assert await snapshot(app) == before
    # Just under the limit is read and judged on its content.
    body = b"csrf_token=" + alice.csrf.encode() + b"&status=" + b"x" * (settings.max_body_bytes - 200)
    refused(await raw_post(alice, "/posts", body), 422, "Text is too long")


async def test_a_chunked_body_over_the_limit_is_413(make_browser, app, settings):
    alice = await make_browser("alice")
    before = await snapshot(app)
    token = alice.csrf.encode()

    async def chunks(total: int) -> AsyncIterator[bytes]:
        yield b"csrf_token=" + token + b"&status="
        sent = 0
        while sent < total:
            yield b"y" * 4096
            sent += 4096

    request = alice.http.build_request("POST", "/posts", content=chunks(settings.max_body_bytes + 8192), headers=FORM)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    refused(await alice.http.send(request), 413, "too large")
    for url in ("/settings", "/login", f"/posts/{10**15}/edit"):
        request = alice.http.build_request("POST", url, content=chunks(settings.max_body_bytes * 2), headers=FORM)
        refused(await alice.http.send(request), 413, "too large")
    assert await snapshot(app) == before


# -- ids, paths and query strings


async def test_non_numeric_and_out_of_range_ids(make_browser, app):
    alice = await make_browser("alice")
    post_id = await alice.compose("a post to aim at")
    before = await snapshot(app)
    bad = ["abc", "-1", "0", "1e5", "12.5", "99999999999999999999", "9223372036854775808", "%C2%B2", "١٢"]
    for raw in bad:
        refused(await alice.get(f"/posts/{raw}"), 404)
        refused(await alice.get(f"/posts/{raw}/edit"), 404)
        for action in ("like", "unlike", "delete", "edit"):
            refused(await alice.post(f"/posts/{raw}/{action}", {"status": "x"}), 404)
        refused(await alice.post("/posts", {"status": "reply", "in_reply_to_id": raw}), (404, 422))
    for url in ("/", "/public", "/@alice"):
        for raw in ("abc", "-5", "1;DROP TABLE posts", "9" * 40):
            refused(await alice.get(f"{url}?max_id={raw}"), (400, 422), "max_id")
    refused(await alice.get(f"/posts/{post_id + 10**12}"), 404)
    refused(await alice.get("/posts/abc"), 404, "There is nothing here: it was deleted, or it is not visible to you.")
    assert await snapshot(app) == before


async def test_missing_posts_and_users(make_browser, app):
    alice = await make_browser("alice")
    before = await snapshot(app)
    missing = 10**15
    for action in ("like", "unlike", "delete"):
        refused(await alice.post(f"/posts/{missing}/{action}"), 404)
    refused(await alice.post(f"/posts/{missing}/edit", {"status": "x"}), 404)
    refused(await alice.get(f"/posts/{missing}/edit"), 404)
    refused(await alice.post("/posts", {"status": "reply", "in_reply_to_id": str(missing)}), 404)
    for name in ("nobody", "al%00ice", "a" * 200, "%F0%9F%98%80", "al%09ice"):
        refused(await alice.get(f"/@{name}"), 404)
        refused(await alice.get(f"/@{name}/followers"), 404)
        refused(await alice.post(f"/@{name}/follow"), 404)
    assert await snapshot(app) == before


async def test_following_yourself_is_refused(make_browser, app):
    alice = await make_browser("alice")
    before = await snapshot(app)
    refused(await alice.post("/@alice/follow"), 422, "You can&#39;t follow yourself")
    refused(await alice.post("/@ALICE/follow"), 422, "You can&#39;t follow yourself")
    refused(await alice.htmx_post("/@alice/follow"), 422)
    assert await snapshot(app) == before


async def test_replying_to_or_liking_a_post_you_may_not_see_is_404(make_browser, app):
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    secret = await alice.compose("followers only words", visibility="followers")
    letter = await alice.compose("a public post", visibility="public")
    before = await snapshot(app)
    response = await bob.post("/posts", {"status": "@alice replying anyway", "in_reply_to_id": str(secret)})
    refused(response, 404)
    assert "followers only words" not in response.text
    refused(await bob.post(f"/posts/{secret}/like"), 404)
    refused(await bob.get(f"/posts/{secret}"), 404)
    refused(await bob.post(f"/posts/{secret}/edit", {"status": "mine now"}), (403, 404))
    refused(await bob.post(f"/posts/{letter}/delete", {"confirm": "yes"}), 403)
    refused(await bob.post(f"/posts/{letter}/edit", {"status": "mine now"}), 403)
    # An invalid reply to an invisible post is still a 404, not a page that reveals the post.
    response = await bob.post("/posts", {"status": "", "in_reply_to_id": str(secret)})
    refused(response, 404)
    assert "followers only words" not in response.text
    assert await snapshot(app) == before


async def test_an_anonymous_post_goes_to_login(make_browser, app):
    browser = await make_browser()
    await browser.get("/login")
    before = await snapshot(app)
    response = await browser.post("/posts", {"status": "who am I"}, headers={"Referer": "http://testserver/public"})
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/public"
    assert await snapshot(app) == before


# -- sessions that ran out


async def test_an_expired_session_redirects_to_login_and_posts_nothing(make_browser, app):
    alice = await make_browser("alice")
    past = datetime.now(UTC) - timedelta(minutes=1)
    async with app.state.engine.begin() as conn:
        await conn.execute(tables.sessions.update().values(expires_at=past))
    await forget_cached(app)  # time passing would expire the cached session record the same way
    before = await snapshot(app)
    response = await alice.post("/posts", {"status": "written too late"}, headers={"Referer": "http://testserver/"})
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/login?") and "expired=1" in location
    page = await alice.get(location)
    assert page.status_code == 200
    assert "Your session has expired; log in again." in page.text
    # With htmx the page stays, with what was written: the answer says the session ended (static/js/app.js offers
    # to log in again in another tab).
    response = await alice.htmx_post("/posts", {"status": "written too late"})
    assert response.status_code == 401 and response.headers["X-Session-Ended"] == "1"
    assert "HX-Redirect" not in response.headers and "log in again" in response.text
    response = await alice.get("/settings")
    assert response.status_code == 303 and "expired=1" in response.headers["location"]
    assert "written too late" not in (await alice.get("/public")).text
    assert await snapshot(app) == before


# -- markup in what people write


PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
    "<a href=javascript:alert(1)>x</a>",
    "'><svg onload=alert(1)>",
]


class Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_escaped(html: str, where: str) -> str:
    """The page has none of the payloads as markup; returns its text, where they must appear as words."""
    for payload in PAYLOADS:
        if "<" in payload or '"' in payload:
            assert payload not in html, (where, payload)
    page = Markup()
    page.feed(html)
    page.close()
    for tag, attrs in page.tags:
        assert tag not in ("img", "svg", "iframe", "object", "embed"), (where, tag)
        assert not [name for name in attrs if name.startswith("on")], (where, tag, attrs)
        if tag == "script":
            assert attrs.get("src", "").startswith("/static/"), where
        for name in ("href", "src", "action", "formaction", "hx-get", "hx-post"):
            if name in attrs:
                value = attrs[name].strip().lower()
                assert value.startswith(("/", "#", "http://", "https://")), (where, tag, name, value)
                assert not value.startswith("//"), (where, tag, name, value)
    return "".join(page.text)


async def test_markup_in_posts_profiles_and_forms_is_escaped(make_browser, app):
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    everything = " ".join(PAYLOADS)
    response = await alice.post(
        "/settings",
        {"display_name": '"><img src=x onerror=alert(1)>', "bio": everything + " https://ok.example/a", "email": ""},
    )
    assert response.status_code == 303, response.text
    post_id = await alice.compose(
        everything + ' see https://example.com/x?a=1&b=<2> and http://x.example/"onmouseover=alert(1)',
        spoiler_text="<script>alert(1)</script>",
    )
    reply_id = await bob.compose("@alice " + everything, in_reply_to_id=str(post_id))
    assert (await bob.post("/@alice/follow")).status_code == 303
    fragment = await alice.htmx_post("/posts", {"status": everything})
    assert fragment.status_code == 200
    check_escaped(fragment.text, "posted fragment")
    assert "<script>alert(1)</script>" in check_escaped(fragment.text, "posted fragment")

    pages = [
        "/",
        "/public",
        "/@alice",
        f"/posts/{post_id}",
        f"/posts/{reply_id}",
        f"/posts/{post_id}/edit",
        "/settings",
        "/@alice/followers",
        "/@bob/following",
    ]
    for browser in (alice, bob):
        for url in pages:
            response = await browser.get(url)
            if response.status_code != 200:
                assert url.endswith("/edit") and browser is bob, url
                continue
            check_escaped(response.text, url)
    text = check_escaped((await bob.get(f"/posts/{post_id}")).text, "thread")
    for payload in PAYLOADS:
        assert payload in text  # shown as the words that were typed
    profile = await bob.get("/@alice")
    assert '"><img src=x onerror=alert(1)>' in check_escaped(profile.text, "profile")
    assert 'href="https://ok.example/a"' in profile.text
    thread = (await bob.get(f"/posts/{post_id}")).text
    assert 'href="https://example.com/x?a=1&amp;b="' in thread
    assert 'href="http://x.example/"' in thread
    # The edit form gives the author back exactly what they wrote, as text.
    edit = await alice.get(f"/posts/{post_id}/edit")
    assert "<script>alert(1)</script>" in check_escaped(edit.text, "edit")


async def test_markup_echoed_by_forms_is_escaped(make_browser):
    browser = await make_browser()
    await browser.get("/register")
    response = await browser.post(
        "/register", {"username": "<script>alert(1)</script>", "password": "x", "password_confirm": "x"}
    )
    refused(response, 422)
    check_escaped(response.text, "register")
    response = await browser.post(
        "/register", {"username": "ok_name", "password": "y" * 12, "email": '"><img src=x onerror=alert(1)>'}
    )
    refused(response, 422)
    check_escaped(response.text, "register email")
    response = await browser.post("/login", {"username": '"><img src=x onerror=alert(1)>', "password": "x"})
    refused(response, 401)
    check_escaped(response.text, "login")
    response = await browser.get('/login?next="><script>alert(1)</script>')
    check_escaped(response.text, "login next")
    response = await browser.get("/login?notice=<script>alert(1)</script>")
    check_escaped(response.text, "notice")
    response = await browser.get("/@<script>alert(1)</script>")
    refused(response, 404)
    check_escaped(response.text, "404")


async def test_a_refused_post_keeps_its_counter(make_browser):
    """Without JavaScript the counter is the server's: after a too-long post it says how far over it is."""
    alice = await make_browser("alice")
    for text, left in (("x" * 501, -1), ("e\u0301" * 503, -3), ("😀" * 520, -20)):
        response = await alice.post("/posts", {"status": text, "spoiler_text": "cw"})
        refused(response, 422, "Text is too long")
        assert f'title="Characters left">{left}</output>' in response.text
        assert 'aria-live="polite">198</output>' in response.text  # the content warning's


async def test_a_page_whose_session_ended_elsewhere_can_go_on_after_logging_in_again(make_browser, app):
    """Logged out in another tab: the first tab's next htmx post is refused as "session ended" (nothing posted);
    after logging in again, ``/session`` gives the new token, and the same post with it goes through."""
    alice = await make_browser("alice")
    home = (await alice.get("/")).text
    old_token = re.search(r'name="csrf_token" value="([^"]+)"', home).group(1)
    assert 'data-viewer="alice"' in home
    assert (await alice.post("/logout")).status_code == 303  # the other tab
    assert (await alice.get("/session")).json() == {"username": None, "csrf": None}
    htmx = {"HX-Request": "true"}
    answer = await alice.post("/posts", {"csrf_token": old_token, "status": "my draft"}, headers=htmx)
    assert answer.status_code == 403 and answer.headers["X-Session-Ended"] == "1"
    assert "session has ended" in answer.text
    # Without htmx the same form gets a page that says so.
    plain = await alice.post("/posts", {"csrf_token": old_token, "status": "my draft"})
    refused(plain, 403, "Your session has ended")
    # A forged token of someone logged in is still a forgery, not an ended session.
    await alice.get("/login")
    login = await alice.post("/login", {"username": "alice", "password": PASSWORD})
    assert login.status_code == 303
    forged = await alice.post("/posts", {"csrf_token": old_token, "status": "x"}, headers=htmx)
    assert forged.status_code == 403 and "X-Session-Ended" not in forged.headers
    state = (await alice.get("/session")).json()
    assert state["username"] == "alice" and state["csrf"] and state["csrf"] != old_token
    assert (await alice.get("/session")).headers["cache-control"] == "no-store"
    sent = await alice.post("/posts", {"csrf_token": state["csrf"], "status": "my draft"}, headers=htmx)
    assert sent.status_code == 200
    assert "my draft" in (await alice.get("/")).text
