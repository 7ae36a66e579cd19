"""The shown log: which posts and people look different on a page than they did, lately, numbered, newest last.

A page blob (``feed.web.page_blobs``) shows posts and people as they were when it was drawn. The process that holds
it checks it against their records; a process reading it from Redis, with none of them in its L1, would need one
more round trip for them. Instead, a blob carries the log's *mark* from when it was drawn, and the log comes in the
blob's own round trip (one Redis string, ``KEY``): a blob none of whose ids the log names after its mark shows
them as they are.

- Writers add ids after their commit and their invalidation: an edit or a deletion adds the post, a rename or an
  erasure the person (``Effects.shown``: ``feed.services.effects.committed``, and the relay again for a writer that
  died; an id twice is harmless). Added while Redis is away, they are added when it is back, before anything is read.
- The log keeps the last ``MOST`` entries, each with when it came (epoch ms). A mark older than all of them, a log that
  was lost (Redis restarted, the key evicted: a new log starts with a new random *epoch*), or a mark of another
  epoch all mean "cannot tell", and the blob is checked as before.
- A draw reads the log before it reads anything for the page, but reads the posts and people from this process's
  L1, which the bus may not have told of a change the log already names. So a page showing an id the log names
  gets the mark from just before that id's entry (readers elsewhere check it), and a log that turned over within
  ``LAG_MS`` gives no mark at all.

Only ids (and times) are in it: the audit reads it as what it is (``feed.audit.redis_scan``).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Collection, Iterable
from typing import NamedTuple

from feed.cache.spaces import PREFIX

KEY = f"{PREFIX}:{{shown}}"
MOST = 512  # entries kept (8 KiB): about 256 changes, as the writer and the relay each add theirs
LAG_MS = 10_000  # how long the bus may take to bring a change this process's L1 then holds (beyond: a lost bus)
_ENTRY = struct.Struct(">qq")  # id, when it came (epoch ms)
_HEAD = struct.Struct(">8sq")  # epoch (random bytes), how many entries were ever added
_SIZE = _ENTRY.size

# K[1]: the log. A[1]: entries kept, A[2]: an epoch for a new log, A[3]: entries to add (packed; none: only read,
# and start the log if there is none). Returns the log.
APPEND = """
local v = redis.call('GET', K[1])
local most, added = tonumber(A[1]), A[3]
local head, seq, body, fresh = A[2], 0, '', true
if v and string.len(v) >= 16 and (string.len(v) - 16) % 16 == 0 then
  head, seq, body, fresh = string.sub(v, 1, 8), struct.unpack('>i8', string.sub(v, 9, 16)), string.sub(v, 17), false
end
if fresh or string.len(added) > 0 then
  seq = seq + string.len(added) / 16
  body = body .. added
  if string.len(body) > most * 16 then body = string.sub(body, -most * 16) end
  v = head .. struct.pack('>i8', seq) .. body
  redis.call('SET', K[1], v)
end
return v
"""


def entries(ids: Iterable[int], now_ms: int | None = None) -> bytes:
    """``ids`` packed as the script adds them."""
    when = int(time.time() * 1000) if now_ms is None else now_ms
    return b"".join(_ENTRY.pack(i, when) for i in ids)


def new_epoch() -> bytes:
    return os.urandom(8)


class Log(NamedTuple):
    epoch: bytes
    seq: int  # entries ever added; the last one kept is number ``seq``
    body: bytes  # the kept entries, oldest first

    @classmethod
    def parse(cls, raw: bytes | None) -> Log | None:
        if raw is None or len(raw) < _HEAD.size or (len(raw) - _HEAD.size) % _SIZE:
            return None
        epoch, seq = _HEAD.unpack_from(raw)
        return cls(epoch, seq, raw[_HEAD.size :])

    @property
    def kept(self) -> int:
        return len(self.body) // _SIZE

    def mark(self, at: int | None = None) -> str:
        """The mark of this log after entry ``at`` (the last, by default): what a blob drawn then carries."""
        return f"{self.epoch.hex()}:{self.seq if at is None else at}"

    def added_since(self, mark: str) -> tuple[int, ...] | None:
        """The ids added after ``mark``; None when this log cannot tell (another epoch, or entries since the mark
        no longer kept)."""
        epoch, _, at = mark.partition(":")
        if not at.isdigit() or epoch != self.epoch.hex():
            return None
        since = self.seq - int(at)
        if since < 0 or since > self.kept:
            return None
        if since == 0:
            return ()
        added: tuple[int, ...] = struct.unpack_from(">" + "qq" * since, self.body, len(self.body) - since * _SIZE)
        return added[0::2]

    def changed(self, mark: str, ids: Collection[int]) -> bool | None:
        """Whether any of ``ids`` was added after ``mark`` (None: :meth:`added_since` cannot tell)."""
        added = self.added_since(mark)
        return None if added is None else not set(added).isdisjoint(ids)

    def mark_for(self, ids: Collection[int], now_ms: int | None = None) -> str:
        """The mark of a page drawn after reading this log, showing ``ids`` as this process's L1 had them: before
        the first entry that names one of them (this L1 may not have heard of it yet); "" (none) if the log turned
        over within ``LAG_MS``, so that a change it no longer keeps may still be on its way here."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        kept = self.kept
        if kept >= MOST and _ENTRY.unpack_from(self.body)[1] > now - LAG_MS:
            return ""
        first = self.seq - kept + 1  # the number of the oldest entry kept
        for index, (entry_id, _) in enumerate(_ENTRY.iter_unpack(self.body)):
            if entry_id in ids:
                return self.mark(first + index - 1)
        return self.mark()
