"""pyproxy.prepared: COM_STMT_* on pyproxy's own statement ids, over fake transports.

A statement prepared by one client runs on whichever backend connection it
borrows, prepared there first when needed; cursors hold their connection
while open; long data and the number of statements are bounded by the
server's own limits; a full max_prepared_stmt_count is made room for.
"""

from __future__ import annotations

from twisted.python.failure import Failure

import vectors
from pyproxy.backend import BackendConnection
from pyproxy.statements import BackendStatement
from pyproxy.wire.buffer import lenenc_bytes
from pyproxy.wire.constants import CLIENT_MYSQL, COM_RESET_CONNECTION, MARIADB_CLIENT_STMT_BULK_OPERATIONS
from pyproxy.wire.commands import make_query
from pyproxy.wire.framing import frame
from pyproxy.wire.responses import make_err
from test_backend import FakeServer
from test_frontend import CLIENT_CAPS, LoggedIn, err_of, rows_reply

# The statement vectors.PREPARE_DEOF answers.
PREPARED_SQL = b"SELECT id, name, ? AS p FROM app.t WHERE id >= ?"
EXECUTE_BOUND = (b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x08\x00\x08\x00"
                 + (7).to_bytes(8, "little") + (1).to_bytes(8, "little"))
EXECUTE_UNBOUND = (b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00"
                   + (7).to_bytes(8, "little") + (1).to_bytes(8, "little"))
CURSOR_EXECUTE = (b"\x17\x01\x00\x00\x00\x01\x01\x00\x00\x00\x00\x01\x08\x00\x08\x00"
                  + (7).to_bytes(8, "little") + (1).to_bytes(8, "little"))
FETCH = b"\x1c\x01\x00\x00\x00\x01\x00\x00\x00"
# The last fetch: the server reports SERVER_STATUS_LAST_ROW_SENT (0x80) and closes the cursor.
LAST_FETCH_DEOF = vectors.FETCH_DEOF[:-4] + b"\x82\x00\x00\x00"


class StatementTestCase(LoggedIn):
    """A logged-in client that can prepare PREPARED_SQL."""

    def prepared(self) -> tuple[BackendConnection, FakeServer]:
        """The client prepares PREPARED_SQL (statement 1) on a new backend connection."""
        self.client.send(b"\x16" + PREPARED_SQL)
        conn, server = self.backends.open()
        server.received()
        server.send(vectors.PREPARE_DEOF)
        self.client.raw()
        return conn, server


