"""TLS towards clients: real drivers that verify pyproxy's certificate (chain and name)
against a certificate authority the test makes (trustme), ``[tls] require`` refusing
plaintext with 3159, a client trusting another CA, SIGHUP reloading the certificate (and a
bad one on reload keeping the old), and the logins that need TLS or RSA:
caching_sha2_password's full authentication and mysql_clear_password.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest
from mysql.connector import errors as connector_errors

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from pyproxy import auth
from pyproxy.wire.constants import CLIENT
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.handshake import (
    HandshakeResponse41,
    make_handshake_response41,
    parse_auth_switch_request,
    parse_handshake_v10,
)
from pyproxy.wire.responses import parse_err

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.usefixtures("bounded")

MakeProxy = Callable[..., servers.ProxyProcess]
HASH_USER = servers.own_name("hash_app")
HASH_PASSWORD = "hash-only-pw-41c9"


def write_pair(ca: Any, directory: Path, *names: str) -> tuple[Path, Path]:
    """A certificate for ``names`` issued by ``ca`` (chain in one file) and its key."""
    directory.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_cert(*(names or ("127.0.0.1", "localhost")))
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    return cert, key


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: Any, tmp_path: Path) -> dict[str, Path]:
    cert, key = write_pair(ca, tmp_path / "server")
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return {"cert": cert, "key": key, "ca": ca_path}


def tls_proxy(make_proxy: MakeProxy, files: dict[str, Path], require: bool = True,
              **sections: Any) -> servers.ProxyProcess:
    return make_proxy(tls={"cert": str(files["cert"]), "key": str(files["key"]), "require": require},
                      **sections)


def verified_pymysql(proxy: servers.ProxyProcess, ca_path: Path, **kw: Any) -> pymysql.Connection:
    """PyMySQL checking pyproxy's chain against ``ca_path`` and that it names 127.0.0.1."""
    return pymysql.connect(host=proxy.host, port=proxy.port, user=kw.pop("user", drivers.APP_USER),
                           password=kw.pop("password", drivers.APP_PASSWORD),
                           database=kw.pop("database", drivers.APP_DATABASE),
                           ssl_ca=str(ca_path), ssl_verify_cert=True, ssl_verify_identity=True,
                           connect_timeout=10, **kw)


def peer_fingerprint(conn: pymysql.Connection) -> str:
    sock = conn._sock
    assert isinstance(sock, ssl.SSLSocket), "not a TLS connection"
    return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()


