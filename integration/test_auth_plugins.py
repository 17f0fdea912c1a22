"""Authentication plugins end to end: pyproxy as a client of the backend (client_ed25519,
caching_sha2_password) and as a server for real drivers (caching_sha2_password fast auth,
AuthSwitchRequest, COM_CHANGE_USER, COM_RESET_CONNECTION), with no password in the log.

Where a test must prove *which* plugin a login used, a small recording TCP relay sits on the
path and the test reads the packets themselves.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest
from mysql.connector import errors as connector_errors

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from pyproxy import auth
from pyproxy.wire.handshake import parse_handshake_response41, parse_handshake_v10

MySQLdb = pytest.importorskip("MySQLdb")

pytestmark = pytest.mark.usefixtures("bounded")

ED_USER = servers.own_name("ed_app")
ED_PASSWORD = "ed-Secret-ÿ-7f3a91"  # non-ASCII on purpose: pyproxy signs its UTF-8 bytes
#: PyMySQL encodes str passwords as latin-1; pyproxy and the server use UTF-8.
ED_PASSWORD_BYTES = ED_PASSWORD.encode()
SECOND_USER = servers.own_name("app_two")
SECOND_PASSWORD = "second-pw-5d2c80"
EMPTY_USER = servers.own_name("app_nopw")
SHA2_USER = servers.own_name("sha2_app")
SHA2_PASSWORD = "sha2-pw-0b7e44"

MakeProxy = Callable[..., servers.ProxyProcess]


# --- helpers -----------------------------------------------------------------------------------


def split_packets(stream: bytes) -> list[tuple[int, bytes]]:
    """(sequence id, payload) of each whole MySQL packet at the start of ``stream``."""
    packets = []
    pos = 0
    while pos + 4 <= len(stream):
        length = int.from_bytes(stream[pos:pos + 3], "little")
        if pos + 4 + length > len(stream):
            break
        packets.append((stream[pos + 3], stream[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return packets


def greeting_plugin(host: str, port: int) -> str:
    """The auth plugin a server (or pyproxy) names in its greeting."""
    with socket.create_connection((host, port), timeout=5) as sock:
        data = b""
        while not split_packets(data):
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError("connection closed before the greeting")
            data += chunk
    return parse_handshake_v10(split_packets(data)[0][1]).auth_plugin


class RecordingRelay:
    """Forwards TCP connections to ``target`` and keeps the first bytes of each direction.

    ``sessions`` holds one ``{"to_server": bytearray, "to_client": bytearray}`` per accepted
    connection, in order.
    """

    LIMIT = 64 * 1024

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.host, self.port = self.listener.getsockname()
        self.sessions: list[dict[str, bytearray]] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            record = {"to_server": bytearray(), "to_client": bytearray()}
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self.sessions.append(record)
                self._sockets += [client, upstream]
            for src, dst, buf in ((client, upstream, record["to_server"]),
                                  (upstream, client, record["to_client"])):
                threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if len(buf) < self.LIMIT:
                    buf += data[:self.LIMIT - len(buf)]
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self.listener.close()
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass

    def logins(self) -> list[tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]]:
        """(server packets, client packets) of each session in which the client logged in."""
        out = []
        for record in list(self.sessions):
            server_packets = split_packets(bytes(record["to_client"]))
            client_packets = split_packets(bytes(record["to_server"]))
            if server_packets and client_packets:
                out.append((server_packets, client_packets))
        return out


@pytest.fixture
def relay_factory() -> Iterator[Callable[[str, int], RecordingRelay]]:
    relays: list[RecordingRelay] = []

    def make(host: str, port: int) -> RecordingRelay:
        relay = RecordingRelay(host, port)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.close()


class ProxyAsBackend:
    """What :func:`servers.start_proxy` needs of a server, for a pyproxy (or a relay in front
    of one) used as another pyproxy's backend: its users are in its own config already."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def create_user(self, name: str, password: str, plugin: str = "", database: Any = None) -> None:
        pass


def scalar(conn: Any, sql: str, args: Any = None) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql, args)
        return cur.fetchone()[0]
    finally:
        cur.close()


