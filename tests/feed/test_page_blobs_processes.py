"""A viewer's home page blob (and the API's) stays as fresh as a page drawn each time, across processes: alice reads
her home on B (from her sealed blob, in B's L1 and in Redis) while everything that changes it happens on A."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import PASSWORD
from tests.feed.processes import HITS, Cluster, like_count, metric, within
from tests.feed.test_cache_processes import article_ids
from tests.feed.test_faults import jobs_under_way

pytestmark = pytest.mark.anyio


class Home:
    """Alice's home on B, as the page or as the API's statuses, each from its own blob."""

    def __init__(self, http: httpx.AsyncClient, api: bool) -> None:
        self.http, self.api = http, api
        self.space = {"space": "v" if api else "w"}

    async def read(self) -> str:
        response = await self.http.get("/api/v1/timelines/home" if self.api else "/")
        assert response.status_code == 200
        return response.text

    def ids(self, text: str) -> list[int]:
        if not self.api:
            return article_ids(text)
        return [int((status["reblog"] or status)["id"]) for status in json.loads(text)]

    def likes(self, text: str, post: int) -> int:
        if not self.api:
            return like_count(text, post)
        return next(status["favourites_count"] for status in json.loads(text) if status["id"] == str(post))

    def boosted_by(self, text: str, name: str) -> bool:
        if not self.api:
            return bool(re.search(rf"{name}</a>\s*boosted", text) or f"{name} boosted" in text.replace("\n", " "))
        return any(status["reblog"] and status["account"]["username"] == name for status in json.loads(text))


@pytest.mark.parametrize("api", [False, True], ids=["page", "api"])
async def test_each_kind_of_change_made_on_a_reaches_the_home_blob_read_on_b(cluster: Cluster, api: bool) -> None:
    alice = await cluster.account("alice")
    bob = await cluster.account("bob")
    carol = await cluster.account("carol")
    dave = await cluster.account("dave")
    erin = await cluster.account("erin")
    for name in ("bob", "carol", "erin"):
        assert (await alice.post("a", f"/@{name}/follow")).status_code == 303
    first = await bob.compose("a", "bob's first words")
    home = Home(await cluster.api("b", "alice") if api else alice.on["b"], api)

    async def shows(ids: list[int]) -> bool:
        return home.ids(await home.read()) == ids

    async def reaches(ids: list[int], what: str) -> None:
        assert await within(1.5, lambda: shows(ids)) is not None, f"B's home blob misses {what}"

    await reaches([first], "a followee's post")

    async def from_blob() -> bool:  # B serves the page from alice's blob in its L1, drawn before
        before = await cluster.metrics("b")
        assert home.ids(await home.read()) == [first]
        after = await cluster.metrics("b")
        return metric(after, HITS, tier="l1", **home.space) > metric(before, HITS, tier="l1", **home.space)

    assert await within(2.0, from_blob) is not None, "B does not serve alice's home from her blob"

    # Holes: a like made on A shows in the count at once, from the blob B holds.
    assert (await bob.post("a", f"/posts/{first}/like")).status_code == 303

    async def counted() -> bool:
        return home.likes(await home.read(), first) == 1

    assert await within(1.0, counted) is not None, "B's home blob shows an old like count"

    second = await bob.compose("a", "bob's second words")
    await reaches([second, first], "a new post")

    edited = await bob.post("a", f"/posts/{first}/edit", {"status": "bob's first words, edited", "revision": "1"})
    assert edited.status_code == 303

    async def shows_edit() -> bool:
        text = await home.read()
        return "first words, edited" in text and "bob&#39;s first words<" not in text and "s first words<" not in text

    assert await within(1.0, shows_edit) is not None, "B's home blob shows a post's old text after its edit"

    assert (await bob.post("a", f"/posts/{second}/delete", {"confirm": "yes"})).status_code == 303
    await reaches([first], "a delete")

    # A boost by a followee of a post by someone alice does not follow.
    daves = await dave.compose("a", "dave's words")
    assert (await carol.post("a", f"/posts/{daves}/boost")).status_code == 303
    await reaches([daves, first], "a boost")
    assert home.boosted_by(await home.read(), "carol")

    # A mute of the booster takes the boost away.
    assert (await alice.post("a", "/@carol/mute")).status_code == 303
    await reaches([first], "a mute")

    # Someone alice follows blocks her: their posts go.
    erins = await erin.compose("a", "erin's words")
    await reaches([erins, first], "a followee's post")
    assert (await erin.post("a", "/@alice/block")).status_code == 303
    await reaches([first], "a block")

    # A followers-only post, then an unfollow: it goes.
    private = await bob.compose("a", "for bob's followers", visibility="followers")
    await reaches([private, first], "a followers-only post")
    assert (await alice.post("a", "/@bob/unfollow")).status_code == 303
    await reaches([], "an unfollow")


async def test_a_blob_in_redis_is_checked_before_another_process_serves_it(cluster: Cluster, env: Any) -> None:
    """A draws alice's blob and keeps it in Redis; bob edits his post on A; B, which never held the blob, reads it
    from Redis and must not serve the old text."""
    alice = await cluster.account("alice")
    bob = await cluster.account("bob")
    assert (await alice.post("a", "/@bob/follow")).status_code == 303
    post = await bob.compose("a", "words as first written")

    async def on_a() -> bool:
        return article_ids((await alice.on["a"].get("/")).text) == [post]

    assert await within(1.5, on_a) is not None
    edited = await bob.post("a", f"/posts/{post}/edit", {"status": "words as edited", "revision": "1"})
    assert edited.status_code == 303
    page = (await alice.on["b"].get("/")).text
    assert "words as edited" in page and "words as first written" not in page


@pytest.mark.parametrize("change", ["edit", "delete", "rename"])
async def test_a_blob_from_redis_is_served_as_drawn_until_what_it_shows_changes(cluster: Cluster, change: str) -> None:
    """A draws the home blobs of carol and alice (kept in Redis). B, which never held them, serves carol's as drawn,
    in the round trip of her session: no record of a post is read on B. Then bob's post or name changes on A, and
    B, reading alice's blob from Redis for the first time, must show the change (the shown log names it)."""
    alice = await cluster.account("alice")
    bob = await cluster.account("bob")
    carol = await cluster.account("carol")
    for reader in (alice, carol):
        assert (await reader.post("a", "/@bob/follow")).status_code == 303
    post = await bob.compose("a", "words as first written")

    async def fanned_out() -> bool:  # the post's fan-out, which drops its readers' blobs, has run
        async with aioredis.Redis.from_url(cluster.redis.url) as queue:
            due, held = await jobs_under_way(queue)
        return article_ids((await alice.on["a"].get("/")).text) == [post] and not due and not held

    assert await within(3.0, fanned_out) is not None
    for reader in (alice, carol):

        async def drawn_on_a(reader: Any = reader) -> bool:
            return article_ids((await reader.on["a"].get("/")).text) == [post]

        assert await within(1.5, drawn_on_a) is not None

    before = await cluster.metrics("b")
    page = (await carol.on["b"].get("/")).text
    after = await cluster.metrics("b")
    assert article_ids(page) == [post] and "words as first written" in page
    assert metric(after, HITS, tier="l2", space="w") > metric(before, HITS, tier="l2", space="w")
    for tier in ("l1", "l2"):  # as drawn: not checked against the post's record
        assert metric(after, HITS, tier=tier, space="p") == metric(before, HITS, tier=tier, space="p")

    if change == "edit":
        done = await bob.post("a", f"/posts/{post}/edit", {"status": "words as edited", "revision": "1"})
    elif change == "delete":
        done = await bob.post("a", f"/posts/{post}/delete", {"confirm": "yes"})
    else:
        done = await bob.post("a", "/settings", {"display_name": "Robert Renamed", "bio": "", "email": ""})
    assert done.status_code == 303
    page = (await alice.on["b"].get("/")).text
    assert "words as first written" not in page if change != "rename" else "Robert Renamed" in page
    if change == "edit":
        assert "words as edited" in page
    if change == "delete":
        assert article_ids(page) == []


