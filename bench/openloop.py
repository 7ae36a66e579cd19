"""Our open-loop client: requests leave at a fixed rate whatever the server does, and each latency is measured from
the moment the request was *meant* to leave. A closed-loop tool waits for a slow answer before sending the next
request, so a stall delays the requests that would have suffered from it and they never count (coordinated
omission); here they queue and their wait is part of their latency.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from bench.http import HOST, Connection


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Latencies in milliseconds."""

    rate: float  # requests per second asked for (0 for a burst)
    sent: int
    ok: int
    errors: int
    seconds: float
    p50: float
    p90: float
    p99: float
    max: float

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def summarize(latencies: list[float], rate: float, sent: int, errors: int, seconds: float) -> LatencyResult:
    values = sorted(latencies)
    return LatencyResult(
        rate=rate,
        sent=sent,
        ok=len(values),
        errors=errors,
        seconds=seconds,
        p50=percentile(values, 50) * 1000,
        p90=percentile(values, 90) * 1000,
        p99=percentile(values, 99) * 1000,
        max=(values[-1] if values else math.nan) * 1000,
    )


async def _exchange(conn: Connection, port: int, request: bytes) -> tuple[Connection, bool]:
    """Send one request; on a broken connection open a new one (the failure counts as an error)."""
    try:
        response = await conn.send(request)
    except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
        await conn.close()
        return await Connection.open(port), False
    return conn, response.status == 200


class _Conn(asyncio.Protocol):
    """One keep-alive connection driven by callbacks: no task, queue or stream per request, so that one core can
    offer several thousand requests per second."""

    def __init__(self, owner: _OpenLoop) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.need = 0  # bytes of the whole response once its head is read, 0 before
        self.status = 0
        self.intended = 0.0
        self.busy = False
        self.ready: asyncio.Future[None] = owner.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.ready.set_result(None)

    def send(self, intended: float) -> None:
        assert self.transport is not None
        self.intended = intended
        self.busy = True
        self.transport.write(self.owner.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.need:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self.connection_lost(ConnectionError("no content-length"))
                return
            stop = head.find(b"\r\n", at + 2)
            self.need = end + 4 + int(head[at + 17 : stop if stop >= 0 else None])
            self.status = int(head[9:12])
        if len(self.buffer) >= self.need:
            del self.buffer[: self.need]
            self.need = 0
            self.busy = False
            self.owner.done(self, self.status == 200)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        if self.busy:
            self.busy = False
            self.owner.done(self, False, lost=True)


class _OpenLoop:
    def __init__(self, request: bytes, total: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.request = request
        self.total = total
        self.idle: deque[_Conn] = deque()
        self.backlog: deque[float] = deque()
        self.latencies: list[float] = []
        self.errors = 0
        self.finished: asyncio.Future[None] = self.loop.create_future()

    def offer(self, intended: float) -> None:
        if self.idle:
            self.idle.pop().send(intended)
        else:
            self.backlog.append(intended)  # its wait for a connection counts in its latency

    def done(self, conn: _Conn, ok: bool, *, lost: bool = False) -> None:
        if ok:
            self.latencies.append(self.loop.time() - conn.intended)
        else:
            self.errors += 1
        if len(self.latencies) + self.errors >= self.total:
            if not self.finished.done():
                self.finished.set_result(None)
        elif lost:
            return
        elif self.backlog:
            conn.send(self.backlog.popleft())
        else:
            self.idle.append(conn)


async def open_loop(port: int, request: bytes, *, rate: float, seconds: float, connections: int) -> LatencyResult:
    """Offer ``rate`` requests per second for ``seconds``, over up to ``connections`` keep-alive connections."""
    total = max(1, int(rate * seconds))
    state = _OpenLoop(request, total)
    loop = state.loop
    conns: list[_Conn] = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Conn(state), HOST, port)
        conns.append(conn)
    state.idle.extend(conns)
    start = loop.time() + 0.01
    sent = 0
    while sent < total:
        due = min(total, int((loop.time() - start) * rate) + 1)
        for index in range(sent, due):
            state.offer(start + index / rate)
        sent = max(sent, due)
        gap = start + sent / rate - loop.time()
        # The loop's timers are good to about a millisecond: shorter gaps are waited out by yielding.
        await asyncio.sleep(gap if gap > 0.001 else 0)
    try:
        await asyncio.wait_for(asyncio.shield(state.finished), timeout=30 + seconds)
    except TimeoutError:
        state.errors += total - len(state.latencies) - state.errors
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return summarize(state.latencies, rate, sent, state.errors, loop.time() - start)


async def burst(port: int, request: bytes, n: int) -> LatencyResult:
    """``n`` requests sent at the same instant on ``n`` open connections; latency from that instant."""
    conns = await asyncio.gather(*(Connection.open(port) for _ in range(n)))
    start = time.perf_counter()

    async def one(conn: Connection) -> float | None:
        conn, ok = await _exchange(conn, port, request)
        done = time.perf_counter() - start
        await conn.close()
        return done if ok else None

    results = await asyncio.gather(*(one(conn) for conn in conns))
    latencies = [r for r in results if r is not None]
    return summarize(latencies, 0.0, n, n - len(latencies), time.perf_counter() - start)


async def closed_loop(port: int, request: bytes, *, seconds: float, connections: int) -> int:
    """As many requests as ``connections`` keep-alive connections get answered in ``seconds`` (warm-up)."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        conn = await Connection.open(port)
        while time.perf_counter() < deadline:
            conn, _ = await _exchange(conn, port, request)
            done += 1
        await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return done
