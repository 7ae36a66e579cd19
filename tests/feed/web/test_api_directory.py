"""Search and follow lists through the API (issue 11): ``/api/v2/search``, ``/api/v1/accounts/search``,
``/api/v1/accounts/:id/followers`` and ``/following`` with ``Link`` paging.

Shapes from https://docs.joinmastodon.org/methods/search/ and https://docs.joinmastodon.org/methods/accounts/.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from feed.services import accounts
from tests.feed.web.mastodon_checks import check_error, follow, get_json, me, post_status

pytestmark = pytest.mark.anyio

LINK_RE = re.compile(r'<([^>]+)>; rel="(next|prev)"')


def links(response: Any) -> dict[str, str]:
    return {rel: url for url, rel in LINK_RE.findall(response.headers.get("link", ""))}


async def test_accounts_are_found_by_the_start_of_their_name(api: Any, app: Any) -> None:
    alice = await api("alice_smith")
    await api("alicia")
    await api("bob")
    svc = app.state.services
    bob = await accounts.find_user(svc, "bob")
    await accounts.update_profile(svc, bob, "Alison Bobbins", "", "")
    found = await get_json(alice, "/api/v2/search", q="ali", type="accounts")
    names = [a["username"] for a in found["accounts"]]
    assert names == ["alice_smith", "alicia", "bob"], "usernames first, then display names"
    assert set(found) == {"accounts", "statuses", "hashtags"} and found["hashtags"] == []
    for account in found["accounts"]:
        assert {"id", "username", "acct", "display_name", "followers_count", "url", "avatar"} <= set(account)
    assert [a["username"] for a in await get_json(alice, "/api/v1/accounts/search", q="@ALICIA")] == ["alicia"]
    host = "testserver"
    assert [a["username"] for a in (await get_json(alice, "/api/v2/search", q=f"@bob@{host}"))["accounts"]] == ["bob"]
    assert (await get_json(alice, "/api/v2/search", q="bob@elsewhere.example"))["accounts"] == []
    assert (await get_json(alice, "/api/v2/search", q="a_s"))["accounts"] == [], "_ is not a wildcard"
    assert (await get_json(alice, "/api/v2/search", q="%"))["accounts"] == []
    assert len(await get_json(alice, "/api/v1/accounts/search", q="ali", limit=1)) == 1
    second = await get_json(alice, "/api/v1/accounts/search", q="ali", limit=1, offset=1)
    assert [a["username"] for a in second] == ["alicia"]


async def test_following_true_keeps_the_accounts_the_viewer_follows(api: Any) -> None:
    alice = await api("alice")
    await api("anna")
    andy = await api("andy")
    await follow(alice, (await me(andy))["id"])
    found = await get_json(alice, "/api/v1/accounts/search", q="an", following="true")
    assert [a["username"] for a in found] == ["andy"]
    check_error(await (await api()).get("/api/v2/search", params={"q": "an", "following": "true"}), 401)


async def test_statuses_are_found_by_address_or_id_never_by_words(api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    public = await post_status(alice, "findable words here")
    private = await post_status(alice, "only for followers", visibility="private")
    for q in (public["url"], public["id"], public["url"].replace("/posts/", "/@alice/")):
        found = await get_json(bob, "/api/v2/search", q=q, type="statuses")
        assert [s["id"] for s in found["statuses"]] == [public["id"]], q
    assert (await get_json(bob, "/api/v2/search", q=private["url"]))["statuses"] == [], "not visible to bob"
    assert [s["id"] for s in (await get_json(alice, "/api/v2/search", q=private["id"]))["statuses"]] == [private["id"]]
    assert (await get_json(bob, "/api/v2/search", q="findable words"))["statuses"] == [], "text is sealed"
    other_host = public["url"].replace("testserver", "elsewhere.example")
    assert (await get_json(bob, "/api/v2/search", q=other_host))["statuses"] == []
    for bad in ({"type": "nothing"}, {"limit": "9" * 30}, {"offset": "-1"}):
        check_error(await bob.get("/api/v2/search", params={"q": "a", **bad}), 400)


async def test_followers_and_following_page_with_link_headers(api: Any) -> None:
    star = await api("star")
    star_id = (await me(star))["id"]
    fans = [await api(f"fan{n}") for n in range(5)]
    for fan in fans:
        await follow(fan, star_id)
    first = await star.get(f"/api/v1/accounts/{star_id}/followers", params={"limit": 2})
    assert first.status_code == 200
    seen = [a["username"] for a in first.json()]
    assert len(seen) == 2 and "next" in links(first) and "prev" in links(first)
    following_of_fan = await get_json(fans[0], f"/api/v1/accounts/{(await me(fans[0]))['id']}/following")
    assert [a["username"] for a in following_of_fan] == ["star"]
    response = first
    while "next" in links(response):
        response = await star.get(links(response)["next"])
        assert response.status_code == 200
        seen += [a["username"] for a in response.json()]
    assert sorted(seen) == [f"fan{n}" for n in range(5)] and len(set(seen)) == 5
    newer = await star.get(links(first)["prev"])
    assert newer.status_code == 200 and newer.json() == []
    anonymous = await api()
    assert len(await get_json(anonymous, f"/api/v1/accounts/{star_id}/followers")) == 5
    check_error(await star.get("/api/v1/accounts/123/followers"), 404)
    check_error(await star.get(f"/api/v1/accounts/{star_id}/followers", params={"max_id": "x"}), 400)


async def test_the_access_log_keeps_no_query_and_no_host_address(redis_app: Any) -> None:
    """uvicorn's access log names the whole request target and the client's address and port: the filter the app
    installs keeps the path (a query may carry a token, a search, any text) and the client's network."""
    import logging

    from feed.logs import PrivateAccessLog

    access = logging.getLogger("uvicorn.access")
    assert any(isinstance(f, PrivateAccessLog) for f in access.filters), "installed by the app's lifespan"
    for client, target, secret, kept in (
        ("203.0.113.57:5000", "/api/v2/search?q=words+from+a+post&type=statuses", "words", "203.0.113.0/24"),
        ("[2001:db8:1234:5678::9]:443", "/api/v1/streaming/user?access_token=s3cr3t", "s3cr3t", "2001:db8:1234::/48"),
        ("198.51.100.7:1", "/posts/123?next=/@alice", "alice", "198.51.100.0/24"),
    ):
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                   (client, "GET", target, "1.1", 200), None)  # fmt: skip
        for found in access.filters:
            found.filter(record)
        line = record.getMessage()
        path = target.split("?")[0]
        assert secret not in line and "?" not in line and f'{kept} - "GET {path} HTTP/1.1" 200' == line, line
        assert client.rsplit(":", 1)[0].strip("[]") not in line
