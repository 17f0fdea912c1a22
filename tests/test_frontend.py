"""pyproxy.frontend: a client's whole life over fake transports.

A FrontendProtocol talks to a StringTransport; its pool's connector hands out
BackendConnections that the test logs in and answers by hand, with packets
captured from a real server.  So a command goes frontend -> pool -> backend
-> frontend with every byte visible and no socket or real clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import vectors
from pyproxy import auth
from pyproxy.backend import BackendConnection, BackendError
from pyproxy.config import build
from pyproxy.frontend import FrontendFactory
from pyproxy.pool import Pool
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.wire.commands import make_init_db, make_query, make_set_option
from pyproxy.wire.constants import (
    CLIENT,
    COM_RESET_CONNECTION,
    MAX_PAYLOAD,
    MYSQL_OPTION_MULTI_STATEMENTS_OFF,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_IN_TRANS,
)
from pyproxy.wire.framing import Packet, PacketFramer, frame
from pyproxy.wire.handshake import (
    HandshakeResponse41,
    make_handshake_response41,
    parse_handshake_v10,
)
from pyproxy.wire.buffer import lenenc_bytes
from pyproxy.wire.responses import ERR, make_err, make_ok, make_ok_tracked, parse_err, parse_ok
from test_backend import FakeServer, FakeTransport, ready_backend

GREETING = parse_handshake_v10(vectors.GREETING[4:])
SERVER = ServerInfo(vectors.SERVER_VERSION, GREETING.capabilities, 45, SERVER_STATUS_AUTOCOMMIT)
CLIENT_CAPS = (
    CLIENT.LONG_PASSWORD | CLIENT.LONG_FLAG | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS
    | CLIENT.SECURE_CONNECTION | CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS
    | CLIENT.PLUGIN_AUTH | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT.CONNECT_ATTRS
    | CLIENT.SESSION_TRACK | CLIENT.DEPRECATE_EOF | CLIENT.LOCAL_FILES
)
PEER = "192.168.1.1"  # StringTransport's peer address
SELECT = "SELECT id, name FROM app.t ORDER BY id"


class Backends:
    """The pool's connector: each open is a BackendConnection the test logs in and serves."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.waiting: list[tuple[int, defer.Deferred[BackendConnection]]] = []

    def __call__(self, flavor: int) -> defer.Deferred[BackendConnection]:
        d: defer.Deferred[BackendConnection] = defer.Deferred()
        self.waiting.append((flavor, d))
        return d

    def open(self) -> tuple[BackendConnection, FakeServer]:
        """Completes the oldest pending open: login, tracking SET, then into the pool."""
        flavor, d = self.waiting.pop(0)
        conn, server = ready_backend(self.reactor, flavor)
        server.received()
        d.callback(conn)
        return conn, server

    def fail(self, error: Exception) -> None:
        self.waiting.pop(0)[1].errback(error)


def make_proxy(max_connections: int = 2, **sections: Any) -> tuple[Proxy, Backends]:
    data: dict[str, Any] = {
        "proxy": {"max_packet_size": 4096, "handshake_timeout": 5},
        "pool": {"max_connections": max_connections, "borrow_timeout": 3},
        "users": [{"name": "app", "password": "secret"}, {"name": "nopw", "password": ""}],
    }
    data.update(sections)
    reactor = MemoryReactorClock()
    proxy = Proxy(build(data), reactor, SERVER)
    backends = Backends(reactor)
    writer = proxy.topology.writer
    proxy.pools[("app", writer.name)] = Pool("app", backends, reactor, max_size=max_connections,
                                             borrow_timeout=3, target=writer)
    for user in ("app", "nopw"):
        proxy.catalog(user).load([])  # no stored code (pyproxy.routines has its own tests)
    return proxy, backends


