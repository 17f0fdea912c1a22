"""pyproxy as a MySQL *client*: one authenticated connection to the database server.

A BackendConnection is either idle in its pool, running a command pyproxy
issued itself (session reconciliation, health pings, resets), or relaying a
client's command: then every byte the server sends is handed to the client
side as it arrives, while a ResponseTracker watches for the end of the reply.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Protocol as TypingProtocol

import attrs
from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from pyproxy import auth
from pyproxy.direct_write import write_now
from pyproxy.logs import get_logger
from pyproxy.session import (
    DEFAULT_TRACKING,
    ClientSession,
    SessionState,
    Tracking,
    reset_state,
    tracking,
)
from pyproxy.backend_error import BackendError, lost_connection
from pyproxy.backend_login import ServerLogin
from pyproxy.statements import BackendStatement, StatementCache
from pyproxy.target import Target
from pyproxy.tls import describe_tls_failure
from pyproxy.wire import constants as c
from pyproxy.wire.commands import Reply, make_query
from pyproxy.wire.constants import CLIENT, COM_RESET_CONNECTION, COMMAND
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.buffer import BytesLike, Reader
from pyproxy.wire.handshake import HandshakeV10, make_change_user
from pyproxy.wire.response_tracker import DONE, INFILE, ProtocolViolation, ResponseTracker
from pyproxy.wire.responses import parse_err, parse_ok

# Transaction-info tracking reports what the statement text can hide: LOCK
# TABLES in effect (an "L" in the transaction state) and the characteristics
# a SET TRANSACTION leaves for the next transaction, wherever they were set
# (an executable comment, EXECUTE IMMEDIATE, a stored procedure).  A
# classic EOF ending a result set inside a transaction then says only that
# something changed (see CommandPhase.reply_done in pyproxy.command_phase).
TRACKING = (b"SET SESSION session_track_schema=ON, session_track_state_change=ON, "
            b"session_track_system_variables='*', session_track_transaction_info='CHARACTERISTICS'")
# Read just before: the tracking a server session starts with, which is what
# a client of this connection sees (pyproxy filters its OK packets to that).
TRACKING_DEFAULTS = ("SELECT @@session_track_system_variables, @@session_track_schema, "
                     "@@session_track_state_change, @@session_track_transaction_info")

_ids = itertools.count(1)
_ROWS = object()  # marks a query_rows() entry among pending internal commands


class ReplySink(TypingProtocol):
    """The client side of a relayed command, as the backend sees it."""

    def backend_data(self, data: BytesLike, tracker: ResponseTracker) -> None: ...
    def backend_lost(self, error: BackendError) -> None: ...


class BackendConnection(ServerLogin, protocol.Protocol):
    """One server connection; pooled, lent to clients, reconciled, reset."""

    def __init__(self, target: Target, flavor: int, clock: IReactorTime) -> None:
        self.target = target
        self.flavor = flavor
        self.clock = clock
        self.id = next(_ids)
        self.log = get_logger(backend_id=self.id, host=target.host, port=target.port, user=target.user)
        self.ready: defer.Deferred[BackendConnection] = defer.Deferred()
        self.handshake: HandshakeV10 | None = None
        self.capabilities = 0
        self.state: SessionState = SessionState()
        # The tracking settings a server session starts with (TRACKING_DEFAULTS).
        self.tracking: Tracking = DEFAULT_TRACKING
        self.tracker = ResponseTracker(False)  # set from the negotiated capabilities
        self.created_at = clock.seconds()
        self.last_used = self.created_at
        self.last_checked = self.created_at
        # A wait_timeout a client left on this connection's session (seconds;
        # 0: none), set when it comes back to its pool: the server closes the
        # connection once it has been idle that long (pyproxy.pool.try_borrow).
        self.wait_limit = 0
        self.broken = False
        self.on_lost: Callable[[BackendConnection], None] | None = None
        # The pool that opened it (a pyproxy.pool.Pool); None for pyproxy's
        # own short-lived connections (KILL, probes).
        self.pool: Any = None
        self._framer = PacketFramer()
        self._mode = "auth"
        self._plugin = ""
        self._nonce = b""
        self._seq = 0
        self._sink: ReplySink | None = None
        self._carry = b""
        # The reply of a command of pyproxy's own sent ahead of the relayed one
        # is still to come (see relay()).
        self._swallow = False
        # Commands pyproxy sent itself, oldest first: (Deferred, packets of the
        # reply still to come after the first; -1 while the first is awaited).
        self._pending: list[list[Any]] = []
        self.statements = StatementCache(target.statement_cache)
        self._pending_result: Any = None
        self._deadline: Any = None
        # LAST_INSERT_ID() of this server session, as far as pyproxy knows; None
        # when a client's statement may have changed it (read back before the
        # connection serves another client).
        self.last_insert_id: int | None = 0
        # The client session (a pyproxy.session.ClientSession) whose warnings
        # and errors the server session holds, for SHOW WARNINGS; None if none.
        self.diagnostics: Any = None
        # The server session holds what no reset clears (a BINLOG statement's
        # replication context, pyproxy.sqltext.NO_RESET): closed, not reused.
        self.unresettable = False
        # The TCP connection has ended (connectionLost), not only been asked to.
        self.gone = False
        # The pool generation (configuration) this connection was opened for.
        self.generation = 0
        self._timeout: Any = None
        # TLS was started on this connection ([backend] tls).
        self.tls_started = False

    # -- connection phase ---------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        # A server that vanished without a FIN is found by the kernel even on an
        # idle connection the health checker has not pinged yet.
        self.transport.setTcpKeepAlive(True)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._mode == "relay":
            self._relay_data(data)
            return
        try:
            packets = self._framer.feed(data)
            for packet in packets:
                if self._mode == "auth":
                    self._auth_packet(packet.seq, packet.payload)
                elif self._mode == "internal":
                    self._internal_packet(packet.payload)
                else:
                    # A server speaks unasked only to say it is closing.
                    self._fail(BackendError.from_err(parse_err(packet.payload))
                               if packet.payload[:1] == b"\xff" else lost_connection("unexpected data"))
                    return
                if self._mode == "relay":
                    return
        except (ValueError, BackendError) as exc:
            self._fail(exc if isinstance(exc, BackendError) else lost_connection(str(exc)))

    def _start_tracking(self) -> None:
        self._prepare_session().addCallbacks(lambda _: self._became_ready(), self._fail)

    def _prepare_session(self) -> defer.Deferred[Any]:
        """Turns on session-state tracking, which every pooling decision relies on,
        then runs the configured init query.  What the init query sets is the
        baseline every client starts from, so it is not carried or undone.
        The session's own tracking settings are read first, in the same round
        trip; a server without some of them keeps the defaults."""
        self.query_rows(TRACKING_DEFAULTS).addCallbacks(self._learned_tracking, lambda _: None)
        d = self.execute(make_query(TRACKING))
        if self.target.init_query:
            d.addCallback(lambda _: self.execute(make_query(self.target.init_query)))

        def baseline(result: Any) -> Any:
            self.state = attrs.evolve(self.state, variables=())
            return result

        d.addCallback(baseline)
        return d

    def _learned_tracking(self, rows: list[tuple[str | None, ...]]) -> None:
        if rows and len(rows[0]) == 4 and None not in rows[0]:
            self.tracking = tracking(*rows[0])  # type: ignore[arg-type]

    def _became_ready(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.log.debug("backend_ready", server_version=self.handshake.server_version if self.handshake else None)
        ready, self.ready = self.ready, defer.succeed(self)
        ready.callback(self)

    # -- commands pyproxy runs itself ---------------------------------------

    def execute(self, command: bytes) -> defer.Deferred[bytes]:
        """Sends a command whose reply is one OK/EOF/ERR packet; fires with its payload.

        Several may be pipelined: the server answers them in order.  ERR
        replies errback with BackendError.
        """
        if self.broken or self.transport is None:
            return defer.fail(lost_connection("connection closed"))
        d: defer.Deferred[bytes] = defer.Deferred()
        self._pending.append([d, -1, None])
        self._mode = "internal"
        self._arm_deadline()
        self.transport.write(frame(command, 0))
        return d

    def _arm_deadline(self) -> None:
        """A server that stops answering pyproxy's own commands (ping, reset, SET)
        fails them after connect_timeout instead of leaving a client waiting."""
        if self._deadline is None:
            self._deadline = self.clock.callLater(self.target.connect_timeout, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._pending:
            self._fail(lost_connection(f"no answer within {self.target.connect_timeout:g}s"))

    def prepare(self, sql: bytes) -> defer.Deferred[BackendStatement]:
        """Prepares ``sql`` on this connection for a client statement that has not
        been prepared here yet; the definitions in the reply are skipped."""
        if self.broken or self.transport is None:
            return defer.fail(lost_connection("connection closed"))
        d: defer.Deferred[BackendStatement] = defer.Deferred()
        self._pending.append([d, -1, sql])
        self._mode = "internal"
        self._arm_deadline()
        self.transport.write(frame(bytes((COMMAND.COM_STMT_PREPARE,)) + sql, 0))
        return d

    def close_statements(self, ids: list[int]) -> None:
        """COM_STMT_CLOSE has no reply, so these go out between commands at no cost."""
        if ids and self.transport is not None and not self.broken:
            self.transport.write(b"".join(frame(bytes((COMMAND.COM_STMT_CLOSE,)) + i.to_bytes(4, "little"), 0)
                                          for i in ids))

    def query_rows(self, sql: str) -> defer.Deferred[list[tuple[str | None, ...]]]:
        """Runs a query pyproxy needs a few values from (``SELECT @@max_connections``,
        ``SHOW GLOBAL VARIABLES``); fires with its rows, each value as text (None
        for NULL).  Used rarely, never per client statement."""
        if self.broken or self.transport is None:
            return defer.fail(lost_connection("connection closed"))
        d: defer.Deferred[list[tuple[str | None, ...]]] = defer.Deferred()
        self._pending.append([d, -1, _ROWS, []])
        self._mode = "internal"
        self._arm_deadline()
        self.transport.write(frame(make_query(sql), 0))
        return d

    def query_value(self, sql: str) -> defer.Deferred[str | None]:
        """The first column of the first row of ``sql`` (None if no row, or NULL)."""
        return self.query_rows(sql).addCallback(lambda rows: rows[0][0] if rows else None)

    def _rows_packet(self, entry: list[Any], payload: bytes) -> None:
        """One packet of a query_rows() reply: column count, definitions, rows, end."""
        d, left = entry[0], entry[1]
        if left == -1:
            if payload[:1] == b"\xff":
                self._internal_done()
                d.errback(BackendError.from_err(parse_err(payload)))
                return
            if payload[:1] == b"\x00":
                self._internal_done()  # a statement without a result set
                d.callback(entry[3])
                return
            columns = Reader(payload).lenenc_int()
            entry[1] = columns + (0 if self.capabilities & CLIENT.DEPRECATE_EOF else 1)
            return
        if left > 0:
            entry[1] = left - 1  # a definition, or the EOF after them
            return
        if payload[:1] == b"\xfe" and len(payload) < 0xFFFFFF:
            self._internal_done()
            d.callback(entry[3])
        elif payload[:1] == b"\xff":
            self._internal_done()
            d.errback(BackendError.from_err(parse_err(payload)))
        else:
            row = Reader(payload)
            values = []
            while row.remaining():
                if payload[row.pos] == 0xFB:
                    row.u8()
                    values.append(None)
                else:
                    values.append(row.lenenc_bytes().decode("utf-8", "replace"))
            entry[3].append(tuple(values))

    def _internal_packet(self, payload: bytes) -> None:
        entry = self._pending[0]
        d, left, sql = entry[0], entry[1], entry[2]
        if sql is _ROWS:
            self._rows_packet(entry, payload)
            return
        if left > 0:
            # A definition packet of an internal COM_STMT_PREPARE.
            entry[1] = left - 1
            if entry[1] == 0:
                self._internal_done()
                d.callback(self._pending_result)
            return
        if payload[:1] == b"\xff":
            self._internal_done()
            d.errback(BackendError.from_err(parse_err(payload)))
            return
        if sql is not None:
            statement = BackendStatement(int.from_bytes(payload[1:5], "little"),
                                         int.from_bytes(payload[7:9], "little"),
                                         int.from_bytes(payload[5:7], "little"))
            self.close_statements(self.statements.add(sql, statement))
            deof = bool(self.capabilities & CLIENT.DEPRECATE_EOF)
            left = statement.params + statement.columns
            if not deof:
                left += bool(statement.params) + bool(statement.columns)
            if left:
                entry[1] = left
                self._pending_result = statement
                return
            self._internal_done()
            d.callback(statement)
            return
        self._internal_done()
        if payload[:1] == b"\x00":
            ok = parse_ok(payload, True)
            if ok.changes is not None:
                self._apply_tracked(ok)
        d.callback(payload)

    def _internal_done(self) -> None:
        self._pending.pop(0)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._pending:
            self._arm_deadline()
        else:
            self._mode = "idle"

    def _apply_tracked(self, ok: Any) -> None:
        """Keeps ``state`` true to what the server reports after pyproxy's own commands."""
        view = ClientSession(self.state)
        view.observe_changes(ok.changes, None)
        view.observe_status(ok.status)
        self.state = view.state

    def ping(self) -> defer.Deferred[bytes]:
        return self.execute(bytes((COMMAND.COM_PING,)))

    def reset(self) -> defer.Deferred[BackendConnection]:
        """COM_RESET_CONNECTION, then tracking again: drops every piece of session state."""
        d = self.execute(bytes((COM_RESET_CONNECTION,)))

        def after_reset(_: bytes) -> defer.Deferred[bytes]:
            self.statements.clear()
            self.last_insert_id = 0
            self.diagnostics = None
            # The reset keeps the schema and the COM_SET_OPTION setting.
            self.state = reset_state(self.target.charset, self.state.schema,
                                       self._server_autocommit(), self.state.multi_statements)
            return self._prepare_session()

        d.addCallback(after_reset)
        d.addCallback(lambda _: self)
        return d

    def change_user(self) -> defer.Deferred[BackendConnection]:
        """COM_CHANGE_USER to the same account with no schema: the only way to unselect one."""
        if self.broken or self.transport is None:
            return defer.fail(lost_connection("connection closed"))
        nonce = self.handshake.auth_data if self.handshake else self._nonce
        plugin = self._plugin if self._plugin in (auth.NATIVE, auth.CACHING_SHA2) else auth.NATIVE
        if self.target.login is not None and self.target.login.native_sha1 is not None:
            plugin = auth.NATIVE
        try:
            proof = self._proof(plugin, nonce)
        except BackendError as exc:
            return defer.fail(exc)
        self.ready = defer.Deferred()
        self.statements.clear()
        self.last_insert_id = 0
        self.diagnostics = None
        self._mode = "auth"
        self._seq = 0
        self._plugin = plugin
        attributes = ({"_client_name": "pyproxy", "program_name": "pyproxy"}
                      if self.capabilities & CLIENT.CONNECT_ATTRS else None)
        self.transport.write(frame(make_change_user(
            self.target.user, proof,
            None, self.target.charset, plugin, attributes), 0))
        self._seq = 1
        self.target = attrs.evolve(self.target, database=None)
        return self.ready

    def _server_autocommit(self) -> bool:
        return bool(self.handshake.status & c.SERVER_STATUS_AUTOCOMMIT) if self.handshake else True

    # -- relaying a client's command ----------------------------------------

    def relay(self, raw: bytes, reply: Reply, sink: ReplySink, *, translate: bool = False,
              cursor: bool = False, metadata_status: int = 0, swallow: bool = False) -> None:
        """Forwards a client's command as received; the reply streams to ``sink``.

        ``translate``: the client did not negotiate CLIENT_DEPRECATE_EOF (see
        ResponseTracker.start).  ``swallow``: ``raw`` begins with a command of
        pyproxy's own whose one-packet reply (an OK) comes first and is not the
        client's; an ERR there fails the connection, since the client's command
        has already gone out behind it.
        """
        if reply == Reply.NONE:
            self.transport.write(raw)  # type: ignore[union-attr]
            return
        self._swallow = swallow
        self._sink = sink
        self._mode = "relay"
        self.tracker.start(reply, translate=translate, cursor=cursor, metadata_status=metadata_status)
        write_now(self.transport, raw)

    def relay_more(self, raw: bytes) -> None:
        """Client packets that belong to the running command (LOCAL INFILE data)."""
        self.transport.write(raw)  # type: ignore[union-attr]

    def infile_sent(self) -> None:
        self.tracker.infile_sent()

    def has_partial_packet(self) -> bool:
        """Whether part of a reply packet is held back, waiting for the rest."""
        return bool(self._carry)

    def _relay_data(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if self._swallow:
            size = len(data)
            end = 4 + (data[0] | (data[1] << 8) | (data[2] << 16)) if size >= 4 else 5
            if size < end:
                self._carry = data
                return
            self._swallow = False
            if data[4:5] == b"\xff":
                self._fail(lost_connection(f"pyproxy's own SET failed: {parse_err(data[4:end]).message}"))
                return
            data = data[end:]
            if not data:
                return
        tracker = self.tracker
        tracker.oks.clear()
        tracker.changed = False
        if tracker.translate:
            tracker.terminators.clear()
            tracker.edits.clear()
            data = bytearray(data)  # sequence ids are rewritten in place
        try:
            end = tracker.scan(data)
        except ProtocolViolation as exc:
            self._fail(lost_connection(f"protocol violation: {exc}"))
            return
        if end != len(data):
            if tracker.state == DONE or tracker.state == INFILE:
                self._fail(lost_connection("data after the end of a reply"))
                return
            self._carry = data[end:]
            data = data[:end]
        if tracker.state == DONE:
            self._mode = "idle"
            sink, self._sink = self._sink, None
        else:
            sink = self._sink
        if sink is not None:
            try:
                sink.backend_data(data, tracker)
            except Exception as exc:  # noqa: BLE001 - one client's bug must not break the reactor
                self.log.error("internal_error", error=repr(exc))
                sink.backend_failed(exc)

    # -- end of life --------------------------------------------------------

    def close(self, reason: str) -> bool:
        """Closes for good; the pool has already forgotten this connection.

        Returns True when connectionLost (and ``on_lost``) will follow once the
        server has closed its end: after COM_QUIT pyproxy closes only its
        sending side and waits for the server (connect_timeout at most), for
        until then the server still counts the connection against its limits.
        """
        was_broken = self.broken
        if not was_broken:
            self.log.info("backend_closed", reason=reason)
        self.broken = True
        transport = self.transport
        if transport is None:
            return False
        if self._mode not in ("auth", "closed"):
            try:
                transport.write(frame(bytes((COMMAND.COM_QUIT,)), 0))
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        # Over TLS a half close would skip TLS's own close: its close_notify goes
        # instead, and the server's close ends the connection as well.
        half_close = transport.loseConnection if self.tls_started else getattr(transport, "loseWriteConnection",
                                                                                   None)
        if was_broken or half_close is None or self._mode == "closed":
            transport.loseConnection()
            return False
        self._mode = "closed"  # whatever the server still sends is dropped with the connection
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = self.clock.callLater(self.target.connect_timeout, transport.abortConnection)
        half_close()
        return True

    def _fail(self, error: Exception | Failure) -> None:
        exc = error.value if isinstance(error, Failure) else error
        if not isinstance(exc, BackendError):
            exc = lost_connection(str(exc))
        self.broken = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        self._error_out(exc)

    def _error_out(self, exc: BackendError) -> None:
        pending, self._pending = self._pending, []
        for entry in pending:
            entry[0].errback(exc)
        if not self.ready.called:
            self.ready.errback(exc)
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.backend_lost(exc)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        was_broken = self.broken
        self.broken = True
        self.gone = True
        self._mode = "closed"
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self.tls_started and not self.ready.called:
            # The TLS handshake (or the login inside it) failed: say so.
            target = self.target
            code, state = c.CR_SSL_CONNECTION_ERROR
            self._error_out(BackendError(code, state, f"TLS to {target.host}:{target.port} "
                                                      f"(as {target.tls.server_name!r}) failed: "
                                                      f"{describe_tls_failure(reason)}"))
        else:
            if not was_broken:
                self.log.warning("backend_lost", reason=reason.getErrorMessage())
            self._error_out(lost_connection(reason.getErrorMessage()))
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self)


