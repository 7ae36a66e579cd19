"""The versioned root key, which wraps user keys. It lives in a key file or the environment, never in the
database.

A wrapped user key is 68 bytes (integers big-endian)::

    magic b"CK" (2) || format version 1 (1) || algorithm id 1 = AES-256-GCM (1) || root key version (u32)
    || nonce (12) || user key encrypted under that root key (32 + 16-byte tag)

with associated data ``header || user_id (u64) || user key version (u32)``.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Mapping
from typing import Any, final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._aes import KEY_SIZE, NONCE_SIZE, TAG_SIZE, decrypt_or_none
from ._checks import U32_MAX, U64_MAX, check_int
from ._random import Rng, draw
from ._unpicklable import Unpicklable
from .blind_index import blind_index
from .errors import InvalidKeyMaterial, InvalidToken
from .user_key import UserKey, key_bytes

_MAGIC = b"CK"
_FORMAT_VERSION = 1
_ALG_AES_256_GCM = 1
_HEADER = struct.Struct(">2sBBI")
_BINDING = struct.Struct(">QI")
_WRAPPED_SIZE = _HEADER.size + NONCE_SIZE + KEY_SIZE + TAG_SIZE

_VERSION_NAME = re.compile(r"[1-9][0-9]{0,9}")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_NOT_JSON = object()
_INDEX_KEY_INFO = b"cipherfeed-blind-index-key-v1\x00"
_PURPOSE = re.compile(r"[a-z][a-z0-9_-]{0,30}")


@final
class RootKeyRing(Unpicklable):
    """Root keys by version (1..2**32-1 inclusive): the primary wraps, every version unwraps.

    Immutable: the rotation steps return a new ring. Rotation is: :meth:`with_new_version` and deploy it
    everywhere, :meth:`promote` it, rewrap the stored user keys, then :meth:`retire` the old version.
    It cannot be pickled or copied; its repr shows versions and primary only.
    """

    __slots__ = ("_keys", "_primary")

    def __init__(self, keys: Mapping[int, bytes], primary: int) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise InvalidKeyMaterial("a root key ring needs a mapping of at least one version to its key")
        checked: dict[int, bytes] = {}
        for version, key in keys.items():
            check_int("root key version", version, 1, U32_MAX, error=InvalidKeyMaterial)
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                raise InvalidKeyMaterial(f"root key version {version} must be exactly {KEY_SIZE} bytes")
            for other, other_key in checked.items():
                if other_key == key:
                    raise InvalidKeyMaterial(f"root key versions {other} and {version} hold the same key")
            checked[version] = key
        check_int("primary root key version", primary, 1, U32_MAX, error=InvalidKeyMaterial)
        if primary not in checked:
            raise InvalidKeyMaterial(f"primary root key version {primary} is not in the ring")
        self._keys = dict(sorted(checked.items()))
        self._primary = primary

    @classmethod
    def generate(cls, *, rng: Rng | None = None) -> RootKeyRing:
        """A ring of one random key, version 1, primary."""
        return cls({1: draw(rng, KEY_SIZE)}, primary=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> RootKeyRing:
        """Parse ``{"primary": 1, "keys": {"1": "<base64 of 32 bytes>", ...}}``, or one base64 key (bare or
        as a JSON string), which means ``{1: key}`` with primary 1.

        Base64 may be URL-safe or standard, padded or not; surrounding whitespace is ignored. Anything else,
        including duplicate or non-canonical versions ("01") and unknown members, raises InvalidKeyMaterial.
        """
        if isinstance(text, bytes):
            decoded = _decode_utf8(text)
            if decoded is None:
                raise InvalidKeyMaterial("root key ring is not UTF-8 text")
            text = decoded
        if not isinstance(text, str):
            raise InvalidKeyMaterial("root key ring must be given as str or bytes")
        text = text.strip()
        if not text.startswith(("{", '"')):
            return cls({1: _decode_key(text, "root key")}, primary=1)
        doc = _load_json(text)
        if doc is _NOT_JSON:
            raise InvalidKeyMaterial("root key ring is not valid JSON")
        if isinstance(doc, str):
            return cls({1: _decode_key(doc, "root key")}, primary=1)
        if not isinstance(doc, dict) or set(doc) != {"primary", "keys"}:
            raise InvalidKeyMaterial('root key ring must be a JSON object with exactly "primary" and "keys"')
        primary, encoded_keys = doc["primary"], doc["keys"]
        if not isinstance(encoded_keys, dict):
            raise InvalidKeyMaterial('"keys" of the root key ring must be a JSON object')
        keys: dict[int, bytes] = {}
        for name, encoded in encoded_keys.items():
            if not _VERSION_NAME.fullmatch(name):
                raise InvalidKeyMaterial("root key versions must be written as decimal integers from 1")
            keys[int(name)] = _decode_key(encoded, f"root key version {name}")
        return cls(keys, primary)

    def to_json(self) -> str:
        """The format :meth:`from_json` reads, with URL-safe padded base64. It holds the keys: keep secret."""
        encoded = {str(v): base64.urlsafe_b64encode(k).decode("ascii") for v, k in self._keys.items()}
        return json.dumps({"primary": self._primary, "keys": encoded}, indent=2)

    @property
    def primary(self) -> int:
        return self._primary

    @property
    def versions(self) -> tuple[int, ...]:
        """Sorted ascending."""
        return tuple(self._keys)

    def with_new_version(self, *, rng: Rng | None = None) -> RootKeyRing:
        """This ring plus a random key as version ``max(versions) + 1``; the primary is unchanged."""
        version = max(self._keys) + 1
        if version > U32_MAX:
            raise InvalidKeyMaterial("no root key version left above the highest one")
        return RootKeyRing({**self._keys, version: draw(rng, KEY_SIZE)}, primary=self._primary)

    def promote(self, version: int) -> RootKeyRing:
        """This ring with ``version`` as primary."""
        self._require(version)
        return RootKeyRing(self._keys, primary=version)

    def retire(self, version: int) -> RootKeyRing:
        """This ring without ``version``: user keys wrapped under it no longer unwrap. Not for the primary."""
        self._require(version)
        if version == self._primary:
            raise InvalidKeyMaterial(f"root key version {version} is the primary; promote another one first")
        return RootKeyRing({v: k for v, k in self._keys.items() if v != version}, primary=self._primary)

    def wrap_user_key(self, key: UserKey, *, rng: Rng | None = None) -> bytes:
        """``key`` encrypted under the primary root key, bound to its user id and version; draws a nonce."""
        header = _HEADER.pack(_MAGIC, _FORMAT_VERSION, _ALG_AES_256_GCM, self._primary)
        nonce = draw(rng, NONCE_SIZE)
        aad = header + _BINDING.pack(key.user_id, key.version)
        return header + nonce + AESGCM(self._keys[self._primary]).encrypt(nonce, key_bytes(key), aad)

    def unwrap_user_key(self, blob: bytes, *, user_id: int, version: int) -> UserKey:
        """The user key wrapped in ``blob``, which must be version ``version`` of user ``user_id``.

        InvalidToken on any failure: malformed blob, another user or version, a root version not in this ring
        (never known, or retired), any changed byte.
        """
        check_int("user_id", user_id, 0, U64_MAX)
        check_int("version", version, 1, U32_MAX)
        root_version = self.root_version_of(blob)
        if root_version not in self._keys:
            raise InvalidToken
        secret = decrypt_or_none(
            AESGCM(self._keys[root_version]),
            blob[_HEADER.size : _HEADER.size + NONCE_SIZE],
            blob[_HEADER.size + NONCE_SIZE :],
            blob[: _HEADER.size] + _BINDING.pack(user_id, version),
        )
        if secret is None:
            raise InvalidToken
        return UserKey(user_id, version, secret)

    def blind_index(self, purpose: str, value: str, *, version: int | None = None) -> bytes:
        """The keyed blind index (:func:`crypto.blind_index`) of ``value`` for ``purpose`` (a short name such as
        ``"email"``) under root key ``version``, by default the primary.

        Its key is derived from that root key (HKDF-SHA256, the purpose in its info), so the index rotates with the
        ring and a copy of the database alone cannot confirm a guessed value. Equal values give equal indexes under
        one version only: look a value up under every version (:meth:`blind_indexes`) until the stored indexes have
        been recomputed under the primary.
        """
        version = self._primary if version is None else version
        self._require(version)
        if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
            raise ValueError("a blind index purpose is a short lower-case name")
        info = _INDEX_KEY_INFO + purpose.encode("ascii")
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(self._keys[version])
        return blind_index(key, value)

    def blind_indexes(self, purpose: str, value: str) -> dict[int, bytes]:
        """:meth:`blind_index` of ``value`` under every version of the ring, by version."""
        return {version: self.blind_index(purpose, value, version=version) for version in self._keys}

    @staticmethod
    def root_version_of(blob: bytes) -> int:
        """The root key version that wrapped ``blob``, a wrapped user key; InvalidToken if malformed."""
        if not isinstance(blob, bytes):
            raise TypeError(f"a wrapped user key is bytes, not {type(blob).__name__}")
        if len(blob) != _WRAPPED_SIZE:
            raise InvalidToken
        magic, format_version, alg, root_version = _HEADER.unpack_from(blob)
        if magic != _MAGIC or format_version != _FORMAT_VERSION or alg != _ALG_AES_256_GCM or root_version == 0:
            raise InvalidToken
        return int(root_version)

    def __repr__(self) -> str:
        return f"RootKeyRing(versions={self.versions}, primary={self._primary})"

    def _require(self, version: int) -> None:
        if version not in self._keys:
            raise InvalidKeyMaterial(f"root key version {version} is not in the ring")


# The helpers below return None (or _NOT_JSON) instead of raising, because the exceptions they would chain
# carry the whole key file (UnicodeDecodeError.object, JSONDecodeError.doc).


def _decode_utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _load_json(text: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates)
    except json.JSONDecodeError:
        return _NOT_JSON


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidKeyMaterial("root key ring JSON has a duplicate member")
    return obj


def _decode_key(encoded: object, label: str) -> bytes:
    """32 key bytes from base64 (either alphabet, padding optional). ``label`` names the key in errors."""
    if not isinstance(encoded, str) or not _BASE64.fullmatch(encoded):
        raise InvalidKeyMaterial(f"{label} is not a base64 string")
    digits = encoded.rstrip("=").translate(_URLSAFE_TO_STANDARD)
    if len(digits) % 4 == 1:  # no byte string encodes to this; b64decode would raise with our key as context
        raise InvalidKeyMaterial(f"{label} is not valid base64")
    key = base64.b64decode(digits + "=" * (-len(digits) % 4), validate=True)
    if len(key) != KEY_SIZE:
        raise InvalidKeyMaterial(f"{label} must decode to exactly {KEY_SIZE} bytes, got {len(key)}")
    return key
