"""Authentication plugins as pure functions: proofs a client sends, and their checks.

pyproxy verifies clients itself and logs in to the backend with the same
accounts, so it holds each user's secret and can check a proof for any of
the plugins here without a round trip to the server.

It may hold only the stored form of a mysql_native_password secret, as
``mysql.user`` does (:func:`stored_hash`): a client's proof is checked
against that, and the proof then yields SHA1(password), which is all a
mysql_native_password login to the backend needs (:func:`recover_native_sha1`,
:func:`native_proof_from_sha1`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

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


#: ``*`` and 40 hex digits: SHA1(SHA1(password)) as ``mysql.user`` stores a
#: mysql_native_password secret (``authentication_string``, ``SHOW GRANTS``).
STORED_HASH = re.compile(r"\*[0-9A-Fa-f]{40}")


def stored_hash(password: bytes) -> str:
    """The stored form of a mysql_native_password secret, as the server writes
    it (upper-case hex); "" for no password, as the server stores that too."""
    if not password:
        return ""
    return "*" + hashlib.sha1(hashlib.sha1(password).digest()).hexdigest().upper()


def parse_stored_hash(text: str) -> bytes:
    """SHA1(SHA1(password)) from its stored form; b"" for "" (no password).

    Raises:
        ValueError: not ``*`` and 40 hex digits (the message does not show it).
    """
    if text == "":
        return b""
    if not STORED_HASH.fullmatch(text):
        raise ValueError("a stored password hash is '*' and 40 hex digits")
    return bytes.fromhex(text[1:])


def recover_native_sha1(stage2: bytes, nonce: bytes, proof: bytes) -> bytes | None:
    """SHA1(password) from a client's mysql_native_password proof, or None if the
    proof is wrong.

    The proof is SHA1(password) XOR SHA1(nonce + stage2), so knowing stage2
    (SHA1(SHA1(password)), the stored hash) undoes the XOR, and the result is
    right exactly when its SHA1 is stage2 again.  This is the check a server
    makes; what it gives back lets pyproxy log in to the backend as that user
    without ever knowing the password.  An empty stage2 (no password) takes
    only an empty proof, and gives b"".
    """
    if not stage2:
        return b"" if proof == b"" else None
    if len(proof) != 20 or len(stage2) != 20:
        return None
    candidate = _xor(proof, hashlib.sha1(nonce[:20] + stage2).digest())
    if hmac.compare_digest(hashlib.sha1(candidate).digest(), stage2):
        return candidate
    return None


def verify_native_hash(stage2: bytes, nonce: bytes, proof: bytes) -> bool:
    """Checks a mysql_native_password proof against the stored hash alone."""
    return recover_native_sha1(stage2, nonce, proof) is not None


def native_proof_from_sha1(sha1_password: bytes, nonce: bytes) -> bytes:
    """A mysql_native_password proof for ``nonce`` made from SHA1(password)
    alone: SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))), the same
    bytes :func:`native_proof` makes from the password.  b"" stands for no
    password."""
    if not sha1_password:
        return b""
    stage2 = hashlib.sha1(sha1_password).digest()
    return _xor(sha1_password, hashlib.sha1(nonce[:20] + stage2).digest())


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


def verify_clear(password: bytes, clear: bytes) -> bool:
    """Checks a password sent in clear (over TLS, or RSA-encrypted)."""
    return hmac.compare_digest(password, clear)


def verify_clear_hash(stage2: bytes, clear: bytes) -> bool:
    """Checks a password sent in clear against the stored mysql_native_password
    hash, SHA1(SHA1(password)) (b"" for no password)."""
    if not stage2:
        return clear == b""
    return hmac.compare_digest(hashlib.sha1(hashlib.sha1(clear).digest()).digest(), stage2)


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
    if plugin == CLEAR:
        return verify_clear(password, proof)
    return False


CLIENT_PLUGINS = (NATIVE, CACHING_SHA2)