async def test_an_erasure_on_either_process_empties_every_processs_page_blobs(cluster: Cluster) -> None:
    """An erased person's words may be in anyone's blob: every process drops all of its own, whichever process the
    erasure ran on and whichever one's outbox relay carried it out (once on A, once on B: on one of the two, the
    relay is in the other process, which the bus does not tell about its own message)."""
    readers = [await cluster.account("alice"), await cluster.account("dave")]
    bob = await cluster.account("bob")
    for reader in readers:
        assert (await reader.post("a", "/@bob/follow")).status_code == 303
    await bob.compose("a", "words of bob")
    # Whom nobody follows: only the rule that an erasure drops every blob empties the readers' (nothing they see
    # changes, so no invalidation of theirs would).
    erased = {"a": await cluster.account("erin"), "b": await cluster.account("frank")}

    async def blobs(where: str) -> float:
        return metric(await cluster.metrics(where), "cipherfeed_page_blobs")

    async def held() -> bool:  # read again until no fan-out still to come drops a blob
        for reader in readers:
            for process in ("a", "b"):
                assert (await reader.on[process].get("/")).status_code == 200
        return await blobs("a") == await blobs("b") == 2

    for where, person in erased.items():
        assert await within(3.0, held, every=0.2) is not None, "each process holds both readers' blobs"
        assert (await person.post(where, "/settings/delete", {"password": PASSWORD})).status_code in (200, 303)

        async def emptied() -> bool:
            return await blobs("a") == await blobs("b") == 0

        assert await within(2.0, emptied) is not None, f"a process kept page blobs after an erasure made on {where}"


