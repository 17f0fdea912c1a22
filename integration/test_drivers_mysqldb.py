"""mysqlclient (MySQLdb) through pyproxy: the C client library (libmariadb/libmysqlclient)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

MySQLdb = pytest.importorskip("MySQLdb")
from MySQLdb.constants import CLIENT  # noqa: E402

pytestmark = pytest.mark.usefixtures("bounded")



def connect(proxy: servers.ProxyProcess, **kwargs: Any) -> Any:
    params: dict[str, Any] = {
        "host": proxy.host, "port": proxy.port, "user": drivers.APP_USER,
        "password": drivers.APP_PASSWORD, "database": drivers.APP_DATABASE,
        "charset": "utf8mb4", "connect_timeout": 10, "read_timeout": drivers.IO_TIMEOUT,
        "write_timeout": drivers.IO_TIMEOUT, "autocommit": True,
    }
    params.update(kwargs)
    return MySQLdb.connect(**params)


def scalar(conn: Any, sql: str, args: Any = None) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql, args)
        return cur.fetchone()[0]
    finally:
        cur.close()


def test_plain_queries(proxy: servers.ProxyProcess) -> None:
    table = drivers.unique_table("mysqldb_plain")
    conn = connect(proxy)
    try:
        cur = conn.cursor()
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
        cur.close()
        # The C library's own calls: server info, ping (COM_PING) and character set.
        assert conn.get_server_info()
        conn.ping()
        assert conn.character_set_name() == "utf8mb4"
    finally:
        conn.close()


def test_commit_and_rollback_seen_from_second_connection(proxy: servers.ProxyProcess) -> None:
    table = drivers.unique_table("mysqldb_tx")
    writer = connect(proxy, autocommit=False)
    reader = connect(proxy)
    try:
        cur = writer.cursor()
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20))")
        cur.execute("BEGIN")
        cur.execute(f"INSERT INTO {table} VALUES (1, 'committed')")
        assert scalar(reader, f"SELECT COUNT(*) FROM {table}") == 0
        writer.commit()
        assert scalar(reader, f"SELECT v FROM {table} WHERE id = 1") == "committed"

        cur.execute(f"INSERT INTO {table} VALUES (2, 'rolled back')")  # autocommit off
        assert scalar(reader, f"SELECT COUNT(*) FROM {table}") == 1
        writer.rollback()
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        assert cur.fetchall() == ((1,),)
        writer.commit()
        cur.close()
        assert scalar(reader, f"SELECT GROUP_CONCAT(id) FROM {table}") == "1"
    finally:
        writer.close()
        reader.close()


def test_multi_statements(proxy: servers.ProxyProcess) -> None:
    table = drivers.unique_table("mysqldb_multi")
    conn = connect(proxy, client_flag=CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS)
    try:
        cur = conn.cursor()
        cur.execute(drivers.multi_statement_sql(table))
        assert drivers.collect_result_sets(cur) == drivers.MULTI_STATEMENT_RESULTS
        cur.execute(f"SELECT v FROM {table} WHERE id = 2")
        assert cur.fetchall() == (("c",),)
        cur.close()
    finally:
        conn.close()


def test_load_data_local_infile(proxy: servers.ProxyProcess, tmp_path: Path,
                                db_server: servers.DbServer) -> None:
    table = drivers.unique_table("mysqldb_infile")
    path, rows, total = drivers.write_infile(tmp_path)
    conn = connect(proxy, local_infile=True)
    try:
        cur = conn.cursor()
        cur.execute(drivers.INFILE_DDL.format(table=table))
        cur.execute(drivers.load_data_sql(path, table))
        assert cur.rowcount == rows
        cur.execute(f"SELECT COUNT(*), SUM(qty) FROM {table}")
        count, qty = cur.fetchone()
        assert (count, int(qty)) == (rows, total)
        cur.close()
    finally:
        conn.close()
    assert drivers.admin_scalar(db_server, f"SELECT COUNT(*) FROM {table}") == rows


def test_blob_larger_than_16_mib(proxy: servers.ProxyProcess, db_server: servers.DbServer,
                                 tmp_path: Path) -> None:
    table = drivers.unique_table("mysqldb_blob")
    data = drivers.blob_payload()
    # The C library takes max_allowed_packet from an option file's [client] group.
    options = tmp_path / "client.cnf"
    options.write_text(f"[client]\nmax_allowed_packet={drivers.MAX_ALLOWED_PACKET}\n")
    conn = connect(proxy, read_default_file=str(options))
    try:
        cur = conn.cursor()
        cur.execute(drivers.BLOB_DDL.format(table=table))
        cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (data,))
        drivers.check_blob_on_server(db_server, table, 1, data)
        cur.execute(f"SELECT data, LENGTH(data) FROM {table} WHERE id = 1")
        got, length = cur.fetchone()
        assert length == len(data)
        assert len(got) == len(data) and got == data
        cur.close()
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()


def test_prepared_statements() -> None:
    pytest.skip("MySQLdb has no server-side prepared statements (parameters are escaped "
                "client-side); covered by mysql-connector and mysql2")


def test_wrong_password(proxy: servers.ProxyProcess) -> None:
    """1045 and the message; MySQLdb does not expose the SQLSTATE of a failed connect."""
    with pytest.raises(MySQLdb.OperationalError) as info:
        connect(proxy, password=drivers.WRONG_PASSWORD)
    code, message = info.value.args
    drivers.assert_access_denied(code, message)
    conn = connect(proxy)
    try:
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()


def test_set_character_set_is_carried(proxy: servers.ProxyProcess) -> None:
    """set_character_set('latin1') (mysql_set_character_set: SET NAMES latin1) holds after
    another client used the backend connection in between."""
    conn = connect(proxy)
    other = connect(proxy)
    try:
        conn.set_character_set("latin1")
        assert scalar(conn, "SELECT @@collation_connection") == "latin1_swedish_ci"
        assert scalar(other, "SELECT COUNT(*) FROM information_schema.CHARACTER_SETS") > 0
        cur = conn.cursor()
        cur.execute("SELECT @@character_set_connection, @@collation_connection, LENGTH(%s)",
                    ("\u00e9",))
        assert cur.fetchall() == (("latin1", "latin1_swedish_ci", 1),)
        cur.close()
    finally:
        conn.close()
        other.close()


def test_multi_statement_error_inside_transaction(proxy: servers.ProxyProcess,
                                                  db_server: servers.DbServer) -> None:
    table = drivers.unique_table("mysqldb_txerr")
    owner = connect(proxy, client_flag=CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS)
    try:
        cur = owner.cursor()
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
        with pytest.raises(MySQLdb.OperationalError) as info:
            cur.execute(f"START TRANSACTION; INSERT INTO {table} VALUES (1); "
                        f"SELECT no_such_column FROM {table}")
            while cur.nextset():
                pass
        assert info.value.args[0] == 1054
        cur.close()
        other = connect(proxy)
        try:
            assert scalar(other, "SELECT @@in_transaction") == 0
            ocur = other.cursor()
            ocur.execute(f"INSERT INTO {table} VALUES (2)")
            ocur.close()
        finally:
            other.close()
        assert scalar(owner, "SELECT @@in_transaction") == 1
        owner.rollback()
    finally:
        owner.close()
    assert drivers.admin_query(db_server, f"SELECT id FROM {table} ORDER BY id") == [(2,)]
