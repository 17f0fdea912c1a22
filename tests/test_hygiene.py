"""pyproxy.hygiene: what a shared connection needs around a client's command, over fake transports."""

from __future__ import annotations

import vectors
from pyproxy.backend import BackendConnection
from pyproxy.session import tracking
from pyproxy.wire.commands import make_query
from pyproxy.wire.constants import COM_RESET_CONNECTION
from pyproxy.wire.framing import frame
from pyproxy.wire.responses import parse_ok
from test_backend import FakeServer
from test_frontend import SELECT, FakeClient, LoggedIn, err_of, expect_statements, ok_tracking


class UnreportedSetTests(LoggedIn):
    def test_bare_assignment_is_read_back_and_carried(self) -> None:
        """SET @@sql_mode = ... is not reported by the server: pyproxy assigns the
        variable its own value in a reported form right after the reply, so it is
        carried, and the next borrower of the connection gets it reset."""
        conn, server = self.first_backend(self.client, "SET @@sql_mode = 'ANSI_QUOTES'")
        server.send(vectors.COMMIT_OK)  # untracked: a plain OK
        [ok] = self.client.received()
        self.assertEqual(ok.payload[0], 0)
        [reread] = server.received()
        self.assertEqual(reread.payload, make_query("SET SESSION sql_mode = @@SESSION.sql_mode"))
        self.assertEqual(self.pool.lent, {conn})  # until pyproxy knows
        server.send(ok_tracking({"sql_mode": "ANSI_QUOTES"}))
        self.assertEqual(self.client.raw(), b"")
        self.assertEqual(self.client.protocol.commands.session.state.variables, (("sql_mode", "ANSI_QUOTES"),))
        self.assertEqual(self.pool.idle, [conn])
        self.assertFalse(self.client.protocol.commands.pinned)
        other = self.connect()
        other.query("SELECT 1")
        expect_statements(server, "SET SESSION sql_mode=DEFAULT", "SELECT 1")

    def test_pinned_session_reads_nothing_back(self) -> None:
        """A pinned session keeps its connection: no read-back is needed."""
        conn, server = self.first_backend(self.client, "SET @x = 1")
        server.send(vectors.USER_VARIABLE_OK)
        self.client.raw()
        self.client.query("SET @@sql_mode = ''")
        server.received()  # the client's tracking settings
        server.send(vectors.PING_OK)
        server.received()
        server.send(vectors.COMMIT_OK)
        self.client.raw()
        self.assertEqual(server.received(), [])


class ClientTrackingTests(LoggedIn):
    """A client sees the session tracking its own settings give it, never pyproxy's."""

    def test_client_sees_what_its_settings_show(self) -> None:
        """Tracking settings are read from each new connection: a server configured to
        report only character_set_connection shows the client only that."""
        self.client.query("SET NAMES latin1")
        conn, server = self.backends.open()
        conn.tracking = tracking("character_set_connection", "ON", "OFF", "OFF")
        server.received()
        server.send(vectors.SET_NAMES_OK)
        [ok] = self.client.received()
        self.assertEqual(parse_ok(ok.payload, True).changes.variables,
                         (("character_set_connection", "latin1"),))

    def test_reading_tracking_settings_pins_first(self) -> None:
        """A statement that reads (or sets) session_track_* pins the session, and its
        connection gets the client's settings before the statement runs, so that it
        reads those rather than pyproxy's."""
        self.client.query("SELECT @@session_track_system_variables")
        conn, server = self.backends.open()
        [restore] = server.received()
        self.assertTrue(restore.payload.startswith(b"\x03SET SESSION session_track_system_variables="))
        self.assertTrue(self.client.protocol.commands.pinned)
        self.assertEqual(self.proxy.pins["session_track_* variables read or set"], 1)
        server.send(vectors.PING_OK)
        [select] = server.received()
        self.assertEqual(select.payload, make_query("SELECT @@session_track_system_variables"))

    def test_tracking_the_client_set_itself_is_kept(self) -> None:
        """A tracking setting the client changed (inside a procedure, where pyproxy reads
        no text) is left as the client set it when the connection gets its settings."""
        conn, server = self.first_backend(self.client, "CALL set_tracking()")
        server.send(ok_tracking({"session_track_state_change": "ON"}))
        self.client.raw()
        self.assertTrue(self.client.protocol.commands.pinned)
        self.client.query("DO 1")
        [restore] = server.received()
        self.assertNotIn(b"session_track_state_change", restore.payload)
        self.assertIn(b"session_track_schema", restore.payload)


