"""Fixtures: one real database per run (SQLite by default, PostgreSQL with CIPHERFEED_TEST_DB=postgresql),
migrated once with Alembic and emptied before each test; the app's real lifespan; HTTP clients per user.

Tests are async (anyio) and talk to the app through httpx's ASGI transport, so every request runs the same
middleware, routes and error map as under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crypto import RootKeyRing
from feed import db
from feed.app import create_app
from feed.settings import Settings, load_settings
from feed.storage.tables import metadata
from tests.worker import settle, start_worker, stop_worker

PG_ADMIN_URL = os.environ.get("CIPHERFEED_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKEND = os.environ.get("CIPHERFEED_TEST_DB", "sqlite")
# The SQLite pass runs as the embedded mode (no Redis: L1 and the in-process bus), the PostgreSQL pass as the
# scaled mode (Redis for L2 and the bus). CIPHERFEED_TEST_REDIS=URL or =none overrides.


def _claim_redis_dbs() -> tuple[int, int]:
    """Two Redis databases of our own for this run (the app's and ``redis_app``'s), so that two test runs on one
    machine do not flush each other's. Claimed with a key in database 0 that expires (a crashed run frees them)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        for first in range(2, 16, 2):
            if client.set(f"cipherfeed-test-run:{first}", os.getpid(), nx=True, ex=3 * 3600):
                return first, first + 1
    except redis.RedisError:
        pass
    finally:
        client.close()
    return 15, 13


_REDIS_DBS = _claim_redis_dbs()
REDIS_URL = os.environ.get(
    "CIPHERFEED_TEST_REDIS", "none" if BACKEND == "sqlite" else f"redis://127.0.0.1:6379/{_REDIS_DBS[0]}"
)
PASSWORD = "correct horse battery staple"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def pytest_report_header() -> str:
    return f"cipherfeed test database: {BACKEND}; redis: {REDIS_URL}"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