def file_fingerprint(cert: Path) -> str:
    first = cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def scalar(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    value = cur.fetchall()[0][0]
    cur.close()
    return value


def test_pymysql_and_connector_verify_pyproxy(make_proxy: MakeProxy, tls_files: dict[str, Path]) -> None:
    """With TLS required, PyMySQL, mysql-connector-python (pure and C) and mysqlclient
    (VERIFY_IDENTITY) verify the chain and the name and run statements through pyproxy; the
    greeting announces CLIENT_SSL."""
    proxy = tls_proxy(make_proxy, tls_files)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        greeting = parse_handshake_v10(read_packets(sock, PacketFramer())[0][1])
    assert greeting.capabilities & CLIENT.SSL

    conn = verified_pymysql(proxy, tls_files["ca"])
    try:
        assert peer_fingerprint(conn) == file_fingerprint(tls_files["cert"])
        assert scalar(conn, "SELECT 40 + 2") == 42
        assert scalar(conn, "SELECT CURRENT_USER()").split("@")[0] == drivers.APP_USER
    finally:
        conn.close()
    for pure in (True, False) if mysql.connector.HAVE_CEXT else (True,):
        cconn = mysql.connector.connect(host=proxy.host, port=proxy.port, user=drivers.APP_USER,
                                        password=drivers.APP_PASSWORD, database=drivers.APP_DATABASE,
                                        ssl_ca=str(tls_files["ca"]), ssl_verify_cert=True,
                                        ssl_verify_identity=True, use_pure=pure, connection_timeout=10)
        try:
            cur = cconn.cursor()
            cur.execute("SELECT 'over tls'")
            assert cur.fetchall() == [("over tls",)]
            cur.close()
        finally:
            cconn.close()
    try:
        import MySQLdb  # noqa: PLC0415
    except ImportError:
        return
    mconn = MySQLdb.connect(host=proxy.host, port=proxy.port, user=drivers.APP_USER,
                            password=drivers.APP_PASSWORD, database=drivers.APP_DATABASE,
                            ssl_mode="VERIFY_IDENTITY", ssl={"ca": str(tls_files["ca"])}, connect_timeout=10)
    try:
        assert mconn.get_proto_info() == 10
        assert scalar(mconn, "SELECT 6 * 7") == 42
    finally:
        mconn.close()


def test_mariadb_cli_verifies_pyproxy(make_proxy: MakeProxy, tls_files: dict[str, Path]) -> None:
    """The mariadb client with --ssl-verify-server-cert and the test CA logs in and says which
    cipher it uses; with no CA it trusts, it refuses pyproxy's certificate."""
    if drivers.mariadb_client() is None:
        pytest.skip("no mariadb client (scripts/install-deps installs mariadb-client)")
    proxy = tls_proxy(make_proxy, tls_files)
    result = drivers.run_cli(proxy, "SELECT 7 * 6; \\s", "--ssl", "--ssl-verify-server-cert",
                             f"--ssl-ca={tls_files['ca']}")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert out.splitlines()[0] == "42"
    assert "Cipher in use is" in out, out
    other = trustme.CA()
    other_ca = tls_files["ca"].parent / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_ca))
    refused = drivers.run_cli(proxy, "SELECT 1", "--ssl", "--ssl-verify-server-cert", f"--ssl-ca={other_ca}")
    assert refused.returncode != 0
    assert b"certificate" in refused.stderr.lower() or b"ssl" in refused.stderr.lower(), refused.stderr


def test_node_mysql2_verifies_pyproxy(make_proxy: MakeProxy, tls_files: dict[str, Path]) -> None:
    """Node's mysql2 with ssl {ca} (Node checks the chain and that the certificate names
    127.0.0.1) logs in and queries."""
    if drivers.node_program() is None or not drivers.have_mysql2():
        pytest.skip("no Node.js with mysql2 (scripts/install-deps installs them)")
    proxy = tls_proxy(make_proxy, tls_files)
    out = drivers.run_program([drivers.node_program(), str(drivers.NODE_DIR / "tls.js")], "verified",
                              drivers.address(proxy), cwd=drivers.NODE_DIR, ca=str(tls_files["ca"]))
    seen = drivers.succeeded(out, proxy)
    assert seen["one"] == 1
    assert seen["encrypted"] and seen["authorized"]
    assert seen["protocol"] in ("TLSv1.2", "TLSv1.3")
    assert seen["fingerprint256"].replace(":", "").lower() == file_fingerprint(tls_files["cert"])


def test_plaintext_refused_when_required(make_proxy: MakeProxy, tls_files: dict[str, Path]) -> None:
    """A client that offers no TLS gets 3159 / HY000 with MySQL's own words; other clients
    are not disturbed."""
    proxy = tls_proxy(make_proxy, tls_files)
    with pytest.raises(pymysql.err.OperationalError) as info:
        proxy.connect()
    assert info.value.args[0] == 3159
    assert info.value.args[1] == ("Connections using insecure transport are prohibited while "
                                  "--require_secure_transport=ON.")
    with pytest.raises(connector_errors.Error) as cinfo:
        mysql.connector.connect(host=proxy.host, port=proxy.port, user=drivers.APP_USER,
                                password=drivers.APP_PASSWORD, ssl_disabled=True, connection_timeout=10)
    assert (cinfo.value.errno, cinfo.value.sqlstate) == (3159, "HY000")
    conn = verified_pymysql(proxy, tls_files["ca"])
    assert scalar(conn, "SELECT 1") == 1
    conn.close()


