"""Statuses through the Mastodon API: create (form and JSON), read, edit, delete, context, favourites.

Shapes from https://docs.joinmastodon.org/methods/statuses/ and https://docs.joinmastodon.org/entities/Status/.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.feed.web.mastodon_checks import (
    BASE,
    check_error,
    check_status,
    get_json,
    me,
    post_status,
    row_counts,
    stored_revisions,
)

pytestmark = pytest.mark.anyio


def when(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


# -- create


async def test_create_with_a_form_body(api: Any) -> None:
    alice = await api("alice")
    account = await me(alice)
    response = await alice.post(
        "/api/v1/statuses", data={"status": "Hello <world> & friends", "spoiler_text": "greetings"}
    )
    assert response.status_code == 200, response.text
    status = response.json()
    check_status(status)
    assert status["content"] == "<p>Hello &lt;world&gt; &amp; friends</p>"
    assert status["spoiler_text"] == "greetings" and status["sensitive"] is True
    assert status["visibility"] == "public"
    assert status["account"]["id"] == account["id"] and status["account"]["username"] == "alice"
    assert status["account"]["statuses_count"] == 1
    assert status["favourites_count"] == status["replies_count"] == status["reblogs_count"] == 0
    assert status["favourited"] is False and status["edited_at"] is None
    assert status["in_reply_to_id"] is None and status["mentions"] == []
    assert "text" not in status  # the source text is only returned by DELETE
    assert await get_json(alice, f"/api/v1/statuses/{status['id']}") == status


async def test_create_with_a_json_body(api: Any) -> None:
    alice = await api("alice")
    status = await post_status(alice, "first line\nsecond line\n\nnew paragraph", visibility="unlisted")
    check_status(status)
    assert status["content"] == "<p>first line<br>second line</p><p>new paragraph</p>"
    assert status["visibility"] == "unlisted" and status["spoiler_text"] == "" and status["sensitive"] is False


async def test_create_with_a_multipart_body_and_raw_utf8(api: Any) -> None:
    alice = await api("alice")
    multipart = await alice.post("/api/v1/statuses", files={"status": (None, "multipart caf\u00e9")})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["content"] == "<p>multipart caf\u00e9</p>"
    raw = await alice.post(
        "/api/v1/statuses",
        content="status=raw caf\u00e9 \U0001f600".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["content"] == "<p>raw caf\u00e9 \U0001f600</p>"


async def test_created_at_is_now_in_utc(api: Any) -> None:
    alice = await api("alice")
    before = datetime.now().astimezone()
    status = await post_status(alice, "what time is it")
    after = datetime.now().astimezone()
    assert status["created_at"].endswith("Z")
    assert before.replace(microsecond=0) <= when(status["created_at"]) <= after


@pytest.mark.parametrize(
    ("given", "shown"), [("public", "public"), ("unlisted", "unlisted"), ("private", "private"), ("direct", "direct")]
)
@pytest.mark.parametrize("encoding", ["json", "form"])
async def test_each_visibility_round_trips(api: Any, given: str, shown: str, encoding: str) -> None:
    alice = await api("alice")
    await api("bob")
    body = {"status": "@bob for you", "visibility": given}
    response = await alice.post("/api/v1/statuses", **{"json" if encoding == "json" else "data": body})
    assert response.status_code == 200, response.text
    status = response.json()
    check_status(status)
    assert status["visibility"] == shown
    assert (await get_json(alice, f"/api/v1/statuses/{status['id']}"))["visibility"] == shown


async def test_mentions_are_listed_and_linked_absolutely(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    await api("carol")
    bob_id = (await me(bob))["id"]
    status = await post_status(alice, "hi @bob and @Carol and @nobody and @alice, see https://example.com/x.")
    check_status(status)
    by_name = {m["username"]: m for m in status["mentions"]}
    assert set(by_name) == {"bob", "carol"}  # not the author, not unknown names
    assert by_name["bob"] == {"id": bob_id, "username": "bob", "acct": "bob", "url": f"{BASE}/@bob"}
    # Clients open a mention in-app when its href equals mentions[].url, so the href must be absolute.
    assert f'<a href="{BASE}/@bob" class="mention">@bob</a>' in status["content"]
    assert 'href="/' not in status["content"]
    assert '<a href="https://example.com/x" rel="nofollow noopener noreferrer ugc"' in status["content"]


async def test_a_mention_in_text_cannot_inject_markup(api: Any) -> None:
    alice = await api("alice")
    status = await post_status(alice, '<a href="/@x">@x</a> "quoted" <script>')
    assert "<script>" not in status["content"] and '<a href="/@x">' not in status["content"]
    assert "&lt;script&gt;" in status["content"]


async def test_reply(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    parent = await post_status(alice, "root")
    reply = await post_status(bob, "@alice a reply", in_reply_to_id=parent["id"])
    check_status(reply)
    assert reply["in_reply_to_id"] == parent["id"]
    assert reply["in_reply_to_account_id"] == parent["account"]["id"]
    assert (await get_json(bob, f"/api/v1/statuses/{parent['id']}"))["replies_count"] == 1
    form = await bob.post("/api/v1/statuses", data={"status": "form reply", "in_reply_to_id": parent["id"]})
    assert form.status_code == 200 and form.json()["in_reply_to_id"] == parent["id"]
    empty = await bob.post("/api/v1/statuses", data={"status": "not a reply", "in_reply_to_id": ""})
    assert empty.status_code == 200 and empty.json()["in_reply_to_id"] is None
    assert (await get_json(bob, f"/api/v1/statuses/{parent['id']}"))["replies_count"] == 2


INVALID_CREATES: list[tuple[dict[str, Any], int]] = [
    ({"status": ""}, 422),
    ({"status": "   \n\t "}, 422),
    ({}, 422),
    ({"status": "x" * 501}, 422),
    ({"status": "\U0001f600" * 501}, 422),  # characters, not bytes
    ({"status": "no one to talk to", "visibility": "direct"}, 422),
    ({"status": "@alice only myself", "visibility": "direct"}, 422),
    ({"status": "@ghost does not exist", "visibility": "direct"}, 422),
    ({"status": "hello", "visibility": "secret"}, 422),
    ({"status": "hello", "visibility": "PUBLIC"}, 422),
    ({"status": "hello", "visibility": 1}, 422),
    ({"status": 42}, 422),
    ({"status": ["a", "list"]}, 422),
    ({"status": "hello", "spoiler_text": "w" * 201}, 422),
    ({"status": "hello", "spoiler_text": 7}, 422),
    ({"status": "bell \x07 character"}, 422),
    ({"status": "hello", "media_ids": ["1"]}, 422),
    ({"status": "hello", "poll": {"options": ["a", "b"], "expires_in": 600}}, 422),
    ({"status": "hello", "in_reply_to_id": "abc"}, 422),
    ({"status": "hello", "in_reply_to_id": "-5"}, 422),
    ({"status": "hello", "in_reply_to_id": True}, 422),
    ({"status": "hello", "in_reply_to_id": "123456789"}, 404),
]


@pytest.mark.parametrize(("body", "status"), INVALID_CREATES)
async def test_invalid_creates_are_refused_and_store_nothing(
    api: Any, app: Any, body: dict[str, Any], status: int
) -> None:
    alice = await api("alice")
    await post_status(alice, "already here")
    before = await row_counts(app)
    message = check_error(await alice.post("/api/v1/statuses", json=body), status)
    if status == 422:
        assert message.startswith("Validation failed: ")
    assert await row_counts(app) == before
    assert len(await get_json(alice, "/api/v1/timelines/home")) == 1
    # The error never repeats what was posted.
    if isinstance(body.get("status"), str) and len(body["status"]) > 20:
        assert body["status"][:20] not in message


async def test_form_media_ids_of_no_upload_are_refused(api: Any, app: Any) -> None:
    alice = await api("alice")
    check_error(await alice.post("/api/v1/statuses", data={"status": "pic", "media_ids[]": "1"}), 422)
    assert (await row_counts(app))["posts"] == 0


async def test_empty_status_message_is_mastodons(api: Any) -> None:
    alice = await api("alice")
    message = check_error(await alice.post("/api/v1/statuses", data={"status": ""}), 422)
    assert message == "Validation failed: Text can't be blank"


async def test_exactly_500_characters_is_fine(api: Any) -> None:
    alice = await api("alice")
    status = await post_status(alice, "\U0001f600" * 500)
    assert status["content"] == "<p>" + "\U0001f600" * 500 + "</p>"


# -- read


async def test_get_a_public_status_anonymously(api: Any) -> None:
    alice = await api("alice")
    created = await post_status(alice, "for everyone")
    fetched = await get_json(await api(), f"/api/v1/statuses/{created['id']}")
    check_status(fetched)
    assert fetched["id"] == created["id"] and fetched["content"] == "<p>for everyone</p>"
    assert fetched["favourited"] is False


@pytest.mark.parametrize(
    "bad_id", ["abc", "0", "-1", "1.5", "1e5", "99999999999999999999", "9223372036854775808", "%C2%B2", "%D9%A3", "1 "]
)
async def test_ids_that_are_not_ids_are_404(api: Any, bad_id: str) -> None:
    alice = await api("alice")
    await post_status(alice, "a status")
    for method, suffix in [("GET", ""), ("GET", "/context"), ("PUT", ""), ("DELETE", ""), ("POST", "/favourite")]:
        response = await alice.request(method, f"/api/v1/statuses/{bad_id}{suffix}", json={"status": "x"})
        assert check_error(response, 404) == "Record not found", (method, bad_id, suffix)


async def test_a_missing_status_is_404(api: Any) -> None:
    alice = await api("alice")
    for method, suffix in [
        ("GET", ""),
        ("GET", "/context"),
        ("PUT", ""),
        ("DELETE", ""),
        ("POST", "/favourite"),
        ("POST", "/unfavourite"),
    ]:
        response = await alice.request(method, f"/api/v1/statuses/123456789{suffix}", json={"status": "x"})
        assert check_error(response, 404) == "Record not found", (method, suffix)


# -- edit


async def test_edit_changes_the_text_and_sets_edited_at(api: Any, app: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    created = await post_status(alice, "first words", spoiler_text="cw")
    response = await alice.put(f"/api/v1/statuses/{created['id']}", json={"status": "second words"})
    assert response.status_code == 200, response.text
    edited = response.json()
    check_status(edited)
    assert edited["id"] == created["id"] and edited["created_at"] == created["created_at"]
    assert edited["content"] == "<p>second words</p>"
    assert edited["edited_at"] is not None and when(edited["edited_at"]) >= when(created["created_at"])
    assert (await get_json(bob, f"/api/v1/statuses/{created['id']}"))["content"] == "<p>second words</p>"
    form = await alice.put(f"/api/v1/statuses/{created['id']}", data={"status": "third words", "spoiler_text": ""})
    assert form.status_code == 200
    assert form.json()["content"] == "<p>third words</p>" and form.json()["spoiler_text"] == ""
    assert when(form.json()["edited_at"]) >= when(edited["edited_at"])
    assert await stored_revisions(app) == {int(created["id"]): 3}


async def test_edit_keeps_what_it_is_not_given(api: Any) -> None:
    """Mastodon's UpdateStatusService changes only the fields present in the request."""
    alice = await api("alice")
    created = await post_status(alice, "the text", spoiler_text="the warning")
    edited = (await alice.put(f"/api/v1/statuses/{created['id']}", json={"status": "new text"})).json()
    assert edited["spoiler_text"] == "the warning" and edited["sensitive"] is True
    edited = (await alice.put(f"/api/v1/statuses/{created['id']}", json={"spoiler_text": "new warning"})).json()
    assert edited["content"] == "<p>new text</p>" and edited["spoiler_text"] == "new warning"
    edited = (await alice.put(f"/api/v1/statuses/{created['id']}", json={"spoiler_text": ""})).json()
    assert edited["content"] == "<p>new text</p>" and edited["spoiler_text"] == "" and edited["sensitive"] is False