class CursorTests(StatementTestCase):
    """A cursor holds its connection until it is closed; it never pins the session."""

    def sent_on(self, server: FakeServer, command: bytes) -> None:
        """The client's command reaches the server as sent."""
        self.client.send(command)
        [sent] = server.received()
        self.assertEqual(sent.payload, command)

    def open_cursor(self) -> tuple[BackendConnection, FakeServer]:
        conn, server = self.prepared()
        self.sent_on(server, CURSOR_EXECUTE)
        server.send(vectors.CURSOR_EXECUTE_DEOF)
        self.assertEqual(self.client.raw(), vectors.CURSOR_EXECUTE_DEOF)
        self.assertEqual(self.pool.lent, {conn})
        self.assertFalse(self.client.protocol.commands.pinned)
        self.assertEqual(self.proxy.pins, {})
        return conn, server

    def test_last_row_sent_closes_the_cursor(self) -> None:
        """Fetches run on the cursor's connection; the one that reports the last row
        sent ends the cursor, and the connection goes back, its statement cached."""
        conn, server = self.open_cursor()
        self.sent_on(server, FETCH)
        server.send(vectors.FETCH_DEOF)
        self.client.raw()
        self.assertEqual(self.pool.lent, {conn})
        self.sent_on(server, FETCH)
        server.send(LAST_FETCH_DEOF)
        self.assertEqual(self.client.raw(), LAST_FETCH_DEOF)
        self.assertEqual(self.pool.idle, [conn])
        self.assertEqual(self.client.protocol.commands.session.cursors, 0)
        self.assertIsNotNone(conn.statements.get(PREPARED_SQL))
        self.assertFalse(self.client.protocol.commands.pinned)

    def test_close_closes_the_cursor(self) -> None:
        """COM_STMT_CLOSE of the statement closes the backend's copy (and its cursor)
        and gives the connection back at once."""
        conn, server = self.open_cursor()
        self.sent_on(server, b"\x19\x01\x00\x00\x00")
        self.assertEqual(self.pool.idle, [conn])
        self.assertEqual(len(conn.statements), 0)
        self.assertEqual(self.client.raw(), b"")  # COM_STMT_CLOSE has no reply

    def test_reset_closes_the_cursor(self) -> None:
        """COM_STMT_RESET goes to the cursor's connection; after its OK the connection goes back."""
        conn, server = self.open_cursor()
        self.sent_on(server, b"\x1a\x01\x00\x00\x00")
        self.assertEqual(self.pool.lent, {conn})
        server.send(vectors.PING_OK)
        self.assertEqual(self.client.raw(), vectors.PING_OK)
        self.assertEqual(self.pool.idle, [conn])

    def test_new_execute_closes_the_cursor(self) -> None:
        """A new execute of the statement (without a cursor) runs where the cursor was,
        which closes it; the connection then goes back."""
        conn, server = self.open_cursor()
        self.sent_on(server, EXECUTE_UNBOUND)
        server.send(vectors.EXECUTE_DEOF)
        self.client.raw()
        self.assertEqual(self.pool.idle, [conn])
        self.assertEqual(self.client.protocol.commands.session.cursors, 0)

    def test_same_sql_is_prepared_apart_from_an_open_cursor(self) -> None:
        """A second statement with the same SQL does not reuse (and so close) the backend
        statement that holds the open cursor: it is prepared again on the connection."""
        conn, server = self.open_cursor()
        sql = PREPARED_SQL
        self.client.send(b"\x16" + sql)
        server.received()
        server.send(vectors.PREPARE_DEOF.replace(b"\x00\x01\x00\x00\x00", b"\x00\x02\x00\x00\x00", 1))
        self.client.raw()
        second = b"\x17\x02" + EXECUTE_BOUND[2:]
        self.client.send(second)
        [execute] = server.received()
        self.assertEqual(execute.payload[1:5], (2).to_bytes(4, "little"))
        server.send(vectors.EXECUTE_DEOF)
        self.client.raw()
        self.assertEqual(self.pool.lent, {conn})  # the cursor is still open
        self.assertEqual(self.client.protocol.commands.session.cursors, 1)

    def test_client_leaving_with_an_open_cursor_resets_the_connection(self) -> None:
        """A client that leaves with a cursor open: the connection is reset before it
        is lent again."""
        conn, server = self.open_cursor()
        self.client.protocol.connectionLost(Failure(ConnectionError("bye")))
        [reset] = server.received()
        self.assertEqual(reset.payload, bytes((COM_RESET_CONNECTION,)))

    def session_goes_on(self) -> None:
        """After a lost cursor: no cursor is counted, closing its statement is
        answered as by a server (no reply), and the next statement runs on another
        connection, which is not kept."""
        commands = self.client.protocol.commands
        self.client.send(b"\x19\x01\x00\x00\x00")  # COM_STMT_CLOSE
        self.assertEqual(self.client.raw(), b"")
        self.assertFalse(self.client.closed)
        self.assertEqual(commands.session.cursors, 0)
        self.assertFalse(commands.session.holds_state())
        self.assertIsNone(commands.backend)
        self.client.query("SELECT 1")
        conn, server = self.backends.open()
        self.assertEqual(server.received()[0].payload, make_query("SELECT 1"))
        server.send(vectors.SELECT_DEOF)
        self.assertEqual(self.client.raw(), vectors.SELECT_DEOF)
        self.assertEqual(self.pool.idle, [conn])

    def test_cursor_lost_while_idle(self) -> None:
        """The connection holding an open cursor dies while the client is idle: the
        fetch that finds it gets 2013, the cursor is gone (not counted, so nothing
        keeps the next connection), and COM_STMT_CLOSE of its statement works."""
        conn, server = self.open_cursor()
        conn.connectionLost(Failure(ConnectionError("killed")))
        self.client.send(FETCH)
        [err] = self.client.received()
        self.assertEqual(err_of(err)[1], 2013)
        self.assertIn(b"open cursor", err.payload)
        self.assertEqual(self.client.protocol.commands.session.cursors, 0)
        self.session_goes_on()

    def test_cursor_lost_during_a_fetch(self) -> None:
        """The connection dies while a fetch runs: 2013 for the fetch, and the cursor is gone."""
        conn, server = self.open_cursor()
        self.sent_on(server, FETCH)
        conn.connectionLost(Failure(ConnectionError("killed")))
        [err] = self.client.received()
        self.assertEqual(err_of(err)[1], 2013)
        self.session_goes_on()

    def test_close_after_cursor_lost_unseen(self) -> None:
        """COM_STMT_CLOSE sent before any command found the connection dead: closed
        without touching the dead connection, and the session goes on."""
        conn, server = self.open_cursor()
        conn.connectionLost(Failure(ConnectionError("killed")))
        self.session_goes_on()

    def test_statement_runs_again_after_its_cursor_was_lost(self) -> None:
        """The statement whose cursor died is executed again on another connection,
        prepared there first."""
        conn, server = self.open_cursor()
        conn.connectionLost(Failure(ConnectionError("killed")))
        self.client.send(FETCH)
        self.client.received()
        self.client.send(EXECUTE_BOUND)
        conn2, server2 = self.backends.open()
        [prepare] = server2.received()
        self.assertEqual(prepare.payload, b"\x16" + PREPARED_SQL)