def test_plaintext_allowed_when_not_required(make_proxy: MakeProxy, tls_files: dict[str, Path]) -> None:
    """require = false: TLS is offered, and a client may still log in without it; the log
    says which logins came over TLS (``client_connected``'s ``tls``), and SIGUSR1's
    ``client_stats`` counts them."""
    proxy = tls_proxy(make_proxy, tls_files, require=False)
    plain = proxy.connect()
    secure = verified_pymysql(proxy, tls_files["ca"])
    try:
        assert scalar(plain, "SELECT 1") == scalar(secure, "SELECT 1") == 1
        assert not isinstance(plain._sock, ssl.SSLSocket)
    finally:
        plain.close()
        secure.close()
    assert [event["tls"] for event in drivers.log_events(proxy, "client_connected")] == [False, True]
    proxy.process.send_signal(signal.SIGUSR1)
    wait_for_event(proxy, "client_stats")
    stats = drivers.log_events(proxy, "client_stats")[-1]
    assert (stats["logins"], stats["tls_logins"]) == (2, 1), stats


def test_client_with_the_wrong_ca_fails_cleanly(make_proxy: MakeProxy, tls_files: dict[str, Path]) -> None:
    """A client that trusts another CA refuses the handshake; pyproxy logs no traceback and
    keeps serving others."""
    proxy = tls_proxy(make_proxy, tls_files)
    other = trustme.CA()
    other_ca = tls_files["ca"].parent / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_ca))
    with pytest.raises(pymysql.err.OperationalError) as info:
        verified_pymysql(proxy, other_ca)
    assert "certificate verify failed" in str(info.value)
    # The certificate names 127.0.0.1 and localhost, not another name.
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.2", port=proxy.port, user=drivers.APP_USER,
                        password=drivers.APP_PASSWORD, ssl_ca=str(tls_files["ca"]), ssl_verify_cert=True,
                        ssl_verify_identity=True, connect_timeout=10)
    conn = verified_pymysql(proxy, tls_files["ca"])
    assert scalar(conn, "SELECT 1") == 1
    conn.close()
    assert "Traceback" not in proxy.log_text()


