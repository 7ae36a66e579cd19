"""Timelines through the Mastodon API: home, public, an account's statuses, and their pagination.

Pagination follows https://docs.joinmastodon.org/api/guidelines/#pagination: ``max_id`` (older than),
``since_id`` (newer than, newest first), ``min_id`` (immediately newer than), ``limit`` (default 20, at most 40),
and a ``Link`` header whose ``next``/``prev`` URLs walk the timeline without gaps or repeats.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import event as sa_event

from tests.feed.web.mastodon_checks import (
    BASE,
    check_error,
    check_status,
    follow,
    get_json,
    links,
    me,
    post_status,
    query_of,
)
from tests.worker import settle

pytestmark = pytest.mark.anyio

TOTAL = 45


async def ids_of(client: httpx.AsyncClient, url: str, **params: Any) -> list[str]:
    statuses = await get_json(client, url, **params)
    for status in statuses:
        check_status(status)
    return [s["id"] for s in statuses]


async def many_statuses(client: httpx.AsyncClient, count: int = TOTAL) -> list[str]:
    """Post ``count`` statuses; their ids newest first, as timelines list them."""
    created = [(await post_status(client, f"status number {n}"))["id"] for n in range(count)]
    return created[::-1]


async def timeline_url(api: Any, which: str) -> tuple[httpx.AsyncClient, str, list[str]]:
    """A reader, a timeline URL on which alice's ``TOTAL`` statuses appear, and their ids newest first."""
    alice = await api("alice")
    bob = await api("bob")
    await follow(bob, (await me(alice))["id"])
    expected = await many_statuses(alice)
    url = {
        "home": "/api/v1/timelines/home",
        "public": "/api/v1/timelines/public",
        "account": f"/api/v1/accounts/{(await me(alice))['id']}/statuses",
    }[which]
    return bob, url, expected


async def walk(client: httpx.AsyncClient, url: str, rel: str) -> list[list[str]]:
    """Follow ``rel`` links from ``url`` until a page is empty or has no such link; the ids of each page."""
    pages: list[list[str]] = []
    for _ in range(20):
        response = await client.get(url)
        assert response.status_code == 200, response.text
        page = [s["id"] for s in response.json()]
        if not page:
            assert "link" not in response.headers
            break
        pages.append(page)
        found = links(response)
        assert found["prev"].startswith(BASE) and found.get("next", BASE).startswith(BASE)
        if rel not in found:
            break
        url = found[rel]
    return pages


@pytest.mark.parametrize("which", ["home", "public", "account"])
async def test_walking_next_then_prev_covers_everything_once(api: Any, which: str) -> None:
    reader, url, expected = await timeline_url(api, which)
    forward = await walk(reader, url, "next")
    assert [len(p) for p in forward] == [20, 20, 5]  # default limit 20
    assert [i for page in forward for i in page] == expected  # newest first, no gaps, no repeats
    # From the last page, prev links climb back up the same pages, each still newest first.
    last = await reader.get(url, params={"max_id": forward[1][-1]})
    backward = await walk(reader, links(last)["prev"], "prev")
    assert backward == [forward[1], forward[0]]


async def test_cursors_are_stable_while_new_statuses_arrive(api: Any) -> None:
    reader, url, expected = await timeline_url(api, "home")
    alice = await api("alice2")
    first = await reader.get(url, params={"limit": "10"})
    assert [s["id"] for s in first.json()] == expected[:10]
    await follow(reader, (await me(alice))["id"])
    newer = [(await post_status(alice, f"new {n}"))["id"] for n in range(3)][::-1]
    # The next page goes on where the first one stopped; the new statuses do not push anything into it.
    assert [s["id"] for s in (await reader.get(links(first)["next"])).json()] == expected[10:20]
    # The prev page holds exactly what arrived since the first page was read.
    assert [s["id"] for s in (await reader.get(links(first)["prev"])).json()] == newer


@pytest.mark.parametrize("which", ["home", "public", "account"])
async def test_the_link_header_keeps_limit_and_other_parameters(api: Any, which: str) -> None:
    reader, url, expected = await timeline_url(api, which)
    response = await reader.get(url, params={"limit": "7", "local": "true"})
    assert [s["id"] for s in response.json()] == expected[:7]
    found = links(response)
    assert set(found) == {"next", "prev"}
    assert found["next"].startswith(f"{BASE}{url}?") and found["prev"].startswith(f"{BASE}{url}?")
    assert query_of(found["next"]) == {"limit": ["7"], "max_id": [expected[6]], "local": ["true"]}
    assert query_of(found["prev"]) == {"limit": ["7"], "min_id": [expected[0]], "local": ["true"]}
    # Everything after the newest is nothing yet: the prev page is empty and has no Link header.
    newer = await reader.get(found["prev"])
    assert newer.json() == [] and "link" not in newer.headers


