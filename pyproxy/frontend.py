"""pyproxy as a MySQL *server*: the connection an application opens.

The protocol authenticates the client itself, then runs each command on a
backend connection borrowed for it: the connection is held for as long as a
transaction is open (or the session is pinned) and handed back as soon as
the reply's final status says the session is clean.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from pyproxy import auth
from pyproxy.direct_write import write_now
from pyproxy.backend import FLAVOR_BITS, BackendConnection, BackendError, lost_connection
from pyproxy.backend_loss import HARMLESS, held_connection_lost, lost_during_command, refused_after_loss
from pyproxy.kill import cancel_query_timer, kill_statement, query_timed_out
from pyproxy.logs import get_logger
from pyproxy.phases import AUTH_SWITCH, CLOSED, COMMANDS, HANDSHAKE
from pyproxy.prepared import STATEMENT_COMMANDS, PreparedStatements
from pyproxy.login import LOGIN_PACKET_LIMIT, Identity, Login
from pyproxy.proxy import Proxy
from pyproxy import sqltext
from pyproxy.routines import RoutineCatalog, Verdict, combine
from pyproxy.set_global import abandon, compare_after, read_before
from pyproxy.session import (
    ClientSession,
    initial_state,
    last_insert_id_assignment,
    needs_reset,
    reconcile,
    tracking_assignments,
)
from pyproxy.wire import constants as c
from pyproxy.wire.commands import REPLIES, Reply, command_name, make_query, opens_cursor
from pyproxy.wire.constants import CLIENT, COM_RESET_CONNECTION, COMMAND
from pyproxy.wire.framing import Packet, PacketFramer, PacketsOutOfOrder, PacketTooLarge, frame
from pyproxy.wire.handshake import parse_change_user
from pyproxy.wire.response_tracker import DONE, INFILE, ResponseTracker
from pyproxy.wire.responses import (
    make_eof,
    make_err,
    make_ok,
    make_ok_tracked,
    ok_status,
    parse_ok,
    filter_session_track,
    strip_session_track,
)

# Commands pyproxy refuses: replication, server administration and
# long-deprecated ones that make no sense through a pooler.
REFUSED = frozenset((
    COMMAND.COM_SLEEP, COMMAND.COM_CREATE_DB, COMMAND.COM_DROP_DB, COMMAND.COM_SHUTDOWN,
    COMMAND.COM_PROCESS_INFO, COMMAND.COM_CONNECT, COMMAND.COM_PROCESS_KILL, COMMAND.COM_DEBUG,
    COMMAND.COM_TIME, COMMAND.COM_DELAYED_INSERT, COMMAND.COM_BINLOG_DUMP, COMMAND.COM_TABLE_DUMP,
    COMMAND.COM_CONNECT_OUT, COMMAND.COM_REGISTER_SLAVE, COMMAND.COM_DAEMON,
    COMMAND.COM_BINLOG_DUMP_GTID,
))

# Commands a client may send ahead of their replies before pyproxy stops reading it.
QUEUE_LIMIT = 64



# ER_OPTION_PREVENTS_STATEMENT (--read-only) and ER_READ_ONLY_MODE (innodb_read_only).
READ_ONLY_ERRORS = frozenset((1290, 1836))
# Statements that may set LAST_INSERT_ID() without an OK saying so.
_MAY_SET_INSERT_ID = sqltext.INSERT_ID | sqltext.CALLS | sqltext.DYNAMIC
# COMMIT or ROLLBACK (not ROLLBACK TO SAVEPOINT): what ends savepoints.
_ENDS_TRANSACTION = re.compile(rb"(?is)\s*(?:commit|rollback)\b(?!(?:\s+work)?\s+to\b)")
# Statements that may insert rows, and so set LAST_INSERT_ID() (a cheap check,
# made only when the connection's value is not the client's).
_INSERTS = re.compile(rb"(?i)insert|replace|load")
# Statements whose "session state changed" may be more than variables say.
_HIDDEN = sqltext.USER_VARIABLE | sqltext.TEMPORARY | sqltext.SQL_PREPARE | sqltext.DYNAMIC | sqltext.CALLS
# Client error codes libmariadb 3.3 keeps for itself (see FrontendProtocol.error_packet).
CR_FIRST, LIBMARIADB_CR_LAST = 2000, 2061
ER_CONNECTION_KILLED = (1927, "70100")
ER_UNKNOWN_ERROR = (1105, "HY000")


class FrontendProtocol(protocol.Protocol):
    """One application connection, from greeting to COM_QUIT."""

    # Thousands of idle clients are the normal case: no per-instance __dict__.
    __slots__ = (
        "transport", "connected", "factory", "proxy", "id", "phase", "framer", "nonce", "user",
        "capabilities", "flavor", "session", "backend", "pinned", "_login", "busy",
        "_queue", "command", "sql", "infile", "rewrite_oks", "translate", "_borrowing",
        "pool", "kill_pending", "backlog", "paused_backend", "forwarded", "login_charset",
        "statements",
        "hold_timer", "closed_reason", "query_timer", "last_active",
        "refused_infile", "globals_before", "found", "own_tracking",
        "readonly", "_epoch", "libmariadb", "lost_transaction", "catalog", "code", "prefix",
    )

    def __init__(self, proxy: Proxy, readonly: bool = False) -> None:
        self.transport: Any = None
        self.connected = 0
        self.proxy = proxy
        self.id = next(proxy.client_ids)
        self.phase = HANDSHAKE
        # Until the client has logged in it may send only small packets: an
        # unauthenticated peer must not make pyproxy hold megabytes.
        self.framer = PacketFramer(min(LOGIN_PACKET_LIMIT, proxy.config.proxy.max_packet_size))
        self.nonce = auth.new_nonce()
        self.user = ""
        self.capabilities = 0
        self.flavor = 0
        self.session: ClientSession | None = None
        self.backend: BackendConnection | None = None
        self.pinned = False
        # The login phase, until the client has logged in (again, for COM_CHANGE_USER).
        self._login: Login | None = None
        self.busy = False
        self._queue: deque[Packet] | None = None  # commands sent ahead (pipelining), rare
        self.command: Packet | None = None
        self.sql: bytes | None = None
        self.infile = False
        self.rewrite_oks = False
        self.translate = False
        self._borrowing: defer.Deferred[BackendConnection] | None = None
        self.pool: Any = None
        # Came in through the read-only listener: transactions go to readers.
        self.readonly = readonly
        # The topology epoch _pool was chosen in.
        self._epoch = -1
        # The client's library is libmariadb (see error_packet).
        self.libmariadb = False
        # Its transaction died with a backend connection: until the client
        # says ROLLBACK, nothing else runs (see _transaction_lost).
        self.lost_transaction = False
        self.kill_pending = False
        # The client's unsent replies passed its transport's buffer size: no
        # further command runs and no further reply data is read for it until
        # they drain (pauseProducing / resumeProducing).
        self.backlog = False
        # The backend connection whose reading was paused for that.
        self.paused_backend: BackendConnection | None = None
        # The client's prepared statements (pyproxy.prepared); made at its first
        # COM_STMT_* command.
        self.statements: PreparedStatements | None = None
        self.hold_timer: Any = None
        self.closed_reason: str | None = None
        self.query_timer: Any = None
        self.last_active = 0.0
        # The sequence id for the error that replaces a refused LOCAL INFILE, or -1.
        self.refused_infile = -1
        # Around a SET GLOBAL: pyproxy's own connection to the server and the
        # global variables read over it just before the statement ran.
        self.globals_before: tuple[BackendConnection | None, dict[str, str | None]] | None = None
        # What sqltext.scan() found in the running statement's text.
        self.found: sqltext.Found | None = None
        # The user's catalog of stored code (pyproxy.routines), and what the
        # stored code the running statement names can do (None: it names none).
        self.catalog: RoutineCatalog | None = None
        self.code: Verdict | None = None
        # pyproxy's own SET to send ahead of the running command in the same
        # write, and the LAST_INSERT_ID() it gives the connection (see _bring_to_state).
        self.prefix: tuple[bytes, int] | None = None
        # The backend's session_track_* settings are the client's own (a pinned
        # session): its OK packets reach the client unfiltered.
        self.own_tracking = False
        self.forwarded = False
        self.login_charset = proxy.config.backend.charset

    @property
    def log(self) -> Any:
        """A logger bound to this client, made when an event is logged (a few times
        per connection) rather than kept per connection."""
        return get_logger(client_id=self.id, user=self.user) if self.user else get_logger(client_id=self.id)

    # -- connection phase ---------------------------------------------------

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            pass  # a UNIX socket: no Nagle to turn off
        if len(self.proxy.clients) >= self.proxy.config.proxy.max_client_connections:
            code, state = c.ER_CON_COUNT_ERROR
            self.transport.write(frame(make_err(code, state, "Too many connections"), 0))
            self.closed_reason = "max_client_connections reached"
            self.phase = CLOSED
            self.transport.loseConnection()
            return
        self.proxy.clients[self.id] = self
        # pyproxy is the producer of everything this client is sent: its
        # transport says when the unsent bytes pass its buffer size, and when
        # they have drained.
        self.transport.registerProducer(self, True)
        proxy = self.proxy
        login = self._login = Login(self, proxy.credentials, self.nonce, proxy.capabilities)
        login.greet(self.id, proxy.server, proxy.config.proxy.auth_plugin, proxy.reactor,
                    proxy.config.proxy.handshake_timeout)

    def login_timed_out(self) -> None:
        """handshake_timeout passed: a client still logging in is disconnected (one
        whose login-time schema check is under way is not)."""
        if self.phase in (HANDSHAKE, AUTH_SWITCH):
            self.closed_reason = "handshake timeout"
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            packets = self.framer.feed(data)
        except PacketTooLarge as exc:
            message = ("Got a packet bigger than 'max_allowed_packet' bytes" if self.phase == COMMANDS else
                       f"Got a login packet bigger than {LOGIN_PACKET_LIMIT} bytes")
            self.fatal(c.ER_NET_PACKET_TOO_LARGE, message, exc.seq + 1)
            return
        except PacketsOutOfOrder as exc:
            self.fatal(c.ER_NET_PACKETS_OUT_OF_ORDER, "Got packets out of order", exc.seq + 1)
            return
        for packet in packets:
            if self.phase == COMMANDS:
                if self.infile:
                    self._infile_packet(packet)
                elif self.busy or self.backlog:
                    if self._queue is None:
                        self._queue = deque()
                    self._queue.append(packet)
                    if len(self._queue) == QUEUE_LIMIT:
                        # A client far ahead of its replies: stop reading it.
                        self.transport.pauseProducing()
                else:
                    self._dispatch(packet)
            elif self.phase == HANDSHAKE or self.phase == AUTH_SWITCH:
                if self._login.receive(packet) and self.phase == HANDSHAKE:
                    self.phase = AUTH_SWITCH
            else:
                return

    def fatal(self, error: tuple[int, str], message: str, seq: int | None = None) -> None:
        """An error the connection cannot survive: report it, then close."""
        if self.phase == CLOSED:
            return
        if seq is None:
            seq = self.command.last_seq + 1 if self.command is not None else 0
        self.transport.write(frame(self.error_packet(error[0], error[1], message), seq))
        self.closed_reason = message
        self.phase = CLOSED
        self.transport.loseConnection()

    def error_packet(self, code: int, sqlstate: str, message: str) -> bytes:
        """An ERR packet for this client.

        libmariadb (mysqlclient, the mariadb CLI, C programs) takes a server
        error carrying one of its own client codes (2000-2061) for a malformed
        reply and reports 2027 instead; such a client gets 1927 (connection
        killed, 70100) for a lost backend and 1105 for the rest, with the
        client code in the message.  Other drivers report 2013 as sent.
        """
        if self.libmariadb and CR_FIRST <= code <= LIBMARIADB_CR_LAST:
            message = f"{message} (client error {code})"
            code, sqlstate = ER_CONNECTION_KILLED if code == c.CR_SERVER_LOST[0] else ER_UNKNOWN_ERROR
        return make_err(code, sqlstate, message)

    def login_accepted(self, identity: Identity, seq: int) -> None:
        """The login phase proved who the client is: its session begins (again, after
        COM_CHANGE_USER), and the OK follows, once a schema the login named is
        known to exist."""
        if self.session is None:
            # The first login.  COM_CHANGE_USER keeps what the connection
            # negotiated then, and its client library.
            capabilities = self.capabilities = identity.capabilities
            self.flavor = capabilities & FLAVOR_BITS
            self.rewrite_oks = not capabilities & CLIENT.SESSION_TRACK
            self.translate = not capabilities & CLIENT.DEPRECATE_EOF
            self.libmariadb = identity.libmariadb
        self.user = identity.user
        multi = bool(self.capabilities & CLIENT.MULTI_STATEMENTS)
        schema = identity.schema
        database = schema if schema is not None else self.proxy.config.backend.database
        self.login_charset = identity.charset
        self.session = ClientSession(initial_state(identity.charset, database,
                                                   self.proxy.server.autocommit, multi))
        self.catalog = self.proxy.catalog(self.user)
        if schema and not self.proxy.schema_known(self.user, schema):
            self._verify_schema(schema, seq)
            return
        self._logged_in(seq)

    def _verify_schema(self, schema: str, seq: int) -> None:
        """A login naming a schema fails at once if it does not exist, as with a server."""
        self.phase = COMMANDS
        self.busy = True
        self.command = Packet(seq - 1, b"", b"", seq - 1)
        self.acquire(lambda: self._logged_in(seq))

    def _logged_in(self, seq: int) -> None:
        self.last_active = self.proxy.reactor.seconds()
        login, self._login = self._login, None
        if login is not None:
            login.stop()
        self.phase = COMMANDS
        self.framer.max_packet_size = self.proxy.config.proxy.max_packet_size
        if self.session is not None and self.session.state.schema:
            self.proxy.schema_used(self.user, self.session.state.schema)
        self.transport.write(frame(self.ok_payload(), seq))
        self.proxy.client_connected(self.log, self.transport.getPeer())
        self.command = None
        self.busy = False
        self.release_if_clean()
        self.run_queued()

    def ok_payload(self, header: int = 0x00) -> bytes:
        status = self.status()
        if self.capabilities & CLIENT.SESSION_TRACK:
            return make_ok_tracked(status, header=header)
        return make_ok(status, header=header)

    def status(self) -> int:
        session = self.session
        status = 0
        if session is not None:
            if session.state.autocommit:
                status |= c.SERVER_STATUS_AUTOCOMMIT
            if session.in_transaction:
                status |= c.SERVER_STATUS_IN_TRANS
        return status

    # -- command phase ------------------------------------------------------

    def _dispatch(self, packet: Packet) -> None:
        payload = packet.payload
        if not payload:
            self.command = packet
            self.reply_error(c.ER_UNKNOWN_COM_ERROR, "Unknown command (empty packet)")
            return
        command = payload[0]
        self.command = packet
        self.last_active = self.proxy.reactor.seconds()
        if self.lost_transaction and command not in HARMLESS and refused_after_loss(self, payload):
            return
        if (command == COMMAND.COM_QUERY or command == COMMAND.COM_STMT_EXECUTE) and self.catalog.stale:
            self._await_catalog(packet)
            return
        reply = REPLIES.get(command)
        if command in STATEMENT_COMMANDS:
            statements = self.statements
            if statements is None:
                statements = self.statements = PreparedStatements(self)
            statements.command(packet, command)
            return
        if reply is not None and command not in (COMMAND.COM_PING, COMMAND.COM_SET_OPTION,
                                                 COM_RESET_CONNECTION, COMMAND.COM_CHANGE_USER):
            if command == COMMAND.COM_QUERY:
                sql = self.sql = payload[1:]
                head = payload[1:2]
                if (head in (b"k", b"K") or head.isspace()) and kill_statement(self):
                    return
                found = self.found = sqltext.scan(sql)
                code = self.code = (self.stored_code(sql, found) if self.catalog.watch is not None
                                    or found is not None and found.calls else None)
                if found is not None or code is not None:
                    self.busy = True
                    self.run_flagged(self.start)
                    return
            else:
                self.sql = None
                self.found = self.code = None
            self.busy = True
            self.acquire(self.start)
            return
        if command == COMMAND.COM_QUIT:
            self.closed_reason = "COM_QUIT"
            self.phase = CLOSED
            self.transport.loseConnection()
        elif command == COMMAND.COM_PING:
            if self.backend is not None and self.pinned:
                self.busy = True
                self.acquire(self.start)
            else:
                self.reply(self.ok_payload())
        elif command == COMMAND.COM_SET_OPTION:
            self._set_option(payload)
        elif command == COM_RESET_CONNECTION:
            self._reset_connection()
        elif command == COMMAND.COM_CHANGE_USER:
            self._change_user(packet)
        elif command in REFUSED or command not in REPLIES:
            self.reply_error(c.ER_UNKNOWN_COM_ERROR, f"Unknown command {command_name(command)} "
                             "(not supported by pyproxy)")

    def reply(self, payload: bytes) -> None:
        seq = self.command.last_seq + 1 if self.command is not None else 1
        self.transport.write(frame(payload, seq))
        self.command = None

    def reply_error(self, error: tuple[int, str], message: str) -> None:
        self.reply(self.error_packet(error[0], error[1], message))

    def _set_option(self, payload: bytes) -> None:
        if len(payload) < 3 or payload[1] not in (c.MYSQL_OPTION_MULTI_STATEMENTS_ON,
                                                  c.MYSQL_OPTION_MULTI_STATEMENTS_OFF):
            self.reply_error(c.ER_UNKNOWN_COM_ERROR, "Unknown option to COM_SET_OPTION")
            return
        on = payload[1] == c.MYSQL_OPTION_MULTI_STATEMENTS_ON
        if on:
            self.capabilities |= CLIENT.MULTI_STATEMENTS
        else:
            self.capabilities &= ~CLIENT.MULTI_STATEMENTS
        session = self.session
        session.state = attrs.evolve(session.state, multi_statements=on)
        if self.capabilities & CLIENT.DEPRECATE_EOF:
            self.reply(self.ok_payload(0xFE))
        else:
            self.reply(make_eof(self.status()))

    # -- borrowing and running ----------------------------------------------

    def acquire(self, then: Any) -> None:
        """Makes sure a backend connection in the client's state is attached, then calls ``then``."""
        held = self.backend
        if held is not None:
            if held.broken:
                self.backend = None
                if held_connection_lost(self):
                    return
            elif self._epoch == self.proxy.topology.epoch or not self._server_moved(held):
                if self.pinned and not self.own_tracking:
                    self._bring_to_state(lambda: self._restore_tracking(then))
                else:
                    self._bring_to_state(then)
                return
            elif self.pinned:
                self.busy = False  # nothing was sent: the connection can be reset and reused
                self.fatal(c.CR_SERVER_LOST, "Lost connection to MySQL server: the server this "
                           "pinned session's state lives on no longer serves it (failover to "
                           f"{self.proxy.topology.writer.name})")
                return
            elif self.session.holds_state():
                # An open transaction finishes where it began; the server
                # says what becomes of its writes.
                self._bring_to_state(then)
                return
            else:
                # Held only for a follow-up (SHOW WARNINGS, ROW_COUNT()): not
                # worth staying on a server that no longer takes this traffic.
                self.backend = None
                self.session.hold_next = False
                if self.hold_timer is not None and self.hold_timer.active():
                    self.hold_timer.cancel()
                self.hold_timer = None
                _give_back(held)
        pool = self.pool
        topology = self.proxy.topology
        if pool is None or self._epoch != topology.epoch or pool.user != self.user or pool.closed:
            pool = self.pool = self.proxy.route(self.user, self.readonly, pool)
            self._epoch = topology.epoch
        conn = pool.try_borrow(self.flavor)
        if conn is not None:
            self.backend = conn
            self._bring_to_state(then)
            return
        d = self._borrowing = pool.borrow(self.flavor, self.readonly)

        def borrowed(conn: BackendConnection) -> None:
            self._borrowing = None
            if self.phase == CLOSED:
                _give_back(conn)
                return
            self.backend = conn
            self._bring_to_state(then)

        def failed(failure: Failure) -> None:
            self._borrowing = None
            if failure.check(defer.CancelledError) or self.phase == CLOSED:
                return
            self.command_failed(failure.value)

        d.addCallbacks(borrowed, failed)

    def _server_moved(self, held: BackendConnection) -> bool:
        """Whether the server ``held`` is on stopped serving this client's traffic:
        no longer the writer, or, for the read-only listener, down."""
        target = held.pool.target if held.pool is not None else None
        if target is None:
            return False
        return not target.usable if self.readonly else target is not self.proxy.topology.writer

    def _bring_to_state(self, then: Any) -> None:
        """Makes the attached connection the client's own: its carried state, its
        LAST_INSERT_ID() before a statement that may read or set it, and no
        diagnostics area (warnings, errors) left by another client."""
        conn = self.backend
        session = self.session
        desired = session.state
        if ((desired is conn.state or desired == conn.state)
                and (conn.diagnostics is None or conn.diagnostics is session)
                and (conn.last_insert_id == session.last_insert_id or conn.last_insert_id is None
                     or not self._touches_insert_id())):
            then()
            return
        if (desired == conn.state and self.command is not None and self.command.payload
                and REPLIES.get(self.command.payload[0]) not in (None, Reply.NONE)):
            # Only pyproxy's own hygiene: one SET sent ahead of the command in
            # the same write, its OK taken out of the reply (see start).
            value = self._insert_id_to_set(conn)
            clear = conn.diagnostics is not None and conn.diagnostics is not session
            self.prefix = (frame(make_query("SET SESSION " + last_insert_id_assignment(value, clear)), 0),
                           value)
            then()
            return
        d = conn.change_user() if needs_reset(desired, conn.state) else defer.succeed(conn)
        value = -1

        def apply(_: Any) -> defer.Deferred[Any]:
            nonlocal value
            extra = []
            clear = conn.diagnostics is not None and conn.diagnostics is not session
            if clear or (conn.last_insert_id is not None and conn.last_insert_id != session.last_insert_id
                         and self._touches_insert_id()):
                value = self._insert_id_to_set(conn)
                extra.append(last_insert_id_assignment(value, clear))
            commands = reconcile(desired, conn.state, extra)
            return defer.gatherResults([conn.execute(cmd) for cmd in commands], consumeErrors=True)

        def applied(_: Any) -> None:
            conn.state = desired
            if value >= 0:
                conn.last_insert_id = value
                conn.diagnostics = None
            if self.phase != CLOSED:
                then()

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, defer.FirstError):
                failure = failure.value.subFailure
            if self.phase != CLOSED:
                self.command_failed(failure.value)

        d.addCallback(apply)
        d.addCallbacks(applied, failed)

    def _insert_id_to_set(self, conn: BackendConnection) -> int:
        """The LAST_INSERT_ID() a connection should have for this client's
        statement: the client's own where the statement may read or set it
        (or the connection's is unknown), else the connection's as it is."""
        known = conn.last_insert_id
        if known is None or (known != self.session.last_insert_id and self._touches_insert_id()):
            return self.session.last_insert_id
        return known

    def _touches_insert_id(self) -> bool:
        """Whether the running statement may read or set LAST_INSERT_ID(): its text
        names it or inserts rows, or stored code it runs reads it (or cannot be
        read).  The server's value must then be the client's before it runs,
        so that after it the value is the client's whether it changed or not."""
        found = self.found
        if found is not None and found.flags & _MAY_SET_INSERT_ID:
            return True
        code = self.code
        if code is not None and code.insert_id:
            return True
        sql = self.sql
        return sql is not None and _INSERTS.search(sql, 0, sqltext.SCAN_LIMIT) is not None

    def start(self) -> None:
        packet = self.command
        payload = packet.payload
        reply = REPLIES[payload[0]]
        self.forwarded = False
        conn = self.backend
        timeout = self.proxy.config.proxy.query_timeout
        if timeout and reply != Reply.NONE:
            self.query_timer = self.proxy.reactor.callLater(timeout, query_timed_out, self, packet)
        prefix = self.prefix
        if prefix is not None:
            self.prefix = None
            conn.last_insert_id = prefix[1]
            conn.diagnostics = None
            raw = prefix[0] + packet.raw
        else:
            raw = packet.raw
        if self.translate and conn.tracker.deprecate_eof:
            cursor = reply == Reply.EXECUTE and opens_cursor(payload)
            conn.relay(raw, reply, self, translate=True, cursor=cursor, metadata_status=self.status(),
                       swallow=prefix is not None)
        else:
            conn.relay(raw, reply, self, swallow=prefix is not None)
        if reply == Reply.NONE:
            self._finish_command()

    def backend_data(self, data: bytes, tracker: ResponseTracker) -> None:
        """Bytes of the reply, already settled by the tracker: forward them."""
        if self.refused_infile >= 0:
            # The rest of a reply whose LOCAL INFILE this client may not run.
            if tracker.state == DONE:
                if "mariadb" in self.proxy.server.version.lower():
                    code, state, message = (4166, "HY000", "The used command is not allowed because "
                                            "the MariaDB server or client has disabled the local "
                                            "infile capability")
                else:
                    code, state, message = (3948, "42000", "Loading local data is disabled; this "
                                            "must be enabled on both the client and server sides")
                self.transport.write(frame(make_err(code, state, message), self.refused_infile))
                self.refused_infile = -1
                self._reply_done(tracker)
            return
        if tracker.infile_at >= 0 and not self.capabilities & CLIENT.LOCAL_FILES:
            self._refuse_infile(data, tracker)
            return
        if tracker.prepare_at >= 0:
            data = self.statements.prepare_reply(data, tracker)  # type: ignore[union-attr]
            if data is None:
                return  # the ERR is the whole reply: the client sees only the retried one
        oks = tracker.oks
        if tracker.edits or oks and (tracker.changed or self.rewrite_oks
                                     and len(oks) > len(tracker.terminators)):
            data = self._observe_oks(data, tracker)
        if type(data) is bytearray:  # translated in place; transports take bytes only
            data = bytes(data)
        if data:
            self.forwarded = True
            write_now(self.transport, data)
        state = tracker.state
        if state == DONE:
            self._reply_done(tracker)
        elif state == INFILE:
            tracker.infile_at = -1
            self.infile = True

    def _refuse_infile(self, data: bytes, tracker: ResponseTracker) -> None:
        """The server asks for a LOCAL INFILE from a client that did not offer
        CLIENT_LOCAL_FILES: the server gets an empty file, the client the error
        its server would have given it (MariaDB 4166, MySQL 3948) in place of
        the request."""
        at = tracker.infile_at
        tracker.infile_at = -1
        if at:
            self.forwarded = True
            write_now(self.transport, bytes(data[:at]))
        self.refused_infile = tracker.seq
        conn = self.backend
        conn.relay_more(frame(b"", (tracker.seq - tracker.shift + 1) & 0xFF))
        conn.infile_sent()

    def pauseProducing(self) -> None:
        """The client reads slower than its replies come (its transport holds more
        than its buffer size unsent): until they drain, the backend connection
        relaying to it is not read, and no further command of the client runs,
        whether it is queued already or still in its socket."""
        self.backlog = True
        conn = self.backend
        if conn is not None and self.busy and conn.transport is not None and self.paused_backend is None:
            self.paused_backend = conn
            conn.transport.pauseProducing()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The client's unsent replies have drained."""
        self.backlog = False
        if self.transport.disconnecting:
            # Closing: with a paused producer registered, the transport would
            # wait for it instead of closing once the buffer is empty.
            self.transport.unregisterProducer()
            return
        self._resume_backend()
        if not self._queue or len(self._queue) < QUEUE_LIMIT:
            self.transport.resumeProducing()
        if not self.busy and self.phase == COMMANDS:
            self.run_queued()

    def stopProducing(self) -> None:
        """The transport is gone; connectionLost does the rest."""

    def _resume_backend(self) -> None:
        """Reading from the backend connection paused for a slow client resumes
        (its reply goes on, or it is about to serve someone else)."""
        conn, self.paused_backend = self.paused_backend, None
        if conn is not None and conn.transport is not None:
            conn.transport.resumeProducing()

    def _observe_oks(self, data: bytes, tracker: ResponseTracker) -> bytes:
        """Reads tracked session changes from OK packets, and gives the client the
        packets it negotiated: the tracker's EOFs for a client without
        CLIENT_DEPRECATE_EOF, OKs without the state block for one without
        CLIENT_SESSION_TRACK."""
        edits = tracker.edits
        terminators = tracker.terminators
        if tracker.changed or self.rewrite_oks and len(tracker.oks) > len(terminators):
            session = self.session
            strip = []
            for start, end in tracker.oks:
                payload = bytes(data[start + 4:end])
                status = ok_status(payload)
                if status & c.SERVER_SESSION_STATE_CHANGED:
                    ok = parse_ok(payload, True)
                    if ok.changes is not None:
                        found = self.found
                        ignore = self.proxy.ignored_variables
                        if found is not None and found.scoped:
                            # SET STATEMENT ... FOR: the values last only as
                            # long as the statement.
                            ignore = ignore | frozenset(found.scoped)
                        code = self.code
                        reason = session.observe_changes(ok.changes, self.sql, ignore, found,
                                                         code.unclean if code is not None else None)
                        if reason is not None:
                            self.log_pin(reason)
                if start in terminators:
                    continue
                if self.rewrite_oks:
                    if status & c.SERVER_SESSION_STATE_CHANGED or len(payload) > 7:
                        strip.append((start, end, frame(strip_session_track(payload), data[start + 3])))
                elif status & c.SERVER_SESSION_STATE_CHANGED and not self.own_tracking:
                    settings = session.tracking or self.backend.tracking
                    strip.append((start, end, frame(filter_session_track(
                        payload, settings.variables, settings.kinds), data[start + 3])))
            if strip:
                edits = sorted(edits + strip)
        if not edits:
            return data
        pieces = []
        last = 0
        for start, end, packet in edits:
            pieces.append(data[last:start])
            pieces.append(packet)
            last = end
        pieces.append(data[last:])
        return b"".join(pieces)

    def _reply_done(self, tracker: ResponseTracker) -> None:
        session = self.session
        if tracker.status >= 0:
            # Also after an error: an earlier result of a multi-statement may
            # have opened a transaction that the error did not end.
            session.observe_status(tracker.status)
        if tracker.error:
            session.observe_error()
            if tracker.error in READ_ONLY_ERRORS and not self.readonly:
                # The writer refused a write as read-only: a failover may be
                # under way; the probes should see who is writable now, not at
                # their interval.
                self.proxy.topology.suspect()
        session.observe_result(error=bool(tracker.error), warnings=tracker.warnings,
                               affected=tracker.affected, insert_id=tracker.insert_id)
        found = self.found
        code = self.code
        conn = self.backend
        if conn is not None:
            if tracker.warned or tracker.error:
                # SHOW WARNINGS / SHOW ERRORS now show this client's messages.
                conn.diagnostics = session
            if tracker.saw_insert_id or found is not None and found.flags & _MAY_SET_INSERT_ID:
                # An OK's insert id is LAST_INSERT_ID() only if it was generated
                # (an explicit id is reported too), and stored code may set it
                # unseen: the server says which before anyone else gets this one.
                conn.last_insert_id = None
        command = self.command.payload[0] if self.command is not None else 0
        if code is not None and code.unclean is not None:
            # Even if it failed: what ran before the error stays.
            self.pin(f"stored code that may leave state behind ({code.unclean})")
        if tracker.untracked_change and (not tracker.status & c.SERVER_STATUS_IN_TRANS
                                         or found is not None and found.flags & _HIDDEN):
            # A classic EOF says only that something changed: inside a
            # transaction that is the transaction state, unless the statement
            # could have set a user variable or the like.
            self.pin("session state changed inside a result set")
        if self.sql is not None:
            reason = session.observe_query(self.sql, bool(tracker.error), found)
            if reason is not None:
                self.log_pin(reason)
            if found is not None and found.flags & sqltext.ROUTINES_CHANGED and (
                    not tracker.error or found.flags & sqltext.MULTI):
                self.proxy.routines_changed()
            if found is not None and found.flags & sqltext.SAVEPOINT and not tracker.error:
                session.observe_savepoint()
            elif session.savepoint and _ENDS_TRANSACTION.match(self.sql):
                session.savepoint = False
            if not tracker.error and session.ends_session(self.sql):
                # The server closes its end: so does pyproxy, as a server would,
                # and the connection, about to close, serves nobody else.
                self.kill_pending = True
                self.closed_reason = "COMMIT/ROLLBACK RELEASE"
                conn, self.backend = self.backend, None
                if conn is not None:
                    _discard(conn, "server session ended (RELEASE)")
        statements = self.statements
        if statements is not None and (statements.cursor is not None or command == COMMAND.COM_STMT_PREPARE):
            statements.reply_done(command, tracker)
        if self.backend is not None:
            self.backend.state = session.state
        if self.globals_before is not None or session.reread:
            self.follow_up()
            return
        self._finish_command()

    def follow_up(self) -> None:
        """What a reply may still need, in pyproxy's own round trips, before the
        client's next command runs (which waits, as during the reply): reading
        the globals after a SET GLOBAL, the variables of a SET @@name."""
        if self.phase == CLOSED:
            return
        if self.globals_before is not None:
            compare_after(self)
        elif self.session.reread:
            self._reread()
        else:
            self._finish_command()

    def _reread(self) -> None:
        """SET @@name = value is not reported by MariaDB's session tracking: the
        same variables are assigned their own values in a form it reports, so
        that they are carried (and not left behind for the connection's next
        borrower).  That changes nothing else in the session, its warnings
        included.  A pinned session keeps its connection and needs none of it."""
        session = self.session
        names, session.reread = session.reread, ()
        conn = self.backend
        if self.pinned or conn is None or conn.broken:
            self.follow_up()
            return

        def read(payload: bytes) -> None:
            ok = parse_ok(payload, True)
            if ok.changes is not None:
                reason = session.observe_changes(ok.changes, None, self.proxy.ignored_variables)
                if reason is not None:
                    self.log_pin(reason)
            conn.state = session.state

        def failed(failure: Failure) -> None:
            # The value stays unknown: only this connection has it.
            self.pin("SET @@variable the server did not report")

        assignments = ", ".join(f"{name} = @@SESSION.{name}" for name in names)
        conn.execute(make_query("SET SESSION " + assignments)).addCallbacks(read, failed).addBoth(
            lambda _: self.follow_up())

    def run_flagged(self, then: Any) -> None:
        """A statement whose text sqltext.scan() flagged, or that names stored code:
        what it needs before it runs, then borrowing as usual."""
        found = self.found
        flags = found.flags if found is not None else 0

        def attach() -> None:
            if flags & sqltext.OWN_TRACKING:
                self.acquire(lambda: self._own_tracking_first(then))
            else:
                self.acquire(then)

        if flags & sqltext.READ_GLOBALS:
            read_before(self, attach)
        else:
            attach()

    def stored_code(self, sql: bytes, found: sqltext.Found | None) -> Verdict | None:
        """What the stored code ``sql`` can run does, by the user's catalog: the
        procedures it CALLs, and the functions, trigger tables and views it names."""
        catalog = self.catalog
        code = catalog.check(sql)
        if found is not None and found.calls:
            schema = self.session.state.schema
            for name in found.calls:
                code = combine(code, catalog.procedure(name, schema))
        return code

    def _await_catalog(self, packet: Packet) -> None:
        """The user's catalog of stored code is stale (never read, or a statement
        changed such code): it is read before this statement runs, so that
        what the statement may leave behind is judged by the code as it is now."""
        self.busy = True

        def loaded(_: Any) -> None:
            if self.phase != COMMANDS:
                return
            self.busy = False
            self._dispatch(packet)
            if not self.busy:
                self.run_queued()

        self.proxy.load_catalog(self.user).addBoth(loaded)

    def _own_tracking_first(self, then: Any) -> None:
        """The statement reads or sets session_track_* variables: the session is
        pinned, and its connection given the client's own tracking settings
        before the statement runs, so that it sees what a server would show it."""
        self.pin("session_track_* variables read or set")
        self._restore_tracking(then)

    def _restore_tracking(self, then: Any) -> None:
        """A pinned session keeps its connection until it ends, so pyproxy no longer
        needs to learn from that connection's tracking: it gets the tracking
        settings the client's own session would have (those the client did not
        set itself), and from then on the client sees the server's OK packets
        as they are.  The connection is reset before anyone else uses it."""
        conn = self.backend
        session = self.session
        self.own_tracking = True
        command = tracking_assignments(session.tracking or conn.tracking, session.own_tracking)
        if command is None:
            then()
            return

        def failed(failure: Failure) -> None:
            if self.phase != CLOSED:
                self.command_failed(failure.value)

        conn.execute(command).addCallbacks(lambda _: then() if self.phase != CLOSED else None, failed)

    def check_idle(self, now: float, timeout: float) -> None:
        """Disconnects a client idle between commands for longer than ``timeout``
        (idle_client_timeout); a held transaction is rolled back by the reset."""
        if self.phase == COMMANDS and not self.busy and not self.infile and now - self.last_active > timeout:
            self.closed_reason = "idle_client_timeout"
            self.transport.loseConnection()

    def _finish_command(self) -> None:
        if self.query_timer is not None:
            cancel_query_timer(self)
        if self.paused_backend is not None:
            self._resume_backend()
        if self.hold_timer is not None:
            if self.hold_timer.active():
                self.hold_timer.cancel()
            self.hold_timer = None
        self.command = None
        self.sql = None
        self.found = self.code = None
        self.busy = False
        if self.kill_pending:
            self.phase = CLOSED
            self.transport.loseConnection()
        self.release_if_clean()
        if self.proxy.draining:
            self.drain()
            return
        self.run_queued()

    def drain(self) -> None:
        """Shutting down: a client that holds no transaction is closed now; one that
        does is closed when its transaction ends."""
        if self.phase != COMMANDS or self.busy or self.infile:
            return
        if self.backend is not None and self.session.holds_state() and not self.pinned:
            return
        self.closed_reason = "shutdown"
        self.transport.loseConnection()

    def run_queued(self) -> None:
        queue = self._queue
        if not queue:
            return
        paused = len(queue) >= QUEUE_LIMIT
        while queue and not self.busy and not self.infile and not self.backlog and self.phase == COMMANDS:
            self._dispatch(queue.popleft())
        if paused and len(queue) < QUEUE_LIMIT and not self.backlog and self.phase == COMMANDS:
            self.transport.resumeProducing()

    def release_if_clean(self) -> None:
        conn = self.backend
        if conn is None:
            return
        session = self.session
        if session.keeps_backend():
            if not session.holds_state() and self.hold_timer is None:
                self.hold_timer = self.proxy.reactor.callLater(
                    self.proxy.config.session.hold_for_next_statement, self._hold_expired)
            return
        self.backend = None
        if conn.last_insert_id is None and not conn.broken:
            self._resolve_insert_id(conn)
            return
        # Its own pool: a failover may have moved this client's wait to another.
        conn.pool.give_back(conn)

    def _resolve_insert_id(self, conn: BackendConnection) -> None:
        """Before another client can get ``conn``, reads back what LAST_INSERT_ID()
        is now, which this client's statements left there: an OK's insert id
        does not say (an explicitly inserted id is reported too, and stored
        code may set it unseen).  The client's next command waits for it, as
        it needs the value wherever it runs."""
        session = self.session
        self.busy = True

        def read(value: str | None) -> None:
            number = int(value) if value is not None and value.isdigit() else 0
            conn.last_insert_id = session.last_insert_id = number
            _give_back(conn)

        def failed(failure: Failure) -> None:
            _discard(conn, f"LAST_INSERT_ID() unread: {failure.getErrorMessage()}")

        def done(_: Any) -> None:
            if self.phase != COMMANDS:
                return
            self.busy = False
            if self.proxy.draining:
                self.drain()
            else:
                self.run_queued()

        conn.query_value("SELECT LAST_INSERT_ID()").addCallbacks(read, failed).addBoth(done)

    def _hold_expired(self) -> None:
        """The client did not follow up in time: the results it could have read back
        are given up, and the connection with them."""
        self.hold_timer = None
        if self.busy or self.phase != COMMANDS:
            return
        self.session.hold_next = False
        self.release_if_clean()

    def pin(self, reason: str) -> None:
        if self.session.pin_reason is None:
            self.session.pin(reason)
            self.log_pin(reason)

    def log_pin(self, reason: str) -> None:
        if not self.pinned:
            self.pinned = True
            self.proxy.pins[reason] += 1
            self.log.info("session_pinned", reason=reason,
                          backend_id=self.backend.id if self.backend else None)

    def _infile_packet(self, packet: Packet) -> None:
        conn = self.backend
        if conn is None:
            return
        shift = conn.tracker.shift
        # After translated result sets earlier in the same reply, the client
        # numbers its packets ahead of the server.
        conn.relay_more(frame(packet.payload, packet.seq - shift) if shift else packet.raw)
        if not packet.payload:
            self.infile = False
            conn.infile_sent()

    def command_failed(self, exc: Exception) -> None:
        """A command could not run (no backend, or reconciling it failed)."""
        abandon(self)
        if self.statements is not None:
            self.statements.cursor = None
        self.prefix = None
        if not isinstance(exc, BackendError):
            self.log.error("internal_error", error=repr(exc))
            exc = lost_connection(repr(exc))
        conn = self.backend
        if conn is not None and conn.broken:
            self.backend = None
            _discard(conn, "broken")
            if self.session.holds_state():
                self.fatal((exc.code, exc.sqlstate), exc.message + "; session state was lost")
                return
        if self.command is not None and not self.command.payload:
            # Login-time schema check.
            self.fatal((exc.code, exc.sqlstate), exc.message, self.command.seq + 1)
            return
        self.reply_error((exc.code, exc.sqlstate), exc.message)
        self.busy = False
        self.sql = None
        self.release_if_clean()
        self.run_queued()

    def backend_failed(self, exc: Exception) -> None:
        """pyproxy itself failed while handling this client's reply: the client is
        told and closed; its backend connection, maybe mid-reply, is dropped."""
        conn = self.backend
        self.backend = None
        if conn is not None:
            _discard(conn, "internal error")
        self.fatal((1105, "HY000"), f"pyproxy internal error: {exc!r}")

    def backend_lost(self, error: BackendError) -> None:
        """The backend died while relaying this client's command."""
        abandon(self)
        if self.statements is not None:
            self.statements.cursor = None
        cancel_query_timer(self)
        self._resume_backend()
        conn = self.backend
        self.backend = None
        if conn is not None:
            _discard(conn, "lost during a command")
            if conn.pool is not None:
                self.proxy.topology.suspect(conn.pool.target)
        lost_during_command(self, conn, error)

    def _reset_connection(self) -> None:
        """COM_RESET_CONNECTION: the session starts over (schema kept, as a server
        does); a backend held for this client is reset before anyone else gets it."""
        state = self.session.state
        self.session = ClientSession(initial_state(self.login_charset, state.schema,
                                                   self.proxy.server.autocommit, state.multi_statements))
        if self.statements is not None:
            self.statements.forget()  # the server closes them on reset
        self.lost_transaction = False
        self._detach_backend()
        self.pinned = False
        self.reply(self.ok_payload())

    def _detach_backend(self) -> None:
        """Gives back a held backend after resetting it (it may carry pinned state)."""
        conn = self.backend
        self.backend = None
        self.own_tracking = False
        if conn is None:
            return

        def reset_done(_: Any) -> None:
            _give_back(conn)

        def reset_failed(failure: Failure) -> None:
            _discard(conn, f"reset failed: {failure.getErrorMessage()}")

        self.proxy.resets += 1
        conn.reset().addCallbacks(reset_done, reset_failed)

    def _change_user(self, packet: Packet) -> None:
        try:
            request = parse_change_user(packet.payload, self.capabilities)
        except ValueError:
            self.fatal(c.ER_HANDSHAKE_ERROR, "Bad COM_CHANGE_USER packet", packet.last_seq + 1)
            return
        self._detach_backend()
        self.pinned = False
        if self.statements is not None:
            self.statements.forget()
        self.lost_transaction = False
        self.command = None
        self.phase = AUTH_SWITCH
        login = self._login = Login(self, self.proxy.credentials, self.nonce, self.capabilities)
        login.change_user(request, packet.last_seq + 1)

    # -- end ------------------------------------------------------------------

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        was = self.phase
        self.phase = CLOSED
        self._resume_backend()
        self.proxy.clients.pop(self.id, None)
        if self._login is not None:
            self._login.stop()
        if self.hold_timer is not None and self.hold_timer.active():
            self.hold_timer.cancel()
        cancel_query_timer(self)
        abandon(self)
        if self._borrowing is not None:
            self._borrowing.cancel()
        conn = self.backend
        if conn is not None:
            self.backend = None
            if self.busy or self.infile:
                _discard(conn, "client left during a command")
            elif self.pinned or self.session.keeps_backend():
                self.backend = conn
                self._detach_backend()
            else:
                _give_back(conn)
        self.proxy.client_closed(self.log, self.closed_reason or (
            "client disconnected" if was != HANDSHAKE else "client left before logging in"))


def _give_back(conn: BackendConnection) -> None:
    if conn.pool is not None:
        conn.pool.give_back(conn)
    else:
        conn.close("not pooled")


def _discard(conn: BackendConnection, reason: str) -> None:
    if conn.pool is not None:
        conn.pool.discard(conn, reason)
    else:
        conn.close(reason)


class FrontendFactory(protocol.Factory):
    noisy = False

    def __init__(self, proxy: Proxy, readonly: bool = False) -> None:
        self.proxy = proxy
        # The read-only listener's factory: its clients' transactions go to readers.
        self.readonly = readonly

    def buildProtocol(self, addr: Any) -> FrontendProtocol:
        return FrontendProtocol(self.proxy, self.readonly)
