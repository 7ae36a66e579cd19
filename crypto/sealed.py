"""The sealed blob: its byte layout and the validated :class:`Sealed` type.

Layout, format version 1 (all integers big-endian)::

    offset  size  content
         0     2  magic b"CF"
         2     1  format version (1)
         3     1  algorithm id (1 = AES-256-GCM)
         4     4  version of the user key that wrapped the data key (u32, >= 1)
         8    12  wrap nonce
        20    48  data key encrypted under the user key (32 bytes + 16-byte tag)
        68    12  data nonce
        80   16+  field text encrypted under the data key (ciphertext + 16-byte tag)

Bytes 0..7 are the header. What each part authenticates is in :mod:`crypto.sealing`.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple, NoReturn, final

from ._aes import KEY_SIZE, NONCE_SIZE, TAG_SIZE
from .errors import InvalidToken

MAGIC = b"CF"
FORMAT_VERSION = 1
"""The format :func:`header` writes (and so every new seal). Read at call time, not bound at import."""
READABLE_FORMAT_VERSIONS = frozenset({1})
"""The formats :class:`Sealed` accepts. A release that writes a new format keeps the older ones here until every
stored blob has been re-encrypted (``feed.services.rotation``: the ``reencrypt_posts`` job)."""
ALG_AES_256_GCM = 1

_HEADER = struct.Struct(">2sBBI")
HEADER_SIZE = _HEADER.size
_WRAP_NONCE_END = HEADER_SIZE + NONCE_SIZE
_WRAPPED_DEK_END = _WRAP_NONCE_END + KEY_SIZE + TAG_SIZE
_DATA_NONCE_END = _WRAPPED_DEK_END + NONCE_SIZE
MIN_SIZE = _DATA_NONCE_END + TAG_SIZE
"""The size of a blob holding the empty string."""

# The parts of a blob's bytes, for code that slices them directly instead of going through :func:`split`.
HEADER = slice(0, HEADER_SIZE)
FORMAT_AND_ALGORITHM = slice(2, 4)
WRAP_NONCE = slice(HEADER_SIZE, _WRAP_NONCE_END)
WRAPPED_DEK = slice(_WRAP_NONCE_END, _WRAPPED_DEK_END)
ENVELOPE = slice(0, _WRAPPED_DEK_END)
"""Header, wrap nonce and wrapped data key: every stored byte the unwrap of the data key reads."""
DATA_NONCE = slice(_WRAPPED_DEK_END, _DATA_NONCE_END)
CIPHERTEXT = slice(_DATA_NONCE_END, None)


@final
class Sealed:
    """An immutable sealed blob whose header has been checked.

    Construction raises InvalidToken for bad magic, a format version not in :data:`READABLE_FORMAT_VERSIONS`, an
    unknown algorithm, key version 0 or a blob shorter than :data:`MIN_SIZE`; whether it opens is only known to
    :func:`crypto.open_field`. A Sealed holds no secret: it may be pickled, cached and logged (its repr shows only
    size and key version).
    """

    __slots__ = ("_data", "_key_version")

    _data: bytes
    _key_version: int

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"Sealed takes bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) < MIN_SIZE:
            raise InvalidToken
        magic, format_version, alg, key_version = _HEADER.unpack_from(data)
        if (
            magic != MAGIC
            or format_version not in READABLE_FORMAT_VERSIONS
            or alg != ALG_AES_256_GCM
            or key_version == 0
        ):
            raise InvalidToken
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_key_version", key_version)

    @property
    def data(self) -> bytes:
        return self._data

    @property
    def key_version(self) -> int:
        """The version of the user key that wrapped this blob's data key."""
        return self._key_version

    @property
    def format_version(self) -> int:
        return self._data[2]

    def __bytes__(self) -> bytes:
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sealed):
            return self._data == other._data
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        if not hasattr(self, "_key_version"):  # in a traceback of a failed __init__
            return "Sealed(<invalid>)"
        return f"Sealed({len(self._data)} bytes, key_version={self._key_version})"

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Sealed is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Sealed is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickling goes through __init__ again, so a pickled blob is re-validated.
        return (Sealed, (self._data,))


class Parts(NamedTuple):
    header: bytes
    wrap_nonce: bytes
    wrapped_dek: bytes
    data_nonce: bytes
    ciphertext: bytes


def header(key_version: int) -> bytes:
    """The header of a :data:`FORMAT_VERSION`, AES-256-GCM blob whose data key is wrapped by user key
    ``key_version``."""
    return _HEADER.pack(MAGIC, FORMAT_VERSION, ALG_AES_256_GCM, key_version)


def split(sealed: Sealed) -> Parts:
    data = sealed.data
    return Parts(data[HEADER], data[WRAP_NONCE], data[WRAPPED_DEK], data[DATA_NONCE], data[CIPHERTEXT])


def join(parts: Parts) -> Sealed:
    return Sealed(b"".join(parts))
