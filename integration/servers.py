"""Database servers and pyproxy processes for the integration tests.

The session fixture ``db_server`` (see ``conftest.py``) comes from one of three providers, chosen
by environment variables:

``PYPROXY_TEST_MYSQL=host:port:user:password``
    Use an existing server. The user needs ``ALL PRIVILEGES ON *.* ... WITH GRANT OPTION`` (as
    root has), since tests create users; the password may contain colons. Tests that stop or
    kill the server are skipped. Every account and database the tests create there is named
    with :func:`own_name` (this run's suffix), one that exists already is never replaced, and
    all are dropped when the run ends.
``PYPROXY_TEST_DOCKER=1``
    Run ``mysql:8.0`` (or ``PYPROXY_TEST_DOCKER_IMAGE``) in Docker, published on a free
    127.0.0.1 port.
neither (the default)
    A :class:`pyproxy.sandbox.SandboxServer`: a throwaway local mariadbd. Without the MariaDB
    binaries the integration tests are skipped, saying why.

A provider asked for explicitly (either variable) that cannot run (no Docker engine, a server
that does not answer) fails every test that needs it (:class:`RequestedServerMissing`): a run
meant to test against MySQL 8.0 must not pass by skipping everything.

Every provider offers the same small interface: ``host``, ``port``, ``flavor`` ("mariadb" or
"mysql"), ``connect(**kw)`` (an autocommit admin connection), ``create_user(name, password,
plugin=..., database=None)``, ``start()``, ``stop()``, ``kill()``, ``restart()``,
``cleanup()``. The existing-server provider raises NotImplementedError for stop/kill/restart.

:class:`ServerGroup` stands apart from those providers: several throwaway servers of its own
(writer and readers-to-be) for the failover tests, whatever ``db_server`` is.

:func:`start_proxy` runs ``twistd --nodaemon --pidfile= pyproxy --config FILE`` in front of a
server, with this interpreter (see :func:`pyproxy.sandbox.twistd_command`).
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import pymysql

from pyproxy.sandbox import (
    ProgramNotFound,
    SandboxError,
    SandboxServer,
    _quote_identifier,
    child_env,
    create_user_on,
    dump_toml,
    endpoint_address,
    free_port,
    tail,
    twistd_command,
)

#: This test run's suffix for every account and database it creates: on an existing server
#: (PYPROXY_TEST_MYSQL) a name of the run's own never replaces anyone else's, and the
#: provider drops what the run created when it ends.
RUN_ID = secrets.token_hex(3)


def own_name(base: str) -> str:
    """``base`` with this run's suffix, for an account or database the tests create."""
    return f"{base}_{RUN_ID}"


#: The user every proxy config gets, created on the server with its own database.
APP_USER = own_name("app")
APP_PASSWORD = "app_pw"
APP_DATABASE = own_name("app")
# pyproxy's target probes log in as this account, so that tests counting the
# app account's server threads count only pooled connections.
MONITOR_USER = own_name("pyproxy_monitor")
MONITOR_PASSWORD = "monitor_pw"

#: Keys of a ``users`` entry that describe the server-side account, not the pyproxy config.
_SERVER_ONLY_USER_KEYS = ("plugin", "database", "create")


class ServerUnavailable(Exception):
    """No database server can be provided here; the message says why (used as skip reason)."""


class ForeignObject(RuntimeError):
    """An account or database the tests would create exists on an existing server, and this
    run did not create it: the tests never change what is not theirs."""


class RequestedServerMissing(Exception):
    """The provider the environment asks for explicitly (PYPROXY_TEST_MYSQL,
    PYPROXY_TEST_DOCKER=1) cannot run: an error for the tests, never a skip."""


class DbServer(Protocol):
    """What tests may rely on, whichever provider is behind ``db_server``."""

    host: str
    port: int

    @property
    def flavor(self) -> str: ...

    def connect(self, **kwargs: Any) -> pymysql.connections.Connection: ...

    def create_user(
        self, name: str, password: str, plugin: str = ..., database: str | None = ...
    ) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...

    def restart(self) -> None: ...

    def cleanup(self) -> None: ...


