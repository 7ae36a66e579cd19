"""No key bytes or plaintext in messages, reprs, chained exceptions or the frames of a raised InvalidToken.

Error reporters record exception chains and the local variables of every frame, so those count as output too.
"""

from __future__ import annotations

import base64
import copy
import pickle
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import crypto
from crypto import FieldContext, InvalidToken, RootKeyRing, Sealed, UserKey, open_field, rewrap, seal_fields
from crypto.context import encode_context
from crypto.user_key import key_bytes

TEXT = "meet me at the old mill at midnight"
CRYPTO_DIR = Path(crypto.__file__).resolve().parent


class Rng:
    def __init__(self) -> None:
        self.outputs: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = bytes((len(self.outputs) * 37 + i * 11 + 1) % 256 for i in range(n))
        self.outputs.append(out)
        return out


def _forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    ]


def _assert_no_secret(rendered: str, secrets: list[bytes], texts: list[str]) -> None:
    for secret in secrets:
        for form in _forms(secret):
            assert form not in rendered
    for text in texts:
        assert text not in rendered


def _assert_clean_failure(
    action: Callable[[], object],
    secrets: list[bytes],
    texts: list[str],
    error: type[Exception] = InvalidToken,
    *,
    check_frames: bool = True,
) -> None:
    with pytest.raises(error) as excinfo:
        action()
    raised = excinfo.value
    assert raised.__context__ is None and raised.__cause__ is None
    _assert_no_secret(str(raised) + repr(raised), secrets, texts)
    if error is InvalidToken:
        assert str(raised) == "invalid sealed data"
    if not check_frames:
        return
    tb: TracebackType | None = excinfo.tb
    frames_seen = 0
    while tb is not None:
        frame = tb.tb_frame
        if Path(frame.f_code.co_filename).resolve().is_relative_to(CRYPTO_DIR):
            frames_seen += 1
            for name, value in frame.f_locals.items():
                if isinstance(value, bytes | bytearray | memoryview):
                    assert not any(bytes(s) in bytes(value) for s in secrets), name
                _assert_no_secret(repr(value), secrets, texts)
        tb = tb.tb_next
    assert frames_seen


def _post() -> tuple[UserKey, Sealed, bytes]:
    """A user key, the body it sealed, and that blob's data key."""
    rng = Rng()
    key = UserKey.generate(3, 1, rng=rng)
    blob = seal_fields(key, {"body": TEXT}, object_id=9, owner_id=3, revision=1, rng=rng)["body"]
    return key, blob, rng.outputs[1]


CTX = FieldContext("body", 9, 3, 1)


def test_reprs_show_no_secret() -> None:
    key, blob, dek = _post()
    ring = RootKeyRing({1: b"\x01" * 32, 2: b"\x02" * 32}, primary=2)
    wrapped = ring.wrap_user_key(key)
    secrets = [key_bytes(key), dek, b"\x01" * 32, b"\x02" * 32]
    for thing in (key, blob, ring, InvalidToken()):
        _assert_no_secret(str(thing) + repr(thing), secrets, [TEXT])
    assert repr(key) == "UserKey(user_id=3, version=1)"
    assert repr(ring) == "RootKeyRing(versions=(1, 2), primary=2)"
    assert repr(blob) == f"Sealed({len(blob)} bytes, key_version=1)"
    assert repr(InvalidToken()) == "InvalidToken('invalid sealed data')"
    _assert_no_secret(repr(wrapped), [key_bytes(key)], [])


def test_keys_cannot_be_pickled_or_copied() -> None:
    key = UserKey.generate(3, 1)
    ring = RootKeyRing.generate()
    for secret_holder in (key, ring, {"nested": [key]}):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError):
                pickle.dumps(secret_holder, protocol=protocol)
        with pytest.raises(TypeError):
            copy.copy(secret_holder if not isinstance(secret_holder, dict) else key)
        with pytest.raises(TypeError):
            copy.deepcopy(secret_holder)
    for holder in (key, ring):
        with pytest.raises(TypeError):
            holder.__getstate__()
        with pytest.raises(TypeError):
            holder.__reduce__()
        assert not hasattr(holder, "__dict__")


