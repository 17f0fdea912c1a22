"""Throwaway MariaDB servers for tests, demos and benchmarks.

A :class:`SandboxServer` runs a private ``mariadbd`` on a free 127.0.0.1 port with its own datadir,
unix socket and pid file in a temporary folder, so it never touches (or needs) a system MariaDB.
Running ``mariadb-install-db`` takes about a second, so each process initialises one template
datadir and copies it for every sandbox.

The command line starts a sandbox and pyproxy in front of it, for trying pyproxy out::

    python -m pyproxy.sandbox run [--listen tcp:6033:interface=127.0.0.1] [-- EXTRA ARGS]

It creates a database ``app`` and a user ``app`` with a random password, writes a pyproxy config
(with the Prometheus page on a free port) into the sandbox folder, prints how to connect and
where the metrics are, runs ``twistd -n pyproxy --config FILE`` in
the foreground and removes the sandbox when that exits. EXTRA ARGS after ``--`` go after
``pyproxy --config FILE`` (pyproxy options); to pass options to the Twisted runner itself, put
them before a literal ``pyproxy``: ``-- --log-level=debug pyproxy --some-pyproxy-option``.

If ``PYPROXY_BACKEND_HOST`` is set, the user has configured a backend of their own: no sandbox is
started, and pyproxy is run with ``--config FILE`` only if one is given.

Only the standard library, PyMySQL, attrs and structlog are used, so this module ships with pyproxy.
"""

from __future__ import annotations

import argparse
import atexit
import math
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pymysql
import structlog

log = structlog.get_logger(__name__)

#: Where distributions put mariadbd when it is not on PATH.
_SEARCH_DIRS = ("/usr/sbin", "/usr/libexec", "/usr/local/sbin", "/usr/local/bin", "/usr/bin")

#: A small redo log keeps each copied datadir at ~30 MB instead of ~120 MB; the server must be
#: started with the same value the template was initialised with.
_INNODB_LOG_FILE_SIZE = "--innodb-log-file-size=16M"

#: unix socket paths longer than this fail to bind (sun_path is 108 bytes on Linux).
_MAX_SOCKET_PATH = 100

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]+$")


class SandboxError(RuntimeError):
    """The throwaway server could not be prepared, started or stopped."""


class ProgramNotFound(SandboxError):
    """The MariaDB server binaries are not installed, so no sandbox can run here at all."""


def find_program(*names: str) -> str:
    """Return the path of the first of ``names`` found on PATH or in the usual sbin/libexec dirs.

    Raises:
        ProgramNotFound: none of the names exists; the message says what to install.
    """
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for directory in _SEARCH_DIRS:
            candidate = Path(directory, name)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ProgramNotFound(
        f"none of {', '.join(names)} found on PATH or in {', '.join(_SEARCH_DIRS)}; "
        "install MariaDB server binaries (scripts/install-deps does)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    Binding port 0 lets the kernel choose; another process may still take the port before the
    caller binds it, which is acceptable for tests and demos.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def terminate(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM a helper process (HAProxy, Redis, a relay) and wait; SIGKILL if it takes more
    than ``timeout`` seconds, so that stopping one never hangs a test or a benchmark."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(path: str | Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a text file, or a note if it cannot be read."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def create_user_on(
    conn: pymysql.connections.Connection,
    name: str,
    password: str,
    plugin: str = "mysql_native_password",
    database: str | None = None,
) -> None:
    """Create ``name``@'%' and ``name``@'localhost' with all privileges, replacing earlier ones.

    Works on MariaDB and MySQL, whose CREATE USER syntax for auth plugins differs. Shared by the
    sandbox and the integration-test server providers.

    Args:
        conn: a connection with CREATE USER and GRANT privileges.
        plugin: authentication plugin; ``ed25519`` is loaded on MariaDB when missing.
        database: when given, ``CREATE DATABASE IF NOT EXISTS`` this database too.
    """
    if not _IDENTIFIER.match(plugin):
        raise ValueError(f"not an auth plugin name: {plugin!r}")
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        is_mariadb = "mariadb" in str(cur.fetchone()[0]).lower()
        if is_mariadb and plugin == "ed25519":
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PLUGINS"
                " WHERE PLUGIN_NAME = 'ed25519' AND PLUGIN_STATUS = 'ACTIVE'"
            )
            if not cur.fetchone()[0]:
                cur.execute("INSTALL SONAME 'auth_ed25519'")
        if is_mariadb:
            identified = f"IDENTIFIED VIA {plugin} USING PASSWORD(%s)"
        else:
            identified = f"IDENTIFIED WITH {plugin} BY %s"
        for host in ("%", "localhost"):
            cur.execute("DROP USER IF EXISTS %s@%s", (name, host))
            cur.execute(f"CREATE USER %s@%s {identified}", (name, host, password))
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s", (name, host))
        if database:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {_quote_identifier(database)}")
    conn.commit()


# --- template datadir, one per process ------------------------------------------------------

_template_lock = threading.Lock()
_templates: dict[tuple[str, str], Path] = {}


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _template_datadir(install_db: str, mariadbd: str) -> Path:
    """Return an initialised datadir to copy, running install-db only once per process."""
    key = (install_db, mariadbd)
    with _template_lock:
        if key in _templates:
            return _templates[key]
        base = Path(tempfile.mkdtemp(prefix="pyproxy-sandbox-template-"))
        atexit.register(shutil.rmtree, base, True)
        datadir = base / "data"
        cmd = [
            install_db,
            "--no-defaults",
            f"--datadir={datadir}",
            f"--user={_current_user()}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            _INNODB_LOG_FILE_SIZE,
        ]
        started = time.monotonic()
        result = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
        )
        if result.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            output = "\n".join(result.stdout.splitlines()[-30:])
            raise SandboxError(
                f"{shlex.join(cmd)} failed with exit code {result.returncode}:\n{output}"
            )
        log.debug("sandbox.template_ready", datadir=str(datadir),
                  seconds=round(time.monotonic() - started, 2))
        _templates[key] = datadir
        return datadir


