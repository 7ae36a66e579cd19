"""Locked accounts and follow requests, blocks and mutes: in the Mastodon API and the pages, with their privacy
rules (a blocked person sees nothing of the blocker anywhere; a follower not approved never reads a followers-only
post)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from tests.feed.web.mastodon_checks import check_error, check_relationship, follow, get_json, links, me, post_status

pytestmark = pytest.mark.anyio


async def lock(client: Any, app: Any, name: str, locked: bool = True) -> None:
    from feed.services import accounts, follows

    svc = app.state.services
    await follows.set_locked(svc, await accounts.find_user(svc, name), locked)


async def rel(client: Any, account_id: str) -> dict[str, Any]:
    found = await get_json(client, "/api/v1/accounts/relationships", **{"id[]": account_id})
    check_relationship(found[0])
    return dict(found[0])


def request_action(page: str, username: str, verb: str) -> str:
    """The address of the Approve or Reject button on the row of ``username`` of the follow requests page."""
    for row in page.split("<li>")[1:]:
        if f"@{username}<" in row:
            found = re.search(rf'action="(/follow_requests/\d+/{verb})"', row)
            assert found
            return found.group(1)
    raise AssertionError(f"no request of {username}")


async def timeline_ids(client: Any, url: str, **params: Any) -> list[str]:
    return [s["id"] for s in await get_json(client, url, **params)]


# -- locked accounts


async def test_a_locked_account_approves_its_followers(api: Any, app: Any) -> None:
    alice, bob, carol, dave = [await api(n) for n in ("alice", "bob", "carol", "dave")]
    alice_id = (await me(alice))["id"]
    await lock(alice, app, "alice")
    account = await me(alice)
    assert account["locked"] is True and account["source"]["follow_requests_count"] == 0
    secret = await post_status(alice, "for approved followers", visibility="private")

    asked = await bob.post(f"/api/v1/accounts/{alice_id}/follow")
    assert asked.status_code == 200
    assert asked.json()["following"] is False and asked.json()["requested"] is True
    assert (await rel(alice, (await me(bob))["id"]))["requested_by"] is True
    assert (await me(alice))["source"]["follow_requests_count"] == 1
    assert [a["username"] for a in await get_json(alice, "/api/v1/follow_requests")] == ["bob"]
    notes = await get_json(alice, "/api/v1/notifications")
    assert [(n["type"], n["account"]["username"]) for n in notes] == [("follow_request", "bob")]
    # Not approved yet: the followers-only post is nowhere for him.
    check_error(await bob.get(f"/api/v1/statuses/{secret['id']}"), 404)
    assert secret["id"] not in await timeline_ids(bob, f"/api/v1/accounts/{alice_id}/statuses")
    assert secret["id"] not in await timeline_ids(bob, "/api/v1/timelines/home")
    assert (await me(alice))["followers_count"] == 0

    approved = await alice.post(f"/api/v1/follow_requests/{(await me(bob))['id']}/authorize")
    assert approved.status_code == 200 and approved.json()["followed_by"] is True
    assert (await rel(bob, alice_id))["following"] is True and (await rel(bob, alice_id))["requested"] is False
    assert (await get_json(bob, f"/api/v1/statuses/{secret['id']}"))["id"] == secret["id"]
    assert await get_json(alice, "/api/v1/follow_requests") == []
    assert [n["type"] for n in await get_json(alice, "/api/v1/notifications")] == ["follow"]

    # Rejected: no follow; a request withdrawn by its maker leaves the list.
    await carol.post(f"/api/v1/accounts/{alice_id}/follow")
    rejected = await alice.post(f"/api/v1/follow_requests/{(await me(carol))['id']}/reject")
    assert rejected.json()["followed_by"] is False and rejected.json()["requested_by"] is False
    check_error(await alice.post(f"/api/v1/follow_requests/{(await me(carol))['id']}/authorize"), 404)
    check_error(await carol.get(f"/api/v1/statuses/{secret['id']}"), 404)
    await carol.post(f"/api/v1/accounts/{alice_id}/follow")
    await carol.post(f"/api/v1/accounts/{alice_id}/unfollow")
    assert await get_json(alice, "/api/v1/follow_requests") == []

    # Unlocking approves whoever waits.
    await dave.post(f"/api/v1/accounts/{alice_id}/follow")
    await lock(alice, app, "alice", locked=False)
    assert (await rel(dave, alice_id))["following"] is True
    assert (await me(alice))["locked"] is False and (await me(alice))["followers_count"] == 2


async def test_follow_requests_in_the_pages(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    carol = await make_browser("carol")
    saved = await alice.post("/settings", {"display_name": "", "bio": "", "email": "", "locked": "on"})
    assert saved.status_code == 303
    assert 'name="locked" checked' in (await alice.get("/settings")).text
    secret = await alice.compose("approved eyes only", visibility="followers")
    profile = (await bob.get("/@alice")).text
    assert "Ask to follow" in profile and ">locked<" in profile
    await bob.post("/@alice/follow")
    assert "Cancel follow request" in (await bob.get("/@alice")).text
    await carol.post("/@alice/follow")
    page = (await alice.get("/follow_requests")).text
    assert page.count('class="display-name"') == 2 and "Approve" in page and "Reject" in page
    assert "(2 waiting)" in (await alice.get("/settings")).text
    assert (await bob.get(f"/posts/{secret}")).status_code == 404
    done = await alice.post(request_action(page, "bob", "authorize"), {"next": "/follow_requests"})
    assert done.status_code == 303 and done.headers["location"] == "/follow_requests"
    assert "approved eyes only" in (await bob.get(f"/posts/{secret}")).text
    assert "Unfollow" in (await bob.get("/@alice")).text
    await alice.post(request_action((await alice.get("/follow_requests")).text, "carol", "reject"))
    assert "Nobody is waiting" in (await alice.get("/follow_requests")).text
    assert (await carol.get(f"/posts/{secret}")).status_code == 404
    assert "Ask to follow" in (await carol.get("/@alice")).text


# -- blocks


async def test_a_block_hides_both_people_from_each_other_everywhere(api: Any) -> None:
    alice, bob, carol = await api("alice"), await api("bob"), await api("carol")
    alice_id, bob_id = (await me(alice))["id"], (await me(bob))["id"]
    await follow(alice, bob_id)
    await follow(bob, alice_id)
    hers = await post_status(alice, "alice speaks")
    his = await post_status(bob, "bob speaks")
    await bob.post(f"/api/v1/statuses/{hers['id']}/favourite")
    await post_status(bob, "@alice hello")
    assert {n["type"] for n in await get_json(alice, "/api/v1/notifications")} == {"follow", "favourite", "mention"}

    blocked = await alice.post(f"/api/v1/accounts/{bob_id}/block")
    assert blocked.status_code == 200
    assert blocked.json()["blocking"] is True and blocked.json()["following"] is False
    assert blocked.json()["followed_by"] is False
    assert (await rel(bob, alice_id))["blocked_by"] is True
    assert await get_json(alice, "/api/v1/notifications") == []  # what he did to her is gone from her list
    assert [a["username"] for a in await get_json(alice, "/api/v1/blocks")] == ["bob"]

    # He sees nothing of her: timelines, her account, her statuses, a thread, search.
    for url in ("/api/v1/timelines/home", "/api/v1/timelines/public"):
        assert hers["id"] not in await timeline_ids(bob, url)
    check_error(await bob.get(f"/api/v1/accounts/{alice_id}"), 404)
    check_error(await bob.get(f"/api/v1/accounts/{alice_id}/statuses"), 404)
    check_error(await bob.get("/api/v1/accounts/lookup", params={"acct": "alice"}), 404)
    check_error(await bob.get(f"/api/v1/statuses/{hers['id']}"), 404)
    check_error(await bob.get(f"/api/v1/statuses/{hers['id']}/context"), 404)
    found = await get_json(bob, "/api/v2/search", q="alice", type="accounts")
    assert found["accounts"] == []
    # ... nor she of him (she can still find his account, to unblock him).
    for url in ("/api/v1/timelines/home", "/api/v1/timelines/public"):
        assert his["id"] not in await timeline_ids(alice, url)
    check_error(await alice.get(f"/api/v1/statuses/{his['id']}"), 404)
    assert (await get_json(alice, f"/api/v1/accounts/{bob_id}"))["username"] == "bob"
    # Carol, who blocked nobody, sees both.
    assert {hers["id"], his["id"]} <= set(await timeline_ids(carol, "/api/v1/timelines/public"))

    # Neither can follow, reply to, like, or mention the other.
    check_error(await bob.post(f"/api/v1/accounts/{alice_id}/follow"), 403)
    check_error(await alice.post(f"/api/v1/accounts/{bob_id}/follow"), 403)
    check_error(await bob.post(f"/api/v1/statuses/{hers['id']}/favourite"), 404)
    check_error(await bob.post("/api/v1/statuses", json={"status": "hi", "in_reply_to_id": hers["id"]}), 404)
    mention = await post_status(bob, "@alice can you hear me")
    assert mention["mentions"] == []
    check_error(await bob.post("/api/v1/statuses", json={"status": "@alice psst", "visibility": "direct"}), 422)
    assert await get_json(alice, "/api/v1/notifications") == []

    # Unblocking lets them see each other again (the follows stay ended).
    unblocked = await alice.post(f"/api/v1/accounts/{bob_id}/unblock")
    assert unblocked.json()["blocking"] is False and unblocked.json()["following"] is False
    assert hers["id"] in await timeline_ids(bob, "/api/v1/timelines/public")
    assert (await get_json(bob, f"/api/v1/accounts/{alice_id}"))["username"] == "alice"
    assert await get_json(alice, "/api/v1/blocks") == []


async def test_blocks_in_the_pages(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    post = await alice.compose("not for bob any more")
    assert "not for bob any more" in (await bob.get("/")).text
    profile = (await alice.get("/@bob")).text
    assert 'action="/@bob/block"' in profile and "data-confirm=" in profile
    assert (await alice.post("/@bob/block")).status_code == 303
    assert "You blocked @bob" in (await alice.get("/@bob")).text
    for url in ("/", "/public"):
        assert "not for bob any more" not in (await bob.get(url)).text
    assert (await bob.get("/@alice")).status_code == 404
    assert (await bob.get("/@alice/followers")).status_code == 404
    assert (await bob.get(f"/posts/{post}")).status_code == 404
    assert (await bob.post(f"/posts/{post}/like")).status_code == 404
    assert (await bob.post("/@alice/follow")).status_code == 403
    listed = (await alice.get("/blocks")).text
    assert "@bob" in listed and 'action="/@bob/unblock"' in listed
    assert (await alice.post("/@bob/unblock", {"next": "/blocks"})).headers["location"] == "/blocks"
    assert "You have blocked nobody" in (await alice.get("/blocks")).text
    assert (await bob.get("/@alice")).status_code == 200


# -- mutes


async def test_a_mute_hides_someone_from_timelines_and_notifications_without_telling_them(api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    alice_id, bob_id = (await me(alice))["id"], (await me(bob))["id"]
    await follow(alice, bob_id)
    mine = await post_status(alice, "like this")
    muted = await alice.post(f"/api/v1/accounts/{bob_id}/mute")
    assert muted.json()["muting"] is True and muted.json()["muting_notifications"] is True
    assert muted.json()["following"] is True  # a mute is not an unfollow
    assert (await rel(bob, alice_id))["muting"] is False  # he is not told (his side shows nothing)
    his = await post_status(bob, "muted words")
    assert his["id"] not in await timeline_ids(alice, "/api/v1/timelines/home")
    assert his["id"] not in await timeline_ids(alice, "/api/v1/timelines/public")
    assert his["id"] in await timeline_ids(alice, f"/api/v1/accounts/{bob_id}/statuses")  # his profile still shows
    assert (await get_json(alice, f"/api/v1/statuses/{his['id']}"))["id"] == his["id"]
    await bob.post(f"/api/v1/statuses/{mine['id']}/favourite")
    assert await get_json(alice, "/api/v1/notifications") == []
    assert [a["username"] for a in await get_json(alice, "/api/v1/mutes")] == ["bob"]

    # Notifications kept: his likes notify again, his posts stay out of her timelines.
    again = await alice.post(f"/api/v1/accounts/{bob_id}/mute", json={"notifications": False})
    assert again.json()["muting_notifications"] is False
    other = await post_status(alice, "another")
    await bob.post(f"/api/v1/statuses/{other['id']}/favourite")
    assert [n["type"] for n in await get_json(alice, "/api/v1/notifications")] == ["favourite"]
    assert his["id"] not in await timeline_ids(alice, "/api/v1/timelines/home")

    # For a while: a mute of one second ends by itself.
    short = await alice.post(f"/api/v1/accounts/{bob_id}/mute", json={"duration": 1})
    assert short.json()["muting_expires_at"] is not None
    await asyncio.sleep(1.2)
    assert his["id"] in await timeline_ids(alice, "/api/v1/timelines/home")
    assert (await rel(alice, bob_id))["muting"] is False
    check_error(await alice.post(f"/api/v1/accounts/{bob_id}/mute", json={"duration": "soon"}), 422)

    await alice.post(f"/api/v1/accounts/{bob_id}/mute")
    unmuted = await alice.post(f"/api/v1/accounts/{bob_id}/unmute")
    assert unmuted.json()["muting"] is False
    assert his["id"] in await timeline_ids(alice, "/api/v1/timelines/home")
    assert await get_json(alice, "/api/v1/mutes") == []


async def test_mutes_in_the_pages(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    await alice.post("/@bob/follow")
    await bob.compose("a noisy post")
    assert "a noisy post" in (await alice.get("/")).text
    profile = (await alice.get("/@bob")).text
    assert 'action="/@bob/mute"' in profile and 'name="duration"' in profile
    assert (await alice.post("/@bob/mute", {"duration": "86400"})).status_code == 303
    assert "a noisy post" not in (await alice.get("/")).text
    assert "a noisy post" in (await alice.get("/@bob")).text
    listed = (await alice.get("/mutes")).text
    assert "@bob" in listed and "until" in listed and 'action="/@bob/unmute"' in listed
    assert (await alice.post("/@bob/mute", {"duration": "soon"})).status_code == 422
    await alice.post("/@bob/unmute")
    assert "a noisy post" in (await alice.get("/")).text
    assert "You have muted nobody" in (await alice.get("/mutes")).text


async def test_lists_of_blocks_and_mutes_page(api: Any) -> None:
    alice = await api("alice")
    others = [await api(f"user{n}") for n in range(3)]
    for other in others:
        other_id = (await me(other))["id"]
        await alice.post(f"/api/v1/accounts/{other_id}/block")
        await alice.post(f"/api/v1/accounts/{other_id}/mute")
    for url in ("/api/v1/blocks", "/api/v1/mutes"):
        response = await alice.get(url, params={"limit": 2})
        assert [a["username"] for a in response.json()] == ["user2", "user1"]
        rest = await alice.get(links(response)["next"])
        assert [a["username"] for a in rest.json()] == ["user0"]
    check_error(await alice.post(f"/api/v1/accounts/{(await me(alice))['id']}/block"), 422)
    check_error(await alice.post("/api/v1/accounts/123456/mute"), 404)
