"""pyproxy.command_phase: commands of logged-in clients over fake transports.

A command goes client -> dispatch -> pool -> backend -> reply -> client with
every byte visible: relayed byte for byte, the connection held while a
transaction is open and given back after, shared between clients, and
routed to the writer or, for the read-only listener, a reader.
"""

from __future__ import annotations

import attrs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import vectors
from pyproxy.backend import BackendConnection, BackendError
from pyproxy.frontend import FrontendFactory
from pyproxy.pool import Pool
from pyproxy.wire.commands import make_init_db, make_query, make_set_option
from pyproxy.wire.constants import (
    CLIENT,
    COM_RESET_CONNECTION,
    MYSQL_OPTION_MULTI_STATEMENTS_OFF,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_IN_TRANS,
)
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.handshake import parse_handshake_v10
from pyproxy.wire.responses import make_err, make_ok, make_ok_tracked, parse_ok
from test_backend import FakeServer, FakeTransport
from test_frontend import CLIENT_CAPS, SELECT, Backends, FakeClient, LoggedIn, err_of, make_proxy
from test_prepared import EXECUTE_BOUND, PREPARED_SQL, value_reply


class RoundTripTests(LoggedIn):
    def test_empty_command_packet(self) -> None:
        """An empty command packet gets 1047, as from a server, and the session goes on."""
        self.client.send(b"")
        self.assertEqual(err_of(self.client.received()[0])[1:], (1047, "08S01"))
        self.assertFalse(self.client.closed)

    def test_select_round_trip(self) -> None:
        """A SELECT is relayed through a borrowed backend byte for byte, and the backend goes back."""
        conn, server = self.first_backend(self.client, SELECT)
        self.assertEqual(self.pool.lent, {conn})
        server.send(vectors.SELECT_DEOF, pieces=4)
        self.assertEqual(self.client.raw(), vectors.SELECT_DEOF)
        self.assertEqual(self.pool.idle, [conn])
        self.assertIsNone(self.client.protocol.commands.backend)
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
        self.assertTrue(self.client.protocol.commands.session.state.autocommit)  # type: ignore[union-attr]
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
        self.assertIs(self.client.protocol.commands.backend, conn)
        self.assertEqual(self.pool.idle, [])
        self.client.query(SELECT)
        [command] = server.received()
        self.assertEqual(command.payload, make_query(SELECT))
        in_trans = SERVER_STATUS_AUTOCOMMIT | SERVER_STATUS_IN_TRANS
        server.send(vectors.SELECT_DEOF[:-11] + frame(make_ok(in_trans, header=0xFE), 6))
        self.assertIs(self.client.protocol.commands.backend, conn)
        self.client.raw()
        self.client.query("COMMIT")
        server.received()
        server.send(vectors.COMMIT_OK)
        self.assertEqual(self.client.raw(), vectors.COMMIT_OK)
        self.assertIsNone(self.client.protocol.commands.backend)
        self.assertEqual(self.pool.idle, [conn])

    def test_user_variable_pins(self) -> None:
        """SET @x=1 pins the client to its backend.  Its OK was tracked with pyproxy's
        settings, so the client sees what its own (default) settings show: nothing.
        Before the next command the connection gets the client's own tracking
        settings; from then on OKs reach the client unchanged."""
        conn, server = self.first_backend(self.client, "SET @x=1")
        server.send(vectors.USER_VARIABLE_OK)
        self.assertEqual(self.client.raw(), frame(make_ok_tracked(SERVER_STATUS_AUTOCOMMIT), 1))
        self.assertTrue(self.client.protocol.commands.pinned)
        self.assertIs(self.client.protocol.commands.backend, conn)
        self.client.send(b"\x0e")  # a pinned client's ping goes to its backend
        [restore] = server.received()
        self.assertEqual(restore.payload, make_query(
            "SET SESSION session_track_system_variables=_utf8mb4'autocommit,character_set_client,"
            "character_set_connection,character_set_results,time_zone', session_track_schema=_utf8mb4'ON', "
            "session_track_state_change=_utf8mb4'OFF', session_track_transaction_info=_utf8mb4'OFF'"))
        server.send(vectors.PING_OK)
        self.assertEqual(server.received()[0].payload, b"\x0e")
        server.send(vectors.PING_OK)
        self.assertEqual(self.client.raw(), vectors.PING_OK)
        self.client.query("SET @y=2")
        server.received()
        server.send(vectors.USER_VARIABLE_OK)  # whatever the server now reports is the client's
        self.assertEqual(self.client.raw(), vectors.USER_VARIABLE_OK)

    def test_no_tracking_restore_right_before_row_count(self) -> None:
        """ROW_COUNT() reads the statement before it: pyproxy's own SET of the client's
        tracking settings waits until a statement that does not read it."""
        conn, server = self.first_backend(self.client, "DELETE FROM t")
        server.send(frame(make_ok_tracked(SERVER_STATUS_AUTOCOMMIT, affected_rows=4), 1))
        self.client.raw()
        for sql in ("SELECT ROW_COUNT()", "select found_rows ( )"):
            self.client.query(sql)
            [command] = server.received()
            self.assertEqual(command.payload, make_query(sql))
            server.send(vectors.SELECT_DEOF)
            self.client.raw()
            self.assertTrue(self.client.protocol.commands.pinned)
        self.client.query("SELECT 1")
        [restore] = server.received()
        self.assertTrue(restore.payload.startswith(b"\x03SET SESSION session_track_system_variables="))

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
        session = client.protocol.commands.session
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