class HygieneTests(LoggedIn):
    """What a statement leaves in the server session that tracking does not report:
    warnings and errors (SHOW WARNINGS), LAST_INSERT_ID(), and what stored code does."""

    max_connections = 1
    HOLD = 1.0  # [session] hold_for_next_statement's default

    def used_by_first_client(self, sql: str, reply: bytes) -> tuple[BackendConnection, FakeServer]:
        conn, server = self.first_backend(self.client, sql)
        server.send(reply)
        self.client.raw()
        return conn, server

    def test_warnings_are_cleared_for_another_client_in_the_same_write(self) -> None:
        """A's warning stays for A's follow-up; once A gives the connection up, B's first
        statement goes out behind one SET that empties the diagnostics area, in the same
        write, and B sees only its own reply."""
        conn, server = self.used_by_first_client("SELECT CAST('x' AS INT) AS n", vectors.WARNING_SELECT_DEOF)
        self.assertIs(conn.diagnostics, self.client.protocol.commands.session)
        self.proxy.reactor.advance(self.HOLD)
        self.assertEqual(self.pool.idle, [conn])
        other = self.connect()
        other.query(SELECT)
        sent = server.transport.value()
        server.transport.clear()
        self.assertEqual(sent, frame(make_query(
            "SET SESSION last_insert_id=(SELECT 0 FROM (SELECT 1) AS pyproxy_clear)"), 0)
            + frame(make_query(SELECT), 0))
        server.send(vectors.CLEAR_DIAGNOSTICS_OK + vectors.SELECT_DEOF, pieces=7)
        self.assertEqual(other.raw(), vectors.SELECT_DEOF)
        self.assertIsNone(conn.diagnostics)
        self.assertEqual(self.pool.idle, [conn])

    def test_own_warnings_outlive_an_insert_id_set(self) -> None:
        """The SET that gives the client its LAST_INSERT_ID() back (without the derived
        table) leaves the client's own warnings on the connection: the next client still
        gets them cleared."""
        conn, server = self.used_by_first_client("SELECT CAST('x' AS INT) AS n", vectors.WARNING_SELECT_DEOF)
        session = self.client.protocol.commands.session
        conn.last_insert_id = 7  # as another statement on it left it
        self.client.query("SELECT LAST_INSERT_ID()")
        sent = server.transport.value()
        server.transport.clear()
        self.assertEqual(sent, frame(make_query("SET SESSION last_insert_id=0"), 0)
                         + frame(make_query("SELECT LAST_INSERT_ID()"), 0))
        self.assertIs(conn.diagnostics, session)
        server.send(vectors.CLEAR_DIAGNOSTICS_OK + vectors.SELECT_DEOF)
        self.client.raw()
        # LAST_INSERT_ID(expr) may have set it: read back before anyone else gets it.
        [read_back] = server.received()
        self.assertEqual(read_back.payload, make_query("SELECT LAST_INSERT_ID()"))
        server.send(vectors.LAST_INSERT_ID_ROWS)
        self.assertEqual(self.pool.idle, [conn])
        self.assertIs(conn.diagnostics, session)
        other = self.connect()
        other.query(SELECT)
        [clear, _] = server.received()
        self.assertEqual(clear.payload, make_query(
            "SET SESSION last_insert_id=(SELECT 1 FROM (SELECT 1) AS pyproxy_clear)"))

    def test_own_warnings_are_not_cleared(self) -> None:
        """The client that left the warnings gets its connection back as it is."""
        conn, server = self.used_by_first_client("SELECT CAST('x' AS INT) AS n", vectors.WARNING_SELECT_DEOF)
        self.proxy.reactor.advance(self.HOLD)
        self.client.query("SHOW WARNINGS")
        [command] = server.received()
        self.assertEqual(command.payload, make_query("SHOW WARNINGS"))

    def test_failed_hygiene_set_loses_the_connection_not_the_session(self) -> None:
        """If pyproxy's SET ahead of a command failed, the command behind it may have run in
        the wrong state: the connection is dropped and the client told it was lost."""
        conn, server = self.used_by_first_client("SELECT CAST('x' AS INT) AS n", vectors.WARNING_SELECT_DEOF)
        self.proxy.reactor.advance(self.HOLD)
        other = self.connect()
        other.query(SELECT)
        server.received()
        server.send(vectors.ERR_NO_TABLE)
        [err] = other.received()
        self.assertEqual(err_of(err)[1], 2013)
        self.assertTrue(conn.broken)
        self.assertFalse(other.closed)

    def test_insert_id_is_read_back_before_another_client_gets_the_connection(self) -> None:
        """An OK's insert id may be an explicitly given one, which LAST_INSERT_ID() does not
        return: before the connection goes back, the server is asked."""
        conn, server = self.used_by_first_client("INSERT INTO ai (v) VALUES (1)", vectors.INSERT_ID_OK)
        self.assertIsNone(conn.last_insert_id)
        self.proxy.reactor.advance(self.HOLD)
        [command] = server.received()
        self.assertEqual(command.payload, make_query("SELECT LAST_INSERT_ID()"))
        self.assertEqual(self.pool.idle, [])
        server.send(vectors.LAST_INSERT_ID_ROWS)
        self.assertEqual((conn.last_insert_id, self.client.protocol.commands.session.last_insert_id), (1, 1))
        self.assertEqual(self.pool.idle, [conn])

    def test_client_waits_for_the_read_back(self) -> None:
        """A command sent while the insert id is read back waits for it, then runs."""
        conn, server = self.used_by_first_client("INSERT INTO ai (v) VALUES (1)", vectors.INSERT_ID_OK)
        self.proxy.reactor.advance(self.HOLD)
        server.received()
        self.client.query(SELECT)
        self.assertEqual(server.received(), [])
        server.send(vectors.LAST_INSERT_ID_ROWS)
        [command] = server.received()
        self.assertEqual(command.payload, make_query(SELECT))

    def insert_id_left(self) -> tuple[BackendConnection, FakeServer, FakeClient]:
        conn, server = self.used_by_first_client("INSERT INTO ai (v) VALUES (1)", vectors.INSERT_ID_OK)
        self.proxy.reactor.advance(self.HOLD)
        server.received()
        server.send(vectors.LAST_INSERT_ID_ROWS)
        return conn, server, self.connect()

    def another_clients_insert_id_is_replaced(self, sql: str, read_back: bool = True) -> None:
        """B's statement may read or set LAST_INSERT_ID() (through a procedure, @@identity,
        the function, an INSERT) on a connection where A's stands: B's own (0) is set
        first, in the same write, so that the value after it is B's whatever it did."""
        conn, server, other = self.insert_id_left()
        other.query(sql)
        sent = server.transport.value()
        server.transport.clear()
        self.assertEqual(sent, frame(make_query("SET SESSION last_insert_id=0"), 0) + frame(make_query(sql), 0))
        server.send(vectors.COMMIT_OK + vectors.COMMIT_OK)
        self.assertEqual(other.raw(), vectors.COMMIT_OK)
        if read_back:  # the statement may have set it: the server says to what
            [command] = server.received()
            self.assertEqual(command.payload, make_query("SELECT LAST_INSERT_ID()"))

    def test_insert_id_replaced_for_the_function(self) -> None:
        self.another_clients_insert_id_is_replaced("SELECT LAST_INSERT_ID()")

    def test_insert_id_replaced_for_identity(self) -> None:
        self.another_clients_insert_id_is_replaced("SELECT @@identity")

    def test_insert_id_replaced_for_a_call(self) -> None:
        self.another_clients_insert_id_is_replaced("CALL p()", read_back=False)  # unknown code: pinned

    def test_insert_id_replaced_for_an_insert(self) -> None:
        self.another_clients_insert_id_is_replaced("INSERT INTO ai (v) VALUES (2)", read_back=False)

    def test_statements_that_cannot_touch_the_insert_id_run_as_they_are(self) -> None:
        conn, server, other = self.insert_id_left()
        other.query(SELECT)
        [command] = server.received()
        self.assertEqual(command.payload, make_query(SELECT))

    def test_stored_code_the_catalog_calls_unclean_pins(self) -> None:
        """A CALL of a procedure that takes a named lock, or a statement naming such a
        function, keeps the connection with the client (reset when it leaves); a clean
        one does not."""
        self.proxy.catalog("app").load([
            ("app", "locks", "PROCEDURE", "BEGIN DO GET_LOCK('x', 0); END"),
            ("app", "plain", "PROCEDURE", "BEGIN UPDATE t SET a = 1; END"),
            ("app", "flock", "FUNCTION", "RETURN GET_LOCK('x', 0)")])
        conn, server = self.first_backend(self.client, "CALL app.plain()")
        server.send(vectors.COMMIT_OK)
        self.assertIsNone(self.client.protocol.commands.session.pin_reason)
        [read_back] = server.received()  # a CALL may set LAST_INSERT_ID()
        server.send(vectors.LAST_INSERT_ID_ROWS)
        for sql, routine in (("CALL app.locks()", "app.locks"), ("SELECT flock()", "app.flock")):
            client = self.connect()
            client.query(sql)
            self.assertEqual(server.received()[-1].payload, make_query(sql))
            if routine == "app.locks":
                server.send(vectors.COMMIT_OK)  # the SET of the client's LAST_INSERT_ID() ahead of it
            server.send(vectors.COMMIT_OK)
            self.assertEqual(client.protocol.commands.session.pin_reason,
                             f"stored code that may leave state behind (GET_LOCK in {routine})")
            self.assertIs(client.protocol.commands.backend, conn)
            client.protocol.connectionLost()
            [reset] = server.received()
            self.assertEqual(reset.payload, bytes((COM_RESET_CONNECTION,)))
            server.send(vectors.PING_OK)
            server.received()
            server.send(vectors.SESSION_SETUP)
        self.assertEqual(self.proxy.resets, 2)

    def test_statements_wait_for_a_stale_catalog(self) -> None:
        """After DDL on stored code, the next statement waits until the catalog is read again."""
        conn, server = self.first_backend(self.client, "CREATE OR REPLACE PROCEDURE p() SELECT 1")
        server.send(vectors.COMMIT_OK)
        self.client.raw()
        catalog = self.proxy.catalog("app")
        self.assertTrue(catalog.stale)
        catalog.loading = []  # a read under way: the statement joins it
        self.client.query(SELECT)
        self.assertEqual(server.received(), [])
        [waiter] = catalog.loading
        catalog.loading = None
        catalog.load([])
        waiter.callback(catalog)
        [command] = server.received()
        self.assertEqual(command.payload, make_query(SELECT))