def _psql(sql: str) -> None:
    subprocess.run(["psql", PG_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        return
    if BACKEND != "postgresql":
        raise pytest.UsageError("CIPHERFEED_TEST_DB must be sqlite or postgresql")
    name = f"cipherfeed_test_{os.getpid()}_{secrets.token_hex(3)}"
    _psql(f"CREATE DATABASE {name}")
    try:
        yield _pg_url(name)
    finally:
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def root_key_json() -> str:
    return RootKeyRing.generate().to_json()


@pytest.fixture(scope="session")
def env(database_url: str, root_key_json: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment a cipherfeed process of this run gets (also used for CLI and uvicorn subprocesses)."""
    return {
        "CIPHERFEED_DATABASE_URL": database_url,
        "CIPHERFEED_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "CIPHERFEED_ROOT_KEY": root_key_json,
        "CIPHERFEED_SECRET_KEY": "test-secret-" + "x" * 40,
        "CIPHERFEED_LOGIN_ATTEMPTS_PER_IP": "1000",
        # Maintenance jobs run when a test runs them, not when the clock says (that test is in tests/jobs).
        "CIPHERFEED_EMBEDDED_CRON": "off",
    } | ({} if REDIS_URL == "none" else {"CIPHERFEED_REDIS_URL": REDIS_URL})


@pytest.fixture(scope="session")
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> AsyncIterator[None]:
    engine = db.make_engine(settings.database_url)
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()
    yield


@pytest.fixture(scope="session")
async def app(settings: Settings, migrated: None) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        await start_worker(application)  # the scaled mode's jobs run in a real arq worker beside the app
        try:
            yield application
        finally:
            await stop_worker(application)


async def empty_tables(engine: Any) -> None:
    """Empty every table. The app's relay and worker keep running between tests, so on PostgreSQL a TRUNCATE
    can meet one of their transactions in a lock cycle; the server aborts one side and the truncate is tried again."""
    for attempt in range(5):
        try:
            async with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    names = ", ".join(t.name for t in metadata.sorted_tables)
                    await conn.execute(sa.text(f"TRUNCATE {names} CASCADE"))
                else:
                    for table in reversed(metadata.sorted_tables):
                        await conn.execute(table.delete())
            return
        except sa.exc.DBAPIError as error:
            if "deadlock detected" not in str(error) or attempt == 4:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


@pytest.fixture
async def clean(app: Any) -> AsyncIterator[None]:
    await empty_tables(app.state.engine)
    await forget_cached(app)
    yield


@dataclass
class Browser:
    """A cookie-keeping client that fills in CSRF tokens like a browser submitting our forms."""

    http: httpx.AsyncClient
    csrf: str = ""
    username: str = ""

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        response = await self.http.get(url, **kw)
        found = CSRF_RE.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    async def post(self, url: str, data: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        if not self.csrf:
            await self.get("/login")
        form = {"csrf_token": self.csrf, **(data or {})}
        headers = {"Origin": str(self.http.base_url).rstrip("/"), **kw.pop("headers", {})}
        return await self.http.post(url, data=form, headers=headers, **kw)

    async def htmx_post(self, url: str, data: dict[str, str] | None = None) -> httpx.Response:
        return await self.post(url, data, headers={"HX-Request": "true"})

    async def compose(self, text: str, **fields: str) -> int:
        """Post ``text`` through the composer; returns the new post's id."""
        response = await self.post("/posts", {"status": text, **fields})
        assert response.status_code == 303, response.text
        location = response.headers["location"]
        return int(location.split("#post-")[-1] if "#post-" in location else location.rsplit("/", 1)[-1])


def browser_factory(application: Any, clients: list[httpx.AsyncClient], base_url: str = "http://testserver") -> Any:
    async def make(username: str | None = None, *, email: str = "") -> Browser:
        http = client_for(application, base_url=base_url)
        clients.append(http)
        browser = Browser(http)
        if username:
            await browser.get("/register")
            response = await browser.post(
                "/register",
                {"username": username, "password": PASSWORD, "password_confirm": PASSWORD, "email": email},
            )
            assert response.status_code == 303, response.text
            browser.username = username
            await browser.get("/")
        return browser

    return make


@pytest.fixture
async def make_browser(app: Any, clean: None) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []
    yield browser_factory(app, clients)
    for http in clients:
        await http.aclose()


@pytest.fixture
async def make_redis_browser(redis_clean: Any) -> AsyncIterator[Any]:
    """Browsers on ``redis_app``: the scaled mode's cache path in either pass."""
    clients: list[httpx.AsyncClient] = []
    yield browser_factory(redis_clean, clients)
    for http in clients:
        await http.aclose()


@pytest.fixture
async def api(app: Any, clean: None) -> AsyncIterator[Any]:
    """``await api("name")``: an API client with a bearer token for a new user ``name``."""
    from feed.services import accounts

    clients: list[httpx.AsyncClient] = []

    async def make(username: str | None = None) -> httpx.AsyncClient:
        headers = {}
        if username:
            svc = app.state.services
            await accounts.register(svc, username, PASSWORD)
            headers["Authorization"] = f"Bearer {await accounts.create_token(svc, username)}"
        http = client_for(app, headers=headers)
        clients.append(http)
        return http

    yield make
    for http in clients:
        await http.aclose()


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


REPO = Path(__file__).resolve().parent.parent


async def forget_cached(app: Any) -> None:
    """Empty L1 and L2, as if every TTL had run out: for tests that change rows behind the services' back."""
    app.state.cache.flush()
    link = app.state.cache.link
    if link is not None:
        await link.client.flushdb()


TEST_REDIS_DB_URL = f"redis://127.0.0.1:6379/{_REDIS_DBS[1]}"


def pytest_unconfigure(config: pytest.Config) -> None:
    import redis

    with contextlib.suppress(redis.RedisError):
        client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
        if client.get(f"cipherfeed-test-run:{_REDIS_DBS[0]}") == str(os.getpid()).encode():
            client.delete(f"cipherfeed-test-run:{_REDIS_DBS[0]}")
        client.close()


def _database_beside(database_url: str, tmp_path_factory: pytest.TempPathFactory, suffix: str) -> Iterator[str]:
    """A database of its own next to this run's (another SQLite file, or ``<name>_<suffix>`` on PostgreSQL)."""
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp(f'db-{suffix}') / 'test.db'}"
        return
    name = f"{database_url.rsplit('/', 1)[1]}_{suffix}"
    _psql(f"CREATE DATABASE {name}")
    try:
        yield _pg_url(name)
    finally:
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def redis_database_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database of ``redis_app``: a deployment of its own (its outbox is relayed into its own Redis)."""
    yield from _database_beside(database_url, tmp_path_factory, "r")


@pytest.fixture(scope="session")
def processes_database_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database for tests that run cipherfeed processes of their own: a deployment apart from ``app``'s (whose
    outbox relay, on a shared database, would take their writes into another Redis)."""
    yield from _database_beside(database_url, tmp_path_factory, "p")


@pytest.fixture(scope="session")
async def processes_engine(processes_database_url: str) -> AsyncIterator[Any]:
    engine = db.make_engine(load_settings({"CIPHERFEED_DATABASE_URL": processes_database_url}).database_url)
    try:
        await db.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def redis_env(env: dict[str, str], redis_database_url: str) -> dict[str, str]:
    """The environment of ``redis_app``'s deployment (for its other processes)."""
    return env | {"CIPHERFEED_REDIS_URL": TEST_REDIS_DB_URL, "CIPHERFEED_DATABASE_URL": redis_database_url}


@pytest.fixture(scope="session")
async def redis_app(redis_env: dict[str, str]) -> AsyncIterator[Any]:
    """A second deployment (its own database) that always has Redis (L2 and the bus), whichever pass this is."""
    settings = load_settings(redis_env)
    engine = db.make_engine(settings.database_url)
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        await start_worker(application)
        try:
            yield application
        finally:
            await stop_worker(application)


@pytest.fixture
async def redis_clean(redis_app: Any, app: Any) -> AsyncIterator[Any]:
    await empty_tables(redis_app.state.engine)
    await forget_cached(redis_app)
    await forget_cached(app)
    yield redis_app


@pytest.fixture(scope="session")
async def peer_app(settings: Settings, app: Any) -> AsyncIterator[Any]:
    """Another process of ``app``'s deployment: the same database and Redis (or, embedded, none)."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def make_peer_browser(peer_app: Any, make_browser: Any) -> AsyncIterator[Any]:
    """Browsers on ``peer_app``."""
    clients: list[httpx.AsyncClient] = []
    yield browser_factory(peer_app, clients)
    for http in clients:
        await http.aclose()


def client_for(application: Any, **kw: Any) -> httpx.AsyncClient:
    """A client of the app that, after each write, waits for the background jobs it queued (a reader a moment
    later sees their work done)."""

    async def after(response: httpx.Response) -> None:
        if response.request.method not in ("GET", "HEAD", "OPTIONS"):
            await settle(application)

    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application),
        follow_redirects=False,
        event_hooks={"response": [after]},
        **{"base_url": "http://testserver"} | kw,
    )


async def snapshot(app: Any) -> dict[str, list[str]]:
    """Every row of every table, to show that a refused request changed nothing."""
    out: dict[str, list[str]] = {}
    async with app.state.engine.connect() as conn:
        for table in metadata.sorted_tables:
            out[table.name] = sorted(repr(tuple(row)) for row in await conn.execute(sa.select(table)))
    return out
