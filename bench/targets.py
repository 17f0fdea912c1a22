"""What the clients talk to: a sandbox MariaDB directly, or pyproxy (``twistd -n pyproxy``) in
front of it, or a real HAProxy in front of pyproxy instances that share a budget through a
throwaway Redis; their start, their addresses and their cleanup.

There is no relay target (a bare TCP forwarder in pyproxy's place) today. Everything started
here is registered, so that :func:`stop_all` removes it at exit, Ctrl-C included.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.report import progress

#: The client user and its database, on every target.
USER = "app"
DATABASE = "app"
#: The point select the workloads run against the table :func:`start_sandbox` loads.
POINT_SQL = "SELECT v FROM t WHERE id = {}"

_pyproxies: list[PyProxy] = []
_servers: list[Any] = []           # SandboxServer objects
_helpers: list[Any] = []           # HAProxy and RedisServer objects (integration/)


def start_sandbox(max_connections: int, password: str, rows: int, **options: Any) -> tuple[Any, str]:
    """A sandbox server with the client user and a table ``t`` of ``rows`` rows for the point
    selects (``options``: more SandboxServer settings, such as its TLS files). Returns the
    server and its version."""
    from pyproxy import sandbox  # noqa: PLC0415
    server = sandbox.SandboxServer(max_connections=max_connections, **options)
    _servers.append(server)
    try:
        server.start()
    except sandbox.ProgramNotFound as exc:
        raise BenchError(str(exc)) from None
    server.create_user(USER, password, database=DATABASE)
    conn = server.connect(database=DATABASE)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = cur.fetchone()[0]
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL)"
                        " ENGINE=InnoDB")
            rng = random.Random(1)
            batch = 1000
            for first in range(1, rows + 1, batch):
                values = [(i, "%032x" % rng.getrandbits(128))
                          for i in range(first, min(first + batch, rows + 1))]
                cur.executemany("INSERT INTO t (id, v) VALUES (%s, %s)", values)
            cur.execute("ANALYZE TABLE t")
            cur.fetchall()
    finally:
        conn.close()
    return server, version


def start_group(clients: int) -> Any:
    """Two sandbox servers for the fault workloads, with room for ``clients`` writing clients
    (see bench.workloads.faults.reset_group)."""
    from integration.servers import ServerGroup, ServerUnavailable  # noqa: PLC0415
    progress("starting two sandboxes for the fault workloads")
    try:
        group = ServerGroup.start_sandboxes(2, max_connections=max(200, 4 * clients))
    except ServerUnavailable as exc:
        raise BenchError(str(exc)) from None
    _servers.extend(group.servers)
    return group


def start_balancer(directory: Path, frontends: dict[str, tuple[list[int], str]]) -> Any:
    """A real HAProxy (see integration.balancer.HAProxy) with its config and log in
    ``directory``; its ``ports`` maps each frontend's name to the port it listens on."""
    from integration.balancer import HAProxy  # noqa: PLC0415
    try:
        balancer = HAProxy(directory, frontends)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None
    _helpers.append(balancer)
    return balancer


def start_redis(directory: Path) -> Any:
    """A throwaway redis-server (see integration.redis_server.RedisServer), its log in
    ``directory``."""
    from integration.redis_server import RedisServer  # noqa: PLC0415
    try:
        redis_server = RedisServer(directory)
    except ImportError:
        raise BenchError("the redis package is not importable (pip install "
                         "'pyproxy[redis]')") from None
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None
    _helpers.append(redis_server)
    return redis_server


def stop_helper(helper: Any) -> None:
    """Stop an HAProxy or a Redis started here once its workload is done."""
    helper.stop()
    if helper in _helpers:
        _helpers.remove(helper)


def target_for(server: Any, proxy: PyProxy | None, password: str) -> dict[str, Any]:
    """Where and as whom a client connects: to ``proxy`` when there is one, else directly to
    ``server``."""
    return {"host": "127.0.0.1", "port": proxy.port if proxy else server.port, "user": USER,
            "password": password, "database": DATABASE}


def stop_server(server: Any) -> None:
    """Stop and remove a sandbox server once its workloads are done."""
    server.cleanup()
    _servers.remove(server)


def stop_all() -> None:
    """Stop every pyproxy and remove every sandbox still there: at exit, and on a signal or
    Ctrl-C."""
    for proxy in list(_pyproxies):
        proxy.stop()
    for helper in list(_helpers):
        stop_helper(helper)
    for server in list(_servers):
        try:
            server.cleanup()
        except Exception as exc:  # noqa: BLE001 - go on cleaning the others
            print(f"warning: could not clean up sandbox: {exc}", file=sys.stderr)
    _servers.clear()


