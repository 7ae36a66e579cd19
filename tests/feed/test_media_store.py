"""The media store's one interface, on both backends: a directory, and an S3-compatible server (moto's, run as a
real HTTP server in its own process; obstore speaks S3 to it as to any other)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crypto import FieldContext, UserKey
from crypto.stream import open_bytes, seal_stream
from feed.media.config import StoreConfig
from feed.media.store import MediaStore
from feed.settings import ConfigError, Secret
from tests.feed.processes import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    port = free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the S3 server did not start") from None
                time.sleep(0.1)
        httpx.put(f"{endpoint}/cipherfeed-media", timeout=5).raise_for_status()  # the bucket
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MediaStore:
    if request.param == "directory":
        return MediaStore.open(StoreConfig(f"file://{tmp_path / 'media'}"))
    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = f"run-{os.getpid()}-{time.monotonic_ns()}"
    config = StoreConfig(
        f"s3://cipherfeed-media/{prefix}",
        endpoint=endpoint,
        region="us-east-1",
        access_key_id="test",
        secret_access_key=Secret("test-secret"),
    )
    return MediaStore.open(config)


async def test_a_file_is_written_whole_read_by_ranges_listed_and_deleted(store: MediaStore) -> None:
    data = os.urandom(300_000)
    assert await store.size("ab/12.original") is None
    await store.put("ab/12.original", [data[:1000], data[1000:200_000], data[200_000:]])
    assert await store.size("ab/12.original") == len(data)
    assert await store.read("ab/12.original", 0, 10) == data[:10]
    assert await store.read("ab/12.original", 150_000, 150_500) == data[150_000:150_500]
    assert await store.read("ab/12.original", 5, 5) == b""
    await store.put("ab/12.small", b"tiny")
    await store.put("cd/13.original", b"other")
    assert sorted([name async for name in store.names("ab/")]) == ["ab/12.original", "ab/12.small"]
    assert len([name async for name in store.names()]) == 3
    await store.put("ab/12.small", b"replaced")  # a rewrite replaces the whole file
    assert await store.read("ab/12.small", 0, 100) == b"replaced"
    await store.delete("ab/12.original")
    await store.delete("ab/12.original")  # twice: no error
    assert await store.size("ab/12.original") is None
    with pytest.raises(FileNotFoundError):
        await store.read("ab/12.original", 0, 10)


async def test_a_sealed_stream_goes_in_and_out_as_ciphertext(store: MediaStore) -> None:
    key = UserKey.generate(7, 1)
    ctx = FieldContext("media:original", 99, 7, 0)
    picture = b"\x89PNG fake picture bytes " * 10_000
    await store.put("99.original", seal_stream(key, ctx, [picture]))
    size = await store.size("99.original")
    assert size is not None
    stored = await store.read("99.original", 0, size)
    assert b"fake picture" not in stored
    assert open_bytes(key, ctx, stored) == picture


def test_a_store_url_must_be_a_directory_or_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file:// or s3://"):
        MediaStore.open(StoreConfig("ftp://example.org/media"))
    with pytest.raises(ConfigError, match="bucket"):
        MediaStore.open(StoreConfig("s3:///no-bucket"))
    opened = MediaStore.open(StoreConfig(f"file://{tmp_path / 'made' / 'here'}"))
    assert (tmp_path / "made" / "here").is_dir() and "directory" in opened.describe
    assert "secret" not in repr(StoreConfig("s3://b", secret_access_key=Secret("secret")))
