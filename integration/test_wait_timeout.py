"""A client's wait_timeout through pyproxy ends its connection as a direct one's does.

Each test runs the same steps on a direct connection to the test server and on one
through pyproxy, and compares: the statement after the idle time fails with 2006 or
2013 (what a pool's health check relies on), an open transaction is rolled back, a
pinned session's lock is released, and the next client gets a clean connection.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from integration import drivers, servers

# What a driver reports for a connection the server closed while it was idle.
GONE = (2006, 2013)


def direct(db_server: servers.DbServer, **kwargs: Any) -> pymysql.connections.Connection:
    """The app account's PyMySQL connection straight to the server, over TCP as pyproxy's."""
    params: dict[str, Any] = {"host": db_server.host, "port": db_server.port, "user": servers.APP_USER,
                              "password": servers.APP_PASSWORD, "database": servers.APP_DATABASE,
                              "connect_timeout": 5, "autocommit": True}
    params.update(kwargs)
    return pymysql.connect(**params)


def sides(proxy: servers.ProxyProcess, db_server: servers.DbServer) -> dict[str, Callable[..., Any]]:
    def through_pyproxy(**kwargs: Any) -> pymysql.connections.Connection:
        return proxy.connect(**{"autocommit": True, **kwargs})

    return {"direct": lambda **kwargs: direct(db_server, **kwargs), "pyproxy": through_pyproxy}


def scalar(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def health_check_error(conn: pymysql.connections.Connection) -> int | None:
    """A pool's health check (SELECT 1): the error code it gets, or None if it passes."""
    try:
        scalar(conn, "SELECT 1")
    except pymysql.MySQLError as exc:
        return exc.args[0]
    return None


@contextlib.contextmanager
def global_value(db_server: servers.DbServer, name: str, value: int) -> Iterator[None]:
    """A global variable set on the test server for the test, set back after it."""
    before = drivers.admin_scalar(db_server, f"SELECT @@GLOBAL.{name}")
    drivers.admin_query(db_server, f"SET GLOBAL {name} = {int(value)}")
    try:
        yield
    finally:
        drivers.admin_query(db_server, f"SET GLOBAL {name} = {int(before)}")


def test_own_wait_timeout_ends_the_connection(make_proxy, db_server) -> None:
    """SET wait_timeout = 1, then 2 s idle: the health check's SELECT 1 gets 2006/2013,
    directly and through pyproxy; a session that keeps talking is not closed."""
    proxy = make_proxy()
    for side, connect in sides(proxy, db_server).items():
        idle, busy = connect(), connect()
        for conn in (idle, busy):
            with conn.cursor() as cur:
                cur.execute("SET SESSION wait_timeout = 1")
            assert scalar(conn, "SELECT @@wait_timeout") == 1, side
        for _ in range(5):
            time.sleep(0.45)
            assert scalar(busy, "SELECT 1") == 1, side
        assert health_check_error(idle) in GONE, side
        busy.close()
    # pyproxy's pool was not left with the short timeout: a new client is at the default.
    fresh = proxy.connect()
    assert scalar(fresh, "SELECT @@wait_timeout") == scalar(direct(db_server), "SELECT @@wait_timeout")
    fresh.close()


def test_mysql_connector_sees_the_connection_gone(make_proxy, db_server) -> None:
    """mysql-connector-python: the statement after the timeout fails as the server's
    closing makes it fail (2013 or 2055, lost connection), directly and through pyproxy."""
    proxy = make_proxy()
    codes = {}
    for side, port in (("direct", db_server.port), ("pyproxy", proxy.port)):
        conn = mysql.connector.connect(host="127.0.0.1", port=port, user=servers.APP_USER,
                                       password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                                       use_pure=True, ssl_disabled=True)
        cur = conn.cursor()
        cur.execute("SET wait_timeout = 1")
        time.sleep(2.2)
        with pytest.raises(mysql.connector.Error) as info:
            cur.execute("SELECT 1")
            cur.fetchall()
        codes[side] = info.value.errno
    assert codes["direct"] in (2006, 2013, 2055), codes
    assert codes["pyproxy"] in (2006, 2013, 2055), codes


