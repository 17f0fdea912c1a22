"""Pooling as users see it: connection storms, state isolation, failures of lent connections."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymysql
import pytest

from integration import servers
from pyproxy.sandbox import SandboxServer
from pyproxy.wire.constants import COM_RESET_CONNECTION


@pytest.fixture(scope="module")
def small_server() -> Iterator[SandboxServer]:
    """A server that refuses a 41st connection, as a small RDS instance would."""
    server = SandboxServer(max_connections=40)
    server.start()
    yield server
    server.cleanup()


def app_connections(root: pymysql.connections.Connection) -> int:
    with root.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE user = %s",
                    (servers.APP_USER,))
        return int(cur.fetchone()[0])


def test_connection_storm(small_server: SandboxServer, tmp_path: Path) -> None:
    """500 concurrent connect-query-close clients all succeed through a pool of 20 on a
    server limited to 40 connections, which never sees more than 20 from pyproxy."""
    proxy = servers.start_proxy(small_server, tmp_path / "proxy", pool={"max_connections": 20,
                                                                          "borrow_timeout": 60})
    try:
        root = small_server.connect()
        peak = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, app_connections(root))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        start = threading.Barrier(500)
        errors: list[str] = []
        results: list[int] = []

        def client(i: int) -> None:
            try:
                start.wait(timeout=60)
                conn = pymysql.connect(host=proxy.host, port=proxy.port, user=servers.APP_USER,
                                       password=servers.APP_PASSWORD,
                                       database=servers.APP_DATABASE, connect_timeout=60,
                                       read_timeout=60,
                                       ssl_disabled=True)
                with conn.cursor() as cur:
                    cur.execute("SELECT %s + 1", (i,))
                    results.append(cur.fetchone()[0] - 1)
                conn.close()
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                errors.append(repr(exc))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(500)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stop.set()
        watcher.join()
        root.close()
        reasons = [line for line in proxy.log_text().splitlines()
                   if '"level": "warning"' in line or '"level": "error"' in line
                   or "handshake timeout" in line]
        assert errors == [], reasons[:20]
        assert sorted(results) == list(range(500))
        assert 0 < peak <= 20
    finally:
        proxy.stop()


DEFAULT_SQL_MODE_QUERY = "SELECT @@GLOBAL.sql_mode, @@GLOBAL.time_zone"


def test_no_session_state_leaks(make_proxy, db_server) -> None:
    """Two rounds of 300 clients on a pool of 6: pinned clients set user variables,
    temporary tables, sql_mode, time_zone and autocommit; carried clients set sql_mode,
    time_zone, the isolation level, the character set and autocommit and read their
    LAST_INSERT_ID() statements later; each sees only its own state, and clients that set
    nothing always see the server's defaults."""
    proxy = make_proxy(pool={"max_connections": 6, "borrow_timeout": 60})
    root = db_server.connect()
    with root.cursor() as cur:
        cur.execute(DEFAULT_SQL_MODE_QUERY)
        default_mode, default_zone = cur.fetchone()
        cur.execute("SELECT @@GLOBAL.tx_isolation")
        default_isolation = cur.fetchone()[0]
        cur.execute(f"CREATE TABLE IF NOT EXISTS {servers.APP_DATABASE}.leak_ids "
                    "(id INT AUTO_INCREMENT PRIMARY KEY, "
                    "owner INT)")
    root.close()
    isolations = ["READ-COMMITTED", "SERIALIZABLE", "READ-UNCOMMITTED"]
    modes = ["ANSI_QUOTES", "NO_ZERO_DATE", "STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION", "PIPES_AS_CONCAT"]
    failures: list[str] = []

    def stateful(i: int) -> None:
        conn = proxy.connect()
        try:
            with conn.cursor() as cur:
                mode = modes[i % len(modes)]
                zone = f"+0{i % 10}:00"
                cur.execute("SET @mine = %s", (i,))
                cur.execute("SET SESSION sql_mode = %s", (mode,))
                cur.execute("SET time_zone = %s", (zone,))
                cur.execute(f"CREATE TEMPORARY TABLE leak_{i} (v INT)")
                cur.execute(f"INSERT INTO leak_{i} VALUES (%s)", (i,))
                conn.autocommit(i % 2 == 0)
                for _ in range(3):
                    cur.execute(f"SELECT @mine, @@sql_mode, @@time_zone, @@autocommit, "
                                f"(SELECT v FROM leak_{i})")
                    got = cur.fetchone()
                    want = (i, mode, zone, int(i % 2 == 0), i)
                    if tuple(got) != want:
                        failures.append(f"client {i}: {got} != {want}")
                    time.sleep(random.random() / 200)
        finally:
            conn.close()

    def carried(i: int) -> None:
        conn = proxy.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                mode = modes[i % len(modes)]
                zone = f"-0{i % 9 + 1}:00"
                isolation = isolations[i % 3]
                charset = "latin1" if i % 2 else "utf8mb4"
                cur.execute("SET SESSION sql_mode = %s, time_zone = %s", (mode, zone))
                cur.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation.replace('-', ' ')}")
                cur.execute(f"SET NAMES {charset}")
                cur.execute("INSERT INTO leak_ids (owner) VALUES (%s)", (i,))
                own_id = cur.lastrowid
                for _ in range(3):
                    time.sleep(random.random() / 200)
                    cur.execute("SELECT @@sql_mode, @@time_zone, @@tx_isolation, @@character_set_client, "
                                "LAST_INSERT_ID()")
                    got = tuple(cur.fetchone())
                    want = (mode, zone, isolation, charset, own_id)
                    if got != want:
                        failures.append(f"carried client {i}: {got} != {want}")
        finally:
            conn.close()

    def clean(i: int) -> None:
        conn = proxy.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @mine, @@sql_mode, @@time_zone, @@autocommit, @@tx_isolation, "
                            "@@character_set_client, LAST_INSERT_ID()")
                got = tuple(cur.fetchone())
                if got != (None, default_mode, default_zone, 0, default_isolation, "utf8mb4", 0):
                    failures.append(f"clean client {i} saw {got}")
                cur.execute("SELECT COUNT(*) FROM information_schema.tables "
                            "WHERE table_name LIKE 'leak\\_%%' AND table_type = 'TEMPORARY'")
                count = cur.fetchone()[0]
                if count:
                    failures.append(f"clean client {i} saw {count} temporary tables")
        finally:
            conn.close()

    kinds = (clean, stateful, carried)
    for round_ in range(2):
        with ThreadPoolExecutor(max_workers=24) as pool:
            futures = [pool.submit(kinds[i % 3], round_ * 300 + i) for i in range(300)]
            for future in futures:
                future.result(timeout=120)
    assert failures == []


