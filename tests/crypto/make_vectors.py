"""Writes tests/crypto/vectors.json, the golden vectors of the crypto package.

Run once, from the repository root: ``PYTHONPATH=. python tests/crypto/make_vectors.py``. It refuses to
overwrite the committed file unless given ``--force``, which is only right after a deliberate format change
(new vectors then mean old data no longer opens). test_golden_vectors.py checks that the code still
reproduces the file.
All randomness comes from :class:`CounterRng`, so every blob is a function of the seeds below.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from crypto import RootKeyRing, UserKey, blind_index, rewrap, seal_fields
from crypto.context import FieldContext
from crypto.user_key import key_bytes

VECTORS = Path(__file__).with_name("vectors.json")


class CounterRng:
    """A deterministic stand-in for os.urandom: the stream SHA-256(seed || u64 counter), counter 0, 1..."""

    def __init__(self, seed: str) -> None:
        self._seed = seed.encode("utf-8")
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


# Each: a seed; the user key (user, version) is the first 32 bytes of its rng; seal_fields draws the rest.
SEALING_CASES: list[dict[str, Any]] = [
    {
        "name": "post body and content warning, HTML-special and non-ASCII",
        "seed": "cipherfeed-vector-post-1",
        "user_id": 42,
        "user_key_version": 1,
        "object_id": 1001,
        "owner_id": 42,
        "revision": 0,
        "fields": {
            "body": ("<script>alert(\"hi & bye\")</script> caf\u00e9 \u2014 \u65e5\u672c\u8a9e \U0001f40d 'quoted'"),
            "cw": "spoilers: <b>Dune</b> & \u00abPart Two\u00bb",
        },
    },
    {
        "name": "edited post: later revision, later user key, empty cw, control characters",
        "seed": "cipherfeed-vector-post-2",
        "user_id": 42,
        "user_key_version": 3,
        "object_id": 1001,
        "owner_id": 42,
        "revision": 7,
        "fields": {"body": "line one\nline two\ttab\u0000nul \u00a0nbsp", "cw": ""},
    },
    {
        "name": "account email (object id is the user id, revision 0)",
        "seed": "cipherfeed-vector-email",
        "user_id": 2**63 - 1,
        "user_key_version": 2**32 - 1,
        "object_id": 2**63 - 1,
        "owner_id": 2**63 - 1,
        "revision": 0,
        "fields": {"email": "Ada.Lovelace+feed@example.org"},
    },
]


def _sealing_vector(case: dict[str, Any]) -> dict[str, Any]:
    rng = CounterRng(case["seed"])
    key = UserKey(case["user_id"], case["user_key_version"], rng(32))
    sealed = seal_fields(
        key,
        case["fields"],
        object_id=case["object_id"],
        owner_id=case["owner_id"],
        revision=case["revision"],
        rng=rng,
    )
    return {
        **case,
        "user_key": _key_hex(key),
        "sealed": {name: blob.data.hex() for name, blob in sealed.items()},
    }


def _wrap_vector() -> dict[str, Any]:
    """A user key wrapped by a two-version root key ring, under each version as primary."""
    rng = CounterRng("cipherfeed-vector-root")
    root_keys = {1: rng(32), 2: rng(32)}
    user_key = UserKey(42, 3, rng(32))
    wrapped = {
        str(primary): RootKeyRing(root_keys, primary=primary).wrap_user_key(user_key, rng=rng).hex()
        for primary in (1, 2)
    }
    return {
        "seed": "cipherfeed-vector-root",
        "root_keys": {str(v): k.hex() for v, k in root_keys.items()},
        "user_id": 42,
        "user_key_version": 3,
        "user_key": _key_hex(user_key),
        "wrapped_by_primary": wrapped,
    }


def _rewrap_vector(post: dict[str, Any]) -> dict[str, Any]:
    """The body of the first post moved from user key version 1 to version 2 (nonce drawn from the seed)."""
    rng = CounterRng("cipherfeed-vector-rewrap")
    old_key = UserKey(post["user_id"], post["user_key_version"], bytes.fromhex(post["user_key"]))
    new_key = UserKey(post["user_id"], post["user_key_version"] + 1, rng(32))
    ctx = FieldContext("body", post["object_id"], post["owner_id"], post["revision"])
    rewrapped = rewrap(bytes.fromhex(post["sealed"]["body"]), ctx, old_key, new_key, rng=rng)
    return {
        "seed": "cipherfeed-vector-rewrap",
        "new_user_key": _key_hex(new_key),
        "rewrapped": rewrapped.data.hex(),
    }


def _blind_index_vector() -> dict[str, Any]:
    key = hashlib.sha256(b"cipherfeed-vector-blind-index").digest()
    value = "ada.lovelace+feed@example.org"
    return {"key": key.hex(), "value": value, "index": blind_index(key, value).hex()}


def _key_hex(key: UserKey) -> str:
    return key_bytes(key).hex()


def build_vectors() -> dict[str, Any]:
    sealing = [_sealing_vector(case) for case in SEALING_CASES]
    return {
        "about": "Golden vectors of the crypto package, written once by make_vectors.py. Hex is bytes.",
        "rng": "SHA-256(seed UTF-8 || counter u64 big-endian) for counter 0, 1...: blocks used in order",
        "sealing": sealing,
        "user_key_wrap": _wrap_vector(),
        "rewrap": _rewrap_vector(sealing[0]),
        "blind_index": _blind_index_vector(),
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2) + "\n"


def main(argv: list[str]) -> int:
    if VECTORS.exists() and "--force" not in argv:
        sys.stderr.write(f"{VECTORS} exists; pass --force to overwrite it after a deliberate format change\n")
        return 1
    VECTORS.write_text(render(build_vectors()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