def test_open_transaction_is_rolled_back(make_proxy, db_server) -> None:
    """Idle past its wait_timeout inside a transaction: the connection ends and the
    transaction is rolled back, directly and through pyproxy."""
    proxy = make_proxy()
    table = drivers.unique_table("wait_tx")
    setup = proxy.connect()
    with setup.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (side VARCHAR(10)) ENGINE=InnoDB")
    for side, connect in sides(proxy, db_server).items():
        conn = connect(autocommit=False)
        with conn.cursor() as cur:
            cur.execute("SET SESSION wait_timeout = 1")
            cur.execute(f"INSERT INTO {table} VALUES (%s)", (side,))
        time.sleep(2.2)
        assert health_check_error(conn) in GONE, side
    time.sleep(0.3)
    assert drivers.admin_scalar(db_server, f"SELECT COUNT(*) FROM {servers.APP_DATABASE}.{table}") == 0
    with setup.cursor() as cur:
        cur.execute(f"DROP TABLE {table}")
    setup.close()


def test_pinned_session_lock_released(make_proxy, db_server) -> None:
    """A session pinned by GET_LOCK() and idle past its wait_timeout ends; its lock
    is free again (pyproxy reset the backend connection it held), as directly."""
    proxy = make_proxy(pool={"max_connections": 1})
    lock = drivers.unique_table("wait_lock")
    for side, connect in sides(proxy, db_server).items():
        conn = connect()
        with conn.cursor() as cur:
            cur.execute("SET SESSION wait_timeout = 1")
        assert scalar(conn, f"SELECT GET_LOCK('{lock}', 0)") == 1, side
        assert drivers.admin_scalar(db_server, f"SELECT IS_FREE_LOCK('{lock}')") == 0, side
        time.sleep(2.2)
        assert health_check_error(conn) in GONE, side
        deadline = time.monotonic() + 5
        while drivers.admin_scalar(db_server, f"SELECT IS_FREE_LOCK('{lock}')") != 1:
            assert time.monotonic() < deadline, f"{side}: lock still held"
            time.sleep(0.1)
    # The pool's only connection serves the next client, with no lock and the default timeout.
    after = proxy.connect()
    assert scalar(after, "SELECT @@wait_timeout") == scalar(direct(db_server), "SELECT @@wait_timeout")
    assert scalar(after, f"SELECT IS_USED_LOCK('{lock}') IS NULL") == 1
    after.close()


def test_session_default_from_the_server(make_proxy, db_server) -> None:
    """A client that never sets wait_timeout gets what a new session of pyproxy's
    connections has (here init_query's 2 s), and is closed after it."""
    proxy = make_proxy(backend={"init_query": "SET SESSION wait_timeout = 2"})
    warm = proxy.connect()  # pyproxy reads the session default from its first connection
    assert scalar(warm, "SELECT @@wait_timeout") == 2
    client = proxy.connect()
    assert scalar(client, "SELECT 1") == 1
    time.sleep(1.2)
    assert scalar(client, "SELECT 1") == 1
    time.sleep(2.5)
    assert health_check_error(client) in GONE


def test_interactive_client_gets_interactive_timeout(make_proxy, db_server) -> None:
    """A client logging in with CLIENT_INTERACTIVE starts with interactive_timeout as its
    wait_timeout, directly and through pyproxy; COM_RESET_CONNECTION goes back to
    wait_timeout on both; a plain client keeps the longer one."""
    proxy = make_proxy()  # it reads the server's defaults from its first backend connection
    with global_value(db_server, "interactive_timeout", 2):
        warm = proxy.connect()
        scalar(warm, "SELECT 1")  # pyproxy has read the server's defaults
        default = scalar(warm, "SELECT @@wait_timeout")
        for side, connect in sides(proxy, db_server).items():
            interactive = connect(client_flag=CLIENT.INTERACTIVE)
            plain = connect()
            reset = connect(client_flag=CLIENT.INTERACTIVE)
            assert scalar(interactive, "SELECT @@wait_timeout") == 2, side
            assert scalar(plain, "SELECT @@wait_timeout") == default, side
            reset._execute_command(31, b"")  # COM_RESET_CONNECTION
            reset._read_ok_packet()
            assert scalar(reset, "SELECT @@wait_timeout") == default, side
            time.sleep(3)
            assert health_check_error(interactive) in GONE, side
            assert scalar(plain, "SELECT 1") == 1, side
            assert scalar(reset, "SELECT 1") == 1, side
            plain.close()
            reset.close()