# --- the server -----------------------------------------------------------------------------

_live_servers: set[SandboxServer] = set()


def _cleanup_live_servers() -> None:
    """Do not leave mariadbd processes behind when a test run forgets cleanup()."""
    for server in list(_live_servers):
        server.cleanup()


atexit.register(_cleanup_live_servers)


@attrs.define(eq=False)
class SandboxServer:
    """A private mariadbd on 127.0.0.1, for tests and demos; never the system server.

    Everything lives in one temporary folder (``tmpdir``): ``data/``, ``mariadbd.sock``,
    ``mariadbd.pid`` and ``error.log`` (the server's stderr). The folder, port and datadir are
    chosen on the first ``start()`` and kept by ``restart()`` and ``kill()`` + ``start()``.
    Root connects over the unix socket without a password.

    Attributes:
        max_connections: the server's ``--max-connections``.
        flavor: always "mariadb"; the integration-test providers also have it.
        extra_args: more mariadbd options, appended last so they win over the defaults.
        port: TCP port; 0 picks a free one on the first start.
        start_timeout: seconds ``start()`` waits for the server to accept connections.
        base_dir: parent of the temporary folder (default: the system temp dir).
    """

    flavor: ClassVar[str] = "mariadb"

    max_connections: int = 151
    extra_args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    port: int = 0
    start_timeout: float = 30.0
    base_dir: str | None = None
    # PEM files for the server's own TLS (mariadbd --ssl-cert, --ssl-key,
    # --ssl-ca); "" leaves TLS off, as MariaDB 10.x starts without them.
    ssl_cert: str = ""
    ssl_key: str = ""
    ssl_ca: str = ""
    host: str = attrs.field(default="127.0.0.1", init=False)
    tmpdir: Path | None = attrs.field(default=None, init=False)
    socket: str = attrs.field(default="", init=False)
    datadir: Path | None = attrs.field(default=None, init=False)
    pid_file: Path | None = attrs.field(default=None, init=False)
    error_log: Path | None = attrs.field(default=None, init=False)
    _process: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False, repr=False)

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def _prepare(self) -> None:
        """Create the folder and copy the template datadir, once per sandbox."""
        if self.tmpdir is not None:
            return
        mariadbd = find_program("mariadbd")
        install_db = find_program("mariadb-install-db", "mysql_install_db")
        template = _template_datadir(install_db, mariadbd)
        tmpdir = Path(tempfile.mkdtemp(prefix="pyproxy-sandbox-", dir=self.base_dir))
        if len(str(tmpdir / "mariadbd.sock")) > _MAX_SOCKET_PATH:
            # A deep TMPDIR would make the socket path too long to bind.
            shutil.rmtree(tmpdir)
            tmpdir = Path(tempfile.mkdtemp(prefix="pyproxy-sandbox-", dir="/tmp"))
        self.tmpdir = tmpdir
        self.datadir = tmpdir / "data"
        self.socket = str(tmpdir / "mariadbd.sock")
        self.pid_file = tmpdir / "mariadbd.pid"
        self.error_log = tmpdir / "error.log"
        shutil.copytree(template, self.datadir)
        # The server's temporary files (internal temporary tables, filesort) in
        # its own folder: in the shared /tmp anything that cleans it up breaks
        # a running statement ("Error on delete of '/tmp/#sql-temptable-...'").
        (tmpdir / "tmp").mkdir()
        if not self.port:
            self.port = free_port(self.host)
        _live_servers.add(self)

    def command(self) -> list[str]:
        """Return the mariadbd command line (``--no-defaults`` must come first)."""
        return [
            find_program("mariadbd"),
            "--no-defaults",
            f"--user={_current_user()}",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir / 'tmp'}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket}",
            f"--pid-file={self.pid_file}",
            "--skip-name-resolve",
            _INNODB_LOG_FILE_SIZE,
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--max-allowed-packet=64M",
            f"--max-connections={self.max_connections}",
            *(f"--{option}={path}" for option, path in (("ssl-cert", self.ssl_cert), ("ssl-key", self.ssl_key),
                                                          ("ssl-ca", self.ssl_ca)) if path),
            *self.extra_args,
        ]

    def is_running(self) -> bool:
        """Return whether the mariadbd process started by this object is still alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start mariadbd and wait until root can connect; no-op if already running.

        Raises:
            SandboxError: the server exited or did not accept connections within
                ``start_timeout``; the message ends with the tail of ``error.log``.
        """
        if self.is_running():
            return
        self._prepare()
        assert self.error_log is not None
        cmd = self.command()
        with open(self.error_log, "ab") as err:
            # Own session: a Ctrl-C meant for the parent must not kill the server uncleanly.
            self._process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
            )
        log.info("sandbox.starting", port=self.port, tmpdir=str(self.tmpdir),
                 pid=self._process.pid)
        self._wait_ready()
        log.info("sandbox.started", port=self.port, socket=self.socket)

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise SandboxError(
                    f"mariadbd exited with code {code} while starting; "
                    f"tail of {self.error_log}:\n{tail(self.error_log)}"
                )
            try:
                self.connect(connect_timeout=2).close()
                return
            except pymysql.err.OperationalError as exc:
                last_error = exc
                time.sleep(0.05)
        self.kill()
        raise SandboxError(
            f"mariadbd did not accept connections within {self.start_timeout}s "
            f"(last error: {last_error}); tail of {self.error_log}:\n{tail(self.error_log)}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly (SIGTERM) and wait; SIGKILL if it takes too long."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("sandbox.stop_timeout", port=self.port, timeout=timeout)
                process.kill()
                process.wait()
        self._process = None
        log.info("sandbox.stopped", port=self.port)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; ``start()`` then runs InnoDB recovery."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._process = None
        log.info("sandbox.killed", port=self.port)

    def restart(self) -> None:
        """Stop cleanly and start again on the same port with the same datadir."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its temporary folder; a later start() begins afresh."""
        try:
            self.stop()
        finally:
            _live_servers.discard(self)
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = self.datadir = self.pid_file = self.error_log = None
            self.socket = ""

    def connect(self, **kwargs: Any) -> pymysql.connections.Connection:
        """Return a PyMySQL connection as root over the unix socket; ``kwargs`` override.

        Autocommit is on by default, since this connection is meant for setting things up.
        """
        if not self.socket:
            raise SandboxError("the sandbox has not been started")
        params: dict[str, Any] = {
            "unix_socket": self.socket,
            "user": "root",
            "password": "",
            "autocommit": True,
            "connect_timeout": 5,
        }
        params.update(kwargs)
        return pymysql.connect(**params)

    def create_user(
        self,
        name: str,
        password: str,
        plugin: str = "mysql_native_password",
        database: str | None = None,
    ) -> None:
        """Create ``name``@'%' and @'localhost' with ALL privileges (and ``database`` if given)."""
        conn = self.connect()
        try:
            create_user_on(conn, name, password, plugin=plugin, database=database)
        finally:
            conn.close()


# --- pyproxy config and launching -----------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(value: str) -> str:
    out = ['"']
    for char in value:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value: {value!r}")


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(item, Mapping) for item in value)
    )


