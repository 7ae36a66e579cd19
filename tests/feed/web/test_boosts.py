"""Boosts in the Mastodon API and the pages: into followers' home timelines (once however many boost), counted,
undone, told to the author, refused for followers-only and direct posts; and the favourites list."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from tests.feed.web.mastodon_checks import check_error, check_status, follow, get_json, links, me, post_status

pytestmark = pytest.mark.anyio


async def home(client: Any, **params: Any) -> list[dict[str, Any]]:
    found = await get_json(client, "/api/v1/timelines/home", **params)
    for status in found:
        check_status(status)
    return list(found)


def entries(statuses: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(the post's id, who boosted it or None) of each timeline entry."""
    return [(s["reblog"]["id"], s["account"]["username"]) if s["reblog"] else (s["id"], None) for s in statuses]


async def test_a_boost_reaches_the_boosters_followers_once(api: Any) -> None:
    alice, bob, carol, dave = [await api(n) for n in ("alice", "bob", "carol", "dave")]
    carol_id, dave_id = (await me(carol))["id"], (await me(dave))["id"]
    await follow(bob, carol_id)
    await follow(bob, dave_id)
    post = await post_status(alice, "worth sharing")
    assert entries(await home(bob)) == []

    boosted = await carol.post(f"/api/v1/statuses/{post['id']}/reblog")
    assert boosted.status_code == 200, boosted.text
    wrapper = boosted.json()
    check_status(wrapper)
    assert wrapper["reblog"]["id"] == post["id"] and wrapper["account"]["username"] == "carol"
    assert wrapper["id"] != post["id"] and wrapper["reblogged"] is True
    assert wrapper["reblog"]["reblogs_count"] == 1 and wrapper["reblog"]["reblogged"] is True
    again = await carol.post(f"/api/v1/statuses/{post['id']}/reblog")  # idempotent: the same boost
    assert again.json()["id"] == wrapper["id"] and again.json()["reblog"]["reblogs_count"] == 1

    timeline = await home(bob)
    assert entries(timeline) == [(post["id"], "carol")]
    assert timeline[0]["id"] == wrapper["id"] and timeline[0]["reblog"]["content"] == "<p>worth sharing</p>"
    assert timeline[0]["reblogged"] is False  # bob did not boost it
    # dave boosts it too: still once in bob's home (the newest boost), however many boost it.
    await dave.post(f"/api/v1/statuses/{post['id']}/reblog")
    assert entries(await home(bob)) == [(post["id"], "dave")]
    assert (await get_json(alice, f"/api/v1/statuses/{post['id']}"))["reblogs_count"] == 2
    who = await get_json(bob, f"/api/v1/statuses/{post['id']}/reblogged_by")
    assert [a["username"] for a in who] == ["dave", "carol"]
    notes = await get_json(alice, "/api/v1/notifications")
    assert [(n["type"], n["account"]["username"]) for n in notes] == [("reblog", "dave"), ("reblog", "carol")]
    grouped = await get_json(alice, "/api/v2/notifications")
    assert [(g["type"], g["notifications_count"]) for g in grouped["notification_groups"]] == [("reblog", 2)]

    # The author edits it: the boosters are told.
    await alice.put(f"/api/v1/statuses/{post['id']}", json={"status": "worth sharing, edited"})
    updates = await get_json(carol, "/api/v1/notifications", **{"types[]": ["update"]})
    assert [(n["account"]["username"], n["status"]["id"]) for n in updates] == [("alice", post["id"])]

    # Undone: dave's boost leaves; carol's still brings it; then neither.
    undone = await dave.post(f"/api/v1/statuses/{post['id']}/unreblog")
    assert undone.json()["id"] == post["id"] and undone.json()["reblogged"] is False
    assert undone.json()["reblogs_count"] == 1
    assert entries(await home(bob)) == [(post["id"], "carol")]
    await carol.post(f"/api/v1/statuses/{post['id']}/unreblog")
    assert entries(await home(bob)) == []
    assert [n["type"] for n in await get_json(alice, "/api/v1/notifications")] == []
    # Unfollowing the booster takes the boost out of the home timeline too.
    await carol.post(f"/api/v1/statuses/{post['id']}/reblog")
    assert entries(await home(bob)) == [(post["id"], "carol")]
    await bob.post(f"/api/v1/accounts/{carol_id}/unfollow")
    assert entries(await home(bob)) == []


