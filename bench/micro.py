"""Scenario 4, in this process: an L1 cache hit (through the async ``Cache.get``, and through the synchronous
``Cache.cached`` that hot paths use first) next to a dict lookup, and opening one post next to one bare AES-GCM
decryption. Nanoseconds per operation, the median of ``repeats`` timeit runs."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import timeit
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.seed import text_of
from crypto import FieldContext, Sealed, UserKey, open_field, seal_fields
from feed.cache import POSTS, Cache, redis_key
from feed.records import PostRecord


def ns_per_op(stmt: str, namespace: dict[str, Any], repeats: int) -> float:
    timer = timeit.Timer(stmt, globals=namespace)
    number, _ = timer.autorange()
    return statistics.median(timer.repeat(repeat=repeats, number=number)) / number * 1e9


# Drives a coroutine that does not suspend (an L1 hit) to its end, as the event loop would, minus the loop.
_DRIVE = """
co = cache.get(space, key, load)
try:
    co.send(None)
except StopIteration:
    pass
"""


def _post(post_id: int, author_id: int, body: bytes) -> PostRecord:
    return PostRecord(
        id=post_id,
        author_id=author_id,
        visibility="public",
        in_reply_to_id=None,
        in_reply_to_author_id=None,
        revision=1,
        key_version=1,
        likes_count=0,
        replies_count=0,
        created_at=datetime.now(UTC),
        edited_at=None,
        body=Sealed(body),
        cw=None,
        mentions=(),
    )


async def cache_figures(repeats: int) -> dict[str, float]:
    """ns per ``Cache.get`` of a warm key (the coroutine driven to its end), per ``Cache.cached`` of it (no
    coroutine), per raw L1 store lookup (when reachable), per ``dict.get``. The cache has no metrics registry."""
    key = UserKey.generate(7, 1)
    post_id = 123_456_789
    sealed = seal_fields(key, {"body": text_of(random.Random(1))}, object_id=post_id, owner_id=7, revision=1)
    record = _post(post_id, 7, sealed["body"].data)

    async def load(missing: list[int]) -> Mapping[int, PostRecord]:
        return {k: record for k in missing}

    cache = Cache(None)
    await cache.get(POSTS, post_id, load)  # fills L1
    assert cache.l1_bytes > 0, "the value did not reach L1"
    plain = {redis_key(POSTS, post_id): record}
    namespace = {
        "cache": cache,
        "space": POSTS,
        "key": post_id,
        "load": load,
        "plain": plain,
        "name": redis_key(POSTS, post_id),
    }
    assert cache.cached(POSTS, post_id) is record, "the synchronous lookup missed a warm key"
    figures = {
        "cache_get": ns_per_op(_DRIVE, namespace, repeats),
        "cache_cached": ns_per_op("cache.cached(space, key)", namespace, repeats),
        "dict_get": ns_per_op("plain.get(name)", namespace, repeats),
    }
    l1 = getattr(cache, "_l1", None)
    if l1 is not None and hasattr(l1, "get"):
        namespace["l1"] = l1
        figures["l1_lookup"] = ns_per_op("l1.get(name)", namespace, repeats)
    return figures


def crypto_figures(repeats: int) -> dict[str, float]:
    """ns to open one post body as ``feed.services.timelines`` does, and per bare ``AESGCM.decrypt`` of the same
    size under a ready key object."""
    rng = random.Random(2)
    while not 290 <= len(text := text_of(rng)) <= 310:  # a typical post: the seeded ones are 100 to 500 characters
        pass
    key = UserKey.generate(7, 1)
    sealed = seal_fields(key, {"body": text}, object_id=99, owner_id=7, revision=1)["body"]
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    ciphertext = aead.encrypt(nonce, text.encode(), b"aad")
    namespace = {
        "open_field": open_field,
        "FieldContext": FieldContext,
        "key": key,
        "blob": sealed,
        "aead": aead,
        "nonce": nonce,
        "ct": ciphertext,
    }
    assert open_field(key, sealed, FieldContext("body", 99, 7, 1)) == text
    return {
        "open_post": ns_per_op('open_field(key, blob, FieldContext("body", 99, 7, 1))', namespace, repeats),
        "aesgcm_decrypt": ns_per_op('aead.decrypt(nonce, ct, b"aad")', namespace, repeats),
        "bytes": float(len(text.encode())),
    }


async def figures(repeats: int) -> dict[str, float]:
    found = await cache_figures(repeats)
    found.update(crypto_figures(repeats))
    await asyncio.sleep(0)
    return found
