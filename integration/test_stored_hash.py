"""Stored mysql_native_password hashes against a real server: the stored form pyproxy makes is
the one the server keeps, and a login made from that hash and a client's proof alone, never the
password, is one the server accepts.

The login is made over a raw socket (integration/raw_login.py), so that nothing but the recovered
SHA1(password) goes into it.
"""

from __future__ import annotations

import pytest

from integration import servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.raw_login import login_with_sha1
from pyproxy import auth
from pyproxy.wire.responses import parse_err

pytestmark = pytest.mark.usefixtures("bounded")

PASSWORDS = ["hash_pw", "pa:ss'wörd \\ with \"quotes\"", "x" * 80]


def server_hash(server: servers.DbServer, user: str) -> str:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT DISTINCT authentication_string FROM mysql.user WHERE User = %s", (user,))
            (row,) = cur.fetchall()
            return str(row[0])
    finally:
        conn.close()


@pytest.mark.parametrize("index", range(len(PASSWORDS)))
def test_stored_form_is_the_servers(db_server: servers.DbServer, index: int) -> None:
    """stored_hash() gives what the server keeps in mysql.user (and, on MariaDB, what SHOW
    GRANTS prints) for the same password."""
    user, password = servers.own_name(f"hash{index}"), PASSWORDS[index]
    db_server.create_user(user, password)
    stored = server_hash(db_server, user)
    assert stored == auth.stored_hash(password.encode())
    if db_server.flavor == "mariadb":
        conn = db_server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GRANTS FOR %s@'%%'", (user,))
                grants = " ".join(row[0] for row in cur.fetchall())
        finally:
            conn.close()
        assert f"IDENTIFIED BY PASSWORD '{stored}'" in grants


def test_login_from_the_hash_and_a_client_proof(db_server: servers.DbServer) -> None:
    """The server accepts a login made only from its stored hash and a client's proof to another
    nonce (pyproxy's), and refuses one made from a proof with a wrong password."""
    user, password = servers.own_name("hashlogin"), "hash_login_pw"
    db_server.create_user(user, password)
    stage2 = auth.parse_stored_hash(server_hash(db_server, user))
    client_nonce = auth.new_nonce()
    client_proof = auth.native_proof(password.encode(), client_nonce)
    sha1 = auth.recover_native_sha1(stage2, client_nonce, client_proof)
    assert sha1 is not None
    reply = login_with_sha1(db_server.host, db_server.port, user, sha1)
    assert reply[:1] == b"\x00", parse_err(reply)
    assert auth.recover_native_sha1(stage2, client_nonce,
                                    auth.native_proof(b"not it", client_nonce)) is None
    # The server checks for real: a SHA1 that is not the password's is refused.
    refused = login_with_sha1(db_server.host, db_server.port, user, bytes(20))
    assert refused[:1] == b"\xff" and parse_err(refused).code == 1045
