"""The admin console: pyproxy's state and controls over the MySQL protocol.

Like PgBouncer's ``pgbouncer`` database, on a listener of its own
(``[admin] listen``, loopback by default) and with an account of its own
(``[admin] user`` and ``password`` or ``password_hash``): any MySQL client
connects to it (``mariadb -h 127.0.0.1 -P 6034 -u admin -p``) and runs
``SHOW POOLS``, ``SHOW CLIENTS``, ``SHOW SERVERS``, ``SHOW TARGETS``,
``SHOW STATS``, ``SHOW CONFIG``, ``SHOW VERSION``, ``PAUSE``, ``RESUME``,
``RELOAD``, ``KILL CLIENT <id>``, ``SHUTDOWN [GRACEFUL]`` and ``SET
debug_statements_for = <seconds>`` (pyproxy.admin_commands parses them).

A console connection logs in through the same login phase as a pooled
client (pyproxy.login), with Credentials that know the admin account only,
and is answered by pyproxy alone: it never borrows a backend connection.
Every answer is a real result set with typed columns (pyproxy.wire.resultset)
or an OK or ERR packet, in the layout the client negotiated (with or without
CLIENT_DEPRECATE_EOF).  The tables are read off the pools', topology's and
clients' own state, as /metrics and SIGUSR1's stats are, so the three never
disagree; the controls are the signal handlers' own code (pyproxy.tap).

With ``[proxy] workers`` the supervisor owns the listener and its console
(pyproxy.worker_admin) asks every worker's AdminConsole over the control
channel, so the console speaks for the whole pyproxy; the tables that list
connections carry a ``worker`` column (0 with one process) for that.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Union

import attrs
import twisted
from twisted.internet import defer, protocol
from twisted.internet.interfaces import ISSLTransport
from twisted.python.failure import Failure

import pyproxy
from pyproxy import auth
from pyproxy.admin_commands import COMMANDS, ER_PARSE_ERROR, AdminSyntaxError, Command, like, parse
from pyproxy.config import ConfigError, Config, UserConfig, secrets as config_secrets
from pyproxy.credential_sources import ConfigSource, Credential, Credentials, Verdict
from pyproxy.logs import format_address, get_logger, names_a_secret
from pyproxy.login import LOGIN_PACKET_LIMIT, Identity, Login
from pyproxy.phases import AUTH_SWITCH, CLOSED, COMMANDS as COMMANDS_PHASE, HANDSHAKE
from pyproxy.query_stats import is_secure
from pyproxy.wire import constants as c
from pyproxy.wire.commands import command_name
from pyproxy.wire.constants import CLIENT, COMMAND, SERVER_STATUS_AUTOCOMMIT
from pyproxy.wire.framing import Packet, PacketFramer, PacketsOutOfOrder, PacketTooLarge, frame
from pyproxy.wire.responses import make_err, make_ok
from pyproxy.wire.resultset import Column, Value, float_column, int_column, make_result_set, text_column

if TYPE_CHECKING:
    from pyproxy.config import Config as ConfigType
    from pyproxy.proxy import Proxy, ServerInfo

# What the console offers: no LOCAL INFILE, no multi-statements, no session
# tracking (its OKs carry nothing to track); both EOF layouts.
ADMIN_CAPABILITIES = (
    CLIENT.LONG_PASSWORD | CLIENT.FOUND_ROWS | CLIENT.LONG_FLAG | CLIENT.CONNECT_WITH_DB | CLIENT.ODBC
    | CLIENT.IGNORE_SPACE | CLIENT.PROTOCOL_41 | CLIENT.INTERACTIVE | CLIENT.TRANSACTIONS
    | CLIENT.SECURE_CONNECTION | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS | CLIENT.PLUGIN_AUTH
    | CLIENT.CONNECT_ATTRS | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT.DEPRECATE_EOF
)
# The largest command a console client may send.
ADMIN_PACKET_LIMIT = 1 << 20
# Console connections open at once; the next gets error 1040 (a runaway
# script must not use up pyproxy's file descriptors).
ADMIN_MAX_CONNECTIONS = 64
MASK = "********"
ER_NO_SUCH_THREAD = (1094, "HY000")
ER_UNKNOWN_ERROR = (1105, "HY000")
VERSION_COMMENT = "pyproxy admin console"


class AdminError(Exception):
    """A command that cannot be carried out: the client gets this ERR."""

    def __init__(self, error: tuple[int, str], message: str) -> None:
        super().__init__(message)
        self.code, self.sqlstate = error
        self.message = message


class AdminCredentials:
    """The admin account alone, from the running configuration (a reload that
    changes it applies to the next login).  A pooled client's account is no
    admin, and the admin account opens no pooled session.  It is the login
    phase's Credentials interface over one configured account: a password, or
    its stored hash (then only a mysql_native_password proof can be checked,
    and the console greets with that plugin).

    Args:
        holder: whatever has the running configuration as ``config`` (the
            console; the supervisor's one with workers).
    """

    __slots__ = ("_holder",)

    def __init__(self, holder: Any) -> None:
        self._holder = holder

    def _chain(self) -> Credentials:
        admin = self._holder.config.admin
        users = [UserConfig(admin.user, admin.password, admin.password_hash)] if admin.user else []
        return Credentials([ConfigSource(users, name="admin")])

    def credential(self, user: str) -> defer.Deferred[Credential | None]:
        return self._chain().credential(user)

    def verify(self, credential: Credential, plugin: str, nonce: bytes, answer: bytes, *,
               secure: bool) -> defer.Deferred[Verdict]:
        return self._chain().verify(credential, plugin, nonce, answer, secure=secure)


#: One row of SHOW WARNINGS: level ("Warning", "Error"), code, message.
Note = tuple[str, int, str]


@attrs.frozen
class Table:
    """A result set to send: typed columns and their rows; ``warnings`` are
    counted in its last packet and listed by SHOW WARNINGS."""

    columns: Sequence[Column]
    rows: Sequence[Sequence[Value]]
    warnings: Sequence[Note] = ()


@attrs.frozen
class Done:
    """An OK, with an info text for the client to show; ``then`` runs once it is written."""

    info: str = ""
    then: Callable[[], None] | None = None
    warnings: Sequence[Note] = ()


Answer = Union[Table, Done]

# The tables' columns: the supervisor's console (pyproxy.worker_admin) gets
# only the rows from its workers and puts these over them.  ``worker`` is the
# index of the process that serves the connection (0 without [proxy] workers).
POOL_COLUMNS = (
    text_column("user"), text_column("target"), text_column("role", 8), int_column("idle"),
    int_column("in_use"), int_column("checking"), int_column("closing"), int_column("opening"),
    int_column("waiting"), int_column("max_connections"), int_column("borrows"), int_column("waits"),
    int_column("timeouts"), int_column("opened"), int_column("open_failures"),
    float_column("borrow_wait_p99_ms"), int_column("paused"), int_column("worker"))
CLIENT_COLUMNS = (
    int_column("id"), text_column("user"), text_column("address"), text_column("listener", 10),
    int_column("tls"), text_column("state", 10), float_column("age_seconds"), float_column("idle_seconds"),
    int_column("backend_id", nullable=True), int_column("in_transaction"), int_column("pinned"),
    text_column("pin_reason"), int_column("worker"))
SERVER_COLUMNS = (
    int_column("id"), text_column("user"), text_column("target"), text_column("state", 10),
    float_column("age_seconds"), float_column("idle_seconds"), int_column("client_id", nullable=True),
    int_column("pinned"), float_column("last_health_check_seconds_ago"),
    int_column("server_thread_id", nullable=True), int_column("prepared_statements"), int_column("worker"))
TARGET_COLUMNS = (
    text_column("target"), text_column("role", 8), text_column("state", 10), float_column("state_seconds"),
    int_column("writer"), int_column("probes"), int_column("failed_probes"), int_column("failures_in_a_row"),
    text_column("last_error"))
STATS_COLUMNS = (text_column("name", 64), int_column("value"))
VERSION_COLUMNS = (text_column("pyproxy", 32), text_column("server"), text_column("python", 32),
                   text_column("twisted", 32))


class Console:
    """What every console shares, whoever answers its tables: the connections
    open, the admin account's credentials, and the commands answered from the
    configuration alone (SHOW CONFIG, SHOW HELP) or as a server would (what
    clients send when they connect).

    A subclass gives ``config``, ``server``, ``reactor`` and
    ``debug_seconds_left()`` and the ``do_<command>`` methods for pyproxy's
    state and controls; a ``do_`` method returns an Answer, or a Deferred
    firing with one when it must ask other processes (pyproxy.worker_admin).
    """

    def __init__(self) -> None:
        self.credentials = AdminCredentials(self)
        self.ids = itertools.count(1)
        # Console connections open now.
        self.connections: dict[int, AdminProtocol] = {}
        self.started = time.time()

    config: ConfigType
    server: ServerInfo
    reactor: Any

    def debug_seconds_left(self) -> float:
        raise NotImplementedError

    def run(self, command: Command, connection: AdminProtocol | None) -> Answer | defer.Deferred[Answer]:
        """Carries out ``command`` for ``connection`` (None: for the supervisor's
        console, which has the connection).

        Raises:
            AdminError: it could not be (an unknown client id, a failed reload...).
        """
        handler = getattr(self, "do_" + command.name.replace(" ", "_"))
        return handler(connection, *command.args)  # type: ignore[no-any-return]

    def do_show_config(self, connection: AdminProtocol) -> Table:
        config = self.config
        hidden = config_secrets(config)
        rows = [(key, _shown(key, value, hidden), default) for key, value, default in config_items(config, Config())]
        return Table([text_column("key", 64), text_column("value"), text_column("default")], rows)

    def do_show_help(self, connection: AdminProtocol) -> Table:
        return Table([text_column("command", 40), text_column("description")], COMMANDS)

    def do_show_warnings(self, connection: AdminProtocol) -> Table:
        return Table([text_column("Level", 7), int_column("Code"), text_column("Message")],
                     list(connection.warnings))

    # -- clients' own connection chatter --------------------------------------------

    def do_ok(self, connection: AdminProtocol) -> Done:
        return Done()

    def do_set_autocommit(self, connection: AdminProtocol, on: bool) -> Done:
        connection.autocommit = on
        return Done()

    def do_select(self, connection: AdminProtocol, *items: tuple[str, str]) -> Table:
        values = [self.select_value(connection, expression) for expression, _ in items]
        columns = [int_column(name) if isinstance(value, int) else text_column(name)
                   for (_, name), value in zip(items, values)]
        return Table(columns, [values])

    def do_show_variables(self, connection: AdminProtocol, pattern: str | None) -> Table:
        variables = self.variables(connection)
        matches = like(pattern).fullmatch if pattern is not None else None
        rows = [(name, str(value)) for name, value in sorted(variables.items())
                if matches is None or matches(name)]
        return Table([text_column("Variable_name", 64), text_column("Value", 2048)], rows)

    def variables(self, connection: AdminProtocol) -> dict[str, str | int]:
        """The variables clients read when they connect, as a server would answer."""
        return {
            "version_comment": VERSION_COMMENT, "version": self.server.version,
            "autocommit": int(connection.autocommit),
            "max_allowed_packet": ADMIN_PACKET_LIMIT, "sql_mode": "", "character_set_client": "utf8mb4",
            "character_set_connection": "utf8mb4", "character_set_results": "utf8mb4",
            "character_set_server": "utf8mb4", "collation_connection": "utf8mb4_general_ci",
            "collation_server": "utf8mb4_general_ci", "time_zone": "SYSTEM", "system_time_zone": "UTC",
            "transaction_isolation": "REPEATABLE-READ", "tx_isolation": "REPEATABLE-READ",
            "transaction_read_only": 0, "tx_read_only": 0, "lower_case_table_names": 0,
            "wait_timeout": 28800, "interactive_timeout": 28800, "net_write_timeout": 60,
            "license": "GPL", "init_connect": "", "performance_schema": 0, "query_cache_size": 0,
            "debug_statements_for": int(self.debug_seconds_left() + 0.999),
        }

    def select_value(self, connection: AdminProtocol, expression: str) -> str | int | None:
        """One selected expression: a variable (NULL for one the console does not
        have), a function of the connection, or a number."""
        if expression.startswith("@@"):
            return self.variables(connection).get(expression[2:])
        if expression in ("database()", "schema()"):
            return None
        if expression in ("user()", "current_user()", "session_user()", "system_user()"):
            return f"{connection.user}@{_host(connection.transport)}"
        if expression == "version()":
            return self.server.version
        if expression == "connection_id()":
            return connection.id
        return int(expression)


class AdminConsole(Console):
    """The console of one pyproxy process: its tables read off this process's
    pools, topology and clients, its controls the signal handlers' own code.

    With ``[proxy] workers`` each worker has one too, with no listener: the
    supervisor's console asks it for its part (pyproxy.worker_admin).

    Args:
        service: the pyproxy.tap.ProxyService, for its proxy, health checker,
            configuration and controls (pause, reload, shutdown).
    """

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    @property
    def proxy(self) -> Proxy:
        return self.service.proxy

    @property
    def config(self) -> ConfigType:  # type: ignore[override]
        return self.service.config  # type: ignore[no-any-return]

    @property
    def server(self) -> ServerInfo:  # type: ignore[override]
        return self.proxy.server

    @property
    def reactor(self) -> Any:
        return self.proxy.reactor

    def debug_seconds_left(self) -> float:
        return self.proxy.statement_log.remaining

    def now(self) -> float:
        return self.proxy.reactor.seconds()

    @property
    def worker(self) -> int:
        return self.proxy.worker[0]

    def do_show_pools(self, connection: AdminProtocol | None) -> Table:
        rows = []
        for pool in list(self.proxy.pools.values()):
            stats = pool.stats()
            target = pool.target
            rows.append((pool.user, target.name if target is not None else "",
                         target.role if target is not None else "", stats["idle"], stats["lent"],
                         stats["checking"], stats["closing"], stats["connecting"], stats["waiting"],
                         pool.max_size, pool.borrows, pool.waits, pool.timeouts, pool.opened,
                         pool.open_failures, stats["borrow_wait_p99_ms"], int(pool.paused), self.worker))
        return Table(POOL_COLUMNS, rows)

    def do_show_clients(self, connection: AdminProtocol | None) -> Table:
        now = self.now()
        rows = []
        for client in list(self.proxy.clients.values()):
            commands = client.commands
            session = commands.session
            backend = commands.backend
            rows.append((client.id, client.user, _peer(client.transport),
                         "read_only" if commands.readonly else "pooled", int(is_secure(client)),
                         client_state(client), _seconds(now - client.connected_at),
                         _seconds(now - commands.last_active) if commands.last_active else None,
                         backend.id if backend is not None else None,
                         int(bool(session is not None and session.in_transaction)), int(commands.pinned),
                         session.pin_reason if session is not None else None, self.worker))
        return Table(CLIENT_COLUMNS, rows)

    def do_show_servers(self, connection: AdminProtocol | None) -> Table:
        now = self.now()
        holders = {}
        for client in list(self.proxy.clients.values()):
            backend = client.commands.backend
            if backend is not None:
                holders[backend.id] = client
        rows = []
        for pool in list(self.proxy.pools.values()):
            target = pool.target.name if pool.target is not None else ""
            for state, conns in (("idle", pool.idle), ("in_use", pool.lent), ("checking", pool.checking),
                                 ("closing", pool.closing)):
                for conn in list(conns):
                    holder = holders.get(conn.id)
                    handshake = conn.handshake
                    rows.append((conn.id, pool.user, target, state, _seconds(now - conn.created_at),
                                 _seconds(now - conn.last_used) if state == "idle" else None,
                                 holder.id if holder is not None else None,
                                 int(holder is not None and holder.commands.pinned),
                                 _seconds(now - conn.last_checked) if conn.last_checked != conn.created_at
                                 else None,
                                 handshake.connection_id if handshake is not None else None,
                                 len(conn.statements), self.worker))
        rows.sort(key=lambda row: row[0])
        return Table(SERVER_COLUMNS, rows)

    def do_show_targets(self, connection: AdminProtocol | None) -> Table:
        topology = self.proxy.topology
        now = topology.clock.seconds()
        rows = [(target.name, target.role, target.state,
                 None if target.since is None else _seconds(now - target.since), int(target is topology.writer),
                 target.probes, target.failed_probes, target.failures, target.last_error or None)
                for target in list(topology.targets)]
        return Table(TARGET_COLUMNS, rows)

    def do_show_stats(self, connection: AdminProtocol | None) -> Table:
        proxy = self.proxy
        stats = proxy.stats
        relayed = sum(stats.latency)
        health = self.service.health
        values: list[tuple[str, int]] = [
            ("uptime_seconds", int(time.time() - self.started)),
            ("client_connections", len(proxy.clients)),
            ("client_connections_accepted", proxy.connections_accepted),
            ("client_logins", proxy.logins),
            ("client_logins_tls", stats.logins_tls),
            ("client_logins_plaintext", stats.logins_plain),
            ("client_received_bytes", stats.bytes_in),
            ("client_sent_bytes", stats.bytes_out),
            ("commands", sum(stats.commands)),
        ]
        values.extend((command_name(code).lower(), count) for code, count in enumerate(stats.commands) if count)
        values.extend([
            ("commands_relayed", relayed),
            ("statement_latency_total_us", int(stats.latency_sum * 1e6)),
            ("statement_latency_avg_us", int(stats.latency_sum * 1e6 / relayed) if relayed else 0),
            ("sessions_pinned", sum(1 for client in proxy.clients.values()
                                    if client.session is not None and client.session.pin_reason is not None)),
            ("session_pins", sum(proxy.pins.values())),
            ("backend_borrows", sum(pool.borrows for pool in proxy.pools.values())),
            ("backend_borrow_waits", sum(pool.waits for pool in proxy.pools.values())),
            ("backend_borrow_timeouts", sum(pool.timeouts for pool in proxy.pools.values())),
            ("backend_connections_opened", sum(pool.opened for pool in proxy.pools.values())),
            ("backend_resets", proxy.resets),
            ("health_pings", health.pings),
            ("health_ping_failures", health.failures),
            ("failovers", proxy.topology.writer_changes),
            ("paused", int(proxy.paused)),
            ("debug_statements_seconds_left", int(self.debug_seconds_left() + 0.999)),
            # How many processes these figures are from (the supervisor's console sums them).
            ("workers", 1),
            ("workers_answered", 1),
        ])
        return Table(STATS_COLUMNS, values)

    def do_show_version(self, connection: AdminProtocol | None) -> Table:
        return Table(VERSION_COLUMNS, [(pyproxy.__version__, self.proxy.server.version,
                                        platform.python_version(), twisted.__version__)])

    def do_pause(self, connection: AdminProtocol | None) -> Done:
        if self.proxy.paused:
            return Done("pyproxy was paused already")
        self.service.pause()
        return Done("paused: new transactions wait; backend connections close as they come free")

    def do_resume(self, connection: AdminProtocol | None) -> Done:
        if not self.proxy.paused:
            return Done("pyproxy was not paused")
        self.service.resume()
        return Done("resumed")

    def do_reload(self, connection: AdminProtocol | None) -> Done:
        try:
            changed = self.service.reload_now()
        except ConfigError as exc:
            raise AdminError(ER_UNKNOWN_ERROR, f"reload failed, the running configuration stays: {exc}") from None
        return Done("reloaded; changed: " + (", ".join(changed) if changed else "nothing"))

    def do_kill_client(self, connection: AdminProtocol | None, client_id: int) -> Done:
        client = self.proxy.clients.get(client_id)
        if client is None or client.phase == CLOSED:
            raise AdminError(ER_NO_SUCH_THREAD, f"Unknown thread id: {client_id}")
        client.closed_reason = "killed from the admin console"
        client.transport.loseConnection()
        return Done(f"client {client_id} closed")

    def do_shutdown(self, connection: AdminProtocol | None, graceful: bool = False) -> Done:
        service = self.service
        return Done("shutting down" + (" once open transactions end" if graceful else ""),
                    then=lambda: service.shut_down(graceful))

    def do_set_debug_statements_for(self, connection: AdminProtocol | None, seconds: float) -> Done:
        self.proxy.statement_log.turn_on_for(seconds)
        return Done(f"statements are logged for {seconds:g}s" if seconds else "statements are not logged")


class AdminProtocol(protocol.Protocol):
    """One console connection: the login phase, then statements answered here,
    one at a time: while an answer is awaited (the supervisor's console asks its
    workers) the statements that follow wait their turn and the connection is
    not read."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.id = next(console.ids)
        self.transport: Any = None
        self.phase = HANDSHAKE
        self.framer = PacketFramer(LOGIN_PACKET_LIMIT)
        self.nonce = auth.new_nonce()
        self.user = ""
        self.capabilities = 0
        self.autocommit = True
        # What SHOW WARNINGS lists: the last statement's warnings, or its error.
        self.warnings: Sequence[Note] = ()
        self._login: Login | None = None
        self._queued: list[Packet] = []
        self._answering = False
        self._draining = False

    @property
    def log(self) -> Any:
        return get_logger(component="admin", admin_id=self.id, user=self.user or None)

    def connectionMade(self) -> None:
        console = self.console
        if len(console.connections) >= ADMIN_MAX_CONNECTIONS:
            self.fatal(c.ER_CON_COUNT_ERROR, "Too many connections to the admin console", 0)
            return
        console.connections[self.id] = self
        self._login = Login(self, console.credentials, self.nonce, ADMIN_CAPABILITIES)
        self._login.greet(self.id, _greeting(console.server), auth.NATIVE, console.reactor,
                          console.config.proxy.handshake_timeout)

    def dataReceived(self, data: bytes) -> None:
        try:
            packets = self.framer.feed(data)
        except PacketTooLarge as exc:
            self.fatal(c.ER_NET_PACKET_TOO_LARGE, "Got a packet bigger than the admin console takes",
                       exc.seq + 1)
            return
        except PacketsOutOfOrder as exc:
            self.fatal(c.ER_NET_PACKETS_OUT_OF_ORDER, "Got packets out of order", exc.seq + 1)
            return
        for packet in packets:
            if self.phase == COMMANDS_PHASE:
                self._queued.append(packet)
                self._next_commands()
            elif self.phase in (HANDSHAKE, AUTH_SWITCH):
                if self._login.receive(packet) and self.phase == HANDSHAKE:  # type: ignore[union-attr]
                    self.phase = AUTH_SWITCH
            else:
                return

    # -- the login phase's owner ---------------------------------------------------

    @property
    def secure(self) -> bool:
        """Whether the console connection is encrypted (the console offers no TLS of its own)."""
        return ISSLTransport.providedBy(self.transport)

    def login_refused(self, reason: str) -> None:
        self.log.warning("admin_login_refused", reason=reason, peer=_peer(self.transport))

    def login_accepted(self, identity: Identity, seq: int, backend: Any = None) -> None:
        login, self._login = self._login, None
        if login is not None:
            login.stop()
        self.user = identity.user
        self.capabilities = identity.capabilities
        self.phase = COMMANDS_PHASE
        self.framer.max_packet_size = ADMIN_PACKET_LIMIT
        self.transport.write(frame(self.ok(), seq))
        self.log.info("admin_login", peer=_peer(self.transport))

    def fatal(self, error: tuple[int, str], message: str, seq: int | None = None) -> None:
        if self.phase == CLOSED:
            return
        self.transport.write(frame(make_err(error[0], error[1], message), seq or 0))
        self.phase = CLOSED
        self.transport.loseConnection()

    def login_timed_out(self) -> None:
        if self.phase in (HANDSHAKE, AUTH_SWITCH):
            self.phase = CLOSED
            self.transport.loseConnection()

    # -- commands --------------------------------------------------------------------

    def status(self) -> int:
        return SERVER_STATUS_AUTOCOMMIT if self.autocommit else 0

    def ok(self, info: str = "") -> bytes:
        return make_ok(self.status(), info=info.encode())

    def _next_commands(self) -> None:
        """Runs the statements received, in order, until one's answer is awaited."""
        if self._draining:
            return  # an answer came at once, inside the loop below: it goes on
        self._draining = True
        try:
            while self._queued and not self._answering and self.phase == COMMANDS_PHASE:
                self.command(self._queued.pop(0))
        finally:
            self._draining = False

    def command(self, packet: Packet) -> None:
        """One command; the answer's packets follow the command's sequence id."""
        payload = packet.payload
        seq = packet.last_seq + 1
        code = payload[0] if payload else -1
        if code == COMMAND.COM_QUIT:
            self.phase = CLOSED
            self.transport.loseConnection()
            return
        if code in (COMMAND.COM_PING, COMMAND.COM_INIT_DB, c.COM_RESET_CONNECTION):
            self.transport.write(frame(self.ok(), seq))
            return
        if code != COMMAND.COM_QUERY:
            name = command_name(code) if code >= 0 else "an empty packet"
            self.transport.write(frame(make_err(*c.ER_UNKNOWN_COM_ERROR, f"the admin console does not take "
                                                f"{name}: only COM_QUERY, COM_PING, COM_INIT_DB and "
                                                f"COM_QUIT"), seq))
            return
        statement = payload[1:].decode("utf-8", "replace")
        name = ""
        try:
            parsed = parse(statement)
            name = parsed.name
            if not name.startswith(("select", "ok", "set autocommit", "show variables", "show warnings")):
                self.log.info("admin_command", command=name, args=list(parsed.args))
            result = self.console.run(parsed, self)
        except Exception:  # noqa: BLE001 - answer() turns it into the ERR
            self.answer(Failure(), seq, name)
            return
        if isinstance(result, defer.Deferred):
            self._answering = True
            self.transport.pauseProducing()
            result.addBoth(self._answered, seq, name)
            return
        self.answer(result, seq, name)

    def _answered(self, outcome: Answer | Failure, seq: int, name: str) -> None:
        self._answering = False
        if self.phase != COMMANDS_PHASE:
            return  # the client is gone
        self.answer(outcome, seq, name)
        self.transport.resumeProducing()
        self._next_commands()

    def answer(self, outcome: Answer | Failure, seq: int, name: str) -> None:
        """Writes what a statement came to: a result set, an OK or, for an
        exception, the one ERR it becomes (never a traceback to the client)."""
        then = None
        if isinstance(outcome, Failure):
            error = outcome.value
            if isinstance(error, AdminSyntaxError):
                code, sqlstate, message = *ER_PARSE_ERROR, str(error)
            elif isinstance(error, AdminError):
                self.log.warning("admin_command_failed", error=error.message)
                code, sqlstate, message = error.code, error.sqlstate, error.message
            else:  # pyproxy's bug
                self.log.error("admin_internal_error", error=repr(error), failure=outcome.getTraceback())
                code, sqlstate = ER_UNKNOWN_ERROR
                message = f"pyproxy internal error: {error!r}"
            self.warnings = (("Error", code, message),)
            payloads = [make_err(code, sqlstate, message)]
        else:
            if name != "show warnings":
                self.warnings = tuple(outcome.warnings)
            warnings = min(len(self.warnings), 0xFFFF)
            if isinstance(outcome, Table):
                payloads = make_result_set(outcome.columns, outcome.rows, self.status(),
                                           bool(self.capabilities & CLIENT.DEPRECATE_EOF), warnings)
            else:
                payloads = [make_ok(self.status(), warnings=warnings, info=outcome.info.encode())]
                then = outcome.then
        self.transport.write(b"".join(frame(payload, (seq + index) & 0xFF)
                                      for index, payload in enumerate(payloads)))
        if then is not None:
            self.console.reactor.callLater(0, then)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.phase = CLOSED
        self._queued.clear()
        if self._login is not None:
            self._login.stop()
        self.console.connections.pop(self.id, None)


class AdminFactory(protocol.Factory):
    noisy = False

    def __init__(self, console: Console) -> None:
        self.console = console

    def buildProtocol(self, addr: Any) -> AdminProtocol:
        return AdminProtocol(self.console)


def client_state(client: Any) -> str:
    """What a client connection is doing: login, waiting (for a backend
    connection), active (a command runs), holding (between commands with a
    backend connection: a transaction, a pin, a follow-up), idle."""
    from pyproxy.phases import COMMANDS as IN_COMMANDS  # noqa: PLC0415 - the same constant, named apart

    if client.phase in (HANDSHAKE, AUTH_SWITCH):
        return "login"
    if client.phase != IN_COMMANDS:
        return "closing"
    commands = client.commands
    if commands._borrowing is not None:
        return "waiting"
    if commands.busy:
        return "active"
    if commands.backend is not None:
        return "holding"
    return "idle"


def config_items(config: Any, defaults: Any, prefix: str = "") -> Iterable[tuple[str, object, str]]:
    """Every key of the configuration as (dotted key, value, default's text);
    arrays of tables one entry at a time (``users[0].name``)."""
    for field in attrs.fields(type(config)):
        value = getattr(config, field.name)
        default = getattr(defaults, field.name, None) if defaults is not None else None
        key = f"{prefix}{field.name}"
        if attrs.has(type(value)):
            yield from config_items(value, default, key + ".")
        elif isinstance(value, tuple) and value and attrs.has(type(value[0])):
            for index, item in enumerate(value):
                yield from config_items(item, None, f"{key}[{index}].")
        else:
            yield key, value, "" if defaults is None else _text(default)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def _shown(key: str, value: object, hidden: frozenset[str]) -> str:
    """A value as SHOW CONFIG shows it: a secret (a string whose key's name says
    so, or any value equal to a configured password) masked when set."""
    text = _text(value)
    if text and (isinstance(value, str) and names_a_secret(key.rsplit(".", 1)[-1]) or text in hidden):
        return MASK
    return text


def _greeting(server: ServerInfo) -> ServerInfo:
    """The console greets with the server's version (drivers judge features by
    it) and character set, autocommit on."""
    return attrs.evolve(server, status=SERVER_STATUS_AUTOCOMMIT)


def _peer(transport: Any) -> str:
    try:
        return format_address(transport.getPeer())
    except Exception:  # noqa: BLE001 - a transport without an address
        return ""


def _host(transport: Any) -> str:
    peer = transport.getPeer() if transport is not None else None
    return getattr(peer, "host", "localhost")


def _seconds(value: float) -> float:
    return round(max(0.0, value), 3)
