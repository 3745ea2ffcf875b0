"""Making and recognising API keys. A key is shown once; only its hash is stored."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "ezq_"
# 32 random bytes: a hash of the key cannot be searched, so SHA-256 needs no slow KDF.
KEY_BYTES = 32
# How much of a key ``ezq keys list`` shows, to tell keys apart (``ezq_`` and 8 more).
SHOWN_CHARS = 12


def new_key() -> str:
    """A fresh key: ``ezq_`` followed by 43 URL-safe characters."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_hash(key: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def shown_prefix(key: str) -> str:
    """The first characters of a key, safe to show and store in clear."""
    return key[:SHOWN_CHARS]


def looks_like_key(token: str) -> bool:
    """Whether ``token`` has the shape of an ezq key (so it is looked up in the database)."""
    return token.startswith(KEY_PREFIX) and len(token) > SHOWN_CHARS
