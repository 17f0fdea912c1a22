"""Node's mysql2 through pyproxy: ``query()`` (text protocol) and ``execute()`` (server-side
prepared statements, binary protocol), driven by ``integration/node/scenario.js``."""

from __future__ import annotations

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


def run(proxy: servers.ProxyProcess, scenario: str, **params: Any) -> dict[str, Any]:
    return drivers.succeeded(drivers.run_node(proxy, scenario, **params), proxy)


def test_plain_queries(proxy: servers.ProxyProcess) -> None:
    """query() interpolates the parameters (text protocol), execute() prepares them."""
    out = run(proxy, "plain", **drivers.plain_params(drivers.unique_table("mysql2_plain")))
    drivers.check_plain(out)


def test_commit_and_rollback_seen_from_second_connection(proxy: servers.ProxyProcess) -> None:
    out = run(proxy, "transaction", table=drivers.unique_table("mysql2_tx"))
    assert out == drivers.TRANSACTION_EXPECTED


def test_multi_statements(proxy: servers.ProxyProcess) -> None:
    out = run(proxy, "multi", **drivers.multi_params(drivers.unique_table("mysql2_multi")))
    drivers.check_multi(out)


def test_load_data_local_infile(proxy: servers.ProxyProcess, tmp_path: Path,
                                db_server: servers.DbServer) -> None:
    table = drivers.unique_table("mysql2_infile")
    params, rows, total = drivers.infile_params(tmp_path, table)
    drivers.check_infile(run(proxy, "infile", **params), db_server, table, rows, total)


def test_blob_larger_than_16_mib(proxy: servers.ProxyProcess, db_server: servers.DbServer) -> None:
    table = drivers.unique_table("mysql2_blob")
    drivers.check_blob(run(proxy, "blob", table=table, size=drivers.BLOB_SIZE), db_server, table)


def test_prepared_statements(proxy: servers.ProxyProcess) -> None:
    """Prepared statements are multiplexed: no session is pinned for them."""
    out = run(proxy, "prepared", **drivers.prepared_params(drivers.unique_table("mysql2_prep")))
    drivers.check_prepared(out, proxy)


def test_wrong_password(proxy: servers.ProxyProcess) -> None:
    out = drivers.run_node(proxy, "wrong_password", wrong_password=drivers.WRONG_PASSWORD)
    assert out["error"]["code"] == "ER_ACCESS_DENIED_ERROR", out
    drivers.check_wrong_password(out)
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
