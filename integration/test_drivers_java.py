"""MariaDB Connector/J (JDBC, Debian's ``libmariadb-java``) through pyproxy, driven by
``integration/java/Scenario.java``.

The program is compiled with the installed ``javac`` once per content of the source and jar,
into ``~/.cache/pyproxy-tests``; each scenario then runs in its own JVM.  Besides the shared
scenarios, JDBC batches run in every mode Connector/J has (one statement per row, server-side
prepared, ``rewriteBatchedStatements``, ``useBulkStmts``) directly against the server and
through pyproxy, and must give the application the same results both ways.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

JAR = Path("/usr/share/java/mariadb-java-client.jar")
SOURCE = Path(__file__).resolve().parent / "java" / "Scenario.java"

pytestmark = [
    pytest.mark.usefixtures("bounded"),
    pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None,
                       reason="no JDK (javac): scripts/install-deps installs default-jdk-headless"),
    pytest.mark.skipif(not JAR.is_file(),
                       reason=f"{JAR} is missing: scripts/install-deps installs libmariadb-java"),
]


@functools.cache
def program() -> list[str]:
    """The command that runs a scenario; compiles it first unless a build is cached."""
    javac = shutil.which("javac")
    assert javac is not None
    version = subprocess.run([javac, "-version"], capture_output=True, check=True).stdout
    jar = JAR.resolve()
    build = drivers.cached_build(
        "java-scenario", [SOURCE, jar], f"{version!r} {jar}",
        lambda out: drivers.run_build([javac, "-encoding", "UTF-8", "-cp", str(jar),
                                       "-d", str(out), str(SOURCE)]))
    # A short-lived client: no JIT tiers beyond the first, the serial collector.
    return ["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Duser.timezone=UTC",
            "-cp", f"{jar}:{build}", "Scenario"]


def run(target: servers.DbServer | servers.ProxyProcess, scenario: str,
        **params: Any) -> dict[str, Any]:
    return drivers.run_program(program(), scenario, drivers.address(target), **params)


class TestScenarios(drivers.ScenarioTests):
    """Statement for the text protocol, a PreparedStatement with useServerPrepStmts for the
    binary one; allowMultiQueries, allowLocalInfile."""

    name = "java"

    def run(self, target: servers.DbServer | servers.ProxyProcess, scenario: str,
            **params: Any) -> dict[str, Any]:
        return run(target, scenario, **params)


# --- JDBC batches ------------------------------------------------------------------------------

#: Rows in each mode's INSERT batch.
BATCH_ROWS = 50

#: How Connector/J can send a batch.  useBulkStmts is on by default in Connector/J 2.x.
BATCH_MODES: dict[str, dict[str, Any]] = {
    # One COM_QUERY per row, parameters interpolated by the driver.
    "text": {"properties": {"useBulkStmts": "false"}, "binary": False},
    # One COM_STMT_EXECUTE per row.
    "server_prepared": {"properties": {"useBulkStmts": "false"}, "binary": True},
    # The INSERTs rewritten into one multi-row INSERT; the UPDATEs one COM_QUERY each.
    "rewrite": {"properties": {"rewriteBatchedStatements": "true", "useBulkStmts": "false"},
                "binary": False},
    # COM_STMT_BULK_EXECUTE when the server offers MARIADB_CLIENT_STMT_BULK_OPERATIONS,
    # else one COM_STMT_EXECUTE per row.
    "bulk": {"properties": {"useBulkStmts": "true"}, "binary": False},
    "bulk_server_prepared": {"properties": {"useBulkStmts": "true"}, "binary": True},
}

@pytest.fixture(scope="module")
def batch_runs(module_proxies: Any, db_server: servers.DbServer) -> dict[str, dict[str, Any]]:
    """Every mode's batches, run once directly against the server and once through pyproxy
    (one JVM each way)."""
    proxy = module_proxies.get()
    table = drivers.unique_table("java_batch")
    runs = {}
    for name, target in (("direct", db_server), ("pyproxy", proxy)):
        out = run(target, "batch", table=f"{table}_{name[0]}", rows=BATCH_ROWS,
                  modes=BATCH_MODES)
        runs[name] = drivers.succeeded(out, proxy)
    return runs


def expected_batch_sum(rows: int = BATCH_ROWS) -> int:
    """SUM(qty) after the batches: the INSERTs, the UPDATEs (+3, +2, +1), the Statement batch
    (-1 for id 1, the last row deleted and inserted again with 0)."""
    qty = [(i * 7919) % 1000 for i in range(1, rows + 1)]
    return sum(qty) + 6 - 1 - qty[-1]


@pytest.mark.parametrize("mode", list(BATCH_MODES))
def test_batch_through_pyproxy(batch_runs: dict[str, dict[str, Any]], mode: str) -> None:
    """Whichever way the driver sends it, the batch lands whole and the failing one fails
    with 1062."""
    out = batch_runs["pyproxy"][mode]
    assert out["statement_class"] == ("ServerSidePreparedStatement" if BATCH_MODES[mode]["binary"]
                                      else "ClientSidePreparedStatement")
    assert len(out["insert_counts"]) == BATCH_ROWS and len(out["update_counts"]) == 3
    assert out["statement_counts"] == [1, 1, 1]
    assert [int(v) for v in out["count_sum"]] == [BATCH_ROWS, expected_batch_sum()]
    assert out["duplicate_error"] == 1062


@pytest.mark.parametrize("mode", list(BATCH_MODES))
def test_batch_same_as_direct(batch_runs: dict[str, dict[str, Any]], mode: str) -> None:
    """Update counts, the failing batch's counts and which of its rows were inserted: all as
    the application sees them directly."""
    assert batch_runs["pyproxy"][mode] == batch_runs["direct"][mode]


def test_extended_metadata_same_as_direct(module_proxies: Any, db_server: servers.DbServer) -> None:
    """Connector/J negotiates MARIADB_CLIENT_EXTENDED_METADATA when offered, and reads the
    extended block of every column definition (2.7's ResultSetMetaData does not show it; the
    mariadb client does, see test_mariadb_capabilities.py): what it says of a JSON, a
    geometry and an INET6 column (type names, JDBC types, classes) is the same through
    pyproxy as directly, over both protocols."""
    proxy = module_proxies.get()
    table = drivers.unique_table("java_meta")
    root = db_server.connect(database=servers.APP_DATABASE)
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, doc JSON, p POINT, u INET6)")
            cur.execute(f"INSERT INTO {table} VALUES (1, '{{}}', POINT(1, 2), '::1')")
        params = {"select": f"SELECT id, doc, p, u FROM {table}"}
        direct = drivers.succeeded(run(db_server, "metadata", **params), proxy)
        through = drivers.succeeded(run(proxy, "metadata", **params), proxy)
        assert through == direct
    finally:
        root.close()
