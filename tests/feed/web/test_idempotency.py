"""A retried post is never doubled: ``Idempotency-Key`` on ``POST /api/v1/statuses`` (as Mastodon documents it: the
same key from the same user within an hour returns the first result), and the page composer sends one per draft."""

from __future__ import annotations

import asyncio
import os
import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from feed.services.context import now
from feed.services.jobs import run_maintenance
from feed.storage.tables import idempotency_keys
from feed.web.templating import draft_key
from jobs.registry import maintenance
from tests.feed.web.mastodon_checks import row_counts

pytestmark = pytest.mark.anyio

KEY_RE = re.compile(r'name="idempotency_key" value="([^"]+)"')


async def create(client: Any, text: str, key: str | None) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post("/api/v1/statuses", json={"status": text}, headers=headers)


async def test_the_same_key_returns_the_first_status_and_makes_nothing_new(api: Any, app: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    first = await create(alice, "first try", "draft-1")
    assert first.status_code == 200, first.text
    again = await create(alice, "first try, sent again", "draft-1")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["content"] == first.json()["content"], "the first result, not the second body"
    assert (await row_counts(app))["posts"] == 1
    other_key = await create(alice, "another draft", "draft-2")
    assert other_key.json()["id"] != first.json()["id"]
    other_user = await create(bob, "bob's own", "draft-1")
    assert other_user.json()["id"] != first.json()["id"], "keys are per user"
    no_key = [await create(alice, "no key", None) for _ in range(2)]
    assert no_key[0].json()["id"] != no_key[1].json()["id"], "without a key, each request is a new status"
    assert (await row_counts(app))["posts"] == 5
    async with app.state.engine.connect() as conn:
        stored = (await conn.execute(sa.select(idempotency_keys.c.key_hash))).scalars().all()
    assert len(stored) == 3 and all(b"draft" not in h and len(h) == 32 for h in stored), "keys kept as hashes"


async def test_concurrent_retries_with_one_key_make_one_status(api: Any, app: Any) -> None:
    alice = await api("alice")
    answers = await asyncio.gather(*(create(alice, "sent five times at once", "burst") for _ in range(5)))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert (await row_counts(app))["posts"] == 1


async def test_a_key_is_kept_for_an_hour_then_forgotten(api: Any, app: Any) -> None:
    alice = await api("alice")
    first = (await create(alice, "an hour ago", "old")).json()["id"]
    async with app.state.engine.begin() as conn:
        await conn.execute(idempotency_keys.update().values(created_at=now() - timedelta(minutes=61)))
    later = (await create(alice, "the key again, an hour later", "old")).json()["id"]
    assert later != first
    async with app.state.engine.begin() as conn:
        await conn.execute(idempotency_keys.update().values(created_at=now() - timedelta(minutes=61)))
    run = await run_maintenance(app.state.services, maintenance("expire_sessions"))
    assert run.changed.get("idempotency_keys") == 1
    async with app.state.engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(idempotency_keys)) == 0


async def test_the_composer_sends_one_key_per_draft(make_browser: Any, app: Any) -> None:
    alice = await make_browser("alice")
    home = await alice.get("/")
    keys = KEY_RE.findall(home.text)
    assert len(keys) == 1 and len(keys[0]) >= 16
    form = {"status": "posted from the page", "idempotency_key": keys[0]}
    first = await alice.htmx_post("/posts", form)
    assert first.status_code == 200, first.text
    fresh = KEY_RE.findall(first.text)
    assert fresh and fresh[0] != keys[0], "the composer is reset with a new draft's key"
    retried = await alice.post("/posts", form)  # the browser sends the same submit again
    assert retried.status_code == 303
    assert (await row_counts(app))["posts"] == 1
    assert KEY_RE.findall((await alice.get("/")).text)[0] not in (keys[0], fresh[0]), "a key per page view"
    # A draft refused (empty) keeps its key when shown again, and nothing was made with it.
    refused = await alice.htmx_post("/posts", {"status": " ", "idempotency_key": "kept-key"})
    assert refused.status_code == 422 and 'value="kept-key"' in refused.text
    assert (await row_counts(app))["posts"] == 1


def test_draft_keys_are_random_across_batches_and_a_forked_child_reads_its_own() -> None:
    """Draft keys come from the OS's randomness read in batches: never repeated across a batch's end, and a
    forked child (a worker of ``serve``) never hands out the bytes its parent holds."""
    keys = [draft_key() for _ in range(2 * 4096 // 16 + 3)]
    assert len(set(keys)) == len(keys) and all(re.fullmatch(r"[A-Za-z0-9_-]{22}", key) for key in keys)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next key, to the parent
        os.write(write, draft_key().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child != draft_key(), "the child handed out the parent's next key"
