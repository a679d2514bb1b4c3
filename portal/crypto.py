"""Keys and sealing for the pickup portal.

A pickup's link is ``/p/<id>/<secret>``: ``id`` (128 random bits) names the row, ``secret``
(256 random bits) exists only in the link. The store keeps ``token_hash(secret)``; the content
key is derived from the secret with HKDF, so the server can decrypt a message only while the
recipient presents the link (or a session the link was granted to).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

NONCE = 12


class SealError(ValueError):
    """Wrong key or tampered ciphertext."""


def new_id() -> str:
    return secrets.token_urlsafe(16)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def token_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def derive(secret: str, purpose: str, context: str) -> bytes:
    """A 256-bit key for ``purpose`` ("pickup", "session") bound to ``context`` (an id)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=context.encode(),
                info=b"phigate-portal-v1 " + purpose.encode()).derive(secret.encode())


def passphrase_key(link_key: bytes, passphrase: str, context: str) -> bytes:
    """The content key of a pickup its sender protected with a (normalised) passphrase: the
    link's key and the passphrase stretched by scrypt (16 MiB, about 0.1 s, so guessing is
    slow) together; neither alone opens the message."""
    stretched = Scrypt(salt=context.encode(), length=32, n=2**14, r=8, p=1).derive(
        passphrase.encode())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=context.encode(),
                info=b"phigate-portal-v1 passphrase").derive(link_key + stretched)


def seal(key: bytes, plaintext: bytes, context: str) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode())


def unseal(key: bytes, blob: bytes, context: str) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:NONCE], blob[NONCE:], context.encode())
    except (InvalidTag, ValueError) as exc:
        raise SealError("cannot open sealed content") from exc


def code_hash(key: bytes, code: str) -> bytes:
    return hmac.new(key, b"code " + code.encode(), hashlib.sha256).digest()


def new_code(digits: int) -> str:
    return str(secrets.randbelow(10 ** digits)).zfill(digits)