ERR_TOO_MANY_STATEMENTS = frame(make_err(1461, "42000", "Can't create more than "
                                         "max_prepared_stmt_count statements (current value: 4)"), 1)


def value_reply(value: bytes) -> bytes:
    """A one-column, one-row text result (SELECT @@...), DEPRECATE_EOF form."""
    definition = b"\x03def\x00\x00\x00\x01v\x00\x0c\x3f\x00\x0a\x00\x00\x00\x08\x80\x00\x00\x00\x00"
    return (frame(b"\x01", 1) + frame(definition, 2) + frame(lenenc_bytes(value), 3)
            + frame(b"\xfe\x00\x00\x02\x00\x00\x00", 4))


class StatementLimitTests(StatementTestCase):
    """max_prepared_stmt_count reached (1461) while pyproxy caches statements."""

    def held_connection(self) -> tuple[BackendConnection, FakeServer]:
        conn, server = self.first_backend(self.client, "DO 1")
        server.send(vectors.PING_OK)
        self.client.raw()
        for number in range(1, 5):
            conn.statements.add(f"SELECT {number}".encode(), BackendStatement(100 + number, 0, 1))
        return conn, server

    def test_client_prepare_retried_after_making_room(self) -> None:
        """A client's prepare refused for the server-wide limit is not the client's
        error while pyproxy holds cached statements: half of them are closed, the limit
        is read (each connection now caches its share of it) and the prepare is sent
        again; the client sees only the reply to that."""
        conn, server = self.held_connection()
        prepare = b"\x16SELECT id, name, ? AS p FROM app.t WHERE id >= ?"
        self.client.send(prepare)
        [first] = server.received()
        self.assertEqual(first.payload, prepare)
        server.send(ERR_TOO_MANY_STATEMENTS)
        self.assertEqual(self.client.raw(), b"")
        close_1, close_2, limit, in_use = server.received()
        self.assertEqual([close_1.payload, close_2.payload], [b"\x19" + (101).to_bytes(4, "little"),
                                                             b"\x19" + (102).to_bytes(4, "little")])
        self.assertEqual(limit.payload, make_query("SELECT @@GLOBAL.max_prepared_stmt_count"))
        self.assertEqual(in_use.payload, make_query("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'"))
        server.send(value_reply(b"12") + rows_reply([("Prepared_stmt_count", "6")]))
        # 6 prepared, 2 of them pyproxy's: the others leave room for 8, shared by up
        # to 4 connections (2 per user), 2 each from now on.
        self.assertEqual(self.proxy.statement_room, 8)
        self.assertEqual(conn.statements.capacity, 2)
        [again] = server.received()
        self.assertEqual(again.payload, prepare)
        server.send(vectors.PREPARE_DEOF)
        [ok, *_] = self.client.received()
        self.assertEqual(ok.payload[0], 0)
        [close_3] = server.received()  # the cache keeps its share: the new one and one more
        self.assertEqual(close_3.payload, b"\x19" + (103).to_bytes(4, "little"))
        self.assertEqual(len(conn.statements), 2)

    def test_room_made_on_an_idle_connection(self) -> None:
        """With nothing cached on its own connection, the statements are closed on the
        fullest other one, idle here: it is taken aside until its ping answers, so the
        server has closed them before the prepare is tried again."""
        conn, server = self.first_backend(self.client, "BEGIN")
        server.send(vectors.BEGIN_OK)  # this client holds its connection
        self.client.raw()
        other = self.connect()
        other.query("DO 1")
        idle, idle_server = self.backends.open()
        idle_server.received()
        idle_server.send(vectors.PING_OK)
        other.raw()
        for number in range(1, 5):
            idle.statements.add(f"SELECT {number}".encode(), BackendStatement(100 + number, 0, 1))
        prepare = b"\x16" + PREPARED_SQL
        self.client.send(prepare)
        server.received()
        server.send(ERR_TOO_MANY_STATEMENTS)
        *closes, ping = idle_server.received()
        self.assertEqual([c.payload[:1] for c in closes], [b"\x19", b"\x19"])
        self.assertEqual(ping.payload, b"\x0e")
        self.assertEqual(self.pool.checking, {idle})
        server.received()
        server.send(value_reply(b"16382") + rows_reply([("Prepared_stmt_count", "16382")]))
        self.assertEqual(server.received(), [])  # not before the idle connection answers
        idle_server.send(vectors.PING_OK)
        self.assertEqual(self.pool.idle, [idle])
        [again] = server.received()
        self.assertEqual(again.payload, prepare)
        server.send(vectors.PREPARE_DEOF)
        self.assertEqual(self.client.received()[0].payload[0], 0)

    def test_server_error_when_nothing_is_cached(self) -> None:
        """With nothing of pyproxy's to close, the limit is reached by others: the
        client gets the server's error, as it would directly."""
        conn, server = self.first_backend(self.client, "DO 1")
        server.send(vectors.PING_OK)
        self.client.raw()
        self.client.send(b"\x16SELECT 1")
        server.received()
        server.send(ERR_TOO_MANY_STATEMENTS)
        [err] = self.client.received()
        self.assertEqual(err_of(err), (1, 1461, "42000"))
        self.assertEqual(server.received(), [])

    def test_execute_prepares_again_after_making_room(self) -> None:
        """An execute that needs its statement prepared on this connection gets the
        same treatment: the prepare is repeated, halving the cache, until it fits."""
        sql = PREPARED_SQL
        conn, server = self.prepared()
        conn.statements.clear()  # as if closed to make room meanwhile
        for number in range(1, 3):
            conn.statements.add(f"SELECT {number}".encode(), BackendStatement(100 + number, 0, 1))
        self.client.send(EXECUTE_BOUND)
        for cached in (2, 1):
            [prepare] = server.received()
            self.assertEqual(prepare.payload, b"\x16" + sql)
            server.send(ERR_TOO_MANY_STATEMENTS)
            *closes, _, _ = server.received()
            self.assertEqual(len(closes), cached - cached // 2)
            server.send(value_reply(b"16382") + rows_reply([("Prepared_stmt_count", "2")]))
        [prepare] = server.received()
        server.send(vectors.PREPARE_DEOF)
        [execute] = server.received()
        self.assertEqual(execute.payload[0], 0x17)
        server.send(vectors.EXECUTE_DEOF)
        self.assertEqual(self.client.raw(), vectors.EXECUTE_DEOF)


class StatementTests(StatementTestCase):
    def test_ids_keep_growing_across_a_reset(self) -> None:
        """COM_RESET_CONNECTION forgets the client's statements (the server closes
        them) but not the ids given so far: the next prepare gets a new one."""
        conn, server = self.prepared()
        self.client.send(bytes((COM_RESET_CONNECTION,)))
        self.client.raw()
        statements = self.client.protocol.commands.statements
        self.assertIsNone(statements.by_id)
        self.assertIsNone(statements.sql_of(EXECUTE_BOUND))
        self.client.send(b"\x16" + PREPARED_SQL)
        server.received()
        server.send(vectors.PREPARE_DEOF)
        [ok, *_] = self.client.received()
        self.assertEqual(ok.payload[1:5], (2).to_bytes(4, "little"))
        self.assertEqual(statements.sql_of(b"\x17" + (2).to_bytes(4, "little")), PREPARED_SQL)

    def test_statement_command_without_backend(self) -> None:
        """COM_STMT_EXECUTE with no connection holding statements gets 1243 (HY000)."""
        self.client.send(b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00")
        self.assertEqual(err_of(self.client.received()[0]), (1, 1243, "HY000"))
        self.assertEqual(self.backends.waiting, [])

    def test_statement_close_without_backend(self) -> None:
        """COM_STMT_CLOSE for a statement nobody holds is dropped silently (it has no reply)."""
        self.client.send(b"\x19\x01\x00\x00\x00")
        self.assertEqual(self.client.raw(), b"")
        self.assertEqual(self.backends.waiting, [])
        self.client.send(b"\x0e")
        self.assertEqual(self.client.received()[0].seq, 1)

    def test_prepare_execute_round_trip(self) -> None:
        """A prepared statement pins nothing: the connection goes back after PREPARE, and
        EXECUTE borrows it again with the statement already prepared there."""
        self.client.send(b"\x16SELECT id, name, ? AS p FROM app.t WHERE id >= ?")
        conn, server = self.backends.open()
        server.received()
        server.send(vectors.PREPARE_DEOF)
        self.assertEqual(self.client.raw(), vectors.PREPARE_DEOF)
        self.assertFalse(self.client.protocol.commands.pinned)
        self.assertEqual(self.pool.idle, [conn])
        self.client.send(EXECUTE_BOUND)
        [sent] = server.received()
        self.assertEqual(sent.payload, EXECUTE_BOUND)
        server.send(vectors.EXECUTE_DEOF, pieces=len(vectors.EXECUTE_DEOF))
        self.assertEqual(self.client.raw(), vectors.EXECUTE_DEOF)
        self.assertEqual(self.pool.idle, [conn])

    def execute_elsewhere(self, backend_id: int) -> bytes:
        """The client executes PREPARED_SQL once, binding its types; another client then
        holds that connection in a transaction, so the client's next execute, which
        binds none (flag 0), runs on a second connection, where pyproxy prepares the
        statement first and the server calls it ``backend_id``.  Returns the execute
        that second connection was sent, once the client has the rows."""
        conn, server = self.prepared()
        self.client.send(EXECUTE_BOUND)
        server.received()
        server.send(vectors.EXECUTE_DEOF)
        self.client.raw()
        other = self.connect()
        other.query("BEGIN")
        server.received()
        server.send(vectors.BEGIN_OK)
        other.raw()
        self.assertEqual(self.pool.lent, {conn})
        self.client.send(EXECUTE_UNBOUND)
        conn2, server2 = self.backends.open()
        [prepare] = server2.received()
        self.assertEqual(prepare.payload, b"\x16" + PREPARED_SQL)
        reply = bytearray(vectors.PREPARE_DEOF)
        reply[5:9] = backend_id.to_bytes(4, "little")
        server2.send(bytes(reply))
        [execute] = server2.received()
        server2.send(vectors.EXECUTE_DEOF)
        self.assertEqual(self.client.raw(), vectors.EXECUTE_DEOF)
        self.assertFalse(self.client.protocol.commands.pinned)
        return execute.payload

    def test_execute_on_another_connection_prepares_there(self) -> None:
        """When the connection that prepared a statement is busy, EXECUTE runs on another
        one: pyproxy prepares the statement there first, rewrites the statement id, and
        adds the parameter types the client sent only with its first execute."""
        self.assertEqual(self.execute_elsewhere(7), b"\x17\x07\x00\x00\x00" + EXECUTE_BOUND[5:])

    def test_same_id_on_another_connection_still_gets_the_types(self) -> None:
        """The other connection gave the statement the very id the client uses (1, as
        every connection numbers its statements from 1): the id needs no change, but
        the types the client bound only once still go in, since that copy of the
        statement has none yet."""
        self.assertEqual(self.execute_elsewhere(1), EXECUTE_BOUND)

    def test_execute_of_the_last_prepared_statement_names_its_real_id(self) -> None:
        """An execute may name "the statement prepared last" (0xFFFFFFFF, MariaDB):
        the server gets the id its connection gave that statement."""
        conn, server = self.prepared()
        for _ in range(2):  # the second time, the connection knows the types already
            self.client.send(b"\x17\xff\xff\xff\xff" + EXECUTE_BOUND[5:])
            [execute] = server.received()
            self.assertEqual(execute.payload, EXECUTE_BOUND)
            server.send(vectors.EXECUTE_DEOF)
            self.assertEqual(self.client.raw(), vectors.EXECUTE_DEOF)

    def test_unknown_statement_id(self) -> None:
        """EXECUTE of an id the client never prepared gets 1243 without borrowing anything."""
        self.client.send(EXECUTE_BOUND)
        [err] = self.client.received()
        self.assertEqual(err_of(err), (1, 1243, "HY000"))
        self.assertEqual(self.backends.waiting, [])

    def test_prepare_reply_split_in_last_definition(self) -> None:
        """A prepare reply cut inside its last column definition still reaches the client whole."""
        self.client.send(b"\x16SELECT id, name, ? AS p FROM app.t WHERE id >= ?")
        conn, server = self.backends.open()
        server.received()
        cut = len(vectors.PREPARE_DEOF) - 10
        server.send(vectors.PREPARE_DEOF[:cut])
        server.send(vectors.PREPARE_DEOF[cut:])
        self.assertEqual(self.client.raw(), vectors.PREPARE_DEOF)
        self.assertFalse(conn.broken)


class StatementBoundsTests(StatementTestCase):
    def test_prepared_statements_capped_at_the_servers_limit(self) -> None:
        """A client may keep as many statements as the server's max_prepared_stmt_count; the
        next prepare gets the server's 1461 without reaching a backend."""
        self.proxy.max_prepared_statements = 1
        conn, server = self.prepared()
        self.client.send(b"\x16SELECT 2")
        [err] = self.client.received()
        self.assertEqual(err_of(err), (1, 1461, "42000"))
        self.assertIn(b"(current value: 1)", err.payload)
        self.assertEqual(server.received(), [])

    def test_long_data_past_max_allowed_packet(self) -> None:
        """Long data for one parameter past the server's max_allowed_packet is dropped and
        the execute gets the server's error 1105, without reaching a backend; the next
        execute runs as usual."""
        conn, server = self.prepared()
        self.proxy.max_allowed_packet = 10
        statement = self.client.protocol.commands.statements.by_id[1]
        for _ in range(2):
            self.client.send(b"\x18" + (1).to_bytes(4, "little") + b"\x00\x00" + b"x" * 6)
        self.assertTrue(statement.long_data_too_long)
        self.assertIsNone(statement.long_data)
        self.client.send(b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\xfe\x00\xfe\x00")
        [err] = self.client.received()
        self.assertEqual(err_of(err), (1, 1105, "HY000"))
        self.assertIn(b"'max_allowed_packet'", err.payload)
        self.assertEqual(server.received(), [])
        self.assertFalse(statement.long_data_too_long)

    def test_long_data_under_the_limit_is_kept_per_parameter(self) -> None:
        conn, server = self.prepared()
        self.proxy.max_allowed_packet = 10
        for param in (0, 1):
            self.client.send(b"\x18" + (1).to_bytes(4, "little") + bytes((param, 0)) + b"x" * 8)
        statement = self.client.protocol.commands.statements.by_id[1]
        self.assertEqual(statement.long_data_sizes, {0: 8, 1: 8})
        self.assertFalse(statement.long_data_too_long)


ROW = b"\x00" + (7).to_bytes(8, "little") + b"\x00" + (1).to_bytes(8, "little")
BULK_TYPED = b"\xfa\x01\x00\x00\x00\x80\x00\x08\x00\x08\x00" + ROW + ROW
BULK_UNTYPED = b"\xfa\x01\x00\x00\x00\x00\x00" + ROW
# The captured bulk's OK without its insert id (which would keep the connection until
# pyproxy has read LAST_INSERT_ID() back).
BULK_OK = vectors.BULK_OK[:6] + b"\x00" + vectors.BULK_OK[7:]


class BulkTests(StatementTestCase):
    """COM_STMT_BULK_EXECUTE (MariaDB) from a client that negotiated bulk operations."""

    caps = (CLIENT_CAPS & ~CLIENT_MYSQL) | MARIADB_CLIENT_STMT_BULK_OPERATIONS

    def test_bulk_on_another_connection_gets_the_types(self) -> None:
        """A bulk runs on pyproxy's statement id like an execute: on the connection that
        prepared it as sent, on another one prepared there first and given the types the
        client sent only with its first bulk."""
        conn, server = self.prepared()
        self.client.send(BULK_TYPED)
        [sent] = server.received()
        self.assertEqual(sent.payload, BULK_TYPED)
        server.send(BULK_OK)
        self.assertEqual(self.client.raw(), BULK_OK)
        self.proxy.reactor.advance(5)  # past the hold for a ROW_COUNT() follow-up
        self.assertEqual(self.pool.idle, [conn])
        other = self.connect()
        other.query("BEGIN")
        server.received()
        server.send(vectors.BEGIN_OK)
        other.raw()
        self.client.send(BULK_UNTYPED)
        conn2, server2 = self.backends.open()
        [prepare] = server2.received()
        self.assertEqual(prepare.payload, b"\x16" + PREPARED_SQL)
        reply = bytearray(vectors.PREPARE_DEOF)
        reply[5:9] = (7).to_bytes(4, "little")
        server2.send(bytes(reply))
        [bulk] = server2.received()
        self.assertEqual(bulk.payload, b"\xfa\x07\x00\x00\x00\x80\x00\x08\x00\x08\x00" + ROW)
        server2.send(BULK_OK)
        self.assertEqual(self.client.raw(), BULK_OK)
        self.assertFalse(self.client.protocol.commands.pinned)

    def test_last_prepared_statement(self) -> None:
        """Statement id -1 names the statement the client prepared last; after a prepare
        that failed, none (1243, as from the server)."""
        _, server = self.prepared()
        self.client.send(b"\xfa\xff\xff\xff\xff" + BULK_TYPED[5:])
        [sent] = server.received()
        self.assertEqual(sent.payload, BULK_TYPED)
        server.send(BULK_OK)
        self.client.raw()
        self.client.send(b"\x16SELECT * FROM nonexistent")
        server.received()
        server.send(vectors.ERR_NO_TABLE)
        self.client.raw()
        self.client.send(b"\x17\xff\xff\xff\xff" + EXECUTE_BOUND[5:])
        self.assertEqual(err_of(self.client.received()[0]), (1, 1243, "HY000"))

    def test_bulk_refused_before_any_borrow(self) -> None:
        """Flags other than "types follow" get 1295 and a bulk cut short 1835, as from the
        server, without a backend connection."""
        self.client.send(b"\xfa\x01\x00\x00\x00\x40\x00")
        self.assertEqual(err_of(self.client.received()[0]), (1, 1295, "HY000"))
        self.client.send(b"\xfa\x01\x00\x00\x00")
        self.assertEqual(err_of(self.client.received()[0]), (1, 1835, "HY000"))
        self.assertEqual(self.backends.waiting, [])


class BulkWithoutCapabilityTests(StatementTestCase):
    def test_bulk_refused(self) -> None:
        """A client that did not negotiate bulk operations gets the server's 1295."""
        self.prepared()
        self.client.send(BULK_TYPED)
        self.assertEqual(err_of(self.client.received()[0]), (1, 1295, "HY000"))
