"""The launcher, ``twistd pyproxy``: its help, and how it refuses to start.

Start-up problems must end the process before it listens: a non-zero exit, exactly one line on
stderr that says what is wrong, and no traceback anywhere (``--nodaemon`` logs to stdout).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

import pyproxy
from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from pyproxy.sandbox import child_env, dump_toml, free_port, twistd_command

pytestmark = pytest.mark.usefixtures("bounded")

EXIT_TIMEOUT = 30


def launcher_env() -> dict[str, str]:
    # As servers.start_proxy does: the config file is the whole truth.
    return {k: v for k, v in child_env().items() if not k.startswith("PYPROXY_")}


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "pyproxy.toml"
    path.write_text(dump_toml(config))
    return path


def base_config(db_server: servers.DbServer, port: int | None = None) -> dict[str, Any]:
    return servers.proxy_config(db_server, f"tcp:{port or free_port()}:interface=127.0.0.1")


def config_with_accounts(db_server: servers.DbServer, port: int | None = None) -> dict[str, Any]:
    """``base_config`` whose accounts exist on the server, for tests that get past
    start-up's login check."""
    db_server.create_user(servers.APP_USER, servers.APP_PASSWORD, database=servers.APP_DATABASE)
    db_server.create_user(servers.MONITOR_USER, servers.MONITOR_PASSWORD)
    return base_config(db_server, port)


