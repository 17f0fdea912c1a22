"""pyproxy as a MySQL *server*: a client connection, and its command phase.

FrontendProtocol is the Twisted protocol of one application connection.  It
frames the client's packets and hands them to the login phase
(pyproxy.login) until that hands over an Identity; from then on it runs the
command phase: dispatch, and the borrow / run / release cycle.  A command
borrows a backend connection (made the client's own by pyproxy.hygiene),
goes out as received, and its reply streams back through backend_data()
while the ResponseTracker watches for its end; reply_done() reads what the
reply says about the session, and the connection goes back by the one rule
in pyproxy.release.  This is the per-query path, kept in one class.

What the cycle consults stays in modules of its own: prepared statements
(pyproxy.prepared), KILL and the query timeout (pyproxy.kill), SET GLOBAL
(pyproxy.set_global), a lost backend and the lost-transaction policy
(pyproxy.backend_loss), LOCAL INFILE (pyproxy.infile), the commands
answered here (pyproxy.local_commands).  The one place that turns a
failure into an ERR packet for the client is command_failed() (fatal()
when the connection cannot survive it).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from pyproxy import auth, sqltext
from pyproxy.backend import FLAVOR_BITS, BackendConnection, BackendError, lost_connection
from pyproxy.backend_loss import HARMLESS, held_connection_lost, lost_during_command, refused_after_loss
from pyproxy.direct_write import write_now
from pyproxy.hygiene import MAY_SET_INSERT_ID, await_catalog, bring_to_state, follow_up, observe_oks
from pyproxy.hygiene import restore_tracking, run_flagged, stored_code
from pyproxy.infile import client_packet, refuse, refused_reply_data
from pyproxy.kill import cancel_query_timer, kill_statement, query_timed_out
from pyproxy.local_commands import ANSWERED_HERE, REFUSED, answer
from pyproxy.logs import get_logger
from pyproxy.login import LOGIN_PACKET_LIMIT, Identity, Login
from pyproxy.phases import AUTH_SWITCH, CLOSED, COMMANDS, HANDSHAKE
from pyproxy.prepared import STATEMENT_COMMANDS, PreparedStatements
from pyproxy.proxy import Proxy
from pyproxy.release import cancel_hold, client_left, discard, give_back, release_if_clean
from pyproxy.routines import RoutineCatalog, Verdict
from pyproxy.session import ClientSession, initial_state
from pyproxy.set_global import abandon
from pyproxy.wire import constants as c
from pyproxy.wire.commands import REPLIES, Reply, opens_cursor
from pyproxy.wire.constants import CLIENT, COMMAND
from pyproxy.wire.framing import Packet, PacketFramer, PacketsOutOfOrder, PacketTooLarge, frame
from pyproxy.wire.handshake import ChangeUser
from pyproxy.wire.response_tracker import DONE, INFILE, ResponseTracker
from pyproxy.wire.responses import make_err, make_ok, make_ok_tracked

__all__ = ["AUTH_SWITCH", "CLOSED", "COMMANDS", "HANDSHAKE", "QUEUE_LIMIT", "REFUSED", "FrontendFactory",
           "FrontendProtocol"]

# Commands a client may send ahead of their replies before pyproxy stops reading it.
QUEUE_LIMIT = 64
# ER_OPTION_PREVENTS_STATEMENT (--read-only) and ER_READ_ONLY_MODE (innodb_read_only).
READ_ONLY_ERRORS = frozenset((1290, 1836))
# COMMIT or ROLLBACK (not ROLLBACK TO SAVEPOINT): what ends savepoints.
_ENDS_TRANSACTION = re.compile(rb"(?is)\s*(?:commit|rollback)\b(?!(?:\s+work)?\s+to\b)")
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
        "statements", "hold_timer", "closed_reason", "query_timer", "last_active",
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
        # The topology epoch ``pool`` was chosen in.
        self._epoch = -1
        # The client's library is libmariadb (see error_packet).
        self.libmariadb = False
        # Its transaction died with a backend connection: until the client
        # says ROLLBACK, nothing else runs (pyproxy.backend_loss).
        self.lost_transaction = False
        # KILLed mid-command (pyproxy.kill), or its COMMIT RELEASE ended the
        # server session: closed once the reply is out.
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
        # Holding the backend for a follow-up statement (pyproxy.release).
        self.hold_timer: Any = None
        self.closed_reason: str | None = None
        # [proxy] query_timeout for the running statement (pyproxy.kill).
        self.query_timer: Any = None
        self.last_active = 0.0
        # The sequence id for the error that replaces a refused LOCAL INFILE, or -1.
        self.refused_infile = -1
        # Around a SET GLOBAL: pyproxy's own connection to the server and the
        # global variables read over it just before the statement ran
        # (pyproxy.set_global).
        self.globals_before: tuple[BackendConnection | None, dict[str, str | None]] | None = None
        # What sqltext.scan() found in the running statement's text.
        self.found: sqltext.Found | None = None
        # The user's catalog of stored code (pyproxy.routines), and what the
        # stored code the running statement names can do (None: it names none).
        self.catalog: RoutineCatalog | None = None
        self.code: Verdict | None = None
        # pyproxy's own SET to send ahead of the running command in the same
        # write, and the LAST_INSERT_ID() it gives the connection (pyproxy.hygiene).
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

    # -- the connection, and its login ----------------------------------------

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
                    client_packet(self, packet)
                elif self.busy or self.backlog:
                    if self._queue is None:
                        self._queue = deque()
                    self._queue.append(packet)
                    if len(self._queue) == QUEUE_LIMIT:
                        # A client far ahead of its replies: stop reading it.
                        self.transport.pauseProducing()
                else:
                    self.dispatch(packet)
            elif self.phase == HANDSHAKE or self.phase == AUTH_SWITCH:
                if self._login.receive(packet) and self.phase == HANDSHAKE:  # type: ignore[union-attr]
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
            self._verify_schema(seq)
            return
        self._logged_in(seq)

    def _verify_schema(self, seq: int) -> None:
        """A login naming a schema fails at once if it does not exist, as with a
        server: the schema is selected on a borrowed connection first."""
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
        release_if_clean(self)
        self.run_queued()

    def log_in_again(self, request: ChangeUser, seq: int) -> None:
        """COM_CHANGE_USER, once the session has given up what it held: the login
        phase runs again on this connection's nonce."""
        self.phase = AUTH_SWITCH
        login = self._login = Login(self, self.proxy.credentials, self.nonce, self.capabilities)
        login.change_user(request, seq)

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

    # -- the command phase: dispatch --------------------------------------------

    def dispatch(self, packet: Packet) -> None:
        """One command of the client, when no other is running."""
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
            await_catalog(self, packet)
            return
        reply = REPLIES.get(command)
        if command in STATEMENT_COMMANDS:
            statements = self.statements
            if statements is None:
                statements = self.statements = PreparedStatements(self)
            statements.command(packet, command)
            return
        if reply is not None and command not in ANSWERED_HERE:
            if command == COMMAND.COM_QUERY:
                sql = self.sql = payload[1:]
                head = payload[1:2]
                if (head in (b"k", b"K") or head.isspace()) and kill_statement(self):
                    return
                found = self.found = sqltext.scan(sql)
                code = self.code = (stored_code(self, sql, found) if self.catalog.watch is not None
                                    or found is not None and found.calls else None)
                if found is not None or code is not None:
                    self.busy = True
                    run_flagged(self, self.start)
                    return
            else:
                self.sql = None
                self.found = self.code = None
            self.busy = True
            self.acquire(self.start)
            return
        answer(self, packet, command)

    def reply(self, payload: bytes) -> None:
        """pyproxy's own answer to the running command, which ends it."""
        seq = self.command.last_seq + 1 if self.command is not None else 1
        self.transport.write(frame(payload, seq))
        self.command = None

    def reply_error(self, error: tuple[int, str], message: str) -> None:
        self.reply(self.error_packet(error[0], error[1], message))

    # -- borrow ------------------------------------------------------------------

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
                    bring_to_state(self, lambda: restore_tracking(self, then))
                else:
                    bring_to_state(self, then)
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
                bring_to_state(self, then)
                return
            else:
                # Held only for a follow-up (SHOW WARNINGS, ROW_COUNT()): not
                # worth staying on a server that no longer takes this traffic.
                self.backend = None
                self.session.hold_next = False
                cancel_hold(self)
                give_back(held)
        pool = self.pool
        topology = self.proxy.topology
        if pool is None or self._epoch != topology.epoch or pool.user != self.user or pool.closed:
            pool = self.pool = self.proxy.route(self.user, self.readonly, pool)
            self._epoch = topology.epoch
        conn = pool.try_borrow(self.flavor)
        if conn is not None:
            self.backend = conn
            bring_to_state(self, then)
            return
        d = self._borrowing = pool.borrow(self.flavor, self.readonly)

        def borrowed(conn: BackendConnection) -> None:
            self._borrowing = None
            if self.phase == CLOSED:
                give_back(conn)
                return
            self.backend = conn
            bring_to_state(self, then)

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

    # -- run -----------------------------------------------------------------------

    def start(self) -> None:
        """Sends the running command on the attached connection, as received."""
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
            self.finish_command()

    def backend_data(self, data: bytes, tracker: ResponseTracker) -> None:
        """Bytes of the reply, already settled by the tracker: forward them."""
        if self.refused_infile >= 0:
            refused_reply_data(self, tracker)
            return
        if tracker.infile_at >= 0 and not self.capabilities & CLIENT.LOCAL_FILES:
            refuse(self, data, tracker)
            return
        if tracker.prepare_at >= 0:
            data = self.statements.prepare_reply(data, tracker)  # type: ignore[union-attr, assignment]
            if data is None:
                return  # the ERR is the whole reply: the client sees only the retried one
        oks = tracker.oks
        if tracker.edits or oks and (tracker.changed or self.rewrite_oks
                                     and len(oks) > len(tracker.terminators)):
            data = observe_oks(self, data, tracker)
        if type(data) is bytearray:  # translated in place; transports take bytes only
            data = bytes(data)
        if data:
            self.forwarded = True
            write_now(self.transport, data)
        state = tracker.state
        if state == DONE:
            self.reply_done(tracker)
        elif state == INFILE:
            tracker.infile_at = -1
            self.infile = True

    def reply_done(self, tracker: ResponseTracker) -> None:
        """The reply is complete: what it says about the session (its final status,
        tracked changes, what the statement text shows), then the follow-ups it
        needs, then the command ends."""
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
            if tracker.saw_insert_id or found is not None and found.flags & MAY_SET_INSERT_ID:
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
                    discard(conn, "server session ended (RELEASE)")
        statements = self.statements
        if statements is not None and (statements.cursor is not None or command == COMMAND.COM_STMT_PREPARE):
            statements.reply_done(command, tracker)
        if self.backend is not None:
            self.backend.state = session.state
        if self.globals_before is not None or session.reread:
            follow_up(self)
            return
        self.finish_command()

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

    # -- release ---------------------------------------------------------------

    def finish_command(self) -> None:
        """The command is over: the connection goes back if the rule says so
        (pyproxy.release), and the next command may run."""
        if self.query_timer is not None:
            cancel_query_timer(self)
        if self.paused_backend is not None:
            self._resume_backend()
        if self.hold_timer is not None:
            cancel_hold(self)
        self.command = None
        self.sql = None
        self.found = self.code = None
        self.busy = False
        if self.kill_pending:
            self.phase = CLOSED
            self.transport.loseConnection()
        release_if_clean(self)
        if self.proxy.draining:
            self.drain()
            return
        self.run_queued()

    def run_queued(self) -> None:
        """Runs the commands the client sent ahead, while nothing stops them."""
        queue = self._queue
        if not queue:
            return
        paused = len(queue) >= QUEUE_LIMIT
        while queue and not self.busy and not self.infile and not self.backlog and self.phase == COMMANDS:
            self.dispatch(queue.popleft())
        if paused and len(queue) < QUEUE_LIMIT and not self.backlog and self.phase == COMMANDS:
            self.transport.resumeProducing()

    def command_failed(self, exc: Exception) -> None:
        """A command could not run (no backend, or reconciling it failed): the one
        place its error becomes the client's ERR packet."""
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
            discard(conn, "broken")
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
        release_if_clean(self)
        self.run_queued()

    def backend_failed(self, exc: Exception) -> None:
        """pyproxy itself failed while handling this client's reply: the client is
        told and closed; its backend connection, maybe mid-reply, is dropped."""
        conn = self.backend
        self.backend = None
        if conn is not None:
            discard(conn, "internal error")
        self.fatal((1105, "HY000"), f"pyproxy internal error: {exc!r}")

    def backend_lost(self, error: BackendError) -> None:
        """The backend died while relaying this client's command: it is dropped,
        and pyproxy.backend_loss says what the client is told."""
        abandon(self)
        if self.statements is not None:
            self.statements.cursor = None
        cancel_query_timer(self)
        self._resume_backend()
        conn = self.backend
        self.backend = None
        if conn is not None:
            discard(conn, "lost during a command")
            if conn.pool is not None:
                self.proxy.topology.suspect(conn.pool.target)
        lost_during_command(self, conn, error)

    # -- flow control and the end -----------------------------------------------

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

    def check_idle(self, now: float, timeout: float) -> None:
        """Disconnects a client idle between commands for longer than ``timeout``
        (idle_client_timeout); a held transaction is rolled back by the reset."""
        if self.phase == COMMANDS and not self.busy and not self.infile and now - self.last_active > timeout:
            self.closed_reason = "idle_client_timeout"
            self.transport.loseConnection()

    def drain(self) -> None:
        """Shutting down: a client that holds no transaction is closed now; one that
        does is closed when its transaction ends."""
        if self.phase != COMMANDS or self.busy or self.infile:
            return
        if self.backend is not None and self.session.holds_state() and not self.pinned:
            return
        self.closed_reason = "shutdown"
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        was = self.phase
        self.phase = CLOSED
        self._resume_backend()
        self.proxy.clients.pop(self.id, None)
        if self._login is not None:
            self._login.stop()
        cancel_hold(self)
        cancel_query_timer(self)
        abandon(self)
        if self._borrowing is not None:
            self._borrowing.cancel()
        client_left(self)
        self.proxy.client_closed(self.log, self.closed_reason or (
            "client disconnected" if was != HANDSHAKE else "client left before logging in"))


class FrontendFactory(protocol.Factory):
    """Builds the protocol of each client accepted on a listener; the read-only
    listener's factory says so, and its clients' transactions go to readers."""

    noisy = False

    def __init__(self, proxy: Proxy, readonly: bool = False) -> None:
        self.proxy = proxy
        self.readonly = readonly

    def buildProtocol(self, addr: Any) -> FrontendProtocol:
        return FrontendProtocol(self.proxy, self.readonly)
