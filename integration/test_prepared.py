"""Server-side prepared statements shared across backend connections, with real drivers."""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mysql.connector
import pytest

from integration import servers
from integration.drivers import log_events


def connector(proxy: servers.ProxyProcess, **kw):
    return mysql.connector.connect(host=proxy.host, port=proxy.port, user=servers.APP_USER,
                                   password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                                   use_pure=True, autocommit=True, **kw)


def pins(proxy: servers.ProxyProcess) -> list[str]:
    return [line for line in proxy.log_text().splitlines() if "session_pinned" in line]


def run_clients(client: Callable[[int], None], clients: int, workers: int) -> None:
    """``client(i)`` for every i below ``clients``, ``workers`` at a time."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(client, i) for i in range(clients)]:
            future.result(timeout=120)


def test_prepared_cursors_share_a_small_pool(make_proxy) -> None:
    """36 clients with prepared cursors interleave on 2 backend connections: every result
    is right and no session is pinned."""
    proxy = make_proxy(pool={"max_connections": 2, "borrow_timeout": 60})
    setup = connector(proxy)
    cur = setup.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS ps_share (id INT PRIMARY KEY, v VARCHAR(20))")
    cur.execute("DELETE FROM ps_share")
    cur.executemany("INSERT INTO ps_share VALUES (%s, %s)", [(i, f"v{i}") for i in range(100)])
    setup.close()
    failures: list[str] = []

    def client(i: int) -> None:
        conn = connector(proxy)
        try:
            cur = conn.cursor(prepared=True)
            for j in range(10):
                key = (i * 7 + j) % 100
                cur.execute("SELECT v, ? FROM ps_share WHERE id = ?", (f"c{i}", key))
                row = cur.fetchall()
                if row != [(f"v{key}", f"c{i}")]:
                    failures.append(f"client {i}: {row}")
            cur.execute("SELECT COUNT(*) FROM ps_share WHERE id < ?", (i,))
            if cur.fetchall() != [(min(i, 100),)]:
                failures.append(f"client {i}: count")
        finally:
            conn.close()

    run_clients(client, 36, 12)
    assert failures == []
    assert pins(proxy) == []


def test_metadata_follows_the_table(make_proxy, db_server) -> None:
    """A table re-created with other columns between two executes: the client gets the new
    columns, exactly as directly, never a stale copy."""
    proxy = make_proxy()

    def run(conn) -> list[int]:
        plain = conn.cursor()
        plain.execute("DROP TABLE IF EXISTS ps_meta")
        plain.execute("CREATE TABLE ps_meta (a INT, b INT)")
        plain.execute("INSERT INTO ps_meta VALUES (1, 2)")
        cur = conn.cursor(prepared=True)
        widths = []
        cur.execute("SELECT * FROM ps_meta WHERE a = ?", (1,))
        cur.fetchall()
        widths.append(len(cur.description))
        plain.execute("DROP TABLE ps_meta")
        plain.execute("CREATE TABLE ps_meta (a INT, b INT, c INT)")
        plain.execute("INSERT INTO ps_meta VALUES (1, 2, 3)")
        cur.execute("SELECT * FROM ps_meta WHERE a = ?", (1,))
        rows = cur.fetchall()
        widths.append(len(cur.description))
        widths.append(len(rows[0]))
        return widths

    direct = mysql.connector.connect(host=db_server.host, port=db_server.port,
                                     user=servers.APP_USER, password=servers.APP_PASSWORD,
                                     database=servers.APP_DATABASE, use_pure=True, autocommit=True)
    expected = run(direct)
    direct.close()
    through = connector(proxy)
    assert run(through) == expected == [2, 3, 3]
    through.close()


def test_long_data_follows_the_execute(make_proxy) -> None:
    """COM_STMT_SEND_LONG_DATA (a file-like parameter) is replayed on whichever connection
    runs the execute."""
    proxy = make_proxy(pool={"max_connections": 2})
    conn = connector(proxy)
    plain = conn.cursor()
    plain.execute("CREATE TABLE IF NOT EXISTS ps_long (id INT PRIMARY KEY, data LONGBLOB)")
    plain.execute("DELETE FROM ps_long")
    cur = conn.cursor(prepared=True)
    blob = bytes(range(256)) * 4096
    cur.execute("INSERT INTO ps_long VALUES (?, ?)", (1, io.BytesIO(blob)))
    cur.execute("SELECT data FROM ps_long WHERE id = ?", (1,))
    assert cur.fetchall()[0][0] == blob
    conn.close()
    assert pins(proxy) == []


@pytest.mark.skipif(shutil.which("sysbench") is None, reason="sysbench is not installed")
def test_sysbench_with_prepared_statements(make_proxy, db_server) -> None:
    """sysbench oltp_read_write with its default server-side prepared statements runs
    through pyproxy without a fatal error, with no pinned session, on 3 backend
    connections for 8 threads."""
    proxy = make_proxy(pool={"max_connections": 3, "borrow_timeout": 60})
    common = ["--mysql-host=127.0.0.1", f"--mysql-user={servers.APP_USER}",
              f"--mysql-password={servers.APP_PASSWORD}", f"--mysql-db={servers.APP_DATABASE}",
              "--tables=2", "--table-size=500"]
    subprocess.run(["sysbench", "oltp_read_write", f"--mysql-port={db_server.port}", *common, "cleanup"],
                   capture_output=True, timeout=60)
    prepared = subprocess.run(["sysbench", "oltp_read_write", f"--mysql-port={db_server.port}",
                               *common, "prepare"], capture_output=True, text=True, timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    result = subprocess.run(["sysbench", "oltp_read_write", f"--mysql-port={proxy.port}", *common,
                             "--threads=8", "--time=3", "--db-ps-mode=auto", "run"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "FATAL" not in result.stdout + result.stderr
    transactions = int(result.stdout.split("transactions:")[1].split()[0])
    assert transactions > 0
    assert pins(proxy) == []
    assert proxy.log_text().count('"backend_opened"') <= 3


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_call_with_multiple_results_over_execute(make_proxy, db_server) -> None:
    """CALL of a procedure returning two result sets, run with COM_STMT_EXECUTE (Node
    mysql2's execute()), gives the same results through pyproxy as directly."""
    proxy = make_proxy()
    root = db_server.connect()
    with root.cursor() as cur:
        cur.execute(f"DROP PROCEDURE IF EXISTS {servers.APP_DATABASE}.ps_two_results")
        cur.execute(f"CREATE PROCEDURE {servers.APP_DATABASE}.ps_two_results(IN x INT) "
                    "BEGIN SELECT x AS a; SELECT x + 1 AS b, 'y' AS c; END")
    root.close()
    script = Path(__file__).parent / "node" / "call_multi.js"

    def run(port: int) -> str:
        done = subprocess.run(["node", str(script), "127.0.0.1", str(port), servers.APP_USER,
                               servers.APP_PASSWORD, servers.APP_DATABASE], capture_output=True,
                              text=True, timeout=30, cwd=script.parent)
        assert done.returncode == 0, done.stderr
        return done.stdout

    direct = run(db_server.port)
    assert direct.splitlines()[0] == '[[{"a":5}],[{"b":6,"c":"y"}]]'
    assert run(proxy.port) == direct


CURSOR_TYPE_READ_ONLY = 1
LAST_ROW_SENT = 0x80


def _stats(proxy: servers.ProxyProcess) -> tuple[dict, dict]:
    """pyproxy's SIGUSR1 report: (pool_stats, pin_summary)."""
    before = len(log_events(proxy, "pin_summary"))
    proxy.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while len(log_events(proxy, "pin_summary")) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return log_events(proxy, "pool_stats")[-1], log_events(proxy, "pin_summary")[-1]


def test_cursor_holds_its_connection_only_while_open(make_proxy) -> None:
    """A cursor (COM_STMT_EXECUTE with CURSOR_TYPE_READ_ONLY, read with COM_STMT_FETCH,
    here through mysql-connector-python's command API) holds its backend connection
    while it is open and not a moment longer.  With a pool of one connection another
    client times out waiting while a cursor is open, and runs as soon as the cursor
    ends, though its client stays connected: after the fetch that reports the last row,
    after COM_STMT_RESET and after COM_STMT_CLOSE.  No session is pinned."""
    proxy = make_proxy(pool={"max_connections": 1, "borrow_timeout": 1})
    setup = connector(proxy)
    cur = setup.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS ps_cursor (id INT PRIMARY KEY)")
    cur.execute("DELETE FROM ps_cursor")
    cur.execute("INSERT INTO ps_cursor VALUES (1), (2), (3), (4), (5)")
    setup.close()
    holder, other = connector(proxy), connector(proxy)

    def other_runs() -> bool:
        try:
            probe = other.cursor()
            probe.execute("SELECT 1")
            probe.fetchall()
            return True
        except mysql.connector.Error as exc:
            assert exc.errno == 9001, exc  # pyproxy: no backend connection became free
            return False

    def open_cursor() -> tuple[int, list]:
        statement = holder.cmd_stmt_prepare(b"SELECT id FROM ps_cursor ORDER BY id")["statement_id"]
        _, columns, eof = holder.cmd_stmt_execute(statement, flags=CURSOR_TYPE_READ_ONLY)
        assert eof["status_flag"] & 0x40  # SERVER_STATUS_CURSOR_EXISTS: the server kept a cursor
        assert not other_runs()
        return statement, columns

    statement, columns = open_cursor()
    fetched: list = []
    while True:
        holder.cmd_stmt_fetch(statement, 2)
        rows, eof = holder.get_rows(binary=True, columns=columns)
        fetched += [row[0] for row in rows]
        if eof["status_flag"] & LAST_ROW_SENT:
            break
        assert not other_runs()
    assert fetched == [1, 2, 3, 4, 5]
    assert other_runs()
    holder.cmd_stmt_close(statement)

    statement, columns = open_cursor()
    holder.cmd_stmt_fetch(statement, 1)
    assert [row[0] for row in holder.get_rows(binary=True, columns=columns)[0]] == [1]
    holder.cmd_stmt_reset(statement)
    assert other_runs()
    holder.cmd_stmt_close(statement)

    statement, _ = open_cursor()
    holder.cmd_stmt_close(statement)
    assert other_runs()

    pool_stats, pin_summary = _stats(proxy)
    assert pin_summary["pins"] == {}
    assert pool_stats["lent"] == 0
    holder.close()
    other.close()
    assert pins(proxy) == []


def test_cursor_whose_connection_is_killed(make_proxy, db_server) -> None:
    """The backend connection holding an open cursor is killed from a side connection
    (KILL, as an operator or a failover would): the client's next fetch gets an error,
    closing the statement works, and the session goes on: another statement runs, the
    same statement runs again (prepared on another connection) and opens a new cursor."""
    proxy = make_proxy(pool={"max_connections": 2, "borrow_timeout": 5})
    setup = connector(proxy)
    cur = setup.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS ps_cursor_killed (id INT PRIMARY KEY)")
    cur.execute("DELETE FROM ps_cursor_killed")
    cur.execute("INSERT INTO ps_cursor_killed VALUES (1), (2), (3)")
    setup.close()
    client = connector(proxy)
    sql = b"SELECT id, @@pseudo_thread_id FROM ps_cursor_killed ORDER BY id"
    statement = client.cmd_stmt_prepare(sql)["statement_id"]
    _, columns, eof = client.cmd_stmt_execute(statement, flags=CURSOR_TYPE_READ_ONLY)
    assert eof["status_flag"] & 0x40  # the server kept a cursor
    client.cmd_stmt_fetch(statement, 1)
    [(first, backend_id)], _ = client.get_rows(binary=True, columns=columns)
    assert first == 1
    root = db_server.connect()
    try:
        with root.cursor() as kill:
            kill.execute(f"KILL {int(backend_id)}")
    finally:
        root.close()
    time.sleep(0.3)  # the server closes the connection; pyproxy sees it go
    with pytest.raises(mysql.connector.Error) as caught:
        client.cmd_stmt_fetch(statement, 1)
        client.get_rows(binary=True, columns=columns)
    assert caught.value.errno in (2013, 1927), caught.value
    client.cmd_stmt_close(statement)  # no reply: the next command says whether it broke anything
    plain = client.cursor()
    plain.execute("SELECT 41 + 1")
    assert plain.fetchall() == [(42,)]
    statement = client.cmd_stmt_prepare(sql)["statement_id"]
    _, columns, eof = client.cmd_stmt_execute(statement, flags=CURSOR_TYPE_READ_ONLY)
    assert eof["status_flag"] & 0x40
    client.cmd_stmt_fetch(statement, 5)
    rows, eof = client.get_rows(binary=True, columns=columns)
    assert [row[0] for row in rows] == [1, 2, 3]
    assert rows[0][1] != backend_id
    client.cmd_stmt_close(statement)
    pool_stats, _ = _stats(proxy)
    assert pool_stats["lent"] == 0  # nothing holds a connection any more
    client.close()
    assert "internal_error" not in proxy.log_text()


#: Statements the server allows beyond those other sessions (other tests' proxies) hold.
STATEMENT_ROOM = 8


def test_more_statements_than_the_server_allows(make_proxy, db_server) -> None:
    """max_prepared_stmt_count counts every session's statements (here it leaves room
    for 8 more than the server holds when the test starts).

    When sessions of others hold all of them, a client's prepare gets the server's own
    error 1461 through pyproxy as it does directly, and succeeds once they are gone.
    Then 4 clients sharing 2 backend connections each keep 8 prepared statements open,
    together four times what the server allows, and every prepare and execute succeeds
    with the right result: pyproxy closes cached statements to make room and prepares them
    again when they are needed.  One client alone may keep no more than the server
    allows a session (it would cost pyproxy memory without bound): its 9th prepare gets
    the server's 1461."""
    root = db_server.connect()
    with root.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.max_prepared_stmt_count")
        saved = cur.fetchone()[0]
        cur.execute("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'")
        in_use = int(cur.fetchone()[1])
    proxy = make_proxy(pool={"max_connections": 2, "borrow_timeout": 60})
    try:
        with root.cursor() as cur:
            cur.execute(f"SET GLOBAL max_prepared_stmt_count = {in_use + STATEMENT_ROOM}")
            for number in range(STATEMENT_ROOM):
                cur.execute(f"PREPARE full_{number} FROM 'SELECT {number}'")
        codes = []
        for port in (db_server.port, proxy.port):
            conn = mysql.connector.connect(host="127.0.0.1", port=port, user=servers.APP_USER,
                                           password=servers.APP_PASSWORD,
                                           database=servers.APP_DATABASE, use_pure=True)
            try:
                conn.cursor(prepared=True).execute("SELECT ? + 1", (1,))
            except mysql.connector.Error as exc:
                codes.append(exc.errno)
            conn.close()
        assert codes == [1461, 1461]
        with root.cursor() as cur:
            for number in range(STATEMENT_ROOM):
                cur.execute(f"DEALLOCATE PREPARE full_{number}")
        failures: list[str] = []

        def client(i: int) -> None:
            conn = connector(proxy)
            try:
                cursors = []
                for k in range(STATEMENT_ROOM):
                    cursor = conn.cursor(prepared=True)
                    cursor.execute(f"SELECT ? + {k}, {i}", (100,))
                    if cursor.fetchall() != [(100 + k, i)]:
                        failures.append(f"client {i}, statement {k}: first execute")
                    cursors.append(cursor)
                for _ in range(2):
                    for k, cursor in enumerate(cursors):
                        cursor.execute(f"SELECT ? + {k}, {i}", (k,))
                        if cursor.fetchall() != [(2 * k, i)]:
                            failures.append(f"client {i}, statement {k}")
                try:
                    conn.cursor(prepared=True).execute("SELECT ? + 1000", (1,))
                    failures.append(f"client {i}: a prepare past the server's limit succeeded")
                except mysql.connector.Error as exc:
                    if exc.errno != 1461:
                        failures.append(f"client {i}: {exc}")
            except mysql.connector.Error as exc:
                failures.append(f"client {i}: {exc}")
            finally:
                conn.close()

        run_clients(client, 4, 4)
        assert failures == [], failures[:10]
        assert pins(proxy) == []
    finally:
        with root.cursor() as cur:
            cur.execute(f"SET GLOBAL max_prepared_stmt_count = {saved}")
        root.close()