async def test_limit_defaults_to_20_and_is_capped_at_40(api: Any) -> None:
    reader, url, expected = await timeline_url(api, "public")
    assert await ids_of(reader, url) == expected[:20]
    assert await ids_of(reader, url, limit=40) == expected[:40]
    assert await ids_of(reader, url, limit=41) == expected[:40]
    assert await ids_of(reader, url, limit=10**18) == expected[:40]
    assert await ids_of(reader, url, limit=3) == expected[:3]
    assert await ids_of(reader, url, limit=0) == expected[:1]  # at least one, never an empty page


async def test_cursor_semantics(api: Any) -> None:
    reader, url, expected = await timeline_url(api, "public")
    pivot = expected[10]
    # max_id: older than the cursor, newest first.
    assert await ids_of(reader, url, max_id=pivot, limit=5) == expected[11:16]
    # since_id: newer than the cursor, the newest of them first (a gap is left if more exist).
    assert await ids_of(reader, url, since_id=pivot, limit=5) == expected[0:5]
    # min_id: immediately newer than the cursor, still listed newest first.
    assert await ids_of(reader, url, min_id=pivot, limit=5) == expected[5:10]
    # Both bounds: strictly between them.
    assert await ids_of(reader, url, max_id=expected[2], since_id=expected[8]) == expected[3:8]
    assert await ids_of(reader, url, max_id=expected[2], min_id=expected[8], limit=2) == expected[6:8]
    # Cursors need not be ids of statuses that exist.
    assert await ids_of(reader, url, max_id=int(pivot) + 1, limit=2) == expected[10:12]
    # 0 is a valid lower bound.
    assert await ids_of(reader, url, min_id=0, limit=3) == expected[-3:]
    assert await ids_of(reader, url, since_id=0, limit=3) == expected[:3]
    assert await ids_of(reader, url, max_id=0) == []


@pytest.mark.parametrize("param", ["max_id", "since_id", "min_id", "limit"])
@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "1e3", "\u00b2", "\u0663", "0x10", " 5"])
async def test_malformed_cursors_and_limits_are_400(api: Any, param: str, value: str) -> None:
    alice = await api("alice")
    await post_status(alice, "something")
    for url in [
        "/api/v1/timelines/home",
        "/api/v1/timelines/public",
        f"/api/v1/accounts/{(await me(alice))['id']}/statuses",
    ]:
        check_error(await alice.get(url, params={param: value}), 400)


async def test_a_huge_limit_is_400_on_every_timeline(api: Any) -> None:
    alice = await api("alice")
    for url in [
        "/api/v1/timelines/home",
        "/api/v1/timelines/public",
        f"/api/v1/accounts/{(await me(alice))['id']}/statuses",
    ]:
        for digits in (20, 4301, 60_000):
            check_error(await alice.get(url, params={"limit": "9" * digits}), 400)


async def test_an_out_of_range_cursor_is_400(api: Any) -> None:
    alice = await api("alice")
    check_error(await alice.get("/api/v1/timelines/public", params={"max_id": "9" * 19}), 400)
    check_error(await alice.get("/api/v1/timelines/public", params={"max_id": "9" * 30}), 400)


async def test_empty_timelines_have_no_link_header(api: Any) -> None:
    alice = await api("alice")
    for url in [
        "/api/v1/timelines/home",
        "/api/v1/timelines/public",
        f"/api/v1/accounts/{(await me(alice))['id']}/statuses",
    ]:
        response = await alice.get(url)
        assert response.status_code == 200 and response.json() == [] and "link" not in response.headers


# -- what each timeline holds


