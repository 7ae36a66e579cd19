"""Timelines and threads in HTML: who sees what, paging, and the htmx fragments."""

from __future__ import annotations

import re
from typing import Any

import pytest

pytestmark = pytest.mark.anyio


def post_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<article class="post[^"]*" id="post-(\d+)"', page)]


async def test_followers_only_post_is_invisible_to_non_followers(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    carol = await make_browser("carol")
    await bob.post("/@alice/follow")
    secret = await alice.compose("for my followers", visibility="followers")
    anonymous = await make_browser()
    for outsider in (carol, anonymous):
        assert (await outsider.get(f"/posts/{secret}")).status_code == 404
        for url in ("/", "/public", "/@alice"):
            assert "for my followers" not in (await outsider.get(url)).text
    assert "for my followers" in (await bob.get("/")).text
    assert "for my followers" in (await bob.get("/@alice")).text
    assert (await bob.get(f"/posts/{secret}")).status_code == 200
    assert "for my followers" not in (await bob.get("/public")).text


async def test_direct_post_reaches_only_the_mentioned(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    carol = await make_browser("carol")
    await carol.post("/@alice/follow")  # even a follower does not see a direct post to someone else
    dm = await alice.compose("@bob just between us", visibility="direct")
    assert (await bob.get(f"/posts/{dm}")).status_code == 200
    assert "just between us" in (await bob.get("/@alice")).text
    assert (await carol.get(f"/posts/{dm}")).status_code == 404
    assert "just between us" not in (await carol.get("/")).text
    assert "just between us" not in (await carol.get("/@alice")).text
    assert "just between us" in (await alice.get("/")).text


async def test_deleted_post_is_gone_for_everyone(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    post = await alice.compose("short-lived")
    await bob.post(f"/posts/{post}/like")
    assert (await alice.post(f"/posts/{post}/delete", {"confirm": "yes"})).status_code == 303
    for reader in (alice, bob, await make_browser()):
        assert (await reader.get(f"/posts/{post}")).status_code == 404
        assert "short-lived" not in (await reader.get("/public")).text
    assert (await bob.post(f"/posts/{post}/like")).status_code == 404


async def test_only_the_author_may_edit_or_delete(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    post = await alice.compose("mine")
    assert (await bob.post(f"/posts/{post}/edit", {"status": "yours now"})).status_code == 403
    assert (await bob.post(f"/posts/{post}/delete", {"confirm": "yes"})).status_code == 403
    assert (await bob.get(f"/posts/{post}/edit")).status_code == 403
    assert "mine" in (await bob.get(f"/posts/{post}")).text


async def test_home_pages_by_cursor_and_htmx_loads_the_next_page(make_browser: Any) -> None:
    alice = await make_browser("alice")
    created = [await alice.compose(f"post number {i}") for i in range(45)]
    first = await alice.get("/")
    ids = post_ids(first.text)
    assert ids == created[::-1][:20]
    more = re.search(r'hx-get="(/\?max_id=\d+)" hx-trigger="revealed"', first.text)
    assert more, "the page ends with a sentinel that loads older posts"
    fragment = await alice.http.get(more.group(1), headers={"HX-Request": "true"})
    assert "<html" not in fragment.text
    assert post_ids(fragment.text) == created[::-1][20:40]
    last = await alice.get(f"/?max_id={created[5]}")  # the no-JS link works too
    assert post_ids(last.text) == created[:5][::-1]
    assert "Older posts" not in last.text


async def test_thread_shows_ancestors_and_replies_in_order(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    root = await alice.compose("root post")
    reply = await bob.compose("@alice first reply", in_reply_to_id=str(root))
    nested = await alice.compose("@bob nested reply", in_reply_to_id=str(reply))
    second = await bob.compose("@alice second reply", in_reply_to_id=str(root))
    page = await bob.get(f"/posts/{reply}")
    assert post_ids(page.text) == [root, reply, nested]
    page = await bob.get(f"/posts/{root}")
    assert post_ids(page.text) == [root, reply, nested, second]
    assert 'name="status"' in page.text and "@alice " in page.text  # the reply box is prefilled
    root_article = page.text.split(f'id="post-{root}"', 1)[1].split("</article>", 1)[0]
    assert 'Reply <span class="count">2</span>' in root_article


async def test_reply_to_invisible_post_is_refused(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    hidden = await alice.compose("followers only", visibility="followers")
    response = await bob.post("/posts", {"status": "sneaky reply", "in_reply_to_id": str(hidden)})
    assert response.status_code == 404
    assert "sneaky reply" not in (await bob.get("/")).text


async def test_like_is_idempotent_and_swaps_in_place_with_htmx(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    post = await alice.compose("like me")
    for _ in range(2):
        response = await bob.htmx_post(f"/posts/{post}/like")
        assert response.status_code == 200
        assert "<html" not in response.text
        assert 'aria-pressed="true"' in response.text
        assert '<span class="count">1</span>' in response.text
    response = await bob.htmx_post(f"/posts/{post}/unlike")
    assert '<span class="count">0</span>' in response.text and 'aria-pressed="false"' in response.text
    response = await bob.post(f"/posts/{post}/like", {"next": "/@alice"})
    assert response.status_code == 303 and response.headers["location"].startswith("/@alice")
    assert '<span class="count">1</span>' in (await alice.get(f"/posts/{post}")).text


async def test_follow_counts_and_htmx_swap(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    response = await bob.htmx_post("/@alice/follow")
    assert "Unfollow" in response.text and 'id="followers-count" hx-swap-oob="true">1<' in response.text
    await bob.htmx_post("/@alice/follow")  # twice is still one follow
    profile = await alice.get("/@alice")
    assert 'id="followers-count">1<' in profile.text
    assert "@bob" in (await alice.get("/@alice/followers")).text
    assert "@alice" in (await alice.get("/@bob/following")).text
    response = await bob.htmx_post("/@alice/unfollow")
    assert ">Follow<" in response.text and 'id="followers-count" hx-swap-oob="true">0<' in response.text


async def test_htmx_post_prepends_and_resets_composer(make_browser: Any) -> None:
    alice = await make_browser("alice")
    response = await alice.htmx_post("/posts", {"status": "via htmx"})
    assert response.status_code == 200
    assert "via htmx" in response.text and 'hx-swap-oob="true"' in response.text
    bad = await alice.htmx_post("/posts", {"status": "x" * 501})
    assert bad.status_code == 422
    assert bad.headers["HX-Retarget"] == "#composer"
    assert "too long" in bad.text and "x" * 501 in bad.text  # the draft is kept


async def test_empty_states_say_what_to_do(make_browser: Any) -> None:
    alice = await make_browser("alice")
    assert "Your home timeline is empty" in (await alice.get("/")).text
    assert "Nothing here yet" in (await alice.get("/public")).text
    welcome = await (await make_browser()).get("/")
    assert "Create an account" in welcome.text


async def test_direct_post_from_a_stranger_reaches_the_home_timeline(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    await alice.compose("@bob hello stranger", visibility="direct")
    await alice.compose("@bob a public mention")
    home = (await bob.get("/")).text
    assert "hello stranger" in home
    assert "a public mention" not in home  # public posts of people bob does not follow stay out


async def test_swapped_like_button_keeps_the_page_as_next(make_browser: Any) -> None:
    """htmx swaps the button alone: the form around it, with the page to come back to without JavaScript, stays."""
    alice = await make_browser("alice")
    post = await alice.compose("like me later")
    page = (await alice.get("/@alice")).text
    assert 'name="next" value="/@alice"' in page and f'formaction="/posts/{post}/like"' in page
    response = await alice.post(f"/posts/{post}/like", {"next": "/@alice"}, headers={"HX-Request": "true"})
    assert response.text.strip().startswith("<button") and "<form" not in response.text
    assert f'formaction="/posts/{post}/unlike"' in response.text and f'hx-post="/posts/{post}/unlike"' in response.text


async def test_cached_home_timelines_follow_the_mentions_of_an_edited_direct_post(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    carol = await make_browser("carol")
    dm = await alice.compose("@bob first draft", visibility="direct")
    assert post_ids((await bob.get("/")).text) == [dm]
    assert post_ids((await carol.get("/")).text) == []  # both home timelines are cached now
    edited = await alice.post(f"/posts/{dm}/edit", {"status": "@carol second draft"})
    assert edited.status_code == 303
    assert post_ids((await carol.get("/")).text) == [dm]
    assert post_ids((await bob.get("/")).text) == []
    assert (await bob.get(f"/posts/{dm}")).status_code == 404


async def test_likes_older_than_the_cached_ones_still_show(make_browser: Any, monkeypatch: Any) -> None:
    from feed.services import lookup

    monkeypatch.setattr(lookup, "MARKS_KEPT", 2)
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    posts = [await alice.compose(f"number {i}") for i in range(4)]
    for post in posts[:3]:  # the oldest like is beyond what the cache keeps
        await bob.post(f"/posts/{post}/like")
    page = (await bob.get("/")).text
    pressed = re.findall(r'id="post-(\d+)".*?aria-pressed="(true|false)"', page, re.S)
    assert [(int(i), p == "true") for i, p in pressed] == [
        (posts[3], False),
        (posts[2], True),
        (posts[1], True),
        (posts[0], True),
    ]
