"""Clients without CLIENT_DEPRECATE_EOF on backend connections that have it.

Every reply shape captured from the server in its DEPRECATE_EOF form must
reach such a client exactly as the server sends it in the classic form:
EOFs added after definitions, OK terminators turned into EOFs, and every
later sequence id moved up, whatever the read boundaries.
"""

from __future__ import annotations

from typing import Any

import vectors
from pyproxy.wire.buffer import lenenc_bytes
from pyproxy.wire.commands import make_query
from pyproxy.wire.constants import CLIENT, COMMAND, SERVER_SESSION_STATE_CHANGED, SERVER_STATUS_AUTOCOMMIT
from pyproxy.wire.framing import PacketFramer, frame
from test_frontend import CLIENT_CAPS, LoggedIn

CLASSIC_CAPS = CLIENT_CAPS & ~CLIENT.DEPRECATE_EOF


def packets(data: bytes) -> list[tuple[int, bytes]]:
    """(seq, payload) of each packet.  The status flags of an EOF right after
    definitions are reduced to the transaction bits: the server's also carry
    MORE_RESULTS and index-use hints there, which clients take from the final
    EOF, and which pyproxy cannot know before the rows have passed."""
    out = []
    previous = b""
    for p in PacketFramer().feed(data):
        payload = p.payload
        if payload[:1] == b"\xfe" and len(payload) == 5 and previous.startswith(b"\x03def"):
            status = int.from_bytes(payload[3:5], "little") & 0x0003
            payload = payload[:3] + status.to_bytes(2, "little")
        out.append((p.seq, payload))
        previous = payload
    return out


def idle_modern_connection(test: LoggedIn) -> Any:
    """A connection with DEPRECATE_EOF left idle by a client that has it: a client
    without it takes such a connection rather than open one of its own kind."""
    modern = test.connect(CLIENT_CAPS)
    modern.query("DO 1")
    conn, server = test.backends.open()
    test.assertTrue(conn.capabilities & CLIENT.DEPRECATE_EOF)
    server.received()
    server.send(vectors.PING_OK)
    modern.raw()
    test.assertEqual(test.pool.idle, [conn])
    return conn, server


class TranslationTests(LoggedIn):
    caps = CLASSIC_CAPS

    def setUp(self) -> None:
        super().setUp()
        self.conn, self.server = idle_modern_connection(self)

    def backend_for(self, payload: bytes):
        """Sends a command and returns the server side that received it."""
        self.client.send(payload)
        if self.backends.waiting:
            self.conn, self.server = self.backends.open()
        [command] = self.server.received()
        if command.payload.startswith(b"\x03SET SESSION session_track_"):
            # A pinned session's connection gets the client's tracking settings first.
            self.server.send(vectors.PING_OK)
            [command] = self.server.received()
        assert command.payload == payload
        return self.server

    def check(self, payload: bytes, deof: bytes, classic: bytes) -> None:
        for pieces in (1, 2, 3, 5, 8, len(deof)):
            server = self.backend_for(payload)
            server.send(deof, pieces)
            got = packets(self.client.raw())
            self.assertEqual(got, packets(classic), f"read in {pieces} pieces")

    def test_select(self) -> None:
        """A text result set gets its EOF after the columns and an EOF at the end."""
        self.check(make_query("SELECT id, name FROM app.t ORDER BY id"), vectors.SELECT_DEOF,
                   vectors.SELECT_EOF)

    def test_multiple_results(self) -> None:
        """Each result set of a multi-statement is translated; sequence ids keep counting."""
        self.check(make_query("SELECT 1 AS a; SELECT 2 AS b; DO 3"), vectors.MULTI_DEOF,
                   vectors.MULTI_EOF)

    def test_error_in_rows(self) -> None:
        """An ERR that ends the rows comes through with its sequence id moved up."""
        self.check(make_query("SELECT id, IF(id=2, (SELECT id FROM app.t), 0) AS x FROM app.t "
                              "ORDER BY id"), vectors.ERR_MID_ROWS_DEOF, vectors.ERR_MID_ROWS_EOF)

    def test_field_list(self) -> None:
        """COM_FIELD_LIST's OK terminator becomes its EOF."""
        self.check(bytes((COMMAND.COM_FIELD_LIST,)) + b"t\x00", vectors.FIELD_LIST_DEOF,
                   vectors.FIELD_LIST_EOF)

    def test_prepare_execute_cursor_fetch(self) -> None:
        """On a connection with DEPRECATE_EOF that the client holds (a session pinned
        before it first prepared, when it used those), a prepare reply gets EOFs after
        parameters and columns; a binary result, a cursor (no EOF added: the server
        ends its definitions itself) and a fetch are translated."""
        self.backend_for(make_query("SET @x = 1")).send(vectors.USER_VARIABLE_OK)
        self.client.raw()
        prepare = (bytes((COMMAND.COM_STMT_PREPARE,))
                   + b"SELECT id, name, ? AS p FROM app.t WHERE id >= ?")
        server = self.backend_for(prepare)
        server.send(vectors.PREPARE_DEOF)
        self.assertEqual(packets(self.client.raw()), packets(vectors.PREPARE_EOF))
        statement = (1).to_bytes(4, "little")
        params = b"\x00\x01" + b"\x08\x00" * 2 + (7).to_bytes(8, "little") + (1).to_bytes(8, "little")
        commands = {
            "EXECUTE": bytes((COMMAND.COM_STMT_EXECUTE,)) + statement + b"\x00" + b"\x01\x00\x00\x00" + params,
            "CURSOR_EXECUTE": bytes((COMMAND.COM_STMT_EXECUTE,)) + statement + b"\x01" + b"\x01\x00\x00\x00"
            + params,
            "FETCH": bytes((COMMAND.COM_STMT_FETCH,)) + statement + (1).to_bytes(4, "little"),
        }
        for name, command in commands.items():
            deof, classic = getattr(vectors, name + "_DEOF"), getattr(vectors, name + "_EOF")
            self.check(command, deof, classic)
        # A cursor asked for and not opened (a CALL's results cannot be one): the rows come
        # as for any execute, and the client gets its EOF after the definitions.
        self.check(commands["CURSOR_EXECUTE"], vectors.EXECUTE_DEOF, vectors.EXECUTE_EOF)
        # A CALL whose routine opens a cursor of its own: its result set's EOFs carry
        # SERVER_STATUS_CURSOR_EXISTS (with MORE_RESULTS), which is no cursor of the client's.
        for name in ("EXECUTE", "CURSOR_EXECUTE"):
            self.check(commands[name], vectors.CALL_CURSOR_EXECUTE_DEOF, vectors.CALL_CURSOR_EXECUTE_EOF)


