"""What every client connection shares: configuration, pools, and what the server is."""

from __future__ import annotations

import collections
import itertools
from typing import Any

import attrs

from twisted.internet import defer
from twisted.internet.task import LoopingCall

from pyproxy.backend import BackendError, Target, connect
from pyproxy.config import Config, TargetConfig
from pyproxy.credential_sources import BackendLogin, Credentials
from pyproxy.credentials import Authentication
from pyproxy.idle import SessionTimeouts, defaults_changed as idle_defaults_changed, parse_timeout
from pyproxy.logs import format_address, get_logger, reason_kind
from pyproxy.pool import Pool
from pyproxy.query_stats import QueryStats
from pyproxy.routines import QUERIES as ROUTINE_QUERIES, RoutineCatalog
from pyproxy.statement_log import StatementLog
from pyproxy.throttle import LoginThrottle
from pyproxy.tls import BackendTLSCache, RsaKeys, ServerTLS, TLSConfigError
from pyproxy.topology import DOWN, Topology, TargetHealth
from pyproxy.wire import constants as c
from pyproxy.wire.constants import (
    CLIENT,
    MARIADB_CLIENT_EXTENDED_METADATA,
    MARIADB_CLIENT_STMT_BULK_OPERATIONS,
    SERVER_STATUS_AUTOCOMMIT,
)

# What pyproxy offers clients (and CLIENT_SSL when [tls] holds a certificate).
# No compression; no query attributes, so COM_QUERY payloads stay plain SQL.
# Of MariaDB's extended capabilities (bits 32-63), bulk execution and
# extended column metadata; not MARIADB_CLIENT_PROGRESS (progress reports
# would look like an ERR ending a reply), nor MARIADB_CLIENT_CACHE_METADATA
# (a client's statement runs on backend statements whose last-sent metadata
# pyproxy does not follow; see README "How it pools").
FRONTEND_CAPABILITIES = (
    CLIENT.LONG_PASSWORD | CLIENT.FOUND_ROWS | CLIENT.LONG_FLAG | CLIENT.CONNECT_WITH_DB
    | CLIENT.ODBC | CLIENT.LOCAL_FILES | CLIENT.IGNORE_SPACE | CLIENT.PROTOCOL_41
    | CLIENT.INTERACTIVE | CLIENT.TRANSACTIONS | CLIENT.SECURE_CONNECTION
    | CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS
    | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_ATTRS | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT.SESSION_TRACK | CLIENT.DEPRECATE_EOF
    | MARIADB_CLIENT_STMT_BULK_OPERATIONS | MARIADB_CLIENT_EXTENDED_METADATA
)