def _detect_flavor(conn: pymysql.connections.Connection) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        return "mariadb" if "mariadb" in str(cur.fetchone()[0]).lower() else "mysql"


@attrs.define(eq=False)
class ExistingServer:
    """A server someone else runs (``PYPROXY_TEST_MYSQL``); it is never stopped or changed
    beyond the users and databases the tests create, which :meth:`cleanup` removes.

    Tests name what they create with :func:`own_name`; an account or database that exists
    already and that this run did not create is never replaced or used
    (:class:`ForeignObject`)."""

    host: str
    port: int
    user: str
    password: str
    _flavor: str | None = attrs.field(default=None, init=False)
    # What this run created, for cleanup().
    _users: set[str] = attrs.field(factory=set, init=False)
    _databases: set[str] = attrs.field(factory=set, init=False)

    @classmethod
    def from_spec(cls, spec: str) -> ExistingServer:
        """Parse ``host:port:user:password``."""
        parts = spec.split(":", 3)
        if len(parts) != 4 or not parts[1].isdigit():
            raise ServerUnavailable(
                f"PYPROXY_TEST_MYSQL must be host:port:user:password, got {spec!r}"
            )
        return cls(parts[0], int(parts[1]), parts[2], parts[3])

    @property
    def flavor(self) -> str:
        if self._flavor is None:
            conn = self.connect()
            try:
                self._flavor = _detect_flavor(conn)
            finally:
                conn.close()
        return self._flavor

    def connect(self, **kwargs: Any) -> pymysql.connections.Connection:
        params: dict[str, Any] = {
            "host": self.host, "port": self.port, "user": self.user,
            "password": self.password, "autocommit": True, "connect_timeout": 5,
        }
        params.update(kwargs)
        return pymysql.connect(**params)

    def create_user(
        self, name: str, password: str, plugin: str = "mysql_native_password",
        database: str | None = None,
    ) -> None:
        """Create (or, if this run made it, replace) ``name`` and ``database``.

        Raises:
            ForeignObject: an account or database of that name exists and is not this run's.
        """
        conn = self.connect()
        try:
            if name not in self._users:
                with conn.cursor() as cur:
                    cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s", (name,))
                    if cur.fetchone()[0]:
                        raise ForeignObject(f"account {name!r} exists on the PYPROXY_TEST_MYSQL "
                                            "server and this test run did not create it")
                self._users.add(name)  # before creating: cleanup() removes a half-made one
            if database:
                self._claim_database(conn, database)
            create_user_on(conn, name, password, plugin=plugin, database=database)
        finally:
            conn.close()

    def claim_database(self, name: str) -> None:
        """Record that the tests create database ``name``, so cleanup() drops it.

        Raises:
            ForeignObject: it exists already and is not this run's.
        """
        conn = self.connect()
        try:
            self._claim_database(conn, name)
        finally:
            conn.close()

    def _claim_database(self, conn: pymysql.connections.Connection, name: str) -> None:
        if name in self._databases:
            return
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                        (name,))
            if cur.fetchone()[0]:
                raise ForeignObject(f"database {name!r} exists on the PYPROXY_TEST_MYSQL server "
                                    "and this test run did not create it")
        self._databases.add(name)

    def start(self) -> None:
        """Check that the server answers."""
        try:
            self.connect().close()
        except pymysql.err.MySQLError as exc:
            raise ServerUnavailable(
                f"PYPROXY_TEST_MYSQL server {self.host}:{self.port} does not answer: {exc}"
            ) from exc

    def stop(self) -> None:
        raise NotImplementedError("an existing server (PYPROXY_TEST_MYSQL) is not ours to stop")

    def kill(self) -> None:
        raise NotImplementedError("an existing server (PYPROXY_TEST_MYSQL) is not ours to kill")

    def restart(self) -> None:
        raise NotImplementedError(
            "an existing server (PYPROXY_TEST_MYSQL) is not ours to restart"
        )

    def cleanup(self) -> None:
        """Drop the accounts and databases this run created: the server is left as found."""
        if not self._users and not self._databases:
            return
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for name in sorted(self._users):
                    for host in ("%", "localhost"):
                        cur.execute("DROP USER IF EXISTS %s@%s", (name, host))
                for database in sorted(self._databases):
                    cur.execute(f"DROP DATABASE IF EXISTS {_quote_identifier(database)}")
        finally:
            conn.close()
        self._users.clear()
        self._databases.clear()


