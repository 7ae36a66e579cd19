"""The L1 store against the cachetools installed: every behaviour it takes from ``cachetools.Cache`` (the byte count
kept through ``getsizeof``, ``popitem`` called while a new or grown entry does not fit, the refusal of an entry larger
than the store, ``pop`` and ``get`` going through the subclass's own lookup, a ``clear`` that does not go through
``popitem``), so that a release that changes one fails here, by name, before the cache misbehaves."""

from __future__ import annotations

import time

import pytest

from feed.cache.l1 import _L1, _Entry
from feed.records import IdList

SHORT = 0.05  # seconds: the TTL of an entry a test lets expire


def entry(size: int, ttl: float = 60.0) -> _Entry:
    now = time.monotonic()
    return _Entry(IdList((size,)), now + ttl, now + ttl, size)


def store(maxsize: int, **sizes: int) -> _L1:
    l1 = _L1(maxsize)
    for name, size in sizes.items():
        l1[name] = entry(size)
    return l1


def assert_consistent(l1: _L1) -> None:
    """The base class's byte count and the subclass's own mapping agree."""
    assert l1.currsize == sum(e.size for e in l1.recent.values()) <= l1.maxsize


def test_the_byte_count_is_the_sum_of_entry_sizes() -> None:
    l1 = store(100, a=10, b=25)
    assert (l1.maxsize, l1.currsize, len(l1)) == (100, 35, 2)
    del l1["a"]
    assert l1.currsize == 25 and "a" not in l1.recent
    l1.discard("b")
    l1.discard("b")  # gone already: nothing to do
    assert l1.currsize == 0 and l1.recent == {}
    with pytest.raises(KeyError):
        del l1["b"]
    assert l1.evictions == 0


def test_a_new_entry_evicts_the_least_recently_used_until_it_fits() -> None:
    l1 = store(30, a=10, b=10, c=10)
    assert l1["a"].size == 10  # a read: now b is the least recently used
    l1["d"] = entry(10)
    assert list(l1) == ["c", "a", "d"] and l1.evictions == 1
    l1["e"] = entry(20)
    assert list(l1) == ["d", "e"] and l1.evictions == 3
    assert_consistent(l1)


def test_a_grown_entry_evicts_only_what_its_growth_needs() -> None:
    l1 = store(40, a=10, b=10, k=10)
    l1["k"] = entry(20)
    assert list(l1) == ["a", "b", "k"] and l1["k"].size == 20 and l1.evictions == 0
    assert_consistent(l1)
    l1["k"] = entry(5)
    assert l1.currsize == 25 and l1.evictions == 0
    l1["a"] = entry(35)  # the least recently used: its old value goes first, then what the rest needs
    assert list(l1) == ["k", "a"] and l1["a"].size == 35 and l1.evictions == 2
    assert_consistent(l1)


def test_an_entry_larger_than_the_store_is_refused_and_changes_nothing() -> None:
    l1 = store(20, a=10)
    with pytest.raises(ValueError, match="too large"):
        l1["big"] = entry(21)
    assert list(l1) == ["a"] and l1.currsize == 10 and l1.evictions == 0
    assert_consistent(l1)


def test_expired_entries_leave_before_any_live_one_is_evicted() -> None:
    l1 = _L1(30)
    l1["a"] = entry(10, SHORT)
    l1["b"] = entry(10)
    l1["c"] = entry(10, SHORT)
    time.sleep(SHORT + 0.01)
    l1["d"] = entry(20)
    assert list(l1) == ["b", "d"] and l1.evictions == 0
    assert_consistent(l1)


def test_an_expired_entry_is_never_returned_and_leaves_the_byte_count() -> None:
    l1 = _L1(30)
    l1["a"] = entry(10, SHORT)
    l1["b"] = entry(10)
    time.sleep(SHORT + 0.01)
    assert "a" not in l1 and list(l1) == ["b"]
    with pytest.raises(KeyError):
        l1["a"]
    assert l1.currsize == 10 and len(l1) == 1 and list(l1.recent) == ["b"]
    l1["b"] = entry(10, ttl=-1)  # expired already: not kept, and the value it replaces is gone too
    assert l1.recent == {} and l1.currsize == 0


def test_pop_and_get_return_only_live_entries() -> None:
    l1 = _L1(100)
    live = l1["a"] = entry(10)
    l1["b"] = entry(10, SHORT)
    assert l1.get("a") is live and l1.get("missing") is None
    assert l1.pop("a", None) is live and "a" not in l1.recent and l1.currsize == 10
    assert l1.pop("a", None) is None
    time.sleep(SHORT + 0.01)
    assert l1.get("b") is None and l1.pop("b", None) is None
    with pytest.raises(KeyError):
        l1.pop("b")
    assert l1.evictions == 0


def test_clear_empties_the_store_without_counting_evictions() -> None:
    l1 = store(100, a=10, b=20, c=30)
    l1.clear()
    assert l1.currsize == 0 and len(l1) == 0 and l1.recent == {}
    assert l1.evictions == 0  # a flush is not an eviction
    l1["a"] = entry(100)
    assert list(l1) == ["a"] and l1.evictions == 0
    assert_consistent(l1)