def _dump_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    for key, value in table.items():
        if value is None or isinstance(value, Mapping) or _is_table_array(value):
            continue
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        if isinstance(value, Mapping):
            sub = [*path, _toml_key(key)]
            lines.extend(["", f"[{'.'.join(sub)}]"])
            _dump_table(value, sub, lines)
        elif _is_table_array(value):
            sub = [*path, _toml_key(key)]
            for item in value:
                lines.extend(["", f"[[{'.'.join(sub)}]]"])
                _dump_table(item, sub, lines)


def dump_toml(data: Mapping[str, Any]) -> str:
    """Write nested dicts as TOML, enough for pyproxy configs (no extra dependency).

    Handles str, int, float, bool, lists of those, tables and arrays of tables; keys whose
    value is None are left out, since TOML has no null.
    """
    lines: list[str] = []
    _dump_table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def twistd_command(
    config_path: str | os.PathLike[str],
    runner_args: Sequence[str] = (),
    plugin_args: Sequence[str] = (),
) -> list[str]:
    """Return ``twistd -n pyproxy --config FILE`` run by this very interpreter.

    ``twistd`` is started through its ``run()`` so the same Python (and its
    packages) runs pyproxy whatever is first on PATH; ``--pidfile=`` lets
    several instances share a working directory.
    """
    return [
        sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=", *runner_args,
        "pyproxy", "--config", os.fspath(config_path), *plugin_args,
    ]