def claim_database(server: Any, name: str) -> None:
    """Say that a test creates database ``name`` on ``server`` itself (not through
    ``create_user``): on an existing server it must be the run's own, and is dropped at the
    end; the throwaway servers need nothing.

    Raises:
        ForeignObject: on an existing server, ``name`` exists and is not this run's.
    """
    if isinstance(server, ExistingServer):
        server.claim_database(name)


@attrs.define(eq=False)
class DockerMySQL:
    """A MySQL container published on a free 127.0.0.1 port (``PYPROXY_TEST_DOCKER=1``)."""

    image: str = "mysql:8.0"
    max_connections: int = 151
    start_timeout: float = 180.0
    host: str = "127.0.0.1"
    port: int = 0
    root_password: str = attrs.field(factory=lambda: secrets.token_urlsafe(12))
    _client: Any = attrs.field(default=None, init=False, repr=False)
    _container: Any = attrs.field(default=None, init=False, repr=False)
    _flavor: str | None = attrs.field(default=None, init=False)

    @classmethod
    def from_env(cls, image: str = "mysql:8.0") -> DockerMySQL:
        """Connect to the Docker engine, or say why not."""
        try:
            import docker  # test extra; only needed for this provider
        except ImportError as exc:
            raise ServerUnavailable(f"PYPROXY_TEST_DOCKER=1 but the docker SDK is missing: {exc}")
        try:
            client = docker.from_env()
            client.ping()
        except Exception as exc:  # the SDK raises several unrelated types here
            raise ServerUnavailable(
                f"PYPROXY_TEST_DOCKER=1 but no Docker engine answers: {exc}"
            ) from exc
        server = cls(image=image)
        server._client = client
        return server

    @property
    def flavor(self) -> str:
        if self._flavor is None:
            conn = self.connect()
            try:
                self._flavor = _detect_flavor(conn)
            finally:
                conn.close()
        return self._flavor

    def connect(self, **kwargs: Any) -> pymysql.connections.Connection:
        params: dict[str, Any] = {
            "host": self.host, "port": self.port, "user": "root",
            "password": self.root_password, "autocommit": True, "connect_timeout": 5,
        }
        params.update(kwargs)
        return pymysql.connect(**params)

    def create_user(
        self, name: str, password: str, plugin: str = "mysql_native_password",
        database: str | None = None,
    ) -> None:
        conn = self.connect()
        try:
            create_user_on(conn, name, password, plugin=plugin, database=database)
        finally:
            conn.close()

    def start(self) -> None:
        """Create the container on first use, else start it again; wait until it answers."""
        if self._container is None:
            import docker.errors

            try:
                self._client.images.get(self.image)
            except docker.errors.ImageNotFound:
                self._client.images.pull(self.image)
            self.port = self.port or free_port(self.host)
            self._container = self._client.containers.run(
                self.image,
                command=[f"--max-connections={self.max_connections}"],
                environment={
                    "MYSQL_ROOT_PASSWORD": self.root_password,
                    "MARIADB_ROOT_PASSWORD": self.root_password,
                },
                ports={"3306/tcp": (self.host, self.port)},
                labels={"pyproxy-test": "1"},
                detach=True,
            )
        else:
            self._container.start()
        self._wait_ready()

    def _wait_ready(self) -> None:
        # The image's first boot runs a temporary server without networking, so the first
        # TCP login that works is the real server.
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._container.reload()
            if self._container.status in ("exited", "dead"):
                break
            try:
                self.connect(connect_timeout=2).close()
                return
            except pymysql.err.MySQLError as exc:
                last_error = exc
                time.sleep(0.5)
        logs = self._container.logs(tail=30).decode(errors="replace")
        raise SandboxError(
            f"{self.image} container ({self._container.status}) did not accept connections on "
            f"{self.host}:{self.port} (last error: {last_error}); container log tail:\n{logs}"
        )

    def stop(self) -> None:
        if self._container is not None:
            self._container.stop(timeout=30)

    def kill(self) -> None:
        if self._container is not None:
            self._container.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        if self._container is not None:
            self._container.remove(force=True, v=True)
            self._container = None
        if self._client is not None:
            self._client.close()