@attrs.frozen
class ServerInfo:
    """What the database server announced; pyproxy presents the same to clients."""

    version: str
    # Bits 32-63: MariaDB's extended capabilities, from the greeting's filler.
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
    # This process's place among [proxy] workers: (index, count); (0, 1) alone.
    worker: tuple[int, int] = (0, 1)
    # Ids are unique across workers: worker i of n gives i+1, i+1+n, i+1+2n, ...
    client_ids: Any = attrs.field(init=False)
    # With workers: the budget shared with the others (pyproxy.budget.WorkerBudget).
    budget: Any = None
    # With workers: KILL of another worker's client, through the supervisor
    # (id, user, query) -> Deferred[error or None] (pyproxy.workers).
    remote_kill: Any = None
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
    # Writes refused by a writer turned read-only that waited for the new
    # writer to run again (pyproxy.write_retry).
    writes_retried: int = 0
    # The server's max_allowed_packet and max_prepared_stmt_count, read from
    # the first connection pyproxy opens: the bounds on what one client may
    # make pyproxy keep (long data per parameter, prepared statements).
    max_allowed_packet: int = 16 << 20
    max_prepared_statements: int = 16382
    limits_read: bool = False
    # The idle timeouts a new server session gets (pyproxy.idle), read with the
    # limits and followed across SET GLOBAL.
    timeouts: SessionTimeouts = attrs.field(factory=SessionTimeouts)
    timeouts_known: bool = False
    # The columns of information_schema.PROCESSLIST, in order, once read
    # (pyproxy.thread_ids maps its thread ids to clients').
    processlist_columns: tuple[str, ...] = ()
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
    # The per-query counters (commands, bytes, latency), read by /metrics and
    # the admin console.
    stats: QueryStats = attrs.field(factory=QueryStats)
    # The StatementLog while debug_statements_for is on, else None: the one
    # check the per-query path makes for it.
    debug_statements: StatementLog | None = None
    statement_log: StatementLog = attrs.field(init=False, repr=False)
    # Logins refused, by reason (pyproxy.login and pyproxy.credential_sources'
    # fixed reasons: a bounded set).
    auth_failures: collections.Counter[str] = attrs.field(factory=collections.Counter)
    ignored_variables: frozenset[str] = attrs.field(init=False)
    topology: Topology = attrs.field(init=False)
    # Where clients' proofs are checked (pyproxy.login asks nothing else), and
    # the sources behind it (pyproxy.credentials).
    credentials: Credentials = attrs.field(init=False, repr=False)
    authentication: Authentication = attrs.field(init=False, repr=False)
    # Wrong passwords slowed down per source address.
    throttle: LoginThrottle = attrs.field(init=False, repr=False)
    # How pyproxy logs in to the server as each user whose secret the
    # configuration does not hold in clear: what a client's login gave
    # (SHA1(password), a secret's passwords, an IAM login).  Only ever used
    # for that user's own connections (Proxy.target).
    backend_logins: dict[str, BackendLogin] = attrs.field(factory=dict, repr=False)
    _catalog_refresh: LoopingCall | None = attrs.field(default=None, init=False)
    # The certificate shown to clients after an SSLRequest; None: no TLS offered.
    tls: ServerTLS | None = attrs.field(default=None, init=False, repr=False)
    # How connections to each server start TLS ([backend] tls).
    backend_tls: BackendTLSCache = attrs.field(init=False, repr=False)
    # caching_sha2_password's RSA key pair, made when a client first asks for it.
    _rsa: RsaKeys | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        index, count = self.worker
        self.client_ids = itertools.count(index + 1, count)
        self.ignored_variables = frozenset(self.config.session.ignore_variables)
        self.authentication = Authentication(self.config, self.reactor, lambda: self.topology.writer.config)
        self.credentials = self.authentication.credentials
        self.throttle = LoginThrottle(self.reactor)
        self._throttle_settings()
        self.statement_log = StatementLog(self, self.reactor)
        tls = self.config.tls
        self.tls = ServerTLS.load(tls.cert, tls.key) if tls.cert else None
        backend = self.config.backend
        self.backend_tls = BackendTLSCache(backend.tls, backend.ca, backend.server_name)
        health = self.config.health
        self.topology = Topology(self.config.backend.servers(), self.reactor, self._monitor_login,
                                 interval=health.interval, failure_threshold=health.failure_threshold,
                                 backoff_max=health.backoff_max)
        self.topology.listeners.append(self._topology_changed)

    def client_connected(self, log: Any, peer: Any, secure: bool = False) -> None:
        """A client logged in (over TLS if ``secure``): logged at debug level (the
        connection was counted when accepted)."""
        self.logins += 1
        if secure:
            self.stats.logins_tls += 1
        else:
            self.stats.logins_plain += 1
        log.debug("client_connected", peer=format_address(peer), tls=secure)

    def client_closed(self, log: Any, reason: str) -> None:
        """A client connection ended: logged at debug level and counted by the
        fixed part of its reason (see pyproxy.logs.reason_kind)."""
        log.debug("client_closed", reason=reason)
        self.connections_closed[reason_kind(reason)] += 1

    def client_stats(self) -> dict[str, Any]:
        return {"accepted": self.connections_accepted, "logins": self.logins, "tls_logins": self.stats.logins_tls,
                "open": len(self.clients), "closed": dict(self.connections_closed)}

    @property
    def capabilities(self) -> int:
        """What pyproxy's greeting offers: what it supports of what the server does
        (and TLS when [tls] holds a certificate).  Like a MariaDB server, it clears
        CLIENT_MYSQL when it offers extended capabilities, which tells a MariaDB
        client to send its own."""
        offered = FRONTEND_CAPABILITIES & (self.server.capabilities | CLIENT.LONG_PASSWORD)
        if offered >> 32:
            offered &= ~CLIENT.LONG_PASSWORD
        return offered | CLIENT.SSL if self.tls is not None else offered

    def rsa_keys(self) -> RsaKeys:
        """The RSA key pair of caching_sha2_password's full authentication without
        TLS, made the first time a client asks for the public key."""
        if self._rsa is None:
            self._rsa = RsaKeys()
        return self._rsa

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

    def _throttle_settings(self) -> None:
        auth = self.config.auth
        throttle = self.throttle
        throttle.failure_delay, throttle.max_failures = auth.failure_delay, auth.max_failures
        throttle.window = auth.failure_window
        throttle.delay_max = min(auth.failure_delay_max, self.config.proxy.handshake_timeout / 2)

    def login_for(self, user: str) -> BackendLogin | None:
        """How to log in to the server as ``user``: the ``[[users]]`` password, else
        what a client's login gave (remembered by :meth:`remember_login`), else
        None (no client of that user has logged in yet)."""
        account = self.config.user(user)
        if account is not None and not account.password_hash:
            if self.config.backend.iam:
                return BackendLogin(user, iam=True)
            return BackendLogin(user, (account.password,))
        return self.backend_logins.get(user)

    def remember_login(self, login: BackendLogin | None) -> None:
        """A client logged in: what its proof gave logs in that user's connections
        from now on (the latest wins: a changed password comes with new logins)."""
        if login is None or login == self.backend_logins.get(login.user):
            return
        account = self.config.user(login.user)
        if account is not None and not account.password_hash:
            return  # the configured password logs it in (login_for); no second copy
        self.backend_logins[login.user] = login

    def can_log_in(self, user: str) -> bool:
        return self.login_for(user) is not None

    def target(self, user: str, server: TargetConfig | None = None, *, attempt: int = 0,
               token: str = "") -> Target:
        """How ``user``'s connections log in to ``server`` (the writer by default):
        ``attempt`` picks one of a rotation's passwords, ``token`` is the RDS token
        of an IAM login."""
        login = self.login_for(user)
        backend = self.config.backend
        server = server or self.topology.writer.config
        password = login.passwords[0] if login is not None and login.passwords else ""
        return Target(server.host, server.port, user, password,
                      backend.database, backend.charset, backend.connect_timeout,
                      statement_cache=self.statement_cache(), init_query=backend.init_query,
                      login=login, attempt=attempt, token=token,
                      tls=self.backend_tls.for_host(server.host))

    def _monitor_login(self, server: TargetConfig) -> Target | defer.Deferred[Target]:
        """How probes log in: as :func:`probe_account` says, with no schema (one that
        is missing must not make a server look down).  With ``[backend] iam``, an
        account with no password of its own logs in with its RDS token, as pooled
        connections do; a token that cannot be made fails the probe as an
        unreachable server would (see :meth:`_rds_token`)."""
        name, password = probe_account(self.config)
        target = Target(server.host, server.port, name, password, None, self.config.backend.charset,
                        self.config.health.connect_timeout, statement_cache=0,
                        tls=self.backend_tls.for_host(server.host))
        if password or not self.config.backend.iam:
            return target
        return self._rds_token(server, name).addCallback(
            lambda token: attrs.evolve(target, login=BackendLogin(name, iam=True), token=token))

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
                        self.reactor, max_size=self.pool_size((user, server.name)),
                        borrow_timeout=self.config.pool.borrow_timeout, target=server)
            pool.paused = self.paused
            if self.config.pool.max_connections_percent and self.server_max_connections is None:
                pool.first_use = self._learn_max_connections
            if self.budget is not None:
                self.budget.attach(pool)
            self.pools[(user, server.name)] = pool
        return pool

    def route(self, user: str, readonly: bool, current: Pool | None) -> Pool:
        """The pool a client's next transaction borrows from: the writer's, or
        for the read-only listener a reader's (the same one while it serves)."""
        if not readonly:
            return self.pool(user, self.topology.writer)
        return self.pool(user, self.topology.reader(current.target if current is not None else None))

    def connect_as(self, user: str, server: TargetConfig, flavor: int,
                   adjust: Any = None) -> defer.Deferred[Any]:
        """Opens one connection logged in as ``user``, in whichever way
        :meth:`login_for` says: with an RDS token made first for an IAM login,
        and, when the server refuses one of a rotation's passwords, with the
        next one.  When the server refuses every one, the sources are told
        (Secrets Manager is read again) before the failure is passed on.

        Fails with BackendError 1045 when no way to log in as ``user`` is known
        (no client of that user has logged in since pyproxy started)."""
        login = self.login_for(user)
        if login is None:
            code, state = c.ER_ACCESS_DENIED_ERROR
            return defer.fail(BackendError(code, state, f"pyproxy has no credential for '{user}' yet: "
                                                        "a client of that user must log in first"))

        def target(attempt: int, token: str = "") -> Target:
            made = self.target(user, server, attempt=attempt, token=token)
            return adjust(made) if adjust is not None else made

        if login.iam:
            return self._rds_token(server, user).addCallback(
                lambda token: connect(self.reactor, target(0, token), flavor))

        def attempt(number: int) -> defer.Deferred[Any]:
            d = connect(self.reactor, target(number), flavor)

            def refused(failure: Any) -> Any:
                if not (failure.check(BackendError) and failure.value.code == c.ER_ACCESS_DENIED_ERROR[0]):
                    return failure
                if number + 1 < login.attempts:
                    return attempt(number + 1)
                return self.authentication.backend_refused(user).addBoth(lambda _: failure)

            def worked(conn: Any) -> Any:
                if number and login.passwords:
                    # The server has the other password of a rotation: it goes first now.
                    passwords = login.passwords
                    self.remember_login(attrs.evolve(login, passwords=(
                        passwords[number], *(p for i, p in enumerate(passwords) if i != number))))
                return conn

            return d.addCallbacks(worked, refused)

        return attempt(0)

    def _rds_token(self, server: TargetConfig, user: str) -> defer.Deferred[str]:
        """``[backend] iam``: ``user``'s RDS token for ``server``.  When boto3 cannot
        sign (no credentials, the metadata service down) it fails with 2003, as an
        unreachable server does: a pool retries the open, a probe counts a failed
        probe.  Logged with the kind of error only: never a token, nor a message
        that could quote a key."""

        def no_token(failure: Any) -> Any:
            kind = type(failure.value).__name__
            get_logger(component="iam").warning("rds_token_failed", target=server.name, user=user, error=kind)
            code, state = c.CR_CONN_HOST_ERROR
            raise BackendError(code, state, f"Can't connect to MySQL server on '{server.host}:{server.port}' "
                                            f"(no RDS IAM token: {kind})")

        return self.authentication.rds_token(server.host, server.port, user).addErrback(no_token)

    def _open(self, user: str, server: TargetHealth, flavor: int) -> Any:
        d = self.connect_as(user, server.config, flavor)

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
        if rows and len(rows[0]) == 5 and all(value is not None and value.isdigit() for value in rows[0][:2]):
            self.max_allowed_packet, self.max_prepared_statements = (int(value) for value in rows[0][:2])  # type: ignore[arg-type]
            self.limits_read = True
            wait, interactive = parse_timeout(rows[0][2]), parse_timeout(rows[0][3])
            if wait is not None and interactive is not None:
                self.timeouts_learned(SessionTimeouts(wait, interactive), first=True)
            columns = rows[0][4]
            if columns:
                self.processlist_columns = tuple(name.strip().upper() for name in columns.split(","))

    def timeouts_learned(self, timeouts: SessionTimeouts, first: bool = False) -> None:
        """New server sessions start with these idle timeouts (pyproxy.idle);
        ``first``: read from the server for the first time."""
        first = first and not self.timeouts_known
        self.timeouts_known = True
        if timeouts != self.timeouts or first:
            self.timeouts = timeouts
            idle_defaults_changed(self, first)

    def _pools_of(self, server: TargetHealth) -> list[Pool]:
        return [pool for pool in self.pools.values() if pool.target is server]

    def _learn_max_connections(self, conn: Any) -> Any:
        """Reads the server's max_connections once, for max_connections_percent."""

        def learned(value: str | None) -> None:
            if value is not None and value.isdigit():
                self.server_max_connections = int(value)
                for pool in self.pools.values():
                    pool.max_size = self.pool_size((pool.user, pool.target.name))
                    pool.first_use = None

        return conn.query_value("SELECT @@max_connections").addCallback(learned)

    def pool_budget(self) -> int:
        """Each pool's budget: [pool] max_connections, or its share of the server's
        max_connections under max_connections_percent once that was read."""
        if self.config.pool.max_connections_percent and self.server_max_connections is not None:
            total = self.server_max_connections * self.config.pool.max_connections_percent // 100
            return max(1, total // max(1, len(self.config.users)))
        return self.config.pool.max_connections

    def pool_size(self, key: tuple[str, str]) -> int:
        """A pool's max_size: this worker's share of the budget, as moved between
        workers so far."""
        even = self.worker_share(self.pool_budget())
        return even if self.budget is None else self.budget.share(key, even)

    def worker_share(self, budget: int) -> int:
        """This worker's part of a per-pool budget: the workers' parts add up to it,
        so the server never sees more than ``budget`` connections of one pool from
        all of them (each keeps at least one)."""
        index, count = self.worker
        return max(1, budget // count + (1 if index < budget % count else 0))

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
                                     "admin", "tls", "users")
                   if getattr(old, name) != getattr(config, name)]
        self.ignored_variables = frozenset(config.session.ignore_variables)
        if config.log.debug_statements_for != old.log.debug_statements_for:
            self.statement_log.turn_on_for(config.log.debug_statements_for)
        self.authentication.reconfigure(config)
        self._throttle_settings()
        for user in [user for user in self.backend_logins if old.user(user) != config.user(user)]:
            # A [[users]] entry changed: what its clients proved before is stale.
            del self.backend_logins[user]
        self.reload_tls(config)
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
        if self.budget is not None:
            self.budget.reset()  # every worker reloads: all back to the even split
        for key, pool in list(self.pools.items()):
            if pool.target in removed:
                del self.pools[key]
                pool.hand_over(self.route(pool.user, pool.target is not self.topology.writer, None))
                pool.close()
                continue
            pool.max_size = self.pool_size(key)
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
        if self.config.log.debug_statements_for:
            self.statement_log.turn_on_for(self.config.log.debug_statements_for)
        self.authentication.start()
        refresh = self.config.session.routine_refresh
        if refresh:
            self._catalog_refresh = LoopingCall(self._refresh_catalogs)
            self._catalog_refresh.clock = self.reactor
            self._catalog_refresh.start(refresh, now=False)

    def load_catalog(self, user: str) -> defer.Deferred[RoutineCatalog]:
        """Reads ``user``'s catalog over a connection of pyproxy's own, as that
        user (what a body says is only visible to accounts allowed to see it),
        with no schema (the pool's may have just been dropped).  Not a pooled
        connection: the read would clear a held connection's diagnostics area
        and leave temporary tables in the session status the next client sees.
        It is one of the short side connections the budget does not count (see
        README "On several hosts").  One read at a time per user; callers during
        a read share it.  A failed read leaves a catalog in which every CALL is
        of unknown code."""
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

        d = self.connect_as(user, self.topology.writer.config, 0,
                            lambda target: attrs.evolve(target, database=None))
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
            if catalog.loading is None and not catalog.stale and self.can_log_in(user):
                self.load_catalog(user)

    def close(self) -> None:
        self.statement_log.turn_off("shutdown")
        if self._catalog_refresh is not None and self._catalog_refresh.running:
            self._catalog_refresh.stop()
        self.topology.stop()
        self.authentication.stop()
        for pool in self.pools.values():
            pool.close()


