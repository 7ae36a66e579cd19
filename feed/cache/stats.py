"""Hit and miss counts of the cache, per tier and space."""

from __future__ import annotations

from typing import Any

from feed.cache.spaces import Space


class _Stats:
    """Hit and miss counts per tier and space, fed to the metrics registry when there is one."""

    def __init__(self, metrics: Any) -> None:
        self.flushes = 0
        self._hits = self._misses = None
        self._children: dict[tuple[str, ...], Any] = {}  # per label values: .labels() is too dear for every key
        if metrics is not None:
            self._hits = metrics.counter(
                "cipherfeed_cache_hits_total", "Cache hits by tier and space", ("tier", "space")
            )
            self._misses = metrics.counter(
                "cipherfeed_cache_misses_total", "Reads that went to the database, by space", ("space",)
            )

    def hit(self, tier: str, space: Space, count: int = 1) -> None:
        if self._hits is not None:
            child = self._children.get((tier, space.name))
            if child is None:
                child = self._children[tier, space.name] = self._hits.labels(tier, space.name)
            child.inc(count)

    def miss(self, space: Space) -> None:
        if self._misses is not None:
            child = self._children.get((space.name,))
            if child is None:
                child = self._children[space.name,] = self._misses.labels(space.name)
            child.inc()