def run_to_exit(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``twistd --nodaemon pyproxy --config FILE ARGS`` until it exits (it must)."""
    return subprocess.run(twistd_command(config_path, (), args), capture_output=True, text=True,
                          timeout=EXIT_TIMEOUT, env=launcher_env(), cwd=config_path.parent,
                          stdin=subprocess.DEVNULL, check=False)


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, one stderr line containing every needle, no traceback anywhere."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line


def run_plugin_option(option: str) -> subprocess.CompletedProcess[str]:
    """``twistd pyproxy OPTION`` alone (twistd_command always puts "--config FILE" first)."""
    cmd = twistd_command("unused.toml")
    cmd = cmd[:cmd.index("pyproxy") + 1] + [option]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=EXIT_TIMEOUT,
                          env=launcher_env(), stdin=subprocess.DEVNULL, check=False)


def test_help_documents_config() -> None:
    result = run_plugin_option("--help")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    help_text = result.stdout
    assert "--config=" in help_text, help_text
    assert "TOML configuration file" in help_text
    for option in ("--listen=", "--backend-host=", "--backend-port=", "--backend-database=",
                   "--max-connections=", "--log-level=", "--no-backend-check"):
        assert option in help_text, option
    assert "PYPROXY_" in help_text  # says where else settings come from


def test_version() -> None:
    """``twistd --version`` is Twisted's; ``twistd pyproxy --version`` is pyproxy's."""
    result = run_plugin_option("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pyproxy {pyproxy.__version__}"


@pytest.mark.parametrize(("section", "key", "named"), [
    ("pool", "max_conections", "pool.max_conections"),
    ("backend", "hostname", "backend.hostname"),
    ("users", "passwd", "users[0].passwd"),
    ("poool", "max_connections", "poool"),
])
def test_unknown_config_key(db_server: servers.DbServer, tmp_path: Path, section: str, key: str,
                            named: str) -> None:
    config = base_config(db_server)
    if section == "users":
        config["users"][0][key] = "x"
    else:
        config.setdefault(section, {})[key] = 5
    result = run_to_exit(write_config(tmp_path, config))
    assert_refused(result, named)


def test_bad_config_value_names_the_key(db_server: servers.DbServer, tmp_path: Path) -> None:
    config = base_config(db_server)
    config["pool"]["max_connections"] = -3
    result = run_to_exit(write_config(tmp_path, config))
    assert_refused(result, "pool.max_connections", "-3")


@pytest.mark.parametrize("listen", ["bogus:1", "tcp:notaport"])
def test_bad_listen_endpoint_names_the_key(db_server: servers.DbServer, tmp_path: Path,
                                           listen: str) -> None:
    config = base_config(db_server)
    config["proxy"]["listen"] = listen
    assert_refused(run_to_exit(write_config(tmp_path, config)), "proxy.listen", listen)
    # The same through the command line, which overrides the file.
    result = run_to_exit(write_config(tmp_path, base_config(db_server)), "--listen", listen)
    assert_refused(result, "proxy.listen", listen)


def test_read_only_listener_on_the_listen_port(db_server: servers.DbServer, tmp_path: Path) -> None:
    port = free_port()
    config = config_with_accounts(db_server, port)
    config["proxy"]["read_only_listen"] = f"tcp:{port}:interface=127.0.0.1"
    line = assert_refused(run_to_exit(write_config(tmp_path, config)), "proxy.read_only_listen",
                          str(port), "in use")
    assert "proxy.listen is on that port" in line, line


def test_misspelled_environment_variable(db_server: servers.DbServer, tmp_path: Path) -> None:
    """A PYPROXY_<SECTION>_ variable that names no key is refused like a misspelled file key;
    the test suite's own PYPROXY_TEST_* variables are not configuration."""
    path = write_config(tmp_path, base_config(db_server))
    env = {**launcher_env(), "PYPROXY_POOL_MAX_CONECTIONS": "5", "PYPROXY_TEST_ANYTHING": "x"}
    result = subprocess.run(twistd_command(path), capture_output=True, text=True,
                            timeout=EXIT_TIMEOUT, env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, check=False)
    assert_refused(result, "PYPROXY_POOL_MAX_CONECTIONS")


def test_wrong_backend_password(db_server: servers.DbServer, tmp_path: Path) -> None:
    """A password the server refuses stops start-up with the server's own error, instead
    of probes that say only probe_inconclusive while every client fails."""
    config = config_with_accounts(db_server)
    config["users"][0]["password"] = "not-" + servers.APP_PASSWORD
    line = assert_refused(run_to_exit(write_config(tmp_path, config)),
                          f"user '{servers.APP_USER}'", "1045")
    assert "not-" + servers.APP_PASSWORD not in line
    config = base_config(db_server)
    config["health"]["password"] = "wrong"
    assert_refused(run_to_exit(write_config(tmp_path, config)),
                   f"[health] user '{servers.MONITOR_USER}'", "1045")


def test_backend_iam_without_tls_refuses_to_start(db_server: servers.DbServer, tmp_path: Path) -> None:
    """[backend] iam sends RDS tokens as mysql_clear_password: without TLS to the server
    pyproxy does not start, and says why in one line."""
    config = config_with_accounts(db_server)
    config["backend"]["iam"] = True
    assert_refused(run_to_exit(write_config(tmp_path, config)), "backend.iam", "TLS")


def test_hash_only_user_and_no_probe_account(db_server: servers.DbServer, tmp_path: Path) -> None:
    """A [[users]] entry with only a password_hash cannot be logged in as at start (nothing
    gives its SHA1(password) before a client does): without [health] user the probes would
    have no account, which stops start-up in one line."""
    config = config_with_accounts(db_server)
    config["users"][0] = {"name": servers.APP_USER, "password_hash": "*" + "A" * 40}
    del config["health"]["user"], config["health"]["password"]
    assert_refused(run_to_exit(write_config(tmp_path, config)), "health.user")


@pytest.mark.parametrize("value", [918273645, 6.02214076, True, ["hunter2-list"],
                                   {"inner": "hunter2-table"}])
def test_bad_password_is_never_echoed(db_server: servers.DbServer, tmp_path: Path,
                                      value: object) -> None:
    config = base_config(db_server)
    config["users"][0]["password"] = value
    result = run_to_exit(write_config(tmp_path, config))
    line = assert_refused(result, "users[0].password")
    for needle in ("918273645", "6.02214076", "True", "true", "hunter2"):
        assert needle not in result.stdout + result.stderr, line


def test_listening_port_taken_by_another_pyproxy(make_proxy: Any, tmp_path: Path) -> None:
    running = make_proxy()
    result = run_to_exit(write_config(tmp_path, running.config))
    line = assert_refused(result, str(running.port))
    assert "in use" in line.lower() or "cannot listen" in line.lower(), line
    assert running.process.poll() is None  # the first one is untouched
    conn = running.connect()
    conn.close()


def test_listening_port_taken_command_line_override(db_server: servers.DbServer,
                                                    tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_to_exit(write_config(tmp_path, config_with_accounts(db_server)),
                             "--listen", f"tcp:{port}:interface=127.0.0.1")
    assert_refused(result, str(port), "in use")


def test_unreachable_backend(db_server: servers.DbServer, tmp_path: Path) -> None:
    config = base_config(db_server)
    closed = free_port()
    config["backend"]["port"] = closed
    result = run_to_exit(write_config(tmp_path, config))
    assert_refused(result, f"127.0.0.1:{closed}", "refused")


def test_unreachable_backend_command_line_override(db_server: servers.DbServer,
                                                   tmp_path: Path) -> None:
    closed = free_port()
    result = run_to_exit(write_config(tmp_path, base_config(db_server)),
                         "--backend-port", str(closed))
    assert_refused(result, f"127.0.0.1:{closed}")


@pytest.fixture
def silent_backend() -> Iterator[int]:
    """A port that accepts connections and closes them without a greeting."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_backend_that_is_not_a_mysql_server(db_server: servers.DbServer, tmp_path: Path,
                                            silent_backend: int) -> None:
    config = base_config(db_server)
    config["backend"]["port"] = silent_backend
    result = run_to_exit(write_config(tmp_path, config))
    assert_refused(result, f"127.0.0.1:{silent_backend}")


# --- listening endpoints pyproxy must accept ---------------------------------------------------


def start_and_login(config_path: Path, host: str, port: int, family: int = socket.AF_INET,
                    timeout: float = 20) -> str:
    """Starts pyproxy, waits until ``host:port`` accepts, logs in once; returns the log."""
    process = subprocess.Popen(twistd_command(config_path), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=launcher_env(),
                               cwd=config_path.parent, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                raise AssertionError(f"pyproxy exited with {process.returncode}: {output}")
            try:
                with socket.socket(family) as probe:
                    probe.settimeout(1)
                    probe.connect((host, port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"pyproxy did not listen on {host}:{port}")
        conn = pymysql.connect(host=host, port=port, user=drivers.APP_USER,
                               password=drivers.APP_PASSWORD, database=drivers.APP_DATABASE,
                               connect_timeout=5, read_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
        finally:
            conn.close()
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.stdout.read().decode(errors="replace") if process.stdout else ""


def test_listen_endpoint_with_keyword_arguments(db_server: servers.DbServer,
                                                tmp_path: Path) -> None:
    port = free_port()
    db_server.create_user(drivers.APP_USER, drivers.APP_PASSWORD, database=drivers.APP_DATABASE)
    config = servers.proxy_config(db_server, f"tcp:interface=127.0.0.1:port={port}")
    start_and_login(write_config(tmp_path, config), "127.0.0.1", port)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_listen_on_ipv6_loopback_while_ipv4_port_is_taken(db_server: servers.DbServer,
                                                          tmp_path: Path) -> None:
    db_server.create_user(drivers.APP_USER, drivers.APP_PASSWORD, database=drivers.APP_DATABASE)
    with socket.socket() as ipv4:
        ipv4.bind(("127.0.0.1", 0))
        ipv4.listen()
        port = ipv4.getsockname()[1]
        config = servers.proxy_config(db_server, f"tcp:{port}:interface=\\:\\:1")
        start_and_login(write_config(tmp_path, config), "::1", port, socket.AF_INET6)


def test_users_from_the_lookup_alone(db_server: servers.DbServer, tmp_path: Path) -> None:
    """No [[users]] at all: pyproxy starts (checking the lookup account's login) and the
    application's user, known only to the server, logs in and runs a statement."""
    config = config_with_accounts(db_server, free_port())
    lookup_user = servers.own_name("cli_lookup")
    db_server.create_user(lookup_user, "cli-lookup-pw")
    conn = db_server.connect()
    try:
        with conn.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@%s", (lookup_user, host))
                cur.execute("GRANT SELECT ON mysql.user TO %s@%s", (lookup_user, host))
    finally:
        conn.close()
    del config["users"]
    config["auth"] = {"lookup": True, "lookup_user": lookup_user, "lookup_password": "cli-lookup-pw"}
    host, port = servers.endpoint_address(config["proxy"]["listen"])
    log = start_and_login(write_config(tmp_path, config), host, int(port))
    assert "user_looked_up" in log and "cli-lookup-pw" not in log
