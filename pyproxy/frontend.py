"""pyproxy as a MySQL *server*: the connection an application opens.

FrontendProtocol is the Twisted protocol of one client connection, from its
greeting to its close.  It frames what the client sends (small packets
only, until it has logged in), feeds the login phase (pyproxy.login) until
that hands over an Identity, and from then on hands every command to its
command phase (pyproxy.command_phase), which borrows a backend connection
per transaction.  It owns what belongs to the connection rather than to a
command: its phase, admission (max_client_connections), the ERR that ends
it, flow control on its transport, the idle timeout, shutdown, and what
happens when it closes.

Every listener builds it through FrontendFactory: the pooled one, and the
read-only one, whose sessions' transactions go to readers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import ISSLTransport
from twisted.python.failure import Failure

from pyproxy import auth, idle
from pyproxy.command_phase import CommandPhase
from pyproxy.credential_sources import BackendLogin
from pyproxy.flow import QUEUE_LIMIT, enqueue, pause_replies, resume_backend, resume_replies, run_queued
from pyproxy.infile import client_packet
from pyproxy.kill import cancel_query_timer
from pyproxy.session import ClientSession
from pyproxy.logs import get_logger
from pyproxy.login import LOGIN_PACKET_LIMIT, Identity, Login
from pyproxy.phases import AUTH_SWITCH, CLOSED, COMMANDS, HANDSHAKE
from pyproxy.proxy import Proxy
from pyproxy.release import cancel_hold, client_left, release_if_clean
from pyproxy.set_global import abandon
from pyproxy.tls import close_client
from pyproxy.wire import constants as c
from pyproxy.wire.framing import Packet, PacketFramer, PacketsOutOfOrder, PacketTooLarge, frame
from pyproxy.wire.handshake import ChangeUser, is_ssl_request
from pyproxy.wire.responses import make_err

# The phases are pyproxy.phases'; they are known by this module's name too.
__all__ = ["AUTH_SWITCH", "CLOSED", "COMMANDS", "HANDSHAKE", "FrontendFactory", "FrontendProtocol"]

# Client error codes libmariadb 3.3 keeps for itself (see FrontendProtocol.error_packet).
CR_FIRST, LIBMARIADB_CR_LAST = 2000, 2061
ER_CONNECTION_KILLED = (1927, "70100")
ER_UNKNOWN_ERROR = (1105, "HY000")


class FrontendProtocol(protocol.Protocol):
    """One application connection, from greeting to COM_QUIT."""

    # Thousands of idle clients are the normal case: no per-instance __dict__.
    __slots__ = ("transport", "connected", "factory", "proxy", "id", "phase", "framer", "nonce", "user",
                 "libmariadb", "tls_on", "closed_reason", "_login", "commands", "connected_at",
                 "change_user_failures", "_before_change", "held")

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
        # The name the client logs in with (set by the login before it is proven).
        self.user = ""
        # The client's library is libmariadb (see error_packet).
        self.libmariadb = False
        # TLS was started on this connection (after the client's SSLRequest).
        self.tls_on = False
        self.closed_reason: str | None = None
        # The login phase, until the client has logged in (again, for COM_CHANGE_USER).
        self._login: Login | None = None
        self.commands = CommandPhase(self, proxy, readonly)
        # When it was accepted (reactor seconds), for the admin console's SHOW CLIENTS.
        self.connected_at = proxy.reactor.seconds()
        # Refused COM_CHANGE_USERs (pyproxy.local_commands), and the user and
        # session state a refused one gives back.
        self.change_user_failures = 0
        self._before_change: tuple[str, str | None] | None = None
        # Commands read while reading was paused are back in the framer, as bytes
        # (see dataReceived); read_held takes them once the client may go on.
        self.held = False

    @property
    def session(self) -> ClientSession | None:
        """The client's session (None before login), for what watches clients
        from outside: the metrics collector, the stats."""
        return self.commands.session

    @property
    def secure(self) -> bool:
        """Whether the client's connection is encrypted, which clear-text passwords
        and IAM tokens need (pyproxy.login): TLS started here after an SSLRequest,
        or a transport that is a TLS one."""
        return self.tls_on or ISSLTransport.providedBy(self.transport)

    @property
    def log(self) -> Any:
        """A logger bound to this client, made when an event is logged (a few times
        per connection) rather than kept per connection."""
        return get_logger(client_id=self.id, user=self.user) if self.user else get_logger(client_id=self.id)


    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            pass  # a UNIX socket: no Nagle to turn off
        self.commands.transport = self.transport
        if len(self.proxy.clients) >= self.proxy.config.proxy.max_client_connections:
            code, state = c.ER_CON_COUNT_ERROR
            data = frame(make_err(code, state, "Too many connections"), 0)
            self.proxy.stats.bytes_out += len(data)
            self.transport.write(data)
            self.closed_reason = "max_client_connections reached"
            self.phase = CLOSED
            close_client(self.transport)
            return
        self.proxy.clients[self.id] = self
        # pyproxy is the producer of everything this client is sent: its
        # transport says when the unsent bytes pass its buffer size, and when
        # they have drained.
        self.transport.registerProducer(self, True)
        proxy = self.proxy
        login = self._login = Login(self, proxy.credentials, self.nonce, proxy.capabilities, proxy.stats,
                                    proxy.throttle, require_tls=proxy.config.tls.require, rsa=proxy.rsa_keys)
        login.greet(self.id, proxy.server, proxy.config.proxy.auth_plugin, proxy.reactor,
                    proxy.config.proxy.handshake_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.commands.stats.bytes_in += len(data)
        if self.phase == HANDSHAKE and not self.secure and self.proxy.tls is not None:
            rest = self._ssl_request(data)
            if rest is None:
                return
            data = rest
        # (Each exception under a name of its own: the compiled build gives a
        # name one type.)
        try:
            packets = self.framer.feed(data)
        except PacketTooLarge as too_large:
            message = ("Got a packet bigger than 'max_allowed_packet' bytes" if self.phase == COMMANDS else
                       f"Got a login packet bigger than {LOGIN_PACKET_LIMIT} bytes")
            self.fatal(c.ER_NET_PACKET_TOO_LARGE, message, too_large.seq + 1)
            return
        except PacketsOutOfOrder as out_of_order:
            self.fatal(c.ER_NET_PACKETS_OUT_OF_ORDER, "Got packets out of order", out_of_order.seq + 1)
            return
        commands = self.commands
        for index, packet in enumerate(packets):
            if self.phase == COMMANDS:
                if commands.infile:
                    client_packet(commands, packet)
                elif commands.busy or commands.backlog:
                    if commands.backlog or commands.queue is not None and len(commands.queue) >= QUEUE_LIMIT:
                        # Reading is paused, but one read may hold thousands of small
                        # commands: the rest wait as the bytes they came as, not as
                        # queued packets (tens of times their size).
                        self.framer.unread(b"".join(later.raw for later in packets[index:]))
                        self.held = True
                        return
                    enqueue(commands, packet)
                else:
                    commands.dispatch(packet)
            elif self.phase == HANDSHAKE or self.phase == AUTH_SWITCH:
                if self._login.receive(packet) and self.phase == HANDSHAKE:  # type: ignore[union-attr]
                    self.phase = AUTH_SWITCH
            else:
                return

    def read_held(self) -> None:
        """The commands held back while reading was paused (see dataReceived) run
        once every command before them has: nothing else would bring them, if the
        client sends nothing more until they are answered."""
        commands = self.commands
        if (not self.held or self.phase != COMMANDS or commands.busy or commands.infile or commands.backlog
                or commands.queue):
            return
        self.held = False
        self.dataReceived(b"")

    def start_tls(self) -> None:
        """The login phase accepted an SSLRequest: TLS starts now (server side),
        with the certificate [tls] holds at this moment."""
        tls = self.proxy.tls
        if tls is None:
            # Offered in the greeting, then taken away by a reload.
            self.fatal(c.ER_HANDSHAKE_ERROR, "Bad handshake: TLS is not offered here", 2)
            return
        self.transport.startTLS(tls.options)
        self.tls_on = True

    def _ssl_request(self, data: bytes) -> bytes | None:
        """Before the first login packet, when TLS is offered: a client sends its
        TLS handshake right behind its SSLRequest, without waiting, so the
        bytes after those 36 go to the TLS layer, never to the framer.
        Returns the bytes still to frame (None: all taken)."""
        pending = self.framer.take_buffer() + data
        if len(pending) < 36 or pending[:3] != b"\x20\x00\x00":
            return pending  # the framer holds a short SSLRequest until it is whole
        head, rest = pending[:36], pending[36:]
        if not is_ssl_request(head[4:]):
            return pending
        self._login.receive(Packet(head[3], head[4:], head, head[3]))  # type: ignore[union-attr]
        if self.secure and rest:
            self.transport.protocol.dataReceived(rest)
        return None

    def fatal(self, error: tuple[int, str], message: str, seq: int) -> None:
        """An error the connection cannot survive: report it, then close."""
        if self.phase == CLOSED:
            return
        data = frame(self.error_packet(error[0], error[1], message), seq)
        self.proxy.stats.bytes_out += len(data)
        self.transport.write(data)
        self.closed_reason = message
        self.phase = CLOSED
        close_client(self.transport)

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

    # -- the login phase's owner ---------------------------------------------------

    def login_refused(self, reason: str) -> None:
        self.proxy.auth_failures[reason] += 1

    def change_user_refused(self, error: tuple[int, str], message: str, seq: int) -> None:
        """A refused COM_CHANGE_USER leaves the connection open, as MariaDB does: the
        session starts over, as the user it had, with the schema it had and the character
        sets the server gives a new session, and the client may go on."""
        if self.phase == CLOSED:
            return
        self.change_user_failures += 1
        data = frame(self.error_packet(error[0], error[1], message), seq)
        self.proxy.stats.bytes_out += len(data)
        self.transport.write(data)
        login, self._login = self._login, None
        if login is not None:
            login.stop()
        assert self._before_change is not None
        (self.user, schema), self._before_change = self._before_change, None
        commands = self.commands
        commands.restart_session(self.user, schema)
        self.phase = COMMANDS
        commands.command = None
        commands.busy = False
        run_queued(commands)

    def login_timed_out(self) -> None:
        """handshake_timeout passed: a client still logging in is disconnected (one
        whose login-time schema check is under way is not).  The login ends with the
        connection: an answer still under way (a throttled one, a lookup) must not
        write to a connection that is closing, nor log a client in on it."""
        if self.phase in (HANDSHAKE, AUTH_SWITCH):
            self.closed_reason = "handshake timeout"
            self.phase = CLOSED
            if self._login is not None:
                self._login.stop()
            close_client(self.transport)

    def login_accepted(self, identity: Identity, seq: int, backend: BackendLogin | None = None) -> None:
        """The login phase proved who the client is: its session begins (again, after
        COM_CHANGE_USER), and the OK follows, once a schema the login named is
        known to exist.  What the proof gave for the server (``backend``) is
        kept for that user's connections only."""
        if self.phase == CLOSED:
            return  # KILLed while its proof was checked
        self.proxy.remember_login(backend)
        commands = self.commands
        if commands.session is None:
            # The first login: COM_CHANGE_USER does not change the library.
            self.libmariadb = identity.libmariadb
        self.user = identity.user
        commands.start_session(identity)
        schema = identity.schema
        if schema and not self.proxy.schema_known(self.user, schema):
            self._verify_schema(seq)
            return
        self._logged_in(seq)

    def _verify_schema(self, seq: int) -> None:
        """A login naming a schema fails at once if it does not exist, as with a
        server: the schema is selected on a borrowed connection first (a failure
        reaches the client through CommandPhase.command_failed)."""
        self.phase = COMMANDS
        commands = self.commands
        commands.busy = True
        commands.command = Packet(seq - 1, b"", b"", seq - 1)
        commands.acquire(lambda: self._logged_in(seq))

    def _logged_in(self, seq: int) -> None:
        commands = self.commands
        if self.phase == CLOSED:
            return  # KILLed (or closed) while its proof or schema was checked
        if commands.kill_pending:
            # KILLed while the schema it named was looked up: no OK, closed.
            self.phase = CLOSED
            commands.busy = False
            commands.command = None
            self.transport.loseConnection()
            return
        idle.start(commands)
        login, self._login = self._login, None
        if login is not None:
            login.stop()
        self.phase = COMMANDS
        self.framer.max_packet_size = self.proxy.config.proxy.max_packet_size
        session = commands.session
        if session is not None and session.state.schema:
            self.proxy.schema_used(self.user, session.state.schema)
        data = frame(commands.ok_payload(), seq)
        self.proxy.stats.bytes_out += len(data)
        self.transport.write(data)
        self.proxy.client_connected(self.log, self.transport.getPeer(), self.secure)
        commands.command = None
        commands.busy = False
        release_if_clean(commands)
        run_queued(commands)

    def log_in_again(self, request: ChangeUser, seq: int, before: tuple[str, str | None]) -> None:
        """COM_CHANGE_USER, once the session has given up what it held: the login
        phase runs again on this connection's nonce.  ``before``: the user and
        schema a refusal gives back."""
        self._before_change = before
        self.phase = AUTH_SWITCH
        login = self._login = Login(self, self.proxy.credentials, self.nonce, self.commands.capabilities,
                                    self.proxy.stats, self.proxy.throttle, rsa=self.proxy.rsa_keys)
        login.change_user(request, seq)

    # -- flow control, and the end ---------------------------------------------------

    def pauseProducing(self) -> None:
        """The client reads slower than its replies come (its transport holds more
        than its buffer size unsent)."""
        pause_replies(self.commands)

    def resumeProducing(self) -> None:
        """The client's unsent replies have drained."""
        if self.transport.disconnecting:
            # Closing: with a paused producer registered, the transport would
            # wait for it instead of closing once the buffer is empty.
            self.commands.backlog = False
            self.transport.unregisterProducer()
            return
        resume_replies(self.commands)

    def stopProducing(self) -> None:
        """The transport is gone; connectionLost does the rest."""

    def check_idle(self, now: float, timeout: float) -> None:
        """Disconnects a client idle between commands for longer than ``timeout``
        (idle_client_timeout); a held transaction is rolled back by the reset."""
        commands = self.commands
        if (self.phase == COMMANDS and not commands.busy and not commands.infile
                and now - commands.last_active > timeout):
            self.closed_reason = "idle_client_timeout"
            close_client(self.transport)

    def drain(self) -> None:
        """Shutting down: a client that holds no transaction is closed now; one that
        does is closed when its transaction ends."""
        commands = self.commands
        if self.phase != COMMANDS or commands.busy or commands.infile:
            return
        session = commands.session
        if commands.backend is not None and session is not None and session.holds_state() and not commands.pinned:
            return
        self.closed_reason = "shutdown"
        close_client(self.transport)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        was = self.phase
        self.phase = CLOSED
        commands = self.commands
        resume_backend(commands)
        self.proxy.clients.pop(self.id, None)
        if self._login is not None:
            self._login.stop()
        cancel_hold(commands)
        cancel_query_timer(commands)
        idle.stop(commands)
        abandon(commands)
        commands.stop_borrowing()
        client_left(commands)
        self.proxy.client_closed(self.log, self.closed_reason or (
            "client disconnected" if was not in (HANDSHAKE, AUTH_SWITCH) else "client left before logging in"))


class FrontendFactory(protocol.Factory):
    """Builds the protocol of each client accepted on a listener; the read-only
    listener's factory says so, and its clients' transactions go to readers.
    Every connection accepted is counted on the Proxy, for SIGUSR1's
    ``client_stats`` and /metrics (each is logged only at debug level).

    (Not to be subclassed: the compiled build makes it a native class, which
    interpreted classes cannot extend.)"""

    noisy = False

    def __init__(self, proxy: Proxy, readonly: bool = False) -> None:
        self.proxy = proxy
        self.readonly = readonly

    def buildProtocol(self, addr: Any) -> FrontendProtocol:
        self.proxy.connections_accepted += 1
        return FrontendProtocol(self.proxy, self.readonly)