def test_idle_client_survives_killed_backend(make_proxy, db_server) -> None:
    """When the server kills an idle pooled connection, a client between statements
    carries on with a fresh one and sees no error."""
    proxy = make_proxy()
    conn = proxy.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT @@pseudo_thread_id")  # the server's thread id
        backend_id = cur.fetchone()[0]
    root = db_server.connect()
    with root.cursor() as cur:
        cur.execute(f"KILL {int(backend_id)}")
    root.close()
    time.sleep(0.2)
    with conn.cursor() as cur:
        cur.execute("SELECT 42")
        assert cur.fetchone()[0] == 42
    conn.close()


def test_statement_on_killed_backend_gets_error_then_continues(make_proxy, db_server) -> None:
    """A statement whose backend connection dies gets an error; the same client's next
    statement runs on a fresh connection."""
    proxy = make_proxy()
    conn = proxy.connect(autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT @@pseudo_thread_id")  # the server's thread id
        backend_id = cur.fetchone()[0]

    def killer() -> None:
        time.sleep(0.5)
        root = db_server.connect()
        with root.cursor() as cur:
            cur.execute(f"KILL {int(backend_id)}")
        root.close()

    thread = threading.Thread(target=killer)
    thread.start()
    with conn.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as info:
            cur.execute("SELECT SLEEP(10)")
    thread.join()
    assert info.value.args[0] in (2013, 1927, 1053)
    with conn.cursor() as cur:
        cur.execute("SELECT 7")
        assert cur.fetchone()[0] == 7
    conn.close()


def test_transaction_on_killed_backend_is_never_reported_committed(make_proxy, db_server) -> None:
    """If the connection holding a client's open transaction dies, the client is told and
    disconnected: a later COMMIT can never report the lost work as committed."""
    proxy = make_proxy()
    setup = proxy.connect()
    with setup.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS lost_tx (id INT PRIMARY KEY)")
        cur.execute("DELETE FROM lost_tx")
    setup.close()
    conn = proxy.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO lost_tx VALUES (1)")
        cur.execute("SELECT @@pseudo_thread_id")  # the server's thread id
        backend_id = cur.fetchone()[0]
    root = db_server.connect()
    with root.cursor() as cur:
        cur.execute(f"KILL {int(backend_id)}")
    time.sleep(0.2)
    with pytest.raises(pymysql.MySQLError):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO lost_tx VALUES (2)")
            conn.commit()
    with root.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {servers.APP_DATABASE}.lost_tx")
        assert cur.fetchone()[0] == 0
    root.close()


def test_pinned_backend_is_reset_before_reuse(make_proxy) -> None:
    """A connection that served a pinned session goes back to the pool only after a reset:
    the next client on the same backend connection sees none of the old state."""
    proxy = make_proxy(pool={"max_connections": 1})
    first = proxy.connect()
    with first.cursor() as cur:
        cur.execute("SET @secret = 'pinned'")
        cur.execute("CREATE TEMPORARY TABLE pinned_tmp (v INT)")
        cur.execute("SELECT @@pseudo_thread_id")  # the server's thread id
        backend_id = cur.fetchone()[0]
    first.close()
    second = proxy.connect()
    with second.cursor() as cur:
        cur.execute("SELECT @@pseudo_thread_id, @secret")
        got_id, secret = cur.fetchone()
        assert secret is None
        assert got_id == backend_id  # the same connection, reset rather than replaced
        with pytest.raises(pymysql.MySQLError):
            cur.execute("SELECT * FROM pinned_tmp")
    second.close()
    log = proxy.log_text()
    assert "session_pinned" in log and "user variable" in log or "session state changed" in log


def _database_charset(conn: pymysql.connections.Connection) -> tuple[str, str]:
    with conn.cursor() as cur:
        cur.execute("SELECT @@character_set_database, DATABASE()")
        return cur.fetchone()


def test_reset_gives_the_default_database_charset_not_the_schemas(db_server: servers.DbServer,
                                                                  make_proxy) -> None:
    """COM_RESET_CONNECTION keeps the schema but gives character_set_database the server's
    default, not the schema's own (information_schema's is utf8mb3): a client whose schema
    is chosen again on a connection another client's reset left that way reads the schema's
    own, and a client that resets its own session reads the default, as directly."""
    direct = db_server.connect()
    try:
        with direct.cursor() as cur:
            cur.execute("USE information_schema")
        chosen = _database_charset(direct)
        direct._execute_command(COM_RESET_CONNECTION, b"")  # PyMySQL has no public call for it
        direct._read_ok_packet()
        after_reset = _database_charset(direct)
    finally:
        direct.close()
    assert chosen == ("utf8mb3", "information_schema") and after_reset[0] != chosen[0]

    proxy = make_proxy(pool={"max_connections": 1})
    reader = proxy.connect()
    other = proxy.connect()
    try:
        with reader.cursor() as cur:
            cur.execute("USE information_schema")
        with other.cursor() as cur:
            cur.execute("USE information_schema")
            cur.execute("SELECT GET_LOCK('pyproxy_reset_charset', 0)")  # pins the one connection
        other.close()  # which is reset before it serves the reader again
        assert _database_charset(reader) == chosen
        reader._execute_command(COM_RESET_CONNECTION, b"")
        reader._read_ok_packet()
        assert _database_charset(reader) == after_reset
        with reader.cursor() as cur:
            cur.execute("USE information_schema")
        assert _database_charset(reader) == chosen
    finally:
        reader.close()


def test_change_inside_a_result_set_is_carried(db_server: servers.DbServer, make_proxy) -> None:
    """A client without CLIENT_DEPRECATE_EOF (PyMySQL) runs on connections without it, whose
    classic EOFs only flag a change: a stored function that sets time_zone inside a SELECT,
    and SET TRANSACTION used up by an autocommit SELECT, are read back, carried to the
    client's next connection, kept from the next client, and pin nothing."""
    proxy = make_proxy(pool={"max_connections": 1})
    servers.as_root(db_server, f"CREATE OR REPLACE FUNCTION {servers.APP_DATABASE}.set_zone() RETURNS INT "
                               "BEGIN SET SESSION time_zone = '+02:00'; RETURN 1; END",
                    f"CREATE OR REPLACE TABLE {servers.APP_DATABASE}.carried_t (a INT) ENGINE=InnoDB")
    first, second = proxy.connect(autocommit=True), proxy.connect(autocommit=True)

    def value(conn: pymysql.connections.Connection, sql: str) -> object:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]

    try:
        assert value(first, f"SELECT {servers.APP_DATABASE}.set_zone()") == 1
        assert value(second, "SELECT @@time_zone") == "SYSTEM"
        assert value(first, "SELECT @@time_zone") == "+02:00"
        with first.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
        # Its transaction uses the characteristics (one that reads no table starts none).
        assert value(first, f"SELECT COUNT(*) FROM {servers.APP_DATABASE}.carried_t") == 0
        assert value(second, "SELECT @@time_zone") == "SYSTEM"  # so the connection went back
        with first.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE IF NOT EXISTS carried_w (a INT)")  # not read-only now
    finally:
        first.close()
        second.close()
    # Only the temporary table, made last, pinned the session.
    assert [event["reason"] for event in proxy.events("session_pinned")] == ["temporary table created"]


