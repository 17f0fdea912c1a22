"""Node's mysql2 through pyproxy: ``query()`` (text protocol) and ``execute()`` (server-side
prepared statements, binary protocol), driven by ``integration/node/scenario.js``."""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path
from typing import Any

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.usefixtures("bounded"),
    pytest.mark.skipif(drivers.node_program() is None,
                       reason="node is not installed (scripts/install-deps installs it)"),
    pytest.mark.skipif(not drivers.have_mysql2(),
                       reason="mysql2 is not installed in integration/node "
                              "(scripts/install-deps installs it)"),
]



def as_json(value: Any) -> Any:
    """What mysql2 returns for a value (dateStrings on, decimalNumbers off)."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    return value


def json_rows(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [[as_json(v) for v in row] for row in rows]


def run(proxy: servers.ProxyProcess, scenario: str, **params: Any) -> dict[str, Any]:
    out = drivers.run_node(proxy, scenario, **params)
    assert "error" not in out, (out, drivers.log_tail(proxy))
    assert out["_exit_code"] == 0, out
    return out


def test_plain_queries(proxy: servers.ProxyProcess) -> None:
    table = drivers.unique_table("mysql2_plain")
    out = run(proxy, "plain", literal_sql=drivers.LITERAL_SELECT,
              ddl=drivers.SAMPLE_DDL.format(table=table),
              insert=drivers.sample_insert(table, "?"),
              rows=json_rows(drivers.SAMPLE_ROWS),
              select=drivers.SAMPLE_SELECT.format(table=table),
              by_name=f"SELECT id, name FROM {table} WHERE name = ?", emoji=drivers.EMOJI_TEXT)
    literal = [as_json(v) for v in drivers.LITERAL_EXPECTED]
    assert out["literal_query"] == [literal]
    assert out["literal_execute"] == [literal]
    assert out["table_query"] == json_rows(drivers.SAMPLE_ROWS)
    assert out["table_execute"] == json_rows(drivers.SAMPLE_ROWS)
    assert out["by_name"] == [[2, drivers.EMOJI_TEXT]]


def test_commit_and_rollback_seen_from_second_connection(proxy: servers.ProxyProcess) -> None:
    out = run(proxy, "transaction", table=drivers.unique_table("mysql2_tx"))
    assert {k: v for k, v in out.items() if not k.startswith("_")} == {
        "reader_during_commit_tx": 0,
        "reader_after_commit": 1,
        "writer_inside_rollback_tx": 2,
        "reader_during_rollback_tx": 1,
        "writer_after_rollback": 1,
        "reader_rows": [[1, "committed"]],
    }


def test_multi_statements(proxy: servers.ProxyProcess) -> None:
    table = drivers.unique_table("mysql2_multi")
    out = run(proxy, "multi",
              sql=(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20)); "
                   f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'); "
                   f"SELECT id, v FROM {table} ORDER BY id; "
                   f"UPDATE {table} SET v = 'c' WHERE id = 2; "
                   "SELECT NULL AS n, 'x' AS s"),
              after=f"SELECT GROUP_CONCAT(v ORDER BY id) FROM {table}")
    results = out["results"]
    assert [r.get("affectedRows") for r in results] == [0, 2, None, 1, None]
    assert results[2]["rows"] == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    assert results[4]["rows"] == [{"n": None, "s": "x"}]
    assert out["after"] == [["a,c"]]


def test_load_data_local_infile(proxy: servers.ProxyProcess, tmp_path: Path,
                                db_server: servers.DbServer) -> None:
    table = drivers.unique_table("mysql2_infile")
    path, rows, total = drivers.write_infile(tmp_path)
    out = run(proxy, "infile", table=table, file=str(path),
              ddl=drivers.INFILE_DDL.format(table=table), load=drivers.load_data_sql(path, table))
    assert out["affectedRows"] == rows
    assert [int(v) for v in out["count_sum"]] == [rows, total]
    assert drivers.admin_scalar(db_server, f"SELECT COUNT(*) FROM {table}") == rows


def test_blob_larger_than_16_mib(proxy: servers.ProxyProcess, db_server: servers.DbServer) -> None:
    table = drivers.unique_table("mysql2_blob")
    out = run(proxy, "blob", table=table, size=drivers.BLOB_SIZE)
    assert out["length"] == drivers.BLOB_SIZE
    for row_id in (1, 2):
        digest = drivers.admin_query(
            db_server, f"SELECT LENGTH(data), SHA2(data, 256) FROM {table} WHERE id = %s",
            (row_id,))[0]
        assert digest == (drivers.BLOB_SIZE, out["sha256"]), f"row {row_id} stored wrongly"
        for how in ("query", "execute"):
            assert out[f"{how}_{row_id}_length"] == drivers.BLOB_SIZE, (how, row_id)
            assert out[f"{how}_{row_id}_equal"] is True, (how, row_id)
    assert out["after"] == 1


def test_prepared_statements(proxy: servers.ProxyProcess) -> None:
    table = drivers.unique_table("mysql2_prep")
    out = run(proxy, "prepared", table=table, ddl=drivers.SAMPLE_DDL.format(table=table),
              insert=drivers.sample_insert(table, "?"), rows=json_rows(drivers.SAMPLE_ROWS),
              select_from=(f"SELECT id, name, amount, created, note, score FROM {table} "
                           "WHERE id >= ? ORDER BY id"),
              emoji=drivers.EMOJI_TEXT)
    for execution in out["executions"]:
        low = execution["low"]
        assert execution["rows"] == json_rows([r for r in drivers.SAMPLE_ROWS if r[0] >= low])
        assert execution["other_count"] == len(drivers.SAMPLE_ROWS)
    assert out["param_count"] == 3
    assert out["explicit"] == [[None, drivers.EMOJI_TEXT, 7], ["x", "y", 8]]
    assert out["after"] == 2
    # Prepared statements are multiplexed: no session was pinned for them.
    pins = drivers.log_events(proxy, "session_pinned")
    assert not any("prepared" in str(p.get("reason")) or "cursor" in str(p.get("reason"))
                   for p in pins), drivers.log_tail(proxy)


def test_wrong_password(proxy: servers.ProxyProcess) -> None:
    out = drivers.run_node(proxy, "wrong_password", wrong_password=drivers.WRONG_PASSWORD)
    assert out["_exit_code"] == 1, out
    err = out["error"]
    assert err["code"] == "ER_ACCESS_DENIED_ERROR", err
    drivers.assert_access_denied(err["errno"], err["message"], err["sqlState"])
    run(proxy, "transaction", table=drivers.unique_table("mysql2_after_denied"))


# --- session state across pooled borrows -----------------------------------------------------


def test_collation_does_not_reach_next_client(proxy: servers.ProxyProcess) -> None:
    out = run(proxy, "steps", steps=[
        {"conn": 0, "sql": "SET NAMES utf8mb4 COLLATE utf8mb4_bin"},
        {"conn": 0, "sql": "SELECT 'a' = 'A', @@collation_connection", "end": True},
        {"conn": 1, "sql": "SELECT 'a' = 'A', @@collation_connection"},
    ])
    assert out["results"][1:] == [[[0, "utf8mb4_bin"]], [[1, "utf8mb4_general_ci"]]]


def test_last_insert_id_is_per_session(proxy: servers.ProxyProcess) -> None:
    mine, theirs = drivers.unique_table("mysql2_lid"), drivers.unique_table("mysql2_lid")
    out = run(proxy, "steps", steps=[
        {"conn": 0, "sql": f"CREATE TABLE {mine} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"},
        {"conn": 0, "sql": f"CREATE TABLE {theirs} (id INT AUTO_INCREMENT PRIMARY KEY, v INT) "
                           "AUTO_INCREMENT=1000"},
        {"conn": 0, "sql": f"INSERT INTO {mine} (v) VALUES (?)", "params": [1]},
        {"conn": 1, "sql": f"INSERT INTO {theirs} (v) VALUES (2)"},
        {"conn": 0, "sql": "SELECT LAST_INSERT_ID()"},
    ])
    results = out["results"]
    assert results[2]["insertId"] == 1 and results[3]["insertId"] == 1000
    assert results[4] == [[1]]
