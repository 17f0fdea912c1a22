"""The ``mariadb`` command-line client (libmariadb) through pyproxy, run as a subprocess."""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.usefixtures("bounded"),
    pytest.mark.skipif(drivers.mariadb_client() is None,
                       reason="the mariadb client is not installed (scripts/install-deps)"),
]



def sql_literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, datetime.datetime):
        return f"'{value:%Y-%m-%d %H:%M:%S}'"
    return str(value)


def parse_sample(row: list[str]) -> tuple:
    """Batch output is text (--raw: unescaped); turn a sample row back into Python values.

    No sample value is the string "NULL", so "NULL" stands for NULL.
    """
    def maybe(text: str, kind: type) -> object:
        return None if text == "NULL" else kind(text)

    return (int(row[0]), row[1], maybe(row[2], decimal.Decimal),
            maybe(row[3], datetime.datetime.fromisoformat), maybe(row[4], str),
            maybe(row[5], float))


def test_plain_queries(proxy: servers.ProxyProcess) -> None:
    table = drivers.unique_table("cli_plain")
    result = drivers.run_cli(proxy, drivers.LITERAL_SELECT)
    (row,) = drivers.cli_rows(result)
    assert row == ["42", "NULL", "12345.6789", "2024-02-29 23:59:58", drivers.EMOJI_TEXT, "1.5"]

    values = ", ".join("(" + ", ".join(sql_literal(v) for v in row) + ")"
                       for row in drivers.SAMPLE_ROWS)
    script = (drivers.SAMPLE_DDL.format(table=table) + ";\n"
              f"INSERT INTO {table} (id, name, amount, created, note, score) VALUES {values};\n"
              + drivers.SAMPLE_SELECT.format(table=table) + ";\n")
    rows = drivers.cli_rows(drivers.run_cli(proxy, None, stdin=script.encode("utf-8")))
    assert [parse_sample(r) for r in rows] == drivers.SAMPLE_ROWS


def test_commit_and_rollback_seen_from_second_connection(proxy: servers.ProxyProcess) -> None:
    """Each client run is one connection; the checks run in separate ones."""
    table = drivers.unique_table("cli_tx")
    drivers.cli_rows(drivers.run_cli(proxy, f"CREATE TABLE {table} (id INT PRIMARY KEY, v TEXT)"))
    out = drivers.cli_rows(drivers.run_cli(
        proxy, f"START TRANSACTION; INSERT INTO {table} VALUES (1, 'committed'); "
               f"SELECT COUNT(*) FROM {table}; COMMIT"))
    assert out == [["1"]]
    out = drivers.cli_rows(drivers.run_cli(
        proxy, f"START TRANSACTION; INSERT INTO {table} VALUES (2, 'rolled back'); "
               f"SELECT COUNT(*) FROM {table}; ROLLBACK; SELECT COUNT(*) FROM {table}"))
    assert out == [["2"], ["1"]]
    # A transaction left open when the client quits is rolled back.
    drivers.cli_rows(drivers.run_cli(
        proxy, f"START TRANSACTION; INSERT INTO {table} VALUES (3, 'abandoned')"))
    out = drivers.cli_rows(drivers.run_cli(proxy, f"SELECT id, v FROM {table} ORDER BY id"))
    assert out == [["1", "committed"]]


#: The client splits its input on the delimiter and sends one statement at a time; with another
#: delimiter, "a; b" goes to the server as one multi-statement COM_QUERY.
MULTI = "--delimiter=//"


def test_multi_statements(proxy: servers.ProxyProcess) -> None:
    """One COM_QUERY with several statements (the client always asks for multi-statements);
    the client prints every result set."""
    table = drivers.unique_table("cli_multi")
    out = drivers.cli_rows(drivers.run_cli(
        proxy, f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20)); "
               f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'); "
               f"SELECT id, v FROM {table} ORDER BY id; "
               f"UPDATE {table} SET v = 'c' WHERE id = 2; "
               "SELECT NULL, 'x'; "
               f"SELECT GROUP_CONCAT(v ORDER BY id) FROM {table}", MULTI))
    assert out == [["1", "a"], ["2", "b"], ["NULL", "x"], ["a,c"]]
    # The same text split by the client: one statement per COM_QUERY.
    out = drivers.cli_rows(drivers.run_cli(
        proxy, f"UPDATE {table} SET v = 'd' WHERE id = 1; "
               f"SELECT GROUP_CONCAT(v ORDER BY id) FROM {table}"))
    assert out == [["d,c"]]


def test_load_data_local_infile(proxy: servers.ProxyProcess, tmp_path: Path,
                                db_server: servers.DbServer) -> None:
    table = drivers.unique_table("cli_infile")
    path, rows, total = drivers.write_infile(tmp_path)
    out = drivers.cli_rows(drivers.run_cli(
        proxy, drivers.INFILE_DDL.format(table=table) + "; "
        + drivers.load_data_sql(path, table) + "; "
        f"SELECT COUNT(*), SUM(qty) FROM {table}", "--local-infile=1"))
    assert out == [[str(rows), str(total)]]
    assert drivers.admin_scalar(db_server, f"SELECT COUNT(*) FROM {table}") == rows


