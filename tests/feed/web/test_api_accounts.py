"""Accounts through the Mastodon API: verify_credentials, lookup, get, an account's statuses, follow and unfollow,
relationships. Shapes from https://docs.joinmastodon.org/methods/accounts/ and /entities/Account, /Relationship.
"""

from __future__ import annotations

from typing import Any

import pytest

from feed.services import accounts
from tests.feed.web.mastodon_checks import (
    BASE,
    RELATIONSHIP_FLAGS,
    check_account,
    check_error,
    check_relationship,
    follow,
    get_json,
    me,
    post_status,
    row_counts,
)

pytestmark = pytest.mark.anyio


async def test_verify_credentials_has_the_source(api: Any, app: Any) -> None:
    alice = await api("alice")
    account = await me(alice)
    check_account(account)
    assert account["username"] == account["acct"] == "alice"
    assert account["display_name"] == "alice" and account["note"] == ""  # the username until a name is set
    assert account["url"] == f"{BASE}/@alice"
    assert account["followers_count"] == account["following_count"] == account["statuses_count"] == 0
    assert account["last_status_at"] is None
    assert account["created_at"].endswith("T00:00:00.000Z")  # Mastodon gives the day only
    source = account["source"]
    assert source["privacy"] in ("public", "unlisted", "private", "direct")
    assert isinstance(source["sensitive"], bool) and source["note"] == ""
    assert source["fields"] == [] and source["follow_requests_count"] == 0
    assert "source" not in await get_json(alice, f"/api/v1/accounts/{account['id']}")


async def test_verify_credentials_reflects_the_profile(api: Any, app: Any) -> None:
    alice = await api("alice")
    await api("bob")
    user = await accounts.find_user(app.state.services, "alice")
    await accounts.update_profile(app.state.services, user, "Alice A.", "I <3 @bob\n\nand tea", "")
    account = await me(alice)
    assert account["display_name"] == "Alice A."
    assert account["source"]["note"] == "I <3 @bob\n\nand tea"  # the plain source
    assert account["note"] == f'<p>I &lt;3 <a href="{BASE}/@bob" class="mention">@bob</a></p><p>and tea</p>'


