"""KILL through pyproxy: connection ids are pyproxy's own, so KILL is translated, never forwarded."""

from __future__ import annotations

import threading
import time

import pymysql
import pytest

from integration import servers
from integration.raw_session import RawSession
from pyproxy.wire.commands import make_query
from pyproxy.wire.constants import CLIENT


def test_kill_query_stops_the_other_sessions_statement(make_proxy) -> None:
    """KILL QUERY <id> with the id the victim's driver reports stops its running statement;
    the victim's session goes on."""
    proxy = make_proxy()
    victim = proxy.connect()
    killer = proxy.connect()
    outcome: list[object] = []

    def sleep() -> None:
        try:
            with victim.cursor() as cur:
                cur.execute("SELECT SLEEP(20)")
                outcome.append(cur.fetchone()[0])
        except pymysql.MySQLError as exc:
            outcome.append(exc.args[0])

    thread = threading.Thread(target=sleep)
    started = time.monotonic()
    thread.start()
    time.sleep(0.5)
    with killer.cursor() as cur:
        cur.execute(f"KILL QUERY {victim.thread_id()}")
    thread.join(timeout=15)
    assert time.monotonic() - started < 10
    # MariaDB answers a killed SLEEP() with 1 (interrupted) or error 1317.
    assert outcome in ([1], [1317])
    with victim.cursor() as cur:
        cur.execute("SELECT 5")
        assert cur.fetchone()[0] == 5
    victim.close()
    killer.close()


def test_kill_connection_closes_the_other_client(make_proxy) -> None:
    """KILL <id> closes that client's connection to pyproxy; the killer carries on."""
    proxy = make_proxy()
    victim = proxy.connect()
    killer = proxy.connect()
    with killer.cursor() as cur:
        cur.execute(f"KILL {victim.thread_id()}")
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1
    time.sleep(0.2)
    with pytest.raises(pymysql.MySQLError):
        with victim.cursor() as cur:
            cur.execute("SELECT 1")
    killer.close()


def test_kill_unknown_id_never_reaches_the_server(make_proxy, db_server) -> None:
    """An id that is no pyproxy client gets 1094, even if a server thread has that number
    (here the client's own backend thread, which @@pseudo_thread_id still shows)."""
    proxy = make_proxy()
    client = proxy.connect()
    with client.cursor() as cur:
        cur.execute("SELECT @@pseudo_thread_id")
        backend_thread = cur.fetchone()[0]
    other = proxy.connect()
    with other.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as info:
            cur.execute(f"KILL {backend_thread + 100000}")
        assert info.value.args[0] == 1094
    with client.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone()[0] == 2
    client.close()
    other.close()


def test_kill_takes_the_greeting_id_which_connection_id_returns(make_proxy) -> None:
    """KILL names the id of pyproxy's greeting (the driver's thread_id()), and
    CONNECTION_ID() returns that same id; the server's thread id is unknown to KILL."""
    proxy = make_proxy()
    victim = proxy.connect()
    killer = proxy.connect()
    with victim.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID(), @@pseudo_thread_id")
        own_id, server_id = cur.fetchone()
    assert own_id == victim.thread_id()
    # A fresh pyproxy numbers its clients 1, 2, ...; the shared server is far past that.
    assert server_id not in (victim.thread_id(), killer.thread_id())
    with killer.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as info:
            cur.execute(f"KILL {server_id}")
        assert info.value.args[0] == 1094
        cur.execute(f"KILL {own_id}")
    time.sleep(0.2)
    with pytest.raises(pymysql.MySQLError):
        with victim.cursor() as cur:
            cur.execute("SELECT 1")
    killer.close()


def test_kill_needs_the_same_user(make_proxy) -> None:
    """A client cannot kill another user's session through pyproxy (1095)."""
    other = servers.own_name("other")
    proxy = make_proxy(users=[{"name": other, "password": "other_pw",
                               "database": servers.APP_DATABASE}])
    victim = proxy.connect()
    intruder = proxy.connect(user=other, password="other_pw")
    with intruder.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as info:
            cur.execute(f"KILL {victim.thread_id()}")
        assert info.value.args[0] == 1095
    with victim.cursor() as cur:
        cur.execute("SELECT 3")
        assert cur.fetchone()[0] == 3
    victim.close()
    intruder.close()


