"""AES-256-GCM sizes and the one way the package decrypts."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZE = 32
"""Every key of the package (root, user, data key) is 256 bits."""
NONCE_SIZE = 12
"""96-bit random nonces: at most about 2**32 encryptions per key before the collision risk matters."""
TAG_SIZE = 16


def decrypt_or_none(aead: AESGCM, nonce: bytes, data: bytes | memoryview, aad: bytes) -> bytes | None:
    """The plaintext, or None if the tag does not verify.

    Callers raise InvalidToken themselves, outside any ``except`` block and after the plaintext or key is
    out of their frame, so that neither a chained exception nor a traceback's local variables hold secrets.
    """
    try:
        return aead.decrypt(nonce, data, aad)
    except InvalidTag:
        return None
