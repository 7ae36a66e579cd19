"""An unexpected error is a plain 500 whose log line holds no data from the request."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from feed.services import timelines
from feed.web import page_blobs

pytestmark = pytest.mark.anyio


async def test_unexpected_error_is_a_500_without_its_message_in_the_log(
    make_browser: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await make_browser("alice")
    canary = "crash-canary-text-7f3a"

    async def broken_home(*args: Any, **kwargs: Any) -> Any:
        raise KeyError(canary)  # as if a lookup failed on a key that was post text

    monkeypatch.setattr(timelines, "home", broken_home)
    monkeypatch.setattr(page_blobs, "serve", broken_home)  # the page's blob may be cached already
    monkeypatch.setattr(page_blobs, "held", lambda *args, **kwargs: None)  # and held in this process
    monkeypatch.setattr(page_blobs, "from_store", broken_home)  # or read from Redis by the hot path
    caplog.set_level(logging.DEBUG)
    response = await alice.get("/")
    assert response.status_code == 500
    assert "Server error" in response.text and canary not in response.text
    crash = [r for r in caplog.records if r.name == "feed.crash"]
    assert len(crash) == 1
    assert "KeyError (message withheld)" in crash[0].getMessage()
    assert "broken_home" in crash[0].getMessage()  # the code location is kept
    assert all(canary not in r.getMessage() and canary not in (r.exc_text or "") for r in caplog.records)