class _BackendFactory(protocol.Factory):
    noisy = False

    def __init__(self, target: Target, flavor: int, clock: IReactorTime) -> None:
        self.target = target
        self.flavor = flavor
        self.clock = clock

    def buildProtocol(self, addr: Any) -> BackendConnection:
        return BackendConnection(self.target, self.flavor, self.clock)


def connect(reactor: Any, target: Target, flavor: int) -> defer.Deferred[BackendConnection]:
    """Opens, authenticates and prepares one backend connection.

    Fails with BackendError: 2003 when the server cannot be reached in
    ``connect_timeout``, or the server's own error (1045, 1040, ...).
    """
    endpoint = HostnameEndpoint(reactor, target.host, target.port, timeout=target.connect_timeout)
    d = endpoint.connect(_BackendFactory(target, flavor, reactor))

    def connected(conn: BackendConnection) -> defer.Deferred[BackendConnection]:
        def too_slow() -> None:
            conn._fail(BackendError(*c.CR_CONN_HOST_ERROR,
                                    f"Can't connect to MySQL server on '{target.host}:{target.port}' "
                                    f"(login took longer than {target.connect_timeout:g}s)"))

        conn._timeout = reactor.callLater(target.connect_timeout, too_slow)
        return conn.ready

    def unreachable(failure: Failure) -> Failure:
        if failure.check(BackendError):
            return failure
        code, state = c.CR_CONN_HOST_ERROR
        return Failure(BackendError(code, state, f"Can't connect to MySQL server on "
                                                 f"'{target.host}:{target.port}' ({failure.getErrorMessage()})"))

    d.addCallback(connected)
    d.addErrback(unreachable)
    return d