def open_db_server(environ: Mapping[str, str]) -> DbServer:
    """Start the provider the environment asks for (see the module docstring).

    Raises:
        ServerUnavailable: no sandbox can run here (the default provider).
        RequestedServerMissing: the provider asked for explicitly cannot run.
    """
    spec = environ.get("PYPROXY_TEST_MYSQL")
    if not spec and environ.get("PYPROXY_TEST_DOCKER") != "1":
        sandbox = SandboxServer(max_connections=200)
        _start_or_clean_up(sandbox)
        return sandbox
    asked = "PYPROXY_TEST_MYSQL" if spec else "PYPROXY_TEST_DOCKER=1"
    server: DbServer
    try:
        if spec:
            server = ExistingServer.from_spec(spec)
        else:
            server = DockerMySQL.from_env(environ.get("PYPROXY_TEST_DOCKER_IMAGE", "mysql:8.0"))
        _start_or_clean_up(server)
    except ServerUnavailable as exc:
        raise RequestedServerMissing(f"{asked} asks for a server that cannot run: {exc}") from exc
    return server


def _start_or_clean_up(server: DbServer | ServerGroup) -> None:
    """``server.start()``; if that fails, ``server.cleanup()`` and raise again.

    Raises:
        ServerUnavailable: the MariaDB server binaries are not installed.
    """
    try:
        server.start()
    except ProgramNotFound as exc:
        server.cleanup()
        raise ServerUnavailable(str(exc)) from exc
    except BaseException:
        server.cleanup()
        raise


def is_controllable(server: DbServer) -> bool:
    """Return whether tests may stop, kill and restart ``server``."""
    return not isinstance(server, ExistingServer)


# --- several servers: a simulated cluster ----------------------------------------------------


def create_database_user(
    conn: pymysql.connections.Connection, name: str, password: str, database: str | None
) -> None:
    """Create ``name``@'%' and @'localhost' with privileges on ``database`` only.

    :func:`pyproxy.sandbox.create_user_on` grants ALL PRIVILEGES ON *.*, which on MariaDB
    includes READ_ONLY ADMIN (SUPER on MySQL): such a user still writes on a server with
    ``read_only=1``, so a read-only flip would not stop it. A user limited to its database
    gets error 1290 there, as an application user does on a demoted writer.
    """
    with conn.cursor() as cur:
        for host in ("%", "localhost"):
            cur.execute("DROP USER IF EXISTS %s@%s", (name, host))
            cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (name, host, password))
            if database:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS {_quote_identifier(database)}")
                cur.execute(f"GRANT ALL PRIVILEGES ON {_quote_identifier(database)}.* "
                            "TO %s@%s", (name, host))
    conn.commit()


#: MySQL's ER_LOCK_WAIT_TIMEOUT, also what a metadata lock wait past lock_wait_timeout gets.
ER_LOCK_WAIT_TIMEOUT = 1205


def as_root(server: Any, *statements: str, database: str | None = None) -> None:
    """Run ``statements`` on ``server`` as its administrator, one connection for all
    (in ``database``, if given)."""
    conn = server.connect(database=database) if database else server.connect()
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


@attrs.frozen
class Failover:
    """When a simulated failover began, when the old writer was read-only, when the new one
    was writable (monotonic clock), and how many tries turning the old one read-only took."""

    began: float
    demoted: float
    promoted: float
    attempts: int


