"""mysql-connector-python through pyproxy: the pure-Python protocol and the C extension.

The C extension is used when it imports here; otherwise its variant is skipped, saying why.
"""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any

import mysql.connector
import pytest
from mysql.connector import errors

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("bounded")


def _cext_problem() -> str | None:
    try:
        import mysql.connector.connection_cext  # noqa: F401, PLC0415
    except ImportError as exc:
        return f"mysql-connector's C extension is not usable here: {exc}"
    return None



@pytest.fixture(params=["pure", "cext"])
def use_pure(request: pytest.FixtureRequest) -> bool:
    if request.param == "cext":
        problem = _cext_problem()
        if problem:
            pytest.skip(problem)
    return request.param == "pure"


def connect(proxy: servers.ProxyProcess, use_pure: bool, **kwargs: Any) -> Any:
    params: dict[str, Any] = {
        "host": proxy.host, "port": proxy.port, "user": drivers.APP_USER,
        "password": drivers.APP_PASSWORD, "database": drivers.APP_DATABASE,
        "charset": "utf8mb4", "collation": "utf8mb4_general_ci", "use_pure": use_pure,
        "connection_timeout": 10, "autocommit": True,
    }
    params.update(kwargs)
    conn = mysql.connector.connect(**params)
    if use_pure:
        assert type(conn).__name__ == "MySQLConnection"
    else:
        assert type(conn).__name__ == "CMySQLConnection"
    return conn


def scalar(conn: Any, sql: str, args: Any = None) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql, args)
        return cur.fetchone()[0]
    finally:
        cur.close()


def test_plain_queries(proxy: servers.ProxyProcess, use_pure: bool) -> None:
    table = drivers.unique_table("connector_plain")
    conn = connect(proxy, use_pure)
    try:
        cur = conn.cursor()
        cur.execute(drivers.LITERAL_SELECT)
        assert cur.fetchall() == [drivers.LITERAL_EXPECTED]
        assert cur.column_names == ("i", "n", "d", "dt", "s", "f")
        cur.execute(drivers.SAMPLE_DDL.format(table=table))
        cur.executemany(drivers.sample_insert(table), drivers.SAMPLE_ROWS)
        assert cur.rowcount == len(drivers.SAMPLE_ROWS)
        cur.execute(drivers.SAMPLE_SELECT.format(table=table))
        assert [drivers.normalise_row(r) for r in cur.fetchall()] == drivers.SAMPLE_ROWS
        cur.execute(f"SELECT name FROM {table} WHERE name = %s", (drivers.EMOJI_TEXT,))
        assert cur.fetchall() == [(drivers.EMOJI_TEXT,)]
        cur.close()
    finally:
        conn.close()


def test_commit_and_rollback_seen_from_second_connection(proxy: servers.ProxyProcess,
                                                         use_pure: bool) -> None:
    table = drivers.unique_table("connector_tx")
    writer = connect(proxy, use_pure, autocommit=False)
    reader = connect(proxy, use_pure)
    try:
        cur = writer.cursor()
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20))")
        writer.start_transaction()
        cur.execute(f"INSERT INTO {table} VALUES (1, 'committed')")
        assert writer.in_transaction
        assert scalar(reader, f"SELECT COUNT(*) FROM {table}") == 0
        writer.commit()
        assert scalar(reader, f"SELECT v FROM {table} WHERE id = 1") == "committed"

        writer.start_transaction()
        cur.execute(f"INSERT INTO {table} VALUES (2, 'rolled back')")
        assert scalar(reader, f"SELECT COUNT(*) FROM {table}") == 1
        writer.rollback()
        assert not writer.in_transaction
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        assert cur.fetchall() == [(1,)]
        writer.commit()
        cur.close()
        rcur = reader.cursor()
        rcur.execute(f"SELECT id, v FROM {table} ORDER BY id")
        assert rcur.fetchall() == [(1, "committed")]
        rcur.close()
    finally:
        writer.close()
        reader.close()


def test_multi_statements(proxy: servers.ProxyProcess, use_pure: bool) -> None:
    """``multi=True`` on older Connector/Python; a plain execute plus nextset() on 9.2 and newer."""
    table = drivers.unique_table("connector_multi")
    conn = connect(proxy, use_pure)
    sql = (f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20)); "
           f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'); "
           f"SELECT id, v FROM {table} ORDER BY id; "
           f"UPDATE {table} SET v = 'c' WHERE id = 2; "
           "SELECT NULL AS n, 'x' AS s")
    try:
        cur = conn.cursor()
        sets = []
        if "multi" in inspect.signature(cur.execute).parameters:  # Connector/Python < 9.2
            for result in cur.execute(sql, multi=True):
                sets.append(result.fetchall() if result.with_rows else result.rowcount)
        else:
            cur.execute(sql)
            while True:
                sets.append(cur.fetchall() if cur.with_rows else cur.rowcount)
                if not cur.nextset():
                    break
        assert sets == [0, 2, [(1, "a"), (2, "b")], 1, [(None, "x")]]
        cur.execute(f"SELECT v FROM {table} WHERE id = 2")
        assert cur.fetchall() == [("c",)]
        cur.close()
    finally:
        conn.close()


