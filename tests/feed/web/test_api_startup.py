"""The calls Mastodon apps make at start-up (issue 11): preferences, markers, the empty lists of what cipherfeed does
not have yet, the instance's fields, NodeInfo, and trailing slashes on API paths; then a real client library,
unmodified, making them against a real server.

Shapes from https://docs.joinmastodon.org/methods/ (preferences, markers, custom_emojis, filters, lists,
follow_requests, announcements, instance) and https://nodeinfo.diaspora.software/protocol.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKEND
from tests.feed.processes import AppProcess
from tests.feed.test_cli import cipherfeed
from tests.feed.web.mastodon_checks import check_error, get_json, post_status

pytestmark = pytest.mark.anyio

ISO_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"


async def test_preferences_and_the_empty_lists(api: Any) -> None:
    alice, nobody = await api("alice"), await api()
    prefs = await get_json(alice, "/api/v1/preferences")
    assert prefs == {
        "posting:default:visibility": "public",
        "posting:default:sensitive": False,
        "posting:default:language": None,
        "reading:expand:media": "default",
        "reading:expand:spoilers": False,
    }
    assert await get_json(nobody, "/api/v1/custom_emojis") == []
    for path in ("/api/v1/filters", "/api/v2/filters", "/api/v1/lists", "/api/v1/follow_requests",
                 "/api/v1/announcements", "/api/v1/preferences", "/api/v1/markers"):  # fmt: skip
        if path not in ("/api/v1/preferences", "/api/v1/markers"):
            assert await get_json(alice, path) == []
        check_error(await nobody.get(path), 401)


async def test_markers_are_kept_per_user_and_timeline(api: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    assert await get_json(alice, "/api/v1/markers", **{"timeline[]": ["home", "notifications"]}) == {}
    first = (await post_status(alice, "read up to here"))["id"]
    saved = await alice.post("/api/v1/markers", data={"home[last_read_id]": first})
    assert saved.status_code == 200, saved.text
    home = saved.json()["home"]
    assert home["last_read_id"] == first and home["version"] == 1 and re.fullmatch(ISO_RE, home["updated_at"])
    later = (await post_status(alice, "and then here"))["id"]
    again = await alice.post("/api/v1/markers", json={"home": {"last_read_id": later}, "notifications": {
        "last_read_id": first}})  # fmt: skip
    assert again.json()["home"]["version"] == 2 and again.json()["notifications"]["version"] == 1
    got = await get_json(alice, "/api/v1/markers", **{"timeline[]": ["home", "notifications"]})
    assert got["home"]["last_read_id"] == later and got["notifications"]["last_read_id"] == first
    assert await get_json(alice, "/api/v1/markers", **{"timeline[]": "home"}) == {"home": got["home"]}
    assert await get_json(alice, "/api/v1/markers") == {}, "no timeline asked for: an empty object"
    assert await get_json(bob, "/api/v1/markers", **{"timeline[]": "home"}) == {}, "markers are per user"
    for bad in ({"home[last_read_id]": "not an id"}, {"home[last_read_id]": "9" * 40}, {}):
        assert 400 <= (await alice.post("/api/v1/markers", data=bad)).status_code < 500


async def test_instance_fields_apps_read_at_start_up(api: Any) -> None:
    client = await api()
    v1 = await get_json(client, "/api/v1/instance")
    assert v1["urls"]["streaming_api"].startswith("ws://")
    assert v1["configuration"]["accounts"] == {"max_featured_tags": 0}
    assert v1["version"].startswith("4.3.0")
    v2 = await get_json(client, "/api/v2/instance")
    assert v2["api_versions"] == {"mastodon": 2}
    assert v2["icon"] and {"src", "size"} <= set(v2["icon"][0])
    assert v2["configuration"]["urls"]["streaming"].startswith("ws://")
    assert v2["configuration"]["vapid"] == {"public_key": ""}
    assert v2["registrations"]["url"] is None and v2["registrations"]["enabled"] is True
    links = await get_json(client, "/.well-known/nodeinfo")
    href = links["links"][0]["href"]
    assert href.endswith("/nodeinfo/2.0")
    info = await client.get("/nodeinfo/2.0")
    assert info.status_code == 200 and info.json()["software"]["name"] == "cipherfeed"
    assert info.json()["version"] == "2.0" and info.json()["openRegistrations"] is True


async def test_a_trailing_slash_is_accepted_on_every_api_path(api: Any) -> None:
    alice = await api("alice")
    for path in ("/api/v1/instance", "/api/v2/instance", "/api/v1/timelines/public", "/api/v1/preferences",
                 "/api/v1/accounts/verify_credentials"):  # fmt: skip
        plain, slashed = await alice.get(path), await alice.get(path + "/")
        assert slashed.status_code == plain.status_code == 200, path
    made = await alice.post("/api/v1/statuses/", json={"status": "sent to a path with a slash"})
    assert made.status_code == 200, made.text
    check_error(await alice.get("/api/v1/no_such_thing/"), 404)


@pytest.mark.skipif(BACKEND != "sqlite", reason="a real server process, once, in the SQLite pass")
async def test_a_real_client_library_starts_up(env: dict[str, str], tmp_path: Path, app: Any, clean: None) -> None:
    """Mastodon.py, unmodified, with its default version check (which reads ``/api/v1/instance/``, with a slash)."""
    from mastodon import Mastodon

    created = cipherfeed(env, "users", "create", "starter", "--password-stdin", stdin="correct horse battery staple\n")
    assert created.returncode == 0, created.stderr
    token = cipherfeed(env, "users", "token", "starter").stdout.strip()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")}
    server = AppProcess("startup", inherited | env, tmp_path)
    try:
        await asyncio.to_thread(server.wait_ready)

        def start_up() -> dict[str, Any]:
            client = Mastodon(access_token=token, api_base_url=server.url)  # checks the version: GET instance/
            status = client.status_post("where I stopped")
            client.markers_set(["home"], [status["id"]])
            return {
                "instance": client.instance(),
                "preferences": client.preferences(),
                "markers": client.markers_get(["home", "notifications"]),
                "emojis": client.custom_emojis(),
                "filters": client.filters(),
                "lists": client.lists(),
                "requests": client.follow_requests(),
                "announcements": client.announcements(),
                "status": status,
            }

        seen = await asyncio.to_thread(start_up)
    finally:
        server.stop()
    assert seen["instance"]["version"].startswith("4.3.0")
    assert seen["preferences"]["posting:default:visibility"] == "public"
    assert str(seen["markers"]["home"]["last_read_id"]) == str(seen["status"]["id"])
    assert seen["emojis"] == seen["filters"] == seen["lists"] == seen["requests"] == seen["announcements"] == []
    assert "Traceback" not in server.output()