async def test_counts_and_last_status_at(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    carol = await api("carol")
    alice_id = (await me(alice))["id"]
    await follow(bob, alice_id)
    await follow(carol, alice_id)
    await follow(alice, (await me(bob))["id"])
    for visibility in ("public", "private", "unlisted"):
        await post_status(alice, f"a {visibility} status", visibility=visibility)
    account = await get_json(await api(), f"/api/v1/accounts/{alice_id}")
    check_account(account)
    assert (account["followers_count"], account["following_count"], account["statuses_count"]) == (2, 1, 3)
    assert account["last_status_at"] is not None
    assert (await me(bob))["following_count"] == 1 and (await me(bob))["followers_count"] == 1
    embedded = (await get_json(alice, "/api/v1/timelines/home"))[0]["account"]
    assert embedded["statuses_count"] == 3 and embedded["last_status_at"] == account["last_status_at"]


async def test_get_account(api: Any) -> None:
    alice = await api("alice")
    account = await me(alice)
    for client in (alice, await api("bob"), await api()):
        fetched = await get_json(client, f"/api/v1/accounts/{account['id']}")
        assert fetched == {k: v for k, v in account.items() if k != "source"}


@pytest.mark.parametrize("bad_id", ["abc", "0", "-3", "123456789", "99999999999999999999", "verify"])
async def test_a_missing_account_is_404(api: Any, app: Any, bad_id: str) -> None:
    alice = await api("alice")
    before = await row_counts(app)
    for method, suffix in [("GET", ""), ("GET", "/statuses"), ("POST", "/follow"), ("POST", "/unfollow")]:
        response = await alice.request(method, f"/api/v1/accounts/{bad_id}{suffix}")
        check_error(response, 404)
    assert await row_counts(app) == before


@pytest.mark.parametrize("acct", ["alice", "@alice", "ALICE", "alice@testserver", "@alice@TestServer"])
async def test_lookup(api: Any, acct: str) -> None:
    alice = await api("alice")
    await api("bob")
    account = await get_json(await api(), "/api/v1/accounts/lookup", acct=acct)
    check_account(account)
    assert account["id"] == (await me(alice))["id"] and account["username"] == "alice"


@pytest.mark.parametrize("acct", ["nobody", "alice@elsewhere.example", "al ice", "alice\x00", "a" * 200])
async def test_lookup_of_someone_who_is_not_here_is_404(api: Any, acct: str) -> None:
    await api("alice")
    check_error(await (await api()).get("/api/v1/accounts/lookup", params={"acct": acct}), 404)


async def test_lookup_needs_acct(api: Any) -> None:
    client = await api()
    check_error(await client.get("/api/v1/accounts/lookup"), 400)
    check_error(await client.get("/api/v1/accounts/lookup", params={"acct": " "}), 400)


async def test_account_statuses_are_that_accounts_newest_first(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    mine = [await post_status(alice, f"alice {n}") for n in range(3)]
    await post_status(bob, "bob's")
    url = f"/api/v1/accounts/{(await me(alice))['id']}/statuses"
    statuses = await get_json(await api(), url)
    assert [s["id"] for s in statuses] == [s["id"] for s in reversed(mine)]
    assert {s["account"]["username"] for s in statuses} == {"alice"}
    # We have no pins, and these statuses have no images: clients ask for them first and get nothing.
    assert await get_json(bob, url, pinned="true") == []
    assert await get_json(bob, url, only_media="true") == []


# -- follows


async def test_follow_and_unfollow_return_the_relationship(api: Any, app: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    bob_id = (await me(bob))["id"]
    alice_id = (await me(alice))["id"]
    for _ in range(2):  # idempotent
        response = await alice.post(f"/api/v1/accounts/{bob_id}/follow")
        assert response.status_code == 200, response.text
        rel = response.json()
        check_relationship(rel)
        assert rel["id"] == bob_id and rel["following"] is True and rel["followed_by"] is False
    assert (await row_counts(app))["follows"] == 1
    rel = (await bob.post(f"/api/v1/accounts/{alice_id}/follow")).json()
    assert rel["following"] is True and rel["followed_by"] is True  # mutual now
    for _ in range(2):
        response = await alice.post(f"/api/v1/accounts/{bob_id}/unfollow")
        assert response.status_code == 200
        rel = response.json()
        check_relationship(rel)
        assert rel["id"] == bob_id and rel["following"] is False and rel["followed_by"] is True
    assert (await row_counts(app))["follows"] == 1
    assert (await get_json(bob, f"/api/v1/accounts/{bob_id}"))["followers_count"] == 0


async def test_follow_accepts_mastodon_form_options(api: Any) -> None:
    alice = await api("alice")
    bob_id = (await me(await api("bob")))["id"]
    response = await alice.post(f"/api/v1/accounts/{bob_id}/follow", data={"reblogs": "true", "notify": "false"})
    assert response.status_code == 200 and response.json()["following"] is True


async def test_following_yourself_is_refused(api: Any, app: Any) -> None:
    alice = await api("alice")
    own_id = (await me(alice))["id"]
    message = check_error(await alice.post(f"/api/v1/accounts/{own_id}/follow"), 422)
    assert message.startswith("Validation failed: ")
    assert (await row_counts(app))["follows"] == 0
    assert (await me(alice))["following_count"] == 0


async def test_relationships(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    carol = await api("carol")
    alice_id, bob_id, carol_id = [(await me(c))["id"] for c in (alice, bob, carol)]
    await follow(alice, bob_id)
    await follow(carol, alice_id)
    response = await alice.get("/api/v1/accounts/relationships", params={"id[]": [carol_id, bob_id, alice_id]})
    assert response.status_code == 200
    rels = response.json()
    for rel in rels:
        check_relationship(rel)
        assert not any(
            rel[name] for name in RELATIONSHIP_FLAGS if name not in ("following", "followed_by", "showing_reblogs")
        )
    assert [(r["id"], r["following"], r["followed_by"]) for r in rels] == [
        (carol_id, False, True),
        (bob_id, True, False),
        (alice_id, False, False),
    ]
    # A single id, with or without the brackets.
    assert [r["id"] for r in await get_json(alice, "/api/v1/accounts/relationships", id=bob_id)] == [bob_id]
    assert [r["id"] for r in await get_json(alice, "/api/v1/accounts/relationships", **{"id[]": bob_id})] == [bob_id]
    assert await get_json(alice, "/api/v1/accounts/relationships") == []


async def test_relationships_leave_out_what_is_not_an_account(api: Any) -> None:
    alice = await api("alice")
    bob_id = (await me(await api("bob")))["id"]
    asked = ["abc", bob_id, "123456789", "", bob_id, "-1"]
    rels = await get_json(alice, "/api/v1/accounts/relationships", **{"id[]": asked})
    assert [r["id"] for r in rels] == [bob_id]
