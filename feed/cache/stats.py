"""Hit and miss counts of the cache, per tier and space."""

from __future__ import annotations

from typing import Any

from feed.cache.spaces import Space


class _Stats:
    """Hit and miss counts per tier and space, fed to the metrics registry when there is one: counted in plain
    numbers on the hot path (a counter's ``inc`` takes a lock, and a page counts a dozen hits) and added to the
    registry's counters whenever it is read or refreshed."""

    def __init__(self, metrics: Any) -> None:
        self.flushes = 0
        self._hits = self._misses = None
        self._children: dict[tuple[str, ...], Any] = {}  # per label values: .labels() is too dear for every key
        # Totals counted so far, and the part of them in the registry: (tier, space) for hits, (space,) for misses.
        self._counted: dict[tuple[str, ...], int] = {}
        self._published: dict[tuple[str, ...], int] = {}
        if metrics is not None:
            self._hits = metrics.counter(
                "cipherfeed_cache_hits_total", "Cache hits by tier and space", ("tier", "space")
            )
            self._misses = metrics.counter(
                "cipherfeed_cache_misses_total", "Reads that went to the database, by space", ("space",)
            )
            metrics.before_reading(self.publish)

    def hit(self, tier: str, space: Space, count: int = 1) -> None:
        counted, labels = self._counted, (tier, space.name)
        counted[labels] = counted.get(labels, 0) + count

    def miss(self, space: Space) -> None:
        counted, labels = self._counted, (space.name,)
        counted[labels] = counted.get(labels, 0) + 1

    def publish(self) -> None:
        """Add the counts made since the last call to the registry's counters (when the registry is read or
        refreshed, in the event loop; the totals are copied in one step and only ever grow)."""
        for labels, total in list(self._counted.items()):
            count = total - self._published.get(labels, 0)
            if not count:
                continue
            self._published[labels] = total
            child = self._children.get(labels)
            if child is None:
                family = self._hits if len(labels) == 2 else self._misses
                assert family is not None
                child = self._children[labels] = family.labels(*labels)
            child.inc(count)