def child_env() -> dict[str, str]:
    """Return os.environ, with this source checkout first on PYTHONPATH when run from one.

    A child ``twistd`` then runs this checkout's pyproxy and finds its plugin in
    ``twisted/plugins/`` here, even when another copy of pyproxy is installed (a second
    worktree, say) or none is.
    """
    env = dict(os.environ)
    root = Path(__file__).resolve().parent.parent
    if (root / "setup.cfg").is_file() and (root / "twisted" / "plugins").is_dir():
        paths = [str(root), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def run_foreground(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``cmd`` until it exits, passing SIGINT and SIGTERM on; return its exit code.

    The child gets its own session so a terminal Ctrl-C reaches it only through us, once. Both
    signals arrive as SIGTERM: a child started from a background job inherits an ignored
    SIGINT, and Twisted then installs no SIGINT handler.
    """
    child = subprocess.Popen(list(cmd), env=env, start_new_session=True)
    forwarded = False

    def forward(signum: int, frame: object) -> None:
        nonlocal forwarded
        if child.poll() is None:
            forwarded = True
            child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
        if forwarded and code == -signal.SIGTERM:
            return 0  # stopped as asked (twistd exits on the signal that stopped it)
        return 128 - code if code < 0 else code  # shell convention for "killed by signal"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            child.kill()
            child.wait()


def sandbox_config(
    server: SandboxServer, listen: str, user: str, password: str, database: str,
    metrics_listen: str = "", admin_listen: str = "", admin_password: str = "",
) -> dict[str, Any]:
    """Return a pyproxy config (as dicts) for a proxy in front of ``server``; with
    ``admin_listen``, its admin console there, as user ``admin``."""
    admin = {"listen": admin_listen, "user": "admin", "password": admin_password} if admin_listen else {}
    return {
        "proxy": {"listen": listen},
        "metrics": {"listen": metrics_listen},
        **({"admin": admin} if admin else {}),
        "backend": {
            "host": server.host,
            "port": server.port,
            "database": database,
            "connect_timeout": 10,
        },
        "pool": {
            "max_connections": max(1, server.max_connections - 10),
            "min_idle": 0,
            "borrow_timeout": 120,
            "max_lifetime": 3600,
            "idle_timeout": 600,
        },
        "health": {"interval": 10},
        "log": {"level": "info", "format": "auto"},
        "users": [{"name": user, "password": password}],
    }


def endpoint_address(listen: str) -> tuple[str, str] | None:
    """Return (host, port) from a ``tcp:PORT[:interface=HOST]`` endpoint, else None."""
    parts = listen.split(":")
    if len(parts) < 2 or parts[0] != "tcp" or not parts[1].isdigit():
        return None
    host = "127.0.0.1"
    for part in parts[2:]:
        if part.startswith("interface="):
            host = part.split("=", 1)[1] or host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, parts[1]


def _split_extra(extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split args after ``--`` into (runner args, pyproxy args) at a literal ``pyproxy``."""
    if "pyproxy" in extra:
        index = list(extra).index("pyproxy")
        return list(extra[:index]), list(extra[index + 1:])
    return [], list(extra)


def _print_banner(server: SandboxServer, listen: str, password: str, config_path: Path,
                  metrics_listen: str = "", admin_listen: str = "", admin_password: str = "") -> None:
    address = endpoint_address(listen)
    metrics = endpoint_address(metrics_listen)
    admin = endpoint_address(admin_listen)
    pw = shlex.quote(password)
    lines = [
        "",
        "pyproxy sandbox",
        f"  MariaDB (direct): mariadb -S {server.socket} -u root",
        f"                    mariadb -h {server.host} -P {server.port} -u app -p{pw} app",
        f"  pyproxy listens:  {listen}",
    ]
    if address:
        host, port = address
        lines += [
            f"  connect:          mariadb -h {host} -P {port} -u app -p{pw} app",
            f"  PyMySQL:          pymysql.connect(host={host!r}, port={port}, user='app', "
            f"password={password!r}, database='app')",
        ]
    if metrics:
        lines.append(f"  metrics:          curl -s http://{metrics[0]}:{metrics[1]}/metrics")
    if admin:
        lines.append(f"  admin console:    mariadb -h {admin[0]} -P {admin[1]} -u admin "
                     f"-p{shlex.quote(admin_password)} -e 'SHOW POOLS'")
    lines += [
        f"  config:           {config_path}",
        "Ctrl-C stops pyproxy; the sandbox is then stopped and removed.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    runner_args, plugin_args = _split_extra(extra)
    env = child_env()
    if os.environ.get("PYPROXY_BACKEND_HOST"):
        if args.listen:
            raise SystemExit("--listen needs a sandbox; with PYPROXY_BACKEND_HOST set, "
                             "put [proxy] listen in the config file")
        cmd = [sys.executable, "-m", "twisted", *runner_args, "pyproxy", *plugin_args]
        if args.config:
            cmd = twistd_command(args.config, runner_args, plugin_args)
        print(f"PYPROXY_BACKEND_HOST is set: no sandbox; running {shlex.join(cmd)}", flush=True)
        return run_foreground(cmd, env)
    if args.config:
        raise SystemExit("--config is only used with PYPROXY_BACKEND_HOST; the sandbox writes "
                         "its own config")
    server = SandboxServer(max_connections=args.max_connections)
    try:
        server.start()
        password = secrets.token_urlsafe(12)
        server.create_user("app", password, database="app")
        listen = args.listen or f"tcp:{free_port()}:interface=127.0.0.1"
        metrics_listen = f"tcp:{free_port()}:interface=127.0.0.1"
        admin_listen = f"tcp:{free_port()}:interface=127.0.0.1"
        admin_password = secrets.token_urlsafe(12)
        assert server.tmpdir is not None
        config_path = server.tmpdir / "pyproxy.toml"
        config_path.write_text(
            dump_toml(sandbox_config(server, listen, "app", password, "app", metrics_listen,
                                     admin_listen, admin_password))
        )
        _print_banner(server, listen, password, config_path, metrics_listen, admin_listen, admin_password)
        return run_foreground(twistd_command(config_path, runner_args, plugin_args), env)
    finally:
        server.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pyproxy.sandbox``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, extra = argv[:index], argv[index + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m pyproxy.sandbox",
        description="Throwaway MariaDB server with pyproxy in front, for trying pyproxy out.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="start a sandbox MariaDB and run pyproxy in front of it",
        description=(
            "Start a throwaway mariadbd with database 'app' and user 'app', then run "
            "'twistd -n pyproxy --config FILE' in the foreground. Arguments after '--' "
            "are pyproxy options; those before a literal 'pyproxy' among them go to the Twisted "
            "runner. If PYPROXY_BACKEND_HOST is set, no sandbox is started and pyproxy runs "
            "with --config FILE only if given."
        ),
    )
    run.add_argument("--listen", help="Twisted endpoint for pyproxy "
                     "(default: tcp:<free port>:interface=127.0.0.1)")
    run.add_argument("--config", help="pyproxy config file; only with PYPROXY_BACKEND_HOST")
    run.add_argument("--max-connections", type=int, default=151,
                     help="the sandbox server's max_connections (default: 151)")
    args = parser.parse_args(argv)
    return _run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
