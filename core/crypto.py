"""Encryption of personal fields at rest (phone numbers, bank accounts).

MultiFernet: the first key encrypts, every key decrypts, so keys can be rotated by
putting a new one first in POOLDESK_ENCRYPTION_KEYS.
"""
from __future__ import annotations

import functools
import hashlib
import hmac

from cryptography.fernet import Fernet, MultiFernet

from core.config import get_settings


@functools.lru_cache(maxsize=4)
def _cipher(keys: tuple[bytes, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k) for k in keys])


def cipher() -> MultiFernet:
    return _cipher(tuple(get_settings().fernet_keys()))


def encrypt(text: str) -> str:
    return cipher().encrypt(text.encode()).decode()


def decrypt(token: str) -> str:
    return cipher().decrypt(token.encode()).decode()


def token_digest(token: str) -> str:
    """A keyed digest for one-time tokens: the database keeps only this, never the token."""
    return hmac.new(get_settings().secret().encode(), token.encode(), hashlib.sha256).hexdigest()


def rotate(token: str) -> str:
    """Re-encrypt a token under the current first key (any configured key may have written it)."""
    return cipher().rotate(token.encode()).decode()
