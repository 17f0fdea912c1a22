"""The command phase of a client connection: dispatch, and the borrow / run / release cycle.

Once the login phase has handed over an Identity, every command of the
client goes through here: dispatch() decides what it is; acquire() borrows a
backend connection (or keeps the held one) and makes it the client's own
(pyproxy.hygiene); start() sends the command as received; the reply streams
back through backend_data() while the connection's ResponseTracker watches
for its end; reply_done() reads what the reply says about the session; and
finish_command() gives the connection back when the one rule in
pyproxy.release says so.  That is the per-query path, kept in this one
class as direct calls.

What the cycle consults lives in modules of its own: prepared statements
(pyproxy.prepared), KILL and the query timeout (pyproxy.kill), SET GLOBAL
(pyproxy.set_global), a lost backend and the lost-transaction policy
(pyproxy.backend_loss), LOCAL INFILE (pyproxy.infile), the commands answered
without a backend (pyproxy.local_commands), commands sent ahead and unread
replies (pyproxy.flow), a write refused by a writer turned read-only
(pyproxy.write_retry).  command_failed() is the one place where a command
that cannot run becomes the client's ERR packet.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from pyproxy import sqltext, thread_ids
from pyproxy.backend import BackendConnection, BackendError, lost_connection
from pyproxy.backend_login import CLASSIC_EOF, FLAVOR_BITS
from pyproxy.backend_loss import HARMLESS, held_connection_lost, lost_during_command, refused_after_loss
from pyproxy.direct_write import write_now
from pyproxy.flow import resume_backend, run_queued
from pyproxy.hygiene import MAY_SET_INSERT_ID, await_catalog, bring_to_state, follow_up, observe_oks
from pyproxy.hygiene import restore_tracking, run_flagged, stored_code
from pyproxy.infile import refuse, refused_reply_data
from pyproxy.kill import cancel_query_timer, kill_statement, query_timed_out
from pyproxy.local_commands import ANSWERED_HERE, answer
from pyproxy.login import Identity
from pyproxy.phases import CLOSED
from pyproxy.pool import Waiter
from pyproxy.prepared import STATEMENT_COMMANDS, PreparedStatements
from pyproxy.query_stats import LATENCY_BUCKETS
from pyproxy.release import cancel_hold, discard, give_back, give_up_hold, release_if_clean
from pyproxy.routines import RoutineCatalog, Verdict
from pyproxy.session import ClientSession, SessionState, initial_state
from pyproxy.set_global import abandon
from pyproxy.tls import close_client
from pyproxy.wire import constants as c
from pyproxy.wire.buffer import BytesLike
from pyproxy.wire.commands import REPLIES, Reply, opens_cursor
from pyproxy.wire.constants import CLIENT, COMMAND
from pyproxy.wire.framing import Packet, frame
from pyproxy.wire.response_tracker import DONE, INFILE, ResponseTracker
from pyproxy.wire.responses import make_ok, make_ok_tracked
from pyproxy.write_retry import cancel as cancel_writer_wait
from pyproxy.write_retry import refused_write

if TYPE_CHECKING:
    from collections import deque

    from pyproxy.frontend import FrontendProtocol
    from pyproxy.proxy import Proxy

# ER_OPTION_PREVENTS_STATEMENT (--read-only) and ER_READ_ONLY_MODE (innodb_read_only).
READ_ONLY_ERRORS = frozenset((1290, 1836))
# COMMIT or ROLLBACK (not ROLLBACK TO SAVEPOINT): what ends savepoints.
_ENDS_TRANSACTION = re.compile(rb"(?is)\s*(?:commit|rollback)\b(?!(?:\s+work)?\s+to\b)")
# Statements whose "session state changed" may be more than variables say.
_HIDDEN = sqltext.USER_VARIABLE | sqltext.TEMPORARY | sqltext.SQL_PREPARE | sqltext.DYNAMIC | sqltext.CALLS


class CommandPhase:
    """One client's commands, and the session they run in; the backend side of a
    relayed command reports here (pyproxy.backend.ReplySink)."""

    # One per client connection, idle ones included: no per-instance __dict__.
    __slots__ = (
        "connection", "transport", "proxy", "readonly", "user", "capabilities", "flavor", "fallback",
        "login_charset", "rewrite_oks", "translate", "session", "catalog", "backend", "pinned", "pool",
        "_epoch", "_borrowing", "_then", "_on_lent", "_on_refused", "busy", "queue", "command", "sql", "found", "code", "prefix", "forwarded", "infile",
        "refused_infile", "backlog", "paused_backend", "statements", "hold_timer", "query_timer",
        "kill_pending", "last_active", "globals_before", "own_tracking", "lost_transaction",
        "retried", "writer_wait", "stats", "interactive", "idle_timer", "idle_timeout", "idle_state",
    )

    def __init__(self, connection: FrontendProtocol, proxy: Proxy, readonly: bool) -> None:
        # The client connection this is the command phase of; its transport,
        # once connected.
        self.connection = connection
        self.transport: Any = None
        self.proxy = proxy
        # Came in through the read-only listener: transactions go to readers.
        self.readonly = readonly
        # Who the session runs as, and what it negotiated (start_session).
        self.user = ""
        self.capabilities = 0
        self.flavor = 0
        self.fallback = -1  # another flavor of connection that serves it (pyproxy.pool.Waiter)
        self.login_charset = proxy.config.backend.charset
        # Replies are translated for a client without CLIENT_SESSION_TRACK /
        # CLIENT_DEPRECATE_EOF.
        self.rewrite_oks = False
        self.translate = False
        self.session: ClientSession | None = None
        # The user's catalog of stored code (pyproxy.routines).
        self.catalog: RoutineCatalog | None = None
        # The backend connection held, if any, and whether the session is
        # pinned to it.
        self.backend: BackendConnection | None = None
        self.pinned = False
        # The pool borrowed from, the topology epoch it was chosen in, and a
        # borrow waiting for a connection.
        self.pool: Any = None
        self._epoch = -1
        self._borrowing: Waiter | None = None
        # What runs once the waited-for connection is attached, and the pool's
        # two answers to the wait, made once here rather than as closures for
        # every statement that waits (most do, when clients outnumber
        # connections).
        self._then: Any = None
        self._on_lent = self._lent
        self._on_refused = self._refused
        # A command is running: the next ones wait in ``queue`` (pyproxy.flow).
        self.busy = False
        self.queue: deque[Packet] | None = None
        # The running command, its SQL (COM_QUERY, COM_STMT_EXECUTE), what
        # sqltext.scan() found in it, and what the stored code it names can do
        # (None: it names none).
        self.command: Packet | None = None
        self.sql: bytes | None = None
        self.found: sqltext.Found | None = None
        self.code: Verdict | None = None
        # pyproxy's own SET to send ahead of the running command in the same
        # write, and the LAST_INSERT_ID() it gives the connection (pyproxy.hygiene).
        self.prefix: tuple[bytes, int, bool] | None = None  # the SET, the insert id, whether it clears
        # Some of the reply was sent to the client.
        self.forwarded = False
        # The client is sending a LOCAL INFILE (pyproxy.infile); the sequence
        # id for the error that replaces a refused one, or -1.
        self.infile = False
        self.refused_infile = -1
        # The client's unsent replies passed its transport's buffer size, and
        # the backend connection whose reading was paused for that (pyproxy.flow).
        self.backlog = False
        self.paused_backend: BackendConnection | None = None
        # The client's prepared statements (pyproxy.prepared); made at its first
        # COM_STMT_* command.
        self.statements: PreparedStatements | None = None
        # Holding the backend for a follow-up statement (pyproxy.release).
        self.hold_timer: Any = None
        # [proxy] query_timeout for the running statement (pyproxy.kill).
        self.query_timer: Any = None
        # KILLed mid-command (pyproxy.kill), or its COMMIT RELEASE ended the
        # server session: closed once the reply is out.
        self.kill_pending = False
        # When its last command ended (or began), and its wait_timeout: the
        # timer, the timeout it waits for and the session state that timeout
        # was read from (pyproxy.idle).  ``interactive``: its first login asked
        # for CLIENT_INTERACTIVE, so the interactive_timeout of then is its
        # default (0: not interactive; -1: not known at login, pyproxy.idle).
        self.last_active = 0.0
        self.interactive = 0
        self.idle_timer: Any = None
        self.idle_timeout = 0
        self.idle_state: SessionState | None = None
        # Around a SET GLOBAL: pyproxy's own connection to the server and the
        # global variables read over it just before the statement ran
        # (pyproxy.set_global).
        self.globals_before: tuple[BackendConnection | None, dict[str, str | None]] | None = None
        # The backend's session_track_* settings are the client's own (a pinned
        # session): its OK packets reach the client unfiltered.
        self.own_tracking = False
        # Its transaction died with a backend connection: until the client
        # says ROLLBACK, nothing else runs (pyproxy.backend_loss).
        self.lost_transaction = False
        # The running command was refused as read-only and runs again (once),
        # waiting meanwhile for the new writer (pyproxy.write_retry).
        self.retried = False
        self.writer_wait: defer.Deferred[Any] | None = None
        # The per-process counters of the per-query path (pyproxy.query_stats).
        self.stats = proxy.stats

    @property
    def log(self) -> Any:
        return self.connection.log

    def start_session(self, identity: Identity) -> None:
        """The login phase proved who the client is: the session starts (over, after
        COM_CHANGE_USER) from the character set and schema the login named."""
        if self.session is None:
            # The first login.  COM_CHANGE_USER keeps what the connection
            # negotiated then.
            capabilities = self.capabilities = identity.capabilities
            self.flavor = capabilities & FLAVOR_BITS
            self.fallback = -1
            if not capabilities & CLIENT.DEPRECATE_EOF:
                # Its replies need no translation on a connection without
                # CLIENT_DEPRECATE_EOF; one with it serves too, translated.
                self.fallback = self.flavor
                self.flavor |= CLASSIC_EOF
            self.rewrite_oks = not capabilities & CLIENT.SESSION_TRACK
            self.translate = not capabilities & CLIENT.DEPRECATE_EOF
            if capabilities & CLIENT.INTERACTIVE:
                self.interactive = self.proxy.timeouts.interactive if self.proxy.timeouts_known else -1
        else:
            # COM_CHANGE_USER: the server gives the session the plain wait_timeout.
            self.interactive = 0
        self.user = identity.user
        multi = bool(self.capabilities & CLIENT.MULTI_STATEMENTS)
        database = identity.schema if identity.schema is not None else self.proxy.config.backend.database
        self.login_charset = identity.charset
        state = initial_state(identity.charset, database, self.proxy.server.autocommit, multi)
        if self.interactive > 0 and self.interactive != self.proxy.timeouts.wait:
            # A server makes interactive_timeout an interactive session's
            # wait_timeout, which SELECT @@wait_timeout shows: carried.
            state = attrs.evolve(state, variables=(("wait_timeout", str(self.interactive)),))
        self.session = ClientSession(state)
        self.catalog = self.proxy.catalog(self.user)

    def restart_session(self, user: str, schema: str | None) -> None:
        """A refused COM_CHANGE_USER: the server reset the session to its global
        defaults (the character sets too: the server's own, which its greeting
        names, whatever the client had or asked for), then gave back the user
        and the schema it had."""
        self.interactive = 0
        self.user = user
        self.login_charset = self.proxy.server.charset
        self.session = ClientSession(initial_state(self.login_charset, schema, self.proxy.server.autocommit,
                                                   bool(self.capabilities & CLIENT.MULTI_STATEMENTS)))
        self.catalog = self.proxy.catalog(user)

    # -- dispatch ------------------------------------------------------------------

    def dispatch(self, packet: Packet) -> None:
        """One command of the client, when no other is running."""
        payload = packet.payload
        if not payload:
            self.command = packet
            self.reply_error(c.ER_UNKNOWN_COM_ERROR, "Unknown command (empty packet)")
            return
        command = payload[0]
        self.command = packet
        self.retried = False
        self.stats.commands[command] += 1
        self.last_active = self.proxy.reactor.seconds()
        if self.lost_transaction and command not in HARMLESS and refused_after_loss(self, payload):
            return
        if (command == COMMAND.COM_QUERY or command == COMMAND.COM_STMT_EXECUTE
                or command == c.COM_STMT_BULK_EXECUTE) and self.catalog.stale:
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
                if found is not None and found.flags & sqltext.THREAD_IDS:
                    # CONNECTION_ID(), IS_USED_LOCK(), PROCESSLIST: the client's own id.
                    found = self.found = thread_ids.rewrite_command(self, found)
                    sql = self.sql
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
        data = frame(payload, seq)
        self.stats.bytes_out += len(data)
        self.transport.write(data)
        self.command = None

    def reply_error(self, error: tuple[int, str], message: str) -> None:
        self.reply(self.connection.error_packet(error[0], error[1], message))

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

    def fatal(self, error: tuple[int, str], message: str, seq: int | None = None) -> None:
        """An error the connection cannot survive, in reply to the running command."""
        if seq is None:
            seq = self.command.last_seq + 1 if self.command is not None else 0
        self.connection.fatal(error, message, seq)

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
                found = self.found
                if self.pinned and not self.own_tracking and (
                        found is None or not found.flags & sqltext.READS_PREVIOUS):
                    # (Not before a statement that reads ROW_COUNT() or FOUND_ROWS():
                    # the SET would be the statement before it.)
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
                give_up_hold(self, held, lambda: self.acquire(then))
                return
        pool = self.pool
        topology = self.proxy.topology
        if pool is None or self._epoch != topology.epoch or pool.user != self.user or pool.closed:
            pool = self.pool = self.proxy.route(self.user, self.readonly, pool)
            self._epoch = topology.epoch
        conn = pool.try_borrow(self.flavor, self.fallback)
        if conn is not None:
            self.backend = conn
            bring_to_state(self, then)
            return
        self._then = then
        waiter = pool.wait(self.flavor, self.readonly, self._on_lent, self._on_refused, self.fallback)
        if waiter is not None and not waiter.done:
            self._borrowing = waiter

    def _lent(self, conn: BackendConnection) -> None:
        """The pool's answer to acquire()'s wait: a connection."""
        self._borrowing = None
        then, self._then = self._then, None
        if self.connection.phase == CLOSED:
            give_back(conn)
            return
        self.backend = conn
        bring_to_state(self, then)

    def _refused(self, error: BaseException) -> None:
        """The pool's answer to acquire()'s wait: what kept a connection from coming."""
        self._borrowing = None
        self._then = None
        if self.connection.phase != CLOSED:
            self.command_failed(error)  # type: ignore[arg-type]

    def _server_moved(self, held: BackendConnection) -> bool:
        """Whether the server ``held`` is on stopped serving this client's traffic:
        no longer the writer, or, for the read-only listener, down."""
        target = held.pool.target if held.pool is not None else None
        if target is None:
            return False
        return not target.usable if self.readonly else target is not self.proxy.topology.writer

    def stop_borrowing(self) -> None:
        """The client is gone: a borrow still waiting for a connection stops, and
        so does a refused write's wait for a writer."""
        if self._borrowing is not None:
            self._borrowing.cancel()
            self._borrowing = None
            self._then = None
        if self.writer_wait is not None:
            cancel_writer_wait(self)

    # -- run -----------------------------------------------------------------------

    def start(self) -> None:
        """Sends the running command on the attached connection, as received."""
        packet = self.command
        payload = packet.payload
        reply = REPLIES[payload[0]]
        self.forwarded = False
        conn = self.backend
        proxy = self.proxy
        timeout = proxy.config.proxy.query_timeout
        if timeout and reply != Reply.NONE:
            self.query_timer = proxy.reactor.callLater(timeout, query_timed_out, self, packet)
        if proxy.debug_statements is not None:
            proxy.debug_statements.record(self, payload, conn)
        prefix = self.prefix
        if prefix is not None:
            self.prefix = None
            conn.last_insert_id = prefix[1]
            if prefix[2]:
                conn.diagnostics = None
            raw = prefix[0] + packet.raw
        else:
            raw = packet.raw
        if self.translate and conn.tracker.deprecate_eof:
            cursor = reply == Reply.EXECUTE and opens_cursor(payload)
            status = self.status()
            found = self.found
            if found is not None and found.flags & sqltext.CALLS and not found.flags & sqltext.MULTI:
                # Inside a CALL the server's EOFs after column definitions say
                # that more results follow (the CALL's own OK at least).
                status |= c.SERVER_MORE_RESULTS_EXISTS
            conn.relay(raw, reply, self, translate=True, cursor=cursor, metadata_status=status,
                       swallow=prefix is not None)
        else:
            conn.relay(raw, reply, self, cursor=reply == Reply.EXECUTE and opens_cursor(payload),
                       swallow=prefix is not None)
        if reply == Reply.NONE:
            self.finish_command()

    def backend_data(self, data: BytesLike, tracker: ResponseTracker) -> None:
        """Bytes of the reply, already settled by the tracker: forward them."""
        if tracker.error and tracker.error in READ_ONLY_ERRORS and refused_write(self, data, tracker):
            return  # held back: the statement runs again on the new writer
        if self.refused_infile >= 0:
            refused_reply_data(self, tracker)
            return
        if tracker.infile_at >= 0 and not self.capabilities & CLIENT.LOCAL_FILES:
            refuse(self, data, tracker)
            return
        if tracker.prepare_at >= 0:
            prepared = self.statements.prepare_reply(data, tracker)  # type: ignore[union-attr]
            if prepared is None:
                return  # the ERR is the whole reply: the client sees only the retried one
            data = prepared
        oks = tracker.oks
        if tracker.edits or oks and (tracker.changed or self.rewrite_oks
                                     and len(oks) > len(tracker.terminators)):
            data = observe_oks(self, data, tracker)
        if type(data) is bytearray:  # translated in place; transports take bytes only
            data = bytes(data)
        if data:
            self.forwarded = True
            self.stats.bytes_out += len(data)
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
            if found is not None and found.flags & _HIDDEN:
                self.pin("session state changed inside a result set")
            elif not (found is not None and found.scoped and code is None):
                # (SET STATEMENT's own variables are set back after it.)  What the
                # server tracks it reports with the next OK that reports a change
                # itself: a carried variable assigned its own value brings the
                # rest along (pyproxy.hygiene follow_up).
                session.read_back_changes()
        if found is not None and found.flags & sqltext.NO_RESET and conn is not None:
            conn.unresettable = True
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
                self.connection.closed_reason = "COMMIT/ROLLBACK RELEASE"
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
            resume_backend(self)
        if self.hold_timer is not None:
            cancel_hold(self)
        stats = self.stats
        now = self.proxy.reactor.seconds()
        elapsed = now - self.last_active
        stats.latency[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        stats.latency_sum += elapsed
        self.command = None
        self.sql = None
        self.found = self.code = None
        self.busy = False
        if self.statements is not None:
            self.statements.again = None
        if self.kill_pending:
            self.connection.phase = CLOSED
            close_client(self.transport)
        release_if_clean(self)
        if self.proxy.draining:
            self.connection.drain()
            return
        run_queued(self, now)

    def command_failed(self, exc: Exception) -> None:
        """A command could not run (no backend, or reconciling it failed): the one
        place its error becomes the client's ERR packet."""
        abandon(self)
        if self.statements is not None:
            self.statements.cursor = self.statements.again = None
        self.prefix = None
        if not isinstance(exc, BackendError):
            self.log.error("internal_error", error=repr(exc))
            exc = lost_connection(repr(exc))
        conn = self.backend
        if conn is not None and conn.broken:
            self.backend = None
            if self.statements is not None:
                self.statements.connection_lost()
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
        run_queued(self)

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
            # Its cursors, if any, died with it.
            self.statements.connection_lost()
        cancel_query_timer(self)
        resume_backend(self)
        conn = self.backend
        self.backend = None
        if conn is not None:
            discard(conn, "lost during a command")
            if conn.pool is not None:
                self.proxy.topology.suspect(conn.pool.target)
        lost_during_command(self, conn, error)
