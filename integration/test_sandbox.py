"""SandboxServer against a real mariadbd: the throwaway server every other integration test uses."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from pyproxy import sandbox
from pyproxy.sandbox import ProgramNotFound, SandboxError, SandboxServer


def _have_mariadbd() -> bool:
    try:
        sandbox.find_program("mariadbd")
    except ProgramNotFound:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _have_mariadbd(), reason="mariadbd is not installed (scripts/install-deps installs it)"
)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    """One sandbox for the module; tests that stop or kill it leave it running."""
    srv = SandboxServer(max_connections=23, extra_args=["--wait-timeout=77"])
    srv.start()
    yield srv
    srv.cleanup()


def _scalar(conn: pymysql.connections.Connection, sql: str) -> object:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_start_and_connect_as_root(server: SandboxServer) -> None:
    """start() returns only once root can log in over the unix socket, on a private folder."""
    assert server.tmpdir is not None and Path(server.socket).parent == server.tmpdir
    conn = server.connect()
    try:
        assert "MariaDB" in str(_scalar(conn, "SELECT VERSION()"))
        assert _scalar(conn, "SELECT CURRENT_USER()") == "root@localhost"
        assert _scalar(conn, "SELECT @@port") == server.port
        assert _scalar(conn, "SELECT @@socket") == server.socket
    finally:
        conn.close()


def test_max_connections_and_extra_args_applied(server: SandboxServer) -> None:
    """max_connections and extra server args reach mariadbd's command line."""
    conn = server.connect()
    try:
        assert _scalar(conn, "SELECT @@max_connections") == 23
        assert _scalar(conn, "SELECT @@global.wait_timeout") == 77
    finally:
        conn.close()


def test_create_user_then_log_in_over_tcp(server: SandboxServer) -> None:
    """create_user makes an account usable over TCP with its database; wrong passwords fail."""
    server.create_user("alice", "s3cret", database="alice_db")
    conn = pymysql.connect(host=server.host, port=server.port, user="alice",
                           password="s3cret", database="alice_db")
    try:
        assert _scalar(conn, "SELECT CURRENT_USER()") == "alice@%"
        assert _scalar(conn, "SELECT DATABASE()") == "alice_db"
    finally:
        conn.close()
    server.create_user("alice", "changed")  # replacing a user must work too
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql.connect(host=server.host, port=server.port, user="alice", password="s3cret")
    assert info.value.args[0] == 1045  # access denied


def test_create_user_with_ed25519(server: SandboxServer) -> None:
    """plugin="ed25519" loads the plugin on demand, so auth tests can use it."""
    server.create_user("edna", "pw", plugin="ed25519")
    conn = server.connect()
    try:
        plugin = _scalar(conn, "SELECT plugin FROM mysql.user WHERE user = 'edna' AND host = '%'")
    finally:
        conn.close()
    assert plugin == "ed25519"


def test_restart_keeps_port_and_data(server: SandboxServer) -> None:
    """restart() comes back on the same port with the same datadir."""
    port = server.port
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS keep")
            cur.execute("CREATE OR REPLACE TABLE keep.t (v INT) ENGINE=InnoDB")
            cur.execute("INSERT INTO keep.t VALUES (42)")
    finally:
        conn.close()
    server.restart()
    assert server.port == port and server.is_running()
    conn = server.connect()
    try:
        assert _scalar(conn, "SELECT v FROM keep.t") == 42
    finally:
        conn.close()


def test_kill_then_start(server: SandboxServer) -> None:
    """After kill() (a crash) the server refuses connections; start() recovers committed data."""
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS crash")
            cur.execute("CREATE OR REPLACE TABLE crash.t (v INT) ENGINE=InnoDB")
            cur.execute("INSERT INTO crash.t VALUES (7)")
    finally:
        conn.close()
    server.kill()
    assert not server.is_running()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=server.host, port=server.port, user="root", connect_timeout=2)
    server.start()
    conn = server.connect()
    try:
        assert _scalar(conn, "SELECT v FROM crash.t") == 7
    finally:
        conn.close()


def test_failed_start_reports_error_log() -> None:
    """A server that cannot start raises quickly, quoting the end of its error log."""
    srv = SandboxServer(extra_args=["--no-such-option-for-mariadbd"])
    try:
        with pytest.raises(SandboxError, match="no-such-option-for-mariadbd"):
            srv.start()
    finally:
        srv.cleanup()


def test_cleanup_removes_everything() -> None:
    """cleanup() stops the server and removes its folder; two sandboxes get different ports."""
    first, second = SandboxServer(), SandboxServer()
    with first, second:
        assert first.port != second.port
        tmpdir = first.tmpdir
        assert tmpdir is not None and tmpdir.exists()
    assert not first.is_running() and not tmpdir.exists()


def test_run_command_prepares_sandbox_for_pyproxy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`python -m pyproxy.sandbox run` writes a config whose user and database work, runs the
    proxy command, returns its exit code and removes the sandbox afterwards."""
    report = tmp_path / "seen.txt"
    check = textwrap.dedent(f"""
        import sys, tomllib, pymysql
        path = sys.argv[sys.argv.index("--config") + 1]
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
        user = cfg["users"][0]
        conn = pymysql.connect(host=cfg["backend"]["host"], port=cfg["backend"]["port"],
                               user=user["name"], password=user["password"],
                               database=cfg["backend"]["database"])
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), DATABASE()")
            row = cur.fetchone()
        open({str(report)!r}, "w").write(" ".join([*row, path, cfg["proxy"]["listen"],
                                                  *sys.argv[1:]]))
        sys.exit(3)
    """)

    def fake_twistd(config_path, runner_args=(), plugin_args=()):
        return [sys.executable, "-c", check, *runner_args, "--config", str(config_path),
                *plugin_args]

    monkeypatch.delenv("PYPROXY_BACKEND_HOST", raising=False)
    monkeypatch.setattr(sandbox, "twistd_command", fake_twistd)
    code = sandbox.main(["run", "--listen", "tcp:16033:interface=127.0.0.1",
                         "--", "--log-level=debug", "pyproxy", "--extra"])
    assert code == 3
    user, database, config_path, listen, *argv = report.read_text().split(" ")
    assert (user, database, listen) == ("app@%", "app", "tcp:16033:interface=127.0.0.1")
    assert argv == ["--log-level=debug", "--config", config_path, "--extra"]
    assert not Path(config_path).exists()  # the sandbox folder is gone
