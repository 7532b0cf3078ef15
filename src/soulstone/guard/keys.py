"""API keys: `ss-<id>-<secret>`, stored as salted keyed hashes, checked in constant time.

A key's secret is 256 random bits, so a fast keyed hash (HMAC-SHA256 keyed by a
per-key random salt) is as strong as a slow one and costs microseconds: no timing
difference worth measuring, no CPU to drain. Entries written by earlier versions
(`scrypt:N:r:p:salt:digest`) still verify, slowly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets

HMAC_SCHEME = "hmac-sha256"
SCRYPT_SCHEME = "scrypt"
SALT_BYTES = 16
KEY_RE = re.compile(r"ss-([0-9a-f]{8})-([A-Za-z0-9_-]{20,})")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")  # header text never makes this raise


def _keyed(salt: bytes, key: str) -> bytes:
    return hmac.new(salt, _bytes(key), hashlib.sha256).digest()


def new_key() -> tuple[str, str]:
    """A fresh key and its id: (`ss-<id>-<secret>`, id)."""
    key_id = secrets.token_hex(4)
    return f"ss-{key_id}-{secrets.token_urlsafe(32)}", key_id


def hash_key(key: str, salt: bytes | None = None) -> str:
    """The stored form of a key: `hmac-sha256:<salt>:<digest>` (base64url, a random salt)."""
    salt = salt or os.urandom(SALT_BYTES)
    return f"{HMAC_SCHEME}:{_b64(salt)}:{_b64(_keyed(salt, key))}"


def is_slow(stored: str) -> bool:
    """True for a stored form that costs tens of milliseconds to check (the old scrypt one)."""
    return stored.startswith(SCRYPT_SCHEME + ":")


def verify_key(key: str, stored: str) -> bool:
    """True when the key matches its stored form, either scheme; False for any malformed one.

    The comparison is constant-time; an `hmac-sha256` entry costs the same whether
    the key is right or wrong.
    """
    scheme, _, rest = stored.partition(":")
    try:
        if scheme == HMAC_SCHEME:
            salt, digest = rest.split(":")
            computed = _keyed(_unb64(salt), key)
        elif scheme == SCRYPT_SCHEME:
            n, r, p, salt, digest = rest.split(":")
            computed = hashlib.scrypt(_bytes(key), salt=_unb64(salt), n=int(n), r=int(r),
                                      p=int(p), dklen=len(_unb64(digest)))  # fmt: skip
        else:
            return False
        expected = _unb64(digest)
    except (ValueError, TypeError, OverflowError, MemoryError):
        return False
    return hmac.compare_digest(computed, expected)


def key_id(key: str) -> str | None:
    """The id part of a well-formed key, else None."""
    match = KEY_RE.fullmatch(key)
    return match.group(1) if match else None