def test_change_inside_a_prepared_result_set_is_carried(db_server: servers.DbServer, make_proxy) -> None:
    """The same over the binary protocol (mysql-connector's prepared cursor): the stored
    function's change inside an executed SELECT is carried, kept from the next client, and
    pins nothing."""
    mysql_connector = pytest.importorskip("mysql.connector")
    proxy = make_proxy(pool={"max_connections": 1})
    servers.as_root(db_server, f"CREATE OR REPLACE FUNCTION {servers.APP_DATABASE}.set_zone_ps() RETURNS INT "
                               "BEGIN SET SESSION time_zone = '+03:00'; RETURN 1; END")
    prepared = mysql_connector.connect(host=proxy.host, port=proxy.port, user=servers.APP_USER,
                                       password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                                       use_pure=True, autocommit=True, ssl_disabled=True)
    other = proxy.connect(autocommit=True)

    def executed(sql: str) -> object:
        cur = prepared.cursor(prepared=True)
        try:
            cur.execute(sql)
            return cur.fetchall()[0][0]
        finally:
            cur.close()

    try:
        assert executed(f"SELECT {servers.APP_DATABASE}.set_zone_ps()") == 1
        with other.cursor() as cur:
            cur.execute("SELECT @@time_zone")
            assert cur.fetchone()[0] == "SYSTEM"
        assert executed("SELECT @@time_zone") in ("+03:00", b"+03:00")
    finally:
        prepared.close()
        other.close()
    assert proxy.events("session_pinned") == []