async def test_a_boost_is_a_status_of_its_own_under_its_id(api: Any) -> None:
    """Clients fetch a reblog status by its id (a timeline entry's ``id``), and delete it to undo the boost."""
    alice, carol, bob, anonymous = await api("alice"), await api("carol"), await api("bob"), await api()
    post = await post_status(alice, "worth sharing")
    wrapper = (await carol.post(f"/api/v1/statuses/{post['id']}/reblog")).json()

    for reader in (bob, anonymous, carol):
        got = await get_json(reader, f"/api/v1/statuses/{wrapper['id']}")
        check_status(got)
        assert got["id"] == wrapper["id"] and got["account"]["username"] == "carol"
        assert got["reblog"]["id"] == post["id"] and got["reblog"]["content"] == "<p>worth sharing</p>"
    assert (await get_json(carol, f"/api/v1/statuses/{wrapper['id']}"))["reblogged"] is True
    # A block between the reader and the booster hides the boost (not the post).
    await bob.post(f"/api/v1/accounts/{(await me(carol))['id']}/block")
    check_error(await bob.get(f"/api/v1/statuses/{wrapper['id']}"), 404)
    assert (await get_json(bob, f"/api/v1/statuses/{post['id']}"))["id"] == post["id"]

    # Only the booster deletes it, and that undoes the boost; the post stays.
    check_error(await bob.delete(f"/api/v1/statuses/{wrapper['id']}"), 404)
    check_error(await alice.delete(f"/api/v1/statuses/{wrapper['id']}"), 404)
    deleted = await carol.delete(f"/api/v1/statuses/{wrapper['id']}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["id"] == wrapper["id"] and deleted.json()["reblog"]["id"] == post["id"]
    check_error(await anonymous.get(f"/api/v1/statuses/{wrapper['id']}"), 404)
    check_error(await carol.delete(f"/api/v1/statuses/{wrapper['id']}"), 404)
    after = await get_json(alice, f"/api/v1/statuses/{post['id']}")
    assert after["reblogs_count"] == 0 and after["content"] == "<p>worth sharing</p>"
    # A delete names one boost: not the one made after it was undone. Two deletes at once undo it once.
    older = (await carol.post(f"/api/v1/statuses/{post['id']}/reblog")).json()
    await carol.post(f"/api/v1/statuses/{post['id']}/unreblog")
    newer = (await carol.post(f"/api/v1/statuses/{post['id']}/reblog")).json()
    check_error(await carol.delete(f"/api/v1/statuses/{older['id']}"), 404)
    assert (await get_json(anonymous, f"/api/v1/statuses/{newer['id']}"))["reblog"]["reblogs_count"] == 1
    both = await asyncio.gather(*(carol.delete(f"/api/v1/statuses/{newer['id']}") for _ in range(2)))
    assert sorted(r.status_code for r in both) == [200, 404], [r.text for r in both]
    assert (await get_json(alice, f"/api/v1/statuses/{post['id']}"))["reblogs_count"] == 0
    # A boost of a post later deleted is gone with it.
    again = (await carol.post(f"/api/v1/statuses/{post['id']}/reblog")).json()
    assert (await alice.delete(f"/api/v1/statuses/{post['id']}")).status_code == 200
    check_error(await carol.get(f"/api/v1/statuses/{again['id']}"), 404)


async def test_only_public_and_unlisted_posts_can_be_boosted(api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    await follow(bob, (await me(alice))["id"])
    private = await post_status(alice, "followers only", visibility="private")
    direct = await post_status(alice, "@bob just us", visibility="direct")
    unlisted = await post_status(alice, "quietly public", visibility="unlisted")
    check_error(await bob.post(f"/api/v1/statuses/{private['id']}/reblog"), 422)
    check_error(await bob.post(f"/api/v1/statuses/{direct['id']}/reblog"), 422)
    check_error(await bob.post("/api/v1/statuses/99999/reblog"), 404)
    assert (await bob.post(f"/api/v1/statuses/{unlisted['id']}/reblog")).status_code == 200
    stranger = await api("stranger")
    check_error(await stranger.post(f"/api/v1/statuses/{private['id']}/reblog"), 404)  # not even visible


async def test_home_timeline_pages_through_posts_and_boosts(api: Any) -> None:
    alice, bob, carol = await api("alice"), await api("bob"), await api("carol")
    await follow(bob, (await me(alice))["id"])
    await follow(bob, (await me(carol))["id"])
    old = await post_status(carol, "an old post of carol's")
    first = await post_status(alice, "alice one")
    await alice.post(f"/api/v1/statuses/{old['id']}/reblog")  # an old post boosted now: at the top
    second = await post_status(alice, "alice two")
    want = [(second["id"], None), (old["id"], "alice"), (first["id"], None)]
    assert entries(await home(bob)) == want
    response = await bob.get("/api/v1/timelines/home", params={"limit": 2})
    assert entries(response.json()) == want[:2]
    rest = await bob.get(links(response)["next"])
    assert entries(rest.json()) == want[2:]
    newer = await bob.get(links(rest)["prev"])
    assert entries(newer.json()) == want[:2]


async def test_favourites_list(api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    posts = [await post_status(alice, f"number {n}") for n in range(3)]
    for post in posts[:2]:
        await bob.post(f"/api/v1/statuses/{post['id']}/favourite")
    response = await bob.get("/api/v1/favourites", params={"limit": 1})
    assert [s["id"] for s in response.json()] == [posts[1]["id"]] and response.json()[0]["favourited"] is True
    assert [s["id"] for s in (await bob.get(links(response)["next"])).json()] == [posts[0]["id"]]
    assert await get_json(alice, "/api/v1/favourites") == []


def boost_state(page: str, post_id: int) -> str | None:
    article = page.split(f'id="post-{post_id}"', 1)[1].split("</article>", 1)[0]
    found = re.search(r'class="boost-button" aria-pressed="(true|false)"', article)
    return found.group(1) if found else None


async def test_boosts_in_the_pages(make_redis_browser: Any) -> None:
    """In the scaled mode's cache path (home feeds in Redis)."""
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    carol = await make_redis_browser("carol")
    await bob.post("/@carol/follow")
    post = await alice.compose("a post to pass on")
    secret = await alice.compose("for alice's followers", visibility="followers")
    await carol.post("/@alice/follow")
    profile = (await carol.get("/@alice")).text
    assert boost_state(profile, post) == "false" and boost_state(profile, secret) is None  # no button: not boostable
    done = await carol.post(f"/posts/{post}/boost", {"next": "/@alice"})
    assert done.status_code == 303 and done.headers["location"] == f"/@alice#post-{post}"
    page = (await bob.get("/")).text
    assert "a post to pass on" in page
    line = re.search(r'<p class="boosted-by">(.*?)</p>', page, re.S)
    assert line and re.sub(r"<[^>]+>", "", line.group(1)).strip() == "carol boosted"
    assert boost_state((await carol.get(f"/posts/{post}")).text, post) == "true"
    fragment = await carol.htmx_post(f"/posts/{post}/unboost", {"next": "/"})
    assert fragment.status_code == 200 and 'aria-pressed="false"' in fragment.text and "<html" not in fragment.text
    assert "a post to pass on" not in (await bob.get("/")).text
    assert (await carol.post(f"/posts/{secret}/boost")).status_code == 422


async def test_a_muted_boosters_boost_does_not_take_the_posts_place(api: Any) -> None:
    alice, bob, carol, dave = [await api(n) for n in ("alice", "bob", "carol", "dave")]
    for other in (bob, carol, dave):
        await follow(alice, (await me(other))["id"])
    post = await post_status(bob, "bob says")
    await dave.post(f"/api/v1/statuses/{post['id']}/reblog")
    await carol.post(f"/api/v1/statuses/{post['id']}/reblog")
    assert entries(await home(alice)) == [(post["id"], "carol")]
    await alice.post(f"/api/v1/accounts/{(await me(carol))['id']}/mute")
    assert entries(await home(alice)) == [(post["id"], "dave")]  # the boost she still sees
    await alice.post(f"/api/v1/accounts/{(await me(dave))['id']}/block")
    assert entries(await home(alice)) == [(post["id"], None)]  # the post itself: she follows bob
    response = await alice.get("/api/v1/timelines/home", params={"limit": 1})
    assert entries(response.json()) == [(post["id"], None)]
    assert entries((await alice.get(links(response)["next"])).json()) == []  # not again on the next page


async def test_a_muted_boosters_boost_in_the_redis_feed(make_redis_browser: Any) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    carol = await make_redis_browser("carol")
    await alice.post("/@bob/follow")
    await alice.post("/@carol/follow")
    post = await bob.compose("bob says, in redis")
    await carol.post(f"/posts/{post}/boost")
    page = (await alice.get("/")).text
    assert page.count(f'id="post-{post}"') == 1 and '<p class="boosted-by">' in page
    await alice.post("/@carol/mute")
    page = (await alice.get("/")).text
    assert page.count(f'id="post-{post}"') == 1 and '<p class="boosted-by">' not in page
