"""The database goes away under a running server: what the caches hold is still served, every request that needs
the database is a 503 with ``Retry-After`` (a short page, or JSON on the API), never a 500; the outage is logged
once rather than once per request, ``/readyz`` fails while it lasts, and the server answers again within seconds
of the database coming back.

The database is PostgreSQL behind a TCP proxy the test cuts (every connection reset, new ones refused), as a
crashed or restarting server looks to its clients. Runs once, in the PostgreSQL pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from feed.app import create_app
from feed.settings import load_settings
from tests.conftest import BACKEND, CSRF_RE, PASSWORD, empty_tables
from tests.tcpproxy import TcpProxy

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "postgresql", reason="a database outage is tried once, in the PostgreSQL pass"),
]


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{port}"))


@pytest.fixture
async def behind_proxy(env: dict[str, str], processes_database_url: str, processes_engine: Any) -> AsyncIterator[Any]:
    await empty_tables(processes_engine)
    proxy = TcpProxy(urlsplit(processes_database_url).port or 5432).start()
    settings = load_settings(
        {k: v for k, v in env.items() if k != "CIPHERFEED_REDIS_URL"}
        | {"CIPHERFEED_DATABASE_URL": through(processes_database_url, proxy.port)}
    )
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            yield app, proxy
    finally:
        proxy.stop()


async def test_a_database_outage_is_a_503_logged_once_and_the_server_recovers_by_itself(
    behind_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app, proxy = behind_proxy
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        csrf = CSRF_RE.search((await http.get("/register")).text)
        assert csrf
        form = {"csrf_token": csrf.group(1), "username": "olga", "password": PASSWORD, "password_confirm": PASSWORD}
        assert (await http.post("/register", data=form)).status_code == 303
        home = await http.get("/")
        assert home.status_code == 200
        csrf = CSRF_RE.search(home.text)
        assert csrf
        caplog.clear()
        caplog.set_level(logging.INFO)

        proxy.cut()
        for n in range(5):
            assert (await http.get("/")).status_code in (200, 503), "the home page, from the caches or a 503"
            form = {"csrf_token": csrf.group(1), "status": f"written during the outage {n}"}
            page = await http.post("/posts", data=form, headers={"Origin": "http://testserver"})
            assert page.status_code == 503, page.text[:500]
            assert page.headers["retry-after"] == "5"
            assert page.headers["content-type"].startswith("text/html") and "Back in a moment" in page.text
            assert "send it again" in page.text and "refresh" not in page.text, "a form is not sent again by itself"
            api = await http.get("/api/v1/accounts/lookup", params={"acct": f"someone{n}"})
            assert api.status_code == 503 and api.headers["retry-after"] == "5"
            assert set(api.json()) == {"error"}
            assert (await http.get("/readyz")).status_code == 503
            refused = await http.get(f"/@uncached{n}")
            assert refused.status_code == 503 and 'http-equiv="refresh"' in refused.text
            assert (await http.get("/healthz")).status_code == 200, "alive, only not ready"
        messages = [r.getMessage() for r in caplog.records]
        assert sum("database unreachable" in m for m in messages) == 1, messages
        assert not any("unhandled error" in m or "Traceback" in m for m in messages), messages
        assert all(r.exc_info is None for r in caplog.records), "no stack traces"

        proxy.restore()
        back = time.monotonic()
        while (await http.get("/api/v1/accounts/lookup", params={"acct": "olga"})).status_code != 200:
            assert time.monotonic() - back < 5, "the server answered again within 5 s of the database"
        assert (await http.get("/readyz")).status_code == 200
        assert sum("database is back" in r.getMessage() for r in caplog.records) == 1
