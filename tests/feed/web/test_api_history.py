"""What a status carries besides its text (issue 11): sensitive and language as declared, the app it came from,
and its history, every revision opened under its own key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from feed.services import accounts, oauth, rotation
from feed.services.jobs import Run, run_maintenance
from jobs.registry import MAINTENANCE
from tests.conftest import client_for, snapshot
from tests.feed.web.mastodon_checks import check_error, check_status

pytestmark = pytest.mark.anyio


async def app_token(app: Any, username: str, name: str = "Phanpy") -> str:
    """A token an app got for ``username`` (made through the services: the flow itself is tests/feed/web/test_oauth)."""
    svc = app.state.services
    registered, _ = await oauth.register_app(
        svc, name, [oauth.OOB], "read write", "https://phanpy.example", "127.0.0.1"
    )
    user = await accounts.find_user(svc, username)
    return await oauth.issue_token(svc, registered, user.id, ["read", "write"])


async def test_sensitive_language_and_application_are_kept_and_returned(app: Any, api: Any) -> None:
    cli = await api("alice")
    token = await app_token(app, "alice")
    async with client_for(app, headers={"Authorization": f"Bearer {token}"}) as phanpy:
        made = await phanpy.post("/api/v1/statuses", data={"status": "Hallo", "sensitive": "true", "language": "DE"})
        assert made.status_code == 200, made.text
        status = made.json()
        check_status(status)
        assert status["sensitive"] is True and status["language"] == "de"
        assert status["application"] == {"name": "Phanpy", "website": "https://phanpy.example"}
        again = (await cli.get(f"/api/v1/statuses/{status['id']}")).json()  # read back through the caches
        assert (again["sensitive"], again["language"], again["application"]) == (True, "de", status["application"])
        bad = await phanpy.post("/api/v1/statuses", data={"status": "x", "language": "not a language"})
        check_error(bad, 422)
        edited = await phanpy.put(f"/api/v1/statuses/{status['id']}", data={"status": "Hello", "language": "en",
                                                                           "sensitive": "false"})  # fmt: skip
        assert edited.status_code == 200
        assert (edited.json()["language"], edited.json()["sensitive"]) == ("en", False)
    plain = (await cli.post("/api/v1/statuses", data={"status": "from a script"})).json()
    assert plain["application"] is None and plain["language"] is None and plain["sensitive"] is False
    warned = (await cli.post("/api/v1/statuses", data={"status": "x", "spoiler_text": "cw"})).json()
    assert warned["sensitive"] is True, "a content warning makes a status sensitive, as in Mastodon"


async def test_history_lists_every_revision_oldest_first(app: Any, api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    made = (await alice.post("/api/v1/statuses", data={"status": "first <b>draft</b>"})).json()
    single = await bob.get(f"/api/v1/statuses/{made['id']}/history")
    assert single.status_code == 200 and [v["content"] for v in single.json()] == [made["content"]]
    await alice.put(f"/api/v1/statuses/{made['id']}", data={"status": "second", "spoiler_text": "careful"})
    await alice.put(f"/api/v1/statuses/{made['id']}", data={"status": "third", "spoiler_text": ""})
    history = (await bob.get(f"/api/v1/statuses/{made['id']}/history")).json()
    assert [v["content"] for v in history] == ["<p>first &lt;b&gt;draft&lt;/b&gt;</p>", "<p>second</p>", "<p>third</p>"]
    assert [v["spoiler_text"] for v in history] == ["", "careful", ""]
    assert [v["sensitive"] for v in history] == [False, True, False]
    assert history[0]["created_at"] == made["created_at"] and history[0]["created_at"] < history[2]["created_at"]
    for version in history:
        assert version["account"]["username"] == "alice"
        assert (version["poll"], version["media_attachments"], version["emojis"]) == (None, [], [])
    # Old revisions are kept sealed: none of their words is in the database.
    dump = repr(await snapshot(app))
    assert "draft" not in dump and "second" not in dump and "careful" not in dump
    hidden = (await alice.post("/api/v1/statuses", data={"status": "x", "visibility": "private"})).json()
    check_error(await bob.get(f"/api/v1/statuses/{hidden['id']}/history"), 404)
    check_error(await bob.get("/api/v1/statuses/123/history"), 404)


async def test_a_revision_whose_key_was_destroyed_is_left_out(app: Any, api: Any) -> None:
    svc = app.state.services
    alice = await api("alice")
    made = (await alice.post("/api/v1/statuses", data={"status": "under the first key"})).json()
    await alice.put(f"/api/v1/statuses/{made['id']}", data={"status": "still the first key"})
    await run_maintenance(svc, MAINTENANCE["rotate_user_keys"])  # the post is rewrapped; its old revision is not
    await rotation.prune_user_keys(svc, Run(svc, "prune"), grace=timedelta(0))
    svc.keys.forget_all()
    history = (await alice.get(f"/api/v1/statuses/{made['id']}/history")).json()
    assert [v["content"] for v in history] == ["<p>still the first key</p>"], "the current one opens; the first is gone"