def test_session_variables_carried_without_pinning(make_proxy) -> None:
    """Clients that change sql_mode, time_zone, the isolation level, foreign_key_checks,
    wait_timeout and the character set keep them across a pool of 2 shared by 12 clients,
    and none of them is pinned."""
    proxy = make_proxy(pool={"max_connections": 2, "borrow_timeout": 60})
    isolations = ["READ-COMMITTED", "REPEATABLE-READ", "SERIALIZABLE", "READ-UNCOMMITTED"]
    failures: list[str] = []

    def client(i: int) -> None:
        conn = proxy.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                zone = f"+0{i % 10}:00"
                mode = "ANSI_QUOTES" if i % 2 else "NO_ZERO_DATE"
                isolation = isolations[i % 4]
                cur.execute("SET SESSION sql_mode = %s, time_zone = %s", (mode, zone))
                cur.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation.replace('-', ' ')}")
                cur.execute("SET foreign_key_checks = %s, wait_timeout = %s", (i % 2, 100 + i))
                cur.execute("SET NAMES latin1" if i % 3 == 0 else "SET NAMES utf8mb4")
                for _ in range(5):
                    cur.execute("SELECT @@sql_mode, @@time_zone, @@tx_isolation, @@foreign_key_checks, "
                                "@@wait_timeout, @@character_set_client")
                    got = tuple(cur.fetchone())
                    want = (mode, zone, isolation, i % 2, 100 + i, "latin1" if i % 3 == 0 else "utf8mb4")
                    if got != want:
                        failures.append(f"client {i}: {got} != {want}")
                    time.sleep(random.random() / 100)
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=12) as pool:
        for future in [pool.submit(client, i) for i in range(36)]:
            future.result(timeout=120)
    assert failures == []
    assert "session_pinned" not in proxy.log_text()


