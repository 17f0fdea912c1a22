"""Prepared-statement multiplexing: one client's COM_STMT_* commands on shared connections.

A client's statement ids are pyproxy's own (pyproxy.statements holds the
statement objects, the per-connection caches and the rewriting of
COM_STMT_EXECUTE).  This module runs the commands: PREPARE on whichever
connection the client borrows, EXECUTE re-prepared where the connection has
no copy, with the parameter types the driver sent only once, and with the
long data kept for it (up to the server's max_allowed_packet), FETCH and
RESET on the connection a cursor holds, CLOSE.  When the server's
max_prepared_stmt_count is reached, pyproxy's own cached statements make
room before the client sees the error.

A PreparedStatements is made for a client at its first COM_STMT_* command;
the command phase (pyproxy.command_phase) consults it for the replies of
those commands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from pyproxy import sqltext, thread_ids
from pyproxy.backend import BackendError
from pyproxy.backend_login import CLASSIC_EOF
from pyproxy.hygiene import run_flagged, stored_code
from pyproxy.kill import KILL_FORM, cancel_query_timer, is_kill, kill_statement
from pyproxy.phases import CLOSED
from pyproxy.release import release_if_clean
from pyproxy.statements import (
    BackendStatement,
    ClientStatement,
    bulk_types,
    execute_types,
    rewrite_bulk,
    rewrite_execute,
)
from pyproxy.wire import constants as c
from pyproxy.wire.buffer import BytesLike
from pyproxy.wire.commands import command_name, opens_cursor, statement_id
from pyproxy.wire.constants import COMMAND
from pyproxy.wire.responses import make_prepare_ok
from pyproxy.wire.framing import Packet, frame
from pyproxy.wire.response_tracker import ResponseTracker

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase

STATEMENT_COMMANDS = frozenset((COMMAND.COM_STMT_PREPARE, COMMAND.COM_STMT_EXECUTE,
                                COMMAND.COM_STMT_FETCH, COMMAND.COM_STMT_RESET,
                                COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_SEND_LONG_DATA,
                                c.COM_STMT_BULK_EXECUTE))
# What a server answers COM_STMT_BULK_EXECUTE from a client that did not
# negotiate MARIADB_CLIENT_STMT_BULK_OPERATIONS, or with flags it does not
# take (ER_UNSUPPORTED_PS), and one cut short (ER_MALFORMED_PACKET).
ER_UNSUPPORTED_PS = (1295, "HY000")
ER_MALFORMED_PACKET = (1835, "HY000")
# The server's words for the command that named an unknown statement.
HANDLER_NAMES = {COMMAND.COM_STMT_EXECUTE: "mysqld_stmt_execute", COMMAND.COM_STMT_FETCH: "mysqld_stmt_fetch",
                 COMMAND.COM_STMT_RESET: "mysqld_stmt_reset", c.COM_STMT_BULK_EXECUTE: "mysqld_stmt_execute"}
ER_STMT_HAS_NO_OPEN_CURSOR = (1421, "HY000")
ER_WRONG_ARGUMENTS = (1210, "HY000")
ER_MAX_PREPARED_STMT_COUNT_REACHED = 1461
ER_MAX_PREPARED_STATEMENTS = (1461, "42000")
ER_LONG_DATA = (1105, "HY000")
ER_UNSUPPORTED_PS = (1295, "HY000")


class PreparedStatements:
    """One client's prepared statements, by the ids pyproxy gave it."""

    __slots__ = ("client", "by_id", "next_id", "preparing", "last", "cursor", "again")

    def __init__(self, client: CommandPhase) -> None:
        self.client = client
        # Made at the first prepare; None again after COM_RESET_CONNECTION and
        # COM_CHANGE_USER, which close them on a server.
        self.by_id: dict[int, ClientStatement] | None = None
        # Ids keep growing across resets, as a server's do.
        self.next_id = 1
        # The id given to the prepare whose reply is passing.
        self.preparing = 0
        # The statement prepared last, which statement id -1 (0xFFFFFFFF) names
        # on MariaDB; 0 after a prepare that failed, as on the server.
        self.last = 0
        # The statement of the running command that opens, reads or closes a
        # cursor, and the backend statement it runs on.
        self.cursor: tuple[ClientStatement, BackendStatement] | None = None
        # The running execute as the client sent it, with its statement and the
        # long data sent with it: what a refused write needs to run again
        # elsewhere (pyproxy.write_retry).  None once the command is over.
        self.again: tuple[ClientStatement, Packet, list[bytes] | None] | None = None

    def forget(self) -> None:
        """The session started over: its statements are gone."""
        self.by_id = None
        self.last = 0

    def connection_lost(self) -> bool:
        """The backend connection the client held died: the cursors open on it
        died with it (their statements stay, to be executed again anywhere).
        Returns whether any was open."""
        self.cursor = None
        session = self.client.session
        if session is None or not session.cursors:
            return False
        for statement in (self.by_id or {}).values():
            statement.cursor = None
        session.cursors = 0
        return True

    def sql_of(self, payload: bytes) -> bytes | None:
        """The text of the statement a COM_STMT_EXECUTE runs, if the client has it."""
        if len(payload) < 5 or not self.by_id:
            return None
        statement = self.by_id.get(statement_id(payload))
        return statement.sql if statement is not None else None

    def command(self, packet: Packet, command: int) -> None:
        """A COM_STMT_* command: it runs on whichever backend connection the client
        borrows, its statement prepared there when first needed."""
        client = self.client
        payload = packet.payload
        client.sql = None
        client.found = client.code = None
        if command == COMMAND.COM_STMT_PREPARE:
            limit = client.proxy.max_prepared_statements
            if self.by_id is not None and len(self.by_id) >= limit:
                # The server's own limit, per client: pyproxy keeps what each
                # client prepared, and nothing else would bound it.
                client.reply_error(ER_MAX_PREPARED_STATEMENTS, f"Can't create more than max_prepared_stmt_count "
                                   f"statements (current value: {limit})")
                return
            sql = payload[1:]
            if is_kill(sql):
                self._prepare_kill(sql)
                return
            if thread_ids.NEEDLES.search(sql) is not None:
                # CONNECTION_ID(), IS_USED_LOCK(), PROCESSLIST: the client's own id.
                client.command = thread_ids.rewrite(client, packet, sql, prepared=True)[0]
            if client.translate:
                # A client without CLIENT_DEPRECATE_EOF reads the warning count of
                # COM_STMT_EXECUTE from the EOF after the column definitions
                # (libmariadb's mysql_stmt_execute() does), which a connection
                # with DEPRECATE_EOF never sends: from now on this client uses
                # only connections without it.
                client.flavor |= CLASSIC_EOF
                client.fallback = -1
            client.busy = True
            client.acquire(client.start)
            return
        if command == c.COM_STMT_BULK_EXECUTE and self._bulk_refused(payload):
            return
        try:
            number = statement_id(payload)
        except ValueError:
            number = -1
        statement = self.by_id.get(self.last if number == c.LAST_PREPARED else number) if self.by_id else None
        if statement is not None:
            number = statement.id
        if statement is None:
            if command in (COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_SEND_LONG_DATA):
                client.command = None  # no reply, as from a server
            else:
                client.reply_error(c.ER_UNKNOWN_STMT_HANDLER, f"Unknown prepared statement handler "
                                   f"({number}) given to {HANDLER_NAMES.get(command) or command_name(command)}")
            return
        if command == COMMAND.COM_STMT_CLOSE:
            del self.by_id[number]  # type: ignore[union-attr]
            client.command = None
            if statement.cursor is not None:
                # Closing the backend's copy (no reply) closes its cursor too.
                conn = client.backend
                if conn is not None and not conn.broken:
                    conn.close_statements([statement.cursor.id])
                self._cursor_closed(statement, cache=False)
                release_if_clean(client)
        elif command == COMMAND.COM_STMT_SEND_LONG_DATA:
            client.command = None  # no reply, as from a server
            statement.add_long_data(payload[5:], client.proxy.max_allowed_packet)
        elif command == COMMAND.COM_STMT_EXECUTE or command == c.COM_STMT_BULK_EXECUTE:
            if statement.long_data_too_long:
                # What the server answers when a parameter's long data passed
                # max_allowed_packet; the execute does not run, and the data is gone.
                statement.long_data = None
                statement.long_data_too_long = False
                client.reply_error(ER_LONG_DATA, "Parameter of prepared statement which is set through "
                                   "mysql_send_long_data() is longer than 'max_allowed_packet' bytes")
                return
            try:
                types = (execute_types(payload, statement.params) if command == COMMAND.COM_STMT_EXECUTE
                         else bulk_types(payload, statement.params))
            except ValueError:
                if command == c.COM_STMT_BULK_EXECUTE:
                    client.reply_error(ER_MALFORMED_PACKET, "Malformed communication packet")
                else:
                    client.reply_error(ER_WRONG_ARGUMENTS, "Incorrect arguments to mysqld_stmt_execute")
                return
            if statement.kill:
                client.sql = statement.sql
                kill_statement(client)
                return
            if types is not None:
                statement.types = types
            # What the statement does is read from its text (once, at prepare),
            # as for COM_QUERY.
            sql = client.sql = statement.sql
            client.busy = True
            found = client.found = statement.found
            catalog = client.catalog
            code = client.code = (stored_code(client, sql, found) if catalog is not None and catalog.watch is not None
                                  or found is not None and found.calls else None)
            if found is not None or code is not None:
                run_flagged(client, lambda: self._execute(statement, packet))
            else:
                client.acquire(lambda: self._execute(statement, packet))
        elif statement.cursor is not None:
            # FETCH and RESET of a statement whose cursor is open on the held connection.
            client.busy = True
            self.cursor = (statement, statement.cursor)
            self._run_rewritten(packet, statement.cursor.id)
        elif command == COMMAND.COM_STMT_RESET:
            statement.long_data = None
            statement.long_data_too_long = False
            client.reply(client.ok_payload())
        else:
            client.reply_error(ER_STMT_HAS_NO_OPEN_CURSOR, f"The statement ({number}) has no open cursor")

    def _prepare_kill(self, sql: bytes) -> None:
        """A KILL names pyproxy's ids, which the server does not know: pyproxy
        prepares it itself (no parameters, no columns) and runs it at each
        execute, as for COM_QUERY.  Its id must be written in the statement:
        a placeholder would be bound only at execute, in the binary protocol."""
        client = self.client
        if not KILL_FORM.match(sql):
            client.reply_error(ER_UNSUPPORTED_PS, "This command is not supported in the prepared statement "
                               "protocol yet (pyproxy prepares only KILL [QUERY | CONNECTION] <id>)")
            return
        number = self.next_id
        self.next_id += 1
        if self.by_id is None:
            self.by_id = {}
        self.by_id[number] = ClientStatement(number, sql, 0, 0, kill=True)
        self.last = number
        client.reply(make_prepare_ok(number, 0, 0))

    def _bulk_refused(self, payload: bytes) -> bool:
        """A COM_STMT_BULK_EXECUTE the server would refuse before looking for its
        statement: from a client that did not negotiate bulk operations, cut
        short, or with flags other than "types follow" (per-row results need
        MARIADB_CLIENT_BULK_UNIT_RESULTS, which pyproxy does not offer)."""
        client = self.client
        if not client.capabilities & c.MARIADB_CLIENT_STMT_BULK_OPERATIONS or (
                len(payload) >= 7 and (payload[5] | payload[6] << 8) & ~c.BULK_SEND_TYPES):
            client.reply_error(ER_UNSUPPORTED_PS, "This command is not supported in the prepared "
                               "statement protocol yet")
            return True
        if len(payload) < 7:
            client.reply_error(ER_MALFORMED_PACKET, "Malformed communication packet")
            return True
        return False

    def _execute(self, statement: ClientStatement, packet: Packet) -> None:
        client = self.client
        conn = client.backend
        assert conn is not None  # acquire() attached it
        # A statement with an open cursor runs where the cursor is (which this
        # execute closes, as on a server).
        cached = statement.cursor or conn.statements.get(statement.sql)
        if cached is not None:
            self._execute_on(statement, packet, cached)
            return

        def prepare() -> None:
            conn.prepare(statement.sql).addCallbacks(
                lambda prepared: self._execute_on(statement, packet, prepared), failed)

        def failed(failure: Failure) -> None:
            exc = failure.value
            if (isinstance(exc, BackendError) and exc.code == ER_MAX_PREPARED_STMT_COUNT_REACHED
                    and self.make_room(prepare)):
                return
            if client.connection.phase != CLOSED:
                client.command_failed(exc)

        prepare()

    def make_room(self, again: Callable[[], Any]) -> bool:
        """The server's max_prepared_stmt_count is reached (error 1461) while pyproxy
        caches statements: the half used longest ago of this connection's cache is
        closed (of the fullest other connection's in the pool, if this one's is
        empty), and ``again`` tries once more; as long as the limit is still
        reached, that goes on until nothing is cached.  The server's limit and
        the statements it holds are read too, so that every connection caches at
        most its share of the room other sessions leave.  Returns False when
        nothing is cached: the error is then the client's, as it would be
        directly."""
        client = self.client
        conn = client.backend
        if conn is None or conn.broken:
            return False
        pool = conn.pool or client.pool
        fullest = conn
        if not len(conn.statements):
            others = [other for other in (*pool.idle, *pool.lent) if len(other.statements) and not other.broken]
            if not others:
                return False
            fullest = max(others, key=lambda other: len(other.statements))
        cancel_query_timer(client)
        fullest.close_statements(fullest.statements.shrink(len(fullest.statements) // 2))
        waits: list[defer.Deferred[Any]] = [conn.query_value("SELECT @@GLOBAL.max_prepared_stmt_count"),
                                            conn.query_rows("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'")]
        if fullest in pool.idle:
            # Closed over another connection: its ping answered means the server
            # has closed them before the statement is tried again.
            pool.begin_check(fullest)
            waits.append(fullest.ping().addCallbacks(
                lambda _: pool.end_check(fullest),
                lambda failure: pool.discard(fullest, f"ping failed: {failure.getErrorMessage()}")))

        def learned(results: list[Any]) -> None:
            limit, rows = results[0], results[1]
            in_use = rows[0][1] if rows and len(rows[0]) >= 2 else None
            if limit is not None and limit.isdigit():
                client.proxy.statement_limit_learned(
                    int(limit), int(in_use) if in_use is not None and in_use.isdigit() else None)
            if client.connection.phase != CLOSED:
                again()

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, defer.FirstError):
                failure = failure.value.subFailure
            if client.connection.phase != CLOSED:
                client.command_failed(failure.value)

        defer.gatherResults(waits, consumeErrors=True).addCallbacks(learned, failed)
        return True

    def _execute_on(self, statement: ClientStatement, packet: Packet, prepared: BackendStatement) -> None:
        client = self.client
        if client.connection.phase == CLOSED:
            return
        if prepared.params != statement.params:
            # The table changed under the statement: its parameters are not the
            # ones the client binds.
            client.command_failed(BackendError(*ER_WRONG_ARGUMENTS, "Incorrect arguments to "
                                               "mysqld_stmt_execute (the statement changed; prepare it again)"))
            return
        conn = client.backend
        assert conn is not None
        types = statement.types if prepared.types != statement.types else None
        if statement.types is not None:
            prepared.types = statement.types
        if statement.long_data:
            header = bytes((COMMAND.COM_STMT_SEND_LONG_DATA,)) + prepared.id.to_bytes(4, "little")
            conn.relay_more(b"".join(frame(header + chunk, 0) for chunk in statement.long_data))
        self.again = (statement, packet, statement.long_data)
        statement.long_data = None
        payload = packet.payload
        if payload[0] == c.COM_STMT_BULK_EXECUTE:
            payload = rewrite_bulk(payload, prepared.id, types)
        elif types is not None or int.from_bytes(payload[1:5], "little") != prepared.id:
            payload = rewrite_execute(payload, prepared.id, statement.params, types)
        # (Else not a byte changes, as when every connection gave the statement the
        # id pyproxy gave the client: the execute goes out as the client sent it.)
        if statement.cursor is not None or payload[0] == COMMAND.COM_STMT_EXECUTE and opens_cursor(payload):
            # Whether a cursor is open after this is read from the reply.
            self.cursor = (statement, prepared)
        client.command = (packet if payload is packet.payload
                          else Packet(packet.seq, payload, frame(payload, packet.seq), packet.last_seq))
        client.start()

    def execute_again(self) -> None:
        """The running execute, refused as read-only, runs again as the client sent
        it, long data included, on a connection borrowed anew (prepared there
        first if needed): see pyproxy.write_retry."""
        statement, packet, long_data = self.again  # type: ignore[misc]
        client = self.client
        statement.long_data = long_data
        client.command = packet
        if client.found is not None or client.code is not None:
            run_flagged(client, lambda: self._execute(statement, packet))
        else:
            client.acquire(lambda: self._execute(statement, packet))

    def _run_rewritten(self, packet: Packet, backend_id: int) -> None:
        client = self.client
        payload = packet.payload[:1] + backend_id.to_bytes(4, "little") + packet.payload[5:]
        client.command = Packet(packet.seq, payload, frame(payload, packet.seq), packet.last_seq)
        client.acquire(client.start)

    def prepare_reply(self, data: BytesLike, tracker: ResponseTracker) -> BytesLike | None:
        """The first bytes of a COM_STMT_PREPARE's reply: the client sees pyproxy's
        statement id, not the connection's.  None when the reply is the server's
        1461 and room is being made: the client sees only the prepare tried again."""
        at = tracker.prepare_at
        tracker.prepare_at = -1
        if data[at + 4] != 0xFF:
            at += 5
            self.preparing = self.next_id
            self.next_id += 1
            return data[:at] + self.preparing.to_bytes(4, "little") + data[at + 4:]
        if tracker.error == ER_MAX_PREPARED_STMT_COUNT_REACHED and self.make_room(self.client.start):
            return None  # the ERR is the whole reply
        return data

    def reply_done(self, command: int, tracker: ResponseTracker) -> None:
        """The reply to a COM_STMT_* command is complete: a prepared statement to
        keep, or a cursor opened or closed."""
        if command == COMMAND.COM_STMT_PREPARE:
            if tracker.prepared is not None and not tracker.error:
                self._prepared(tracker)
            else:
                self.last = 0
        if self.cursor is not None:
            self._cursor_reply(command, tracker)

    def _prepared(self, tracker: ResponseTracker) -> None:
        """A COM_STMT_PREPARE succeeded: the client's statement, and the backend's copy."""
        client = self.client
        backend_id, columns, params = tracker.prepared  # type: ignore[misc]
        command, conn = client.command, client.backend
        assert command is not None and conn is not None
        sql = command.payload[1:]
        if self.by_id is None:
            self.by_id = {}
        self.by_id[self.preparing] = ClientStatement(self.preparing, sql, params, columns, found=sqltext.scan(sql))
        self.last = self.preparing
        conn.close_statements(conn.statements.add(sql, BackendStatement(backend_id, params, columns)))

    def _cursor_reply(self, command: int, tracker: ResponseTracker) -> None:
        """Whether the statement has a cursor open after its EXECUTE, FETCH or RESET.

        A cursor holds the connection it is on, not the session: it is closed by
        the fetch that reports SERVER_STATUS_LAST_ROW_SENT (the server closes it
        then), by COM_STMT_RESET or COM_STMT_CLOSE of its statement and by a new
        execute of it, and the connection goes back when nothing else holds it.
        """
        statement, prepared = self.cursor  # type: ignore[misc]
        self.cursor = None
        status = tracker.status if tracker.status >= 0 else 0
        if command == COMMAND.COM_STMT_EXECUTE:
            is_open = not tracker.error and bool(status & c.SERVER_STATUS_CURSOR_EXISTS)
        elif command == COMMAND.COM_STMT_FETCH:
            is_open = (not status & c.SERVER_STATUS_LAST_ROW_SENT
                       and tracker.error != ER_STMT_HAS_NO_OPEN_CURSOR[0])
        else:  # COM_STMT_RESET
            is_open = bool(tracker.error)
        if is_open and statement.cursor is None:
            session, conn = self.client.session, self.client.backend
            assert session is not None and conn is not None
            statement.cursor = prepared
            session.cursors += 1
            conn.statements.detach(statement.sql, prepared)
        elif not is_open and statement.cursor is not None:
            self._cursor_closed(statement)

    def _cursor_closed(self, statement: ClientStatement, cache: bool = True) -> None:
        """The statement's cursor is gone.  With ``cache``, its backend statement is
        cached again for any execute on this connection."""
        prepared, statement.cursor = statement.cursor, None
        session = self.client.session
        assert session is not None
        session.cursors -= 1
        conn = self.client.backend
        if cache and conn is not None and not conn.broken:
            conn.close_statements(conn.statements.add(statement.sql, prepared))  # type: ignore[arg-type]