def connector_connect(proxy: servers.ProxyProcess, **kwargs: Any) -> Any:
    params: dict[str, Any] = {
        "host": proxy.host, "port": proxy.port, "user": drivers.APP_USER,
        "password": drivers.APP_PASSWORD, "database": drivers.APP_DATABASE,
        "use_pure": True, "connection_timeout": 10, "autocommit": True,
        "ssl_disabled": True,
    }
    params.update(kwargs)
    return mysql.connector.connect(**params)


def mysqldb_connect(proxy: servers.ProxyProcess, **kwargs: Any) -> Any:
    params: dict[str, Any] = {
        "host": proxy.host, "port": proxy.port, "user": drivers.APP_USER,
        "password": drivers.APP_PASSWORD, "database": drivers.APP_DATABASE,
        "connect_timeout": 10, "read_timeout": drivers.IO_TIMEOUT,
        "write_timeout": drivers.IO_TIMEOUT, "autocommit": True,
    }
    params.update(kwargs)
    return MySQLdb.connect(**params)


def mariadb_only(db_server: servers.DbServer) -> None:
    if db_server.flavor != "mariadb":
        pytest.skip("the ed25519 plugin is MariaDB's")


# --- pyproxy as a client of the backend ------------------------------------------------------


def test_backend_login_with_client_ed25519(db_server: servers.DbServer,
                                           make_proxy: MakeProxy) -> None:
    """pyproxy logs in to MariaDB as an account IDENTIFIED VIA ed25519, signing the server's
    nonce with its own pure-Python Ed25519 (no PyNaCl), while the application logs in to pyproxy
    with mysql_native_password. Several backend logins (several nonces) must all succeed."""
    mariadb_only(db_server)
    proxy = make_proxy(users=[{"name": ED_USER, "password": ED_PASSWORD, "plugin": "ed25519",
                               "database": drivers.APP_DATABASE}])
    rows = drivers.admin_query(db_server, "SELECT DISTINCT plugin FROM mysql.user WHERE user = %s",
                               (ED_USER,))
    assert rows == [("ed25519",)]

    conns = [proxy.connect(ED_USER, ED_PASSWORD_BYTES) for _ in range(4)]
    try:
        # An open transaction holds a backend connection each: four backend logins.
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT CURRENT_USER(), CONNECTION_ID()")
                user, _ = cur.fetchone()
                assert user.split("@")[0] == ED_USER
        ids = {scalar(conn, "SELECT @@pseudo_thread_id") for conn in conns}  # server threads
        assert len(ids) == 4
        for conn in conns:
            conn.rollback()
            assert scalar(conn, "SELECT 40 + 2") == 42
    finally:
        for conn in conns:
            conn.close()
    logins = [e for e in drivers.log_events(proxy, "backend_ready") if e.get("user") == ED_USER]
    assert len(logins) >= 4, drivers.log_tail(proxy)