def wait_for_event(proxy: servers.ProxyProcess, event: str, count: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(drivers.log_events(proxy, event)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event} in the log: {drivers.log_tail(proxy)}")
        time.sleep(0.05)


def test_sighup_reloads_the_certificate(make_proxy: MakeProxy, tls_files: dict[str, Path],
                                        ca: Any) -> None:
    """SIGHUP reads [tls] cert and key again: new connections get the new certificate while
    an open one carries on; a pair that does not load is logged on one line and the running
    certificate stays."""
    proxy = tls_proxy(make_proxy, tls_files)
    before = verified_pymysql(proxy, tls_files["ca"])
    assert peer_fingerprint(before) == file_fingerprint(tls_files["cert"])
    old_fingerprint = file_fingerprint(tls_files["cert"])

    write_pair(ca, tls_files["cert"].parent, "127.0.0.1", "localhost", "renewed.example")
    new_fingerprint = file_fingerprint(tls_files["cert"])
    assert new_fingerprint != old_fingerprint
    proxy.process.send_signal(signal.SIGHUP)
    wait_for_event(proxy, "tls_loaded")
    after = verified_pymysql(proxy, tls_files["ca"])
    assert peer_fingerprint(after) == new_fingerprint
    assert scalar(before, "SELECT 1") == 1  # the open connection is not disturbed
    after.close()

    # A broken renewal: the key of another certificate.
    good_key = tls_files["key"].read_bytes()
    _, stray_key = write_pair(ca, tls_files["cert"].parent / "stray")
    tls_files["key"].write_bytes(stray_key.read_bytes())
    proxy.process.send_signal(signal.SIGHUP)
    wait_for_event(proxy, "tls_reload_failed")
    failures = drivers.log_events(proxy, "tls_reload_failed")
    assert len(failures) == 1 and "does not match" in failures[0]["error"], failures
    still = verified_pymysql(proxy, tls_files["ca"])
    assert peer_fingerprint(still) == new_fingerprint
    still.close()
    before.close()
    tls_files["key"].write_bytes(good_key)


# --- logins that need TLS (or RSA) ------------------------------------------------------------


def read_packets(sock: Any, framer: PacketFramer) -> list[tuple[int, bytes]]:
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        packets = framer.feed(data)
        if packets:
            return [(packet.seq, packet.payload) for packet in packets]


def test_caching_sha2_full_authentication(make_proxy: MakeProxy, tls_files: dict[str, Path],
                                          db_server: servers.DbServer) -> None:
    """A user configured with only its password_hash cannot check a caching_sha2_password
    scramble, so pyproxy asks for the password (perform-full-auth): PyMySQL sends it in
    clear over TLS, and without TLS fetches pyproxy's RSA public key (0x02) and sends it
    encrypted.  Both log in and query (pyproxy's own login uses the proved password); a wrong
    password is refused with 1045 both ways."""
    db_server.create_user(HASH_USER, HASH_PASSWORD, database=drivers.APP_DATABASE)
    proxy = tls_proxy(make_proxy, tls_files, require=False, proxy={"auth_plugin": auth.CACHING_SHA2},
                      users=[{"name": HASH_USER, "password_hash": auth.stored_hash(HASH_PASSWORD.encode()),
                              "create": False}])
    secure = verified_pymysql(proxy, tls_files["ca"], user=HASH_USER, password=HASH_PASSWORD)
    try:
        assert scalar(secure, "SELECT CURRENT_USER()").split("@")[0] == HASH_USER
    finally:
        secure.close()
    plain = proxy.connect(HASH_USER, HASH_PASSWORD)
    try:
        assert plain.server_public_key and b"PUBLIC KEY" in plain.server_public_key
        assert scalar(plain, "SELECT CURRENT_USER()").split("@")[0] == HASH_USER
    finally:
        plain.close()
    with pytest.raises(pymysql.err.OperationalError) as info:
        verified_pymysql(proxy, tls_files["ca"], user=HASH_USER, password="wrong-full-auth-1")
    assert info.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as info:
        proxy.connect(HASH_USER, "wrong-full-auth-2")
    assert info.value.args[0] == 1045
    text = proxy.log_text()
    assert HASH_PASSWORD not in text and "wrong-full-auth" not in text


def clear_password_login(proxy: servers.ProxyProcess, context: ssl.SSLContext | None,
                         password: str) -> tuple[bytes, bytes]:
    """Logs in offering mysql_clear_password first, over TLS when ``context`` is given;
    returns the first packet pyproxy answers the login with, and the last."""
    sock: Any = socket.create_connection((proxy.host, proxy.port), timeout=10)
    framer = PacketFramer()
    try:
        greeting = parse_handshake_v10(read_packets(sock, framer)[0][1])
        caps = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
                | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA)
        seq = 1
        if context is not None:
            sock.sendall(frame((caps | CLIENT.SSL).to_bytes(4, "little") + (1 << 24).to_bytes(4, "little")
                               + b"\x2d" + b"\x00" * 23, seq))
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
            seq += 1
        sock.sendall(frame(make_handshake_response41(HandshakeResponse41(
            caps | (CLIENT.SSL if context else 0), 1 << 24, 45, drivers.APP_USER,
            password.encode() + b"\x00", None, auth.CLEAR)), seq))
        first = read_packets(sock, framer)[0]
        last = first
        if first[1][:1] == b"\xfe":
            plugin, nonce = parse_auth_switch_request(first[1])
            assert plugin == auth.NATIVE
            sock.sendall(frame(auth.native_proof(password.encode(), nonce[:20]), first[0] + 1))
            last = read_packets(sock, framer)[0]
        assert greeting.auth_plugin
        return first[1], last[1]
    finally:
        sock.close()


