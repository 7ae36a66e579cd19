"""Scenario 8 (issue 9): live push.

- **Delivery.** ``push_clients`` server-sent event clients (1,000) hold the public page stream of one cipherfeed web
  process; one post is made through the API. The peer, in the same run, is a bare Starlette SSE broadcaster
  (``bench.peers:sse_factory``) holding as many streams, asked to send the very bytes cipherfeed sent. Figures:
  - the broadcast rate: clients over the time from the first client's copy to the last one's (how fast the server
    writes one event to all its streams);
  - p99 from commit to the last byte written, per stream, from cipherfeed's own histogram
    (``cipherfeed_stream_delivery_seconds``, read from ``/metrics`` before and after: bucket bounds);
  - p99 from the request being sent to each client's copy arriving: for cipherfeed that includes the write itself
    (the commit, the outbox relay, the Redis stream, rendering), for the peer only its publish request.
- **Memory.** ``idle_streams`` (10,000) idle streams held by one process: its resident memory grows by so much per
  stream (cipherfeed and the peer, each measured alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from urllib.parse import quote

from bench import http
from bench.report import Row, Target
from bench.servers import Proc, Processes, wait_ready

PEER = "bare SSE"
MARK = b"event: post\n"
DELIVERY = "cipherfeed_stream_delivery_seconds"
RELAY = "cipherfeed_outbox_relay_seconds"


class Client:
    """One stream read as bytes: when each event arrived (and, for one client, the bytes of the first)."""

    def __init__(self, keep: bool = False) -> None:
        self.times: list[float] = []
        self.keep = keep
        self.kept = b""
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, port: int, path: str) -> None:
        reader, writer = await asyncio.open_connection(http.HOST, port)
        self.writer = writer
        writer.write(http.build_request(path))
        await reader.readuntil(b"\r\n\r\n")
        self.task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        tail = b""
        while chunk := await reader.read(1 << 16):
            now = time.perf_counter()
            if self.keep:
                self.kept += chunk
            data = tail + chunk
            self.times.extend([now] * data.count(MARK))
            tail = data[-(len(MARK) - 1) :]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self.task
        if self.writer is not None:
            self.writer.close()


async def _open_many(port: int, path: str, count: int, batch: int = 250) -> list[Client]:
    clients = [Client(keep=(n == 0)) for n in range(count)]
    for start in range(0, count, batch):
        await asyncio.gather(*(c.open(port, path) for c in clients[start : start + batch]))
    return clients


async def _round(clients: list[Client], trigger: Callable[[], Awaitable[None]]) -> list[float]:
    """Each client's seconds from the trigger to its next event."""
    before = [len(c.times) for c in clients]
    started = time.perf_counter()
    await trigger()
    deadline = time.monotonic() + 30
    while any(len(c.times) <= b for c, b in zip(clients, before, strict=True)):
        if time.monotonic() > deadline:
            raise TimeoutError("not every client got the event")
        await asyncio.sleep(0.001)
    return [c.times[b] - started for c, b in zip(clients, before, strict=True)]


async def _post(port: int, request: bytes) -> None:
    conn = await http.Connection.open(port)
    try:
        answer = await conn.send(request)
        if answer.status != 200:
            raise RuntimeError(f"the trigger answered {answer.status}")
    finally:
        conn.writer.close()


