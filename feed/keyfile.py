"""The root key ring and the server secret, from settings or from files in the data dir (created mode 0600)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from crypto import InvalidKeyMaterial, RootKeyRing
from feed.settings import ConfigError, Settings


def write_new(path: Path, content: str) -> None:
    """Create ``path`` (mode 0600, never overwriting) and make it durable before anything is sealed under it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read_private(path: Path, what: str) -> str:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} file {path} is readable by others; run: chmod 600 {path}")
    return path.read_text().strip()


def load_ring(settings: Settings, *, create: bool) -> RootKeyRing:
    """The configured ring; with ``create`` a missing key file is generated (embedded mode's first run)."""
    try:
        if settings.root_key is not None:
            return RootKeyRing.from_json(settings.root_key.reveal())
        path = settings.resolved_root_key_file
        if not path.exists():
            if not create:
                raise ConfigError(
                    f"no root key: set CIPHERFEED_ROOT_KEY_FILE or CIPHERFEED_ROOT_KEY (expected {path}); "
                    "`cipherfeed keys generate` writes one"
                )
            ring = RootKeyRing.generate()
            write_new(path, ring.to_json())
            return ring
        return RootKeyRing.from_json(_read_private(path, "root key"))
    except InvalidKeyMaterial as exc:
        raise ConfigError(f"the root key is malformed: {exc}") from None


def ring_file(settings: Settings) -> Path | None:
    """The key file the ring is read from, or None when it comes from ``CIPHERFEED_ROOT_KEY``."""
    return None if settings.root_key is not None else settings.resolved_root_key_file


def replace_ring(path: Path, ring: RootKeyRing, *, expected: RootKeyRing) -> None:
    """Replace the key file at ``path`` with ``ring``, atomically and durably (mode 0600), if it still holds
    ``expected``: two rotations at once must not lose a key. The old file is not kept (a retired version must be
    gone); every ring a rotation writes holds every key still in use."""
    import fcntl  # POSIX only, and only needed here

    directory = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)  # one rotation at a time in this directory
        try:
            current = RootKeyRing.from_json(_read_private(path, "root key"))
        except InvalidKeyMaterial as exc:
            raise ConfigError(f"the root key is malformed: {exc}") from None
        if current.to_json() != expected.to_json():
            raise ConfigError(f"the root key file {path} changed meanwhile; run the command again")
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            write_new(temporary, ring.to_json())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)  # gone already once replaced
        os.fsync(directory)
    finally:
        os.close(directory)


def load_secret(settings: Settings, *, create: bool) -> bytes:
    """The server secret (CSRF tokens, the email blind index), from the env or ``secret.key`` in the data dir."""
    if settings.secret_key is not None:
        return settings.secret_key.reveal().encode()
    path = settings.secret_key_file
    if not path.exists():
        if not create:
            raise ConfigError(f"no secret key: set CIPHERFEED_SECRET_KEY (expected {path})")
        write_new(path, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    return _read_private(path, "secret key").encode()


def derive(secret: bytes, purpose: str) -> bytes:
    """An independent 32-byte key per purpose, so one secret serves several uses without reuse."""
    return hmac.new(secret, b"cipherfeed:" + purpose.encode(), hashlib.sha256).digest()
