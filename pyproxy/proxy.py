"""What every client connection shares: configuration, pools, and what the server is."""

from __future__ import annotations

import collections
import itertools
from typing import Any

import attrs

from twisted.internet import defer
from twisted.internet.task import LoopingCall

from pyproxy.backend import Target, connect
from pyproxy.config import Config, TargetConfig
from pyproxy.credentials import ConfiguredUsers, Credentials
from pyproxy.logs import format_address, get_logger, reason_kind
from pyproxy.pool import Pool
from pyproxy.routines import QUERIES as ROUTINE_QUERIES, RoutineCatalog
from pyproxy.tls import BackendTLSCache, RsaKeys, ServerTLS, TLSConfigError
from pyproxy.topology import DOWN, Topology, TargetHealth
from pyproxy.wire.constants import CLIENT, SERVER_STATUS_AUTOCOMMIT

# What pyproxy offers clients (and CLIENT_SSL when [tls] holds a certificate).
# No compression; no query attributes, so COM_QUERY payloads stay plain SQL.
FRONTEND_CAPABILITIES = (
    CLIENT.LONG_PASSWORD | CLIENT.FOUND_ROWS | CLIENT.LONG_FLAG | CLIENT.CONNECT_WITH_DB
    | CLIENT.ODBC | CLIENT.LOCAL_FILES | CLIENT.IGNORE_SPACE | CLIENT.PROTOCOL_41
    | CLIENT.INTERACTIVE | CLIENT.TRANSACTIONS | CLIENT.SECURE_CONNECTION
    | CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS
    | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_ATTRS | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT.SESSION_TRACK | CLIENT.DEPRECATE_EOF
)


@attrs.frozen
class ServerInfo:
    """What the database server announced; pyproxy presents the same to clients."""

    version: str
    capabilities: int
    charset: int
    status: int

    @property
    def autocommit(self) -> bool:
        return bool(self.status & SERVER_STATUS_AUTOCOMMIT)