def test_backend_caching_sha2_through_chained_proxies(
        db_server: servers.DbServer, make_proxy: MakeProxy, tmp_path: Path,
        relay_factory: Callable[[str, int], RecordingRelay]) -> None:
    """MariaDB has no caching_sha2_password, so an inner pyproxy that announces it stands in for
    a MySQL 8 server: an outer pyproxy whose backend is the inner one must log in with a
    caching_sha2_password proof (checked on the wire through a recording relay: the outer's
    HandshakeResponse names the plugin and carries the 32-byte scramble, the inner answers fast
    auth success), and queries, transactions and prepared statements work through the chain."""
    inner = make_proxy(proxy={"auth_plugin": auth.CACHING_SHA2})
    assert greeting_plugin(inner.host, inner.port) == auth.CACHING_SHA2
    relay = relay_factory(inner.host, inner.port)
    # The outer's probes log in as app too: the inner knows no other account, and start-up
    # refuses an account its backend refuses.
    outer = servers.start_proxy(ProxyAsBackend(relay.host, relay.port), tmp_path / "outer",
                                health={"user": "", "password": ""})
    table = drivers.unique_table("chain_sha2")
    try:
        conn = outer.connect()
        other = outer.connect()
        try:
            assert scalar(conn, "SELECT CURRENT_USER()").split("@")[0] == drivers.APP_USER
            with conn.cursor() as cur:
                cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20))")
                conn.begin()
                cur.execute(f"INSERT INTO {table} VALUES (1, 'committed')")
                conn.commit()
                conn.begin()
                cur.execute(f"INSERT INTO {table} VALUES (2, 'rolled back')")
                assert scalar(conn, f"SELECT COUNT(*) FROM {table}") == 2
                conn.rollback()
            assert scalar(other, f"SELECT GROUP_CONCAT(v) FROM {table}") == "committed"

            prepared = connector_connect(outer)
            try:
                cur = prepared.cursor(prepared=True)
                cur.execute(f"SELECT v FROM {table} WHERE id = ?", (1,))
                assert cur.fetchall() == [("committed",)]
                cur.execute(f"SELECT v FROM {table} WHERE id = ?", (2,))
                assert cur.fetchall() == []
                cur.close()
            finally:
                prepared.close()
        finally:
            conn.close()
            other.close()

        logins = relay.logins()
        sha2 = []
        for server_packets, client_packets in logins:
            greeting = parse_handshake_v10(server_packets[0][1])
            assert greeting.auth_plugin == auth.CACHING_SHA2
            if not client_packets:
                continue
            response = parse_handshake_response41(client_packets[0][1])
            assert response.auth_plugin == auth.CACHING_SHA2, response
            assert response.auth_response == auth.caching_sha2_proof(
                drivers.APP_PASSWORD.encode(), greeting.auth_data)
            assert len(response.auth_response) == 32
            # AuthMoreData(fast auth success), then OK.
            assert server_packets[1][1] == b"\x01" + auth.SHA2_FAST_AUTH_SUCCESS
            assert server_packets[2][1][:1] == b"\x00"
            sha2.append(response)
        assert sha2, f"no backend login seen by the relay: {len(relay.sessions)} sessions"
    finally:
        outer.stop()
        drivers.admin_query(db_server, f"DROP TABLE IF EXISTS {table}")


# --- pyproxy as a server for real drivers ------------------------------------------------------


def test_frontend_caching_sha2_fast_auth(make_proxy: MakeProxy) -> None:
    """A pyproxy that announces caching_sha2_password lets PyMySQL log in with the fast-auth
    scramble (no RSA, no TLS), refuses a wrong password with 1045 / SQLSTATE 28000 like a
    server, and lets an account configured with an empty password log in without one."""
    proxy = make_proxy(proxy={"auth_plugin": auth.CACHING_SHA2},
                       users=[{"name": EMPTY_USER, "password": "",
                               "database": drivers.APP_DATABASE}])
    assert greeting_plugin(proxy.host, proxy.port) == auth.CACHING_SHA2

    conn = proxy.connect()
    try:
        assert conn._auth_plugin_name == auth.CACHING_SHA2  # what PyMySQL answered with
        assert scalar(conn, "SELECT CURRENT_USER()").split("@")[0] == drivers.APP_USER
    finally:
        conn.close()

    with pytest.raises(pymysql.err.OperationalError) as info:
        proxy.connect(password="wrong-sha2-pw-1").close()
    assert info.value.args[0] == 1045
    with pytest.raises(connector_errors.ProgrammingError) as cinfo:
        connector_connect(proxy, password="wrong-sha2-pw-2").close()
    assert (cinfo.value.errno, cinfo.value.sqlstate) == (1045, "28000")

    empty = proxy.connect(EMPTY_USER, "")
    try:
        assert scalar(empty, "SELECT CURRENT_USER()").split("@")[0] == EMPTY_USER
    finally:
        empty.close()
    with pytest.raises(pymysql.err.OperationalError) as info:
        proxy.connect(EMPTY_USER, "not-empty-pw-3").close()
    assert info.value.args[0] == 1045


