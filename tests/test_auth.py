"""pyproxy.auth: proofs and their checks, against an independent computation of the formulas."""

from __future__ import annotations

import hashlib

import pytest

import vectors
from pyproxy import auth
from pyproxy.wire.handshake import parse_handshake_v10

NONCE = parse_handshake_v10(vectors.GREETING[4:]).auth_data


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def reference_native(password: bytes, nonce: bytes) -> bytes:
    stage1 = hashlib.sha1(password).digest()
    return xor(stage1, hashlib.sha1(nonce + hashlib.sha1(stage1).digest()).digest())


def reference_sha2(password: bytes, nonce: bytes) -> bytes:
    stage1 = hashlib.sha256(password).digest()
    return xor(stage1, hashlib.sha256(hashlib.sha256(stage1).digest() + nonce).digest())


def test_native_proof_matches_formula() -> None:
    """native_proof is SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))) over the captured nonce."""
    proof = auth.native_proof(vectors.PASSWORD.encode(), NONCE)
    assert proof == reference_native(b"secret", NONCE)
    assert len(proof) == 20


def test_native_verify() -> None:
    """The right proof verifies; a wrong password, a wrong nonce or a short proof do not."""
    proof = auth.native_proof(b"secret", NONCE)
    assert auth.verify_native(b"secret", NONCE, proof)
    assert not auth.verify_native(b"Secret", NONCE, proof)
    assert not auth.verify_native(b"secret", auth.new_nonce(), proof)
    assert not auth.verify_native(b"secret", NONCE, proof[:19])
    assert not auth.verify_native(b"secret", NONCE, b"")


def test_native_empty_password() -> None:
    """An account without password takes an empty proof, and only that."""
    assert auth.native_proof(b"", NONCE) == b""
    assert auth.verify_native(b"", NONCE, b"")
    assert not auth.verify_native(b"", NONCE, b"\x00" * 20)


def test_nonce_longer_than_20_bytes() -> None:
    """A nonce with its trailing NUL still gives the 20-byte-nonce proof."""
    assert auth.native_proof(b"pw", NONCE + b"\x00") == auth.native_proof(b"pw", NONCE)
    assert auth.verify_native(b"pw", NONCE + b"\x00", auth.native_proof(b"pw", NONCE))


def test_caching_sha2_proof_and_verify() -> None:
    """caching_sha2 fast-auth proofs follow the formula and verify only for the right password."""
    proof = auth.caching_sha2_proof(b"secret", NONCE)
    assert proof == reference_sha2(b"secret", NONCE)
    assert auth.verify_caching_sha2(b"secret", NONCE, proof)
    assert not auth.verify_caching_sha2(b"other", NONCE, proof)
    assert not auth.verify_caching_sha2(b"secret", NONCE, proof[:31])


def test_caching_sha2_empty_password() -> None:
    """Clients send an empty or single-NUL response for an empty sha2 password."""
    assert auth.caching_sha2_proof(b"", NONCE) == b""
    assert auth.verify_caching_sha2(b"", NONCE, b"")
    assert auth.verify_caching_sha2(b"", NONCE, b"\x00")
    assert not auth.verify_caching_sha2(b"", NONCE, b"x" * 32)


