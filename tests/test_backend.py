"""pyproxy.backend: BackendConnection over a fake transport, fed captured server packets."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import vectors
from pyproxy import auth
from pyproxy.backend import (
    TRACKING,
    TRACKING_DEFAULTS,
    BackendConnection,
    BackendError,
    Target,
    connect,
)
from pyproxy.backend_login import BASE_CAPABILITIES
from pyproxy.credential_sources import BackendLogin
from pyproxy.session import DEFAULT_TRACKING, Tracking, initial_state, reset_state
from pyproxy.wire.commands import Reply, make_query
from pyproxy.wire.constants import (
    CLIENT,
    CLIENT_MYSQL,
    COM_RESET_CONNECTION,
    COMMAND,
    MARIADB_CLIENT_EXTENDED_METADATA,
    MARIADB_CLIENT_STMT_BULK_OPERATIONS,
)
from pyproxy.wire.framing import Packet, PacketFramer, frame
from pyproxy.wire.handshake import (
    make_handshake_v10,
    parse_change_user,
    parse_handshake_response41,
    parse_handshake_v10,
)
from pyproxy.wire.response_tracker import DONE, INFILE, ResponseTracker
from pyproxy.wire.responses import make_err, make_ok

NONCE = parse_handshake_v10(vectors.GREETING[4:]).auth_data
DEOF_FLAVOR = CLIENT.DEPRECATE_EOF | CLIENT.LOCAL_FILES
TARGET = Target("db.test", 3306, vectors.USER, vectors.PASSWORD)


class FakeTransport(StringTransport):
    """A StringTransport with the TCP option call the protocols make."""

    nodelay = False
    keepalive = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepalive = enabled


class FakeServer:
    """The database side of one BackendConnection, played by the test."""

    def __init__(self, conn: BackendConnection) -> None:
        self.conn = conn
        self.transport = FakeTransport()
        self.framer = PacketFramer()
        conn.makeConnection(self.transport)

    def received(self) -> list[Packet]:
        """Packets the connection sent since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return self.framer.feed(data)

    def send(self, data: bytes, pieces: int = 1) -> None:
        """Delivers bytes to the connection, in ``pieces`` reads of roughly equal size."""
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            self.conn.dataReceived(data[i:i + step])

    def login(self) -> None:
        """Greeting, OK to the login, OK to the tracking SET."""
        self.send(vectors.GREETING)
        [response] = self.received()
        assert response.seq == 1
        self.send(vectors.LOGIN_OK)
        [defaults, tracking] = self.received()
        assert defaults.payload == make_query(TRACKING_DEFAULTS)
        assert tracking.payload == make_query(TRACKING)
        conn = getattr(self.conn, "_wrappedProtocol", self.conn)  # behind an endpoint's wrapper
        deof = conn.capabilities & CLIENT.DEPRECATE_EOF
        self.send(vectors.SESSION_SETUP if deof else vectors.SESSION_SETUP_EOF)


def ready_backend(reactor: Any, flavor: int = DEOF_FLAVOR,
                  target: Target = TARGET) -> tuple[BackendConnection, FakeServer]:
    """A BackendConnection logged in and ready, with the fake server that serves it."""
    conn = BackendConnection(target, flavor, reactor)
    server = FakeServer(conn)
    server.login()
    assert conn.ready.called
    return conn, server


class Sink:
    """The frontend side of a relayed command."""

    def __init__(self) -> None:
        self.data = b""
        self.states: list[int] = []
        self.lost: list[BackendError] = []

    def backend_data(self, data: bytes, tracker: ResponseTracker) -> None:
        self.data += data
        self.states.append(tracker.state)

    def backend_lost(self, error: BackendError) -> None:
        self.lost.append(error)


class LoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def test_answers_greeting_with_verifiable_proof(self) -> None:
        """The HandshakeResponse41 names the account, and its proof verifies against the greeting's nonce."""
        conn = BackendConnection(TARGET, DEOF_FLAVOR, self.clock)
        server = FakeServer(conn)
        self.assertTrue(server.transport.nodelay)
        server.send(vectors.GREETING)
        [packet] = server.received()
        self.assertEqual(packet.seq, 1)
        response = parse_handshake_response41(packet.payload)
        self.assertEqual(response.username, "app")
        self.assertEqual(response.auth_plugin, auth.NATIVE)
        self.assertEqual(response.charset, 45)
        self.assertIsNone(response.database)
        self.assertTrue(auth.verify_native(b"secret", NONCE, response.auth_response))
        self.assertEqual(response.attributes["program_name"], "pyproxy")
        caps = response.capabilities
        self.assertTrue(caps & CLIENT.SESSION_TRACK and caps & CLIENT.PROTOCOL_41)
        self.assertTrue(caps & CLIENT.DEPRECATE_EOF and caps & CLIENT.LOCAL_FILES)
        self.assertFalse(caps & CLIENT.CONNECT_WITH_DB)
        self.assertFalse(caps & CLIENT.FOUND_ROWS)
        self.assertNoResult(conn.ready)

    def test_flavor_bits_follow_the_client(self) -> None:
        """With an empty flavor the connection asks for the base capabilities only, which
        include DEPRECATE_EOF (clients without it get their EOFs by translation)."""
        conn = BackendConnection(TARGET, 0, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        caps = parse_handshake_response41(server.received()[0].payload).capabilities
        self.assertEqual(caps & ~CLIENT.LONG_PASSWORD, BASE_CAPABILITIES & ~CLIENT.LONG_PASSWORD)
        self.assertFalse(caps & CLIENT.FOUND_ROWS)
        self.assertTrue(conn.tracker.deprecate_eof)

    def test_database_in_login(self) -> None:
        """A configured default schema is sent with CONNECT_WITH_DB and becomes the state's schema."""
        target = Target("db.test", 3306, "app", "secret", database="app")
        conn = BackendConnection(target, 0, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        response = parse_handshake_response41(server.received()[0].payload)
        self.assertEqual(response.database, "app")
        server.send(vectors.LOGIN_OK)
        server.received()
        server.send(vectors.SESSION_SETUP)
        self.assertEqual(self.successResultOf(conn.ready).state.schema, "app")

    def test_tracking_set_then_ready(self) -> None:
        """After the login OK it reads the session's own tracking settings and turns
        pyproxy's tracking on, in one round trip (seq 0 each), and is ready only once
        that succeeds."""
        conn = BackendConnection(TARGET, DEOF_FLAVOR, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        server.received()
        server.send(vectors.LOGIN_OK)
        [defaults, tracking] = server.received()
        self.assertEqual((defaults.seq, defaults.payload), (0, make_query(TRACKING_DEFAULTS)))
        self.assertEqual((tracking.seq, tracking.payload), (0, make_query(TRACKING)))
        self.assertNoResult(conn.ready)
        server.send(vectors.SESSION_SETUP, pieces=7)
        self.assertIs(self.successResultOf(conn.ready), conn)
        self.assertEqual(conn.state, initial_state(45, None, True, True))
        self.assertEqual(conn.tracking, DEFAULT_TRACKING)
        self.assertFalse(conn.broken)

    def test_tracking_settings_learned(self) -> None:
        """The tracking a session starts with is read from the server (here, as an
        administrator configured it); a server that cannot say keeps the defaults."""
        def logged_in() -> tuple[BackendConnection, FakeServer]:
            conn = BackendConnection(TARGET, DEOF_FLAVOR, self.clock)
            server = FakeServer(conn)
            server.send(vectors.GREETING)
            server.received()
            server.send(vectors.LOGIN_OK)
            server.received()  # the tracking SELECT and SET
            return conn, server

        conn, server = logged_in()
        definition = b"\x03def\x00\x00\x00\x01a\x00\x0c\x08\x00\x40\x00\x00\x00\xfd\x01\x00\x00\x00\x00"
        row = b"".join(bytes((len(v),)) + v for v in (b"time_zone", b"1", b"1", b"STATE"))
        reply = (frame(b"\x04", 1) + b"".join(frame(definition, seq) for seq in range(2, 6))
                 + frame(row, 6) + frame(b"\xfe\x00\x00\x02\x00\x00\x00", 7))
        server.send(reply + vectors.TRACKING_OK)
        self.assertEqual(self.successResultOf(conn.ready).tracking,
                         Tracking("time_zone", "ON", "ON", "STATE"))
        old, server = logged_in()
        server.send(frame(make_err(1193, "HY000", "Unknown system variable"), 1) + vectors.TRACKING_OK)
        self.assertIs(self.successResultOf(old.ready).tracking, DEFAULT_TRACKING)

    def test_login_split_at_every_byte(self) -> None:
        """The whole login works whatever the server's packets are cut into."""
        for pieces in (2, 5, 104):
            conn = BackendConnection(TARGET, DEOF_FLAVOR, self.clock)
            server = FakeServer(conn)
            server.send(vectors.GREETING, pieces)
            server.received()
            server.send(vectors.LOGIN_OK, pieces)
            server.received()
            server.send(vectors.SESSION_SETUP, pieces)
            self.successResultOf(conn.ready)

    def test_server_error_at_greeting(self) -> None:
        """An ERR instead of a greeting (too many connections) fails ready with it."""
        conn = BackendConnection(TARGET, 0, self.clock)
        server = FakeServer(conn)
        server.send(frame(make_err(1040, "08004", "Too many connections"), 0))
        failure = self.failureResultOf(conn.ready, BackendError)
        self.assertEqual(failure.value.code, 1040)
        self.assertTrue(conn.broken)
        self.assertTrue(server.transport.disconnecting)

    def test_access_denied(self) -> None:
        """The server's 1045 after the login fails ready with that error."""
        conn = BackendConnection(TARGET, 0, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        server.send(frame(make_err(1045, "28000", "Access denied for user 'app'"), 2))
        self.assertEqual(self.failureResultOf(conn.ready, BackendError).value.code, 1045)

    def test_tracking_refused(self) -> None:
        """If the tracking SET fails the connection is not usable."""
        conn = BackendConnection(TARGET, 0, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        server.send(vectors.LOGIN_OK)
        server.send(vectors.TRACKING_DEFAULTS_ROWS + vectors.ERR_NO_TABLE)
        self.assertEqual(self.failureResultOf(conn.ready, BackendError).value.code, 1146)
        self.assertTrue(conn.broken)

    def test_auth_switch(self) -> None:
        """An AuthSwitchRequest is answered with the new plugin's proof over the new nonce."""
        conn = BackendConnection(TARGET, 0, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        server.received()
        nonce = b"abcdefghijklmnopqrst"
        server.send(frame(b"\xfecaching_sha2_password\x00" + nonce + b"\x00", 2))
        [proof] = server.received()
        self.assertEqual(proof.seq, 3)
        self.assertTrue(auth.verify_caching_sha2(b"secret", nonce, proof.payload))
        server.send(frame(b"\x01\x03", 4))  # fast auth success
        server.send(frame(make_ok(2), 5))
        server.received()
        server.send(vectors.SESSION_SETUP)
        self.successResultOf(conn.ready)

    def test_clear_password_refused(self) -> None:
        """pyproxy never sends a password in clear text without TLS: error 1251."""
        conn = BackendConnection(TARGET, 0, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        server.send(frame(b"\xfemysql_clear_password\x00", 2))
        self.assertEqual(self.failureResultOf(conn.ready, BackendError).value.code, 1251)
        self.assertEqual(server.received()[1:], [])

    def test_login_from_sha1_alone(self) -> None:
        """A BackendLogin holding only SHA1(password) (from a client's proof against a stored
        hash) answers with mysql_native_password whatever the server announces, and its proof
        is the password's; a switch to caching_sha2_password gets 1251, not a guess."""
        sha1 = hashlib.sha1(b"secret").digest()
        target = attrs.evolve(TARGET, password="", login=BackendLogin(vectors.USER, native_sha1=sha1))
        greeting = parse_handshake_v10(vectors.GREETING[4:])
        sha2_greeting = frame(make_handshake_v10(attrs.evolve(greeting, auth_plugin=auth.CACHING_SHA2)), 0)
        conn = BackendConnection(target, 0, self.clock)
        server = FakeServer(conn)
        server.send(sha2_greeting)
        [packet] = server.received()
        response = parse_handshake_response41(packet.payload)
        self.assertEqual(response.auth_plugin, auth.NATIVE)
        self.assertEqual(response.auth_response, auth.native_proof(b"secret", greeting.auth_data))
        server.send(frame(b"\xfecaching_sha2_password\x00" + b"n" * 20 + b"\x00", 2))
        error = self.failureResultOf(conn.ready, BackendError).value
        self.assertEqual(error.code, 1251)
        self.assertNotIn(sha1.hex(), str(error))

    def test_rotation_attempt_picks_the_password(self) -> None:
        """``attempt`` picks which of a rotation's passwords this connection logs in with."""
        login = BackendLogin(vectors.USER, ("pending", "secret"))
        for attempt, password in ((0, b"pending"), (1, b"secret")):
            conn = BackendConnection(attrs.evolve(TARGET, login=login, attempt=attempt), 0, self.clock)
            server = FakeServer(conn)
            server.send(vectors.GREETING)
            [packet] = server.received()
            self.assertEqual(parse_handshake_response41(packet.payload).auth_response,
                             auth.native_proof(password, NONCE))

    def test_iam_login_needs_tls(self) -> None:
        """An RDS IAM login over plaintext fails (1251) without sending the token."""
        target = attrs.evolve(TARGET, login=BackendLogin(vectors.USER, iam=True), token="rds-token-value")
        conn = BackendConnection(target, 0, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        self.assertEqual(self.failureResultOf(conn.ready, BackendError).value.code, 1251)
        self.assertNotIn(b"rds-token-value", server.transport.value())

    def test_garbage_greeting(self) -> None:
        """A greeting that does not parse fails ready with 2013 instead of raising."""
        conn = BackendConnection(TARGET, 0, self.clock)
        server = FakeServer(conn)
        server.send(frame(b"\x0a5.5\x00\x01", 0))
        self.assertEqual(self.failureResultOf(conn.ready, BackendError).value.code, 2013)

    def test_connection_lost_during_login(self) -> None:
        """A connection that drops during login fails ready with 2013."""
        conn = BackendConnection(TARGET, 0, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        conn.connectionLost(Failure(ConnectionError("reset")))
        self.assertEqual(self.failureResultOf(conn.ready, BackendError).value.code, 2013)


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.conn, self.server = ready_backend(self.clock)
        self.server.received()

    def test_ping(self) -> None:
        """ping() sends COM_PING with seq 0 and fires with the OK."""
        d = self.conn.ping()
        [packet] = self.server.received()
        self.assertEqual((packet.seq, packet.payload), (0, b"\x0e"))
        self.assertNoResult(d)
        self.server.send(vectors.PING_OK)
        self.assertEqual(self.successResultOf(d), vectors.PING_OK[4:])

    def test_pipelined_commands_answered_in_order(self) -> None:
        """Several commands may be in flight; each gets its own reply, an ERR as BackendError."""
        d1 = self.conn.execute(b"\x02app")
        d2 = self.conn.execute(make_query("SET SESSION autocommit=0"))
        d3 = self.conn.execute(b"\x02nope")
        self.assertEqual(len(self.server.received()), 3)
        self.server.send(vectors.INIT_DB_OK + vectors.AUTOCOMMIT_OFF_OK + vectors.ERR_NO_TABLE, pieces=9)
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertEqual(self.failureResultOf(d3, BackendError).value.code, 1146)

    def test_own_commands_update_state(self) -> None:
        """Tracked changes in the replies to pyproxy's own commands keep ``state`` true."""
        self.conn.execute(b"\x02app")
        self.server.send(vectors.INIT_DB_OK)
        self.conn.execute(make_query("SET autocommit=0"))
        self.server.send(vectors.AUTOCOMMIT_OFF_OK)
        self.assertEqual((self.conn.state.schema, self.conn.state.autocommit), ("app", False))

    def test_relay_streams_reply_to_sink(self) -> None:
        """A relayed command goes out as received; the reply reaches the sink piece by piece."""
        sink = Sink()
        raw = frame(make_query("SELECT id, name FROM app.t ORDER BY id"), 0)
        self.conn.relay(raw, Reply.RESULT, sink)
        self.assertEqual(self.server.transport.value(), raw)
        self.server.send(vectors.SELECT_DEOF, pieces=len(vectors.SELECT_DEOF))
        self.assertEqual(sink.data, vectors.SELECT_DEOF)
        self.assertEqual(sink.states[-1], DONE)
        self.assertEqual(self.conn.tracker.status & 0x22, 0x22)
        # Done: the connection runs its own commands again.
        d = self.conn.ping()
        self.server.send(vectors.PING_OK)
        self.successResultOf(d)

    def test_relay_no_reply_command(self) -> None:
        """COM_STMT_CLOSE is written and nothing is awaited."""
        raw = frame(b"\x19\x01\x00\x00\x00", 0)
        self.conn.relay(raw, Reply.NONE, Sink())
        self.assertEqual(self.server.transport.value(), raw)
        self.successResultOf(self._ping())

    def _ping(self) -> defer.Deferred[bytes]:
        self.server.transport.clear()
        d = self.conn.ping()
        self.server.send(vectors.PING_OK)
        return d

    def test_local_infile_relay(self) -> None:
        """LOCAL INFILE: the request reaches the sink, the client's data goes out, then the OK."""
        sink = Sink()
        self.conn.relay(frame(make_query("LOAD DATA LOCAL INFILE 'x' INTO TABLE t"), 0), Reply.RESULT, sink)
        self.server.send(vectors.INFILE_REQUEST)
        self.assertEqual(sink.data, vectors.INFILE_REQUEST)
        self.assertEqual(sink.states, [INFILE])
        self.server.transport.clear()
        self.conn.relay_more(frame(b"1,one\n", 2))
        self.conn.relay_more(frame(b"", 3))
        self.assertEqual(self.server.transport.value(), frame(b"1,one\n", 2) + frame(b"", 3))
        self.conn.infile_sent()
        self.server.send(vectors.INFILE_OK)
        self.assertEqual(sink.data, vectors.INFILE_REQUEST + vectors.INFILE_OK)
        self.assertEqual(sink.states[-1], DONE)

    def test_server_closing_while_idle(self) -> None:
        """An unsolicited ERR (server shutting down) breaks the connection."""
        self.server.send(frame(make_err(1053, "08S01", "Server shutdown in progress"), 0))
        self.assertTrue(self.conn.broken)
        self.assertTrue(self.server.transport.disconnecting)

    def test_lost_while_relaying(self) -> None:
        """A connection lost mid-reply tells the sink (2013) and its pool."""
        sink = Sink()
        lost: list[BackendConnection] = []
        self.conn.on_lost = lost.append
        self.conn.relay(frame(make_query("SELECT 1"), 0), Reply.RESULT, sink)
        self.server.send(vectors.SELECT_DEOF[:30])
        self.conn.connectionLost(Failure(ConnectionError("reset by peer")))
        self.assertEqual([e.code for e in sink.lost], [2013])
        self.assertEqual(lost, [self.conn])
        self.assertTrue(self.conn.broken)
        self.assertEqual(self.failureResultOf(self.conn.ping(), BackendError).value.code, 2013)

    def test_protocol_violation_while_relaying(self) -> None:
        """A reply that breaks the grammar aborts the connection and reports 2013 to the sink."""
        sink = Sink()
        self.conn.relay(frame(make_query("SELECT 1"), 0), Reply.RESULT, sink)
        self.server.send(frame(b"\xfe\x00\x00\x02\x00", 1))
        self.assertEqual([e.code for e in sink.lost], [2013])
        self.assertTrue(self.server.transport.disconnecting)

    def test_reset(self) -> None:
        """reset() sends COM_RESET_CONNECTION then the tracking SET, and returns to the login state."""
        self.conn.execute(b"\x02app")
        self.server.send(vectors.INIT_DB_OK)
        self.server.received()
        d = self.conn.reset()
        [packet] = self.server.received()
        self.assertEqual(packet.payload, bytes((COM_RESET_CONNECTION,)))
        self.server.send(vectors.PING_OK)
        [defaults, tracking] = self.server.received()
        self.assertEqual(tracking.payload, make_query(TRACKING))
        self.server.send(vectors.SESSION_SETUP)
        self.assertIs(self.successResultOf(d), self.conn)
        # The schema stays, its character set is the server's default (not its own).
        self.assertEqual(self.conn.state, reset_state(45, "app", True, True))
        self.assertNotEqual(self.conn.state, initial_state(45, "app", True, True))

    def test_change_user_unselects_schema(self) -> None:
        """change_user() logs in again as the same account with no schema."""
        d = self.conn.change_user()
        [packet] = self.server.received()
        request = parse_change_user(packet.payload, CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH)
        self.assertEqual((packet.seq, request.username, request.database), (0, "app", None))
        self.assertTrue(auth.verify_native(b"secret", NONCE, request.auth_response))
        self.server.send(frame(make_ok(2), 1))
        [defaults, tracking] = self.server.received()
        self.assertEqual(tracking.payload, make_query(TRACKING))
        self.server.send(vectors.SESSION_SETUP)
        self.assertIs(self.successResultOf(d), self.conn)
        self.assertIsNone(self.conn.state.schema)

    def test_close_waits_for_the_server(self) -> None:
        """On a TCP transport close() sends COM_QUIT and closes only pyproxy's side;
        the connection is lost (and the pool told) when the server closes its end, or
        aborted after connect_timeout."""
        class HalfClosing(FakeTransport):
            half_closed = False

            def loseWriteConnection(self) -> None:
                self.half_closed = True

        reactor = MemoryReactorClock()
        conn = BackendConnection(TARGET, DEOF_FLAVOR, reactor)
        server = FakeServer(conn)
        transport = HalfClosing()
        conn.makeConnection(transport)
        server.transport = transport
        server.login()
        lost: list[BackendConnection] = []
        conn.on_lost = lost.append
        self.assertTrue(conn.close("replaced"))
        [quit_] = server.received()
        self.assertEqual(quit_.payload, bytes((COMMAND.COM_QUIT,)))
        self.assertTrue(transport.half_closed and not transport.disconnecting)
        reactor.advance(TARGET.connect_timeout)
        self.assertTrue(transport.disconnecting)  # aborted: the server never closed
        conn.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(lost, [conn])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_close_says_goodbye(self) -> None:
        """close() sends COM_QUIT and drops the transport."""
        self.conn.close("shutdown")
        [packet] = self.server.received()
        self.assertEqual(packet.payload, bytes((COMMAND.COM_QUIT,)))
        self.assertTrue(self.server.transport.disconnecting)
        self.assertTrue(self.conn.broken)
        self.assertEqual(self.failureResultOf(self.conn.execute(b"\x0e"), BackendError).value.code, 2013)


class ConnectTests(SynchronousTestCase):
    """connect(): endpoint, login timer and error mapping, on a MemoryReactorClock."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.target = Target("127.0.0.1", 3306, "app", "secret", connect_timeout=4)
        self.d = connect(self.reactor, self.target, DEOF_FLAVOR)
        [(host, port, self.factory, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 3306, 4))

    def accept(self) -> FakeTransport:
        transport = FakeTransport()
        self.protocol = self.factory.buildProtocol(None)
        self.protocol.makeConnection(transport)
        return transport

    def test_connect_logs_in(self) -> None:
        """connect() fires with a ready connection and leaves no timer behind."""
        transport = self.accept()
        self.protocol.dataReceived(vectors.GREETING)
        self.protocol.dataReceived(vectors.LOGIN_OK)
        self.assertNoResult(self.d)
        self.protocol.dataReceived(vectors.SESSION_SETUP)
        conn = self.successResultOf(self.d)
        self.assertIsInstance(conn, BackendConnection)
        self.assertEqual(conn.flavor, DEOF_FLAVOR)
        self.assertTrue(transport.nodelay)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_login_too_slow(self) -> None:
        """A server that accepts but does not finish the login within connect_timeout gives 2003."""
        transport = self.accept()
        self.protocol.dataReceived(vectors.GREETING)
        self.reactor.advance(4)
        error = self.failureResultOf(self.d, BackendError).value
        self.assertEqual(error.code, 2003)
        self.assertIn("login took longer than 4s", error.message)
        self.assertTrue(transport.disconnecting)

    def test_unreachable(self) -> None:
        """A refused connection gives 2003 naming the address."""
        self.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))
        self.reactor.advance(0.3)  # HostnameEndpoint's attempt scheduling
        error = self.failureResultOf(self.d, BackendError).value
        self.assertEqual(error.code, 2003)
        self.assertIn("'127.0.0.1:3306'", error.message)

    def test_server_error_passes_through(self) -> None:
        """The server's own error (1040) reaches the caller unchanged."""
        self.accept()
        self.protocol.dataReceived(frame(make_err(1040, "08004", "Too many connections"), 0))
        self.assertEqual(self.failureResultOf(self.d, BackendError).value.code, 1040)


class DeadlineTests(SynchronousTestCase):
    def test_unanswered_internal_command_fails_the_connection(self) -> None:
        """A ping (or reset, or SET) the server never answers fails after connect_timeout,
        and the connection is closed, instead of waiting forever."""
        reactor = MemoryReactorClock()
        conn, server = ready_backend(reactor)
        d = conn.ping()
        reactor.advance(TARGET.connect_timeout - 0.1)
        self.assertNoResult(d)
        reactor.advance(0.2)
        self.failureResultOf(d, BackendError)
        self.assertTrue(conn.broken)

    def test_answered_commands_leave_no_timer(self) -> None:
        """A deadline belongs to the command: answered, it is cancelled."""
        reactor = MemoryReactorClock()
        conn, server = ready_backend(reactor)
        d = conn.ping()
        server.send(vectors.PING_OK)
        self.successResultOf(d)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertTrue(server.transport.keepalive)


class QueryValueTests(SynchronousTestCase):
    def test_query_value_reads_the_first_column_of_the_first_row(self) -> None:
        """query_value() reads a one-column result (DEPRECATE_EOF form) and frees the connection."""
        reactor = MemoryReactorClock()
        conn, server = ready_backend(reactor)
        server.received()
        d = conn.query_value("SELECT @@max_connections")
        reply = (frame(b"\x01", 1) + frame(b"\x03def\x00\x00\x00\x11@@max_connections\x00\x0c?\x00\x0a\x00\x00\x00\x08\x80\x00\x00\x00\x00", 2)
                 + frame(b"\x03151", 3) + frame(b"\xfe\x00\x00\x02\x00\x00\x00", 4))
        server.send(reply, pieces=3)
        self.assertEqual(self.successResultOf(d), "151")
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_query_rows_reads_every_row_and_null(self) -> None:
        """query_rows() gives each row's values as text, NULL as None; a classic EOF
        after the definitions (a connection without DEPRECATE_EOF) is skipped."""
        reactor = MemoryReactorClock()
        conn, server = ready_backend(reactor, flavor=CLIENT.LOCAL_FILES)
        conn.capabilities &= ~CLIENT.DEPRECATE_EOF
        server.received()
        d = conn.query_rows("SHOW GLOBAL VARIABLES")
        definition = b"\x03def\x00\x00\x00\x04Name\x00\x0c\x08\x00\x40\x00\x00\x00\xfd\x01\x00\x00\x00\x00"
        reply = (frame(b"\x02", 1) + frame(definition, 2) + frame(definition, 3)
                 + frame(b"\xfe\x00\x00\x02\x00", 4)
                 + frame(b"\x08sql_mode\x04ANSI", 5) + frame(b"\x0cinit_connect\xfb", 6)
                 + frame(b"\x04port" + b"\xfc\x03\x00" + b"123", 7)
                 + frame(b"\xfe\x00\x00\x02\x00", 8))
        server.send(reply, pieces=4)
        self.assertEqual(self.successResultOf(d), [("sql_mode", "ANSI"), ("init_connect", None),
                                                   ("port", "123")])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_query_rows_error(self) -> None:
        """The server's error fails the Deferred with it, and the connection stays usable."""
        reactor = MemoryReactorClock()
        conn, server = ready_backend(reactor)
        server.received()
        d = conn.query_rows("SHOW NOTHING")
        server.send(frame(make_err(1064, "42000", "You have an error"), 1))
        self.assertEqual(self.failureResultOf(d, BackendError).value.code, 1064)
        self.assertFalse(conn.broken)
        ping = conn.ping()
        server.send(vectors.PING_OK)
        self.assertEqual(self.successResultOf(ping)[:1], b"\x00")


class ExtendedCapabilityTests(SynchronousTestCase):
    """MariaDB's extended capabilities in the backend login."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def test_client_flavor_sent_in_the_filler(self) -> None:
        """A connection for a client with extended metadata and PS_MULTI_RESULTS asks for them,
        and for bulk operations, with CLIENT_MYSQL clear and bits 32-63 in the filler."""
        flavor = MARIADB_CLIENT_EXTENDED_METADATA | CLIENT.PS_MULTI_RESULTS
        conn = BackendConnection(TARGET, flavor, self.clock)
        server = FakeServer(conn)
        server.send(vectors.GREETING)
        payload = server.received()[0].payload
        caps = parse_handshake_response41(payload).capabilities
        self.assertFalse(caps & CLIENT_MYSQL)
        self.assertEqual(caps >> 32, (MARIADB_CLIENT_EXTENDED_METADATA | MARIADB_CLIENT_STMT_BULK_OPERATIONS) >> 32)
        self.assertEqual(payload[28:32], b"\x0c\x00\x00\x00")
        self.assertTrue(caps & CLIENT.PS_MULTI_RESULTS)
        self.assertEqual(conn.capabilities, caps)

    def test_without_extended_capabilities(self) -> None:
        """With an empty flavor (PyMySQL's kind of client) neither PS_MULTI_RESULTS nor
        extended metadata; against a server that offers no extended capabilities
        CLIENT_MYSQL stays set and the filler empty."""
        greeting = parse_handshake_v10(vectors.GREETING[4:])
        mysql_like = make_handshake_v10(attrs.evolve(
            greeting, capabilities=(greeting.capabilities & 0xFFFFFFFF) | CLIENT_MYSQL))
        for hello in (vectors.GREETING, frame(mysql_like, 0)):
            conn = BackendConnection(TARGET, 0, self.clock)
            server = FakeServer(conn)
            server.send(hello)
            caps = parse_handshake_response41(server.received()[0].payload).capabilities
            self.assertFalse(caps & (CLIENT.PS_MULTI_RESULTS | MARIADB_CLIENT_EXTENDED_METADATA))
        self.assertTrue(caps & CLIENT_MYSQL)
        self.assertEqual(caps >> 32, 0)

    def test_server_without_what_the_client_negotiated(self) -> None:
        """A server that lacks a capability the client negotiated with pyproxy (extended
        metadata, when pyproxy greeted for another server) fails the connection with an
        error instead of sending replies the client would misread."""
        greeting = parse_handshake_v10(vectors.GREETING[4:])
        mysql_like = make_handshake_v10(attrs.evolve(
            greeting, capabilities=(greeting.capabilities & 0xFFFFFFFF) | CLIENT_MYSQL))
        conn = BackendConnection(TARGET, MARIADB_CLIENT_EXTENDED_METADATA, self.clock)
        server = FakeServer(conn)
        server.send(frame(mysql_like, 0))
        failure = self.failureResultOf(conn.ready, BackendError)
        self.assertEqual(failure.value.code, 1043)
        self.assertIn("does not offer", failure.value.message)