def test_auth_switch_to_native(make_proxy: MakeProxy, tmp_path: Path,
                               relay_factory: Callable[[str, int], RecordingRelay]) -> None:
    """A client that starts with a plugin pyproxy does not check (libmariadb through
    mysqlclient, told ``default-auth=client_ed25519`` in its option file) gets an
    AuthSwitchRequest to mysql_native_password with the greeting's nonce, answers it, and is
    logged in; a wrong password after the switch is refused with 1045."""
    proxy = make_proxy()
    relay = relay_factory(proxy.host, proxy.port)
    option_file = tmp_path / "client.cnf"
    option_file.write_text("[client]\ndefault-auth=client_ed25519\n")

    via_relay = ProxyAsBackend(relay.host, relay.port)
    conn = mysqldb_connect(via_relay, read_default_file=str(option_file),  # type: ignore[arg-type]
                           read_default_group="client")
    try:
        assert scalar(conn, "SELECT CURRENT_USER()").split("@")[0] == drivers.APP_USER
    finally:
        conn.close()

    (server_packets, client_packets), = relay.logins()
    greeting = parse_handshake_v10(server_packets[0][1])
    first = parse_handshake_response41(client_packets[0][1])
    assert first.auth_plugin == auth.ED25519
    switch_seq, switch = server_packets[1]
    assert switch == (b"\xfe" + auth.NATIVE.encode() + b"\x00" + greeting.auth_data + b"\x00")
    assert client_packets[1] == (switch_seq + 1,
                                 auth.native_proof(drivers.APP_PASSWORD.encode(), greeting.auth_data))
    assert server_packets[2][1][:1] == b"\x00"

    with pytest.raises(MySQLdb.OperationalError) as info:
        mysqldb_connect(proxy, password="wrong-switch-pw-4", read_default_file=str(option_file),
                        read_default_group="client").close()
    assert info.value.args[0] == 1045


def test_change_user_with_mysqlclient(make_proxy: MakeProxy) -> None:
    """COM_CHANGE_USER (mysqlclient's ``change_user``) through pyproxy switches the session to a
    second configured account: CURRENT_USER() follows, the user variable set before is gone
    (a fresh session), queries keep working; a wrong password is refused with 1045."""
    proxy = make_proxy(users=[{"name": SECOND_USER, "password": SECOND_PASSWORD,
                               "database": drivers.APP_DATABASE}])
    conn = mysqldb_connect(proxy)
    try:
        cur = conn.cursor()
        cur.execute("SET @carried = 42")
        cur.execute("SELECT CURRENT_USER(), @carried")
        user, carried = cur.fetchone()
        assert (user.split("@")[0], carried) == (drivers.APP_USER, 42)

        conn.change_user(SECOND_USER, SECOND_PASSWORD, drivers.APP_DATABASE)
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), @carried, DATABASE()")
        user, carried, database = cur.fetchone()
        assert (user.split("@")[0], carried, database) == (SECOND_USER, None, drivers.APP_DATABASE)
        assert scalar(conn, "SELECT 6 * 7") == 42

        with pytest.raises(MySQLdb.OperationalError) as info:
            conn.change_user(drivers.APP_USER, "wrong-change-user-pw-5", drivers.APP_DATABASE)
        assert info.value.args[0] == 1045
    finally:
        conn.close()


def refused_change_users(target: Any) -> list[Any]:
    """What a client sees of three refused COM_CHANGE_USERs and a fourth try (mysqlclient)."""
    conn = mysqldb_connect(target)
    seen: list[Any] = []
    try:
        conn.change_user(SECOND_USER, SECOND_PASSWORD, drivers.APP_DATABASE)
        conn.cursor().execute("SET NAMES latin1")
        for password in ("wrong-1", "wrong-2", "wrong-3", SECOND_PASSWORD):
            try:
                conn.change_user(drivers.APP_USER, password, drivers.APP_DATABASE)
                seen.append("changed")
            except MySQLdb.OperationalError as exc:
                seen.append(exc.args[0])
            cur = conn.cursor()
            cur.execute("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1), DATABASE(), @@character_set_client")
            seen.append(cur.fetchone())
    finally:
        conn.close()
    return seen


def test_refused_change_user_keeps_the_connection(make_proxy: MakeProxy, db_server: servers.DbServer) -> None:
    """As the server does (MDEV-3915): a refused COM_CHANGE_USER answers 1045 and the session
    goes on as the user it was, with its schema and character set; after three refusals the
    command is unknown (1047), and the connection still serves."""
    proxy = make_proxy(users=[{"name": SECOND_USER, "password": SECOND_PASSWORD,
                               "database": drivers.APP_DATABASE}])
    direct = refused_change_users(db_server)
    assert direct[::2] == [1045, 1045, 1045, 1047]
    assert refused_change_users(proxy) == direct


