"""Authentication plugins as pure functions: proofs a client sends, and their checks.

pyproxy verifies clients itself and logs in to the backend with the same
accounts, so it holds each user's secret and can check a proof for any of
the plugins here without a round trip to the server.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from pymysql import _auth as pymysql_auth

from pyproxy import ed25519

NATIVE = "mysql_native_password"
CACHING_SHA2 = "caching_sha2_password"
ED25519 = "client_ed25519"
CLEAR = "mysql_clear_password"

# caching_sha2_password's AuthMoreData codes.
SHA2_REQUEST_PUBLIC_KEY = b"\x02"
SHA2_FAST_AUTH_SUCCESS = b"\x03"
SHA2_PERFORM_FULL_AUTH = b"\x04"


def new_nonce() -> bytes:
    """20 random bytes, printable and NUL-free, as servers send them (some
    clients treat the nonce as a C string)."""
    return bytes(33 + b % 94 for b in os.urandom(20))


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def native_proof(password: bytes, nonce: bytes) -> bytes:
    """SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password)))."""
    if not password:
        return b""
    return pymysql_auth.scramble_native_password(password, nonce[:20])


def verify_native(password: bytes, nonce: bytes, proof: bytes) -> bool:
    if not password:
        return proof == b""
    stage2 = hashlib.sha1(hashlib.sha1(password).digest()).digest()
    if len(proof) != 20:
        return False
    candidate = _xor(proof, hashlib.sha1(nonce[:20] + stage2).digest())
    return hmac.compare_digest(hashlib.sha1(candidate).digest(), stage2)


def caching_sha2_proof(password: bytes, nonce: bytes) -> bytes:
    """SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce)."""
    if not password:
        return b""
    return pymysql_auth.scramble_caching_sha2(password, nonce[:20])


def verify_caching_sha2(password: bytes, nonce: bytes, proof: bytes) -> bool:
    """Checks the fast-auth proof; pyproxy knows the secret, so it never needs
    the full-auth exchange that a server without a cache entry would ask for."""
    if not password:
        return proof in (b"", b"\x00")
    stage2 = hashlib.sha256(hashlib.sha256(password).digest()).digest()
    if len(proof) != 32:
        return False
    candidate = _xor(proof, hashlib.sha256(stage2 + nonce[:20]).digest())
    return hmac.compare_digest(hashlib.sha256(candidate).digest(), stage2)


def sha2_rsa_encrypt(password: bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    """caching_sha2_password full auth without TLS: the password, XORed with
    the nonce, encrypted with the server's RSA public key (needs cryptography)."""
    return pymysql_auth.sha2_rsa_encrypt(password, nonce[:20], public_key_pem)


#: Length of the message MariaDB's ed25519 plugin asks the client to sign.
ED25519_NONCE_LENGTH = 32


def ed25519_proof(password: bytes, nonce: bytes) -> bytes:
    """MariaDB's client_ed25519 reply: the 64-byte Ed25519 signature R || S of
    the server's 32-byte nonce, with SHA-512(password) as the expanded secret
    (see :mod:`pyproxy.ed25519`)."""
    return ed25519.mariadb_sign(password, nonce[:ED25519_NONCE_LENGTH])


def proof_for(plugin: str, password: bytes, nonce: bytes) -> bytes:
    """The first auth response pyproxy sends to a backend for ``plugin``.

    Raises:
        ValueError: pyproxy cannot log in with that plugin.
    """
    if plugin == NATIVE:
        return native_proof(password, nonce)
    if plugin == CACHING_SHA2:
        return caching_sha2_proof(password, nonce)
    if plugin == ED25519:
        return ed25519_proof(password, nonce)
    raise ValueError(f"authentication plugin {plugin!r} is not supported")


def verify(plugin: str, password: bytes, nonce: bytes, proof: bytes) -> bool:
    """Checks a client's proof for one of the plugins pyproxy offers clients."""
    if plugin == NATIVE:
        return verify_native(password, nonce, proof)
    if plugin == CACHING_SHA2:
        return verify_caching_sha2(password, nonce, proof)
    return False


CLIENT_PLUGINS = (NATIVE, CACHING_SHA2)
