"""One thread id per client through pyproxy: the greeting's, CONNECTION_ID(), KILL, PROCESSLIST.

Where it makes sense the same steps run on a direct connection to the test server,
and pyproxy's answers are compared with the server's.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

import mysql.connector
import pymysql
import pytest

from integration import drivers, servers

GONE = (2006, 2013)


def direct(db_server: servers.DbServer, **kwargs: Any) -> pymysql.connections.Connection:
    params: dict[str, Any] = {"host": db_server.host, "port": db_server.port, "user": servers.APP_USER,
                              "password": servers.APP_PASSWORD, "database": servers.APP_DATABASE,
                              "connect_timeout": 5, "autocommit": True}
    params.update(kwargs)
    return pymysql.connect(**params)


def connector(port: int, **kwargs: Any) -> Any:
    return mysql.connector.connect(host="127.0.0.1", port=port, user=servers.APP_USER,
                                   password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                                   use_pure=True, ssl_disabled=True, autocommit=True, **kwargs)


def both(proxy: servers.ProxyProcess, db_server: servers.DbServer) -> dict[str, pymysql.connections.Connection]:
    return {"direct": direct(db_server), "pyproxy": proxy.connect(autocommit=True)}


def warm(proxy: servers.ProxyProcess) -> None:
    """pyproxy reads what it needs of the server (PROCESSLIST's columns) from its
    first backend connection: one statement opens it."""
    conn = proxy.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()


def test_connection_id_is_the_greeting_id(make_proxy, db_server) -> None:
    """SELECT CONNECTION_ID() returns the id of the greeting (PyMySQL's thread_id()),
    under the column name the server gives it, in every form a statement may use it;
    a string or comment that names it is not touched."""
    proxy = make_proxy()
    for side, conn in both(proxy, db_server).items():
        mine = conn.thread_id()
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            assert cur.fetchone()[0] == mine, side
            assert [d[0] for d in cur.description] == ["CONNECTION_ID()"], side
            cur.execute("select connection_id ( ) as me, 'CONNECTION_ID()' /* CONNECTION_ID() */, "
                        "CONNECTION_ID() + 1, (SELECT CONNECTION_ID())")
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
            assert row == (mine, "CONNECTION_ID()", mine + 1, mine), side
            assert names == ["me", "CONNECTION_ID()", "CONNECTION_ID() + 1", "(SELECT CONNECTION_ID())"], side
            cur.execute("SET @me = CONNECTION_ID()")
            cur.execute("SELECT @me = CONNECTION_ID(), IF(CONNECTION_ID() > 0, 'yes', 'no')")
            assert cur.fetchone() == (1, "yes"), side
        conn.close()


def test_connection_id_in_a_transaction_and_across_borrows(make_proxy) -> None:
    """The id stays the client's whichever backend connection serves it, with other
    clients running (several pooled connections)."""
    proxy = make_proxy(pool={"max_connections": 3})
    clients = [proxy.connect(autocommit=True) for _ in range(4)]
    for _ in range(3):
        for client in clients:
            with client.cursor() as cur:
                cur.execute("SELECT CONNECTION_ID()")
                assert cur.fetchone()[0] == client.thread_id()
    first = clients[0]
    with first.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchone()[0] == first.thread_id()
        cur.execute("COMMIT")
    for client in clients:
        client.close()


def test_mysql_connector_text_and_prepared(make_proxy, db_server) -> None:
    """mysql-connector-python: connection_id (from the greeting) equals CONNECTION_ID()
    over the text protocol and from a server-side prepared statement, and a prepared
    statement finds its own PROCESSLIST row by it, as directly."""
    proxy = make_proxy()
    warm(proxy)
    for side, port in (("direct", db_server.port), ("pyproxy", proxy.port)):
        conn = connector(port)
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchall() == [(conn.connection_id,)], side
        prepared = conn.cursor(prepared=True)
        for _ in range(2):
            prepared.execute("SELECT CONNECTION_ID(), %s", (7,))
            assert prepared.fetchall() == [(conn.connection_id, 7)], side
        assert prepared.column_names == ("CONNECTION_ID()", "?"), side
        for _ in range(2):
            prepared.execute("SELECT ID, COMMAND FROM information_schema.PROCESSLIST WHERE ID = %s",
                             (conn.connection_id,))
            assert prepared.fetchall() == [(conn.connection_id, "Execute")], side
        conn.close()


def test_kill_connection_id_ends_the_own_connection(make_proxy, db_server) -> None:
    """KILL CONNECTION_ID() answers 1927 and the connection is gone; KILL QUERY
    CONNECTION_ID() answers 1317 and the session goes on: directly and through pyproxy."""
    proxy = make_proxy()
    for side, conn in both(proxy, db_server).items():
        with conn.cursor() as cur:
            with pytest.raises(pymysql.MySQLError) as info:
                cur.execute("KILL QUERY CONNECTION_ID()")
            assert info.value.args[0] == 1317, side
            cur.execute("SELECT 1")
            assert cur.fetchone()[0] == 1, side
            with pytest.raises(pymysql.MySQLError) as info:
                cur.execute("KILL CONNECTION_ID()")
            assert info.value.args[0] == 1927, side
        time.sleep(0.2)
        with pytest.raises(pymysql.MySQLError) as info:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        assert info.value.args[0] in GONE, side


def test_processlist_row_found_by_id(make_proxy, db_server) -> None:
    """SHOW PROCESSLIST, SHOW FULL PROCESSLIST and information_schema.PROCESSLIST have a
    row with the client's id, showing its statement as it sent it, as directly."""
    proxy = make_proxy()
    warm(proxy)
    for side, conn in both(proxy, db_server).items():
        mine = conn.thread_id()
        with conn.cursor() as cur:
            for statement in ("SHOW PROCESSLIST", "SHOW FULL PROCESSLIST"):
                cur.execute(statement)
                names = [d[0] for d in cur.description]
                assert names == ["Id", "User", "Host", "db", "Command", "Time", "State", "Info",
                                 "Progress"], side
                rows = {row[0]: row for row in cur.fetchall()}
                assert mine in rows, (side, statement, rows)
                assert rows[mine][4] == "Query" and rows[mine][7] == statement, (side, rows[mine])
                assert rows[mine][3] == servers.APP_DATABASE, side
            sql = "SELECT ID, COMMAND, INFO FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"
            cur.execute(sql)
            assert cur.fetchall() == ((mine, "Query", sql),), side
            cur.execute(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST p WHERE p.ID = {mine}")
            assert cur.fetchone()[0] == 1, side
        conn.close()


def test_processlist_shows_other_clients_by_their_ids(make_proxy, db_server) -> None:
    """The user's other sessions are listed with their own ids and addresses: one in a
    transaction (holding a backend connection through pyproxy) and an idle one (holding
    none) as Sleep, the reader as Query, directly and through pyproxy; pyproxy's idle
    pooled connections are not listed at all."""
    proxy = make_proxy(pool={"max_connections": 4, "min_idle": 2})
    warm(proxy)
    seen = {}
    for side, connect in (("direct", lambda: direct(db_server)),
                          ("pyproxy", lambda: proxy.connect(autocommit=True))):
        holder, sleeper, watcher = connect(), connect(), connect()
        with holder.cursor() as cur:
            cur.execute("BEGIN")  # a transaction: through pyproxy, it holds its connection
        time.sleep(1.1)
        with watcher.cursor() as cur:
            cur.execute("SELECT ID, HOST, COMMAND, TIME FROM information_schema.PROCESSLIST WHERE USER = %s",
                        (servers.APP_USER,))
            rows = {row[0]: row[1:] for row in cur.fetchall()}
        ours = {conn.thread_id(): conn for conn in (holder, sleeper, watcher)}
        if side == "pyproxy":
            assert set(rows) == set(ours), rows
        for thread, conn in ours.items():
            assert rows[thread][0] == f"127.0.0.1:{conn._sock.getsockname()[1]}", (side, rows[thread])
        seen[side] = [(rows[conn.thread_id()][1], rows[conn.thread_id()][2] >= 1)
                      for conn in (holder, sleeper, watcher)]
        holder.rollback()
        for conn in (holder, sleeper, watcher):
            conn.close()
    assert seen["pyproxy"] == seen["direct"] == [("Sleep", True), ("Sleep", True), ("Query", False)], seen


@pytest.mark.skipif(drivers.mariadb_client() is None, reason="the mariadb client is not installed")
def test_mariadb_cli_connection_id(make_proxy, db_server) -> None:
    """The mariadb CLI's status (the greeting's id) and SELECT CONNECTION_ID() agree,
    directly and through pyproxy."""
    proxy = make_proxy()
    for side, port in (("direct", db_server.port), ("pyproxy", proxy.port)):
        client = drivers.mariadb_client()
        result = subprocess.run(
            [client, "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P", str(port),
             "-u", servers.APP_USER, f"-p{servers.APP_PASSWORD}", servers.APP_DATABASE,
             "-e", "status; SELECT CONNECTION_ID() AS id_now"],
            capture_output=True, timeout=60, check=False)
        out = result.stdout.decode()
        assert result.returncode == 0, result.stderr.decode()
        greeting = int(re.search(r"Connection id:\s+(\d+)", out).group(1))
        selected = int(re.search(r"id_now\s*\n(\d+)", out).group(1))
        assert greeting == selected, (side, out)


def test_prepared_kill(make_proxy) -> None:
    """A server-side prepared KILL names pyproxy's ids, so pyproxy prepares and runs it itself:
    with the id in its text it works as from the text protocol; with a placeholder (bound only
    at execute) it is refused with 1295, and the session goes on."""
    proxy = make_proxy()
    conn = connector(proxy.port)
    victim = connector(proxy.port)
    prepared = conn.cursor(prepared=True)
    with pytest.raises(mysql.connector.Error) as info:
        prepared.execute("KILL %s", (victim.connection_id,))
    assert info.value.errno == 1295
    prepared = conn.cursor(prepared=True)
    prepared.execute(f"KILL {victim.connection_id}")
    with pytest.raises(mysql.connector.Error) as info:
        victim.cursor().execute("SELECT 1")
    assert info.value.errno in (-1, 2013, 2055, 1927)  # -1: the driver saw the close first
    cur = conn.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    assert cur.fetchall() == [(conn.connection_id,)]
    conn.close()


SHAPES = [
    "SELECT CONNECTION_ID()", "SELECT connection_id()", "SELECT CONNECTION_ID() AS c",
    "SELECT CONNECTION_ID() c", "SELECT 1, CONNECTION_ID()", "SELECT CONNECTION_ID(), 1 FROM DUAL",
    "SELECT DISTINCT CONNECTION_ID()", "SELECT CONNECTION_ID() + 0", "SELECT CONCAT(CONNECTION_ID(), '')",
    "SELECT (SELECT CONNECTION_ID())", "SELECT CONNECTION_ID() FROM DUAL WHERE CONNECTION_ID() > 0",
    "SELECT /*!CONNECTION_ID()*/", "SELECT CONNECTION_ID() UNION SELECT CONNECTION_ID()",
    "SELECT CONNECTION_ID() IN (CONNECTION_ID())", "SELECT SQL_NO_CACHE CONNECTION_ID()",
    "SELECT CONNECTION_ID() /* trailing */", "SELECT CAST(CONNECTION_ID() AS CHAR)",
    "SELECT CONNECTION_ID() ORDER BY 1", "SELECT * FROM (SELECT CONNECTION_ID()) AS t",
    "WITH t AS (SELECT CONNECTION_ID() AS id) SELECT id FROM t",
    "SELECT CONNECTION_ID() = CONNECTION_ID(), 'CONNECTION_ID()'",
    "SELECT IF(CONNECTION_ID() > 0, CONNECTION_ID(), NULL) AS x, CONNECTION_ID() AS y",
    "SELECT CASE WHEN 1 THEN CONNECTION_ID() END", "SELECT COUNT(DISTINCT CONNECTION_ID())",
    "SELECT GROUP_CONCAT(CONNECTION_ID() ORDER BY 1)", "SELECT CONNECTION_ID() INTO @pyproxy_id",
    "SELECT @pyproxy_id = CONNECTION_ID()", "SELECT CONNECTION_ID() LIMIT 1",
]


def test_statement_shapes_agree_with_the_server(make_proxy, db_server) -> None:
    """Each statement gives through pyproxy what it gives directly, values and column
    names, with the client's own id where the server gives its thread id."""
    proxy = make_proxy()
    results = {}
    for side, conn in both(proxy, db_server).items():
        mine = conn.thread_id()
        seen = []
        with conn.cursor() as cur:
            for sql in SHAPES:
                cur.execute(sql)
                rows = [tuple("ME" if value in (mine, str(mine)) else value for value in row)
                        for row in cur.fetchall()]
                names = [d[0] for d in cur.description] if cur.description else None
                seen.append((sql, names, rows))
        results[side] = seen
        conn.close()
    for direct_seen, proxied in zip(results["direct"], results["pyproxy"]):
        assert proxied == direct_seen


def test_is_used_lock_names_the_holder_by_its_id(make_proxy, db_server) -> None:
    """IS_USED_LOCK() names the holding session by the id its driver knows, for the
    holder itself and for another session, directly and through pyproxy."""
    proxy = make_proxy()
    lock = drivers.unique_table("ids_lock")
    for side, connect in (("direct", lambda: direct(db_server)),
                          ("pyproxy", lambda: proxy.connect(autocommit=True))):
        holder, other = connect(), connect()
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 0)", (lock,))
            assert cur.fetchone()[0] == 1
            cur.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID(), IS_USED_LOCK(%s)", (lock, lock))
            assert cur.fetchone() == (1, holder.thread_id()), side
        with other.cursor() as cur:
            cur.execute("SELECT IS_USED_LOCK(%s), IS_USED_LOCK(%s) = CONNECTION_ID()", (lock, lock))
            assert cur.fetchone() == (holder.thread_id(), 0), side
        holder.close()
        other.close()


def test_mysqlclient_thread_id_and_own_kill(make_proxy, db_server) -> None:
    """mysqlclient (libmariadb): mysql_thread_id() equals CONNECTION_ID(), and KILL
    CONNECTION_ID() ends the connection with the errors the server gives, directly and
    through pyproxy."""
    MySQLdb = pytest.importorskip("MySQLdb")
    proxy = make_proxy()
    outcome = {}
    for side, port in (("direct", db_server.port), ("pyproxy", proxy.port)):
        conn = MySQLdb.connect(host="127.0.0.1", port=port, user=servers.APP_USER,
                               password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                               connect_timeout=10, autocommit=True)
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchone()[0] == conn.thread_id(), side
        with pytest.raises(MySQLdb.MySQLError) as killed:
            cur.execute("KILL CONNECTION_ID()")
        with pytest.raises(MySQLdb.MySQLError) as after:
            cur.execute("SELECT 1")
        outcome[side] = (killed.value.args[0], after.value.args[0])
    assert outcome["pyproxy"][0] == outcome["direct"][0] == 1927, outcome
    assert outcome["pyproxy"][1] in GONE and outcome["direct"][1] in GONE, outcome
