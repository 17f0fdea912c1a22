"""pyproxy.kill: KILL on pyproxy's connection ids, and the query timeout, over fake transports."""

from __future__ import annotations

from twisted.python.failure import Failure

import vectors
from pyproxy import auth
from pyproxy.wire.commands import make_init_db, make_query
from pyproxy.wire.handshake import HandshakeResponse41, make_handshake_response41
from pyproxy.wire.framing import frame
from pyproxy.wire.responses import make_err
from test_frontend import CLIENT_CAPS, SELECT, FakeClient, LoggedIn, err_of, make_proxy


class KillTests(LoggedIn):
    """KILL names pyproxy's own connection ids and never reaches the server as written."""

    def killed_by(self, killer: FakeClient, sql: str) -> tuple[int, int, str]:
        killer.query(sql)
        return err_of(killer.received()[0])

    def test_what_cannot_be_killed(self) -> None:
        """An id pyproxy does not know gets 1094, another user's connection 1095, and
        any other form of KILL 1235; nothing is sent to a server."""
        killer = self.connect()
        self.assertEqual(self.killed_by(killer, "KILL 999"), (1, 1094, "HY000"))
        other_user = FakeClient(self.proxy)
        other_user.login(user="nopw", password="")
        self.assertEqual(self.killed_by(killer, f"KILL {other_user.protocol.id}"), (1, 1095, "HY000"))
        self.assertEqual(self.killed_by(killer, "KILL USER app"), (1, 1235, "42000"))
        self.assertEqual(self.backends.waiting, [])
        self.assertFalse(other_user.closed)

    def test_kill_connection_of_an_idle_client(self) -> None:
        """KILL <id> closes an idle client at once, and answers OK."""
        killer = self.connect()
        killer.query(f"  kill connection {self.client.protocol.id};")
        [ok] = killer.received()
        self.assertEqual(ok.payload[0], 0)
        self.assertTrue(self.client.closed)
        self.assertEqual(self.client.protocol.closed_reason, "killed")
        self.assertEqual(self.backends.waiting, [])

    def test_kill_query_of_a_running_statement(self) -> None:
        """KILL QUERY of a client whose statement runs: KILL QUERY with its backend
        thread's id goes over a connection of pyproxy's own; the killer gets the OK
        once it is sent, and the target keeps its connection."""
        conn, server = self.first_backend(self.client, "SELECT SLEEP(100)")
        killer = self.connect()
        killer.query(f"KILL QUERY {self.client.protocol.id}")
        side, side_server = self.side_connection()
        [kill] = side_server.received()
        self.assertEqual(kill.payload, make_query(f"KILL QUERY {conn.handshake.connection_id}"))
        self.assertEqual(killer.received(), [])
        side_server.send(vectors.PING_OK)
        [ok] = killer.received()
        self.assertEqual(ok.payload[0], 0)
        self.assertTrue(side.broken)  # closed once sent
        self.assertFalse(self.client.closed)

    def test_a_vanished_clients_statement_is_stopped_after_a_moment(self) -> None:
        """The client's socket closes mid-statement: its connection gets COM_QUIT (read only
        after the statement), and a statement still running a moment later is stopped with
        KILL QUERY over a connection of pyproxy's own."""
        conn, server = self.first_backend(self.client, "SELECT GET_LOCK('x', 3600)")
        self.client.protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual([packet.payload for packet in server.received()], [b"\x01"])  # COM_QUIT
        self.proxy.reactor.advance(0.5)
        self.assertEqual(self.proxy.reactor.tcpClients, [])
        self.proxy.reactor.advance(0.5)
        side, side_server = self.side_connection()
        [kill] = side_server.received()
        self.assertEqual(kill.payload, make_query(f"KILL QUERY {conn.handshake.connection_id}"))
        side_server.send(vectors.PING_OK)
        self.assertTrue(side.broken)

    def test_a_statement_that_ends_by_itself_costs_no_kill(self) -> None:
        """A statement that ends after its client vanished: the server closes the connection
        after the COM_QUIT, and nothing is killed."""
        conn, server = self.first_backend(self.client, SELECT)
        self.client.protocol.connectionLost(Failure(ConnectionError("gone")))
        server.send(vectors.SELECT_DEOF)
        conn.connectionLost(Failure(ConnectionError("server closed")))
        self.proxy.reactor.advance(5)
        self.assertEqual(self.proxy.reactor.tcpClients, [])

    def test_kill_connection_of_a_busy_client_waits_for_its_reply(self) -> None:
        """A client killed mid-statement gets its reply first, then is closed."""
        conn, server = self.first_backend(self.client, SELECT)
        killer = self.connect()
        killer.query(f"KILL {self.client.protocol.id}")
        side, side_server = self.side_connection()
        side_server.received()
        side_server.send(vectors.PING_OK)
        self.assertFalse(self.client.closed)
        server.send(vectors.SELECT_DEOF)
        self.assertEqual(self.client.raw(), vectors.SELECT_DEOF)
        self.assertTrue(self.client.closed)


