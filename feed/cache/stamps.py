"""What L2 holds: each value stamped with when it was stored, written by a script that keeps it only if unchanged."""

from __future__ import annotations

import struct
import time

from feed.records import Cacheable, CorruptValue, decode, encode

# Stores each value only if its generation is still what it was before the database was read. (``K`` and ``A``
# are the script's keys and arguments: see ``feed.redis_link.Scripts``.)
# K: n value keys, then their n generation keys.  A: n, then n expected generations, n TTLs (ms), n values.
_STORE_IF_UNCHANGED = """
local n = tonumber(A[1])
local stored = 0
for i = 1, n do
  local generation = redis.call('GET', K[n + i]) or ''
  if generation == A[1 + i] then
    redis.call('SET', K[i], A[1 + 2 * n + i], 'PX', A[1 + n + i])
    stored = stored + 1
  end
end
return stored
"""


# Drops values and moves their generations on, so that a refill that read the database before cannot store its
# value after. K: n value keys, then their n generation keys.  A: n, then n generation TTLs (ms).
_INVALIDATE = """
local n = tonumber(A[1])
for i = 1, n do
  redis.call('INCR', K[n + i])
  redis.call('PEXPIRE', K[n + i], A[1 + i])
  redis.call('DEL', K[i])
end
return n
"""


_STAMP = struct.Struct(">d")


def _stamp(value: Cacheable) -> bytes:
    """What L2 stores: when it was stored (for early refresh), then the value."""
    return _STAMP.pack(time.time()) + encode(value)


def _unstamp(data: bytes) -> tuple[float, Cacheable]:
    if len(data) <= _STAMP.size:
        raise CorruptValue
    return _STAMP.unpack_from(data)[0], decode(data[_STAMP.size :])
