"""Who may see a status through the API: every read path (GET, context, timelines, an account's statuses) and
every action on a status (favourite, reply) agrees, and an invisible status is simply "not found" (404).

Mastodon's rules: ``private`` (followers-only) is for the author, followers and mentioned users; ``direct`` for the
author and mentioned users; ``public`` and ``unlisted`` for everyone, but only ``public`` is on the public timeline.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.feed.web.mastodon_checks import check_error, follow, get_json, me, post_status, row_counts

pytestmark = pytest.mark.anyio


async def sees(client: httpx.AsyncClient, status: dict[str, Any], author_id: str) -> dict[str, bool]:
    """Where ``client`` finds ``status``: by id, in its author's statuses, home, public, and its parent's context."""
    sid = status["id"]
    found = {}
    response = await client.get(f"/api/v1/statuses/{sid}")
    if response.status_code == 404:
        check_error(response, 404)
    else:
        assert response.status_code == 200 and response.json()["id"] == sid
    found["get"] = response.status_code == 200
    found["context"] = (await client.get(f"/api/v1/statuses/{sid}/context")).status_code == 200
    account = await get_json(client, f"/api/v1/accounts/{author_id}/statuses")
    found["account"] = sid in [s["id"] for s in account]
    found["public"] = sid in [s["id"] for s in await get_json(client, "/api/v1/timelines/public")]
    if "authorization" in client.headers:
        found["home"] = sid in [s["id"] for s in await get_json(client, "/api/v1/timelines/home")]
    if status["in_reply_to_id"]:
        context = await get_json(client, f"/api/v1/statuses/{status['in_reply_to_id']}/context")
        found["in_thread"] = sid in [s["id"] for s in context["descendants"]]
    return found


@pytest.fixture
async def people(api: Any) -> dict[str, Any]:
    """alice posts; bob follows her; carol does not; dave is mentioned; plus an anonymous reader."""
    clients = {name: await api(name) for name in ("alice", "bob", "carol", "dave")}
    clients["anonymous"] = await api()
    ids = {name: (await me(clients[name]))["id"] for name in ("alice", "bob", "carol", "dave")}
    await follow(clients["bob"], ids["alice"])
    return {"clients": clients, "ids": ids}


ALL = {"get": True, "context": True, "account": True}


@pytest.mark.parametrize(
    ("visibility", "expected"),
    [
        (
            "public",
            {
                "alice": {**ALL, "public": True, "home": True},
                "bob": {**ALL, "public": True, "home": True},
                "carol": {**ALL, "public": True, "home": False},
                "dave": {**ALL, "public": True, "home": False},
                "anonymous": {**ALL, "public": True},
            },
        ),
        (
            "unlisted",
            {
                "alice": {**ALL, "public": False, "home": True},
                "bob": {**ALL, "public": False, "home": True},
                "carol": {**ALL, "public": False, "home": False},
                "dave": {**ALL, "public": False, "home": False},
                "anonymous": {**ALL, "public": False},
            },
        ),
        (
            "private",
            {
                "alice": {**ALL, "public": False, "home": True},
                "bob": {**ALL, "public": False, "home": True},
                "carol": {"get": False, "context": False, "account": False, "public": False, "home": False},
                "dave": {**ALL, "public": False, "home": False},  # mentioned, though not a follower
                "anonymous": {"get": False, "context": False, "account": False, "public": False},
            },
        ),
        (
            "direct",
            {
                "alice": {**ALL, "public": False, "home": True},
                "bob": {"get": False, "context": False, "account": False, "public": False, "home": False},
                "carol": {"get": False, "context": False, "account": False, "public": False, "home": False},
                # Mentioned: a direct status reaches their home even though they do not follow alice.
                "dave": {**ALL, "public": False, "home": True},
                "anonymous": {"get": False, "context": False, "account": False, "public": False},
            },
        ),
    ],
)
async def test_who_sees_what(people: dict[str, Any], visibility: str, expected: dict[str, dict[str, bool]]) -> None:
    clients, ids = people["clients"], people["ids"]
    status = await post_status(clients["alice"], "hello @dave", visibility=visibility)
    for name, where in expected.items():
        assert await sees(clients[name], status, ids["alice"]) == where, name


async def test_a_private_reply_is_hidden_from_the_thread_for_non_followers(people: dict[str, Any]) -> None:
    clients, ids = people["clients"], people["ids"]
    root = await post_status(clients["carol"], "an open question")
    reply = await post_status(
        clients["alice"], "a followers-only answer", visibility="private", in_reply_to_id=root["id"]
    )
    assert (await sees(clients["bob"], reply, ids["alice"]))["in_thread"] is True
    for name in ("carol", "anonymous"):
        assert (await sees(clients[name], reply, ids["alice"]))["in_thread"] is False, name
    # carol still sees that there is a reply (the count is metadata), just not what it says.
    assert (await get_json(clients["carol"], f"/api/v1/statuses/{root['id']}"))["replies_count"] == 1


async def test_a_private_ancestor_is_left_out_of_the_context(people: dict[str, Any]) -> None:
    clients = people["clients"]
    hidden = await post_status(clients["alice"], "for followers", visibility="private")
    reply = await post_status(clients["bob"], "public reply to it", in_reply_to_id=hidden["id"])
    bob_view = await get_json(clients["bob"], f"/api/v1/statuses/{reply['id']}/context")
    assert [s["id"] for s in bob_view["ancestors"]] == [hidden["id"]]
    for name in ("carol", "anonymous"):
        context = await get_json(clients[name], f"/api/v1/statuses/{reply['id']}/context")
        assert context == {"ancestors": [], "descendants": []}, name


async def test_following_and_unfollowing_changes_what_is_visible(people: dict[str, Any]) -> None:
    clients, ids = people["clients"], people["ids"]
    status = await post_status(clients["alice"], "followers only", visibility="private")
    carol = clients["carol"]
    check_error(await carol.get(f"/api/v1/statuses/{status['id']}"), 404)
    await follow(carol, ids["alice"])
    assert (await get_json(carol, f"/api/v1/statuses/{status['id']}"))["visibility"] == "private"
    await carol.post(f"/api/v1/accounts/{ids['alice']}/unfollow")
    check_error(await carol.get(f"/api/v1/statuses/{status['id']}"), 404)


@pytest.mark.parametrize("visibility", ["private", "direct"])
async def test_no_action_reaches_an_invisible_status(app: Any, people: dict[str, Any], visibility: str) -> None:
    clients = people["clients"]
    status = await post_status(clients["alice"], "@dave not for carol", visibility=visibility)
    sid = status["id"]
    before = await row_counts(app)
    carol = clients["carol"]
    for method, url, body in [
        ("POST", f"/api/v1/statuses/{sid}/favourite", None),
        ("POST", f"/api/v1/statuses/{sid}/unfavourite", None),
        ("POST", "/api/v1/statuses", {"status": "replying", "in_reply_to_id": sid}),
        ("PUT", f"/api/v1/statuses/{sid}", {"status": "taken over"}),
        ("DELETE", f"/api/v1/statuses/{sid}", None),
    ]:
        assert check_error(await carol.request(method, url, json=body), 404) in (
            "Record not found",
            "The post you are replying to does not exist or is not visible to you",
        )
    assert await row_counts(app) == before
    seen = await get_json(clients["alice"], f"/api/v1/statuses/{sid}")
    assert seen["favourites_count"] == 0 and seen["replies_count"] == 0 and seen["content"] == status["content"]
    # Someone who may see it can act on it.
    assert (await clients["dave"].post(f"/api/v1/statuses/{sid}/favourite")).json()["favourites_count"] == 1


async def test_a_deleted_status_is_gone_for_everyone(people: dict[str, Any]) -> None:
    clients, ids = people["clients"], people["ids"]
    status = await post_status(clients["alice"], "@dave soon gone")
    assert (await clients["alice"].delete(f"/api/v1/statuses/{status['id']}")).status_code == 200
    for name, client in clients.items():
        where = await sees(client, status, ids["alice"])
        assert not any(where.values()), name


async def test_a_reply_to_a_direct_status_can_be_direct_to_the_author(people: dict[str, Any]) -> None:
    clients = people["clients"]
    first = await post_status(clients["alice"], "@dave secret", visibility="direct")
    answer = await post_status(clients["dave"], "@alice got it", visibility="direct", in_reply_to_id=first["id"])
    context = await get_json(clients["alice"], f"/api/v1/statuses/{first['id']}/context")
    assert [s["id"] for s in context["descendants"]] == [answer["id"]]
    check_error(await clients["bob"].get(f"/api/v1/statuses/{answer['id']}"), 404)
