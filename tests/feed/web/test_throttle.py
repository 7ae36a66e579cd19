"""Login throttling that cannot be turned against the owner: guessing is slowed down per account and address, per
address, and per account from unknown devices; the owner's known device, or another address, still gets in; and
``X-Forwarded-For`` moves the per-address count only when the peer is a configured proxy."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from feed.app import create_app
from feed.settings import load_settings
from tests.conftest import BACKEND, CSRF_RE, PASSWORD
from tests.feed.processes import AppProcess

pytestmark = pytest.mark.anyio

WRONG = "not the password at all"


@pytest.fixture
async def throttled(env: dict[str, str], migrated: None, clean: None) -> AsyncIterator[Any]:
    """The app with the default per-address limit (the test run raises it for everyone else)."""
    settings = load_settings({**env, "CIPHERFEED_LOGIN_ATTEMPTS_PER_IP": "20"})
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


class Device:
    """A browser at one address, keeping its cookies (the device cookie among them)."""

    def __init__(self, app: Any, ip: str) -> None:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        self.http = httpx.AsyncClient(transport=transport, base_url="http://testserver")

    async def login(self, username: str, password: str) -> httpx.Response:
        page = await self.http.get("/login")
        found = CSRF_RE.search(page.text)
        assert found
        form = {"csrf_token": found.group(1), "username": username, "password": password}
        return await self.http.post("/login", data=form, headers={"Origin": "http://testserver"})

    async def logout(self) -> None:
        found = CSRF_RE.search((await self.http.get("/")).text)
        assert found
        await self.http.post("/logout", data={"csrf_token": found.group(1)}, headers={"Origin": "http://testserver"})


@pytest.fixture
async def devices(throttled: Any) -> AsyncIterator[Any]:
    made: list[Device] = []

    def make(ip: str) -> Device:
        made.append(Device(throttled, ip))
        return made[-1]

    yield make
    for device in made:
        await device.http.aclose()


async def register(device: Device, name: str) -> None:
    page = await device.http.get("/register")
    found = CSRF_RE.search(page.text)
    assert found
    form = {"csrf_token": found.group(1), "username": name, "password": PASSWORD, "password_confirm": PASSWORD}
    response = await device.http.post("/register", data=form, headers={"Origin": "http://testserver"})
    assert response.status_code == 303, response.text


async def test_the_owner_still_gets_in_while_a_guesser_is_slowed_down(devices: Any, throttled: Any) -> None:
    owners = devices("192.0.2.10")
    await register(owners, "alice")  # the browser that made the account is a known device
    await owners.logout()
    attacker = devices("203.0.113.66")
    limit = throttled.state.services.throttle.per_account
    for _ in range(limit):
        assert (await attacker.login("alice", WRONG)).status_code == 401
    slowed = await attacker.login("alice", PASSWORD)
    assert slowed.status_code == 429, "even the right password waits its turn at the guesser's address"
    assert slowed.headers["retry-after"] == "1" and "Too many failed logins" in slowed.text
    # The owner: from their known device, from another address without it, and even at the guesser's address.
    assert (await owners.login("alice", PASSWORD)).status_code == 303
    assert (await devices("198.51.100.7").login("alice", PASSWORD)).status_code == 303
    same_address = devices("203.0.113.66")
    same_address.http.cookies.update({k: v for k, v in owners.http.cookies.items() if k == "cf_device"})
    assert (await same_address.login("alice", PASSWORD)).status_code == 303


async def test_guessing_slows_down_rather_than_locks_out(devices: Any, throttled: Any) -> None:
    await register(devices("192.0.2.10"), "bob")
    attacker = devices("203.0.113.66")
    for _ in range(throttled.state.services.throttle.per_account):
        assert (await attacker.login("bob", WRONG)).status_code == 401
    waits = []
    for _ in range(2):
        refused = await attacker.login("bob", WRONG)
        assert refused.status_code == 429
        waits.append(int(refused.headers["retry-after"]))
        await asyncio.sleep(waits[-1] + 0.05)
        assert (await attacker.login("bob", WRONG)).status_code == 401, "one more guess after the wait"
    assert waits == [1, 2], "each further guess waits twice as long"
    refused = await attacker.login("bob", PASSWORD)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "4"


async def test_a_guess_spread_over_many_addresses_does_not_stop_a_known_device(devices: Any, throttled: Any) -> None:
    owners = devices("192.0.2.10")
    await register(owners, "carol")
    await owners.logout()
    rules = throttled.state.services.throttle
    statuses = []
    for n in range(rules.per_account_unknown + 3):
        statuses.append((await devices(f"198.18.{n // 250}.{n % 250 + 1}").login("carol", WRONG)).status_code)
    assert statuses[: rules.per_account_unknown] == [401] * rules.per_account_unknown
    assert 429 in statuses[rules.per_account_unknown :], "unknown devices are slowed down for the account"
    assert (await devices("198.18.9.9").login("carol", PASSWORD)).status_code == 429
    assert (await owners.login("carol", PASSWORD)).status_code == 303, "the owner's device gets in"


async def test_a_device_cookie_counts_only_for_its_own_account_and_cannot_be_forged(
    devices: Any, throttled: Any
) -> None:
    owners = devices("192.0.2.10")
    await register(owners, "dave")
    await register(devices("192.0.2.11"), "erin")
    token = owners.http.cookies["cf_device"]
    assert re.fullmatch(r"[\w-]+\.[0-9a-f]{32}", token)
    attacker = devices("203.0.113.66")
    limit = throttled.state.services.throttle.per_account
    for cookie in (token, token[:-1] + ("0" if token[-1] != "0" else "1"), "x.y~" + token):
        attacker.http.cookies.set("cf_device", cookie)
        for _ in range(limit + 1):
            await attacker.login("erin", WRONG)
        assert (await attacker.login("erin", PASSWORD)).status_code == 429, f"{cookie!r} is not erin's device"
        await asyncio.sleep(0)


@pytest.mark.skipif(BACKEND != "sqlite", reason="a real server process, once, in the SQLite pass")
async def test_x_forwarded_for_moves_the_count_only_behind_a_configured_proxy(
    env: dict[str, str], tmp_path: Path
) -> None:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")} | env
    base |= {"CIPHERFEED_LOGIN_ATTEMPTS_PER_IP": "3", "CIPHERFEED_LOGIN_ATTEMPTS_PER_ACCOUNT": "100"}
    base.pop("CIPHERFEED_REDIS_URL", None)
    for trusted, expect in (("10.255.255.1", 429), ("127.0.0.1", 401)):
        server = AppProcess(f"serve-{expect}", base | {"CIPHERFEED_FORWARDED_ALLOW_IPS": trusted}, tmp_path)
        try:
            server.wait_ready()
            async with httpx.AsyncClient(base_url=server.url) as http:
                statuses = []
                for n in range(6):
                    spoofed = {"X-Forwarded-For": f"203.0.113.{n + 1}", "Origin": server.url}
                    page = await http.get("/login", headers=spoofed)
                    found = CSRF_RE.search(page.text)
                    assert found
                    form = {"csrf_token": found.group(1), "username": f"nobody{n}", "password": WRONG}
                    statuses.append((await http.post("/login", data=form, headers=spoofed)).status_code)
            assert statuses[-1] == expect, (trusted, statuses)
        finally:
            server.stop()