@attrs.define(eq=False)
class ServerGroup:
    """Several throwaway servers standing for one cluster, without replication between them.

    A failover is simulated as Aurora shows it to clients: the writer turns read-only
    (``SET GLOBAL read_only=1``) and another server turns writable. Tests give every server the
    same initial tables themselves. Users are created with :func:`create_database_user`, so
    ``read_only`` applies to them.

    ``host`` and ``port`` are the first server's, so the group can stand where
    :func:`start_proxy` expects one server; :meth:`backend` gives the ``[backend]`` table
    with one ``[[backend.targets]]`` entry per server.
    """

    servers: list[SandboxServer]
    host: str = "127.0.0.1"

    @classmethod
    def start_sandboxes(cls, count: int, max_connections: int = 200) -> ServerGroup:
        """Start ``count`` sandbox servers, the first writable and the others read-only.

        Raises:
            ServerUnavailable: the MariaDB server binaries are not installed.
        """
        group = cls([SandboxServer(max_connections=max_connections) for _ in range(count)])
        _start_or_clean_up(group)
        return group

    @property
    def port(self) -> int:
        return self.servers[0].port

    def __getitem__(self, index: int) -> SandboxServer:
        return self.servers[index]

    def address(self, index: int) -> str:
        """``host:port`` of server ``index``, as pyproxy names targets in its log."""
        return f"{self.servers[index].host}:{self.servers[index].port}"

    def index_of_port(self, port: int) -> int:
        """Which server listens on ``port`` (what a client's ``SELECT @@port`` tells)."""
        for index, server in enumerate(self.servers):
            if server.port == port:
                return index
        raise KeyError(f"no server of the group listens on port {port}")

    def backend(self, roles: Sequence[str], **settings: Any) -> dict[str, Any]:
        """The ``[backend]`` table for the first ``len(roles)`` servers with these roles.

        ``host`` and ``port`` are set to None (left out of the file), so the targets are the
        only backend pyproxy knows.
        """
        targets = [{"host": server.host, "port": server.port, "role": role}
                   for server, role in zip(self.servers, roles, strict=False)]
        if len(targets) != len(roles):
            raise ValueError(f"{len(roles)} roles for a group of {len(self.servers)} servers")
        return {"host": None, "port": None, "targets": targets, **settings}

    def admin(self, index: int, *statements: str) -> None:
        """Run ``statements`` as root on server ``index``."""
        as_root(self.servers[index], *statements)

    def set_read_only(self, index: int, read_only: bool, timeout: float = 30.0) -> int:
        """Set ``read_only`` on server ``index``; return how many attempts it took.

        Turning it on takes the global read lock, which waits for running write statements
        while blocking new ones. Under a write load that can deadlock with InnoDB row locks
        (a running UPDATE waits for a row held by a transaction whose next statement waits
        for the global read lock) until ``innodb_lock_wait_timeout``, 50 s by default. So each
        attempt waits at most ``lock_wait_timeout`` = 1 s and gives way (error 1205) to let
        the transactions go on, and the next one comes at once, up to ``timeout`` seconds.
        """
        conn = self.servers[index].connect()
        deadline = time.monotonic() + timeout
        attempts = 0
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION lock_wait_timeout = 1")
                while True:
                    attempts += 1
                    try:
                        cur.execute(f"SET GLOBAL read_only = {1 if read_only else 0}")
                        return attempts
                    except pymysql.MySQLError as exc:
                        if exc.args[0] != ER_LOCK_WAIT_TIMEOUT or time.monotonic() > deadline:
                            raise
        finally:
            conn.close()

    def fail_over(self, old: int, new: int) -> Failover:
        """Make server ``old`` read-only, then server ``new`` writable, as an Aurora failover
        looks to clients; return when each step was done."""
        began = time.monotonic()
        attempts = self.set_read_only(old, True)
        demoted = time.monotonic()
        self.set_read_only(new, False)
        return Failover(began, demoted, time.monotonic(), attempts)

    def create_user(
        self, name: str, password: str, plugin: str = "mysql_native_password",
        database: str | None = None,
    ) -> None:
        """Create the user on every running server with :func:`create_database_user`."""
        if plugin != "mysql_native_password":
            raise ValueError(f"the group creates mysql_native_password users only, not {plugin}")
        for server in self.servers:
            if server.is_running():
                conn = server.connect()
                try:
                    create_database_user(conn, name, password, database)
                finally:
                    conn.close()

    def start(self) -> None:
        """Start every server: the first writable, the others read-only."""
        self.reset()

    def reset(self, writer: int = 0) -> None:
        """Start every stopped server; make ``writer`` the only writable one.

        A restarted server comes back writable (``read_only`` is not persisted), so tests
        that stop one rely on this to start from the same state.
        """
        for server in self.servers:
            server.start()
        for index in range(len(self.servers)):
            self.set_read_only(index, index != writer)

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()


