"""A bounded memory of unwrapped data keys, held by the user key that unwrapped them."""

from __future__ import annotations

from collections import OrderedDict
from typing import final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._unpicklable import Unpicklable

DEK_CACHE_SIZE = 512
"""Entries per user key, inclusive. Each entry is about 2.8 KB (an AESGCM object holds its OpenSSL contexts,
about 2.4 KB), so a full cache is about 1.4 MB: bound the number of live user keys with that in mind."""


@final
class DataKeyCache(Unpicklable):
    """Ready AES-GCM objects of data keys, least recently used dropped first beyond ``size`` entries.

    The lookup key must be every input the unwrap authenticated (nonce, wrapped key, associated data): a hit
    then stands for a successful unwrap of exactly those bytes by the owning user key, and nothing else.
    It lives and dies with its :class:`crypto.UserKey`, and like it cannot be pickled or copied; its repr
    shows the number of entries only.
    """

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = DEK_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError("a data key cache holds at least one entry")
        self._entries: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._size = size

    def get(self, unwrap_input: bytes) -> AESGCM | None:
        aead = self._entries.get(unwrap_input)
        if aead is not None:
            try:
                self._entries.move_to_end(unwrap_input)
            except KeyError:  # dropped by another thread in between: still a valid key
                pass
        return aead

    def put(self, unwrap_input: bytes, aead: AESGCM) -> None:
        self._entries[unwrap_input] = aead
        while len(self._entries) > self._size:
            try:
                self._entries.popitem(last=False)
            except KeyError:  # emptied by another thread
                break

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DataKeyCache({len(self._entries)} of {self._size} entries)"