class KillDuringLoginTests(LoggedIn):
    """A same-user connection still logging in is closed by KILL, never logged in."""

    def test_kill_while_an_auth_switch_awaits_its_reply(self) -> None:
        """The client named the user and was asked to switch plugins: KILL closes it
        at once, and its late reply logs nobody in."""
        victim = FakeClient(self.proxy)
        victim.send(make_handshake_response41(HandshakeResponse41(
            CLIENT_CAPS, 0, 45, "app", b"\x01" * 20, None, "dialog")), seq=1)
        [switch] = victim.received()
        self.assertEqual(switch.payload[0], 0xFE)
        killer = self.connect()
        killer.query(f"KILL {victim.protocol.id}")
        [ok] = killer.received()
        self.assertEqual(ok.payload[0], 0)
        self.assertTrue(victim.closed)
        self.assertEqual(victim.protocol.closed_reason, "killed")
        victim.send(auth.native_proof(b"secret", victim.greeting.auth_data), seq=3)
        self.assertEqual(victim.received(), [])
        self.assertIsNone(victim.protocol.session)

    def test_kill_while_the_login_schema_is_checked(self) -> None:
        """The login named a schema pyproxy checks on a borrowed connection: KILL
        closes the client without the login's OK, and the connection goes back."""
        victim = FakeClient(self.proxy)
        victim.login(database="app")
        conn, server = self.backends.open()
        [init_db] = server.received()
        self.assertEqual(init_db.payload, make_init_db("app"))
        killer = self.connect()
        killer.query(f"KILL {victim.protocol.id}")
        [ok] = killer.received()
        self.assertEqual(ok.payload[0], 0)
        self.assertFalse(victim.closed)
        server.send(vectors.INIT_DB_OK)
        self.assertEqual(victim.received(), [])
        self.assertTrue(victim.closed)
        victim.protocol.connectionLost()
        self.assertIn(conn, self.pool.idle)


class QueryTimeoutTests(LoggedIn):
    def setUp(self) -> None:
        self.proxy, self.backends = make_proxy(2, proxy={"max_packet_size": 4096, "handshake_timeout": 5,
                                                         "query_timeout": 2})
        self.pool = self.proxy.pool("app")
        self.client = self.connect()

    def test_a_statement_past_the_timeout_is_killed(self) -> None:
        """A statement still running after query_timeout is stopped with KILL QUERY
        on its backend thread; its client gets the server's error for it."""
        conn, server = self.first_backend(self.client, "SELECT SLEEP(100)")
        self.proxy.reactor.advance(2)
        side, side_server = self.side_connection()
        [kill] = side_server.received()
        self.assertEqual(kill.payload, make_query(f"KILL QUERY {conn.handshake.connection_id}"))
        side_server.send(vectors.PING_OK)
        server.send(frame(make_err(1317, "70100", "Query execution was interrupted"), 1))
        self.assertEqual(err_of(self.client.received()[0]), (1, 1317, "70100"))
        self.assertFalse(self.client.closed)

    def test_a_statement_done_in_time_is_not(self) -> None:
        conn, server = self.first_backend(self.client, SELECT)
        server.send(vectors.SELECT_DEOF)
        self.client.raw()
        self.proxy.reactor.advance(2)
        self.assertEqual(self.proxy.reactor.tcpClients, [])
