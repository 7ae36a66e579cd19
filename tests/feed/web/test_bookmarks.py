"""Bookmarks, in the pages and the Mastodon API: private to their owner, ids only at rest, gone with what they
keep; and the delete confirmation that asks without JavaScript."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

from feed.storage.tables import bookmarks
from tests.feed.web.mastodon_checks import check_error, check_status, follow, get_json, links, me, post_status

pytestmark = pytest.mark.anyio


def pressed(page: str, post_id: int) -> str | None:
    """The bookmark button of a post on a page: 'true', 'false', or None when there is none."""
    article = page.split(f'id="post-{post_id}"', 1)[1].split("</article>", 1)[0]
    found = re.search(r'class="bookmark-button[^"]*" aria-pressed="(true|false)"', article)
    return found.group(1) if found else None


async def test_bookmarks_through_the_api(api: Any, app: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    first = await post_status(alice, "kept for later")
    second = await post_status(alice, "kept as well")
    third = await post_status(alice, "not kept")
    response = await bob.post(f"/api/v1/statuses/{first['id']}/bookmark")
    assert response.status_code == 200, response.text
    status = response.json()
    check_status(status)
    assert status["id"] == first["id"] and status["bookmarked"] is True
    for _ in range(2):  # idempotent: kept once, in its first place
        assert (await bob.post(f"/api/v1/statuses/{second['id']}/bookmark")).json()["bookmarked"] is True
    await bob.post(f"/api/v1/statuses/{first['id']}/bookmark")

    # Newest kept first, paged by bookmark with a Link header.
    response = await bob.get("/api/v1/bookmarks", params={"limit": 1})
    assert [s["id"] for s in response.json()] == [second["id"]]
    assert response.json()[0]["bookmarked"] is True
    older = await bob.get(links(response)["next"])
    assert [s["id"] for s in older.json()] == [first["id"]]
    assert [s["id"] for s in (await bob.get(links(older)["prev"])).json()] == [second["id"]]

    # Private: the author and everyone else see bookmarked false, and an empty list of their own.
    assert (await get_json(alice, f"/api/v1/statuses/{first['id']}"))["bookmarked"] is False
    assert (await get_json(bob, f"/api/v1/statuses/{first['id']}"))["bookmarked"] is True
    assert (await get_json(bob, f"/api/v1/statuses/{third['id']}"))["bookmarked"] is False
    assert await get_json(alice, "/api/v1/bookmarks") == []
    timeline = await get_json(bob, "/api/v1/accounts/" + (await me(alice))["id"] + "/statuses")
    assert {s["id"]: s["bookmarked"] for s in timeline} == {first["id"]: True, second["id"]: True, third["id"]: False}

    # Undone (twice is fine); gone with the post.
    for _ in range(2):
        assert (await bob.post(f"/api/v1/statuses/{second['id']}/unbookmark")).json()["bookmarked"] is False
    assert [s["id"] for s in await get_json(bob, "/api/v1/bookmarks")] == [first["id"]]
    assert (await alice.delete(f"/api/v1/statuses/{first['id']}")).status_code == 200
    assert await get_json(bob, "/api/v1/bookmarks") == []
    async with app.state.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(bookmarks))).scalar_one() == 0


async def test_bookmarks_need_a_readable_post_and_the_scope(api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    secret = await post_status(alice, "for followers", visibility="private")
    check_error(await bob.post(f"/api/v1/statuses/{secret['id']}/bookmark"), 404)
    check_error(await bob.post("/api/v1/statuses/12345/bookmark"), 404)
    check_error(await bob.post("/api/v1/statuses/abc/bookmark"), 404)
    nobody = await api()
    check_error(await nobody.get("/api/v1/bookmarks"), 401)
    check_error(await nobody.post(f"/api/v1/statuses/{secret['id']}/bookmark"), 401)

    # A followers-only post kept while following leaves the list when the follow ends (it is no longer readable).
    await follow(bob, (await me(alice))["id"])
    assert (await bob.post(f"/api/v1/statuses/{secret['id']}/bookmark")).json()["bookmarked"] is True
    assert [s["id"] for s in await get_json(bob, "/api/v1/bookmarks")] == [secret["id"]]
    await bob.post(f"/api/v1/accounts/{(await me(alice))['id']}/unfollow")
    assert await get_json(bob, "/api/v1/bookmarks") == []
    check_error(await bob.post(f"/api/v1/statuses/{secret['id']}/unbookmark"), 404)


async def test_bookmarks_in_the_pages(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    post = await alice.compose("a recipe worth keeping")
    other = await alice.compose("a passing thought")
    await bob.post("/@alice/follow")
    home = (await bob.get("/")).text
    assert pressed(home, post) == "false" and pressed(home, other) == "false"
    assert "Bookmarks" in home  # in the navigation
    assert "No bookmarks yet" in (await bob.get("/bookmarks")).text

    # Without JavaScript: a form post, then back to the page at the post.
    response = await bob.post(f"/posts/{post}/bookmark", {"next": "/"})
    assert response.status_code == 303 and response.headers["location"] == f"/#post-{post}"
    assert pressed((await bob.get("/")).text, post) == "true"
    page = (await bob.get("/bookmarks")).text
    assert "a recipe worth keeping" in page and "a passing thought" not in page
    assert pressed(page, post) == "true"

    # With htmx: the button alone comes back, toggled, keeping the page it lives on.
    fragment = await bob.htmx_post(f"/posts/{other}/bookmark", {"next": "/@alice"})
    assert fragment.status_code == 200
    assert 'aria-pressed="true"' in fragment.text and f'formaction="/posts/{other}/unbookmark"' in fragment.text
    assert fragment.text.strip().startswith("<button") and "<html" not in fragment.text
    fragment = await bob.htmx_post(f"/posts/{other}/unbookmark", {"next": "/@alice"})
    assert 'aria-pressed="false"' in fragment.text

    # Nobody else sees them, and a logged-out reader gets no button and no page.
    assert pressed((await alice.get("/")).text, post) == "false"
    assert "a recipe worth keeping" not in (await alice.get("/bookmarks")).text
    anonymous = await make_browser()
    assert pressed((await anonymous.get("/@alice")).text, post) is None
    response = await anonymous.get("/bookmarks")
    assert response.status_code in (303, 401, 403) or "Log in" in response.text


async def test_delete_without_javascript_asks_first(make_browser: Any) -> None:
    alice = await make_browser("alice")
    post = await alice.compose("think twice")
    asked = await alice.post(f"/posts/{post}/delete", {"next": "/@alice"})
    assert asked.status_code == 200
    assert "Delete this post?" in asked.text and "think twice" in asked.text
    assert 'name="confirm" value="yes"' in asked.text and 'href="/@alice">Cancel' in asked.text
    assert f'id="post-{post}"' in (await alice.get("/")).text  # nothing deleted yet
    done = await alice.post(f"/posts/{post}/delete", {"next": "/@alice", "confirm": "yes"})
    assert done.status_code == 303 and done.headers["location"] == "/@alice?notice=deleted"
    assert (await alice.get(f"/posts/{post}")).status_code == 404
    # htmx asked in the browser already (confirm()), so it deletes at once.
    other = await alice.compose("gone at once")
    assert (await alice.htmx_post(f"/posts/{other}/delete")).status_code == 200
    assert (await alice.get(f"/posts/{other}")).status_code == 404
    bob = await make_browser("bob")
    mine = await bob.compose("bob's own")
    assert (await alice.post(f"/posts/{mine}/delete")).status_code == 403  # asking is not a way to read it
