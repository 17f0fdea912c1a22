"""pyproxy.ed25519: RFC 8032 test vectors, MariaDB's password-keyed variant, and auth.ed25519_proof."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest

from pyproxy import auth, ed25519
from pyproxy.wire.handshake import parse_auth_switch_request

# RFC 8032, section 7.1, TEST 1, 2 and 3: (secret seed, public key, message, signature).
RFC8032_VECTORS = [
    pytest.param(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        id="test1",
    ),
    pytest.param(
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        id="test2",
    ),
    pytest.param(
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        id="test3",
    ),
]

# Public keys MariaDB 10.11 stored (mysql.global_priv authentication_string, base64 without
# padding) for CREATE USER ... IDENTIFIED VIA ed25519 USING PASSWORD('...'), captured from a
# real server: an independent check of the password-keyed variant.
MARIADB_STORED_KEYS = [
    pytest.param(b"secret", "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY", id="short"),
    pytest.param(b"x" * 100, "UdhomqEdOtHyENpx97aeneL7yr8EYvVvlNWoAEJEyZg", id="100-bytes"),
]

NONCE = bytes(range(1, 33))


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors(seed: str, public: str, message: str, signature: str) -> None:
    """Standard Ed25519 (expanded key = SHA-512 of the 32-byte seed) reproduces RFC 8032's
    public keys and signatures exactly, and the signatures verify."""
    seed_b, public_b, message_b, signature_b = map(bytes.fromhex, (seed, public, message, signature))
    expanded = hashlib.sha512(seed_b).digest()
    assert ed25519.public_key_expanded(expanded) == public_b
    assert ed25519.sign_expanded(expanded, message_b) == signature_b
    assert ed25519.sign(seed_b, message_b) == signature_b
    assert ed25519.public_key(seed_b) == public_b
    assert ed25519.verify(public_b, message_b, signature_b)


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032_VECTORS)
def test_verify_rejects_tampering(seed: str, public: str, message: str, signature: str) -> None:
    """verify() (used to check our own signatures) fails for another message or a flipped bit."""
    public_b, message_b, signature_b = map(bytes.fromhex, (public, message, signature))
    assert not ed25519.verify(public_b, message_b + b"!", signature_b)
    flipped = bytes([signature_b[0] ^ 1]) + signature_b[1:]
    assert not ed25519.verify(public_b, message_b, flipped)
    assert not ed25519.verify(public_b, message_b, signature_b[:63])


@pytest.mark.parametrize(("password", "stored"), MARIADB_STORED_KEYS)
def test_mariadb_public_key_matches_server(password: bytes, stored: str) -> None:
    """SHA-512(password) as the expanded secret gives the very key MariaDB stores for the
    account, for a short password and for one longer than a 32-byte seed."""
    assert base64.b64encode(ed25519.mariadb_public_key(password)).decode().rstrip("=") == stored


@pytest.mark.parametrize("password", [b"secret", b"", b"x" * 100, "pässwörd".encode()])
def test_mariadb_signature_verifies(password: bytes) -> None:
    """The client_ed25519 reply is a 64-byte R||S signature of the nonce that verifies
    against the password's public key (what the server checks)."""
    signature = ed25519.mariadb_sign(password, NONCE)
    assert len(signature) == 64
    assert signature == ed25519.sign_expanded(hashlib.sha512(password).digest(), NONCE)
    assert ed25519.verify(ed25519.mariadb_public_key(password), NONCE, signature)
    assert not ed25519.verify(ed25519.mariadb_public_key(password + b"x"), NONCE, signature)


def test_signatures_are_deterministic() -> None:
    """Ed25519 derives r from the key and message: same inputs, same signature; a different
    nonce gives a different one."""
    assert ed25519.mariadb_sign(b"pw", NONCE) == ed25519.mariadb_sign(b"pw", NONCE)
    assert ed25519.mariadb_sign(b"pw", NONCE) != ed25519.mariadb_sign(b"pw", NONCE[::-1])


def test_clamping() -> None:
    """The secret scalar has its low 3 bits and bit 255 cleared and bit 254 set."""
    a = ed25519._secret_scalar(b"\xff" * 64)
    assert a & 7 == 0 and a >> 255 == 0 and a >> 254 == 1
    a = ed25519._secret_scalar(b"\x00" * 64)
    assert a == 1 << 254


def test_base_point_has_order_l() -> None:
    """Sanity of the curve constants: B is on the curve and L*B is the identity."""
    x, y, z, t = ed25519.BASE
    assert (-x * x + y * y - 1 - ed25519.D * x * x * y * y) % ed25519.P == 0
    assert ed25519.encode_point(ed25519.multiply(ed25519.L, ed25519.BASE)) == \
        ed25519.encode_point(ed25519.IDENTITY)


def test_decode_rejects_bad_points() -> None:
    with pytest.raises(ValueError):
        ed25519.decode_point(b"\x00" * 31)
    with pytest.raises(ValueError):
        ed25519.decode_point(b"\xff" * 32)  # y >= p


def test_auth_ed25519_proof() -> None:
    """pyproxy.auth signs with the pure-Python signer (no PyNaCl), via proof_for too."""
    expected = ed25519.mariadb_sign(b"secret", NONCE)
    assert auth.ed25519_proof(b"secret", NONCE) == expected
    assert auth.proof_for(auth.ED25519, b"secret", NONCE) == expected


def test_switch_nonce_ending_in_nul_is_signed_whole() -> None:
    """MariaDB sends the 32-byte nonce with no terminator, so one nonce in 256 ends in 0x00:
    the AuthSwitchRequest parser keeps that byte and the proof signs all 32 bytes."""
    nonce = NONCE[:31] + b"\x00"
    plugin, data = parse_auth_switch_request(b"\xfe" + auth.ED25519.encode() + b"\x00" + nonce)
    assert (plugin, data) == (auth.ED25519, nonce)
    assert auth.ed25519_proof(b"secret", data) == ed25519.mariadb_sign(b"secret", nonce)


def test_signing_is_fast_enough() -> None:
    """One signature per backend login: well under 50 ms."""
    start = time.perf_counter()
    for _ in range(5):
        ed25519.mariadb_sign(b"secret", NONCE)
    assert (time.perf_counter() - start) / 5 < 0.05