class TwoServers(SynchronousTestCase):
    """Two servers, a writer and another (role auto) read-only, each with its pool."""

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



class RoutingTests(TwoServers):
    """Writer traffic follows the elected writer, the read-only listener's sessions
    go to the reader."""

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
        """A write refused as read-only (1290) makes every target's probe run at once,
        also when the client gets the error (in a transaction, never run again)."""
        probed = []
        self.proxy.topology.suspect = lambda *targets: probed.append(targets)  # type: ignore[method-assign]
        client = self.connect()
        client.query("BEGIN")
        _, server = self.writer_backends.open()
        server.received()
        server.send(vectors.BEGIN_OK)
        client.raw()
        client.query("INSERT INTO t VALUES (1)")
        server.received()
        server.send(READ_ONLY_ERR)
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
        writer moves: the client's own retries of a refused write must reach the new
        writer.  (A multi-statement whose second statement was refused: the first
        ran, so pyproxy never runs it again itself.)"""
        client = self.connect()
        client.query("DO 1; INSERT INTO t VALUES (1)")
        old, server = self.writer_backends.open()
        server.received()
        server.send(frame(make_ok(SERVER_STATUS_AUTOCOMMIT | SERVER_MORE_RESULTS_EXISTS), 1)
                    + frame(make_err(1290, "HY000", READ_ONLY_MESSAGE), 2))
        [ok, err] = client.received()
        self.assertEqual(err_of(err)[1], 1290)
        self.assertIs(client.protocol.commands.backend, old)  # held for a follow-up
        self.failover()
        conn, _ = self.select(client, self.reader_backends)
        self.assertIs(conn.pool.target, self.reader)
        self.assertEqual(self.proxy.pool("app", self.writer).idle, [old])

    def test_hold_given_up_at_failover_reads_back_last_insert_id(self) -> None:
        """A connection held for a follow-up and given up at a failover goes back like
        any other: LAST_INSERT_ID() is read back first when the OK's insert id may not
        be it (here an explicitly inserted id, 100), and the client's next statement,
        on the new writer, sees what its own statements left there (7), not 100."""
        client = self.connect()
        client.query("INSERT INTO t (id) VALUES (100)")
        old, server = self.writer_backends.open()
        server.received()
        server.send(frame(make_ok(SERVER_STATUS_AUTOCOMMIT, affected_rows=1, last_insert_id=100), 1))
        client.raw()
        commands = client.protocol.commands
        self.assertIs(commands.backend, old)  # held for a follow-up (ROW_COUNT())
        self.assertIsNone(old.last_insert_id)
        self.failover()
        client.query("SELECT LAST_INSERT_ID()")
        [read_back] = server.received()
        self.assertEqual(read_back.payload, make_query("SELECT LAST_INSERT_ID()"))
        self.assertEqual(self.reader_backends.waiting, [])  # the statement waits for the read
        server.send(value_reply(b"7"))
        self.assertEqual(commands.session.last_insert_id, 7)
        self.assertEqual(self.proxy.pool("app", self.writer).idle, [old])
        conn, new_server = self.reader_backends.open()
        sent = new_server.transport.value()
        self.assertEqual(sent, frame(make_query("SET SESSION last_insert_id=7"), 0)
                         + frame(make_query("SELECT LAST_INSERT_ID()"), 0))
        self.assertIs(conn.pool.target, self.reader)

    def test_hold_given_up_at_failover_without_insert_id_goes_back_at_once(self) -> None:
        """Nothing to read back: the held connection goes back and the statement runs on
        the new writer straight away."""
        client = self.connect()
        client.query("UPDATE t SET v = 1")
        old, server = self.writer_backends.open()
        server.received()
        server.send(frame(make_ok(SERVER_STATUS_AUTOCOMMIT, affected_rows=1), 1))
        client.raw()
        self.failover()
        conn, _ = self.select(client, self.reader_backends)
        self.assertEqual(server.received(), [])
        self.assertEqual(self.proxy.pool("app", self.writer).idle, [old])


READ_ONLY_MESSAGE = ("The MariaDB server is running with the --read-only option so it cannot "
                     "execute this statement")
READ_ONLY_ERR = frame(make_err(1290, "HY000", READ_ONLY_MESSAGE), 1)


class RefusedWriteTests(TwoServers):
    """A write refused by a writer turned read-only runs again on the new writer when
    it ran nothing and nothing lives on its connection (pyproxy.write_retry)."""

    def refused(self, client: FakeClient, sql: str, err: bytes = READ_ONLY_ERR
                ) -> tuple[BackendConnection, FakeServer]:
        client.query(sql)
        old, server = self.writer_backends.open()
        self.assertEqual(server.received()[0].payload, make_query(sql))
        server.send(err)
        return old, server

    def test_autocommit_write_runs_again_on_the_new_writer(self) -> None:
        """The client sees no error: its INSERT waits for the failover, then runs on the
        new writer, and its reply is the new writer's, at the sequence id expected."""
        client = self.connect()
        old, server = self.refused(client, "INSERT INTO t VALUES (1)")
        self.assertEqual(client.raw(), b"")  # held back
        self.assertEqual(self.proxy.pool("app", self.writer).idle, [old])
        self.failover()
        conn, new_server = self.reader_backends.open()
        self.assertEqual(new_server.received()[0].payload, make_query("INSERT INTO t VALUES (1)"))
        ok = frame(make_ok(SERVER_STATUS_AUTOCOMMIT, affected_rows=1), 1)
        new_server.send(ok)
        self.assertEqual(client.raw(), ok)
        self.assertIs(conn.pool.target, self.reader)
        self.assertEqual(self.proxy.writes_retried, 1)
        self.assertEqual(server.received(), [])  # nothing more on the old writer
        self.assertFalse(client.closed)

    def test_1836_runs_again_too(self) -> None:
        client = self.connect()
        self.refused(client, "DELETE FROM t", frame(make_err(1836, "HY000", "Running in read-only mode"), 1))
        self.assertEqual(client.raw(), b"")
        self.failover()
        _, new_server = self.reader_backends.open()
        self.assertEqual(new_server.received()[0].payload, make_query("DELETE FROM t"))

    def test_failover_seen_already_runs_at_once(self) -> None:
        """The write reached the old writer just before pyproxy saw the failover: it
        runs on the new writer without waiting."""
        client = self.connect()
        client.query("INSERT INTO t VALUES (1)")
        _, server = self.writer_backends.open()
        server.received()
        self.failover()
        server.send(READ_ONLY_ERR)
        _, new_server = self.reader_backends.open()
        self.assertEqual(new_server.received()[0].payload, make_query("INSERT INTO t VALUES (1)"))

    def test_refusal_stands_after_borrow_timeout(self) -> None:
        """No writer within borrow_timeout: the client gets the server's error as it came,
        and the session goes on."""
        client = self.connect()
        _, server = self.refused(client, "INSERT INTO t VALUES (1)")
        self.proxy.reactor.advance(2.9)
        self.assertEqual(client.raw(), b"")
        self.proxy.reactor.advance(0.2)
        self.assertEqual(client.raw(), READ_ONLY_ERR)
        self.assertEqual(self.proxy.topology._writer_waits, [])
        self.select(client, self.writer_backends, server)

    def test_same_server_writable_again_runs_there(self) -> None:
        """A probe begun after the refusal finds the writer writable again: the statement
        runs there once more (and a second refusal reaches the client)."""
        client = self.connect()
        old, server = self.refused(client, "INSERT INTO t VALUES (1)")
        topology = self.proxy.topology
        topology._answered("0", self.writer)  # a probe sent before the refusal: not enough
        self.assertEqual(server.received(), [])
        self.writer.probes += 1
        topology._answered("0", self.writer)
        self.assertEqual(server.received()[0].payload, make_query("INSERT INTO t VALUES (1)"))
        server.send(READ_ONLY_ERR)
        self.assertEqual(err_of(client.received()[0])[1], 1290)
        self.assertEqual(self.proxy.writes_retried, 1)

    def test_only_writer_read_only_gives_up_at_once(self) -> None:
        """Nothing else may take writes (the other server is a reader) and a probe finds
        the writer read-only: no use waiting, the client gets the error."""
        self.reader.config = attrs.evolve(self.reader.config, role="reader")
        client = self.connect()
        self.refused(client, "INSERT INTO t VALUES (1)")
        self.writer.probes += 1
        self.proxy.topology.running = True  # so that the answer counts (no probe is sent)
        self.proxy.topology._answered("1", self.writer)
        self.assertEqual(client.raw(), READ_ONLY_ERR)

    def not_run_again(self, client: FakeClient, sql: str, err: bytes = READ_ONLY_ERR,
                      server: FakeServer | None = None) -> None:
        client.query(sql)
        if server is None:
            _, server = self.writer_backends.open()
        self.assertEqual(server.received()[0].payload, make_query(sql))
        server.send(err)
        self.assertEqual(client.raw(), err)
        self.assertEqual(self.proxy.writes_retried, 0)

    def test_never_in_a_transaction(self) -> None:
        client = self.connect()
        client.query("BEGIN")
        _, server = self.writer_backends.open()
        server.received()
        server.send(vectors.BEGIN_OK)
        client.raw()
        self.not_run_again(client, "INSERT INTO t VALUES (1)", server=server)

    def test_never_with_autocommit_off(self) -> None:
        client = self.connect()
        client.query("SET autocommit=0")
        _, server = self.writer_backends.open()
        server.received()
        server.send(frame(make_ok(0), 1))
        client.raw()
        self.assertFalse(client.protocol.commands.session.state.autocommit)
        self.not_run_again(client, "INSERT INTO t VALUES (1)", server=server)

    def test_never_on_the_read_only_listener(self) -> None:
        """A read-only listener's session writing to its reader gets the reader's
        refusal: that is no failover."""
        client = self.connect(readonly=True)
        client.query("INSERT INTO t VALUES (1)")
        _, server = self.reader_backends.open()
        server.received()
        server.send(READ_ONLY_ERR)
        self.assertEqual(client.raw(), READ_ONLY_ERR)
        self.assertEqual(self.proxy.writes_retried, 0)

    def test_never_a_call(self) -> None:
        self.not_run_again(self.connect(), "CALL app.p()")

    def test_never_for_another_option(self) -> None:
        """1290 for --secure-file-priv is not a failover."""
        self.not_run_again(self.connect(), "SELECT 1 INTO OUTFILE '/x'", frame(make_err(
            1290, "HY000", "The MariaDB server is running with the --secure-file-priv option so it "
            "cannot execute this statement"), 1))

    def test_client_leaving_while_waiting(self) -> None:
        client = self.connect()
        self.refused(client, "INSERT INTO t VALUES (1)")
        client.protocol.connectionLost(Failure(ConnectionError("bye")))
        self.assertEqual(self.proxy.topology._writer_waits, [])
        self.failover()
        self.assertEqual(self.reader_backends.waiting, [])

    def test_kill_query_ends_the_wait(self) -> None:
        """KILL QUERY of a session whose write waits for a writer: the write never runs,
        the session gets its refusal, and goes on."""
        client = self.connect()
        self.refused(client, "INSERT INTO t VALUES (1)")
        killer = self.connect()
        killer.query(f"KILL QUERY {client.protocol.id}")
        self.assertEqual(killer.received()[0].payload[0], 0)
        self.assertEqual(client.raw(), READ_ONLY_ERR)
        self.assertEqual(self.proxy.topology._writer_waits, [])
        self.failover()
        self.assertEqual(self.reader_backends.waiting, [])
        self.assertFalse(client.closed)

    def test_kill_connection_ends_the_wait(self) -> None:
        client = self.connect()
        self.refused(client, "INSERT INTO t VALUES (1)")
        killer = self.connect()
        killer.query(f"KILL {client.protocol.id}")
        self.assertEqual(killer.received()[0].payload[0], 0)
        self.assertEqual(client.raw(), READ_ONLY_ERR)
        self.assertTrue(client.closed)

    def test_execute_prepared_again_on_the_new_writer(self) -> None:
        """A refused COM_STMT_EXECUTE runs on the new writer, its statement prepared
        there first and its long data sent again."""
        client = self.connect()
        client.send(b"\x16" + PREPARED_SQL)
        old, server = self.writer_backends.open()
        server.received()
        server.send(vectors.PREPARE_DEOF)
        client.raw()
        client.send(b"\x18\x01\x00\x00\x00\x00\x00long")  # COM_STMT_SEND_LONG_DATA, parameter 0
        client.send(EXECUTE_BOUND)
        [long_data, execute] = server.received()
        self.assertEqual(long_data.payload, b"\x18\x01\x00\x00\x00\x00\x00long")
        server.send(READ_ONLY_ERR)
        self.assertEqual(client.raw(), b"")
        self.failover()
        _, new_server = self.reader_backends.open()
        [prepare] = new_server.received()
        self.assertEqual(prepare.payload, b"\x16" + PREPARED_SQL)
        new_server.send(vectors.PREPARE_DEOF.replace(b"\x00\x01\x00\x00\x00", b"\x00\x05\x00\x00\x00", 1))
        [long_again, execute_again] = new_server.received()
        self.assertEqual(long_again.payload, b"\x18\x05\x00\x00\x00\x00\x00long")
        self.assertEqual(execute_again.payload[:5], b"\x17\x05\x00\x00\x00")
        self.assertEqual(execute_again.payload[5:], execute.payload[5:])
        new_server.send(vectors.EXECUTE_DEOF)
        self.assertEqual(client.raw(), vectors.EXECUTE_DEOF)


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
