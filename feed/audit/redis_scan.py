"""Redis: every key by SCAN (never KEYS; on a cluster, on each primary), its name and its value read as its type
holds it (strings, hashes, lists, sets, sorted sets, streams), and each node's slow log (which keeps commands'
arguments). A cache value that decodes as one of ``feed.records``' types is declared metadata and sealed blobs by
construction; anything else that looks like text is reported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from feed.audit.database import _search
from feed.audit.detect import Needle, looks_like_text
from feed.audit.report import Progress, Report
from feed.cache import PREFIX
from feed.records import CorruptValue, decode
from feed.redis_link import on_each_node, scan_keys

SCAN_COUNT = 1000
STREAM_PAGE = 1000


async def scan_redis(client: Any, needles: Sequence[Needle], report: Report, progress: Progress) -> None:
    place = report.place("redis")
    async for keys in scan_keys(client, count=SCAN_COUNT):
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
            kinds = await pipe.execute()
        batch: list[tuple[str, bytes]] = []
        for key, kind in zip(keys, kinds, strict=True):
            name = key.decode("utf-8", "replace")
            batch.append((f"key name {name}", key))
            if reason := looks_like_text(key):
                report.find("redis", f"key name {name}", "looks like text", reason)
            for label, value in await _values(client, key, kind.decode() if isinstance(kind, bytes) else kind):
                place.bytes += len(value)
                batch.append((f"{name} {label}", value))
                _judge(report, name, label, value)
        place.items += len(keys)
        _search(report, "redis", batch, needles)
        progress.update("redis", place.items)
    slow = [entry for node in await on_each_node(client, "SLOWLOG GET", 128) for entry in node]
    slow_batch = []
    for entry in slow:
        for arg in entry.get("command", b"").split() if isinstance(entry.get("command"), bytes) else []:
            slow_batch.append((f"slowlog {entry.get('id')}", arg))
    _search(report, "redis", slow_batch, needles)
    place.note = f"{len(slow)} slow log entries"
    progress.done("redis", place.items)


async def _values(client: Any, key: bytes, kind: str) -> list[tuple[str, bytes]]:
    if kind == "string":
        value = await client.get(key)
        return [("value", value)] if value is not None else []
    if kind == "hash":
        found = await client.hgetall(key)
        return [pair for field, value in found.items() for pair in (("field", field), (f"[{field!r}]", value))]
    if kind == "list":
        return [(f"[{i}]", v) for i, v in enumerate(await client.lrange(key, 0, -1))]
    if kind == "set":
        return [("member", v) for v in await client.smembers(key)]
    if kind == "zset":
        return [("member", v) for v, _ in await client.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        out: list[tuple[str, bytes]] = []
        after = "-"
        while True:
            entries = await client.xrange(key, min=after, max="+", count=STREAM_PAGE)
            for entry_id, fields in entries:
                ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                out += [(f"entry {ident} {f!r}", v) for f, v in fields.items()]
            if len(entries) < STREAM_PAGE:
                return out
            last = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else str(entries[-1][0])
            after = "(" + last
    return []


def _judge(report: Report, name: str, label: str, value: bytes) -> None:
    if name.startswith(f"{PREFIX}:") and label == "value":
        try:
            decode(value)
            return  # a cached record: its fields are declared metadata, its blobs sealed
        except CorruptValue:
            pass
    if reason := looks_like_text(value):
        report.find("redis", f"{name} {label}", "looks like text", reason)
