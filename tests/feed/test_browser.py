"""End to end in a real browser: Debian's Chromium driven by Playwright against ``python -m feed serve``.

The server is started as a user would start it (embedded SQLite, a fresh data dir, no database URL), and two
browser contexts play two people. The test checks what only a browser can: htmx swaps in place, the live character
counter, the confirm dialog, infinite scroll, the strict CSP (no console errors), and that every action still works
as a plain form with JavaScript off. Screenshots of the home timeline go to /tmp/cipherfeed-shots/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKEND
from tests.feed.processes import free_port

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path("/tmp/cipherfeed-shots")
PASSWORD = "correct horse battery staple"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Runs in every page before its own scripts (injected by the driver, so the CSP does not apply to it): turns CSP
# violations into console errors, which the test already fails on.
CSP_REPORTER = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"cipherfeed serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"cipherfeed serve did not answer /healthz within {timeout}s:\n{log.read_text()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """``python -m feed serve`` on a free port with a fresh data dir; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")}
    env["CIPHERFEED_DATA_DIR"] = str(tmp_path / "data")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "feed", "serve", "--port", str(port), "--no-access-log"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Anything logged at ERROR (an unhandled exception on some request) fails the test.
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): no browser to drive")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


class Console:
    """Collects console errors, uncaught exceptions and failed requests of every page it watches."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def watch(self, page: Any) -> Any:
        page.on("console", lambda msg: msg.type == "error" and self.problems.append(f"{page.url}: {msg.text}"))
        page.on("pageerror", lambda exc: self.problems.append(f"{page.url}: uncaught {exc}"))
        page.on("requestfailed", self._request_failed)
        return page

    def _request_failed(self, request: Any) -> None:
        if request.failure != "net::ERR_ABORTED":  # a navigation cancelling a fetch is not a fault
            self.problems.append(f"request failed: {request.url} {request.failure}")


def _new_page(browser: Any, base: str, console: Console, **options: Any) -> Any:
    context = browser.new_context(base_url=base, **options)
    context.set_default_timeout(5000)
    if options.get("java_script_enabled", True):
        context.add_init_script(CSP_REPORTER)
    return console.watch(context.new_page())


def _register(page: Any, username: str) -> None:
    from playwright.sync_api import expect

    page.goto("/register")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(re.compile(r"/\?notice=welcome$"))
    expect(page.locator(".notice")).to_contain_text("Welcome")


def _post_id(article: Any) -> int:
    return int(str(article.get_attribute("id")).removeprefix("post-"))


def _mark_document(page: Any) -> None:
    """A flag on window that a page load would wipe: proves later swaps happened without a reload."""
    page.evaluate("window.__noReload = true")


def _assert_not_reloaded(page: Any) -> None:
    assert page.evaluate("window.__noReload === true"), "the page was reloaded"


def test_two_people_in_a_real_browser(browser: Any, server: str) -> None:
    from playwright.sync_api import expect

    console = Console()
    alice = _new_page(browser, server, console, viewport={"width": 1280, "height": 900})
    bob = _new_page(browser, server, console, viewport={"width": 1280, "height": 900})

    # -- sign up, both through the form
    _register(alice, "alice")
    _register(bob, "bob")
    expect(alice.locator("#empty-home")).to_be_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    # (a screenshot leaves style="" on the focused fields: htmx must not copy it onto the new composer, see base.html)
    alice.screenshot(path=str(SHOTS / "home-empty-desktop.png"))

    # -- alice posts: the counter follows her typing, htmx puts the post on top, the composer empties
    box = alice.locator("#composer-status")
    counter = alice.locator("#composer-count")
    expect(counter).to_have_text("500")
    expect(alice.locator("#composer button[type=submit]")).to_be_disabled()
    _mark_document(alice)
    box.press_sequentially("Hello")
    expect(counter).to_have_text("495")
    box.press_sequentially(" from alice")
    expect(counter).to_have_text("484")
    alice.get_by_role("button", name="Post", exact=True).click()
    first = alice.locator("#timeline article.post").first
    expect(first).to_contain_text("Hello from alice")
    expect(box).to_have_value("")
    expect(counter).to_have_text("500")
    expect(alice.locator("#empty-home")).to_have_count(0)
    assert alice.url == f"{server}/?notice=welcome"
    _assert_not_reloaded(alice)
    post_id = _post_id(first)

    # a second post goes on top of the first one
    box.fill("Second thought")
    alice.get_by_role("button", name="Post", exact=True).click()
    expect(alice.locator("#timeline article.post").first).to_contain_text("Second thought")
    expect(alice.locator("#timeline article.post")).to_have_count(2)
    _assert_not_reloaded(alice)
    doomed_id = _post_id(alice.locator("#timeline article.post").first)

    # -- bob follows alice from her profile: the button and the follower count swap in place
    bob.goto("/@alice")
    _mark_document(bob)
    expect(bob.locator("#followers-count")).to_have_text("0")
    bob.get_by_role("button", name="Follow", exact=True).click()
    expect(bob.get_by_role("button", name="Unfollow", exact=True)).to_be_visible()
    expect(bob.locator("#followers-count")).to_have_text("1")
    assert bob.url == f"{server}/@alice"
    _assert_not_reloaded(bob)

    # -- bob's home now shows alice's post; he likes it in place
    bob.get_by_role("link", name="Home").click()
    bob.wait_for_url(f"{server}/")
    post = bob.locator(f"#post-{post_id}")
    expect(post).to_contain_text("Hello from alice")
    like = post.locator("button.like-button")
    expect(like).to_have_attribute("aria-pressed", "false")
    _mark_document(bob)
    like.click()
    expect(like).to_have_attribute("aria-pressed", "true")
    expect(like.locator(".count")).to_have_text("1")
    assert bob.url == f"{server}/"
    _assert_not_reloaded(bob)

    # -- bob replies from the thread page: the reply composer is prefilled with @alice
    post.get_by_role("link", name=re.compile("^Reply to")).click()
    bob.wait_for_url(f"{server}/posts/{post_id}#reply")
    reply_box = bob.locator("#reply textarea[name=status]")
    expect(reply_box).to_have_value("@alice ")
    expect(bob.locator("#composer-count")).to_have_text("494")  # "@alice", trimmed
    reply_box.press("End")
    reply_box.press_sequentially("welcome aboard")
    bob.get_by_role("button", name="Reply", exact=True).click()
    bob.wait_for_url(re.compile(rf"/posts/{post_id}#post-\d+$"))
    reply = bob.locator(".thread-replies article.post")
    expect(reply).to_have_count(1)
    expect(reply).to_contain_text("@alice welcome aboard")
    expect(bob.locator(".thread-focus .reply-link .count")).to_have_text("1")

    # -- alice edits her first post through the Edit link
    alice.locator(f"#post-{post_id}").get_by_role("link", name="Edit").click()
    alice.wait_for_url(f"{server}/posts/{post_id}/edit")
    editor = alice.get_by_label("Text")
    expect(editor).to_have_value("Hello from alice")
    editor.fill("Hello from alice, edited")
    alice.get_by_role("button", name="Save").click()
    alice.wait_for_url(f"{server}/posts/{post_id}?notice=edited")
    expect(alice.locator(".notice")).to_contain_text("updated")
    expect(alice.locator(".thread-focus .post-body")).to_have_text("Hello from alice, edited")
    expect(alice.locator(".thread-focus .edited")).to_be_visible()

    # -- alice deletes her second post: one confirm dialog, accepted, then it is gone in place
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    alice.on("dialog", accept)
    alice.goto("/")
    _mark_document(alice)
    doomed = alice.locator(f"#post-{doomed_id}")
    expect(doomed).to_contain_text("Second thought")
    doomed.get_by_role("button", name="Delete").click()
    expect(doomed).to_have_text("This post was deleted.")
    assert dialogs == ["Delete this post? This cannot be undone."]
    _assert_not_reloaded(alice)
    alice.reload()
    expect(alice.locator(f"#post-{doomed_id}")).to_have_count(0)
    expect(alice.get_by_text("Second thought")).to_have_count(0)
    alice.remove_listener("dialog", accept)

    # -- declining the dialog keeps the post
    dismissed: list[str] = []

    def dismiss(dialog: Any) -> None:
        dismissed.append(dialog.message)
        dialog.dismiss()

    alice.once("dialog", dismiss)
    alice.locator(f"#post-{post_id}").get_by_role("button", name="Delete").click()
    alice.wait_for_timeout(300)
    assert len(dismissed) == 1
    expect(alice.locator(f"#post-{post_id}")).to_contain_text("Hello from alice, edited")

    # -- infinite scroll: 25 more posts by plain form posts with her cookies, then scroll her profile
    csrf = alice.locator("#composer input[name=csrf_token]").input_value()
    for n in range(25):
        response = alice.request.post(
            "/posts", form={"csrf_token": csrf, "status": f"Numbered post {n:02d}"}, max_redirects=0
        )
        assert response.status == 303, response.text()
    alice.goto("/@alice")
    articles = alice.locator("#timeline article.post")
    expect(articles).to_have_count(20)
    expect(articles.first).to_contain_text("Numbered post 24")
    _mark_document(alice)
    for _ in range(10):
        alice.mouse.wheel(0, 4000)
        alice.wait_for_timeout(150)
        if articles.count() > 20:
            break
    expect(articles).to_have_count(26)  # 25 numbered + the edited first one
    expect(articles.last).to_contain_text("Hello from alice, edited")
    expect(alice.locator("#timeline .load-more")).to_have_count(0)
    assert alice.url == f"{server}/@alice"
    _assert_not_reloaded(alice)

    # -- settings: the optional bio is empty, yet the counter script leaves "Save profile" enabled
    alice.goto("/settings")
    expect(alice.locator("#bio-count")).to_have_text("500")
    expect(alice.get_by_role("button", name="Save profile")).to_be_enabled()

    # -- screenshots of the home timeline, desktop and phone
    bob.goto("/")
    expect(bob.locator("#timeline article.post").first).to_be_visible()
    bob.screenshot(path=str(SHOTS / "home-desktop.png"))
    phone = _new_page(
        browser,
        server,
        console,
        storage_state=bob.context.storage_state(),
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    phone.goto("/")
    expect(phone.locator("#timeline article.post").first).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390, "horizontal scroll on a phone"
    targets = ".post-actions a, .post-actions button, .site-nav a, .site-nav button, #composer button"
    heights = phone.evaluate(f"[...document.querySelectorAll('{targets}')].map(e => e.getBoundingClientRect().height)")
    assert heights and min(heights) >= 44, f"tap targets under 44 px on a phone: {sorted(heights)[:5]}"
    phone.screenshot(path=str(SHOTS / "home-mobile.png"))
    phone.goto("/@alice")
    phone.screenshot(path=str(SHOTS / "profile-mobile.png"))
    phone.goto(f"/posts/{post_id}")
    phone.screenshot(path=str(SHOTS / "thread-mobile.png"))
    phone.goto("/@alice/followers")
    expect(phone.locator("ul.people li").first).to_contain_text("@bob")
    assert phone.evaluate("getComputedStyle(document.querySelector('ul.people')).listStyleType") == "none"
    phone.context.close()

    # -- without JavaScript: log in, post from home and like, all as plain forms and redirects
    plain = _new_page(browser, server, console, java_script_enabled=False)
    plain.goto("/login")
    plain.get_by_label("Username").fill("bob")
    plain.get_by_label("Password").fill(PASSWORD)
    plain.get_by_role("button", name="Log in").click()
    plain.wait_for_url(f"{server}/")
    plain.locator("#composer-status").fill("Posted with scripts off")
    plain.locator("#composer-visibility").select_option("unlisted")
    plain.get_by_role("button", name="Post", exact=True).click()
    plain.wait_for_url(re.compile(r"/#post-\d+$"))  # back home, at the new post
    own_id = int(plain.url.rsplit("#post-", 1)[-1])
    expect(plain.locator("#timeline article.post").first).to_contain_text("Posted with scripts off")
    expect(plain.locator("#composer-visibility")).to_have_value("unlisted")  # the last audience is remembered
    mine = plain.locator(f"#post-{own_id} button.like-button")
    expect(mine).to_have_attribute("aria-pressed", "false")
    mine.click()
    plain.wait_for_url(f"{server}/#post-{own_id}")
    expect(mine).to_have_attribute("aria-pressed", "true")
    expect(mine.locator(".count")).to_have_text("1")
    mine.click()  # and unlike
    plain.wait_for_url(f"{server}/#post-{own_id}")
    expect(mine).to_have_attribute("aria-pressed", "false")
    expect(mine.locator(".count")).to_have_text("0")
    # without JS the sentinel of infinite scroll is a plain link to the older page
    plain.get_by_role("link", name="Older posts").click()
    plain.wait_for_url(re.compile(r"/\?max_id=\d+$"))
    expect(plain.locator(f"#post-{post_id}")).to_contain_text("Hello from alice, edited")
    older = plain.url
    old_like = plain.locator(f"#post-{post_id} button.like-button")
    expect(old_like).to_have_attribute("aria-pressed", "true")  # bob liked it with htmx before
    old_like.click()  # unlike, and come back to the same older page
    plain.wait_for_url(f"{older}#post-{post_id}")
    expect(old_like).to_have_attribute("aria-pressed", "false")
    expect(old_like.locator(".count")).to_have_text("0")
    plain.context.close()

    alice.screenshot(path=str(SHOTS / "profile-desktop.png"))
    alice.context.close()
    bob.context.close()
    assert console.problems == []


class NetworkConsole(Console):
    """A Console that sets aside what a page logs while the test holds its network down on purpose (the failed
    reconnections, and htmx's report of each), so that everything else still fails the test."""

    def __init__(self) -> None:
        super().__init__()
        self.offline = False
        self.expected: list[str] = []

    def watch(self, page: Any) -> Any:
        page.on("console", lambda msg: msg.type == "error" and self._add(f"{page.url}: {msg.text}"))
        page.on("pageerror", lambda exc: self.problems.append(f"{page.url}: uncaught {exc}"))
        page.on("requestfailed", self._request_failed)
        return page

    def _add(self, problem: str) -> None:
        (self.expected if self.offline else self.problems).append(problem)

    def _request_failed(self, request: Any) -> None:
        if request.failure != "net::ERR_ABORTED":
            self._add(f"request failed: {request.url} {request.failure}")


@pytest.mark.skipif(BACKEND != "sqlite", reason="an embedded server of its own: once, in the SQLite pass")
def test_the_timeline_is_live_in_two_browsers(browser: Any, server: str) -> None:
    """Alice and Bob follow each other; each sees the other's new posts, likes and deletions without a reload, a
    reader further down gets the "new posts" bar, and a browser that was offline catches up by itself."""
    from playwright.sync_api import expect

    console = NetworkConsole()
    alice = _new_page(browser, server, console, viewport={"width": 1280, "height": 900})
    bob = _new_page(browser, server, console, viewport={"width": 1280, "height": 900})
    _register(alice, "alice")
    _register(bob, "bob")
    for page, other in ((alice, "bob"), (bob, "alice")):
        page.goto(f"/@{other}")
        page.get_by_role("button", name="Follow", exact=True).click()
        expect(page.get_by_role("button", name="Unfollow", exact=True)).to_be_visible()
        page.goto("/")
        _mark_document(page)
    live_open = "document.querySelector('#live') !== null"
    assert alice.evaluate(live_open) and bob.evaluate(live_open)
    alice.wait_for_timeout(500)  # both streams are open

    # alice posts through the composer: it slides into bob's timeline (he is at the top)
    alice.locator("#composer-status").fill("Live from alice")
    alice.get_by_role("button", name="Post", exact=True).click()
    expect(alice.locator("#timeline article.post").first).to_contain_text("Live from alice")
    arrived = bob.locator("#timeline article.post").first
    expect(arrived).to_contain_text("Live from alice")
    post_id = _post_id(arrived)
    expect(alice.locator(f"#post-{post_id}")).to_have_count(1)  # the composer's answer and the event: once

    # bob posts: alice sees it; bob likes alice's post: alice's count follows
    bob.locator("#composer-status").fill("And bob answers")
    bob.get_by_role("button", name="Post", exact=True).click()
    expect(alice.locator("#timeline article.post").first).to_contain_text("And bob answers")
    bob.locator(f"#post-{post_id} button.like-button").click()
    expect(bob.locator(f"#post-{post_id} button.like-button")).to_have_attribute("aria-pressed", "true")
    expect(alice.locator(f"#post-{post_id} .like-button .count")).to_have_text("1")

    # alice edits in another tab (a plain form post): bob's copy changes in place
    csrf = alice.locator("#composer input[name=csrf_token]").input_value()
    edited = alice.request.post(f"/posts/{post_id}/edit", form={"csrf_token": csrf, "status": "Live, edited"},
                                max_redirects=0)  # fmt: skip
    assert edited.status == 303
    expect(bob.locator(f"#post-{post_id} .post-body")).to_have_text("Live, edited")
    expect(bob.locator(f"#post-{post_id} .edited")).to_be_visible()

    # bob reads further down: alice's next post waits behind the bar, which reveals it on click
    for n in range(24):
        response = alice.request.post("/posts", form={"csrf_token": csrf, "status": f"Filler {n:02d}"},
                                      max_redirects=0)  # fmt: skip
        assert response.status == 303
    expect(bob.locator("#timeline article.post")).to_have_count(26)
    for _ in range(20):  # (not wait_for_function: it evaluates a string, which the CSP forbids)
        bob.mouse.wheel(0, 2500)
        bob.wait_for_timeout(100)
        if bob.evaluate("window.scrollY") > 1000:
            break
    alice.request.post("/posts", form={"csrf_token": csrf, "status": "While bob reads"}, max_redirects=0)
    bar = bob.locator("#live .new-posts")
    expect(bar).to_have_text("1 new post")
    expect(bob.get_by_text("While bob reads")).to_have_count(0)
    assert bob.evaluate("window.scrollY") > 1000, "the reader was not moved"
    bar.click()
    expect(bob.get_by_text("While bob reads")).to_be_visible()
    expect(bar).to_be_hidden()

    # alice deletes her first post: it goes from bob's page
    alice.on("dialog", lambda dialog: dialog.accept())
    alice.goto(f"/posts/{post_id}")
    alice.locator(f"#post-{post_id}").get_by_role("button", name="Delete").click()
    expect(alice.locator(f"#post-{post_id}")).to_have_text("This post was deleted.")
    expect(bob.locator(f"#post-{post_id}")).to_have_text("This post was deleted.")

    # bob goes offline; alice posts twice; back online, bob's page shows both, once each
    bob.evaluate("window.scrollTo(0, 0)")
    console.offline = True
    bob.context.set_offline(True)
    bob.wait_for_timeout(500)
    for text in ("Missed one", "Missed two"):
        alice.request.post("/posts", form={"csrf_token": csrf, "status": text}, max_redirects=0)
    bob.wait_for_timeout(500)
    bob.context.set_offline(False)
    expect(bob.get_by_text("Missed two")).to_be_visible(timeout=15000)
    expect(bob.get_by_text("Missed one")).to_have_count(1)
    expect(bob.get_by_text("Missed two")).to_have_count(1)
    console.offline = False
    bob.wait_for_timeout(300)
    _assert_not_reloaded(bob)
    SHOTS.mkdir(parents=True, exist_ok=True)
    bob.screenshot(path=str(SHOTS / "live-home.png"))
    alice.context.close()
    bob.context.close()
    assert console.problems == []
    assert all("ERR_INTERNET_DISCONNECTED" in p or "sseError" in p or "/events" in p for p in console.expected), (
        console.expected
    )


def test_notifications_arrive_live_and_bookmarks_keep_posts(browser: Any, server: str) -> None:
    """Bob follows and likes alice's post: the count beside "Notifications" goes up on the page she has open, without a
    reload; her notifications page says what happened and clears the count. Bob bookmarks the post and finds it on
    his bookmarks page."""
    from playwright.sync_api import expect

    console = Console()
    alice = _new_page(browser, server, console, viewport={"width": 1280, "height": 900})
    bob = _new_page(browser, server, console, viewport={"width": 1280, "height": 900})
    _register(alice, "alice")
    _register(bob, "bob")
    alice.locator("#composer-status").fill("Worth keeping")
    alice.get_by_role("button", name="Post", exact=True).click()
    post_id = _post_id(alice.locator("#timeline article.post").first)
    alice.goto("/public")
    _mark_document(alice)
    badge = alice.locator("#unread-count")
    expect(badge).to_be_hidden()
    alice.wait_for_timeout(500)  # her stream is open

    bob.goto("/@alice")
    bob.get_by_role("button", name="Follow", exact=True).click()
    expect(badge).to_be_visible()
    expect(badge).to_contain_text("1")
    post = bob.locator(f"#post-{post_id}")
    post.locator("button.like-button").click()
    expect(post.locator("button.like-button")).to_have_attribute("aria-pressed", "true")
    expect(badge).to_contain_text("2")
    _assert_not_reloaded(alice)

    post.get_by_role("button", name="Bookmark").click()
    expect(post.locator("button.bookmark-button")).to_have_attribute("aria-pressed", "true")
    bob.get_by_role("link", name="Bookmarks").click()
    expect(bob.locator(f"#post-{post_id}")).to_contain_text("Worth keeping")

    alice.get_by_role("link", name=re.compile(r"^Notifications")).click()
    lines = alice.locator(".notification-line")
    expect(lines).to_have_count(2)
    expect(lines.nth(0)).to_contain_text("bob liked your post")
    expect(lines.nth(1)).to_contain_text("bob followed you")
    expect(alice.locator("#unread-count")).to_be_hidden()
    SHOTS.mkdir(parents=True, exist_ok=True)
    alice.screenshot(path=str(SHOTS / "notifications.png"))
    alice.context.close()
    bob.context.close()
    assert console.problems == []


def test_a_session_ended_in_another_tab_keeps_the_draft(browser: Any, server: str) -> None:
    """Logged out in a second tab, the first tab's Post is refused: the page says so and keeps the draft; logging in
    again in a new tab and coming back, the same press posts it."""
    from playwright.sync_api import expect

    console = NetworkConsole()
    first = _new_page(browser, server, console, viewport={"width": 1280, "height": 900})
    _register(first, "alice")
    draft = first.locator("#composer-status")
    draft.fill("A draft I care about")
    second = console.watch(first.context.new_page())
    second.goto("/")
    console.offline = True  # from here until she is back: the pages' streams end, and the refused post is logged
    second.get_by_role("button", name="Log out").click()
    second.wait_for_url(re.compile(r"/login"))
    second.close()

    first.bring_to_front()
    first.get_by_role("button", name="Post", exact=True).click()
    banner = first.locator("#session-ended")
    expect(banner).to_contain_text("Your session has ended")
    expect(draft).to_have_value("A draft I care about")
    with first.context.expect_page() as opened:
        banner.get_by_role("link", name="Log in again in a new tab").click()
    login = console.watch(opened.value)
    login.get_by_label("Username").fill("alice")
    login.get_by_label("Password").fill(PASSWORD)
    login.get_by_role("button", name="Log in").click()
    login.wait_for_url(re.compile(r"notice=back"))
    expect(login.locator(".notice")).to_contain_text("go back to it")
    login.close()

    first.bring_to_front()
    first.evaluate("window.dispatchEvent(new Event('focus'))")  # coming back to the tab
    expect(banner).to_contain_text("You are logged in again")
    console.offline = False
    first.get_by_role("button", name="Post", exact=True).click()
    expect(first.locator("#timeline article.post").first).to_contain_text("A draft I care about")
    expect(draft).to_have_value("")
    first.context.close()
    assert console.problems == []
    assert all("403" in p or "[object Event]" in p for p in console.expected), console.expected


def test_a_boost_a_follow_request_and_a_block_in_a_real_browser(browser: Any, server: str) -> None:
    """Carol boosts alice's post: it arrives live in bob's home (he follows carol) under "carol boosted". Alice locks
    her account; carol's follow waits until alice approves it on her follow requests page. Then alice blocks bob:
    her post is gone from his pages and her profile is not found."""
    from playwright.sync_api import expect

    console = Console()
    alice, bob, carol = (_new_page(browser, server, console, viewport={"width": 1280, "height": 900}) for _ in range(3))
    for page, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        _register(page, name)
    alice.locator("#composer-status").fill("Pass this on")
    alice.get_by_role("button", name="Post", exact=True).click()
    post_id = _post_id(alice.locator("#timeline article.post").first)
    bob.goto("/@carol")
    bob.get_by_role("button", name="Follow", exact=True).click()
    expect(bob.get_by_role("button", name="Unfollow", exact=True)).to_be_visible()
    bob.goto("/")
    _mark_document(bob)
    bob.wait_for_timeout(500)  # his stream is open

    carol.goto("/@alice")
    carol.locator(f"#post-{post_id} button.boost-button").click()
    expect(carol.locator(f"#post-{post_id} button.boost-button")).to_have_attribute("aria-pressed", "true")
    arrived = bob.locator("#timeline > li").first
    expect(arrived.locator(".boosted-by")).to_have_text(re.compile(r"carol\s+boosted"))
    expect(arrived.locator(f"#post-{post_id}")).to_contain_text("Pass this on")
    _assert_not_reloaded(bob)
    SHOTS.mkdir(parents=True, exist_ok=True)
    bob.screenshot(path=str(SHOTS / "boosted.png"))

    # A locked account: carol asks, alice approves.
    carol.locator(f"#post-{post_id} button.boost-button").click()  # undone
    expect(carol.locator(f"#post-{post_id} button.boost-button")).to_have_attribute("aria-pressed", "false")
    alice.goto("/settings")
    alice.get_by_label("Approve new followers by hand").check()
    alice.get_by_role("button", name="Save profile").click()
    carol.goto("/@alice")
    carol.get_by_role("button", name="Ask to follow").click()
    expect(carol.get_by_role("button", name="Cancel follow request")).to_be_visible()
    alice.goto("/follow_requests")
    alice.get_by_role("button", name="Approve").click()
    expect(alice.get_by_text("Nobody is waiting for your approval.")).to_be_visible()
    carol.reload()
    expect(carol.get_by_role("button", name="Unfollow", exact=True)).to_be_visible()

    # A block: bob no longer sees alice anywhere.
    bob.goto("/public")
    expect(bob.locator(f"#post-{post_id}")).to_be_visible()
    alice.on("dialog", lambda dialog: dialog.accept())
    alice.goto("/@bob")
    alice.get_by_role("button", name="Block", exact=True).click()
    expect(alice.get_by_text("You blocked @bob")).to_be_visible()
    bob.reload()
    expect(bob.locator(f"#post-{post_id}")).to_have_count(0)
    response = bob.goto("/@alice")
    assert response is not None and response.status == 404
    for page in (alice, bob, carol):
        page.context.close()
    assert [p for p in console.problems if "/@alice" not in p or "404" not in p] == []


def test_an_image_with_alt_text_lazy_loads_with_its_placeholder_and_opens(
    browser: Any, server: str, tmp_path: Path
) -> None:
    """Alice attaches a photo with the picker and another by dropping it on the composer, describes each, and posts.
    Bob's home page draws the post further down: its images are not fetched until he scrolls to them (lazy), their
    blurhash is painted meanwhile, then they load. Clicking one opens the lightbox with its alt text."""
    from playwright.sync_api import expect

    from tests.feed.test_media_images import jpeg_with_gps_and_rotation

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_with_gps_and_rotation(1200, 800))
    console = Console()
    alice = _new_page(browser, server, console, viewport={"width": 1000, "height": 800})
    bob = _new_page(browser, server, console, viewport={"width": 1000, "height": 600})
    _register(alice, "alice")
    _register(bob, "bob")
    bob.goto("/@alice")
    bob.get_by_role("button", name="Follow", exact=True).click()
    bob.goto("/settings")  # no live timeline: the images must not reach his browser before his home page asks

    alice.goto("/")
    expect(alice.locator(".attach-button")).to_be_visible()
    alice.locator(".attach-file").set_input_files(str(photo))
    first = alice.locator(".composer-media .attachment").nth(0)
    expect(first).to_have_attribute("data-state", "ready", timeout=20000)
    first.get_by_label("Describe this image").fill("red above, blue below")
    alice.evaluate(
        """async (data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const drop = new DataTransfer();
            drop.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
            const target = document.getElementById("composer-status");
            target.dispatchEvent(new DragEvent("dragover", { bubbles: true, cancelable: true, dataTransfer: drop }));
            target.dispatchEvent(new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: drop }));
        }""",
        __import__("base64").b64encode(photo.read_bytes()).decode(),
    )
    second = alice.locator(".composer-media .attachment").nth(1)
    expect(second).to_have_attribute("data-state", "ready", timeout=20000)
    second.get_by_label("Describe this image").fill("the same, dropped")
    alice.get_by_role("button", name="Post", exact=True).click()
    mine = alice.locator("#timeline article.post").first
    expect(mine.locator(".media-item img")).to_have_count(2)
    expect(alice.locator(".composer-media .attachment")).to_have_count(0)  # a fresh composer
    post_id = _post_id(mine)
    for n in range(12):  # newer posts above it: on bob's page it is far below the fold (past Chromium's margin)
        alice.locator("#composer-status").fill(f"later words {n} " + "and more " * 50)
        alice.get_by_role("button", name="Post", exact=True).click()
        expect(alice.locator("#timeline article.post").first).to_contain_text(f"later words {n}")

    fetched: list[str] = []
    bob.on("request", lambda request: "/media/" in request.url and fetched.append(request.url))
    bob.goto("/")
    post = bob.locator(f"#post-{post_id}")
    expect(post).to_have_count(1, timeout=10000)
    expect(post.locator("canvas.media-placeholder")).to_have_count(2)
    bob.wait_for_timeout(300)
    assert fetched == [], f"fetched before it was scrolled to: {fetched}"
    image = post.locator(".media-item img").first
    assert image.get_attribute("loading") == "lazy" and image.get_attribute("width") == "800"
    post.scroll_into_view_if_needed()
    bob.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    expect(post.locator("canvas.media-placeholder")).to_have_count(0)
    assert any("/media/" in url for url in fetched)

    SHOTS.mkdir(parents=True, exist_ok=True)
    post.screenshot(path=str(SHOTS / "images.png"))
    post.locator(".media-item").first.click()
    box = bob.locator("dialog#lightbox")
    expect(box).to_be_visible()
    expect(box.locator("figcaption")).to_have_text("red above, blue below")
    big = box.locator("img")
    assert re.search(r"/media/\d+/large$", str(big.get_attribute("src")))
    bob.wait_for_function("(img) => img.complete && img.naturalWidth === 800", arg=big.element_handle())
    bob.screenshot(path=str(SHOTS / "lightbox.png"))
    bob.keyboard.press("Escape")
    expect(box).to_be_hidden()
    alice.context.close()
    bob.context.close()
    assert console.problems == []
