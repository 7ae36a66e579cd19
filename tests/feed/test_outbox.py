"""The outbox: what a write causes is recorded in its transaction, holds ids and names only, and is carried out by
the relay, also when the relay was away at the time of the write."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

from feed.errors import Invalid
from feed.events import NEW, BadEffect, Effects, Event, Job
from feed.services import accounts, effects, follows, posts, timelines
from feed.services.models import Page
from feed.storage.tables import outbox
from tests.conftest import PASSWORD
from tests.feed.test_privacy import canaries, find_leaks
from tests.worker import relayed, settle

pytestmark = pytest.mark.anyio


def test_effects_refuse_anything_but_ids_and_names() -> None:
    with pytest.raises(BadEffect):
        Job("fan_out", ("hello world",))  # type: ignore[arg-type]
    with pytest.raises(BadEffect):
        Effects(invalidate=(("p", "a post's text"),))
    with pytest.raises(BadEffect):
        Effects(counts=(1.5,))  # type: ignore[arg-type]
    with pytest.raises(BadEffect):
        Effects(shown=("alice",))  # type: ignore[arg-type]
    with pytest.raises(BadEffect):
        Event(NEW, 1, 2, "secret")
    with pytest.raises(BadEffect):
        Event("shout", 1, 2, "public")
    caused = effects.post_created(7, 8, "followers", 6, [9, 10]) + effects.like_changed(7, 8)
    caused += effects.post_edited(7, 8, "followers", [9]) + effects.profile_changed(8)
    assert caused.shown == (7, 8)  # the edited post and the renamed person: the shown log's (feed.cache.shown)
    text = caused.encode()
    assert re.fullmatch(r"[\x20-\x7e]*", text) and Effects.decode(text) == caused
    assert not re.search(r"[a-z]{3,} [a-z]{3,}", text), "no words, only ids and short names"


async def _rows(app: Any) -> list[Any]:
    async with app.state.engine.connect() as conn:
        return list((await conn.execute(sa.select(outbox))).all())


async def test_a_write_that_rolls_back_records_nothing(app: Any, clean: None) -> None:
    svc = app.state.services
    alice = await accounts.register(svc, "alice", PASSWORD)
    with pytest.raises(Invalid):
        await posts.create(svc, alice, "nobody to send this to", visibility="direct")
    assert await _rows(app) == []


async def test_rows_written_while_no_relay_runs_are_relayed_when_one_starts(app: Any, clean: None) -> None:
    svc = app.state.services
    texts = canaries()
    alice = await accounts.register(svc, "alice", PASSWORD)
    bob = await accounts.register(svc, "bob", PASSWORD)
    await follows.follow(svc, bob, alice.id)
    await settle(app)
    await svc.relay.stop()
    try:
        post = await posts.create(svc, alice, texts[0], cw=texts[1])
        await posts.like(svc, bob, post.id)
        rows = await _rows(app)
        assert len(rows) == 2, "the post and the like wait in the outbox"
        assert find_leaks("\n".join(r.effects for r in rows).encode(), texts) == []
        decoded = [Effects.decode(r.effects) for r in rows]
        assert decoded[0].jobs == (Job("fan_out", (post.id,)),)
        assert decoded[1].counts == (post.id,)
    finally:
        await svc.relay.start()
    await relayed(app)
    await settle(app)
    assert await _rows(app) == []
    page = await timelines.home(svc, bob, Page(limit=20))
    assert [p.id for p in page.posts] == [post.id], "the relayed fan-out put it in bob's home"


async def test_the_relay_notes_what_a_row_shows_changed_if_its_writer_did_not(redis_app: Any) -> None:
    """A writer that died after its commit left the shown log unwritten: the relay notes the row's ids, so that a
    blob read from Redis elsewhere is checked (feed.cache.shown)."""
    svc = redis_app.state.services
    before = await svc.cache.shown_log()
    assert before is not None
    async with svc.db.begin() as session:  # committed, and nothing after: as a writer killed at that point
        await effects.record(session, Effects(shown=(4242, 4343)))
    svc.relay.poke()
    await relayed(redis_app)
    after = await svc.cache.shown_log()
    assert after is not None and after.changed(before.mark(), {4343}) is True
    assert after.changed(before.mark(), {17}) is False