async def test_edit_updates_mentions(api: Any) -> None:
    alice = await api("alice")
    await api("bob")
    await api("carol")
    created = await post_status(alice, "hello @bob")
    edited = (await alice.put(f"/api/v1/statuses/{created['id']}", json={"status": "hello @carol"})).json()
    assert [m["username"] for m in edited["mentions"]] == ["carol"]


@pytest.mark.parametrize(
    "body",
    [
        {"status": ""},
        {"status": "x" * 501},
        {"status": "@nobody"},
        {"status": 5},
        {"status": "@bob ok", "media_ids": ["1"]},
    ],
)
async def test_an_invalid_edit_changes_nothing(api: Any, app: Any, body: dict[str, Any]) -> None:
    alice = await api("alice")
    await api("bob")
    created = await post_status(alice, "@bob just us", visibility="direct")
    before = await stored_revisions(app)
    check_error(await alice.put(f"/api/v1/statuses/{created['id']}", json=body), 422)
    assert await stored_revisions(app) == before
    after = await get_json(alice, f"/api/v1/statuses/{created['id']}")
    assert after["content"] == created["content"] and after["edited_at"] is None


async def test_only_the_author_can_edit_or_delete(api: Any, app: Any) -> None:
    """Someone else's status is "not found" for PUT and DELETE, as in Mastodon."""
    alice = await api("alice")
    bob = await api("bob")
    created = await post_status(alice, "mine")
    before = await stored_revisions(app)
    check_error(await bob.put(f"/api/v1/statuses/{created['id']}", json={"status": "yours now"}), 404)
    check_error(await bob.delete(f"/api/v1/statuses/{created['id']}"), 404)
    assert await stored_revisions(app) == before
    assert (await get_json(bob, f"/api/v1/statuses/{created['id']}"))["content"] == "<p>mine</p>"


