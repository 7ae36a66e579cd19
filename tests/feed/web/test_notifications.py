"""Notifications through the Mastodon API and the pages: made by mentions, replies, likes and follows, withdrawn when
those are undone, grouped, counted unread against the marker, kept as ids only."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

from feed.storage.tables import notifications
from tests.feed.web.mastodon_checks import (
    check_account,
    check_error,
    check_status,
    follow,
    get_json,
    links,
    me,
    post_status,
)

pytestmark = pytest.mark.anyio


async def kinds(client: Any, **params: Any) -> list[tuple[str, str, str | None]]:
    """(type, account username, status id) of each notification, newest first."""
    found = await get_json(client, "/api/v1/notifications", **params)
    for note in found:
        check_account(note["account"])
        if "status" in note:
            check_status(note["status"])
        assert set(note) <= {"id", "type", "group_key", "created_at", "account", "status"}
    return [(n["type"], n["account"]["username"], n["status"]["id"] if "status" in n else None) for n in found]


async def unread(client: Any) -> int:
    count: int = (await get_json(client, "/api/v1/notifications/unread_count"))["count"]
    return count


async def test_mentions_replies_likes_and_follows_notify(api: Any, app: Any) -> None:
    alice, bob, carol = await api("alice"), await api("bob"), await api("carol")
    alice_id = (await me(alice))["id"]
    post = await post_status(alice, "the original")
    await follow(bob, alice_id)
    assert (await bob.post(f"/api/v1/statuses/{post['id']}/favourite")).status_code == 200
    reply = await post_status(bob, "a reply without naming her", in_reply_to_id=post["id"])
    mention = await post_status(carol, "hello @alice and @bob")
    await post_status(alice, "talking to myself @alice")  # one's own doing tells nobody
    assert await kinds(alice) == [
        ("mention", "carol", mention["id"]),
        ("mention", "bob", reply["id"]),
        ("favourite", "bob", post["id"]),
        ("follow", "bob", None),
    ]
    assert await kinds(bob) == [("mention", "carol", mention["id"])]
    assert await unread(alice) == 4

    # Filters: types[], exclude_types[], account_id; a type from Mastodon we never make is no error.
    assert [k for k, _, _ in await kinds(alice, **{"types[]": ["follow", "favourite"]})] == ["favourite", "follow"]
    assert [k for k, _, _ in await kinds(alice, **{"exclude_types[]": ["mention", "poll"]})] == ["favourite", "follow"]
    assert await kinds(alice, **{"types[]": ["poll"]}) == []
    assert [u for _, u, _ in await kinds(alice, account_id=(await me(carol))["id"])] == ["carol"]
    check_error(await alice.get("/api/v1/notifications", params={"types[]": "nonsense"}), 400)

    # Paging by notification id, with the Link header.
    response = await alice.get("/api/v1/notifications", params={"limit": 2})
    assert [n["type"] for n in response.json()] == ["mention", "mention"]
    older = await alice.get(links(response)["next"])
    assert [n["type"] for n in older.json()] == ["favourite", "follow"]
    newer = await alice.get(links(older)["prev"])
    assert [n["type"] for n in newer.json()] == ["mention", "mention"]

    # Undone: the like and the follow take their notifications with them.
    await bob.post(f"/api/v1/statuses/{post['id']}/unfavourite")
    await bob.post(f"/api/v1/accounts/{alice_id}/unfollow")
    assert [k for k, _, _ in await kinds(alice)] == ["mention", "mention"]
    assert await unread(alice) == 2

    # Ids and kinds only at rest.
    async with app.state.engine.connect() as conn:
        rows = (await conn.execute(sa.select(notifications))).all()
    assert rows and all(isinstance(v, int | type(None)) for r in rows for k, v in r._mapping.items()
                        if k not in ("type", "group_key", "created_at"))  # fmt: skip
    assert {r.type for r in rows} == {"mention"}


async def test_one_dismiss_clear_and_the_marker(api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    alice_id = (await me(alice))["id"]
    await follow(bob, alice_id)
    post = await post_status(alice, "like me")
    await bob.post(f"/api/v1/statuses/{post['id']}/favourite")
    listed = await get_json(alice, "/api/v1/notifications")
    newest, oldest = listed[0]["id"], listed[1]["id"]
    assert await get_json(alice, f"/api/v1/notifications/{newest}") == listed[0]
    check_error(await bob.get(f"/api/v1/notifications/{newest}"), 404)  # not his
    check_error(await alice.get("/api/v1/notifications/abc"), 404)

    # The marker says what was read: unread counts what is newer.
    assert await unread(alice) == 2
    saved = await alice.post("/api/v1/markers", data={"notifications[last_read_id]": oldest})
    assert saved.status_code == 200
    assert await unread(alice) == 1
    await alice.post("/api/v1/markers", data={"notifications[last_read_id]": newest})
    assert await unread(alice) == 0
    assert (await get_json(alice, "/api/v1/notifications/unread_count", limit=1))["count"] == 0

    assert (await alice.post(f"/api/v1/notifications/{newest}/dismiss")).json() == {}
    check_error(await alice.post(f"/api/v1/notifications/{newest}/dismiss"), 404)
    assert [n["id"] for n in await get_json(alice, "/api/v1/notifications")] == [oldest]
    assert (await alice.post("/api/v1/notifications/clear")).json() == {}
    assert await get_json(alice, "/api/v1/notifications") == []
    check_error(await (await api()).get("/api/v1/notifications"), 401)


async def test_grouped_notifications(api: Any) -> None:
    alice = await api("alice")
    fans = [await api(name) for name in ("bob", "carol", "dave")]
    alice_id = (await me(alice))["id"]
    post = await post_status(alice, "popular")
    other = await post_status(alice, "less so")
    for fan in fans:
        await follow(fan, alice_id)
        await fan.post(f"/api/v1/statuses/{post['id']}/favourite")
    await fans[0].post(f"/api/v1/statuses/{other['id']}/favourite")
    await post_status(fans[1], "@alice look")
    body = await get_json(alice, "/api/v2/notifications")
    groups = body["notification_groups"]
    summary = [(g["type"], g["notifications_count"], g.get("status_id")) for g in groups]
    assert summary == [
        ("mention", 1, summary[0][2]),
        ("favourite", 1, other["id"]),
        ("favourite", 3, post["id"]),
        ("follow", 3, None),
    ]
    assert groups[0]["group_key"].startswith("ungrouped-")
    liked = groups[2]
    names = {a["id"]: a["username"] for a in body["accounts"]}
    assert [names[i] for i in liked["sample_account_ids"]] == ["dave", "carol", "bob"]
    assert {s["id"] for s in body["statuses"]} == {post["id"], other["id"], summary[0][2]}
    assert int(liked["page_min_id"]) < int(liked["page_max_id"]) == int(liked["most_recent_notification_id"])
    # Only the kinds asked for are grouped; the rest come one by one.
    apart = await get_json(alice, "/api/v2/notifications", **{"grouped_types[]": ["follow"]})
    assert [g["type"] for g in apart["notification_groups"]].count("favourite") == 4
    # A whole group is dismissed at once.
    assert (await alice.post(f"/api/v2/notifications/{liked['group_key']}/dismiss")).json() == {}
    after = await get_json(alice, "/api/v2/notifications")
    assert [g["notifications_count"] for g in after["notification_groups"] if g["type"] == "favourite"] == [1]


async def test_replies_notify_only_who_may_read_them(api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    post = await post_status(alice, "open to all")
    # bob's followers-only reply: alice does not follow him, so she could not read it; nothing tells her of it.
    await post_status(bob, "for my followers only", in_reply_to_id=post["id"], visibility="private")
    assert await kinds(alice) == []
    await follow(alice, (await me(bob))["id"])
    reply = await post_status(bob, "now she follows me", in_reply_to_id=post["id"], visibility="private")
    assert await kinds(alice) == [("mention", "bob", reply["id"])]


async def test_a_notification_whose_post_is_gone_or_hidden_is_left_out(api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    bob_id = (await me(bob))["id"]
    await follow(alice, bob_id)
    post = await post_status(alice, "start")
    hidden = await post_status(bob, "a reply for my followers", in_reply_to_id=post["id"], visibility="private")
    gone = await post_status(bob, "@alice soon deleted")
    kept = await post_status(bob, "@alice stays")
    assert [s for _, _, s in await kinds(alice)] == [kept["id"], gone["id"], hidden["id"]]
    await bob.delete(f"/api/v1/statuses/{gone['id']}")
    assert [s for _, _, s in await kinds(alice)] == [kept["id"], hidden["id"]]
    await alice.post(f"/api/v1/accounts/{bob_id}/unfollow")  # she can no longer read the followers-only reply
    assert [s for _, _, s in await kinds(alice)] == [kept["id"]]


def lines_of(page: str) -> list[str]:
    """The sentence of each notification group on the page, as read."""
    found = re.findall(r'<p class="notification-line">(.*?)<time', page, re.S)
    return [" ".join(re.sub(r"<[^>]+>", "", line).split()) for line in found]


def unread_badge(page: str) -> str | None:
    """The number beside "Notifications" in the navigation; None when it is hidden."""
    found = re.search(r'<span class="unread-count" id="unread-count"( hidden)?>(.*?)</a>', page, re.S)
    assert found, "no notifications link"
    if found.group(1):
        return None
    return re.sub(r"<[^>]+>|,| unread", "", found.group(2)).strip()


async def test_the_notifications_page(make_browser: Any) -> None:
    alice = await make_browser("alice")
    fans = [await make_browser(name) for name in ("bob", "carol", "dave")]
    post = await alice.compose("a post people like")
    assert unread_badge((await alice.get("/")).text) is None
    for fan in fans:
        await fan.post("/@alice/follow")
        await fan.post(f"/posts/{post}/like")
    reply = await fans[0].compose("@alice well said", in_reply_to_id=str(post))
    home = (await alice.get("/")).text
    assert unread_badge(home) == "7"
    page = (await alice.get("/notifications")).text
    assert lines_of(page) == [
        "bob replied to your post",
        "dave and 2 others liked your post",
        "dave and 2 others followed you",
    ]
    assert page.count('class="notification ') == 3 and page.count(' unread"') == 3
    assert f'id="post-{reply}"' in page and f'id="post-{post}"' in page
    assert unread_badge(page) is None  # opening the page read them
    assert unread_badge((await alice.get("/")).text) is None
    again = (await alice.get("/notifications")).text
    assert ' unread"' not in again  # seen now
    # Two people read "bob and carol".
    await fans[0].post(f"/posts/{post}/unlike")
    await fans[0].post("/@alice/unfollow")
    assert lines_of((await alice.get("/notifications")).text)[1:] == [
        "dave and carol liked your post",
        "dave and carol followed you",
    ]


async def test_notification_settings(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    carol = await make_browser("carol")
    settings = (await alice.get("/settings")).text
    assert 'name="kind_favourite" checked' in settings and 'name="only_following">' in settings
    # Likes off, and only from people she follows.
    form = {f"kind_{k}": "on" for k in ("mention", "reblog", "follow", "follow_request", "update")}
    response = await alice.post("/settings/notifications", form | {"only_following": "on"})
    assert (
        response.status_code == 303 and response.headers["location"] == "/settings?notice=notifications#notifications"
    )
    settings = (await alice.get("/settings")).text
    assert 'name="kind_favourite">' in settings and 'name="only_following" checked' in settings
    post = await alice.compose("hello")
    await alice.post("/@bob/follow")
    await bob.post(f"/posts/{post}/like")  # likes are off
    await bob.compose("@alice hi from someone she follows")
    await carol.compose("@alice hi from a stranger")  # not followed: not told
    await carol.post("/@alice/follow")
    page = (await alice.get("/notifications")).text
    assert lines_of(page) == ["bob mentioned you"]


async def test_unread_counts_follow_deletions_edits_and_mutes(api: Any) -> None:
    alice, bob, _carol = await api("alice"), await api("bob"), await api("carol")
    bob_id = (await me(bob))["id"]
    post = await post_status(alice, "like this")
    await bob.post(f"/api/v1/statuses/{post['id']}/favourite")
    assert await unread(alice) == 1
    await alice.delete(f"/api/v1/statuses/{post['id']}")  # its notifications go with it
    assert await unread(alice) == 0
    letter = await post_status(bob, "@alice a note for you", visibility="direct")
    assert await unread(alice) == 1
    edited = await bob.put(f"/api/v1/statuses/{letter['id']}", json={"status": "@carol a note for carol instead"})
    assert edited.status_code == 200, edited.text
    assert await unread(alice) == 0 and await get_json(alice, "/api/v1/notifications") == []
    other = await post_status(alice, "another")
    await bob.post(f"/api/v1/statuses/{other['id']}/favourite")
    await follow(bob, (await me(alice))["id"])
    assert await unread(alice) == 2
    only_likes = await get_json(alice, "/api/v1/notifications/unread_count", **{"types[]": ["favourite"]})
    assert only_likes["count"] == 1
    await alice.post(f"/api/v1/accounts/{bob_id}/mute", json={"duration": 3600})
    assert await unread(alice) == 0  # muted, with his notifications: not counted, as not listed
    listed = await get_json(alice, "/api/v1/mutes")
    assert listed[0]["username"] == "bob" and listed[0]["mute_expires_at"] is not None
    check_error(await alice.get("/api/v2/notifications", params={"grouped_types[]": "nonsense"}), 400)