class FakeClient:
    """An application connected to pyproxy, speaking the protocol packet by packet."""

    def __init__(self, proxy: Proxy) -> None:
        self.protocol = FrontendFactory(proxy).buildProtocol(None)
        self.transport = FakeTransport()
        self.protocol.makeConnection(self.transport)
        self.framer = PacketFramer()
        [greeting] = self.received()
        assert greeting.seq == 0
        self.greeting = parse_handshake_v10(greeting.payload)

    def raw(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def received(self) -> list[Packet]:
        return self.framer.feed(self.raw())

    def send(self, payload: bytes, seq: int = 0) -> None:
        self.protocol.dataReceived(frame(payload, seq))

    def login(self, password: str = "secret", user: str = "app", caps: int = CLIENT_CAPS,
              database: str | None = None, plugin: str = auth.NATIVE) -> list[Packet]:
        proof = auth.proof_for(plugin, password.encode(), self.greeting.auth_data)
        if database:
            caps |= CLIENT.CONNECT_WITH_DB
        self.send(make_handshake_response41(HandshakeResponse41(
            caps, 1 << 24, 45, user, proof, database, plugin, {"program_name": "tests"})), seq=1)
        return self.received()

    def query(self, sql: str) -> None:
        self.send(make_query(sql))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def err_of(packet: Packet) -> tuple[int, int, str]:
    """(seq, code, sqlstate) of an ERR packet."""
    assert packet.payload[0] == 0xFF, packet.payload
    err = parse_err(packet.payload)
    return packet.seq, err.code, err.sqlstate


class LoggedIn(SynchronousTestCase):
    caps = CLIENT_CAPS
    max_connections = 2

    def setUp(self) -> None:
        self.proxy, self.backends = make_proxy(self.max_connections)
        self.pool = self.proxy.pool("app")
        self.client = self.connect()

    def connect(self, caps: int | None = None) -> FakeClient:
        client = FakeClient(self.proxy)
        [ok] = client.login(caps=self.caps if caps is None else caps)
        assert ok.payload[0] == 0
        return client

    def first_backend(self, client: FakeClient, sql: str) -> tuple[BackendConnection, FakeServer]:
        """Sends ``sql``; opens the backend it waits for and checks the command arrives as sent."""
        client.query(sql)
        conn, server = self.backends.open()
        [command] = server.received()
        self.assertEqual(command.raw, frame(make_query(sql), 0))
        return conn, server


class CommandTests(LoggedIn):

    def test_empty_command_packet(self) -> None:
        """An empty command packet gets 1047, as from a server, and the session goes on."""
        self.client.send(b"")
        self.assertEqual(err_of(self.client.received()[0])[1:], (1047, "08S01"))
        self.assertFalse(self.client.closed)

    def test_oversize_packet(self) -> None:
        """A packet over max_packet_size gets 1153 (08S01) as soon as its header arrives, then close."""
        self.client.protocol.dataReceived((5000).to_bytes(3, "little") + b"\x00\x03SELECT")
        [err] = self.client.received()
        self.assertEqual(err_of(err)[1:], (1153, "08S01"))
        self.assertTrue(self.client.closed)

    def test_oversize_packet_error_sequence(self) -> None:
        """The 1153 error follows the offending packet's sequence id, as a reply to it."""
        self.client.protocol.dataReceived((5000).to_bytes(3, "little") + b"\x00")
        [err] = self.client.received()
        self.assertEqual(err.seq, 1)

    def test_out_of_order_continuation(self) -> None:
        """A continuation packet with the wrong seq gets 1156 and a closed connection."""
        self.proxy.config = build({"proxy": {"max_packet_size": 1 << 25},
                                   "users": [{"name": "app", "password": "secret"}]})
        client = self.connect()
        data = bytearray(frame(make_query("x" * MAX_PAYLOAD), 0))
        data[MAX_PAYLOAD + 7] = 5
        client.protocol.dataReceived(bytes(data))
        self.assertEqual(err_of(client.received()[0])[1:], (1156, "08S01"))
        self.assertTrue(client.closed)


class RoundTripTests(LoggedIn):
    def test_select_round_trip(self) -> None:
        """A SELECT is relayed through a borrowed backend byte for byte, and the backend goes back."""
        conn, server = self.first_backend(self.client, SELECT)
        self.assertEqual(self.pool.lent, {conn})
        server.send(vectors.SELECT_DEOF, pieces=4)
        self.assertEqual(self.client.raw(), vectors.SELECT_DEOF)
        self.assertEqual(self.pool.idle, [conn])
        self.assertIsNone(self.client.protocol.backend)
        self.assertFalse(conn.broken)

    def test_reply_split_at_every_position(self) -> None:
        """However the server's reply is cut, the client gets it whole and the backend goes back."""
        conn, server = self.first_backend(self.client, SELECT)
        server.send(vectors.SELECT_DEOF)
        self.client.raw()
        reply = vectors.MULTI_DEOF
        for cut in range(len(reply) + 1):
            self.client.query("SELECT 1 AS a; SELECT 2 AS b; DO 3")
            [command] = server.received()
            self.assertEqual(command.payload, make_query("SELECT 1 AS a; SELECT 2 AS b; DO 3"))
            server.send(reply[:cut])
            server.send(reply[cut:])
            self.assertEqual(self.client.raw(), reply, cut)
            self.assertEqual(self.pool.idle, [conn])
        self.assertEqual(self.backends.waiting, [])

    def first_reply_without_status(self, command: bytes, reply: bytes) -> None:
        self.client.send(command)
        conn, server = self.backends.open()
        server.received()
        server.send(reply)
        self.assertEqual(self.client.raw(), reply)
        self.assertTrue(self.client.protocol.session.state.autocommit)  # type: ignore[union-attr]
    def test_prepare_keeps_autocommit(self) -> None:
        """A COM_STMT_PREPARE on a fresh connection leaves the session's autocommit as it was."""
        self.first_reply_without_status(b"\x16SELECT id, name, ? AS p FROM app.t WHERE id >= ?",
                                        vectors.PREPARE_DEOF)
    def test_statistics_keeps_autocommit(self) -> None:
        """A COM_STATISTICS on a fresh connection leaves the session's autocommit as it was."""
        self.first_reply_without_status(b"\x09", vectors.STATISTICS)

    def test_transaction_holds_backend(self) -> None:
        """Between BEGIN and COMMIT the client keeps its connection; after COMMIT it goes back."""
        conn, server = self.first_backend(self.client, "BEGIN")
        server.send(vectors.BEGIN_OK)
        self.assertEqual(self.client.raw(), vectors.BEGIN_OK)
        self.assertIs(self.client.protocol.backend, conn)
        self.assertEqual(self.pool.idle, [])
        self.client.query(SELECT)
        [command] = server.received()
        self.assertEqual(command.payload, make_query(SELECT))
        in_trans = SERVER_STATUS_AUTOCOMMIT | SERVER_STATUS_IN_TRANS
        server.send(vectors.SELECT_DEOF[:-11] + frame(make_ok(in_trans, header=0xFE), 6))
        self.assertIs(self.client.protocol.backend, conn)
        self.client.raw()
        self.client.query("COMMIT")
        server.received()
        server.send(vectors.COMMIT_OK)
        self.assertEqual(self.client.raw(), vectors.COMMIT_OK)
        self.assertIsNone(self.client.protocol.backend)
        self.assertEqual(self.pool.idle, [conn])

    def test_user_variable_pins(self) -> None:
        """SET @x=1 pins the client to its backend.  Its OK was tracked with pyproxy's
        settings, so the client sees what its own (default) settings show: nothing.
        Before the next command the connection gets the client's own tracking
        settings; from then on OKs reach the client unchanged."""
        conn, server = self.first_backend(self.client, "SET @x=1")
        server.send(vectors.USER_VARIABLE_OK)
        self.assertEqual(self.client.raw(), frame(make_ok_tracked(SERVER_STATUS_AUTOCOMMIT), 1))
        self.assertTrue(self.client.protocol.pinned)
        self.assertIs(self.client.protocol.backend, conn)
        self.client.send(b"\x0e")  # a pinned client's ping goes to its backend
        [restore] = server.received()
        self.assertEqual(restore.payload, make_query(
            "SET SESSION session_track_system_variables='autocommit,character_set_client,"
            "character_set_connection,character_set_results,time_zone', session_track_schema='ON', "
            "session_track_state_change='OFF', session_track_transaction_info='OFF'"))
        server.send(vectors.PING_OK)
        self.assertEqual(server.received()[0].payload, b"\x0e")
        server.send(vectors.PING_OK)
        self.assertEqual(self.client.raw(), vectors.PING_OK)
        self.client.query("SET @y=2")
        server.received()
        server.send(vectors.USER_VARIABLE_OK)  # whatever the server now reports is the client's
        self.assertEqual(self.client.raw(), vectors.USER_VARIABLE_OK)

    def test_carried_schema_replayed_on_new_backend(self) -> None:
        """USE is carried: a new backend connection gets COM_INIT_DB before the client's next command."""
        conn, server = self.first_backend(self.client, "USE mysql")
        server.send(vectors.USE_OK)
        # The client sees what a server with default tracking settings reports:
        # the schema, without pyproxy's state-change entry.
        [ok] = self.client.received()
        changes = parse_ok(ok.payload, True).changes
        self.assertEqual((changes.schema, changes.state_changed), ("mysql", False))
        self.assertEqual(self.pool.idle, [conn])
        self.pool.discard(conn, "test")
        self.client.query(SELECT)
        conn2, server2 = self.backends.open()
        [init_db] = server2.received()
        self.assertEqual(init_db.payload, make_init_db("mysql"))
        server2.send(frame(make_ok(SERVER_STATUS_AUTOCOMMIT), 1))
        [command] = server2.received()
        self.assertEqual(command.payload, make_query(SELECT))
        server2.send(vectors.SELECT_DEOF)
        self.assertEqual(self.client.raw(), vectors.SELECT_DEOF)

    def test_tracked_client_sees_default_tracking_only(self) -> None:
        """A client with CLIENT_SESSION_TRACK sees the variables a default server reports
        (here SET NAMES' character sets), not pyproxy's state-change entries."""
        conn, server = self.first_backend(self.client, "SET NAMES latin1")
        server.send(vectors.SET_NAMES_OK)
        [ok] = self.client.received()
        changes = parse_ok(ok.payload, True).changes
        self.assertFalse(changes.state_changed)
        self.assertEqual(dict(changes.variables), {"character_set_client": "latin1",
                                                   "character_set_connection": "latin1",
                                                   "character_set_results": "latin1"})

    def test_client_without_session_track_gets_plain_oks(self) -> None:
        """A client that did not ask for CLIENT_SESSION_TRACK gets OKs without the tracking block."""
        client = self.connect(CLIENT_CAPS & ~CLIENT.SESSION_TRACK)
        conn, server = self.first_backend(client, "SET NAMES latin1")
        server.send(vectors.SET_NAMES_OK, pieces=3)
        [ok] = client.received()
        self.assertEqual(ok.payload, make_ok(SERVER_STATUS_AUTOCOMMIT))
        self.assertEqual(parse_ok(ok.payload, session_track=False).status & SERVER_SESSION_STATE_CHANGED, 0)
        session = client.protocol.session
        self.assertEqual(session.state.character_set_client, "latin1")  # type: ignore[union-attr]

    def test_multi_statements_off_is_reconciled(self) -> None:
        """A client without multi-statements gets a backend switched off with COM_SET_OPTION first."""
        client = self.connect(CLIENT_CAPS & ~CLIENT.MULTI_STATEMENTS)
        client.query(SELECT)
        conn, server = self.backends.open()
        [option] = server.received()
        self.assertEqual(option.payload, make_set_option(MYSQL_OPTION_MULTI_STATEMENTS_OFF))
        server.send(frame(make_ok(SERVER_STATUS_AUTOCOMMIT, header=0xFE), 1))
        [command] = server.received()
        self.assertEqual(command.payload, make_query(SELECT))

    def test_pipelined_commands_run_in_order(self) -> None:
        """Commands sent back to back wait their turn; each reply follows its command
        (after the user variable pins the session, pyproxy first gives its connection
        the client's own tracking settings)."""
        self.client.protocol.dataReceived(frame(make_query("SET @x=1"), 0) + frame(make_query(SELECT), 0))
        conn, server = self.backends.open()
        [first] = server.received()
        self.assertEqual(first.payload, make_query("SET @x=1"))
        server.send(vectors.USER_VARIABLE_OK)
        [restore] = server.received()
        self.assertTrue(restore.payload.startswith(b"\x03SET SESSION session_track_system_variables="))
        server.send(vectors.PING_OK)
        [second] = server.received()
        self.assertEqual(second.payload, make_query(SELECT))
        server.send(vectors.SELECT_DEOF)
        self.assertEqual(self.client.raw(), frame(make_ok_tracked(SERVER_STATUS_AUTOCOMMIT), 1)
                         + vectors.SELECT_DEOF)

    def test_error_reply_forwarded(self) -> None:
        """The server's ERR reaches the client unchanged; the connection stays for one more
        statement (SHOW WARNINGS reads the error back), then goes back."""
        conn, server = self.first_backend(self.client, "SELECT * FROM no_such_table")
        server.send(vectors.ERR_NO_TABLE)
        self.assertEqual(self.client.raw(), vectors.ERR_NO_TABLE)
        self.assertEqual(self.pool.lent, {conn})
        self.client.send(make_query("DO 1"))
        self.assertEqual([p.payload for p in server.received()], [make_query("DO 1")])
        server.send(vectors.PING_OK)
        self.assertEqual(self.client.raw(), vectors.PING_OK)
        self.assertEqual(self.pool.idle, [conn])

    def test_backend_open_fails(self) -> None:
        """A backend that refuses the account gives the waiting client that error."""
        self.client.query(SELECT)
        self.backends.fail(BackendError(1045, "28000", "Access denied"))
        [err] = self.client.received()
        self.assertEqual(err_of(err), (1, 1045, "28000"))
        self.assertFalse(self.client.closed)

    def test_unreachable_backend_makes_the_client_wait(self) -> None:
        """A server that cannot be reached keeps the client's statement waiting (never sent,
        so safe to run later) until a connection opens."""
        self.client.query(SELECT)
        self.backends.fail(BackendError(2003, "HY000", "Can't connect to MySQL server"))
        self.assertEqual(self.client.received(), [])
        self.proxy.reactor.advance(0.1)
        conn, server = self.backends.open()
        [command] = server.received()
        self.assertEqual(command.payload, make_query(SELECT))


class SharingTests(LoggedIn):
    max_connections = 1

    def test_second_client_waits_for_transaction_end(self) -> None:
        """With one backend, a second client waits until the first one's transaction ends."""
        conn, server = self.first_backend(self.client, "BEGIN")
        server.send(vectors.BEGIN_OK)
        other = self.connect()
        other.query(SELECT)
        self.assertEqual(server.received(), [])
        self.assertEqual(len(self.pool.waiters), 1)
        self.client.query("COMMIT")
        server.received()
        server.send(vectors.COMMIT_OK)
        [command] = server.received()
        self.assertEqual(command.raw, frame(make_query(SELECT), 0))
        server.send(vectors.SELECT_DEOF)
        self.assertEqual(other.raw(), vectors.SELECT_DEOF)
        self.assertEqual(self.pool.idle, [conn])

    def test_borrow_timeout_error(self) -> None:
        """A client that waits longer than borrow_timeout gets error 9001 (HY000) and stays connected."""
        conn, server = self.first_backend(self.client, "BEGIN")
        server.send(vectors.BEGIN_OK)
        other = self.connect()
        other.query(SELECT)
        self.proxy.reactor.advance(3)
        [err] = other.received()
        self.assertEqual(err_of(err), (1, 9001, "HY000"))
        self.assertFalse(other.closed)
        self.assertEqual(self.pool.waiters, type(self.pool.waiters)())

    def test_waiting_client_leaves(self) -> None:
        """A client that leaves while waiting stops waiting; the backend later goes idle."""
        conn, server = self.first_backend(self.client, "BEGIN")
        server.send(vectors.BEGIN_OK)
        other = self.connect()
        other.query(SELECT)
        other.protocol.connectionLost(Failure(ConnectionError("bye")))
        self.assertEqual(len(self.pool.waiters), 0)
        self.client.query("COMMIT")
        server.received()
        server.send(vectors.COMMIT_OK)
        self.assertEqual(self.pool.idle, [conn])


def test_err_helper_reads_server_vector() -> None:
    """The captured unknown-command ERR parses as 1047 08S01 (sanity check for the comparisons above)."""
    [packet] = PacketFramer().feed(vectors.UNKNOWN_COMMAND_ERR)
    assert parse_err(packet.payload) == ERR(1047, "08S01", "Unknown command")


WARNING_OK = frame(make_ok(SERVER_STATUS_AUTOCOMMIT, warnings=1), 1)


class ReviewTests(LoggedIn):
    """Failure paths found in review: each once hung a client or ran data as commands."""

    def test_client_far_ahead_is_paused(self) -> None:
        """A client that pipelines many commands is paused, and resumed once it is caught up."""
        conn, server = self.first_backend(self.client, "BEGIN")
        for _ in range(70):
            self.client.send(make_query("DO 1"))
        self.assertEqual(self.client.transport.producerState, "paused")
        server.send(vectors.BEGIN_OK)
        for _ in range(70):
            server.received()
            server.send(vectors.PING_OK)
        self.assertEqual(self.client.transport.producerState, "producing")


class RoutingTests(SynchronousTestCase):
    """Two servers: writer traffic follows the elected writer, the read-only
    listener's sessions go to the reader."""

    def setUp(self) -> None:
        self.proxy, self.writer_backends = make_proxy(
            2, backend={"targets": [{"host": "w", "port": 1}, {"host": "r", "port": 2, "role": "auto"}]})
        self.writer, self.reader = self.proxy.topology.targets
        self.reader_backends = Backends(self.proxy.reactor)
        self.proxy.pools[("app", "r:2")] = Pool("app", self.reader_backends, self.proxy.reactor,
                                                max_size=2, borrow_timeout=3, target=self.reader)
        self.reader.state = "read_only"
        self.writer.state = "up"

    def connect(self, readonly: bool = False) -> FakeClient:
        client = FakeClient.__new__(FakeClient)
        client.protocol = FrontendFactory(self.proxy, readonly).buildProtocol(None)
        client.transport = FakeTransport()
        client.protocol.makeConnection(client.transport)
        client.framer = PacketFramer()
        [greeting] = client.received()
        client.greeting = parse_handshake_v10(greeting.payload)
        [ok] = client.login()
        assert ok.payload[0] == 0
        return client

    def select(self, client: FakeClient, backends: Backends, server: FakeServer | None = None
               ) -> tuple[BackendConnection | None, FakeServer]:
        client.query(SELECT)
        conn = None
        if server is None:
            conn, server = backends.open()
        server.received()
        server.send(vectors.SELECT_DEOF)
        self.assertEqual(client.raw(), vectors.SELECT_DEOF)
        return conn, server

    def failover(self) -> None:
        """What the probes would see: the writer turned read-only, the other writable."""
        self.proxy.topology._set(self.writer, "read_only")
        self.proxy.topology._set(self.reader, "up")

    def test_read_only_listener_uses_the_reader(self) -> None:
        conn, _ = self.select(self.connect(readonly=True), self.reader_backends)
        self.assertIs(conn.pool.target, self.reader)
        self.assertEqual(self.writer_backends.waiting, [])

    def test_main_listener_uses_the_writer(self) -> None:
        conn, _ = self.select(self.connect(), self.writer_backends)
        self.assertIs(conn.pool.target, self.writer)
        self.assertEqual(self.reader_backends.waiting, [])

    def test_writes_follow_the_new_writer_without_reconnecting(self) -> None:
        client = self.connect()
        old, old_server = self.select(client, self.writer_backends)
        self.failover()
        self.assertIs(self.proxy.topology.writer, self.reader)
        conn, _ = self.select(client, self.reader_backends)
        self.assertIs(conn.pool.target, self.reader)
        self.assertFalse(client.closed)
        # The old writer, read-only now, serves the read-only listener with
        # the connection left idle there.
        self.select(self.connect(readonly=True), self.writer_backends, old_server)
        self.assertEqual(self.proxy.pool("app", self.writer).idle, [old])

    def test_waiting_borrower_moves_to_the_new_writer(self) -> None:
        first, second, waiting = self.connect(), self.connect(), self.connect()
        for client in (first, second):
            client.query("BEGIN")
            _, server = self.writer_backends.open()
            server.received()
            server.send(vectors.BEGIN_OK)
            client.raw()
        waiting.query(SELECT)  # the writer's pool (2) is full
        self.assertEqual(len(self.proxy.pool("app", self.writer).waiters), 1)
        self.failover()
        conn, server = self.reader_backends.open()
        server.received()
        server.send(vectors.SELECT_DEOF)
        self.assertEqual(waiting.raw(), vectors.SELECT_DEOF)
        self.assertEqual(self.proxy.pool("app", self.reader).idle, [conn])

    def test_pinned_session_on_the_old_writer_is_closed(self) -> None:
        client = self.connect()
        client.query("SET @x=1")
        conn, server = self.writer_backends.open()
        server.received()
        server.send(vectors.USER_VARIABLE_OK)
        client.raw()
        self.failover()
        client.query(SELECT)
        [err] = client.received()
        self.assertEqual(err_of(err)[1], 2013)
        self.assertIn(b"failover to r:2", err.payload)
        self.assertTrue(client.closed)
        client.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(server.received()[0].payload, bytes((COM_RESET_CONNECTION,)))

    def test_read_only_error_probes_now(self) -> None:
        """A write refused as read-only (1290) makes every target's probe run at once."""
        probed = []
        self.proxy.topology.suspect = lambda *targets: probed.append(targets)  # type: ignore[method-assign]
        client = self.connect()
        client.query("INSERT INTO t VALUES (1)")
        _, server = self.writer_backends.open()
        server.received()
        server.send(frame(make_err(1290, "HY000", "The MariaDB server is running with the --read-only "
                                   "option so it cannot execute this statement"), 1))
        self.assertEqual(err_of(client.received()[0])[1], 1290)
        self.assertEqual(probed, [()])  # all of them: who is writable now?

    def test_reader_down_moves_sessions_to_another(self) -> None:
        client = self.connect(readonly=True)
        self.select(client, self.reader_backends)
        self.proxy.topology._set(self.reader, "down")
        self.assertEqual(self.proxy.pool("app", self.reader).idle, [])  # closed: the server is gone
        conn, _ = self.select(client, self.writer_backends)
        self.assertIs(conn.pool.target, self.writer)

    def test_held_after_an_error_follows_the_new_writer(self) -> None:
        """A connection held after an error (for SHOW WARNINGS) is given up when the
        writer moves: retries of a refused write must reach the new writer."""
        client = self.connect()
        client.query("INSERT INTO t VALUES (1)")
        old, server = self.writer_backends.open()
        server.received()
        server.send(frame(make_err(1290, "HY000", "read-only"), 1))
        client.raw()
        self.assertIs(client.protocol.backend, old)  # held for a follow-up
        self.failover()
        conn, _ = self.select(client, self.reader_backends)
        self.assertIs(conn.pool.target, self.reader)
        self.assertEqual(self.proxy.pool("app", self.writer).idle, [old])


def expect_statements(server: FakeServer, *sql: str) -> None:
    """The server receives ``sql`` one statement after the other: pyproxy sends each
    of its own (reconciling SETs) only after the OK to the one before."""
    for number, statement in enumerate(sql):
        [command] = server.received()
        assert command.payload == make_query(statement), (command.payload, statement)
        if number < len(sql) - 1:
            server.send(vectors.COMMIT_OK)


def rows_reply(rows: list[tuple[str, str]]) -> bytes:
    """A two-column text result set (SHOW VARIABLES), as a DEPRECATE_EOF server sends it."""
    definition = b"\x03def\x00\x00\x00\x05Value\x00\x0c\x08\x00\x40\x00\x00\x00\xfd\x01\x00\x00\x00\x00"
    packets = [b"\x02", definition, definition]
    packets += [lenenc_bytes(name.encode()) + lenenc_bytes(value.encode()) for name, value in rows]
    packets.append(b"\xfe\x00\x00\x02\x00\x00\x00")
    return b"".join(frame(payload, seq) for seq, payload in enumerate(packets, 1))


def ok_tracking(variables: dict[str, str]) -> bytes:
    """An OK whose session-state block reports ``variables`` (and a state change)."""
    entries = b"".join(b"\x00" + lenenc_bytes(lenenc_bytes(name.encode()) + lenenc_bytes(value.encode()))
                       for name, value in variables.items())
    entries += b"\x02\x01\x31"
    status = SERVER_STATUS_AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED
    return frame(b"\x00\x00\x00" + status.to_bytes(2, "little") + b"\x00\x00\x00"
                 + lenenc_bytes(entries), 1)


class CommitReleaseTests(LoggedIn):
    def test_commit_release_closes_client_and_backend(self) -> None:
        """COMMIT RELEASE ends the server session: the client is closed, as by a server,
        and the backend connection, about to be closed by the server, is not lent again."""
        conn, server = self.first_backend(self.client, "COMMIT RELEASE")
        server.send(vectors.COMMIT_OK)
        [ok] = self.client.received()
        self.assertEqual(ok.payload[0], 0)
        self.assertTrue(self.client.closed)
        self.assertTrue(conn.broken)
        self.assertEqual((self.pool.idle, self.pool.lent), ([], set()))


class BoundsTests(LoggedIn):
    """What one client may make pyproxy keep: packets before login, long data, prepared
    statements, and replies it does not read."""

    def test_login_packet_over_the_limit(self) -> None:
        """Before login only small packets are taken: a larger one gets 1153 at its header
        and a closed connection, before its bytes arrive."""
        client = FakeClient(self.proxy)
        client.protocol.dataReceived((5000).to_bytes(3, "little") + b"\x01" + b"x" * 100)
        [err] = client.received()
        self.assertEqual(err_of(err), (2, 1153, "08S01"))
        self.assertIn(b"login packet", err.payload)
        self.assertTrue(client.closed)

    def test_no_command_runs_while_replies_wait_unsent(self) -> None:
        """While the client's transport holds more than its buffer of unsent replies, its
        next command waits; it runs once they have drained."""
        self.client.protocol.pauseProducing()
        self.assertEqual(self.client.transport.producerState, "paused")
        self.client.query(SELECT)
        self.assertEqual(self.backends.waiting, [])
        self.client.protocol.resumeProducing()
        self.assertEqual(len(self.backends.waiting), 1)
        self.assertEqual(self.client.transport.producerState, "producing")

    def test_backend_is_not_read_while_the_client_is_behind(self) -> None:
        """Mid-reply, the backend connection is paused while the client is behind, and
        resumed when it has caught up (or when the reply ends)."""
        conn, server = self.first_backend(self.client, SELECT)
        self.client.protocol.pauseProducing()
        self.assertEqual(server.transport.producerState, "paused")
        self.client.protocol.resumeProducing()
        self.assertEqual(server.transport.producerState, "producing")
        self.client.protocol.pauseProducing()
        server.send(vectors.SELECT_DEOF)
        self.assertEqual(server.transport.producerState, "producing")  # the reply is whole
        self.assertEqual(self.pool.idle, [conn])

    def test_closing_while_paused_does_not_wait_for_the_producer(self) -> None:
        """A client closed while its replies wait: once they drain the transport closes,
        rather than waiting for pyproxy to stop producing."""
        self.client.protocol.pauseProducing()
        self.client.transport.disconnecting = True
        self.client.protocol.resumeProducing()
        self.assertIsNone(self.client.transport.producer)
