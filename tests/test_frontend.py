"""pyproxy.frontend: the client connection over fake transports, and the fixtures every
client-side test module uses.

A FrontendProtocol talks to a StringTransport; its pool's connector hands out
BackendConnections that the test logs in and answers by hand, with packets
captured from a real server.  So a command goes frontend -> pool -> backend
-> frontend with every byte visible and no socket or real clock.  The tests
here are the connection's own: framing limits before and after login.  Each
part of the command phase has its module (test_command_phase.py,
test_prepared.py, test_release.py, ...).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import vectors
from pyproxy import auth
from pyproxy.backend import BackendConnection
from pyproxy.config import build
from pyproxy.frontend import FrontendFactory
from pyproxy.pool import Pool
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.wire.commands import make_query
from pyproxy.wire.constants import CLIENT, MAX_PAYLOAD, SERVER_SESSION_STATE_CHANGED, SERVER_STATUS_AUTOCOMMIT
from pyproxy.wire.buffer import lenenc_bytes
from pyproxy.wire.framing import Packet, PacketFramer, frame
from pyproxy.wire.handshake import HandshakeResponse41, make_handshake_response41, parse_handshake_v10
from pyproxy.wire.responses import ERR, make_ok, parse_err
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

    def side_connection(self) -> tuple[BackendConnection, FakeServer]:
        """The connection pyproxy opens for itself (to read global variables, to send
        KILL QUERY), logged in."""
        _, _, factory, _, _ = self.proxy.reactor.tcpClients.pop()
        wrapper = factory.buildProtocol(None)  # the endpoint's wrapper around the connection
        server = FakeServer(wrapper)
        server.login()
        return wrapper._wrappedProtocol, server

    def first_backend(self, client: FakeClient, sql: str) -> tuple[BackendConnection, FakeServer]:
        """Sends ``sql``; opens the backend it waits for and checks the command arrives as sent."""
        client.query(sql)
        conn, server = self.backends.open()
        [command] = server.received()
        self.assertEqual(command.raw, frame(make_query(sql), 0))
        return conn, server


WARNING_OK = frame(make_ok(SERVER_STATUS_AUTOCOMMIT, warnings=1), 1)


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


class FramingTests(LoggedIn):
    """What the connection takes from a client: packets up to max_packet_size (8 KiB
    before login), in sequence."""

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

    def test_login_packet_over_the_limit(self) -> None:
        """Before login only small packets are taken: a larger one gets 1153 at its header
        and a closed connection, before its bytes arrive."""
        client = FakeClient(self.proxy)
        client.protocol.dataReceived((5000).to_bytes(3, "little") + b"\x01" + b"x" * 100)
        [err] = client.received()
        self.assertEqual(err_of(err), (2, 1153, "08S01"))
        self.assertIn(b"login packet", err.payload)
        self.assertTrue(client.closed)


def test_err_helper_reads_server_vector() -> None:
    """The captured unknown-command ERR parses as 1047 08S01 (sanity check for the comparisons above)."""
    [packet] = PacketFramer().feed(vectors.UNKNOWN_COMMAND_ERR)
    assert parse_err(packet.payload) == ERR(1047, "08S01", "Unknown command")