def test_load_data_local_infile_refused_without_option(proxy: servers.ProxyProcess,
                                                       tmp_path: Path) -> None:
    """Without --local-infile the request is refused (ERROR 4166); the session goes on."""
    table = drivers.unique_table("cli_noinfile")
    path, _, _ = drivers.write_infile(tmp_path, rows=10)
    drivers.cli_rows(drivers.run_cli(proxy, drivers.INFILE_DDL.format(table=table)))
    script = drivers.load_data_sql(path, table) + ";\nSELECT 1;\n"
    result = drivers.run_cli(proxy, None, "--local-infile=0", "--force",
                             stdin=script.encode())
    stderr = result.stderr.decode(errors="replace")
    assert "ERROR" in stderr and ("4166" in stderr or "1148" in stderr or "2068" in stderr), stderr
    assert result.stdout.decode().split() == ["1"], (result.stdout, stderr)


def test_blob_larger_than_16_mib(proxy: servers.ProxyProcess, db_server: servers.DbServer) -> None:
    """Sent as a hex literal (a 32 MiB statement), read back with HEX() (a 32 MiB row)."""
    table = drivers.unique_table("cli_blob")
    data = drivers.blob_payload()
    packet = f"--max-allowed-packet={drivers.MAX_ALLOWED_PACKET}"
    drivers.cli_rows(drivers.run_cli(proxy, drivers.BLOB_DDL.format(table=table)))
    script = f"INSERT INTO {table} VALUES (1, X'".encode() + data.hex().encode() + b"');\n"
    drivers.cli_rows(drivers.run_cli(proxy, None, packet, stdin=script))
    drivers.check_blob_on_server(db_server, table, 1, data)
    out = drivers.cli_rows(drivers.run_cli(
        proxy, f"SELECT LENGTH(data), HEX(data) FROM {table} WHERE id = 1", packet))
    assert len(out) == 1 and out[0][0] == str(len(data))
    assert bytes.fromhex(out[0][1]) == data


def test_prepared_statements(proxy: servers.ProxyProcess) -> None:
    """The client has no binary protocol; SQL PREPARE/EXECUTE are server-side statements."""
    table = drivers.unique_table("cli_prep")
    out = drivers.cli_rows(drivers.run_cli(
        proxy, f"CREATE TABLE {table} (id INT PRIMARY KEY, d DECIMAL(12,4), t VARCHAR(50)); "
               f"PREPARE ins FROM 'INSERT INTO {table} VALUES (?, ?, ?)'; "
               "SET @i = 1, @d = 2.5, @t = _utf8mb4'\U0001F600'; EXECUTE ins USING @i, @d, @t; "
               "SET @i = 2, @d = NULL, @t = NULL; EXECUTE ins USING @i, @d, @t; "
               "DEALLOCATE PREPARE ins; "
               f"PREPARE sel FROM 'SELECT id, d, t FROM {table} WHERE id >= ? ORDER BY id'; "
               "SET @low = 1; EXECUTE sel USING @low; "
               "SET @low = 2; EXECUTE sel USING @low"))
    assert out == [["1", "2.5000", "\U0001F600"], ["2", "NULL", "NULL"], ["2", "NULL", "NULL"]]


def test_wrong_password(proxy: servers.ProxyProcess) -> None:
    result = drivers.run_cli(proxy, "SELECT 1", password=drivers.WRONG_PASSWORD)
    stderr = result.stderr.decode(errors="replace").strip()
    assert result.returncode == 1
    assert stderr.startswith(f"ERROR 1045 (28000): Access denied for user '{drivers.APP_USER}'@"), stderr
    assert result.stdout == b""
    assert drivers.cli_rows(drivers.run_cli(proxy, "SELECT 1")) == [["1"]]


# --- session state across pooled borrows: one client run after another -------------------------


def test_failed_multi_statement_transaction_does_not_reach_next_client(
        proxy: servers.ProxyProcess, db_server: servers.DbServer) -> None:
    """The first run sends one multi-statement that opens a transaction and then fails, and
    quits (the server would roll the transaction back); the next run starts clean and its
    autocommit INSERT is durable."""
    table = drivers.unique_table("cli_txerr")
    drivers.cli_rows(drivers.run_cli(proxy, f"CREATE TABLE {table} (id INT PRIMARY KEY)"))
    failed = drivers.run_cli(proxy, f"START TRANSACTION; INSERT INTO {table} VALUES (1); "
                                    f"SELECT no_such_column FROM {table}", MULTI)
    assert failed.returncode == 1 and b"ERROR 1054" in failed.stderr, failed.stderr
    out = drivers.cli_rows(drivers.run_cli(
        proxy, f"SELECT @@in_transaction; INSERT INTO {table} VALUES (2)"))
    assert out == [["0"]]
    assert drivers.admin_query(db_server, f"SELECT id FROM {table} ORDER BY id") == [(2,)]


def test_collation_does_not_reach_next_client(proxy: servers.ProxyProcess) -> None:
    out = drivers.cli_rows(drivers.run_cli(
        proxy, "SET NAMES utf8mb4 COLLATE utf8mb4_bin; SELECT 'a' = 'A', @@collation_connection"))
    assert out == [["0", "utf8mb4_bin"]]
    out = drivers.cli_rows(drivers.run_cli(proxy, "SELECT 'a' = 'A', @@collation_connection"))
    assert out == [["1", "utf8mb4_general_ci"]]
