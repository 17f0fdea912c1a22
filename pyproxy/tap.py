"""``twistd pyproxy``: options, start-up checks, and the wiring of the running proxy
(the backend's own start-up check is pyproxy.startup_probe).

Start-up problems (a bad config key, a port in use, a backend that does not
answer) end the process with one line on stderr and a non-zero exit, before
twistd daemonizes or prints a traceback.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any

import attrs

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.python import usage
from twisted.python.failure import Failure

import pyproxy
from pyproxy import config as configuration
from pyproxy import logs, reactor_dispatch, reuseport, signal_handlers
from pyproxy.frontend import FrontendFactory
from pyproxy.health import HealthChecker
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.startup_probe import StartupError, probe_backend
from pyproxy.tls import BackendTLSCache, ServerTLS, TLSConfigError, close_client


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Runs pyproxy, a MySQL/MariaDB connection-pooling proxy. Settings come from the "
                "TOML file given with --config, then from PYPROXY_<SECTION>_<KEY> environment "
                "variables (e.g. PYPROXY_POOL_MAX_CONNECTIONS), then from the options below.")
    optParameters = [
        ["config", "c", None, "Path to the TOML configuration file."],
        ["listen", "l", None, "Endpoint to listen on, e.g. tcp:6033:interface=127.0.0.1 "
                              "(overrides [proxy] listen)."],
        ["backend-host", None, None, "Database server host (overrides [backend] host)."],
        ["backend-port", None, None, "Database server port (overrides [backend] port)."],
        ["backend-database", None, None, "Default schema (overrides [backend] database)."],
        ["max-connections", None, None, "Backend connections per user (overrides [pool] "
                                        "max_connections)."],
        ["log-level", None, None, "debug, info, warning or error (overrides [log] level)."],
    ]
    optFlags = [
        ["no-backend-check", None, "Start even if the backend does not answer now."],
    ]

    def opt_version(self) -> None:
        """Display pyproxy's version and exit (``twistd --version`` shows Twisted's)."""
        print(f"pyproxy {pyproxy.__version__}")
        raise SystemExit(0)

    def overrides(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        pairs = {
            "listen": ("proxy", "listen"), "backend-host": ("backend", "host"),
            "backend-port": ("backend", "port"), "backend-database": ("backend", "database"),
            "max-connections": ("pool", "max_connections"), "log-level": ("log", "level"),
        }
        for option, (section, key) in pairs.items():
            value = self[option]
            if value is None:
                continue
            if option in ("backend-port", "max-connections"):
                # Converted here, not by usage.Options, so a bad number is
                # reported like any other bad value: one line naming the key.
                try:
                    value = int(value)
                except ValueError:
                    raise configuration.ConfigError(
                        f"{section}.{key} (--{option}): must be a whole number, got {value!r}") from None
            out.setdefault(section, {})[key] = value
        return out

    def postOptions(self) -> None:
        try:
            self["parsed"] = config = configuration.load(self["config"], os.environ, self.overrides())
            configure_logs(config)
            start_checks(config)
            self._log_twisted_events()
            check_tls(config)
            if not self["no-backend-check"]:
                self["server"] = probe_backend(config)
        except (configuration.ConfigError, StartupError) as exc:
            sys.stderr.write(f"pyproxy: {exc}\n")
            raise SystemExit(2) from None

    def _log_twisted_events(self) -> None:
        """Makes twistd log its own events through pyproxy's renderer (one stream, one
        format) when it runs in the foreground, unless it was told where to log
        (--logger, --logfile, --syslog).  A daemon keeps twistd's own twistd.log:
        its standard output goes nowhere."""
        runner = getattr(self, "parent", None)
        if runner is None or not runner.get("nodaemon") or any(
                runner.get(option) for option in ("logger", "logfile", "syslog")):
            return
        # A name: twistd's own postOptions, which runs after this one, imports it.
        runner["logger"] = f"{logs.__name__}.{logs.twisted_observer.__name__}"


def check_tls(config: configuration.Config) -> None:
    """Loads the [tls] pair and the [backend] CA now, so that a file that cannot
    be used stops start-up with one line naming it."""
    try:
        if config.tls.cert:
            ServerTLS.load(config.tls.cert, config.tls.key)
        BackendTLSCache(config.backend.tls, config.backend.ca, config.backend.server_name)
    except TLSConfigError as exc:
        raise StartupError(str(exc)) from None


def configure_logs(config: configuration.Config) -> None:
    """Logging as [log] says, never showing any password the configuration holds."""
    logs.configure(config.log.level, config.log.format, secrets=configuration.secrets(config))


def start_checks(config: configuration.Config) -> None:
    """What the configuration asks for and this build cannot do safely.

    Raises:
        StartupError: ``[backend] iam`` without TLS to the server: the tokens
            would go in clear text (mysql_clear_password).
    """
    if config.backend.iam and config.backend.tls != "verify":
        raise StartupError(configuration.BACKEND_IAM_NEEDS_TLS)


def listen_description(proxy: configuration.ProxyConfig) -> str:
    """The endpoint string, with the configured backlog unless it names its own."""
    description = proxy.listen
    if description.split(":", 1)[0] in ("tcp", "tcp6", "unix") and "backlog=" not in description:
        description += f":backlog={proxy.backlog}"
    return description


#: Descriptors besides clients and backend connections: listeners, logs,
#: pyproxy's own connections (probes, KILL, lookups), the thread pool's.
FILE_MARGIN = 256


def raise_file_limit(config: configuration.Config, log: Any) -> int:
    """Raises the soft RLIMIT_NOFILE towards what max_client_connections clients
    and the pools can take (up to the hard limit), so that a connection storm
    meets pyproxy's own limits (1040, handshake_timeout) rather than EMFILE;
    logs a warning when the hard limit is lower.  Returns the soft limit."""
    import resource  # noqa: PLC0415 - POSIX only, and only here

    proxy = config.proxy
    users = max(1, len(config.users) + len(config.secrets))
    needed = (proxy.max_client_connections + config.pool.max_connections * users
              * len(config.backend.servers()) + FILE_MARGIN)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("file_limit_low", limit=soft, needed=needed,
                    hint="raise LimitNOFILE / ulimit -n, or lower max_client_connections")
    return soft


class ProxyService(service.Service):
    """Listens for clients and runs the health checker for as long as it runs."""

    def __init__(self, config: configuration.Config, server: ServerInfo, reactor: Any = None,
                 reload: Any = None, worker: tuple[int, int] = (0, 1)) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor  # noqa: PLC0415
            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.proxy = Proxy(config, reactor, server, worker=worker)
        if config.budget.redis:
            from pyproxy.redis_budget import RedisBudget  # noqa: PLC0415 - only when configured

            self.proxy.budget = RedisBudget(self.proxy, config.budget)
        # One of [proxy] workers: the client listeners are shared with SO_REUSEPORT.
        self.shared_ports = worker[1] > 1
        self.health = HealthChecker(self.proxy.pools, reactor, interval=config.health.interval,
                                    max_lifetime=config.pool.max_lifetime,
                                    idle_timeout=config.pool.idle_timeout,
                                    min_idle=config.pool.min_idle)
        self.port: Any = None
        self.read_only_port: Any = None
        self.metrics_port: Any = None
        self.admin_port: Any = None
        self._idle_sweep: Any = None
        # SHUTDOWN from the admin console: drain_timeout applies only to a graceful one.
        self._immediate = False
        # Re-reads the configuration (file, environment, options) for SIGHUP.
        self._reload = reload
        self.log = logs.get_logger(component="service")

    def listen(self) -> None:
        """Binds the listening sockets now, so a taken port stops start-up with one line.

        For TCP and UNIX endpoints the Deferred has fired by the time
        ``listen()`` returns; the port starts accepting once the reactor runs.
        The metrics page is bound first, so that whoever waits for the proxy's
        port finds it there too.
        """
        proxy = self.config.proxy
        try:
            # A worker's figures are served by its supervisor, summed (pyproxy.worker_metrics).
            if self.config.metrics.listen and not self.shared_ports:
                from pyproxy import metrics  # noqa: PLC0415 - only when the page is on

                site = metrics.site(metrics.registry(self.proxy, self.health, self.reactor))
                self.metrics_port = self._bind("metrics.listen", self.config.metrics.listen, site)
            # A worker's console is its supervisor's (pyproxy.worker_admin).
            if self.config.admin.enabled and not self.shared_ports:
                from pyproxy import admin  # noqa: PLC0415 - only when the console is on

                self.admin_port = self._bind("admin.listen", self.config.admin.listen,
                                             admin.AdminFactory(admin.AdminConsole(self)))
            self.port = self._bind("proxy.listen", listen_description(proxy),
                                   self._client_factory(FrontendFactory(self.proxy)))
            if proxy.read_only_listen:
                self.read_only_port = self._bind(
                    "proxy.read_only_listen",
                    listen_description(attrs.evolve(proxy, listen=proxy.read_only_listen)),
                    self._client_factory(FrontendFactory(self.proxy, True)))
        except StartupError:
            for port in self._ports():
                port.stopListening()
            raise

    def _client_factory(self, factory: Any) -> Any:
        """The clients' listener factory, behind a PROXY header reader when configured."""
        proxy = self.config.proxy
        if not proxy.proxy_protocol:
            return factory
        from pyproxy.proxy_protocol import ProxyHeaderFactory  # noqa: PLC0415

        return ProxyHeaderFactory(factory, self.reactor, proxy.handshake_timeout,
                                  proxy.max_client_connections)

    def _ports(self) -> list[Any]:
        return [port for port in (self.port, self.read_only_port, self.metrics_port, self.admin_port)
                if port is not None]

    def _bind(self, key: str, description: str, factory: Any) -> Any:
        """Listens on ``description``; a failure is one line naming the key (and the
        other listener, when that one holds the port)."""
        if self.shared_ports and key in ("proxy.listen", "proxy.read_only_listen"):
            try:
                return reuseport.listen(self.reactor, description, factory, self.config.proxy.backlog)
            except (OSError, configuration.ConfigError) as exc:
                raise StartupError(f"{key}: cannot listen on {description}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
        return bind(self.reactor, key, description, factory,
                    {"metrics.listen": self.metrics_port, "admin.listen": self.admin_port, "proxy.listen": self.port})

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.listen()
        read_only = self.read_only_port
        self.log.info("listening", version=pyproxy.__version__,
                      address=logs.format_address(self.port.getHost()),
                      read_only=logs.format_address(read_only.getHost()) if read_only is not None else None,
                      metrics=(logs.format_address(self.metrics_port.getHost())
                               if self.metrics_port is not None else None),
                      admin=(logs.format_address(self.admin_port.getHost())
                             if self.admin_port is not None else None),
                      targets=[f"{server.name} ({server.role})" for server in self.config.backend.servers()],
                      server_version=self.proxy.server.version)
        raise_file_limit(self.config, self.log)
        reactor_dispatch.install(self.reactor)
        self.proxy.start()
        if hasattr(self.proxy.budget, "start"):
            self.proxy.budget.start()
        if self.config.pool.min_idle:
            for account in self.config.users:
                if self.proxy.can_log_in(account.name):
                    self.proxy.pool(account.name)
        self.health.start()
        idle_timeout = self.config.proxy.idle_client_timeout
        self._idle_sweep = LoopingCall(self._close_idle_clients)
        self._idle_sweep.clock = self.reactor
        self._idle_sweep.start(min(30.0, idle_timeout / 4), now=False)
        for signum, action in ((signal.SIGUSR1, self.log_stats), (signal.SIGUSR2, self.toggle_pause),
                               (signal.SIGHUP, self.reload)):
            signal_handlers.on_reactor(self.reactor, signum, action)
        self.reactor.callWhenRunning(signal_handlers.defer_reactor_handlers, self.reactor)

    def toggle_pause(self) -> None:
        """SIGUSR2: PAUSE (new transactions wait, backend connections close as they
        come free) or, when paused, RESUME."""
        if self.proxy.paused:
            self.resume()
        else:
            self.pause()

    def pause(self) -> None:
        """PAUSE (SIGUSR2, or the admin console's PAUSE)."""
        self.proxy.pause()
        self.log.info("paused")

    def resume(self) -> None:
        self.proxy.resume()
        self.log.info("resumed")

    def reload(self) -> None:
        """SIGHUP: re-reads the configuration and applies it without dropping clients;
        a bad file leaves the running configuration in place."""
        try:
            self.reload_now()
        except configuration.ConfigError:
            return

    def shut_down(self, graceful: bool) -> None:
        """The admin console's SHUTDOWN: as SIGTERM when ``graceful`` (open
        transactions get drain_timeout), else every client is closed at once."""
        self.log.info("shutdown_requested", graceful=graceful)
        self._immediate = not graceful
        self.reactor.stop()

    def reload_now(self) -> list[str]:
        """Reloads (SIGHUP, the admin console's RELOAD); returns the sections that changed.

        Raises:
            ConfigError: the configuration is bad (logged as ``reload_failed``); the
                running one stays.
        """
        if self._reload is None:
            raise configuration.ConfigError("pyproxy was started without a configuration to read again")
        try:
            config = self._reload()
        except configuration.ConfigError as exc:
            self.log.error("reload_failed", error=str(exc))
            raise
        if config.proxy.listen != self.config.proxy.listen:
            self.log.warning("reload_needs_restart", setting="proxy.listen")
        if config.proxy.proxy_protocol != self.config.proxy.proxy_protocol:
            self.log.warning("reload_needs_restart", setting="proxy.proxy_protocol")
        if config.proxy.read_only_listen != self.config.proxy.read_only_listen:
            self.log.warning("reload_needs_restart", setting="proxy.read_only_listen")
        # A worker's supervisor owns these listeners and says so itself.
        if config.metrics.listen != self.config.metrics.listen and not self.shared_ports:
            self.log.warning("reload_needs_restart", setting="metrics.listen")
        if (config.admin.listen, config.admin.enabled) != (self.config.admin.listen, self.config.admin.enabled) \
                and not self.shared_ports:
            self.log.warning("reload_needs_restart", setting="admin.listen")
        changed = self.proxy.reconfigure(config)
        self.config = config
        health = self.health
        health.interval, health.max_lifetime = config.health.interval, config.pool.max_lifetime
        health.idle_timeout, health.min_idle = config.pool.idle_timeout, config.pool.min_idle
        configure_logs(config)
        self.log.info("reloaded", changed=changed)
        return changed

    def _close_idle_clients(self) -> None:
        now = self.reactor.seconds()
        for client in list(self.proxy.clients.values()):
            client.check_idle(now, self.config.proxy.idle_client_timeout)

    def stats(self) -> dict[str, Any]:
        """The figures SIGUSR1 logs: targets, pools, clients and pins (a worker's
        supervisor sums them across workers)."""
        return {"targets": self.proxy.topology.stats(),
                "pools": [pool.stats() for pool in self.proxy.pools.values()],
                "clients": self.proxy.client_stats(),
                "pins": {"pins": dict(self.proxy.pins), "clients": len(self.proxy.clients),
                         "resets": self.proxy.resets},
                **({"budget": self.proxy.budget.stats()} if hasattr(self.proxy.budget, "stats") else {})}

    def log_stats(self) -> None:
        """One event per target and per pool, then the pins per reason (SIGUSR1, and
        at shutdown)."""
        stats = self.stats()
        for target in stats["targets"]:
            self.log.info("target_stats", **target)
        for pool in stats["pools"]:
            self.log.info("pool_stats", **pool)
        self.log.info("client_stats", **stats["clients"])
        self.log.info("pin_summary", **stats["pins"])
        if "budget" in stats:
            self.log.info("budget_stats", **stats["budget"])

    def stopService(self) -> Any:
        """SIGTERM: stop accepting, let open transactions finish (up to
        drain_timeout), then close everything."""
        super().stopService()
        if self._idle_sweep is not None and self._idle_sweep.running:
            self._idle_sweep.stop()
        stopped = defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in self._ports()])
        self.proxy.draining = True
        for client in list(self.proxy.clients.values()):
            client.drain()
        drained: defer.Deferred[None] = defer.Deferred()
        deadline = self.reactor.seconds() + (0 if self._immediate else self.config.proxy.drain_timeout)

        def check() -> None:
            busy = [c for c in self.proxy.clients.values() if c.commands.backend is not None]
            if busy and self.reactor.seconds() < deadline:
                self.reactor.callLater(0.1, check)
                return
            if busy:
                self.log.warning("drain_timeout", clients=len(busy))
            for client in list(self.proxy.clients.values()):
                close_client(client.transport)
            self.log_stats()
            self.health.stop()
            self.proxy.close()
            closing = self.proxy.budget.close() if hasattr(self.proxy.budget, "close") else None
            if isinstance(closing, defer.Deferred):
                closing.addBoth(lambda _: drained.callback(None))
            else:
                drained.callback(None)

        check()
        return defer.gatherResults([stopped, drained])