class PyProxy:
    """``twistd -n pyproxy`` in front of a sandbox, with its log in ``log_dir``."""

    def __init__(self, name: str, server: Any, password: str, pool_size: int, log_level: str,
                 log_dir: Path, sections: dict[str, dict[str, Any]] | None = None,
                 source: Path | None = None) -> None:
        """``sections`` are merged into the config's tables (``backend`` targets, ``health``);
        a key set to None is left out of the file.  ``source``: a checkout to run pyproxy
        from instead of this one (bench/builds.py: one with the compiled build in place)."""
        self.name = name
        self.source = source
        self.sections = sections or {}
        self.server = server
        self.password = password
        self.pool_size = pool_size
        self.log_level = log_level
        self.config_path = (log_dir / f"{name}.toml").resolve()
        self.log_path = (log_dir / f"{name}.log").resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log_offset = 0
        # The newest pool_stats/pin_summary read from the log (see
        # bench.pyproxy_log.newest_stats).
        self.last_stats: dict[str, Any] | None = None

    def start(self) -> None:
        from pyproxy import sandbox  # noqa: PLC0415
        last = ""
        for _attempt in range(3):  # a free port can be taken before twistd binds it
            self.port = sandbox.free_port()
            config = {
                "proxy": {"listen": f"tcp:{self.port}:interface=127.0.0.1"},
                "backend": {"host": self.server.host, "port": self.server.port,
                            "database": DATABASE},
                "pool": {"max_connections": self.pool_size},
                "log": {"level": self.log_level, "format": "json"},
                "users": [{"name": USER, "password": self.password}],
            }
            for section, values in self.sections.items():
                config[section] = {**config.get(section, {}), **values}
            self.config_path.write_text(sandbox.dump_toml(config))
            env = sandbox.child_env()
            if self.source is not None:
                # Its folder first on the path, and as the working directory, which
                # ``python -c`` puts before everything else.
                env["PYTHONPATH"] = os.pathsep.join((str(self.source), env.get("PYTHONPATH", "")))
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    sandbox.twistd_command(self.config_path), env=env, cwd=self.source,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            _pyproxies.append(self)
            try:
                if self.sections.get("proxy", {}).get("proxy_protocol"):
                    # It greets only clients behind a PROXY header: the workload checks
                    # logins through its balancer (wait_ready with the balancer's port).
                    self._wait_listening()
                else:
                    self.wait_ready()
                self._log_offset = self.log_path.stat().st_size
                return
            except BenchError as exc:
                last = str(exc)
                self.stop()
                if "cannot listen" not in last:
                    break
        raise BenchError(last)

    def wait_ready(self, port: int | None = None, timeout: float = 30.0) -> None:
        """Until a client logs in and runs a statement through ``port`` (pyproxy's own by
        default; a balancer's frontend that leads only to this pyproxy otherwise)."""
        import pymysql  # noqa: PLC0415
        error: Exception | None = None

        def logs_in() -> bool:
            nonlocal error
            try:
                conn = pymysql.connect(host="127.0.0.1", port=port or self.port, user=USER,
                                       password=self.password, database=DATABASE,
                                       autocommit=True, connect_timeout=2, read_timeout=5)
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                conn.close()
                return True
            except pymysql.err.MySQLError as exc:
                error = exc
                return False

        if not self._wait_for(logs_in, timeout):
            raise BenchError(f"pyproxy ({self.name}) did not accept logins within {timeout:g}s "
                             f"(last error: {error}); tail of {self.log_path}:\n{self.tail()}")

    def _wait_listening(self, timeout: float = 30.0) -> None:
        def listens() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        if not self._wait_for(listens, timeout):
            raise BenchError(f"pyproxy ({self.name}) did not listen within {timeout:g}s; "
                             f"tail of {self.log_path}:\n{self.tail()}")

    def _wait_for(self, ready: Any, timeout: float) -> bool:
        """Whether ``ready()`` came true within ``timeout``; pyproxy exiting meanwhile is a
        BenchError saying so."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise BenchError(f"pyproxy ({self.name}) exited with code {code}; "
                                 f"tail of {self.log_path}:\n{self.tail()}")
            if ready():
                return True
            time.sleep(0.1)
        return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def new_log_lines(self) -> list[str]:
        """Log lines written since the previous call (or since start)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return []
        # A line still being written is left for the next call.
        data = data[:data.rfind(b"\n") + 1]
        self._log_offset += len(data)
        return data.decode(errors="replace").splitlines()

    def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self in _pyproxies:
            _pyproxies.remove(self)
        return process.returncode
