"""Concurrency, secrecy of stored names, stale edits and reply defaults."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from feed.services import accounts
from feed.settings import load_settings
from feed.storage import tables
from tests.conftest import PASSWORD

pytestmark = pytest.mark.anyio


async def test_concurrent_guesses_cannot_slip_under_the_limit(make_browser: Any, app: Any) -> None:
    await make_browser("victim")
    attacker = await make_browser()
    await attacker.get("/login")
    guesses = [attacker.post("/login", {"username": "victim", "password": f"guess-{i}-xxxxx"}) for i in range(20)]
    statuses = [r.status_code for r in await asyncio.gather(*guesses)]
    limit = app.state.services.throttle.per_account
    assert statuses.count(401) <= limit
    assert statuses.count(429) >= 20 - limit
    # Nothing typed, and no address, is stored in the clear.
    async with app.state.engine.connect() as conn:
        buckets = (await conn.execute(sa.select(tables.throttle.c.bucket))).scalars().all()
    assert buckets and not any("victim" in b or "127.0.0.1" in b or "testclient" in b for b in buckets)


async def test_right_password_after_the_limit_is_still_refused(make_browser: Any) -> None:
    await make_browser("victim")
    attacker = await make_browser()
    for _ in range(5):
        assert (
            await attacker.post("/login", {"username": "victim", "password": "wrong-password-1"})
        ).status_code == 401
    refused = await attacker.post("/login", {"username": "victim", "password": PASSWORD})
    assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()


async def test_reprs_hide_secrets(app: Any, env: dict[str, str]) -> None:
    settings = load_settings(env | {"CIPHERFEED_DATABASE_URL": "postgresql://u:hunter2pw@db/x"})
    assert "hunter2pw" not in repr(settings)
    assert repr(app.state.services) == "Services(...)"
    user = await accounts.register(app.state.services, "zed", PASSWORD)
    opened = await accounts.open_session(app.state.services, user.id)
    assert opened.token not in repr(opened)


async def test_an_edit_from_a_stale_form_is_a_conflict_that_keeps_the_draft(make_browser: Any) -> None:
    alice = await make_browser("alice")
    post = await alice.compose("version one")
    form = await alice.get(f"/posts/{post}/edit")
    assert 'name="revision" value="1"' in form.text
    assert (await alice.post(f"/posts/{post}/edit", {"status": "version two", "revision": "1"})).status_code == 303
    stale = await alice.post(f"/posts/{post}/edit", {"status": "my long draft", "revision": "1"})
    assert stale.status_code == 409
    assert "edited elsewhere" in stale.text and "my long draft" in stale.text
    assert 'name="revision" value="2"' in stale.text  # saving again is a deliberate overwrite
    assert "version two" in (await alice.get(f"/posts/{post}")).text


async def test_a_reply_starts_as_private_as_its_parent(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    dm = await alice.compose("@bob psst", visibility="direct")
    page = await bob.get(f"/posts/{dm}")
    assert '<option value="direct" selected>' in page.text


async def test_likes_racing_a_delete_never_fail(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    for round_ in range(5):
        post = await alice.compose(f"racing {round_}")
        results = await asyncio.gather(
            *[bob.post(f"/posts/{post}/like") for _ in range(4)],
            alice.post(f"/posts/{post}/delete", {"confirm": "yes"}),
        )
        assert {r.status_code for r in results} <= {303, 404}, [r.status_code for r in results]
