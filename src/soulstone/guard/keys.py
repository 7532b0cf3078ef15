"""API keys: `ss-<id>-<secret>`, stored as salted scrypt hashes, checked in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
KEY_RE = re.compile(r"ss-([0-9a-f]{8})-([A-Za-z0-9_-]{20,})")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key() -> tuple[str, str]:
    """A fresh key and its id: (`ss-<id>-<secret>`, id)."""
    key_id = secrets.token_hex(4)
    return f"ss-{key_id}-{secrets.token_urlsafe(32)}", key_id


def hash_key(key: str, salt: bytes | None = None) -> str:
    """The stored form of a key: `scrypt:N:r:p:salt:digest` (a slow, salted hash)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{_b64(salt)}:{_b64(digest)}"


def verify_key(key: str, stored: str) -> bool:
    """True when the key matches its stored hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split(":")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(key.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                  dklen=len(_unb64(digest)))  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, _unb64(digest))


def key_id(key: str) -> str | None:
    """The id part of a well-formed key, else None."""
    match = KEY_RE.fullmatch(key)
    return match.group(1) if match else None
