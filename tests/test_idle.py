"""pyproxy.idle: a client's wait_timeout, over fake transports and a fake clock."""

from __future__ import annotations

import vectors
from pyproxy.idle import SessionTimeouts
from pyproxy.wire.constants import CLIENT, COM_RESET_CONNECTION
from test_frontend import CLIENT_CAPS, SELECT, FakeClient, LoggedIn, err_of, make_proxy, ok_tracking

# An OK to SET wait_timeout = 1, with the change tracked.
WAIT_TIMEOUT_1_OK = ok_tracking({"wait_timeout": "1"})


class WaitTimeoutTests(LoggedIn):
    """A client idle for its session's wait_timeout is closed as a server closes it."""

    def advance(self, seconds: float) -> None:
        self.proxy.reactor.advance(seconds)

    def set_wait_timeout_1(self, client: FakeClient) -> tuple[object, object]:
        conn, server = self.first_backend(client, "SET wait_timeout = 1")
        server.send(WAIT_TIMEOUT_1_OK)
        [ok] = client.received()
        self.assertEqual(ok.payload[0], 0)
        self.assertEqual(dict(client.protocol.session.state.variables)["wait_timeout"], "1")
        return conn, server

    def test_the_default_closes_after_eight_hours(self) -> None:
        """A client that never set wait_timeout gets a new session's (28800 s);
        nothing is sent, the connection just closes."""
        self.advance(28799)
        self.assertFalse(self.client.closed)
        self.advance(1)
        self.assertTrue(self.client.closed)
        self.assertEqual(self.client.raw(), b"")
        self.assertEqual(self.client.protocol.closed_reason, "wait_timeout")

    def test_own_wait_timeout(self) -> None:
        """SET wait_timeout = 1 makes the client's idle timeout one second, counted
        from the end of its last command; a command in between starts it over."""
        conn, server = self.set_wait_timeout_1(self.client)
        self.advance(0.4)
        self.client.query("SET wait_timeout = 1")
        [command] = server.received()
        self.advance(0.9)
        server.send(WAIT_TIMEOUT_1_OK)
        self.client.received()
        self.advance(0.9)
        self.assertFalse(self.client.closed)
        self.advance(0.2)
        self.assertTrue(self.client.closed)
        self.assertEqual(self.client.protocol.closed_reason, "wait_timeout")

    def test_pooled_connection_left_with_a_short_timeout(self) -> None:
        """A connection a client gave back with its short wait_timeout on it is not
        lent once it has been idle half that long (the server may close it under the
        next borrower's command); it is closed and another one opened."""
        conn, server = self.set_wait_timeout_1(self.client)
        self.assertIn(conn, self.pool.idle)
        self.assertEqual(conn.wait_limit, 1)
        other = self.connect()
        self.advance(0.6)
        other.query(SELECT)
        [quit_] = server.received()
        self.assertEqual(quit_.payload, b"\x01")  # COM_QUIT
        self.assertNotIn(conn, self.pool.idle)
        fresh, fresh_server = self.backends.open()
        [command] = fresh_server.received()
        self.assertEqual(command.payload[1:], SELECT.encode())

    def test_a_running_command_is_not_idle(self) -> None:
        """A statement running longer than the timeout keeps the client; the timeout
        counts from its reply."""
        conn, server = self.set_wait_timeout_1(self.client)
        self.client.query(SELECT)
        server.received()
        self.advance(5)
        self.assertFalse(self.client.closed)
        server.send(vectors.SELECT_DEOF)
        self.client.raw()
        self.advance(0.9)
        self.assertFalse(self.client.closed)
        self.advance(0.2)
        self.assertTrue(self.client.closed)

    def test_ping_answered_here_counts_as_a_command(self) -> None:
        """COM_PING, answered without a backend, starts the idle time over, as it
        does on a server."""
        conn, server = self.set_wait_timeout_1(self.client)
        for _ in range(4):
            self.advance(0.6)
            self.client.send(b"\x0e")  # COM_PING
            [ok] = self.client.received()
            self.assertEqual(ok.payload[0], 0)
        self.assertFalse(self.client.closed)
        self.advance(1)
        self.assertTrue(self.client.closed)

    def test_commands_waiting_their_turn_are_not_idle(self) -> None:
        """A client whose commands wait behind a running one (pipelined) is not idle."""
        conn, server = self.set_wait_timeout_1(self.client)
        self.client.query(SELECT)
        self.client.query(SELECT)
        [first] = server.received()
        self.advance(3)
        self.assertFalse(self.client.closed)
        server.send(vectors.SELECT_DEOF)
        [second] = server.received()
        self.advance(3)
        self.assertFalse(self.client.closed)
        server.send(vectors.SELECT_DEOF)
        self.client.raw()
        self.advance(1)
        self.assertTrue(self.client.closed)

    def test_one_timer_per_client_whatever_the_commands(self) -> None:
        """Commands do not reschedule the timer: there is one per client, the same
        DelayedCall, however many commands run."""
        conn, server = self.set_wait_timeout_1(self.client)
        [timer] = self.proxy.reactor.getDelayedCalls()
        for _ in range(50):
            self.client.query(SELECT)
            server.received()
            server.send(vectors.SELECT_DEOF)
            self.client.raw()
        self.assertEqual(self.proxy.reactor.getDelayedCalls(), [timer])

    def test_in_a_transaction_the_held_connection_is_reset(self) -> None:
        """A client idle inside its transaction is closed like any other (the server
        rolls a transaction back when it closes a session); the connection it held
        goes back to the pool only after COM_RESET_CONNECTION, never dirty."""
        conn, server = self.set_wait_timeout_1(self.client)
        self.client.query("BEGIN")
        server.received()
        server.send(vectors.BEGIN_OK)
        self.client.received()
        self.assertIs(self.client.protocol.commands.backend, conn)
        self.advance(1)
        self.assertTrue(self.client.closed)
        self.client.protocol.connectionLost()
        [reset] = server.received()
        self.assertEqual(reset.payload, bytes((COM_RESET_CONNECTION,)))
        self.assertNotIn(conn, self.pool.idle)
        server.send(vectors.PING_OK)
        server.received()
        server.send(vectors.SESSION_SETUP)
        self.assertIn(conn, self.pool.idle)

    def test_a_pinned_client_too(self) -> None:
        """A pinned client idle past its timeout is closed; its connection is reset."""
        conn, server = self.set_wait_timeout_1(self.client)
        self.client.query("LOCK TABLES t READ")
        server.received()
        server.send(vectors.LOCK_TABLES_TRACKED_OK)
        self.client.received()
        self.assertTrue(self.client.protocol.commands.pinned)
        self.advance(1)
        self.assertTrue(self.client.closed)
        self.client.protocol.connectionLost()
        [reset] = server.received()
        self.assertEqual(reset.payload, bytes((COM_RESET_CONNECTION,)))

    def test_learned_defaults_apply_to_clients_that_set_none(self) -> None:
        """When pyproxy learns a shorter default (its first backend connection, or a
        SET GLOBAL), clients that did not set their own get it at once; one that
        set its own keeps it."""
        own = self.connect()
        conn, server = self.set_wait_timeout_1(own)
        server.send(b"")
        self.proxy.timeouts_learned(SessionTimeouts(wait=10, interactive=20))
        self.advance(9.9)
        self.assertTrue(own.closed)
        self.assertFalse(self.client.closed)
        self.advance(0.2)
        self.assertTrue(self.client.closed)

    def test_interactive_client(self) -> None:
        """A client that logs in with CLIENT_INTERACTIVE starts with interactive_timeout
        as its wait_timeout (carried, so SELECT @@wait_timeout shows it), and
        COM_RESET_CONNECTION gives it the plain default, as MariaDB does."""
        self.proxy.timeouts_learned(SessionTimeouts(wait=100, interactive=5))
        interactive = self.connect(caps=CLIENT_CAPS | CLIENT.INTERACTIVE)
        self.assertEqual(dict(interactive.protocol.session.state.variables), {"wait_timeout": "5"})
        plain = self.connect()
        self.advance(5)
        self.assertTrue(interactive.closed)
        self.assertFalse(plain.closed)
        again = self.connect(caps=CLIENT_CAPS | CLIENT.INTERACTIVE)
        again.send(bytes((COM_RESET_CONNECTION,)))
        [ok] = again.received()
        self.assertEqual(ok.payload[0], 0)
        self.assertEqual(again.protocol.session.state.variables, ())
        self.advance(99)
        self.assertFalse(again.closed)
        self.advance(1)
        self.assertTrue(again.closed)

    def test_interactive_before_the_defaults_are_known(self) -> None:
        """An interactive client that logged in before pyproxy read the server's
        defaults gets interactive_timeout once they are read (carried, so that its
        first statement's connection shows it); a later SET GLOBAL changes nothing
        for it, as a server session keeps the value of its login."""
        early = self.connect(caps=CLIENT_CAPS | CLIENT.INTERACTIVE)
        self.assertEqual(early.protocol.commands.interactive, -1)
        self.assertEqual(early.protocol.session.state.variables, ())
        self.proxy._limits_learned([("16777216", "16382", "100", "5", "ID")])
        self.assertEqual(dict(early.protocol.session.state.variables), {"wait_timeout": "5"})
        self.proxy.timeouts_learned(SessionTimeouts(wait=100, interactive=50))
        self.assertEqual(early.protocol.commands.interactive, 5)
        self.advance(5)
        self.assertTrue(early.closed)
        self.assertFalse(self.client.closed)

    def test_a_closed_client_leaves_no_timer(self) -> None:
        self.client.send(b"\x01")  # COM_QUIT
        self.client.protocol.connectionLost()
        self.assertEqual(self.proxy.reactor.getDelayedCalls(), [])



