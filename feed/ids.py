"""Time-ordered 63-bit ids: milliseconds since the Unix epoch in the high bits, 16 random-then-counting low bits.

Like Mastodon's ids they sort by creation time, so ``ORDER BY id`` is time order and cursors are plain ids;
unlike a database sequence they exist before the row, so a post's id can go into its ciphertext's associated data.
"""

from __future__ import annotations

import secrets
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def new_id(now_ms: int | None = None) -> int:
    global _last_ms, _seq
    with _lock:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        if ms <= _last_ms:
            # Same or earlier millisecond in this process: keep counting on from the last id.
            _seq += 1
            if _seq > 0xFFFF:
                _last_ms += 1
                _seq = secrets.randbelow(0x8000)
            ms = _last_ms
        else:
            _last_ms = ms
            # Random start so that two processes in the same millisecond rarely meet.
            _seq = secrets.randbelow(0x8000)
        return (ms << 16) | _seq


def id_floor(ms: int) -> int:
    """The smallest id made in millisecond ``ms`` (inclusive)."""
    return ms << 16