@attrs.define(eq=False)
class Proxy:
    """The running proxy's shared state, wired together in pyproxy.tap."""

    config: Config
    reactor: Any
    server: ServerInfo
    # By (user, target name).
    pools: dict[tuple[str, str], Pool] = attrs.field(factory=dict)
    client_ids: Any = attrs.field(factory=lambda: itertools.count(1))
    # Connected clients by the connection id they were greeted with.
    clients: dict[int, Any] = attrs.field(factory=dict)
    # Schemas each user is known to be able to use, so a client naming one at
    # login needs no round trip.
    known_schemas: dict[str, set[str]] = attrs.field(factory=dict)
    # The stored code each user's statements can run unseen, by user.
    catalogs: dict[str, RoutineCatalog] = attrs.field(factory=dict)
    # Backend connections reset (COM_RESET_CONNECTION) before another client
    # got them: the price of pinned sessions and unprovable statements.
    resets: int = 0
    # The server's max_allowed_packet and max_prepared_stmt_count, read from
    # the first connection pyproxy opens: the bounds on what one client may
    # make pyproxy keep (long data per parameter, prepared statements).
    max_allowed_packet: int = 16 << 20
    max_prepared_statements: int = 16382
    limits_read: bool = False
    # The server's max_connections, once read (max_connections_percent).
    server_max_connections: int | None = None
    # How many statements pyproxy's connections may keep prepared on the server:
    # max_prepared_stmt_count less what other sessions hold, once read (when
    # the limit was reached).
    statement_room: int | None = None
    # PAUSE in effect (SIGUSR2 toggles it).
    paused: bool = False
    # Shutting down: clients are closed as soon as they hold no transaction.
    draining: bool = False
    # Pinned sessions so far, by reason.
    pins: collections.Counter[str] = attrs.field(factory=collections.Counter)
    # Client connections accepted so far, and closed by reason (SIGUSR1's
    # client_stats): at Lambda rates each one is logged only at debug level.
    connections_accepted: int = 0
    connections_closed: collections.Counter[str] = attrs.field(factory=collections.Counter)
    # Clients that logged in (a COM_CHANGE_USER counts again).
    logins: int = 0
    # Of them, over TLS.
    tls_logins: int = 0
    ignored_variables: frozenset[str] = attrs.field(init=False)
    topology: Topology = attrs.field(init=False)
    # Where clients' proofs are checked (pyproxy.login asks nothing else).
    credentials: Credentials = attrs.field(init=False, repr=False)
    _catalog_refresh: LoopingCall | None = attrs.field(default=None, init=False)
    # The certificate shown to clients after an SSLRequest; None: no TLS offered.
    tls: ServerTLS | None = attrs.field(default=None, init=False, repr=False)
    # How connections to each server start TLS ([backend] tls).
    backend_tls: BackendTLSCache = attrs.field(init=False, repr=False)
    # caching_sha2_password's RSA key pair, made when a client first asks for it.
    _rsa: RsaKeys | None = attrs.field(default=None, init=False, repr=False)
    # Passwords clients proved in clear (full authentication) for users
    # configured with only a password_hash: pyproxy's own logins need them.
    _proved_passwords: dict[str, str] = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        """Raises TLSConfigError: a [tls] or [backend] tls file cannot be used."""
        self.ignored_variables = frozenset(self.config.session.ignore_variables)
        tls = self.config.tls
        self.tls = ServerTLS.load(tls.cert, tls.key) if tls.cert else None
        backend = self.config.backend
        self.backend_tls = BackendTLSCache(backend.tls, backend.ca, backend.server_name)
        self.credentials = ConfiguredUsers(self)
        health = self.config.health
        self.topology = Topology(self.config.backend.servers(), self.reactor, self._monitor_login,
                                 interval=health.interval, failure_threshold=health.failure_threshold,
                                 backoff_max=health.backoff_max)
        self.topology.listeners.append(self._topology_changed)

    def client_connected(self, log: Any, peer: Any, secure: bool = False) -> None:
        """A client logged in (over TLS when ``secure``): logged at debug level (the
        connection was counted when accepted)."""
        self.logins += 1
        if secure:
            self.tls_logins += 1
        log.debug("client_connected", peer=format_address(peer), tls=secure)

    def client_closed(self, log: Any, reason: str) -> None:
        """A client connection ended: logged at debug level and counted by the
        fixed part of its reason (see pyproxy.logs.reason_kind)."""
        log.debug("client_closed", reason=reason)
        self.connections_closed[reason_kind(reason)] += 1

    def client_stats(self) -> dict[str, Any]:
        return {"accepted": self.connections_accepted, "logins": self.logins, "tls_logins": self.tls_logins,
                "open": len(self.clients), "closed": dict(self.connections_closed)}

    @property
    def capabilities(self) -> int:
        offered = FRONTEND_CAPABILITIES & (self.server.capabilities | CLIENT.LONG_PASSWORD)
        return offered | CLIENT.SSL if self.tls is not None else offered

    def rsa_keys(self) -> RsaKeys:
        """The RSA key pair of caching_sha2_password's full authentication without
        TLS, made the first time a client asks for the public key."""
        if self._rsa is None:
            self._rsa = RsaKeys()
        return self._rsa

    def password_proved(self, user: str, password: str) -> None:
        """A client sent ``user``'s password itself (full authentication) and it
        matched: a user configured with only its hash can now be logged in as."""
        account = self.config.user(user)
        if account is not None and not account.password and self._proved_passwords.get(user) != password:
            self._proved_passwords[user] = password

    def _password(self, user: str) -> str:
        account = self.config.user(user)
        if account is None:
            return ""
        return account.password or self._proved_passwords.get(user, "")

    def reload_tls(self, config: Config) -> bool:
        """SIGHUP: reads the [tls] files again (a renewed certificate).  A pair that
        does not load keeps the running one, in one log line; True when the
        certificate shown to new clients changed."""
        tls = config.tls
        if not tls.cert:
            changed = self.tls is not None
            self.tls = None
            return changed
        try:
            fresh = ServerTLS.load(tls.cert, tls.key)
        except TLSConfigError as exc:
            get_logger(component="tls").error("tls_reload_failed", error=str(exc),
                      kept=self.tls.subject if self.tls is not None else None)
            return False
        self.tls = fresh
        get_logger(component="tls").info("tls_loaded", subject=fresh.subject, not_after=fresh.not_after)
        return True

    def target(self, user: str, server: TargetConfig | None = None) -> Target:
        """How ``user``'s connections log in to ``server`` (the writer by default)."""
        account = self.config.user(user)
        backend = self.config.backend
        server = server or self.topology.writer.config
        return Target(server.host, server.port, user, self._password(user),
                      backend.database, backend.charset, backend.connect_timeout,
                      statement_cache=self.statement_cache(), init_query=backend.init_query,
                      tls=self.backend_tls.for_host(server.host))

    def _monitor_login(self, server: TargetConfig) -> Target:
        """Probes log in with no schema (one that is missing must not make a
        server look down)."""
        name, password = probe_account(self.config)
        return Target(server.host, server.port, name, password or self._password(name), None,
                      self.config.backend.charset, self.config.health.connect_timeout, statement_cache=0,
                      tls=self.backend_tls.for_host(server.host))

    def statement_cache(self) -> int:
        """Statements cached per backend connection: as configured, or what keeps
        every pool's connections together under the server's
        max_prepared_stmt_count (its default, 16382, until the limit was reached
        and read: then the room other sessions leave), at most 256."""
        if self.config.pool.statement_cache:
            return self.config.pool.statement_cache
        connections = self.config.pool.max_connections * max(1, len(self.config.users))
        if self.statement_room is None:
            return max(8, min(256, 16382 // connections))
        return max(1, min(256, self.statement_room // connections))

    def statement_limit_learned(self, limit: int, in_use: int | None = None) -> None:
        """The server's max_prepared_stmt_count, and the statements prepared on it
        (``in_use``, when known), read when the limit was reached.  With an
        automatic statement_cache every connection, open or to come, caches at
        most its share of the room the other sessions leave, and caches over
        that are cut down now (a statement a client needs again is prepared
        again)."""
        connections = [conn for pool in self.pools.values()
                       for conn in (*pool.idle, *pool.lent, *pool.checking)]
        self.max_prepared_statements = limit
        others = 0
        if in_use is not None:
            others = max(0, in_use - sum(len(conn.statements) for conn in connections))
        self.statement_room = max(0, limit - others)
        if self.config.pool.statement_cache:
            return
        capacity = self.statement_cache()
        for conn in connections:
            conn.statements.capacity = capacity
            conn.close_statements(conn.statements.shrink(capacity))

    def pool(self, user: str, server: TargetHealth | None = None) -> Pool:
        """``user``'s connections to ``server`` (the writer by default)."""
        server = server or self.topology.writer
        pool = self.pools.get((user, server.name))
        if pool is None:
            # The login is looked up at each open: a reload may change it.
            pool = Pool(user, lambda flavor: self._open(user, server, flavor),
                        self.reactor, max_size=self.config.pool.max_connections,
                        borrow_timeout=self.config.pool.borrow_timeout, target=server)
            pool.paused = self.paused
            if self.config.pool.max_connections_percent:
                if self.server_max_connections is None:
                    pool.first_use = self._learn_max_connections
                else:
                    pool.max_size = self._share()
            self.pools[(user, server.name)] = pool
        return pool

    def route(self, user: str, readonly: bool, current: Pool | None) -> Pool:
        """The pool a client's next transaction borrows from: the writer's, or
        for the read-only listener a reader's (the same one while it serves)."""
        if not readonly:
            return self.pool(user, self.topology.writer)
        return self.pool(user, self.topology.reader(current.target if current is not None else None))

    def _open(self, user: str, server: TargetHealth, flavor: int) -> Any:
        d = connect(self.reactor, self.target(user, server.config), flavor)

        def opened(conn: Any) -> Any:
            if server.state == DOWN:
                self.topology.suspect(server)  # back: let the probe say so now
            if not self.limits_read:
                return conn.query_rows(_LIMITS).addCallbacks(
                    lambda rows: self._limits_learned(rows), lambda _: None).addCallback(lambda _: conn)
            return conn

        def failed(failure: Any) -> Any:
            # The pool retries; the probe says whether the server is gone.
            self.topology.suspect(server)
            return failure

        return d.addCallbacks(opened, failed)

    def _topology_changed(self, event: str, server: TargetHealth, previous: TargetHealth | None) -> None:
        """A server went down: its idle connections are closed and its waiting
        readers sent elsewhere.  A reader came up: read-only sessions waiting
        on the writer move to it.  The writer moved: writer traffic waiting for
        the old one moves to the new one."""
        if event == "state" and server.state == DOWN:
            for pool in self._pools_of(server):
                pool.renew()
                if server is not self.topology.writer:
                    pool.hand_over(self.route(pool.user, True, None))
        elif event == "state" and server.usable and server is not self.topology.writer:
            # A reader (back) up: read-only sessions left waiting on the writer
            # (there was no reader) need not wait for it any more.
            for pool in self._pools_of(self.topology.writer):
                if any(waiter.readonly for waiter in pool.waiters):
                    pool.hand_over(self.route(pool.user, True, None), readonly_only=True)
        elif event == "writer" and previous is not None:
            for pool in self._pools_of(previous):
                pool.hand_over(self.pool(pool.user, server))

    def _limits_learned(self, rows: list[tuple[str | None, ...]]) -> None:
        if rows and len(rows[0]) == 2 and all(value is not None and value.isdigit() for value in rows[0]):
            self.max_allowed_packet, self.max_prepared_statements = (int(value) for value in rows[0])
            self.limits_read = True

    def _pools_of(self, server: TargetHealth) -> list[Pool]:
        return [pool for pool in self.pools.values() if pool.target is server]

    def _learn_max_connections(self, conn: Any) -> Any:
        """Reads the server's max_connections once, for max_connections_percent."""

        def learned(value: str | None) -> None:
            if value is not None and value.isdigit():
                self.server_max_connections = int(value)
                for pool in self.pools.values():
                    pool.max_size = self._share()
                    pool.first_use = None

        return conn.query_value("SELECT @@max_connections").addCallback(learned)

    def _share(self) -> int:
        """Each pool's size under max_connections_percent."""
        total = (self.server_max_connections or 0) * self.config.pool.max_connections_percent // 100
        return max(1, total // max(1, len(self.config.users)))

    def pause(self) -> None:
        self.paused = True
        for pool in self.pools.values():
            pool.pause()

    def resume(self) -> None:
        self.paused = False
        for pool in self.pools.values():
            pool.resume()

    def reconfigure(self, config: Config) -> list[str]:
        """Applies a reloaded configuration to the running proxy; returns what changed.

        Users, pool limits, timeouts and the backend take effect for the next
        borrow; connections opened for an old backend or an old password are
        closed when idle instead of reused.  The listening address needs a
        restart.
        """
        old, self.config = self.config, config
        changed = [name for name in ("proxy", "backend", "pool", "health", "session", "log", "metrics",
                                     "tls", "users")
                   if getattr(old, name) != getattr(config, name)]
        self.ignored_variables = frozenset(config.session.ignore_variables)
        self.reload_tls(config)
        for user in list(self._proved_passwords):
            if old.user(user) != config.user(user):
                del self._proved_passwords[user]  # another hash: the password must be proved again
        backend = config.backend
        if (backend.tls, backend.ca, backend.server_name) != (old.backend.tls, old.backend.ca,
                                                               old.backend.server_name):
            try:
                self.backend_tls = BackendTLSCache(backend.tls, backend.ca, backend.server_name)
            except TLSConfigError as exc:
                get_logger(component="tls").error("backend_tls_reload_failed", error=str(exc))
        health = config.health
        removed = self.topology.reconfigure(config.backend.servers(), interval=health.interval,
                                            failure_threshold=health.failure_threshold,
                                            backoff_max=health.backoff_max)
        login_changed = _logins(old) != _logins(config)
        for key, pool in list(self.pools.items()):
            if pool.target in removed:
                del self.pools[key]
                pool.hand_over(self.route(pool.user, pool.target is not self.topology.writer, None))
                pool.close()
                continue
            pool.max_size = config.pool.max_connections
            pool.borrow_timeout = config.pool.borrow_timeout
            if login_changed or old.user(pool.user) != config.user(pool.user):
                pool.renew()
        return changed

    def schema_known(self, user: str, schema: str) -> bool:
        """Whether ``user`` is known to be able to use a schema: one a backend
        connection of that user has selected, or the configured default (checked
        at every backend login).  Another user's schemas prove nothing."""
        return schema in self.known_schemas.get(user, ()) or schema == self.config.backend.database

    def schema_used(self, user: str, schema: str) -> None:
        self.known_schemas.setdefault(user, set()).add(schema)

    def catalog(self, user: str) -> RoutineCatalog:
        """``user``'s catalog of stored code (pyproxy.routines); stale until read."""
        catalog = self.catalogs.get(user)
        if catalog is None:
            catalog = self.catalogs[user] = RoutineCatalog()
        return catalog

    def start(self) -> None:
        """Starts what runs on its own: the probes, and the periodic read of the
        catalogs of stored code."""
        self.topology.start()
        refresh = self.config.session.routine_refresh
        if refresh:
            self._catalog_refresh = LoopingCall(self._refresh_catalogs)
            self._catalog_refresh.clock = self.reactor
            self._catalog_refresh.start(refresh, now=False)

    def load_catalog(self, user: str) -> defer.Deferred[RoutineCatalog]:
        """Reads ``user``'s catalog over a connection of pyproxy's own, as that
        user (what a body says is only visible to accounts allowed to see it).
        One read at a time per user; callers during a read share it.  A failed
        read leaves a catalog in which every CALL is of unknown code."""
        catalog = self.catalog(user)
        if catalog.loading is not None:
            waiter: defer.Deferred[RoutineCatalog] = defer.Deferred()
            catalog.loading.append(waiter)
            return waiter
        catalog.loading = []
        log = get_logger(user=user, component="routines")

        def read(conn: Any) -> Any:
            reads = defer.gatherResults([conn.query_rows(query) for query in ROUTINE_QUERIES],
                                        consumeErrors=True)
            return reads.addBoth(lambda result: (conn.close("routines read"), result)[1])

        def loaded(results: list[list[tuple[str | None, ...]]]) -> None:
            catalog.load(row for rows in results for row in rows)
            log.debug("routines_read", watched=sorted(catalog.watched), procedures=len(catalog.procedures))

        def failed(failure: Any) -> None:
            if isinstance(failure.value, defer.FirstError):
                failure = failure.value.subFailure
            log.warning("routines_unread", error=failure.getErrorMessage())
            catalog.failed = True
            catalog.stale = False

        def done(_: Any) -> RoutineCatalog:
            waiters, catalog.loading = catalog.loading, None
            for waiter in waiters:
                waiter.callback(catalog)
            return catalog

        d = connect(self.reactor, attrs.evolve(self.target(user), database=None), 0)
        return d.addCallback(read).addCallbacks(loaded, failed).addBoth(done)

    def routines_changed(self) -> None:
        """A statement created, altered or dropped stored code: every user's
        catalog is read again before that user's next statement."""
        for catalog in self.catalogs.values():
            catalog.stale = True

    def _refresh_catalogs(self) -> None:
        """Changes made other than through pyproxy: catalogs are read again in
        the background, the old one serving until the new one is in."""
        for user, catalog in list(self.catalogs.items()):
            if catalog.loading is None and not catalog.stale and self.config.user(user) is not None:
                self.load_catalog(user)

    def close(self) -> None:
        if self._catalog_refresh is not None and self._catalog_refresh.running:
            self._catalog_refresh.stop()
        self.topology.stop()
        for pool in self.pools.values():
            pool.close()


def probe_account(config: Config) -> tuple[str, str]:
    """The name and password probes log in with: [health] user, else the first
    configured user."""
    health = config.health
    if health.user:
        return health.user, health.password
    account = config.users[0] if config.users else None
    return (account.name, account.password) if account else ("", "")


_LIMITS = "SELECT @@max_allowed_packet, @@max_prepared_stmt_count"


def _logins(config: Config) -> Any:
    """What backend logins depend on, apart from which servers there are."""
    return attrs.evolve(config.backend, host="", port=1, targets=())
