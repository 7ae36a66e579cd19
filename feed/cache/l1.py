"""The in-process L1 store: an LRU bounded in bytes whose entries expire, built on cachetools' ``Cache``.

It relies on that base class's internals (its byte accounting and when it calls ``popitem``):
``tests/feed/test_l1_store.py`` checks every behaviour it takes from it, against the cachetools installed.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import cachetools

from feed.records import Cacheable


@dataclass(slots=True)
class _Entry:
    value: Cacheable
    expires: float
    refresh_at: float
    size: int


def _size(entry: _Entry) -> int:
    return entry.size


class _L1(cachetools.Cache[str, _Entry]):
    """An LRU cache bounded by the bytes of its entries, where an entry is gone from its ``expires`` on (monotonic
    clock): never returned, and removed before anything live is evicted; ``evictions`` counts the live entries
    removed to stay within ``maxsize``. What ``TLRUCache`` does, but a lookup can be a dict get on :attr:`recent`
    and one comparison, made by the caller (:meth:`Cache._from_l1`), where ``TLRUCache.get`` costs ~900 ns.

    The base class keeps the byte count and calls :meth:`popitem` while a new entry does not fit."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize, getsizeof=_size)
        # The same entries as the base class's (private) mapping, least recently used first. Whoever reads an entry
        # from it checks ``expires`` and calls ``move_to_end``.
        self.recent: OrderedDict[str, _Entry] = OrderedDict()
        self._deadlines: list[tuple[float, str]] = []  # a heap of (expires, name), with pairs since replaced or gone
        self.evictions = 0

    def __getitem__(self, name: str) -> _Entry:
        entry = self.recent.get(name)
        if entry is None or time.monotonic() >= entry.expires:
            return self.__missing__(name)
        self.recent.move_to_end(name)
        return entry

    def __contains__(self, name: object) -> bool:
        entry = self.recent.get(name) if isinstance(name, str) else None
        return entry is not None and time.monotonic() < entry.expires

    def __setitem__(self, name: str, entry: _Entry) -> None:
        now = time.monotonic()
        self.expire(now)
        if now >= entry.expires:
            self.discard(name)
            return
        super().__setitem__(name, entry)
        self.recent[name] = entry
        self.recent.move_to_end(name)
        heapq.heappush(self._deadlines, (entry.expires, name))

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        del self.recent[name]

    def __iter__(self) -> Iterator[str]:
        now = time.monotonic()
        return iter([name for name, entry in self.recent.items() if now < entry.expires])

    def __len__(self) -> int:
        self.expire(time.monotonic())
        return len(self.recent)

    @property
    def currsize(self) -> float:
        self.expire(time.monotonic())
        return super().currsize

    def discard(self, name: str) -> None:
        """Remove ``name``, live or expired."""
        if name in self.recent:
            del self[name]

    def expire(self, now: float) -> None:
        """Remove every entry expired at ``now``."""
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self.recent) + 64:
            self._deadlines = deadlines = [(entry.expires, name) for name, entry in self.recent.items()]
            heapq.heapify(deadlines)
        while deadlines and deadlines[0][0] <= now:
            name = heapq.heappop(deadlines)[1]
            entry = self.recent.get(name)
            if entry is not None and entry.expires <= now:
                del self[name]

    def popitem(self) -> tuple[str, _Entry]:
        """Evict the least recently used entry (``__setitem__`` has removed the expired ones first)."""
        name = next(iter(self.recent), None)
        if name is None:
            raise KeyError("L1 is empty")
        entry = self.recent[name]
        del self[name]
        self.evictions += 1
        return name, entry

    def clear(self) -> None:
        super().clear()
        self.recent.clear()
        self._deadlines.clear()