def _form(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {http.HOST}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _event_bytes(kept: bytes) -> bytes:
    """The first post event a client got, as it was on the wire (without HTTP chunk framing)."""
    start = kept.index(MARK)
    start = kept.rindex(b"id: ", 0, start)
    end = kept.index(b"\n\n", start) + 2
    return kept[start:end]


def _rss(proc: Proc) -> int:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _per_stream(proc: Proc, count: int) -> float:
    """Bytes of resident memory one more idle stream costs ``proc``."""
    await asyncio.sleep(0.5)
    before = _rss(proc)
    clients = await _open_many(proc.port, "/events?timeline=public" if proc.name == "cipherfeed" else "/events", count)
    await asyncio.sleep(1.0)
    after = _rss(proc)
    for client in clients:
        await client.close()
    return (after - before) / count


async def _buckets(port: int, name: str) -> dict[float, float]:
    """Cumulative counts of the histogram ``name`` per bucket bound, from ``/metrics``."""
    text = (await http.get(port, "/metrics")).body.decode()
    pattern = re.compile(rf'^{name}_bucket\{{[^}}]*le="([^"]+)"[^}}]*\}} (\S+)$', re.M)
    out: dict[float, float] = {}
    for found in pattern.finditer(text):
        bound = math.inf if found.group(1) == "+Inf" else float(found.group(1))
        out[bound] = out.get(bound, 0.0) + float(found.group(2))
    return out


def _bound(before: dict[float, float], after: dict[float, float], share: float) -> float:
    """The smallest bucket bound under which ``share`` of the observations between the two readings fell."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(math.inf, 0.0)
    for bound, count in counts.items():
        if total and count >= share * total:
            return bound
    return math.nan


async def push(clients_n: int, idle_n: int, repeats: int, procs: Processes, cf: Proc, api_token: str) -> list[Row]:
    bare = procs.uvicorn("sse-bare", "bench.peers:sse_factory", {})
    await wait_ready(bare)
    ours_clients = await _open_many(cf.port, "/events?timeline=public", clients_n)
    peer_clients = await _open_many(bare.port, "/events", clients_n)
    auth = {"Authorization": f"Bearer {api_token}", "Content-Type": "application/x-www-form-urlencoded"}
    ours: list[list[float]] = []
    peer: list[list[float]] = []
    event = b""
    # One round untimed first: the first post after a start renders and caches for the first time.
    warm = _form("/api/v1/statuses", b"status=warming+up", auth)
    await _round(ours_clients, partial(_post, cf.port, warm))
    before = {name: await _buckets(cf.port, name) for name in (DELIVERY, RELAY)}
    try:
        for round_ in range(repeats * 2 + 1):
            if round_ % 2 == 0:
                body = f"status={quote(f'Live push, round {round_}: one post to a thousand readers.')}".encode()
                request = _form("/api/v1/statuses", body, auth)
                ours.append(await _round(ours_clients, partial(_post, cf.port, request)))
                event = event or _event_bytes(ours_clients[0].kept)
            else:
                request = _form("/publish", event, {"Content-Type": "text/event-stream"})
                peer.append(await _round(peer_clients, partial(_post, bare.port, request)))
        after = {name: await _buckets(cf.port, name) for name in (DELIVERY, RELAY)}
    finally:
        for client in (*ours_clients, *peer_clients):
            await client.close()
    print(f"push to {clients_n} streams: ours {[max(r) for r in ours]}, bare {[max(r) for r in peer]}", file=sys.stderr)

    def p99(rounds: list[list[float]]) -> float:
        return statistics.median(sorted(r)[int(len(r) * 0.99) - 1] for r in rounds) * 1000

    def rate(rounds: list[list[float]]) -> float:
        return statistics.median(len(r) / max(max(r) - min(r), 1e-6) for r in rounds)

    ours_memory = await _per_stream(cf, idle_n)
    peer_memory = await _per_stream(bare, idle_n)
    scenario = "8"
    committed_p99 = _bound(before[DELIVERY], after[DELIVERY], 0.99) * 1000
    relay_p50 = _bound(before[RELAY], after[RELAY], 0.5) * 1000
    relay_max = _bound(before[RELAY], after[RELAY], 1.0) * 1000
    return [
        Row(
            scenario,
            f"one post to {clients_n} SSE streams, broadcast rate (first copy to last)",
            "1/s",
            rate(ours),
            rate(peer),
            PEER,
            Target(">=", 0.5),
            note=f"{len(event)} bytes per event",
        ),
        Row(
            scenario,
            "p99 from commit to the last byte written (server histogram, bucket bound)",
            "ms",
            committed_p99,
            target=Target("<=", 50, on="cipherfeed"),
        ),
        Row(
            scenario,
            "p99 from the post request to each copy (cipherfeed: the write included)",
            "ms",
            p99(ours),
            p99(peer),
            PEER,
        ),
        Row(
            scenario,
            "outbox relay, commit to relayed, median (bucket bound)",
            "ms",
            relay_p50,
            note=f"slowest under {relay_max:g} ms",
        ),
        Row(
            scenario,
            f"{idle_n} idle streams, memory per stream",
            "KiB",
            ours_memory / 1024,
            peer_memory / 1024,
            PEER,
            Target("<=", 30, on="cipherfeed"),
        ),
    ]
