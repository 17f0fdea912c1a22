"""pyproxy.set_global: SET GLOBAL changes what new sessions start from, never existing ones."""

from __future__ import annotations

from twisted.python.failure import Failure

import vectors
from pyproxy.session import DEFAULT_TRACKING, tracking
from pyproxy.wire.commands import make_query
from pyproxy.wire.framing import frame
from pyproxy.wire.responses import make_err, parse_ok
from test_frontend import LoggedIn, err_of, expect_statements, rows_reply


class GlobalVariablesTests(LoggedIn):
    """SET GLOBAL changes what new server sessions start from, never existing ones."""

    def test_sessions_keep_their_defaults_across_set_global(self) -> None:
        """The globals are read over pyproxy's own connection before and after the
        statement; a session that began before keeps the old value of each session
        default that changed (global-only ones are refused a session SET and left out),
        a session that begins after gets the new one, and pooled connections are replaced."""
        earlier = self.connect()
        sql = "SET GLOBAL auto_increment_increment = 10, max_connections = 200"
        self.client.query(sql)
        side, side_server = self.side_connection()
        [show] = side_server.received()
        self.assertEqual(show.payload, make_query("SHOW GLOBAL VARIABLES"))
        side_server.send(rows_reply([("auto_increment_increment", "1"), ("max_connections", "151")]))
        conn, server = self.backends.open()
        [command] = server.received()
        self.assertEqual(command.payload, make_query(sql))
        server.send(vectors.COMMIT_OK)
        [ok] = self.client.received()
        self.assertEqual(ok.payload[0], 0)
        later = self.connect()  # logs in while pyproxy reads the globals again
        [show] = side_server.received()
        self.assertEqual(show.payload, make_query("SHOW GLOBAL VARIABLES"))
        side_server.send(rows_reply([("auto_increment_increment", "10"), ("max_connections", "200")]))
        probes = side_server.received()
        self.assertEqual([p.payload for p in probes], [make_query(
            f"SET SESSION {name} = @@SESSION.{name}") for name in ("auto_increment_increment",
                                                                  "max_connections")])
        side_server.send(vectors.PING_OK + frame(make_err(1238, "HY000", "Variable 'max_connections' "
                                                           "is a GLOBAL variable"), 1))
        self.assertTrue(side.broken)  # closed once read
        for client in (self.client, earlier):
            session = client.protocol.commands.session
            self.assertEqual(session.state.variables, (("auto_increment_increment", "1"),))
        self.assertEqual(later.protocol.commands.session.state.variables, ())
        self.assertTrue(conn.broken)  # opened with the old defaults: not lent again
        self.assertEqual(self.pool.idle, [])
        # The earlier session's next statement runs on a new connection, with its value.
        earlier.query("SELECT 1")
        conn2, server2 = self.backends.open()
        expect_statements(server2, "SET SESSION auto_increment_increment=1", "SELECT 1")

    def test_side_connection_failure_still_runs_the_statement(self) -> None:
        """If pyproxy cannot read the globals, the statement runs anyway and pooled
        connections are replaced, as before."""
        self.client.query("SET GLOBAL sql_mode = ''")
        _, _, factory, _, _ = self.proxy.reactor.tcpClients.pop()
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.proxy.reactor.advance(1)  # the endpoint reports the failure on a later turn
        conn, server = self.backends.open()
        [command] = server.received()
        self.assertEqual(command.payload, make_query("SET GLOBAL sql_mode = ''"))
        server.send(vectors.COMMIT_OK)
        [ok] = self.client.received()
        self.assertEqual(ok.payload[0], 0)
        self.assertTrue(conn.broken)
        self.assertFalse(self.client.closed)

    def test_failed_set_global_closes_pyproxys_connection(self) -> None:
        """If the statement never gets its reply, pyproxy's own connection is closed and
        pooled connections are replaced all the same."""
        self.client.query("SET GLOBAL sql_mode = ''")
        side, side_server = self.side_connection()
        side_server.received()
        side_server.send(rows_reply([("sql_mode", "STRICT")]))
        conn, server = self.backends.open()
        server.received()
        conn.connectionLost(Failure(ConnectionError("gone")))
        [err] = self.client.received()
        self.assertEqual(err_of(err)[1], 2013)
        self.assertTrue(side.broken)
        self.assertEqual(self.pool.generation, 1)
        self.assertIsNone(self.client.protocol.commands.globals_before)


class GlobalTrackingTests(LoggedIn):
    def test_earlier_sessions_keep_their_tracking_settings(self) -> None:
        """SET GLOBAL session_track_system_variables: sessions that began before keep
        seeing what the old setting shows; those that begin after see what their
        connections' (new) settings show.  (The statement names session_track_*, so
        the session that runs it is pinned with its own settings first.)"""
        earlier = self.connect()
        sql = "SET GLOBAL session_track_system_variables = 'time_zone'"
        self.client.query(sql)
        side, side_server = self.side_connection()
        side_server.received()
        before = DEFAULT_TRACKING.values()
        side_server.send(rows_reply(list(before.items())))
        conn, server = self.backends.open()
        [restore] = server.received()
        server.send(vectors.PING_OK)
        [command] = server.received()
        self.assertEqual(command.payload, make_query(sql))
        server.send(vectors.COMMIT_OK)
        self.client.raw()
        later = self.connect()
        side_server.received()
        side_server.send(rows_reply(list({**before, "session_track_system_variables": "time_zone"}.items())))
        self.assertIs(earlier.protocol.commands.session.tracking, DEFAULT_TRACKING)
        self.assertIsNone(later.protocol.commands.session.tracking)
        # On a connection opened after the change, the earlier session still sees
        # the character sets SET NAMES changes; the later one sees nothing of it.
        for client, shown in ((earlier, 3), (later, 0)):
            client.query("SET NAMES latin1")
            if self.backends.waiting:
                new, new_server = self.backends.open()
                new.tracking = tracking("time_zone", "ON", "OFF", "OFF")
            [command] = new_server.received()
            if command.payload != make_query("SET NAMES latin1"):  # the later one's character set back
                new_server.send(vectors.PING_OK)
                [command] = new_server.received()
            new_server.send(vectors.SET_NAMES_OK)
            [ok] = client.received()
            changes = parse_ok(ok.payload, True).changes
            self.assertEqual(len(changes.variables) if changes else 0, shown)