def bind(reactor: Any, key: str, description: str, factory: Any, others: dict[str, Any] | None = None) -> Any:
    """Listens on ``description`` now; a failure is one line naming the key (and which
    of ``others``, listeners already bound, holds the port)."""
    where = f"{key}: cannot listen on {description}"
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except Exception as exc:  # noqa: BLE001 - the config check parsed it already; say it anyway
        raise StartupError(f"{where}: {exc}") from None
    result: list[Any] = []
    endpoint.listen(factory).addBoth(result.append)
    if result and isinstance(result[0], Failure):
        failed = result[0]
        clash = ""
        if failed.check(CannotListenError):
            for other, port in (others or {}).items():
                if port is not None and getattr(port.getHost(), "port", None) == failed.value.port:
                    clash = f" ({other} is on that port)"
        raise StartupError(f"{where}: {failed.getErrorMessage()}{clash}")
    return result[0] if result else None


def default_server(config: configuration.Config) -> ServerInfo:
    """How clients are greeted when the start-up check was skipped (--no-backend-check)."""
    return ServerInfo("5.7.99-pyproxy", 0xFFFFFFFF, config.backend.charset, 2)


def check_shared_ports(config: configuration.Config) -> None:
    """With workers, the supervisor binds each client port once (SO_REUSEPORT, not
    listening) so that a port held by another program stops start-up with one line
    here rather than in every worker."""
    proxy = config.proxy
    for key in ("listen", "read_only_listen"):
        description = getattr(proxy, key)
        if not description:
            continue
        spec = reuseport.parse_tcp(description, proxy.backlog)
        probe = socket.socket(spec.family, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind((spec.interface, spec.port))
        except OSError as exc:
            raise StartupError(f"proxy.{key}: cannot listen on {description}: "
                               f"{exc.strerror or exc}") from None
        finally:
            probe.close()


def supervisor_service(options: Options, config: configuration.Config,
                       server: ServerInfo | None) -> service.Service:
    """[proxy] workers > 1: this process supervises workers instead of serving; it
    serves the metrics page and the admin console for all of them."""
    from twisted.internet import reactor  # noqa: PLC0415

    from pyproxy.workers import Supervisor, WorkerSpec  # noqa: PLC0415

    count = config.proxy.worker_count()
    greeting = None if server is None else (server.version, server.capabilities, server.charset,
                                            server.status)

    def spec(index: int) -> WorkerSpec:
        return WorkerSpec(index, count, options["config"], options.overrides(), greeting)

    def load() -> configuration.Config:
        return configuration.load(options["config"], os.environ, options.overrides())

    supervisor = Supervisor(count, spec, reactor, config.proxy.drain_timeout, config=config, load=load)
    listeners: dict[str, Any] = {}
    try:
        if config.metrics.listen:
            from pyproxy import worker_metrics  # noqa: PLC0415

            listeners["metrics.listen"] = bind(reactor, "metrics.listen", config.metrics.listen,
                                               worker_metrics.site(supervisor.scrape, count), listeners)
        if config.admin.enabled:
            from pyproxy.admin import AdminFactory  # noqa: PLC0415
            from pyproxy.worker_admin import WorkersConsole  # noqa: PLC0415

            console = WorkersConsole(supervisor, server or default_server(config))
            listeners["admin.listen"] = bind(reactor, "admin.listen", config.admin.listen,
                                             AdminFactory(console), listeners)
    except StartupError:
        for port in listeners.values():
            port.stopListening()
        raise
    supervisor.listeners.update(listeners)
    return supervisor


def makeService(options: Options) -> service.MultiService:
    config = options["parsed"]
    configure_logs(config)
    server = options.get("server") or default_server(config)
    top = service.MultiService()
    if config.proxy.worker_count() > 1:
        try:
            check_shared_ports(config)
            supervisor_service(options, config, options.get("server")).setServiceParent(top)
        except StartupError as exc:
            sys.stderr.write(f"pyproxy: {exc}\n")
            raise SystemExit(2) from None
        return top

    def reload() -> configuration.Config:
        return configuration.load(options["config"], os.environ, options.overrides())

    proxy_service = ProxyService(config, server, reload=reload)
    try:
        proxy_service.listen()
    except StartupError as exc:
        sys.stderr.write(f"pyproxy: {exc}\n")
        raise SystemExit(2) from None
    proxy_service.setServiceParent(top)
    return top
