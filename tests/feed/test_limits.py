"""Hostile clients against a real ``cipherfeed serve`` process, over raw sockets: a huge or too many headers, a long
URL, a head or body that trickles in, an idle connection, more connections than the cap, a client that leaves
mid-request. Each is refused cleanly (or closed) and none leaves a stack trace in the log.

Runs once, in the SQLite pass (the limits are the web process's own, whatever the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKEND
from tests.feed.processes import AppProcess

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "sqlite", reason="one server process, once, in the SQLite pass"),
]

HEAD_SECONDS = 2
BODY_SECONDS = 2
KEEPALIVE_SECONDS = 1
MAX_CONNECTIONS = 24


@pytest.fixture(scope="module")
def server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")}
    limits = {
        "CIPHERFEED_HEAD_TIMEOUT_SECONDS": str(HEAD_SECONDS),
        "CIPHERFEED_BODY_TIMEOUT_SECONDS": str(BODY_SECONDS),
        "CIPHERFEED_KEEPALIVE_SECONDS": str(KEEPALIVE_SECONDS),
        "CIPHERFEED_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    proc = AppProcess("limits", inherited | env | limits, tmp_path_factory.mktemp("limits"))
    proc.wait_ready()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.output() and "unhandled error" not in proc.output(), proc.output()


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send ``data``, then read until the server closes (or ``wait`` seconds pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass
    try:
        return await asyncio.wait_for(reader.read(), wait)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    found = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert found, answer[:200]
    return int(found.group(1))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_oversized_heads_and_urls_are_refused_as_they_arrive(server: AppProcess) -> None:
    before = rss(server.proc.pid)
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    assert status_of(await exchange(server.port, huge)) == 431
    eight_huge = await asyncio.gather(*(exchange(server.port, huge) for _ in range(8)))
    assert {status_of(a) for a in eight_huge} == {431}
    assert rss(server.proc.pid) - before < 32 << 20, "a 1 MB header is not read whole, eight at once neither"
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(101)) + b"\r\n"
    assert status_of(await exchange(server.port, many)) == 431
    long_url = b"GET /?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert status_of(await exchange(server.port, long_url)) == 414
    fine = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"X-Ok: v\r\n" * 50 + b"\r\n"
    assert status_of(await exchange(server.port, fine)) == 200


async def test_slow_heads_slow_bodies_and_idle_connections_are_closed(server: AppProcess) -> None:
    async def trickle() -> tuple[bytes, float]:
        """slowloris: a byte of head every half second, never finishing."""
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(40):
                    await asyncio.sleep(0.5)
                    writer.write(b"X")
                    await writer.drain()

        dripping = asyncio.get_running_loop().create_task(drip())
        answer = await asyncio.wait_for(reader.read(), HEAD_SECONDS + 5)  # until the server ends the connection
        took = time.monotonic() - started
        dripping.cancel()
        writer.close()
        return answer, took

    async def silent() -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.wait_for(reader.read(), HEAD_SECONDS + 5)
        writer.close()
        return time.monotonic() - started

    async def slow_body() -> bytes:
        head = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        return await exchange(server.port, head + b"Content-Length: 100\r\n\r\nusername=a", wait=BODY_SECONDS + 5)

    async def idle_keep_alive() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"ok")
        answered = time.monotonic()
        await asyncio.wait_for(reader.read(), KEEPALIVE_SECONDS + 5)
        writer.close()
        return time.monotonic() - answered

    (slowloris, took), quiet, body, idle = await asyncio.gather(trickle(), silent(), slow_body(), idle_keep_alive())
    assert status_of(slowloris) == 408 and took < HEAD_SECONDS + 2
    assert quiet < HEAD_SECONDS + 2, "a connection that never sends a byte is closed"
    assert status_of(body) == 408
    assert idle < KEEPALIVE_SECONDS + 1.5


async def test_connections_past_the_cap_are_refused_cleanly(server: AppProcess) -> None:
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(MAX_CONNECTIONS + 4)]
    try:
        answers = await asyncio.gather(*(exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", wait=3)
                                         for _ in range(3)))  # fmt: skip
        assert {status_of(a) for a in answers} == {503}
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.5)
    ok = await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200, "served again once the others are gone"


async def test_a_client_that_leaves_mid_request_is_not_an_error(server: AppProcess) -> None:
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /posts HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nstatus=half")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
    await asyncio.sleep(0.5)
    assert "Traceback" not in server.output() and "unhandled error" not in server.output(), server.output()