def test_clear_password_only_over_tls(make_proxy: MakeProxy, tls_files: dict[str, Path]) -> None:
    """mysql_clear_password is accepted over TLS (mysql-connector, and a raw login); without
    TLS pyproxy does not take the password it was sent but asks for a
    mysql_native_password proof instead (AuthSwitchRequest)."""
    proxy = tls_proxy(make_proxy, tls_files, require=False)
    cconn = mysql.connector.connect(host=proxy.host, port=proxy.port, user=drivers.APP_USER,
                                    password=drivers.APP_PASSWORD, database=drivers.APP_DATABASE,
                                    auth_plugin=auth.CLEAR, ssl_ca=str(tls_files["ca"]),
                                    ssl_verify_cert=True, use_pure=True, connection_timeout=10)
    cur = cconn.cursor()
    cur.execute("SELECT 5")
    assert cur.fetchall() == [(5,)]
    cconn.close()

    context = ssl.create_default_context(cafile=str(tls_files["ca"]))
    first, last = clear_password_login(proxy, context, drivers.APP_PASSWORD)
    assert first[:1] == b"\x00", first
    first, last = clear_password_login(proxy, context, "wrong-clear-pw")
    assert parse_err(first).code == 1045
    first, last = clear_password_login(proxy, None, drivers.APP_PASSWORD)
    assert first[:1] == b"\xfe", first  # switched to mysql_native_password
    assert last[:1] == b"\x00", last
    first, last = clear_password_login(proxy, None, "wrong-clear-pw")
    assert first[:1] == b"\xfe" and parse_err(last).code == 1045


def test_large_rows_both_ways_over_tls(make_proxy: MakeProxy, tls_files: dict[str, Path],
                                       db_server: servers.DbServer) -> None:
    """A BLOB larger than one 16 MiB packet written and read back over TLS, and a result
    set of many rows: the bytes pyproxy sends on the spot through TLS arrive whole and in
    order."""
    proxy = tls_proxy(make_proxy, tls_files)
    table = drivers.unique_table("tls_blob")
    payload = drivers.blob_payload()
    conn = verified_pymysql(proxy, tls_files["ca"], max_allowed_packet=64 << 20)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, b LONGBLOB)")
            cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (payload,))
            conn.commit()
            cur.execute(f"SELECT b FROM {table} WHERE id = 1")
            assert hashlib.sha256(cur.fetchone()[0]).hexdigest() == hashlib.sha256(payload).hexdigest()
            if db_server.flavor == "mariadb":  # the SEQUENCE engine's tables
                cur.execute("SELECT seq, REPEAT('x', 100) FROM seq_1_to_20000")
                rows = cur.fetchall()
                assert len(rows) == 20000 and rows[-1][0] == 20000
            cur.execute(f"DROP TABLE {table}")
    finally:
        conn.close()


def test_client_that_does_not_read_over_tls(make_proxy: MakeProxy, tls_files: dict[str, Path]) -> None:
    """Back-pressure holds over TLS too: a client pipelines 3,000 queries of 30 kB results
    (90 MB) and reads nothing for 2 s; pyproxy stops running them once the unsent replies pass
    its buffer instead of keeping them all, and every reply arrives intact and in order once
    the client reads."""
    from bench.bounds import MB, RawClient, ReplyReader  # noqa: PLC0415

    proxy = tls_proxy(make_proxy, tls_files)
    c = RawClient(proxy.host, proxy.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    caps = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
            | CLIENT.CONNECT_WITH_DB | CLIENT.SSL)
    c.sock.sendall(frame(caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x2d" + b"\x00" * 23,
                         1))
    c.sock = ssl.create_default_context(cafile=str(tls_files["ca"])).wrap_socket(
        c.sock, server_hostname="127.0.0.1")
    c.send(make_handshake_response41(HandshakeResponse41(
        caps, 1 << 24, 45, drivers.APP_USER, auth.native_proof(drivers.APP_PASSWORD.encode(),
                                                               c.greeting.auth_data),
        drivers.APP_DATABASE, auth.NATIVE)), 2)
    assert c.read_packet()[:1] == b"\x00"
    pid = proxy.process.pid

    def rss() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    try:
        before = rss()
        count = 3000
        from pyproxy.wire.commands import make_query  # noqa: PLC0415
        c.sock.sendall(b"".join(frame(make_query(f"SELECT {i}, REPEAT('x', 30000)"), 0) for i in range(count)))
        time.sleep(2)
        grown = rss() - before
        reader = ReplyReader()
        for seen in range(count):
            reply = c.read_reply(reader)
            assert reply.error == 0 and reply.rows[0].startswith(bytes((len(str(seen)),)) + str(seen).encode())
        assert grown < 40 * MB, f"pyproxy grew by {grown / MB:.0f} MB for a TLS client that did not read"
    finally:
        c.close()
