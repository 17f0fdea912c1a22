"""pyproxy.backend_loss: a backend connection dies under a client, over fake transports.

During a command the client gets 2013 (1927 for libmariadb) after what it
was sent of the reply, or is closed when nothing can follow; a pinned
session is closed.  A transaction the server rolled back makes every
statement but ROLLBACK fail with 9002 until the client says ROLLBACK; a
COMMIT, DDL or CALL lost in flight is reported as of unknown outcome.
"""

from __future__ import annotations

from twisted.python.failure import Failure

import vectors
from pyproxy import auth
from pyproxy.backend import BackendConnection
from pyproxy.backend_loss import ROLLBACK
from pyproxy.prepared import PreparedStatements
from pyproxy.statements import ClientStatement
from pyproxy.wire.commands import make_query
from pyproxy.wire.constants import COM_RESET_CONNECTION, COMMAND
from pyproxy.wire.handshake import HandshakeResponse41, make_handshake_response41
from test_backend import FakeServer
from test_frontend import CLIENT_CAPS, SELECT, FakeClient, LoggedIn, err_of


class LostDuringCommandTests(LoggedIn):
    def test_backend_lost_before_reply(self) -> None:
        """A backend lost before any reply byte gives 2013 at seq 1; the next command gets a new backend."""
        conn, server = self.first_backend(self.client, SELECT)
        conn.connectionLost(Failure(ConnectionError("reset")))
        self.assertEqual(err_of(self.client.received()[0]), (1, 2013, "HY000"))
        self.assertFalse(self.client.closed)
        self.assertEqual(self.pool.size(), 0)
        self.client.query(SELECT)
        conn2, server2 = self.backends.open()
        self.assertEqual(server2.received()[0].payload, make_query(SELECT))

    def test_backend_lost_told_to_libmariadb_as_1927(self) -> None:
        """libmariadb reads a client code (2013) in a server's ERR as a malformed reply
        (2027), so its clients get 1927 (connection killed) naming 2013 instead."""
        client = FakeClient(self.proxy)
        proof = auth.native_proof(b"secret", client.greeting.auth_data)
        client.send(make_handshake_response41(HandshakeResponse41(
            CLIENT_CAPS, 1 << 24, 45, "app", proof, None, auth.NATIVE,
            {"_client_name": "libmariadb", "_client_version": "3.3.20"})), seq=1)
        client.received()
        conn, server = self.first_backend(client, SELECT)
        conn.connectionLost(Failure(ConnectionError("reset")))
        [err] = client.received()
        self.assertEqual(err_of(err), (1, 1927, "70100"))
        self.assertIn(b"(client error 2013)", err.payload)
        self.assertFalse(client.closed)

    def test_backend_lost_between_packets(self) -> None:
        """A backend lost between two packets of a reply: 2013 follows the packets already sent."""
        conn, server = self.first_backend(self.client, SELECT)
        server.send(vectors.SELECT_DEOF[:40])  # column count and the first definition
        conn.connectionLost(Failure(ConnectionError("reset")))
        packets = self.client.received()
        self.assertEqual([p.seq for p in packets], [1, 2, 3])
        self.assertEqual(err_of(packets[-1]), (3, 2013, "HY000"))
        self.assertFalse(self.client.closed)
        self.assertEqual(self.pool.size(), 0)

    def test_backend_lost_mid_packet(self) -> None:
        """A backend lost inside a packet already partly sent: no ERR can follow, the client is disconnected."""
        conn, server = self.first_backend(self.client, SELECT)
        server.send(vectors.SELECT_DEOF[:30])
        self.assertTrue(conn.tracker.mid_packet())
        conn.connectionLost(Failure(ConnectionError("reset")))
        self.assertTrue(self.client.closed)

    def test_pinned_ping_on_dead_backend_answers(self) -> None:
        """COM_PING from a pinned client whose backend died gets an error and a close, not a hang."""
        conn, server = self.first_backend(self.client, "SET @x = 1")
        server.send(vectors.USER_VARIABLE_OK)
        self.client.raw()
        self.assertTrue(self.client.protocol.commands.pinned)
        conn.connectionLost(Failure(ConnectionError("gone")))
        self.client.send(b"\x0e")
        [err] = self.client.received()
        self.assertEqual(err_of(err)[1], 2013)
        self.assertTrue(self.client.closed)