def probe_account(config: Config) -> tuple[str, str]:
    """The name and password probes log in with: [health] user, else the first
    [[users]] entry with a password (a hash-only one has none to log in with
    before a client comes), else the [auth] lookup account.

    With ``[backend] iam`` a [[users]] entry's password is only what its
    clients prove to pyproxy, not the server's: it comes back as "", and the
    probe logs in with an RDS token instead (Proxy._monitor_login), as that
    user's pooled connections do; so does a [health] user or lookup account
    configured without a password."""
    health = config.health
    if health.user:
        return health.user, health.password
    for account in config.users:
        if not account.password_hash:
            return account.name, "" if config.backend.iam else account.password
    if config.auth.lookup:
        return config.auth.lookup_user, config.auth.lookup_password
    return "", ""


# The session's wait_timeout (after init_query), as a client's session starts with.
# The columns of information_schema.PROCESSLIST (pyproxy.thread_ids).
_LIMITS = ("SELECT @@max_allowed_packet, @@max_prepared_stmt_count, @@session.wait_timeout, "
           "@@global.interactive_timeout, (SELECT GROUP_CONCAT(COLUMN_NAME ORDER BY ORDINAL_POSITION) "
           "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'information_schema' "
           "AND TABLE_NAME = 'PROCESSLIST')")


def _logins(config: Config) -> Any:
    """What backend logins depend on, apart from which servers there are."""
    return attrs.evolve(config.backend, host="", port=1, targets=())