class BinaryProtocolTests(LoggedIn):
    caps = CLASSIC_CAPS

    def test_prepared_statements_use_connections_without_deprecate_eof(self) -> None:
        """Once a client without CLIENT_DEPRECATE_EOF prepares a statement it borrows
        connections opened without it too, and gets the server's replies unchanged:
        libmariadb takes mysql_stmt_execute()'s warning count from the EOF after the
        column definitions, which only such a connection sends with the right count.
        Its text queries before that could share connections with DEPRECATE_EOF."""
        modern, modern_server = idle_modern_connection(self)
        self.client.query("DO 1")
        self.assertEqual(self.pool.lent, {modern})  # translated
        [do] = modern_server.received()
        self.assertEqual(do.payload, make_query("DO 1"))
        modern_server.send(vectors.PING_OK)
        self.client.raw()
        self.client.send(bytes((COMMAND.COM_STMT_PREPARE,)) + b"SELECT id, name, ? AS p FROM app.t WHERE id >= ?")
        self.assertEqual(self.pool.idle, [modern])  # not of the kind this client needs now
        classic, server = self.backends.open()
        self.assertFalse(classic.capabilities & CLIENT.DEPRECATE_EOF)
        self.assertEqual(self.pool.lent, {classic})
        server.received()
        server.send(vectors.PREPARE_EOF)
        self.assertEqual(self.client.raw(), vectors.PREPARE_EOF)
        statement = (1).to_bytes(4, "little")
        params = b"\x00\x01" + b"\x08\x00" * 2 + (7).to_bytes(8, "little") + (1).to_bytes(8, "little")
        execute = bytes((COMMAND.COM_STMT_EXECUTE,)) + statement + b"\x00\x01\x00\x00\x00" + params
        # The server's EOF after the definitions says a note was raised while planning.
        reply = bytearray(vectors.EXECUTE_EOF)
        at = [i for i in range(len(reply) - 8) if reply[i + 4] == 0xFE and reply[i] == 5][0]
        reply[at + 5] = 1
        self.client.send(execute)
        [sent] = server.received()
        self.assertEqual(sent.payload, execute)
        server.send(bytes(reply))
        self.assertEqual(self.client.raw(), bytes(reply))
        self.assertEqual(self.pool.idle, [modern, classic])


def flag_state_change(classic: bytes) -> bytes:
    """A classic reply with SERVER_SESSION_STATE_CHANGED set on its EOFs, as the server
    sends it when the statement changed session state it cannot describe there."""
    out = []
    for p in PacketFramer().feed(classic):
        payload = p.payload
        if payload[:1] == b"\xfe" and len(payload) == 5:
            status = int.from_bytes(payload[3:5], "little") | SERVER_SESSION_STATE_CHANGED
            payload = payload[:3] + status.to_bytes(2, "little")
        out.append(frame(payload, p.seq))
    return b"".join(out)


