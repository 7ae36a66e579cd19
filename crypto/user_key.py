"""A user's 256-bit key, which wraps the data keys of that user's posts and account fields."""

from __future__ import annotations

from typing import final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._aes import KEY_SIZE
from ._checks import U32_MAX, U64_MAX, check_int
from ._dek_cache import DataKeyCache
from ._random import Rng, draw
from ._unpicklable import Unpicklable
from .errors import InvalidKeyMaterial


@final
class UserKey(Unpicklable):
    """Version ``version`` of the key of user ``user_id``.

    Get one from :meth:`generate` or :meth:`RootKeyRing.unwrap_user_key`; it is stored only wrapped by the
    root key. It cannot be pickled or copied, and its repr shows the user id and version only.
    ``user_id`` is in 0..2**64-1 and ``version`` in 1..2**32-1 (both inclusive).

    It also remembers the data keys it unwrapped (:func:`dek_cache`), so they are dropped together with it.
    """

    __slots__ = ("_aead", "_deks", "_secret", "_user_id", "_version")

    def __init__(self, user_id: int, version: int, key: bytes) -> None:
        self._user_id = check_int("user_id", user_id, 0, U64_MAX)
        self._version = check_int("version", version, 1, U32_MAX)
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise InvalidKeyMaterial(f"a user key must be exactly {KEY_SIZE} bytes")
        self._secret = key
        self._aead: AESGCM | None = None
        self._deks = DataKeyCache()

    @classmethod
    def generate(cls, user_id: int, version: int, *, rng: Rng | None = None) -> UserKey:
        return cls(user_id, version, draw(rng, KEY_SIZE))

    @property
    def user_id(self) -> int:
        return self._user_id

    @property
    def version(self) -> int:
        return self._version

    def __repr__(self) -> str:
        return f"UserKey(user_id={self._user_id}, version={self._version})"


def key_bytes(key: UserKey) -> bytes:
    """The 32 secret bytes of ``key``. For the crypto package only: never log, store or pass them on."""
    return key._secret


def key_aead(key: UserKey) -> AESGCM:
    """The AES-GCM instance of ``key``, built once (its key schedule costs more than a short decryption)."""
    if key._aead is None:
        key._aead = AESGCM(key._secret)
    return key._aead


def dek_cache(key: UserKey) -> DataKeyCache:
    """The data keys ``key`` unwrapped, for :mod:`crypto.sealing` only."""
    return key._deks