class LostTransactionTests(LoggedIn):
    max_connections = 1

    def in_transaction(self) -> tuple[BackendConnection, FakeServer]:
        conn, server = self.first_backend(self.client, "BEGIN")
        server.send(vectors.BEGIN_OK)
        self.client.raw()
        return conn, server

    def refused_until_rollback(self) -> None:
        """After a lost transaction: statements get 9002 until ROLLBACK, which runs."""
        for sql in ("UPDATE t SET v = 1", "COMMIT"):
            self.client.query(sql)
            self.assertEqual(err_of(self.client.received()[0]), (1, 9002, "40000"))
        self.client.send(bytes((COMMAND.COM_STMT_EXECUTE,)) + b"\x01\x00\x00\x00\x00\x01\x00\x00\x00")
        self.assertEqual(err_of(self.client.received()[0])[1], 9002)
        self.assertEqual(self.backends.waiting, [])
        self.client.query("ROLLBACK")
        conn, server = self.backends.open()
        self.assertEqual(server.received()[0].payload, make_query("ROLLBACK"))
        server.send(vectors.COMMIT_OK)
        self.assertEqual(self.client.raw(), vectors.COMMIT_OK)
        self.client.query(SELECT)
        self.assertEqual(server.received()[0].payload, make_query(SELECT))
        self.assertFalse(self.client.closed)

    def test_transaction_lost_mid_statement(self) -> None:
        """The backend dies under a statement of an open transaction: 2013 saying the
        transaction was rolled back; the session goes on, but only after a ROLLBACK."""
        conn, server = self.in_transaction()
        self.client.query("UPDATE t SET v = 2")
        server.received()
        conn.connectionLost(Failure(ConnectionError("reset")))
        [err] = self.client.received()
        self.assertEqual(err_of(err), (1, 2013, "HY000"))
        self.assertIn(b"the transaction was rolled back", err.payload)
        self.assertFalse(self.client.closed)
        self.refused_until_rollback()

    def test_transaction_lost_while_idle(self) -> None:
        """The backend holding an idle client's transaction dies: its COMMIT gets 2013
        (never an OK for a transaction the server rolled back)."""
        conn, server = self.in_transaction()
        conn.connectionLost(Failure(ConnectionError("reset")))
        self.client.query("COMMIT")
        [err] = self.client.received()
        self.assertEqual(err_of(err)[1:], (2013, "HY000"))
        self.assertIn(b"the transaction was rolled back", err.payload)
        self.assertFalse(self.client.closed)
        self.refused_until_rollback()

    def test_rollback_after_idle_loss_just_runs(self) -> None:
        conn, server = self.in_transaction()
        conn.connectionLost(Failure(ConnectionError("reset")))
        self.client.query("rollback work")
        conn2, server2 = self.backends.open()
        self.assertEqual(server2.received()[0].payload, make_query("rollback work"))
        server2.send(vectors.COMMIT_OK)
        self.assertEqual(self.client.raw(), vectors.COMMIT_OK)

    def test_commit_lost_in_flight_is_of_unknown_outcome(self) -> None:
        """COMMIT sent, connection gone before its OK: the server may have committed.
        The client is told the outcome is unknown and is not asked for a ROLLBACK."""
        for sql in ("COMMIT", "CREATE TABLE x (a INT)"):  # DDL commits implicitly
            conn, server = self.in_transaction()
            self.client.query(sql)
            server.received()
            conn.connectionLost(Failure(ConnectionError("reset")))
            [err] = self.client.received()
            self.assertEqual(err_of(err)[1], 2013)
            self.assertIn(b"whether the transaction was committed is unknown", err.payload)
            self.assertFalse(self.client.protocol.commands.lost_transaction)

    def test_rollback_lost_in_flight_needs_no_second_rollback(self) -> None:
        conn, server = self.in_transaction()
        self.client.query("ROLLBACK")
        server.received()
        conn.connectionLost(Failure(ConnectionError("reset")))
        self.assertIn(b"the transaction was rolled back", self.client.received()[0].payload)
        self.client.query(SELECT)
        self.backends.open()
        self.assertEqual(self.client.received(), [])  # sent on, not refused

    def test_set_transaction_lost_fails_the_next_statement_only(self) -> None:
        """SET TRANSACTION in autocommit mode, then the held connection dies: the next
        statement is refused (it would run without the isolation level asked for), the
        one after runs."""
        conn, server = self.first_backend(self.client, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        server.send(vectors.SET_TRANSACTION_TRACKED_OK)
        self.client.raw()
        self.assertIs(self.client.protocol.commands.backend, conn)
        conn.connectionLost(Failure(ConnectionError("reset")))
        self.client.query(SELECT)
        [err] = self.client.received()
        self.assertEqual(err_of(err)[1], 2013)
        self.assertIn(b"SET TRANSACTION", err.payload)
        self.client.query(SELECT)
        self.backends.open()
        self.assertEqual(self.client.received(), [])

    def test_prepared_rollback_ends_the_refusal(self) -> None:
        conn, server = self.in_transaction()
        statements = self.client.protocol.commands.statements = PreparedStatements(self.client.protocol.commands)
        statements.by_id = {7: ClientStatement(7, b"ROLLBACK", 0, 0)}
        self.client.query("UPDATE t SET v = 2")
        conn.connectionLost(Failure(ConnectionError("reset")))
        self.client.received()
        self.client.send(bytes((COMMAND.COM_STMT_EXECUTE,)) + (7).to_bytes(4, "little") + b"\x00\x01\x00\x00\x00")
        self.assertFalse(self.client.protocol.commands.lost_transaction)

    def test_reset_connection_ends_the_refusal(self) -> None:
        conn, server = self.in_transaction()
        self.client.query("UPDATE t SET v = 2")
        conn.connectionLost(Failure(ConnectionError("reset")))
        self.client.received()
        self.client.send(bytes((COM_RESET_CONNECTION,)))
        self.assertEqual(self.client.received()[0].payload[0], 0)
        self.client.query(SELECT)
        self.backends.open()
        self.assertEqual(self.client.received(), [])  # sent on, not refused


def test_rollback_pattern() -> None:
    """What ends the refusal after a lost transaction: a ROLLBACK of the whole transaction."""
    for sql in (b"ROLLBACK", b"rollback;", b" Rollback Work ", b"ROLLBACK AND NO CHAIN NO RELEASE",
                b"rollback and chain", b"ROLLBACK RELEASE"):
        assert ROLLBACK.match(sql), sql
    for sql in (b"ROLLBACK TO SAVEPOINT a", b"rollback to a", b"ROLLBACK WORK TO a", b"COMMIT",
                b"ROLLBACK; DELETE FROM t", b"rollbacks"):
        assert not ROLLBACK.match(sql), sql