class ClassicConnectionTests(LoggedIn):
    """A client without CLIENT_DEPRECATE_EOF, with no connection of the other kind idle,
    gets one without it: the server's replies pass unchanged.  Its EOFs say only that
    state changed; pyproxy pins only where nothing else explains it."""

    caps = CLASSIC_CAPS

    def first(self, sql: str) -> Any:
        self.client.query(sql)
        conn, server = self.backends.open()
        self.assertFalse(conn.capabilities & CLIENT.DEPRECATE_EOF)
        [command] = server.received()
        self.assertEqual(command.payload, make_query(sql))
        return conn, server

    def test_replies_pass_unchanged(self) -> None:
        conn, server = self.first("SELECT id, name FROM app.t ORDER BY id")
        server.send(vectors.SELECT_EOF, pieces=3)
        self.assertEqual(self.client.raw(), vectors.SELECT_EOF)
        self.assertEqual(self.pool.idle, [conn])

    def test_set_statement_is_not_pinned(self) -> None:
        """SET STATEMENT ... FOR SELECT: the change its EOFs flag is its own variables,
        set back after the statement."""
        conn, server = self.first("SET STATEMENT sql_mode='NO_ZERO_DATE' FOR SELECT id, name FROM app.t")
        server.send(flag_state_change(vectors.SELECT_EOF))
        self.client.raw()
        self.assertFalse(self.client.protocol.commands.pinned)
        self.assertEqual(self.pool.idle, [conn])

    def test_select_uses_up_pending_characteristics(self) -> None:
        """After SET TRANSACTION, an autocommit SELECT's transaction uses the
        characteristics: its EOF flags the change, the read-back's OK says what it
        was, and the connection is free."""
        conn, server = self.first("SET TRANSACTION READ ONLY")
        server.send(tracked_ok(b"\x04" + lenenc_bytes(lenenc_bytes(b"SET TRANSACTION READ ONLY;")), False))
        self.client.raw()
        session = self.client.protocol.commands.session
        self.assertTrue(session.pending_characteristics)
        self.assertEqual(self.pool.lent, {conn})  # kept for the next transaction
        self.client.query("SELECT id, name FROM app.t")
        server.received()
        server.send(flag_state_change(vectors.SELECT_EOF))
        self.assertEqual(self.client.raw(), flag_state_change(vectors.SELECT_EOF))
        [read_back] = server.received()
        self.assertEqual(read_back.payload, make_query(READ_BACK))
        server.send(tracked_ok(variable(b"character_set_client", b"utf8mb4") + b"\x04\x01\x00"))
        self.assertFalse(session.pending_characteristics)
        self.assertFalse(self.client.protocol.commands.pinned)
        self.assertEqual(self.pool.idle, [conn])

    def test_change_in_a_result_set_is_read_back(self) -> None:
        """A SELECT of a stored function that set a session variable: its EOF only flags
        the change; the read-back's OK carries the new value, which the client keeps
        without being pinned to the connection."""
        conn, server = self.first("SELECT id, name FROM app.t")
        server.send(flag_state_change(vectors.SELECT_EOF))
        self.client.raw()
        [read_back] = server.received()
        self.assertEqual(read_back.payload, make_query(READ_BACK))
        self.assertEqual(self.pool.lent, {conn})  # the client's next command waits for it
        server.send(tracked_ok(variable(b"character_set_client", b"utf8mb4")
                               + variable(b"time_zone", b"+02:00")))
        session = self.client.protocol.commands.session
        self.assertEqual(session.state.variables, (("time_zone", "+02:00"),))
        self.assertFalse(self.client.protocol.commands.pinned)
        self.assertEqual(self.pool.idle, [conn])

    def test_change_the_server_does_not_track_pins(self) -> None:
        """What the server does not track (a user variable) cannot be read back."""
        conn, server = self.first("SELECT @n := id FROM app.t")
        server.send(flag_state_change(vectors.SELECT_EOF))
        self.client.raw()
        self.assertTrue(self.client.protocol.commands.pinned)
        self.assertEqual(server.received(), [])
        self.assertEqual(self.pool.lent, {conn})


READ_BACK = "SET SESSION character_set_client = @@SESSION.character_set_client"


def variable(name: bytes, value: bytes) -> bytes:
    return b"\x00" + lenenc_bytes(lenenc_bytes(name) + lenenc_bytes(value))


def tracked_ok(block: bytes, state_change: bool = True) -> bytes:
    """An OK whose state block holds ``block`` (and the state-change entry, as the
    server adds it to a SET of a variable)."""
    status = (SERVER_STATUS_AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED).to_bytes(2, "little")
    flag = b"\x02\x01\x31" if state_change else b""
    return frame(b"\x00\x00\x00" + status + b"\x00\x00\x00" + lenenc_bytes(block + flag), 1)
