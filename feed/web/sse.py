"""A server-sent event stream for one :class:`feed.web.hub.Connection`, written by hand.

Why not ``sse-starlette``: its ``EventSourceResponse`` runs a task group of three tasks per connection (the stream,
a ping timer, a disconnect listener), and the hub's design is the opposite: one shared heartbeat timer, and the
request's own task as the only one a stream has, so that ten thousand idle streams cost little. What remains to
write is small: the headers, the wire format (https://html.spec.whatwg.org/multipage/server-sent-events.html), and a
look at whether the client is still there at each heartbeat.
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from feed.web.hub import Connection, Hub, Message
from feed.web.middleware import DIRECT_SEND

RETRY_MS = 2000  # how long a browser waits before reconnecting


_bodies: dict[tuple[str, str], bytes] = {}  # the encoded event of the last messages, shared by their connections


def encode(message: Message) -> bytes:
    """The wire form of ``message``. The event and data part is encoded once for every connection that gets the
    same message (one new post sent to a thousand viewers is one string, see the hub's ``memo``); what differs per
    connection (its position, its ``fill``) is put in the bytes."""
    key = (message.event, message.data)
    body = _bodies.get(key)
    if body is None:
        lines = [] if message.event == "message" else [f"event: {message.event}"]
        lines += [f"data: {line}" for line in message.data.split("\n")]
        body = ("\n".join(lines) + "\n\n").encode()
        if len(_bodies) >= 256:
            _bodies.clear()
        _bodies[key] = body
    if message.fill is not None:
        mark, value = message.fill
        body = body.replace(mark.encode(), value.encode())
    return body if message.id is None else b"id: " + message.id.encode() + b"\n" + body


async def client_gone(receive: Receive) -> bool:
    """Whether the client has disconnected, without waiting: a disconnected request's ``receive`` answers at once."""
    try:
        async with asyncio.timeout(0):
            message = await receive()
    except TimeoutError:
        return False
    return bool(message["type"] == "http.disconnect")


class EventStream(Response):
    """Streams what the hub queues for ``conn``; ``opening`` (run once the headers are out) catches it up."""

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: Hub,
        conn: Connection,
        *,
        heartbeat: bytes = b": \n\n",
        preamble: bytes = f"retry: {RETRY_MS}\n\n".encode(),
        strict: bool = False,
    ) -> None:
        super().__init__(
            status_code=200,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Connection": "keep-alive"},
            media_type=self.media_type,
        )
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # it is a stream
        self.hub = hub
        self.conn = conn
        self.heartbeat = heartbeat
        self.preamble = preamble
        self.strict = strict

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub, conn = self.hub, self.conn
        await receive()  # the (empty) request body; from now on ``receive`` answers only when the client goes
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        send = scope.get(DIRECT_SEND, send)  # the body chunks past the middleware, see DirectSend
        await send({"type": "http.response.body", "body": self.preamble, "more_body": True})
        try:
            await hub.open(conn, strict=self.strict)
            while True:
                await conn.wait()
                if conn.probe:
                    conn.probe = False
                    if await client_gone(receive):
                        return
                    conn.queue.append(Message("", ""))  # a heartbeat (a comment, or Mastodon's own)
                messages = conn.take()
                if messages:
                    body = b"".join(self.heartbeat if not m.event else encode(m) for m in messages)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    hub.sent(conn, [m for m in messages if m.event])
                if conn.closed and not conn.queue:
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            hub.remove(conn)