def test_reset_connection_with_connector(make_proxy: MakeProxy) -> None:
    """COM_RESET_CONNECTION (mysql-connector's ``cmd_reset_connection`` and ``reset_session``)
    through pyproxy clears the user variable and the temporary table of the session (which had
    pinned it to one backend connection), and the connection keeps working afterwards."""
    proxy = make_proxy()
    conn = connector_connect(proxy)
    try:
        for reset in (conn.cmd_reset_connection, conn.reset_session):
            cur = conn.cursor()
            cur.execute("SET @x = 1")
            cur.execute("CREATE TEMPORARY TABLE reset_tmp (i INT)")
            cur.execute("INSERT INTO reset_tmp VALUES (7)")
            cur.execute("SELECT @x, (SELECT i FROM reset_tmp)")
            assert cur.fetchall() == [(1, 7)]
            cur.close()

            reset()

            assert scalar(conn, "SELECT @x") is None
            with pytest.raises(connector_errors.ProgrammingError) as info:
                scalar(conn, "SELECT i FROM reset_tmp")
            assert info.value.errno == 1146  # ER_NO_SUCH_TABLE
            assert scalar(conn, "SELECT 1 + 1") == 2
            assert scalar(conn, "SELECT CURRENT_USER()").split("@")[0] == drivers.APP_USER
    finally:
        conn.close()


def test_wrong_passwords_stay_out_of_the_log(db_server: servers.DbServer,
                                             make_proxy: MakeProxy) -> None:
    """Failed logins are logged (auth_failed) but never with the password tried, whatever the
    path: native and caching_sha2 logins, an unknown user, COM_CHANGE_USER; the configured
    passwords of the accounts (used for backend logins, ed25519 included) never appear either."""
    users = [{"name": SHA2_USER, "password": SHA2_PASSWORD, "database": drivers.APP_DATABASE}]
    if db_server.flavor == "mariadb":
        users.append({"name": ED_USER, "password": ED_PASSWORD, "plugin": "ed25519"})
    proxy = make_proxy(users=users)
    wrong = ["wrong-native-pw-6", "wrong-sha2-pw-7", "unknown-user-pw-8", "wrong-change-pw-9"]

    with pytest.raises(pymysql.err.OperationalError):
        proxy.connect(password=wrong[0])
    with pytest.raises(connector_errors.ProgrammingError):
        connector_connect(proxy, user=SHA2_USER, password=wrong[1],
                          auth_plugin=auth.CACHING_SHA2)
    with pytest.raises(pymysql.err.OperationalError):
        proxy.connect(user="nobody_here", password=wrong[2])
    conn = mysqldb_connect(proxy)
    try:
        with pytest.raises(MySQLdb.OperationalError):
            conn.change_user(SHA2_USER, wrong[3], drivers.APP_DATABASE)
    finally:
        conn.close()
    # Successful logins too, so backend logins with the configured passwords happen.
    ok = connector_connect(proxy, user=SHA2_USER, password=SHA2_PASSWORD,
                           auth_plugin=auth.CACHING_SHA2)
    assert scalar(ok, "SELECT 1") == 1
    ok.close()
    if db_server.flavor == "mariadb":
        ed = proxy.connect(ED_USER, ED_PASSWORD_BYTES)
        with ed.cursor() as cur:
            cur.execute("SELECT 1")
        ed.close()

    failures = drivers.log_events(proxy, "auth_failed")
    assert len(failures) >= 4, drivers.log_tail(proxy)
    text = proxy.log_text()
    for secret in [*wrong, SHA2_PASSWORD, ED_PASSWORD, drivers.APP_PASSWORD]:
        # Also as JSON escapes it (the test config logs JSON: "ÿ" becomes "\u00ff").
        for form in {secret, json.dumps(secret)[1:-1]}:
            assert form not in text, f"{secret!r} appears in pyproxy's log"
