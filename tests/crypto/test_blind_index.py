from __future__ import annotations

import hashlib
import hmac

import pytest

from crypto import InvalidKeyMaterial, blind_index

KEY = hashlib.sha256(b"test blind index key").digest()


def test_is_the_documented_hmac() -> None:
    expected = hmac.new(KEY, b"cipherfeed-blind-index-v1\x00ada@example.org", hashlib.sha256).digest()
    assert blind_index(KEY, "ada@example.org") == expected
    assert len(expected) == 32


def test_depends_on_value_and_key_only() -> None:
    assert blind_index(KEY, "ada@example.org") == blind_index(KEY, "ada@example.org")
    assert blind_index(KEY, "ada@example.org") != blind_index(KEY, "Ada@example.org")
    assert blind_index(KEY, "ada@example.org") != blind_index(KEY[::-1], "ada@example.org")
    assert blind_index(KEY, "") != blind_index(KEY, "\x00")


def test_checks() -> None:
    with pytest.raises(InvalidKeyMaterial) as excinfo:
        blind_index(KEY[:31], "ada@example.org")
    assert KEY[:31].hex()[:16] not in str(excinfo.value)
    with pytest.raises(TypeError):
        blind_index(KEY, b"ada@example.org")  # type: ignore[arg-type]
    with pytest.raises(ValueError) as value_error:
        blind_index(KEY, "ada\ud800@example.org")
    assert "ada" not in str(value_error.value) and value_error.value.__context__ is None