class DefaultsTests(LoggedIn):
    """Where the defaults come from: pyproxy's first backend connection, and SET GLOBAL."""

    def test_learned_with_the_limits(self) -> None:
        """The first connection's read gives the session wait_timeout, the global
        interactive_timeout and PROCESSLIST's columns."""
        self.proxy._limits_learned([("16777216", "16382", "600", "900", "ID,USER,HOST,INFO")])
        self.assertEqual(self.proxy.timeouts, SessionTimeouts(600, 900))
        self.assertEqual(self.proxy.processlist_columns, ("ID", "USER", "HOST", "INFO"))
        self.assertTrue(self.proxy.limits_read)
        # The logged-in client (28800 so far) now has 600 s.
        self.advance(600)
        self.assertTrue(self.client.closed)

    def advance(self, seconds: float) -> None:
        self.proxy.reactor.advance(seconds)

    def test_set_global(self) -> None:
        """SET GLOBAL wait_timeout through pyproxy sets what later sessions get, unless
        init_query sets pyproxy's connections' own."""
        from pyproxy.set_global import new_sessions_timeouts
        new_sessions_timeouts(self.proxy, {"wait_timeout": "50", "interactive_timeout": "70"})
        self.assertEqual(self.proxy.timeouts, SessionTimeouts(50, 70))
        proxy, _ = make_proxy(2, backend={"init_query": "SET SESSION wait_timeout = 321"})
        proxy.timeouts_learned(SessionTimeouts(321, 28800))
        new_sessions_timeouts(proxy, {"wait_timeout": "50", "interactive_timeout": "70"})
        self.assertEqual(proxy.timeouts, SessionTimeouts(321, 70))


def test_says_inactivity() -> None:
    from pyproxy.idle import says_inactivity
    assert not says_inactivity("5.5.5-10.11.19-MariaDB-0+deb12u1")
    assert not says_inactivity("11.4.2-MariaDB")
    assert not says_inactivity("8.0.23")
    assert says_inactivity("8.0.24")
    assert says_inactivity("8.4.0-log")
    assert not says_inactivity("5.7.44")


class MySQLServerTests(LoggedIn):
    def test_mysql_8_sends_4031_first(self) -> None:
        """In front of MySQL 8.0.24+, the idle client gets ER_CLIENT_INTERACTION_TIMEOUT
        (sequence 0) before the close, as MySQL sends it."""
        import attrs
        self.proxy.server = attrs.evolve(self.proxy.server, version="8.0.36")
        self.proxy.reactor.advance(28800)
        [err] = self.client.received()
        self.assertEqual(err_of(err), (0, 4031, "HY000"))
        self.assertTrue(self.client.closed)