@pytest.mark.parametrize("api", [False, True], ids=["page", "api"])
async def test_changes_made_on_a_reach_the_public_blob_read_on_b(cluster: Cluster, api: bool) -> None:
    """Alice's public page (or her app's public timeline) on B comes from her blob in B's memory: a post, an edit
    and a delete by someone she does not follow, made on A, reach it (the public timeline's refs, dropped in every
    process, redraw it)."""
    alice = await cluster.account("alice")
    bob = await cluster.account("bob")
    first = await bob.compose("a", "public words")
    space = {"space": "y" if api else "q"}
    reader = await cluster.api("b", "alice") if api else alice.on["b"]

    async def public() -> str:
        response = await reader.get("/api/v1/timelines/public" if api else "/public")
        assert response.status_code == 200
        return response.text

    def ids_of(text: str) -> list[int]:
        return [int(status["id"]) for status in json.loads(text)] if api else article_ids(text)

    async def shows(ids: list[int]) -> bool:
        return ids_of(await public()) == ids

    async def reaches(ids: list[int], what: str) -> None:
        assert await within(1.5, lambda: shows(ids)) is not None, f"B's public blob misses {what}"

    await reaches([first], "a post")

    async def from_blob() -> bool:
        before = await cluster.metrics("b")
        assert ids_of(await public()) == [first]
        after = await cluster.metrics("b")
        return metric(after, HITS, tier="l1", **space) > metric(before, HITS, tier="l1", **space)

    assert await within(2.0, from_blob) is not None, "B does not serve alice's public page from her blob"
    second = await bob.compose("a", "a second post")
    await reaches([second, first], "a new post")
    edited = await bob.post("a", f"/posts/{first}/edit", {"status": "public words, edited", "revision": "1"})
    assert edited.status_code == 303

    async def shows_edit() -> bool:
        text = await public()
        return "public words, edited" in text and "public words<" not in text

    assert await within(1.0, shows_edit) is not None, "B's public blob shows a post's old text after its edit"
    assert (await bob.post("a", f"/posts/{second}/delete", {"confirm": "yes"})).status_code == 303
    await reaches([first], "a delete")
