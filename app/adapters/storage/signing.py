"""HMAC-signed download links for the local store, and the signing key they use.

A link is `{public_url}/files/{key}?expires=..&filename=..&content_type=..&sig=..`. The
signature covers the key, the expiry and the two response headers it asks for, so none
of them can be changed without the key. Verification is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

from pydantic import SecretStr

#: Bytes of a generated signing key.
SIGNING_KEY_BYTES = 32
#: A configured key shorter than this is refused.
MIN_SIGNING_KEY_BYTES = 16
SIGNING_KEY_FILENAME = "signing.key"
_SIG = re.compile(r"[0-9a-f]{64}")
_EXPIRES = re.compile(r"[0-9]{1,12}")
_VERSION = "v1"


def sign_path(signing_key: bytes, key: str, expires: int, filename: str, content_type: str) -> str:
    """The hex HMAC-SHA256 signature of one download link."""
    # JSON keeps the fields unambiguous: no separator inside one field can fake another.
    message = json.dumps([_VERSION, key, expires, filename, content_type]).encode()
    return hmac.new(signing_key, message, hashlib.sha256).hexdigest()


def signature_matches(
    signing_key: bytes, key: str, expires: int, filename: str, content_type: str, sig: str
) -> bool:
    """Whether `sig` is this link's signature (constant-time; expiry not checked)."""
    if not _SIG.fullmatch(sig):
        return False
    expected = sign_path(signing_key, key, expires, filename, content_type)
    return hmac.compare_digest(expected.encode(), sig.encode())


def is_expired(expires: int, now: float) -> bool:
    """Whether a link that expires at `expires` (unix seconds) is dead at `now`."""
    return now >= expires


def verify_signature(
    signing_key: bytes,
    key: str,
    expires: int,
    filename: str,
    content_type: str,
    sig: str,
    *,
    now: float,
) -> bool:
    """Whether the link is authentic and not yet expired."""
    matches = signature_matches(signing_key, key, expires, filename, content_type, sig)
    return matches and not is_expired(expires, now)


def parse_expires(value: str | int) -> int | None:
    """The `expires` query value as unix seconds, or None when it is not a plain number."""
    if isinstance(value, int):
        return value if value >= 0 else None
    return int(value) if _EXPIRES.fullmatch(value) else None


def load_signing_key(configured: SecretStr, data_dir: Path) -> bytes:
    """The configured key, or the one kept in `data_dir/signing.key` (created once)."""
    value = configured.get_secret_value()
    if value:
        key = value.encode()
        if len(key) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(f"signing_key must be at least {MIN_SIGNING_KEY_BYTES} bytes")
        return key
    return _load_or_create_key_file(data_dir / SIGNING_KEY_FILENAME)


def _load_or_create_key_file(path: Path) -> bytes:
    """Read the key file; if absent, create it so that concurrent processes agree."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_bytes(SIGNING_KEY_BYTES).hex())
                file.flush()
                os.fsync(file.fileno())
            # link() publishes a complete file and fails if another process won the race;
            # the loser reads the winner's key below.
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise ValueError(f"{path} does not hold a valid signing key; remove it to regenerate")
    return key