# --- pyproxy processes ----------------------------------------------------------------------


class ProxyStartError(RuntimeError):
    """pyproxy exited or did not listen in time; the message ends with its log tail."""


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in, tables recursively, other values replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def proxy_config(server: DbServer, listen: str) -> dict[str, Any]:
    """Return the config every test proxy starts from: small pool, short timeouts, debug logs."""
    return {
        "proxy": {"listen": listen, "drain_timeout": 3},
        "backend": {
            "host": server.host,
            "port": server.port,
            "database": APP_DATABASE,
            "connect_timeout": 5,
        },
        "pool": {
            "max_connections": 10,
            "min_idle": 0,
            "borrow_timeout": 10,
            "max_lifetime": 3600,
            "idle_timeout": 600,
        },
        "health": {"interval": 1, "user": MONITOR_USER, "password": MONITOR_PASSWORD},
        "log": {"level": "debug", "format": "json"},
        "users": [{"name": APP_USER, "password": APP_PASSWORD}],
    }


@attrs.define(eq=False)
class ProxyProcess:
    """A running ``twistd -n pyproxy`` and where to find its config and log."""

    host: str
    port: int
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    config: dict[str, Any]

    def log_text(self) -> str:
        """Return everything pyproxy has written to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines (``[log] format = "json"``) of the event ``name``, oldest first."""
        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                record = json.loads(line)
                if record.get("event") == name:
                    found.append(record)
        return found

    def connect(
        self, user: str = APP_USER, password: str = APP_PASSWORD,
        database: str | None = APP_DATABASE, **kwargs: Any,
    ) -> pymysql.connections.Connection:
        """Return a PyMySQL connection through the proxy, as ``app`` by default.

        ``ssl_disabled``: pyproxy offers no TLS yet, and PyMySQL would otherwise
        load the system CA bundle on every connect (tens of milliseconds).
        """
        params: dict[str, Any] = {
            "host": self.host, "port": self.port, "user": user, "password": password,
            "database": database, "connect_timeout": 5, "ssl_disabled": True,
        }
        params.update(kwargs)
        return pymysql.connect(**params)

    @property
    def read_only_port(self) -> int | None:
        """The port of the read-only listener (``[proxy] read_only_listen``), if there is one."""
        address = endpoint_address(self.config["proxy"].get("read_only_listen") or "")
        return None if address is None else int(address[1])

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Wait until the port, and the read-only listener's when there is one, accept TCP
        connections.

        Raises:
            ProxyStartError: the process exited or a port stayed closed.
        """
        deadline = time.monotonic() + timeout
        for port in filter(None, (self.port, self.read_only_port)):
            while not _accepts_connections(self.host, port):
                code = self.process.poll()
                if code is not None:
                    raise ProxyStartError(
                        f"pyproxy exited with code {code} before listening on "
                        f"{self.host}:{port}; tail of {self.log_path}:\n{tail(self.log_path)}"
                    )
                if time.monotonic() >= deadline:
                    raise ProxyStartError(
                        f"pyproxy did not listen on {self.host}:{port} within {timeout}s; "
                        f"tail of {self.log_path}:\n{tail(self.log_path)}"
                    )
                time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit code.

        A clean shutdown on SIGTERM exits 0; -9 means it had to be killed.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _proxy_env() -> dict[str, str]:
    # The config file must be the whole truth: drop PYPROXY_* settings from the test run's env.
    env = {k: v for k, v in child_env().items() if not k.startswith("PYPROXY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_proxy(
    server: DbServer,
    directory: Path,
    *,
    users: Iterable[Mapping[str, Any]] = (),
    args: Sequence[str] = (),
    runner_args: Sequence[str] = (),
    startup_timeout: float = 20.0,
    **sections: Mapping[str, Any],
) -> ProxyProcess:
    """Create the users on ``server``, write a config into ``directory`` and start pyproxy.

    Args:
        users: extra ``[[users]]`` entries after ``app``. ``plugin``, ``database`` and
            ``create`` (default True) describe the server account and stay out of the config.
        args: more pyproxy options, after ``--config FILE``.
        runner_args: options for the Twisted runner, before ``pyproxy``.
        sections: merged into the config's tables, e.g. ``pool={"max_connections": 20}``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    server.create_user(APP_USER, APP_PASSWORD, database=APP_DATABASE)
    server.create_user(MONITOR_USER, MONITOR_PASSWORD)
    config = merge_config(proxy_config(server, f"tcp:{free_port()}:interface=127.0.0.1"),
                          sections)
    if "targets" in config["backend"]:
        # [[backend.targets]] replaces host and port.
        config["backend"] = {k: v for k, v in config["backend"].items() if k not in ("host", "port")}
    for user in users:
        if user.get("create", True):
            server.create_user(user["name"], user["password"],
                               plugin=user.get("plugin", "mysql_native_password"),
                               database=user.get("database"))
        entry = {k: v for k, v in user.items() if k not in _SERVER_ONLY_USER_KEYS}
        config["users"] = [*config["users"], entry]
    address = endpoint_address(config["proxy"]["listen"])
    if address is None:
        raise ValueError(f"cannot wait for a proxy listening on {config['proxy']['listen']!r}")
    if _accepts_connections(address[0], int(address[1])):
        # Waiting for the port would then succeed at once, whatever pyproxy does.
        raise ValueError(f"something already listens on {config['proxy']['listen']!r}")
    config_path = directory / "pyproxy.toml"
    log_path = directory / "pyproxy.log"
    config_path.write_text(dump_toml(config))
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            twistd_command(config_path, runner_args, args),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=_proxy_env(), cwd=directory,
        )
    proxy = ProxyProcess(address[0], int(address[1]), config_path, log_path, process, config)
    STARTED.append(proxy)
    try:
        proxy.wait_listening(startup_timeout)
    except BaseException:
        proxy.stop()
        raise
    return proxy


