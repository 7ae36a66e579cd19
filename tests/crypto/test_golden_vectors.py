from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto import FieldContext, RootKeyRing, Sealed, UserKey, blind_index, open_field, open_fields
from crypto.user_key import key_bytes


def _load_generator() -> ModuleType:
    # By path, so that it works whatever pytest's import mode and whatever else is named make_vectors.
    path = Path(__file__).with_name("make_vectors.py")
    spec = importlib.util.spec_from_file_location("cipherfeed_crypto_make_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()
COMMITTED: dict[str, Any] = json.loads(GENERATOR.VECTORS.read_text(encoding="utf-8"))


def _user_key(vector: dict[str, Any]) -> UserKey:
    return UserKey(vector["user_id"], vector["user_key_version"], bytes.fromhex(vector["user_key"]))


def test_the_code_reproduces_the_committed_file_byte_for_byte() -> None:
    assert GENERATOR.render(GENERATOR.build_vectors()) == GENERATOR.VECTORS.read_text(encoding="utf-8")


def test_the_vectors_cover_what_they_promise() -> None:
    fields = {name for vector in COMMITTED["sealing"] for name in vector["fields"]}
    assert fields == {"body", "cw", "email"}
    texts = "".join(text for vector in COMMITTED["sealing"] for text in vector["fields"].values())
    assert not texts.isascii() and {"<", ">", "&", '"', "'"} <= set(texts)
    assert set(COMMITTED["user_key_wrap"]["root_keys"]) == {"1", "2"}


def test_resealing_with_the_same_rng_gives_the_committed_bytes() -> None:
    for vector in COMMITTED["sealing"]:
        rng = GENERATOR.CounterRng(vector["seed"])
        key = UserKey(vector["user_id"], vector["user_key_version"], rng(32))
        assert key_bytes(key).hex() == vector["user_key"]
        sealed = GENERATOR.seal_fields(
            key,
            vector["fields"],
            object_id=vector["object_id"],
            owner_id=vector["owner_id"],
            revision=vector["revision"],
            rng=rng,
        )
        assert {name: blob.data.hex() for name, blob in sealed.items()} == vector["sealed"]


def test_every_committed_blob_opens_to_its_text() -> None:
    for vector in COMMITTED["sealing"]:
        key = _user_key(vector)
        for name, hex_blob in vector["sealed"].items():
            ctx = FieldContext(name, vector["object_id"], vector["owner_id"], vector["revision"])
            assert open_field(key, bytes.fromhex(hex_blob), ctx) == vector["fields"][name]
            assert Sealed(bytes.fromhex(hex_blob)).key_version == vector["user_key_version"]
        blobs = {name: Sealed(bytes.fromhex(hex_blob)) for name, hex_blob in vector["sealed"].items()}
        opened = open_fields(
            key,
            blobs,
            object_id=vector["object_id"],
            owner_id=vector["owner_id"],
            revision=vector["revision"],
        )
        assert opened == vector["fields"]


def test_committed_blobs_follow_the_documented_layout() -> None:
    """Opens the vectors with bare AESGCM, from the documented layout alone: pins the format itself."""
    for vector in COMMITTED["sealing"]:
        for name, hex_blob in vector["sealed"].items():
            blob = bytes.fromhex(hex_blob)
            header = b"CF\x01\x01" + struct.pack(">I", vector["user_key_version"])
            assert blob[:8] == header
            encoded_name = name.encode()
            context = struct.pack(">H", len(encoded_name)) + encoded_name
            context += struct.pack(">QQQ", vector["object_id"], vector["owner_id"], vector["revision"])
            wrap_nonce, wrapped_dek = blob[8:20], blob[20:68]
            dek = AESGCM(bytes.fromhex(vector["user_key"])).decrypt(wrap_nonce, wrapped_dek, header + b"dek" + context)
            data_nonce, ciphertext = blob[68:80], blob[80:]
            plaintext = AESGCM(dek).decrypt(data_nonce, ciphertext, b"\x01\x01" + context)
            assert plaintext.decode("utf-8") == vector["fields"][name]
            assert len(blob) == 80 + len(plaintext) + 16


def test_fields_of_one_post_share_one_data_key() -> None:
    vector = COMMITTED["sealing"][0]
    deks = set()
    for name, hex_blob in vector["sealed"].items():
        blob = bytes.fromhex(hex_blob)
        encoded_name = name.encode()
        context = struct.pack(">H", len(encoded_name)) + encoded_name
        context += struct.pack(">QQQ", vector["object_id"], vector["owner_id"], vector["revision"])
        deks.add(
            AESGCM(bytes.fromhex(vector["user_key"])).decrypt(blob[8:20], blob[20:68], blob[:8] + b"dek" + context)
        )
    assert len(deks) == 1


def test_committed_wrapped_user_keys_unwrap_under_either_root_version() -> None:
    vector = COMMITTED["user_key_wrap"]
    root_keys = {int(v): bytes.fromhex(k) for v, k in vector["root_keys"].items()}
    ring = RootKeyRing(root_keys, primary=2)
    rng = GENERATOR.CounterRng(vector["seed"])
    rng(32 * 3)  # the two root keys and the user key
    for primary, hex_blob in vector["wrapped_by_primary"].items():
        blob = bytes.fromhex(hex_blob)
        assert RootKeyRing.root_version_of(blob) == int(primary)
        assert RootKeyRing(root_keys, primary=int(primary)).wrap_user_key(_user_key(vector), rng=rng) == blob
        user_key = ring.unwrap_user_key(blob, user_id=vector["user_id"], version=vector["user_key_version"])
        assert key_bytes(user_key).hex() == vector["user_key"]
        assert (user_key.user_id, user_key.version) == (vector["user_id"], vector["user_key_version"])


def test_committed_rewrap_opens_under_the_new_key_only_with_the_ciphertext_unchanged() -> None:
    post, vector = COMMITTED["sealing"][0], COMMITTED["rewrap"]
    new_key = UserKey(post["user_id"], post["user_key_version"] + 1, bytes.fromhex(vector["new_user_key"]))
    ctx = FieldContext("body", post["object_id"], post["owner_id"], post["revision"])
    rewrapped = bytes.fromhex(vector["rewrapped"])
    assert open_field(new_key, rewrapped, ctx) == post["fields"]["body"]
    assert rewrapped[68:] == bytes.fromhex(post["sealed"]["body"])[68:]


def test_committed_blind_index() -> None:
    vector = COMMITTED["blind_index"]
    assert blind_index(bytes.fromhex(vector["key"]), vector["value"]).hex() == vector["index"]
