"""Time-ordered 63-bit ids: milliseconds since the Unix epoch in the high bits, then 6 bits naming the process
and a 10-bit counter.

Like Mastodon's ids they sort by creation time, so ``ORDER BY id`` is time order and cursors are plain ids;
unlike a database sequence they exist before the row, so a post's id can go into its ciphertext's associated data.
Two processes collide only if they drew the same node bits and counted to the same value in the same
millisecond; writers retry once with a fresh id on a key conflict.
"""

from __future__ import annotations

import secrets
import threading
import time

_lock = threading.Lock()
_node = secrets.randbelow(64)
_last_ms = 0
_seq = 0


def new_id(now_ms: int | None = None) -> int:
    global _last_ms, _seq
    with _lock:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0x3FF:  # 1,024 ids in one millisecond: borrow the next one
                _last_ms += 1
                _seq = secrets.randbelow(0x200)
            ms = _last_ms
        else:
            _last_ms = ms
            _seq = secrets.randbelow(0x200)
        return (ms << 16) | (_node << 10) | _seq