def test_unreported_set_is_carried_not_leaked(make_proxy) -> None:
    """MariaDB's session tracking does not report SET @@name = value: through one pooled
    connection shared by two clients, the client that ran it keeps its values and the
    other never sees them, and nobody is pinned."""
    proxy = make_proxy(pool={"max_connections": 1})
    setter, other = proxy.connect(autocommit=True), proxy.connect(autocommit=True)
    try:
        with setter.cursor() as mine, other.cursor() as theirs:
            theirs.execute("SELECT @@sql_mode, @@auto_increment_increment")
            defaults = theirs.fetchone()
            mine.execute("SET @@sql_mode = 'ANSI_QUOTES', @@auto_increment_increment = 7")
            for _ in range(3):
                theirs.execute("SELECT @@sql_mode, @@auto_increment_increment")
                assert theirs.fetchone() == defaults
                mine.execute("SELECT @@sql_mode, @@auto_increment_increment")
                assert mine.fetchone() == ("ANSI_QUOTES", 7)
    finally:
        setter.close()
        other.close()
    assert "session_pinned" not in proxy.log_text()


def test_last_insert_id_is_carried_to_a_later_statement(make_proxy) -> None:
    """LAST_INSERT_ID() asked statements later, after another client inserted on the same
    backend connection, still gives this client's own value, without pinning."""
    proxy = make_proxy(pool={"max_connections": 1})
    mine, theirs = proxy.connect(autocommit=True), proxy.connect(autocommit=True)
    with mine.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS lid_a (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        cur.execute("CREATE TABLE IF NOT EXISTS lid_b (id INT AUTO_INCREMENT PRIMARY KEY, v INT) "
                    "AUTO_INCREMENT=1000")
        cur.execute("INSERT INTO lid_a (v) VALUES (1)")
        own = cur.lastrowid
        cur.execute("SELECT 1")
    with theirs.cursor() as cur:
        cur.execute("INSERT INTO lid_b (v) VALUES (2)")
        assert cur.lastrowid >= 1000
        cur.execute("SELECT 2")
    with mine.cursor() as cur:
        cur.execute("SELECT 3")
        cur.execute("SELECT LAST_INSERT_ID()")
        assert cur.fetchone()[0] == own
    with theirs.cursor() as cur:
        cur.execute("SELECT LAST_INSERT_ID()")
        assert cur.fetchone()[0] >= 1000
    mine.close()
    theirs.close()
    assert "session_pinned" not in proxy.log_text()


def test_row_count_reader_is_pinned(make_proxy) -> None:
    """ROW_COUNT() reads the previous statement of the same server session: right after a
    change it runs where the change ran, and the session is then pinned with that reason."""
    proxy = make_proxy(pool={"max_connections": 2})
    conn = proxy.connect(autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS rc (v INT)")
        cur.execute("INSERT INTO rc VALUES (1), (2), (3)")
        cur.execute("SELECT ROW_COUNT()")
        assert cur.fetchone()[0] == 3
        cur.execute("DELETE FROM rc")
        cur.execute("SELECT ROW_COUNT()")
        assert cur.fetchone()[0] == 3
    conn.close()
    assert "ROW_COUNT()" in proxy.log_text()
