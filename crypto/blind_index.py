"""Keyed blind indexes: equality lookups and uniqueness on sealed values (an email) without their text."""

from __future__ import annotations

import hashlib
import hmac

from ._checks import encode_utf8
from .errors import InvalidKeyMaterial

MIN_KEY_SIZE = 32
_PREFIX = b"cipherfeed-blind-index-v1\x00"


def blind_index(key: bytes, value: str) -> bytes:
    """HMAC-SHA256(key, b"cipherfeed-blind-index-v1\\x00" + UTF-8 of value): 32 bytes.

    Equal values give equal indexes, so normalise first (for an email, at least strip and case-fold) and
    use a key of at least 32 bytes that serves nothing else. Changing the key changes every index.
    """
    if not isinstance(key, bytes) or len(key) < MIN_KEY_SIZE:
        raise InvalidKeyMaterial(f"a blind index key must be at least {MIN_KEY_SIZE} bytes")
    if not isinstance(value, str):
        raise TypeError(f"blind_index takes a str value, not {type(value).__name__}")
    encoded = encode_utf8(value)
    if encoded is None:
        raise ValueError("value is not encodable as UTF-8")
    return hmac.new(key, _PREFIX + encoded, hashlib.sha256).digest()
