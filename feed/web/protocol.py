"""The HTTP/1.1 protocol ``cipherfeed serve`` runs: uvicorn's httptools protocol with the limits uvicorn lacks.

uvicorn reads a request head of any size, never times out a head or a body that trickles in, and lets a connection
that never sends a byte stay open for ever. This protocol (``uvicorn --http feed.web.protocol:GuardedHttpTools``)
adds, per connection:

- the request line's URL: at most :data:`MAX_URL_BYTES`, else ``414``;
- the head (request line and headers): at most :data:`MAX_HEAD_BYTES` and :data:`MAX_HEADERS` fields, else ``431``;
  counted as the bytes arrive, so a 100 MB header is refused after its first chunk, not read whole;
- the head must arrive within ``CIPHERFEED_HEAD_TIMEOUT_SECONDS`` (10) of the connection
  opening or of the request's first byte (else ``408`` and the connection closes: slowloris);
- a request body must arrive within ``CIPHERFEED_BODY_TIMEOUT_SECONDS`` (30) of its head
  (else ``408``, or the connection just closes if the answer has begun).

Also from uvicorn's own settings, given by ``cipherfeed serve``: idle keep-alive connections close after
``timeout_keep_alive`` seconds, and ``limit_concurrency`` (``CIPHERFEED_MAX_CONNECTIONS``) refuses connections past
the cap with a ``503``. The body's size is limited by ``feed.web.middleware.BodyLimit`` (``413``).
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from feed.settings import seconds_setting

MAX_URL_BYTES = 8 * 1024
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
LINGER_SECONDS = 2.0


@functools.cache
def _timeouts() -> tuple[float, float]:
    """(head, body) seconds, read from the environment at the first connection of a process. uvicorn makes the
    protocol by its import path in each worker process and gives it only its own config, so the settings cannot be
    handed in; ``cipherfeed serve`` has checked them (``feed.settings``) before it started uvicorn."""
    return (
        seconds_setting(os.environ, "CIPHERFEED_HEAD_TIMEOUT_SECONDS", 10),
        seconds_setting(os.environ, "CIPHERFEED_BODY_TIMEOUT_SECONDS", 30),
    )


_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class GuardedHttpTools(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._header_count = 0
        self._in_head = True
        self._refusal: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lingering = False

    # -- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_timeouts()[0])

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # refused: what the client still sends is read and dropped until it stops or time is up
        super().data_received(data)
        if self._refusal is None and self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refusal = 431
        if self._refusal is not None and not self.transport.is_closing():
            self._refuse(self._refusal)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol takes the connection over, with its own pings
        super().handle_websocket_upgrade()

    # -- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._header_count = 0
        if self._timer is None:
            self._arm(_timeouts()[0])

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            self._refusal = self._refusal or 414

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._refusal = self._refusal or 431
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        if self._refusal is not None:
            return  # no request reaches the app; data_received answers once the parser returns
        if not self.parser.should_upgrade():
            self._arm(_timeouts()[1])  # disarmed when the body is complete (at once, for a request without one)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if self._refusal is None:
            super().on_message_complete()

    # -- refusals and timers

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self._refuse(408)
        else:
            self.transport.close()  # the answer has begun: all that is left is to end the connection

    def _refuse(self, status: int) -> None:
        """Answer ``status`` and close, whatever the parser was in the middle of. The close lingers (as nginx's
        does): the answer goes out and our side of the connection ends, then what the client is still sending is
        read and dropped for up to :data:`LINGER_SECONDS`, so that the client reads the answer rather than a reset.
        """
        body = f"{status} {_REASONS[status].decode()}\n".encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % (
            status,
            _REASONS[status],
            len(body),
        )
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app, if it runs, finds its client gone
            self.cycle.message_event.set()
        self.transport.write(head + b"connection: close\r\n\r\n" + body)
        self._disarm()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = True
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