# -- delete


async def test_delete_returns_the_source_and_the_status_is_gone(api: Any, app: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    await alice.post(f"/api/v1/accounts/{(await me(bob))['id']}/follow")
    await bob.post(f"/api/v1/accounts/{(await me(alice))['id']}/follow")
    created = await post_status(alice, "goodbye <b>world</b>", spoiler_text="farewell")
    await bob.post(f"/api/v1/statuses/{created['id']}/favourite")
    response = await alice.delete(f"/api/v1/statuses/{created['id']}")
    assert response.status_code == 200, response.text
    deleted = response.json()
    check_status(deleted)
    assert deleted["id"] == created["id"]
    assert deleted["text"] == "goodbye <b>world</b>"  # the source, for delete-and-redraft
    assert deleted["spoiler_text"] == "farewell" and deleted["content"] == created["content"]
    for client in (alice, bob, await api()):
        check_error(await client.get(f"/api/v1/statuses/{created['id']}"), 404)
        check_error(await client.get(f"/api/v1/statuses/{created['id']}/context"), 404)
        assert await get_json(client, "/api/v1/timelines/public") == []
    for client in (alice, bob):
        assert await get_json(client, "/api/v1/timelines/home") == []
        check_error(await client.post(f"/api/v1/statuses/{created['id']}/favourite"), 404)
        check_error(await client.post(f"/api/v1/statuses/{created['id']}/unfavourite"), 404)
    check_error(await alice.put(f"/api/v1/statuses/{created['id']}", json={"status": "back"}), 404)
    check_error(await alice.delete(f"/api/v1/statuses/{created['id']}"), 404)
    check_error(await bob.post("/api/v1/statuses", json={"status": "late", "in_reply_to_id": created["id"]}), 404)
    counts = await row_counts(app)
    assert counts["posts"] == counts["likes"] == 0
    assert (await me(alice))["statuses_count"] == 0


async def test_deleting_a_reply_decrements_the_parent(api: Any) -> None:
    alice = await api("alice")
    parent = await post_status(alice, "parent")
    reply = await post_status(alice, "reply", in_reply_to_id=parent["id"])
    assert (await get_json(alice, f"/api/v1/statuses/{parent['id']}"))["replies_count"] == 1
    assert (await alice.delete(f"/api/v1/statuses/{reply['id']}")).status_code == 200
    assert (await get_json(alice, f"/api/v1/statuses/{parent['id']}"))["replies_count"] == 0


# -- context


async def test_context_gives_ancestors_and_descendants_in_thread_order(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    root = await post_status(alice, "root")
    a = await post_status(bob, "a", in_reply_to_id=root["id"])
    b = await post_status(alice, "b", in_reply_to_id=a["id"])
    c = await post_status(bob, "c", in_reply_to_id=root["id"])
    d = await post_status(alice, "d", in_reply_to_id=b["id"])
    await post_status(alice, "unrelated")

    def ids(statuses: list[dict[str, Any]]) -> list[str]:
        for status in statuses:
            check_status(status)
        return [s["id"] for s in statuses]

    context = await get_json(await api(), f"/api/v1/statuses/{root['id']}/context")
    assert set(context) == {"ancestors", "descendants"}
    assert ids(context["ancestors"]) == []
    assert ids(context["descendants"]) == [a["id"], b["id"], d["id"], c["id"]]  # depth first, oldest first
    context = await get_json(alice, f"/api/v1/statuses/{b['id']}/context")
    assert ids(context["ancestors"]) == [root["id"], a["id"]]  # oldest first
    assert ids(context["descendants"]) == [d["id"]]
    context = await get_json(alice, f"/api/v1/statuses/{c['id']}/context")
    assert ids(context["ancestors"]) == [root["id"]] and context["descendants"] == []


async def test_context_skips_a_deleted_middle(api: Any) -> None:
    alice = await api("alice")
    root = await post_status(alice, "root")
    middle = await post_status(alice, "middle", in_reply_to_id=root["id"])
    leaf = await post_status(alice, "leaf", in_reply_to_id=middle["id"])
    await alice.delete(f"/api/v1/statuses/{middle['id']}")
    context = await get_json(alice, f"/api/v1/statuses/{leaf['id']}/context")
    assert context == {"ancestors": [], "descendants": []}
    assert (await get_json(alice, f"/api/v1/statuses/{root['id']}/context"))["descendants"] == []
    assert (await get_json(alice, f"/api/v1/statuses/{leaf['id']}"))["in_reply_to_id"] == middle["id"]


# -- favourites


async def test_favourite_is_idempotent(api: Any, app: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    carol = await api("carol")
    created = await post_status(alice, "like me")
    for _ in range(2):
        response = await bob.post(f"/api/v1/statuses/{created['id']}/favourite")
        assert response.status_code == 200, response.text
        check_status(response.json())
        assert response.json()["favourited"] is True and response.json()["favourites_count"] == 1
    assert (await row_counts(app))["likes"] == 1
    # Each viewer sees their own "favourited" and the shared count.
    seen_by_carol = await get_json(carol, f"/api/v1/statuses/{created['id']}")
    assert seen_by_carol["favourited"] is False and seen_by_carol["favourites_count"] == 1
    seen_by_bob = await get_json(bob, f"/api/v1/statuses/{created['id']}")
    assert seen_by_bob["favourited"] is True
    assert (await get_json(bob, "/api/v1/timelines/public"))[0]["favourited"] is True
    await carol.post(f"/api/v1/statuses/{created['id']}/favourite")
    assert (await get_json(alice, f"/api/v1/statuses/{created['id']}"))["favourites_count"] == 2
    for _ in range(2):
        response = await bob.post(f"/api/v1/statuses/{created['id']}/unfavourite")
        assert response.status_code == 200
        assert response.json()["favourited"] is False and response.json()["favourites_count"] == 1
    assert (await row_counts(app))["likes"] == 1


async def test_unfavourite_without_a_favourite_changes_nothing(api: Any) -> None:
    alice = await api("alice")
    bob = await api("bob")
    created = await post_status(alice, "untouched")
    response = await bob.post(f"/api/v1/statuses/{created['id']}/unfavourite")
    assert response.status_code == 200
    assert response.json()["favourites_count"] == 0 and response.json()["favourited"] is False


async def test_authors_can_favourite_their_own_status(api: Any) -> None:
    alice = await api("alice")
    created = await post_status(alice, "self love")
    response = await alice.post(f"/api/v1/statuses/{created['id']}/favourite")
    assert response.json()["favourited"] is True and response.json()["favourites_count"] == 1


async def test_the_source_of_ones_own_status(api: Any) -> None:
    """GET /api/v1/statuses/:id/source: StatusSource (id, text, spoiler_text) as written; others' are not found."""
    alice, bob = await api("alice"), await api("bob")
    made = await post_status(alice, "Some <b>markup</b> & an @bob mention", spoiler_text="careful")
    source = await get_json(alice, f"/api/v1/statuses/{made['id']}/source")
    assert source == {"id": made["id"], "text": "Some <b>markup</b> & an @bob mention", "spoiler_text": "careful"}
    plain = await post_status(alice, "no warning")
    assert (await get_json(alice, f"/api/v1/statuses/{plain['id']}/source"))["spoiler_text"] == ""
    check_error(await bob.get(f"/api/v1/statuses/{made['id']}/source"), 404)
    check_error(await alice.get("/api/v1/statuses/123/source"), 404)
    check_error(await (await api()).get(f"/api/v1/statuses/{made['id']}/source"), 401)