def test_load_data_local_infile(proxy: servers.ProxyProcess, use_pure: bool, tmp_path: Path,
                                db_server: servers.DbServer) -> None:
    table = drivers.unique_table("connector_infile")
    path, rows, total = drivers.write_infile(tmp_path)
    conn = connect(proxy, use_pure, allow_local_infile=True)
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


def test_blob_larger_than_16_mib(proxy: servers.ProxyProcess, use_pure: bool,
                                 db_server: servers.DbServer) -> None:
    table = drivers.unique_table("connector_blob")
    data = drivers.blob_payload()
    # Connector/Python has no max_allowed_packet option: it announces 1 GiB and sends any size.
    conn = connect(proxy, use_pure)
    try:
        cur = conn.cursor()
        cur.execute(drivers.BLOB_DDL.format(table=table))
        cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (data,))
        drivers.check_blob_on_server(db_server, table, 1, data)
        cur.execute(f"SELECT data FROM {table} WHERE id = 1")
        (got,) = cur.fetchone()
        assert len(got) == len(data) and bytes(got) == data
        cur.close()
        # Not read back with prepared=True: Connector/Python's pure protocol reads only the
        # first packet of a binary-protocol row, so it truncates a >16 MiB value to 16777204
        # bytes even when connected straight to the server (mysql2's execute() covers that).
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()


def test_prepared_statements(proxy: servers.ProxyProcess, use_pure: bool,
                             db_server: servers.DbServer) -> None:
    """Server-side prepared statements (COM_STMT_PREPARE/EXECUTE/SEND_LONG_DATA/CLOSE)."""
    table = drivers.unique_table("connector_prep")
    conn = connect(proxy, use_pure)
    other = connect(proxy, use_pure)
    try:
        cur = conn.cursor()
        cur.execute(drivers.SAMPLE_DDL.format(table=table))
        cur.close()
        pcur = conn.cursor(prepared=True)
        insert = drivers.sample_insert(table, "?")
        for row in drivers.SAMPLE_ROWS:
            pcur.execute(insert, row)
            assert pcur.rowcount == 1
        # Binary-protocol results: NULL, DECIMAL, DATETIME and utf8mb4 text.
        select = (f"SELECT id, name, amount, created, note, score FROM {table} "
                  "WHERE id >= ? ORDER BY id")
        for low in (1, 3, 2):
            pcur.execute(select, (low,))
            got = [drivers.normalise_row(r) for r in pcur.fetchall()]
            assert got == [r for r in drivers.SAMPLE_ROWS if r[0] >= low]
            # Another client is served meanwhile (the prepared session keeps its backend).
            assert scalar(other, f"SELECT COUNT(*) FROM {table}") == len(drivers.SAMPLE_ROWS)
        pcur.execute("SELECT ?, ?, ?", (None, drivers.EMOJI_TEXT, 7))
        got = [drivers.normalise_row(r) for r in pcur.fetchall()]
        assert got == [(None, drivers.EMOJI_TEXT, 7)]
        pcur.close()
        # COM_STMT_SEND_LONG_DATA: a file-like parameter is streamed before the execute.
        long_value = drivers.EMOJI_TEXT.encode() * 2000  # 60000 bytes: fits TEXT
        lcur = conn.cursor(prepared=True)
        lcur.execute(f"UPDATE {table} SET note = ? WHERE id = ?", (io.BytesIO(long_value), 3))
        lcur.close()
        assert drivers.admin_scalar(
            db_server, f"SELECT note FROM {table} WHERE id = 3") == long_value.decode()
        assert scalar(conn, "SELECT 2") == 2
    finally:
        conn.close()
        other.close()


def test_wrong_password(proxy: servers.ProxyProcess, use_pure: bool) -> None:
    with pytest.raises(errors.Error) as info:
        connect(proxy, use_pure, password=drivers.WRONG_PASSWORD)
    err = info.value
    drivers.assert_access_denied(err.errno, err.msg, err.sqlstate)
    conn = connect(proxy, use_pure)
    try:
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()


def test_set_charset_collation_is_carried(proxy: servers.ProxyProcess, use_pure: bool) -> None:
    """set_charset_collation('latin1') (SET NAMES latin1) holds after another client used the
    backend connection in between."""
    conn = connect(proxy, use_pure)
    other = connect(proxy, use_pure)
    try:
        conn.set_charset_collation("latin1")
        assert scalar(conn, "SELECT @@collation_connection") == "latin1_swedish_ci"
        assert scalar(other, "SELECT COUNT(*) FROM information_schema.CHARACTER_SETS") > 0
        cur = conn.cursor()
        cur.execute("SELECT @@character_set_connection, @@collation_connection, LENGTH(%s)",
                    ("\u00e9",))
        assert cur.fetchall() == [("latin1", "latin1_swedish_ci", 1)]
        cur.close()
    finally:
        conn.close()
        other.close()