@pytest.mark.parametrize("statement", ["KILL USER app", "KILL HARD 5", "KILL 5 /* c */"])
def test_other_kill_forms_are_refused(make_proxy, statement: str) -> None:
    """KILL forms pyproxy does not translate are refused (1235), never passed to the server."""
    proxy = make_proxy()
    bystander = proxy.connect()
    client = proxy.connect()
    with client.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as info:
            cur.execute(statement)
        assert info.value.args[0] == 1235
    with bystander.cursor() as cur:
        cur.execute("SELECT 4")
        assert cur.fetchone()[0] == 4
    client.close()
    bystander.close()


def test_kill_query_does_not_hit_the_next_statement_on_that_connection(make_proxy) -> None:
    """KILL QUERY for a statement that has already finished (its connection now serving
    someone else) stops nothing."""
    proxy = make_proxy(pool={"max_connections": 1})
    victim = proxy.connect()
    killer = proxy.connect()
    with victim.cursor() as cur:
        cur.execute("SELECT 1")
    outcome: list[object] = []

    def other() -> None:
        with victim.cursor() as cur:
            cur.execute("SELECT SLEEP(1)")
            outcome.append(cur.fetchone()[0])

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    with killer.cursor() as cur:
        cur.execute(f"KILL QUERY {victim.thread_id()}")
    assert outcome == [0]
    victim.close()
    killer.close()


def test_kill_of_a_connection_still_logging_in_closes_it(make_proxy) -> None:
    """A connection of the same user that has sent its login packet and waits on an
    AuthSwitchRequest's reply is closed by KILL <its greeting id>: it never logs in."""
    import socket

    from pyproxy.wire.framing import PacketFramer, frame
    from pyproxy.wire.handshake import HandshakeResponse41, make_handshake_response41, parse_handshake_v10

    from integration.raw_login import CAPABILITIES

    proxy = make_proxy()
    framer = PacketFramer()
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        [greeting] = framer.feed(sock.recv(65536))
        hello = parse_handshake_v10(greeting.payload)
        # A plugin pyproxy does not check asks for a switch: the login waits for the reply.
        sock.sendall(frame(make_handshake_response41(HandshakeResponse41(
            CAPABILITIES, 1 << 24, 45, servers.APP_USER, b"\x00" * 20, servers.APP_DATABASE,
            "client_ed25519")), 1))
        [switch] = framer.feed(sock.recv(65536))
        assert switch.payload[:1] == b"\xfe"
        killer = proxy.connect()
        with killer.cursor() as cur:
            cur.execute(f"KILL {hello.connection_id}")
            cur.execute("SELECT 1")
            assert cur.fetchone()[0] == 1
        sock.settimeout(5)
        assert sock.recv(65536) == b""  # closed, nothing sent
        killer.close()


def test_a_vanished_clients_statement_is_stopped(make_proxy, db_server) -> None:
    """A client that closes its socket while its statement waits (no COM_QUIT): as the server
    does for a direct client, the statement stops instead of holding its lock wait and its
    connection for the hour it asked for."""
    proxy = make_proxy()
    holder = db_server.connect()
    statement = "SELECT GET_LOCK('pyproxy_abandoned', 3600)"

    def waiting() -> int:
        with holder.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = %s", (statement,))
            return cur.fetchone()[0]

    try:
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK('pyproxy_abandoned', 0)")
        session = RawSession(proxy.host, proxy.port, servers.APP_USER, servers.APP_PASSWORD,
                             servers.APP_DATABASE, CLIENT.TRANSACTIONS)
        session.send_only(make_query(statement))
        deadline = time.monotonic() + 10
        while not waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting() == 1
        session.sock.close()  # gone, without COM_QUIT
        deadline = time.monotonic() + 15
        while waiting() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert waiting() == 0
        assert '"abandoned_statement_stopped"' in proxy.log_text()
    finally:
        holder.close()