async def test_home_has_own_and_followed_statuses_newest_first(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    carol = await api("carol")
    bob_id = (await me(bob))["id"]
    own = await post_status(alice, "mine")
    from_bob = [
        await post_status(bob, f"bob {n}", visibility=v) for n, v in enumerate(["public", "unlisted", "private"])
    ]
    await post_status(carol, "carol is not followed")
    assert await ids_of(alice, "/api/v1/timelines/home") == [own["id"]]
    await follow(alice, bob_id)
    home = await ids_of(alice, "/api/v1/timelines/home")
    assert home == [s["id"] for s in reversed(from_bob)] + [own["id"]]
    later = await post_status(bob, "after the follow")
    assert (await ids_of(alice, "/api/v1/timelines/home"))[0] == later["id"]
    assert (await alice.post(f"/api/v1/accounts/{bob_id}/unfollow")).status_code == 200
    assert await ids_of(alice, "/api/v1/timelines/home") == [own["id"]]


async def test_home_has_direct_statuses_only_for_their_audience(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    carol = await api("carol")
    for reader in (bob, carol):
        await follow(reader, (await me(alice))["id"])
    direct = await post_status(alice, "@bob psst", visibility="direct")
    assert await ids_of(alice, "/api/v1/timelines/home") == [direct["id"]]
    assert await ids_of(bob, "/api/v1/timelines/home") == [direct["id"]]
    assert await ids_of(carol, "/api/v1/timelines/home") == []


async def test_public_has_only_public_statuses_from_everyone(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    public = [await post_status(alice, "a public"), await post_status(bob, "b public")]
    await post_status(alice, "unlisted", visibility="unlisted")
    await post_status(alice, "private", visibility="private")
    await post_status(alice, "@bob direct", visibility="direct")
    expected = [s["id"] for s in reversed(public)]
    for reader in (alice, bob, await api()):
        assert await ids_of(reader, "/api/v1/timelines/public") == expected
        assert await ids_of(reader, "/api/v1/timelines/public", local="true") == expected
        # No federation, and no status with an image: these filters have nothing to show.
        assert await ids_of(reader, "/api/v1/timelines/public", remote="true") == []
        assert await ids_of(reader, "/api/v1/timelines/public", only_media="true") == []


async def test_timeline_statuses_are_full_entities(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    await follow(bob, (await me(alice))["id"])
    created = await post_status(alice, "hi @bob", spoiler_text="cw")
    await bob.post(f"/api/v1/statuses/{created['id']}/favourite")
    for url in [
        "/api/v1/timelines/home",
        "/api/v1/timelines/public",
        f"/api/v1/accounts/{created['account']['id']}/statuses",
    ]:
        [status] = await get_json(bob, url)
        check_status(status)
        assert status["favourited"] is True and status["favourites_count"] == 1
        assert status["spoiler_text"] == "cw" and status["mentions"][0]["username"] == "bob"
        assert status["account"]["followers_count"] == 1 and status["account"]["statuses_count"] == 1


async def test_account_statuses_can_leave_out_replies_to_others(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    root = await post_status(alice, "a thread of my own")
    own_reply = await post_status(alice, "continuing it", in_reply_to_id=root["id"])
    bobs = await post_status(bob, "bob says")
    reply_to_bob = await post_status(alice, "@bob answering you", in_reply_to_id=bobs["id"])
    account = f"/api/v1/accounts/{(await me(alice))['id']}/statuses"
    assert await ids_of(alice, account) == [reply_to_bob["id"], own_reply["id"], root["id"]]
    assert await ids_of(alice, account, exclude_replies="true") == [own_reply["id"], root["id"]]


async def test_a_warm_api_timeline_reads_nothing_from_the_database(app: Any, api: Any) -> None:
    """The API's timelines come from the caches the pages use: statuses from their sealed frames, account counts,
    likes and the token from the cache. The second read of a page, with nothing changed, sends the database
    nothing; what a like or a follow changes is there on the next read."""
    alice, bob = await api("alice"), await api("bob")
    bob_id = (await me(bob))["id"]
    await follow(alice, bob_id)
    for n in range(3):
        await post_status(bob, f"bob {n}")
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = app.state.engine.sync_engine
    for url in ("/api/v1/timelines/home", "/api/v1/timelines/public"):
        # The writes' effects and jobs done, and what a first read queues (a feed's rebuild): then the page is warm.
        await get_json(alice, url)
        await settle(app)
        first = await get_json(alice, url)
        sa_event.listen(engine, "before_cursor_execute", count)
        try:
            again = await get_json(alice, url)
        finally:
            sa_event.remove(engine, "before_cursor_execute", count)
        assert again == first
        assert statements == [], f"{url} read the database: {statements}"
    # What changes shows at once: a like (the count and favourited), a new follower (the account's counts).
    await alice.post(f"/api/v1/statuses/{first[0]['id']}/favourite")
    carol = await api("carol")
    await follow(carol, bob_id)
    liked = (await get_json(alice, "/api/v1/timelines/public"))[0]
    assert (liked["favourited"], liked["favourites_count"]) == (True, 1)
    assert liked["account"]["followers_count"] == 2 and liked["account"]["statuses_count"] == 3
    for status in await get_json(alice, "/api/v1/timelines/home"):
        check_status(status)