# Every pyproxy a test started: those a test left running (it failed before its own
# stop(), or never stopped it) are stopped when the test session ends (conftest).
STARTED: list[ProxyProcess] = []


def stop_started_proxies() -> None:
    while STARTED:
        STARTED.pop().stop()


class PeakWatch:
    """Polls the server's connections of ``user`` every 10 ms from a root connection, in a
    thread, and keeps the highest count: what a budget test holds pyproxy to.

    ``ignore_present``: for a proxy whose pools are still empty, the connections already
    there are not its own (one an earlier test left for the garbage collector, say), so
    they are not counted.  The rows seen at the peak are kept for the failure message."""

    def __init__(self, db_server: DbServer, user: str = APP_USER, ignore_present: bool = False) -> None:
        self.root = db_server.connect()
        self.user = user
        self.peak = 0
        self.rows_at_peak: list[tuple[Any, ...]] = []
        self.ignored: frozenset[int] = frozenset()
        if ignore_present:
            self.ignored = frozenset(row[0] for row in self._rows())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rows(self) -> list[tuple[Any, ...]]:
        with self.root.cursor() as cur:
            cur.execute("SELECT ID, HOST, COMMAND, TIME, STATE FROM information_schema.PROCESSLIST"
                        " WHERE USER = %s", (self.user,))
            return list(cur.fetchall())

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = [row for row in self._rows() if row[0] not in self.ignored]
            if len(rows) > self.peak:
                self.peak, self.rows_at_peak = len(rows), rows
            time.sleep(0.01)

    def stop(self) -> int:
        """Stops polling; returns the peak."""
        self._stop.set()
        self._thread.join()
        self.root.close()
        return self.peak

    def __str__(self) -> str:
        return (f"peak {self.peak}: {self.rows_at_peak}"
                + (f" (ignored, there before: {sorted(self.ignored)})" if self.ignored else ""))
