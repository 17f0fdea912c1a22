"""Ed25519 signatures (RFC 8032, section 5.1) in plain Python, for MariaDB's client_ed25519.

MariaDB's ``ed25519`` authentication plugin is standard Ed25519 with one
twist: the 64-byte expanded secret is SHA-512 of the *password* (any length)
instead of SHA-512 of a 32-byte seed.  Everything after that step is RFC 8032:
clamp the first half into the scalar ``a``, keep the second half as the nonce
prefix, and sign.  The server stores the public key ``A = a*B`` (base64 in
``mysql.global_priv``), sends a 32-byte random message, and checks the
64-byte signature ``R || S`` the client returns.

Only signing is needed (once per backend login), so this favours clarity over
speed and makes no attempt at constant-time arithmetic: the secret is a
password pyproxy already holds in its configuration, and the signatures it
makes are of server nonces only.
"""

from __future__ import annotations

import hashlib

# -- the curve: -x^2 + y^2 = 1 + d*x^2*y^2 over GF(p) -----------------------

P = 2**255 - 19
#: d = -121665 / 121666 (mod p)
D = -121665 * pow(121666, P - 2, P) % P
#: Order of the base point's subgroup.
L = 2**252 + 27742317777372353535851937790883648493
#: A square root of -1 mod p, used to recover x from y.
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T): x=X/Z, y=Y/Z, x*y=T/Z


def _inverse(n: int) -> int:
    return pow(n, P - 2, P)


def _recover_x(y: int, sign: int) -> int:
    """The x with x^2 = (y^2 - 1) / (d*y^2 + 1) whose low bit is ``sign`` (RFC 8032, 5.1.3)."""
    x2 = (y * y - 1) * _inverse(D * y * y + 1) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        raise ValueError("not a point on the curve")
    if x & 1 != sign:
        x = P - x
    return x


def _from_affine(x: int, y: int) -> Point:
    return (x, y, 1, x * y % P)


#: The base point B: y = 4/5, x even.
_BY = 4 * _inverse(5) % P
BASE: Point = _from_affine(_recover_x(_BY, 0), _BY)
IDENTITY: Point = (0, 1, 1, 0)


def add(p1: Point, p2: Point) -> Point:
    """Point addition in extended coordinates (RFC 8032, 5.1.4); also correct for doubling."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * D * t1 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def multiply(k: int, point: Point) -> Point:
    """k * point, by double-and-add over the bits of k."""
    result = IDENTITY
    while k:
        if k & 1:
            result = add(result, point)
        point = add(point, point)
        k >>= 1
    return result


def encode_point(point: Point) -> bytes:
    """32 bytes: y little-endian, with the low bit of x in the top bit (RFC 8032, 5.1.2)."""
    x, y, z, _ = point
    zi = _inverse(z)
    x, y = x * zi % P, y * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def decode_point(data: bytes) -> Point:
    """The inverse of :func:`encode_point` (used by tests and :func:`verify`)."""
    if len(data) != 32:
        raise ValueError("an encoded point is 32 bytes")
    n = int.from_bytes(data, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= P:
        raise ValueError("not a point on the curve")
    return _from_affine(_recover_x(y, sign), y)


# -- keys and signatures ------------------------------------------------------


def _sha512_int(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _secret_scalar(expanded: bytes) -> int:
    """Clamps the first half of the expanded secret: clear the low 3 bits and
    bit 255, set bit 254."""
    a = int.from_bytes(expanded[:32], "little")
    a &= ~7
    a &= (1 << 254) - 1
    a |= 1 << 254
    return a


def public_key_expanded(expanded: bytes) -> bytes:
    """The encoded public key ``A = a*B`` for a 64-byte expanded secret."""
    if len(expanded) != 64:
        raise ValueError("the expanded secret is 64 bytes")
    return encode_point(multiply(_secret_scalar(expanded), BASE))


def sign_expanded(expanded: bytes, message: bytes) -> bytes:
    """Signs ``message`` with a 64-byte expanded secret; returns R || S (64 bytes).

    r = SHA512(prefix || M) mod L, R = r*B,
    k = SHA512(R || A || M) mod L, S = (r + k*a) mod L.
    """
    if len(expanded) != 64:
        raise ValueError("the expanded secret is 64 bytes")
    a = _secret_scalar(expanded)
    prefix = expanded[32:]
    public = encode_point(multiply(a, BASE))
    r = _sha512_int(prefix, message) % L
    big_r = encode_point(multiply(r, BASE))
    k = _sha512_int(big_r, public, message) % L
    s = (r + k * a) % L
    return big_r + s.to_bytes(32, "little")


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Checks S*B == R + k*A (RFC 8032, 5.1.7; cofactorless)."""
    if len(signature) != 64:
        return False
    try:
        a_point = decode_point(public)
        r_point = decode_point(signature[:32])
    except ValueError:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = _sha512_int(signature[:32], public, message) % L
    return _same_point(multiply(s, BASE), add(r_point, multiply(k, a_point)))


def _same_point(p1: Point, p2: Point) -> bool:
    x1, y1, z1, _ = p1
    x2, y2, z2, _ = p2
    return (x1 * z2 - x2 * z1) % P == 0 and (y1 * z2 - y2 * z1) % P == 0


# -- standard Ed25519 (32-byte seeds) and MariaDB's variant ------------------


def expand_seed(seed: bytes) -> bytes:
    """RFC 8032: the expanded secret is SHA-512 of the 32-byte seed."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    return hashlib.sha512(seed).digest()


def sign(seed: bytes, message: bytes) -> bytes:
    """Standard Ed25519 signature with a 32-byte seed (RFC 8032)."""
    return sign_expanded(expand_seed(seed), message)


def public_key(seed: bytes) -> bytes:
    """Standard Ed25519 public key of a 32-byte seed."""
    return public_key_expanded(expand_seed(seed))


def mariadb_expand(password: bytes) -> bytes:
    """MariaDB's ed25519 plugin: the expanded secret is SHA-512 of the password itself."""
    return hashlib.sha512(password).digest()


def mariadb_sign(password: bytes, nonce: bytes) -> bytes:
    """client_ed25519's reply to the server's nonce: the 64-byte signature R || S."""
    return sign_expanded(mariadb_expand(password), nonce)


def mariadb_public_key(password: bytes) -> bytes:
    """The 32-byte key MariaDB stores for ``PASSWORD('...')`` with ed25519 (base64, unpadded)."""
    return public_key_expanded(mariadb_expand(password))
