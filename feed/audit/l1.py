"""The in-process caches (L1) of the running servers and workers, audited by the processes themselves.

Each process that has Redis listens on :func:`channel` (named by its Redis database, so deployments that share a
Redis server keep apart). ``cipherfeed audit`` publishes a request there with the patterns it looks for (the
canaries' encodings, ``feed.audit.detect``) and the channel to answer on; each process searches its own L1 values
and answers with what it holds (counts and bytes) and where it found something, never a value. A process that does
not answer in :data:`ANSWER_SECONDS` is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Sequence
from typing import Any

from feed.audit.detect import Needle, find_canaries
from feed.audit.report import Report
from feed.cache import Cache
from feed.records import CACHEABLE, encode
from feed.redis_link import RedisLink, is_cluster, subscribers

log = logging.getLogger(__name__)

ANSWER_SECONDS = 3.0


def channel(client: Any) -> str:
    database = 0 if is_cluster(client) else client.connection_pool.connection_kwargs.get("db", 0)
    return f"cf:audit:{database}"


def inspect(cache: Cache, found: Sequence[Needle], who: str) -> dict[str, Any]:
    """What this process's L1 holds and where a canary or a value of no cacheable type is in it."""
    values = total = 0
    findings = []
    for name, value in cache.l1_items():
        values += 1
        if not isinstance(value, CACHEABLE):
            findings.append(
                {"where": f"{who} {name}", "what": "not a cacheable record", "detail": type(value).__name__}
            )
            continue
        data = encode(value)
        total += len(data)
        for hit in find_canaries(data, found):
            findings.append(
                {
                    "where": f"{who} {name} @{hit.offset}",
                    "what": "canary",
                    "detail": f"{hit.canary!r} as {hit.encoding}",
                }
            )
    return {"process": who, "values": values, "bytes": total, "findings": findings}


async def answer_requests(link: RedisLink, cache: Cache, role: str) -> None:
    """Answer audit requests until cancelled (and through Redis outages)."""
    who = f"{role} {os.getpid()}"
    client = link.client
    while True:
        try:
            async with link.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel(client))
                while True:
                    message = await pubsub.get_message(timeout=5.0)  # (as the bus reads: the socket's timeout is short)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        request = json.loads(message["data"])
                        found = [Needle(c, e, bytes.fromhex(p)) for c, e, p in request["needles"]]
                        reply = str(request["reply"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    await link.publish(client, reply, json.dumps(inspect(cache, found, who)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: listen again once it is back
            log.debug("audit listener stopped (%s); listening again", type(exc).__name__)
            await asyncio.sleep(1.0)


async def scan_l1(link: RedisLink, found: Sequence[Needle], report: Report) -> None:
    """Ask every listening process to audit its L1; their answers into ``report``."""
    place = report.place("l1")
    reply = f"cf:audit:reply:{secrets.token_hex(8)}"
    client = link.client
    async with link.pubsub() as pubsub:
        await pubsub.subscribe(reply)
        expected = await subscribers(client, channel(client))
        request = {"reply": reply, "needles": [[n.canary, n.encoding, n.pattern.hex()] for n in found]}
        await link.publish(client, channel(client), json.dumps(request))
        answers: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ANSWER_SECONDS):
                while len(answers) < expected:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=ANSWER_SECONDS)
                    if message is not None:
                        answers.append(json.loads(message["data"]))
    for answer in answers:
        place.items += int(answer["values"])
        place.bytes += int(answer["bytes"])
        for finding in answer["findings"]:
            report.find("l1", str(finding["where"]), str(finding["what"]), str(finding["detail"]))
    place.note = f"{len(answers)} process(es) answered"
    if len(answers) < expected:
        report.unchecked["l1"] = f"{expected - len(answers)} of {expected} processes did not answer"