def test_invalid_token_carries_no_details_and_survives_pickling() -> None:
    with pytest.raises(TypeError):
        InvalidToken("details")  # type: ignore[call-arg]
    again = pickle.loads(pickle.dumps(InvalidToken()))
    assert isinstance(again, InvalidToken) and str(again) == "invalid sealed data"


def test_failed_opens_leave_no_key_or_text_behind() -> None:
    key, blob, dek = _post()
    secrets = [key_bytes(key), dek]
    _assert_clean_failure(lambda: open_field(key, blob, FieldContext("body", 10, 3, 1)), secrets, [TEXT])
    tampered = blob.data[:-1] + bytes([blob.data[-1] ^ 1])
    _assert_clean_failure(lambda: open_field(key, tampered, CTX), secrets, [TEXT])
    _assert_clean_failure(lambda: open_field(key, blob.data[:50], CTX), secrets, [TEXT])
    other = UserKey.generate(4, 1)
    _assert_clean_failure(lambda: rewrap(blob, FieldContext("body", 9, 3, 2), key, key), secrets, [TEXT])
    _assert_clean_failure(
        lambda: open_field(other, blob, FieldContext("body", 9, 4, 1)), [*secrets, key_bytes(other)], [TEXT]
    )


def test_failed_opens_with_the_data_key_cached_leave_no_key_or_text_behind() -> None:
    key, blob, dek = _post()
    assert open_field(key, blob, CTX) == TEXT  # the user key now remembers the data key
    secrets = [key_bytes(key), dek]
    tampered = blob.data[:-1] + bytes([blob.data[-1] ^ 1])
    _assert_clean_failure(lambda: open_field(key, tampered, CTX), secrets, [TEXT])
    _assert_clean_failure(lambda: open_field(key, blob, FieldContext("body", 9, 3, 2)), secrets, [TEXT])
    plaintext = b"\xff " + TEXT.encode()
    forged = blob.data[:80] + AESGCM(dek).encrypt(blob.data[68:80], plaintext, b"\x01\x01" + encode_context(CTX))
    _assert_clean_failure(lambda: open_field(key, forged, CTX), [*secrets, plaintext], [TEXT])


def test_a_blob_that_decrypts_to_invalid_utf8_leaves_neither_data_key_nor_plaintext_behind() -> None:
    key, blob, dek = _post()
    plaintext = b"\xff " + TEXT.encode()
    forged = blob.data[:80] + AESGCM(dek).encrypt(blob.data[68:80], plaintext, b"\x01\x01" + encode_context(CTX))
    _assert_clean_failure(lambda: open_field(key, forged, CTX), [key_bytes(key), dek, plaintext], [TEXT])


def test_failed_unwraps_leave_no_root_or_user_key_behind() -> None:
    root = b"\x07" * 32
    ring = RootKeyRing({1: root}, primary=1)
    user_key = UserKey.generate(3, 1)
    wrapped = ring.wrap_user_key(user_key)
    secrets = [root, key_bytes(user_key)]
    _assert_clean_failure(lambda: ring.unwrap_user_key(wrapped, user_id=4, version=1), secrets, [])
    _assert_clean_failure(lambda: ring.unwrap_user_key(wrapped[:-1], user_id=3, version=1), secrets, [])
    retired = ring.with_new_version().promote(2).retire(1)
    _assert_clean_failure(lambda: retired.unwrap_user_key(wrapped, user_id=3, version=1), secrets, [])


def test_sealing_errors_do_not_quote_the_text() -> None:
    # Frames are not checked: the caller's own arguments hold the text.
    key = UserKey.generate(3, 1)
    _assert_clean_failure(
        lambda: seal_fields(key, {"body": TEXT + "\ud800"}, object_id=9, owner_id=3, revision=1),
        [key_bytes(key)],
        [TEXT[:10]],
        error=ValueError,
        check_frames=False,
    )