def cli_on_a_terminal(port: int, sql: str) -> str:
    """What the mariadb client prints for ``sql`` typed on a terminal: run that way
    (not in batch mode) it logs in with CLIENT_INTERACTIVE."""
    client = drivers.mariadb_client()
    assert client is not None
    main, child = pty.openpty()
    process = subprocess.Popen(
        [client, "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P", str(port),
         "-u", servers.APP_USER, f"-p{servers.APP_PASSWORD}", servers.APP_DATABASE],
        stdin=child, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    os.write(main, f"{sql};\nquit\n".encode())
    output = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=10)
    os.close(main)
    return output.decode(errors="replace")


@pytest.mark.skipif(drivers.mariadb_client() is None, reason="the mariadb client is not installed")
def test_mariadb_cli_sees_the_same_wait_timeout(make_proxy, db_server) -> None:
    """The mariadb command-line client reads the same @@wait_timeout directly and through
    pyproxy: in batch mode the plain default, on a terminal (CLIENT_INTERACTIVE)
    interactive_timeout."""
    proxy = make_proxy()
    with global_value(db_server, "interactive_timeout", 1234):
        scalar(proxy.connect(), "SELECT 1")
        default = drivers.admin_scalar(db_server, "SELECT @@GLOBAL.wait_timeout")
        for side, port in (("direct", db_server.port), ("pyproxy", proxy.port)):
            where = type("Where", (), {"host": "127.0.0.1", "port": port})()
            rows = drivers.cli_rows(drivers.run_cli(where, "SELECT @@wait_timeout"))
            assert rows == [[str(default)]], (side, rows)
            shown = cli_on_a_terminal(port, "SELECT @@wait_timeout AS wt")
            assert re.search(r"\|\s*1234\s*\|", shown), (side, shown)


def test_set_global_wait_timeout_applies_to_later_sessions(make_proxy, db_server) -> None:
    """SET GLOBAL wait_timeout through pyproxy: a session that began before keeps the old
    timeout, one that begins after gets the new one and is closed after it, as directly."""
    proxy = make_proxy()
    before = drivers.admin_scalar(db_server, "SELECT @@GLOBAL.wait_timeout")
    warm = proxy.connect()
    scalar(warm, "SELECT 1")
    try:
        for side, connect in sides(proxy, db_server).items():
            earlier = connect()
            admin = connect()
            with admin.cursor() as cur:
                cur.execute("SET GLOBAL wait_timeout = 2")
            later = connect()
            assert scalar(earlier, "SELECT @@wait_timeout") == before, side
            assert scalar(later, "SELECT @@wait_timeout") == 2, side
            time.sleep(3)
            assert scalar(earlier, "SELECT 1") == 1, side
            assert health_check_error(later) in GONE, side
            drivers.admin_query(db_server, f"SET GLOBAL wait_timeout = {int(before)}")
    finally:
        drivers.admin_query(db_server, f"SET GLOBAL wait_timeout = {int(before)}")


def test_interactive_client_first_after_start(make_proxy, db_server) -> None:
    """An interactive client that logs in before pyproxy has opened any backend
    connection (so before it knows the server's defaults) still reads and gets
    interactive_timeout."""
    proxy = make_proxy()
    with global_value(db_server, "interactive_timeout", 2):
        first = proxy.connect(client_flag=CLIENT.INTERACTIVE, autocommit=True)
        assert scalar(first, "SELECT @@wait_timeout") == 2
        time.sleep(3)
        assert health_check_error(first) in GONE


def test_mysqlclient_sees_the_connection_gone(make_proxy, db_server) -> None:
    """mysqlclient (libmariadb): after its wait_timeout the next statement fails with
    2006/2013, directly and through pyproxy."""
    MySQLdb = pytest.importorskip("MySQLdb")
    proxy = make_proxy()
    for side, port in (("direct", db_server.port), ("pyproxy", proxy.port)):
        conn = MySQLdb.connect(host="127.0.0.1", port=port, user=servers.APP_USER,
                               password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                               connect_timeout=10, autocommit=True)
        cur = conn.cursor()
        cur.execute("SET wait_timeout = 1")
        time.sleep(2.2)
        with pytest.raises(MySQLdb.MySQLError) as info:
            cur.execute("SELECT 1")
        assert info.value.args[0] in GONE, (side, info.value.args)