def test_sha2_rsa_encrypt_decrypts_to_xored_password() -> None:
    """Full auth without TLS: RSA-OAEP of (password + NUL) XOR nonce, readable with the private key."""
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    cipher = auth.sha2_rsa_encrypt(b"secret", NONCE, pem)
    plain = key.decrypt(cipher, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    assert xor(plain, NONCE) == b"secret\x00"


def test_proof_for_dispatches() -> None:
    """proof_for picks the plugin's proof; an unknown plugin is a ValueError."""
    assert auth.proof_for(auth.NATIVE, b"pw", NONCE) == auth.native_proof(b"pw", NONCE)
    assert auth.proof_for(auth.CACHING_SHA2, b"pw", NONCE) == auth.caching_sha2_proof(b"pw", NONCE)
    with pytest.raises(ValueError):
        auth.proof_for("dialog", b"pw", NONCE)
    with pytest.raises(ValueError):
        auth.proof_for(auth.CLEAR, b"pw", NONCE)


def test_verify_dispatches() -> None:
    """verify accepts only the plugins offered to clients."""
    assert auth.verify(auth.NATIVE, b"pw", NONCE, auth.native_proof(b"pw", NONCE))
    assert auth.verify(auth.CACHING_SHA2, b"pw", NONCE, auth.caching_sha2_proof(b"pw", NONCE))
    assert not auth.verify(auth.CLEAR, b"pw", NONCE, b"pw\x00")
    assert not auth.verify(auth.ED25519, b"pw", NONCE, b"x" * 64)
    assert set(auth.CLIENT_PLUGINS) == {auth.NATIVE, auth.CACHING_SHA2}


def test_ed25519_proof_is_a_signature() -> None:
    """client_ed25519 signs the nonce (needs PyNaCl; skipped without it)."""
    proof = auth.ed25519_proof(b"secret", NONCE + b"x" * 12)
    assert len(proof) == 64


# MySQL's manual gives PASSWORD('mypass'); integration/test_stored_hash.py reads
# more from a real server's mysql.user.
MANUAL_VECTOR = (b"mypass", "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4")


def test_stored_hash_is_double_sha1_in_upper_case_hex() -> None:
    """The stored form is '*' + SHA1(SHA1(password)) in upper-case hex, as mysql.user holds it."""
    password, stored = MANUAL_VECTOR
    assert auth.stored_hash(password) == stored
    assert auth.stored_hash(b"") == ""
    assert auth.parse_stored_hash(stored) == hashlib.sha1(hashlib.sha1(password).digest()).digest()
    assert auth.parse_stored_hash(stored.lower()) == auth.parse_stored_hash(stored)
    assert auth.parse_stored_hash("") == b""


@pytest.mark.parametrize("text", ["6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4", "*6C89",
                                  "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4 ", "*" + "G" * 40,
                                  "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF40"])
def test_parse_stored_hash_refuses_other_text(text: str) -> None:
    """Anything but '*' and exactly 40 hex digits is refused, without echoing it."""
    with pytest.raises(ValueError) as info:
        auth.parse_stored_hash(text)
    assert text.strip("*") not in str(info.value)


def test_proof_checked_and_sha1_recovered_from_the_stored_hash() -> None:
    """A client's proof checks against the stored hash alone, and gives back SHA1(password);
    a wrong password, nonce or length gives nothing."""
    stage2 = auth.parse_stored_hash(auth.stored_hash(b"secret"))
    proof = auth.native_proof(b"secret", NONCE)
    assert auth.recover_native_sha1(stage2, NONCE, proof) == hashlib.sha1(b"secret").digest()
    assert auth.verify_native_hash(stage2, NONCE, proof)
    assert auth.recover_native_sha1(stage2, NONCE, auth.native_proof(b"Secret", NONCE)) is None
    assert auth.recover_native_sha1(stage2, auth.new_nonce(), proof) is None
    assert auth.recover_native_sha1(stage2, NONCE, proof[:19]) is None
    assert auth.recover_native_sha1(stage2, NONCE, b"") is None
    assert not auth.verify_native_hash(stage2, NONCE, bytes(20))


def test_no_password_hash_takes_only_an_empty_proof() -> None:
    """An account without password (stored "") takes an empty proof, which gives b""."""
    assert auth.recover_native_sha1(b"", NONCE, b"") == b""
    assert auth.recover_native_sha1(b"", NONCE, bytes(20)) is None
    assert auth.native_proof_from_sha1(b"", NONCE) == b""


def test_backend_proof_from_sha1_equals_the_password_proof() -> None:
    """The proof made for a server's nonce from SHA1(password) alone is the very proof the
    password gives: what lets pyproxy log in with a hash-only account."""
    client_nonce, server_nonce = auth.new_nonce(), auth.new_nonce()
    stage2 = auth.parse_stored_hash(auth.stored_hash(b"pa\xc3\xa9ss"))
    sha1 = auth.recover_native_sha1(stage2, client_nonce, auth.native_proof(b"pa\xc3\xa9ss", client_nonce))
    assert sha1 is not None
    assert auth.native_proof_from_sha1(sha1, server_nonce) == auth.native_proof(b"pa\xc3\xa9ss", server_nonce)
    assert auth.native_proof_from_sha1(sha1, server_nonce + b"\x00") == reference_native(
        b"pa\xc3\xa9ss", server_nonce)
