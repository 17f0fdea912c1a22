"""``twistd pyproxy``: options, start-up checks, and the wiring of the running proxy.

Start-up problems (a bad config key, a port in use, a backend that does not
answer) end the process with one line on stderr and a non-zero exit, before
twistd daemonizes or prints a traceback.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

import attrs

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.task import LoopingCall
from twisted.python import usage
from twisted.python.failure import Failure

import pyproxy
from pyproxy import config as configuration
from pyproxy import logs
from pyproxy.frontend import FrontendFactory
from pyproxy.health import HealthChecker
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.wire.framing import PacketFramer
from pyproxy.wire.handshake import parse_handshake_v10
from pyproxy.wire.responses import parse_err


class StartupError(Exception):
    """Something that keeps pyproxy from starting; its message is the one line shown."""


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
            self["parsed"] = configuration.load(self["config"], os.environ, self.overrides())
            if not self["no-backend-check"]:
                self["server"] = probe_backend(self["parsed"])
        except (configuration.ConfigError, StartupError) as exc:
            sys.stderr.write(f"pyproxy: {exc}\n")
            raise SystemExit(2) from None


def probe_backend(config: configuration.Config) -> ServerInfo:
    """Reads a server's greeting once, so clients can be greeted as that server
    would: the first target that answers, writers and auto targets first."""
    servers = sorted(config.backend.servers(), key=lambda server: server.role == "reader")
    problems = []
    for server in servers:
        try:
            return _greeting(server, config.backend.connect_timeout)
        except StartupError as exc:
            problems.append(str(exc))
    raise StartupError("; ".join(problems))


def _greeting(backend: configuration.TargetConfig, timeout: float) -> ServerInfo:
    try:
        with socket.create_connection((backend.host, backend.port), timeout=timeout) as sock:
            framer = PacketFramer()
            packets: list[Any] = []
            while not packets:
                data = sock.recv(65536)
                if not data:
                    raise StartupError(f"backend {backend.host}:{backend.port} closed the connection "
                                       "before greeting")
                packets = framer.feed(data)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise StartupError(f"cannot reach backend {backend.host}:{backend.port}: {reason}") from None
    payload = packets[0].payload
    if payload[:1] == b"\xff":
        err = parse_err(payload)
        raise StartupError(f"backend {backend.host}:{backend.port} refused: ({err.code}) {err.message}")
    try:
        greeting = parse_handshake_v10(payload)
    except ValueError as exc:
        raise StartupError(f"backend {backend.host}:{backend.port} is not a MySQL server: {exc}") from None
    return ServerInfo(greeting.server_version, greeting.capabilities, greeting.charset, greeting.status)


def listen_description(proxy: configuration.ProxyConfig) -> str:
    """The endpoint string, with the configured backlog unless it names its own."""
    description = proxy.listen
    if description.split(":", 1)[0] in ("tcp", "tcp6", "unix") and "backlog=" not in description:
        description += f":backlog={proxy.backlog}"
    return description


class ProxyService(service.Service):
    """Listens for clients and runs the health checker for as long as it runs."""

    def __init__(self, config: configuration.Config, server: ServerInfo, reactor: Any = None,
                 reload: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor  # noqa: PLC0415
            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.proxy = Proxy(config, reactor, server)
        self.health = HealthChecker(self.proxy.pools, reactor, interval=config.health.interval,
                                    max_lifetime=config.pool.max_lifetime,
                                    idle_timeout=config.pool.idle_timeout,
                                    min_idle=config.pool.min_idle)
        self.port: Any = None
        self.read_only_port: Any = None
        self._idle_sweep: Any = None
        # Re-reads the configuration (file, environment, options) for SIGHUP.
        self._reload = reload
        self.log = logs.get_logger(component="service")

    def listen(self) -> None:
        """Binds the listening sockets now, so a taken port stops start-up with one line.

        For TCP and UNIX endpoints the Deferred has fired by the time
        ``listen()`` returns; the port starts accepting once the reactor runs.
        """
        proxy = self.config.proxy
        self.port = self._bind(proxy.listen, FrontendFactory(self.proxy))
        if proxy.read_only_listen:
            try:
                self.read_only_port = self._bind(proxy.read_only_listen, FrontendFactory(self.proxy, True))
            except StartupError:
                if self.port is not None:
                    self.port.stopListening()
                raise

    def _bind(self, description: str, factory: FrontendFactory) -> Any:
        endpoint = endpoints.serverFromString(
            self.reactor, listen_description(attrs.evolve(self.config.proxy, listen=description)))
        result: list[Any] = []
        endpoint.listen(factory).addBoth(result.append)
        if result and isinstance(result[0], Failure):
            raise StartupError(f"cannot listen on {description}: {result[0].getErrorMessage()}")
        return result[0] if result else None

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.listen()
        address = self.port.getHost()
        self.log.info("listening", address=f"{getattr(address, 'host', '')}:{getattr(address, 'port', '')}",
                      read_only=self.config.proxy.read_only_listen or None,
                      targets=[f"{server.name} ({server.role})" for server in self.config.backend.servers()],
                      server_version=self.proxy.server.version)
        self.proxy.topology.start()
        if self.config.pool.min_idle:
            for account in self.config.users:
                self.proxy.pool(account.name)
        self.health.start()
        idle_timeout = self.config.proxy.idle_client_timeout
        self._idle_sweep = LoopingCall(self._close_idle_clients)
        self._idle_sweep.clock = self.reactor
        self._idle_sweep.start(min(30.0, idle_timeout / 4), now=False)
        for signum, action in ((signal.SIGUSR1, self.log_stats), (signal.SIGUSR2, self.toggle_pause),
                               (signal.SIGHUP, self.reload)):
            signal.signal(signum, lambda number, frame, action=action: self.reactor.callFromThread(action))

    def toggle_pause(self) -> None:
        """SIGUSR2: PAUSE (new transactions wait, backend connections close as they
        come free) or, when paused, RESUME."""
        if self.proxy.paused:
            self.proxy.resume()
            self.log.info("resumed")
        else:
            self.proxy.pause()
            self.log.info("paused")

    def reload(self) -> None:
        """SIGHUP: re-reads the configuration and applies it without dropping clients;
        a bad file leaves the running configuration in place."""
        if self._reload is None:
            return
        try:
            config = self._reload()
        except configuration.ConfigError as exc:
            self.log.error("reload_failed", error=str(exc))
            return
        if config.proxy.listen != self.config.proxy.listen:
            self.log.warning("reload_needs_restart", key="proxy.listen")
        if config.proxy.read_only_listen != self.config.proxy.read_only_listen:
            self.log.warning("reload_needs_restart", key="proxy.read_only_listen")
        changed = self.proxy.reconfigure(config)
        self.config = config
        health = self.health
        health.interval, health.max_lifetime = config.health.interval, config.pool.max_lifetime
        health.idle_timeout, health.min_idle = config.pool.idle_timeout, config.pool.min_idle
        logs.configure(config.log.level, config.log.format)
        self.log.info("reloaded", changed=changed)

    def _close_idle_clients(self) -> None:
        now = self.reactor.seconds()
        for client in list(self.proxy.clients.values()):
            client.check_idle(now, self.config.proxy.idle_client_timeout)

    def log_stats(self) -> None:
        """One event per target and per pool, then the pins per reason (SIGUSR1, and
        at shutdown)."""
        for target in self.proxy.topology.stats():
            self.log.info("target_stats", **target)
        for pool in self.proxy.pools.values():
            self.log.info("pool_stats", **pool.stats())
        self.log.info("pin_summary", pins=dict(self.proxy.pins), clients=len(self.proxy.clients))

    def stopService(self) -> Any:
        """SIGTERM: stop accepting, let open transactions finish (up to
        drain_timeout), then close everything."""
        super().stopService()
        if self._idle_sweep is not None and self._idle_sweep.running:
            self._idle_sweep.stop()
        stopped = defer.gatherResults([defer.maybeDeferred(port.stopListening)
                                       for port in (self.port, self.read_only_port) if port is not None])
        self.proxy.draining = True
        for client in list(self.proxy.clients.values()):
            client.drain()
        drained: defer.Deferred[None] = defer.Deferred()
        deadline = self.reactor.seconds() + self.config.proxy.drain_timeout

        def check() -> None:
            busy = [c for c in self.proxy.clients.values() if c.backend is not None]
            if busy and self.reactor.seconds() < deadline:
                self.reactor.callLater(0.1, check)
                return
            if busy:
                self.log.warning("drain_timeout", clients=len(busy))
            for client in list(self.proxy.clients.values()):
                client.transport.loseConnection()
            self.log_stats()
            self.health.stop()
            self.proxy.close()
            drained.callback(None)

        check()
        return defer.gatherResults([stopped, drained])


def makeService(options: Options) -> service.MultiService:
    config = options["parsed"]
    logs.configure(config.log.level, config.log.format)
    server = options.get("server") or ServerInfo("5.7.99-pyproxy", 0xFFFFFFFF, config.backend.charset, 2)
    top = service.MultiService()

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
