"""A small server-sent events client for the live tests: reads a real stream over HTTP and queues its events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class Event:
    event: str
    data: str
    id: str | None
    at: float  # time.monotonic() when it arrived


@dataclass
class Stream:
    """``GET url`` on ``http`` as an event stream; events go to ``events`` as they arrive. ``ended`` is set when the
    server closes the stream."""

    http: httpx.AsyncClient
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    seen: list[Event] = field(default_factory=list)
    status: int | None = None
    response_headers: httpx.Headers = field(default_factory=httpx.Headers)
    last_id: str | None = None
    heartbeats: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> Stream:
        self._task = asyncio.get_running_loop().create_task(self._read())
        await asyncio.wait_for(self.opened.wait(), 10)
        assert self.status == 200, f"stream answered {self.status}"
        return self

    async def _read(self) -> None:
        try:
            async with self.http.stream("GET", self.url, headers=self.headers, timeout=None) as response:
                self.status = response.status_code
                self.response_headers = response.headers
                self.opened.set()
                if response.status_code != 200:
                    await response.aread()
                    return
                kind, data, event_id = "message", [], None
                async for line in response.aiter_lines():
                    if line == "":
                        if data:
                            found = Event(kind, "\n".join(data), event_id, time.monotonic())
                            if event_id is not None:
                                self.last_id = event_id
                            self.seen.append(found)
                            self.events.put_nowait(found)
                        kind, data, event_id = "message", [], None
                    elif line.startswith(":"):
                        self.heartbeats += 1
                    else:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "event":
                            kind = value
                        elif name == "data":
                            data.append(value)
                        elif name == "id":
                            event_id = value
        except (httpx.HTTPError, OSError):
            pass
        finally:
            self.opened.set()
            self.ended.set()

    async def next(self, event: str | None = None, timeout: float = 5.0) -> Event:  # noqa: ASYNC109
        """The next event (of kind ``event``, others skipped); AssertionError if none comes in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                found = await asyncio.wait_for(self.events.get(), max(0.001, left))
            except TimeoutError:
                raise AssertionError(f"no {event or 'event'} within {timeout} s (seen: {self.kinds()})") from None
            if event is None or found.event == event:
                return found

    async def quiet(self, seconds: float, event: str | None = None) -> list[Event]:
        """Events (of kind ``event``) that arrive within ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                found = await asyncio.wait_for(self.events.get(), left)
            except TimeoutError:
                break
            if event is None or found.event == event:
                out.append(found)
        return out

    def kinds(self) -> list[str]:
        return [e.event for e in self.seen]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def post_id_of(event: Event) -> int:
    """The id of the post an ``post`` or ``edit`` event carries."""
    marker = 'id="post-'
    start = event.data.index(marker) + len(marker)
    return int(event.data[start : event.data.index('"', start)])


async def open_stream(http: httpx.AsyncClient, url: str, **headers: Any) -> Stream:
    return await Stream(http, url, dict(headers)).start()
