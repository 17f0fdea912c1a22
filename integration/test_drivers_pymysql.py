"""PyMySQL through pyproxy: the pure-Python driver pyproxy itself is built on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("bounded")



def connect(proxy: servers.ProxyProcess, **kwargs: Any) -> pymysql.connections.Connection:
    params: dict[str, Any] = {
        "host": proxy.host, "port": proxy.port, "user": drivers.APP_USER,
        "password": drivers.APP_PASSWORD, "database": drivers.APP_DATABASE,
        "charset": "utf8mb4", "connect_timeout": 10, "read_timeout": drivers.IO_TIMEOUT,
        "write_timeout": drivers.IO_TIMEOUT, "autocommit": True,
    }
    params.update(kwargs)
    return pymysql.connect(**params)


def scalar(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def test_plain_queries(proxy: servers.ProxyProcess) -> None:
    """Literal types, then a table written and read back: NULL, DECIMAL, DATETIME, emoji."""
    table = drivers.unique_table("pymysql_plain")
    conn = connect(proxy)
    try:
        with conn.cursor() as cur:
            cur.execute(drivers.LITERAL_SELECT)
            assert cur.fetchall() == (drivers.LITERAL_EXPECTED,)
            assert [d[0] for d in cur.description] == ["i", "n", "d", "dt", "s", "f"]
            cur.execute(drivers.SAMPLE_DDL.format(table=table))
            cur.executemany(drivers.sample_insert(table), drivers.SAMPLE_ROWS)
            assert cur.rowcount == len(drivers.SAMPLE_ROWS)
            cur.execute(drivers.SAMPLE_SELECT.format(table=table))
            assert [drivers.normalise_row(r) for r in cur.fetchall()] == drivers.SAMPLE_ROWS
            cur.execute(f"SELECT name FROM {table} WHERE name = %s", (drivers.EMOJI_TEXT,))
            assert cur.fetchall() == ((drivers.EMOJI_TEXT,),)
            cur.execute(f"SELECT id FROM {table} WHERE id > 100")
            assert cur.fetchall() == ()
    finally:
        conn.close()


def test_commit_and_rollback_seen_from_second_connection(proxy: servers.ProxyProcess) -> None:
    table = drivers.unique_table("pymysql_tx")
    writer = connect(proxy, autocommit=False)
    reader = connect(proxy)
    try:
        with writer.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20))")
            writer.begin()
            cur.execute(f"INSERT INTO {table} VALUES (1, 'committed')")
            # Not visible to another client while the transaction is open...
            assert scalar(reader, f"SELECT COUNT(*) FROM {table}") == 0
            writer.commit()
            # ...and visible once committed.
            assert scalar(reader, f"SELECT v FROM {table} WHERE id = 1") == "committed"

            writer.begin()
            cur.execute(f"INSERT INTO {table} VALUES (2, 'rolled back')")
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            assert cur.fetchone()[0] == 2  # the writer sees its own row
            assert scalar(reader, f"SELECT COUNT(*) FROM {table}") == 1
            writer.rollback()
            cur.execute(f"SELECT id FROM {table} ORDER BY id")
            assert cur.fetchall() == ((1,),)
            writer.commit()
        with reader.cursor() as cur:
            cur.execute(f"SELECT id, v FROM {table} ORDER BY id")
            assert cur.fetchall() == ((1, "committed"),)
    finally:
        writer.close()
        reader.close()


def test_multi_statements(proxy: servers.ProxyProcess) -> None:
    table = drivers.unique_table("pymysql_multi")
    conn = connect(proxy, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with conn.cursor() as cur:
            cur.execute(drivers.multi_statement_sql(table))
            assert drivers.collect_result_sets(cur) == drivers.MULTI_STATEMENT_RESULTS
            # The connection is usable afterwards and the statements took effect.
            cur.execute(f"SELECT v FROM {table} WHERE id = 2")
            assert cur.fetchall() == (("c",),)
    finally:
        conn.close()


def test_load_data_local_infile(proxy: servers.ProxyProcess, tmp_path: Path,
                                db_server: servers.DbServer) -> None:
    table = drivers.unique_table("pymysql_infile")
    path, rows, total = drivers.write_infile(tmp_path)
    conn = connect(proxy, local_infile=True)
    try:
        with conn.cursor() as cur:
            cur.execute(drivers.INFILE_DDL.format(table=table))
            cur.execute(drivers.load_data_sql(path, table))
            assert cur.rowcount == rows
            cur.execute(f"SELECT COUNT(*), SUM(qty), MAX(label) FROM {table}")
            count, qty, label = cur.fetchone()
            assert (count, int(qty)) == (rows, total)
            assert label.endswith("\u00e9\U0001F600")
    finally:
        conn.close()
    assert drivers.admin_scalar(db_server, f"SELECT COUNT(*) FROM {table}") == rows


def test_blob_larger_than_16_mib(proxy: servers.ProxyProcess, db_server: servers.DbServer) -> None:
    table = drivers.unique_table("pymysql_blob")
    data = drivers.blob_payload()
    conn = connect(proxy, max_allowed_packet=drivers.MAX_ALLOWED_PACKET)
    try:
        with conn.cursor() as cur:
            cur.execute(drivers.BLOB_DDL.format(table=table))
            cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (data,))
            drivers.check_blob_on_server(db_server, table, 1, data)
            cur.execute(f"SELECT data, LENGTH(data) FROM {table} WHERE id = 1")
            got, length = cur.fetchone()
            assert length == len(data)
            assert len(got) == len(data) and got == data
            # The connection still works after two multi-packet messages.
            assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()


def test_prepared_statements() -> None:
    pytest.skip("PyMySQL has no server-side prepared statements (it interpolates parameters "
                "client-side); covered by mysql-connector and mysql2")


def test_wrong_password(proxy: servers.ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """1045 with SQLSTATE 28000; PyMySQL drops the SQLSTATE, so the raw ERR packet is captured."""
    packets: list[bytes] = []
    original = pymysql.err.raise_mysql_exception

    def capture(data: bytes) -> None:
        packets.append(bytes(data))
        original(data)

    monkeypatch.setattr(pymysql.err, "raise_mysql_exception", capture)
    with pytest.raises(pymysql.err.OperationalError) as info:
        connect(proxy, password=drivers.WRONG_PASSWORD)
    code, message = info.value.args
    assert packets and packets[-1][3:4] == b"#"
    drivers.assert_access_denied(code, message, packets[-1][4:9].decode())
    assert f"'{drivers.APP_USER}'@" in message and "using password: YES" in message
    monkeypatch.undo()
    # The proxy still serves correct logins.
    conn = connect(proxy)
    try:
        assert scalar(conn, "SELECT CURRENT_USER()").startswith(f"{drivers.APP_USER}@")
    finally:
        conn.close()


# --- session state across pooled borrows ---------------------------------------------------------
# pyproxy lends a backend connection per transaction (or per statement in autocommit), so what
# one statement leaves in the session must still be there, and only there, for the next one.

def test_multi_statement_error_inside_transaction(proxy: servers.ProxyProcess,
                                                  db_server: servers.DbServer) -> None:
    """'START TRANSACTION; INSERT; <error>' leaves the transaction open in *this* session only."""
    table = drivers.unique_table("pymysql_txerr")
    owner = connect(proxy, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with owner.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
        with pytest.raises(pymysql.err.OperationalError) as info, owner.cursor() as cur:
            cur.execute(f"START TRANSACTION; INSERT INTO {table} VALUES (1); "
                        f"SELECT no_such_column FROM {table}")
        assert info.value.args[0] == 1054
        other = connect(proxy)
        try:
            # A new client is never inside somebody else's transaction...
            assert scalar(other, "SELECT @@in_transaction") == 0
            with other.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (2)")  # autocommit: durable
        finally:
            other.close()
        # ...and the owner still is.
        assert scalar(owner, "SELECT @@in_transaction") == 1
        owner.rollback()
    finally:
        owner.close()
    assert drivers.admin_query(db_server, f"SELECT id FROM {table} ORDER BY id") == [(2,)]


def test_set_character_set_is_carried(proxy: servers.ProxyProcess) -> None:
    """set_character_set('latin1') (SET NAMES latin1) holds after another client used the
    backend connection in between."""
    conn = connect(proxy)
    other = connect(proxy)
    try:
        conn.set_character_set("latin1")
        sql = "SELECT @@character_set_connection, @@collation_connection, LENGTH(%s), HEX(%s)"
        assert scalar(conn, "SELECT @@collation_connection") == "latin1_swedish_ci"
        assert scalar(other, "SELECT COUNT(*) FROM information_schema.CHARACTER_SETS") > 0
        with conn.cursor() as cur:
            cur.execute(sql, ("\u00e9", "\u00e9"))
            assert cur.fetchone() == ("latin1", "latin1_swedish_ci", 1, "E9")
    finally:
        conn.close()
        other.close()


def test_last_insert_id_is_per_session(proxy: servers.ProxyProcess) -> None:
    mine, theirs = drivers.unique_table("pymysql_lid"), drivers.unique_table("pymysql_lid")
    conn = connect(proxy)
    other = connect(proxy)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {mine} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
            cur.execute(f"CREATE TABLE {theirs} (id INT AUTO_INCREMENT PRIMARY KEY, v INT) "
                        "AUTO_INCREMENT=1000")
            cur.execute(f"INSERT INTO {mine} (v) VALUES (1)")
            assert cur.lastrowid == 1
        with other.cursor() as cur:
            cur.execute(f"INSERT INTO {theirs} (v) VALUES (2)")
            assert cur.lastrowid == 1000
        assert scalar(conn, "SELECT LAST_INSERT_ID()") == 1
    finally:
        conn.close()
        other.close()


def test_show_warnings_is_per_session(proxy: servers.ProxyProcess) -> None:
    conn = connect(proxy)
    other = connect(proxy)
    try:
        assert scalar(conn, "SELECT 1/0") is None
        # A statement that uses a table resets the warnings of the connection it runs on.
        assert scalar(other, "SELECT COUNT(*) FROM information_schema.CHARACTER_SETS") > 0
        with conn.cursor() as cur:
            cur.execute("SHOW WARNINGS")
            assert cur.fetchall() == (("Warning", 1365, "Division by 0"),)
    finally:
        conn.close()
        other.close()
