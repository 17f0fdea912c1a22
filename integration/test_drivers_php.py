"""PHP's mysqli and PDO (Debian's ``php-cli`` and ``php-mysql``) through pyproxy, driven by
``integration/php/scenario.php``.

Both extensions sit on mysqlnd, PHP's own implementation of the protocol (not libmariadb);
every scenario runs through each.  mysqli sends a prepared statement with
COM_STMT_PREPARE/EXECUTE; PDO does too with ``PDO::ATTR_EMULATE_PREPARES`` off, and with
emulation on (its default) interpolates the parameters into a COM_QUERY.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

SCRIPT = Path(__file__).resolve().parent / "php" / "scenario.php"
MISSING = drivers.unusable(
    ["php", "-r", "exit(extension_loaded('mysqli') && extension_loaded('pdo_mysql') ? 0 : 1);"],
    "php-cli and php-mysql")

pytestmark = [
    pytest.mark.usefixtures("bounded"),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
]

#: mysqli refuses LOCAL INFILE unless php.ini allows it; PDO asks per connection.
COMMAND = ["php", "-d", "mysqli.allow_local_infile=1", str(SCRIPT)]

class TestScenarios(drivers.ScenarioTests):
    """Every scenario through mysqli and through PDO.  mysqlnd reports SQLSTATE HY000 for a
    failed login (directly too), and PDOStatement does not show a parameter count."""

    sqlstate = False
    api = ""

    @pytest.fixture(autouse=True, params=["mysqli", "pdo"])
    def _api(self, request: pytest.FixtureRequest) -> None:
        self.api = self.name = str(request.param)
        self.param_count = self.api == "mysqli"

    def run(self, target: servers.DbServer | servers.ProxyProcess, scenario: str,
            **params: Any) -> dict[str, Any]:
        return drivers.run_program(COMMAND, scenario,
                                   {**drivers.address(target), "api": self.api}, **params)

    def test_load_data_local_infile_prepared(self, proxy: servers.ProxyProcess, tmp_path: Path,
                                             db_server: servers.DbServer) -> None:
        """The LOAD DATA statement prepared on the server (COM_STMT_PREPARE), then executed:
        the server's LOCAL INFILE request comes in the reply to COM_STMT_EXECUTE."""
        self.load_data(proxy, tmp_path, db_server, prepared=True)

    def test_multi_statements(self, proxy: servers.ProxyProcess) -> None:
        """mysqli::multi_query() (which turns multi-statements on with COM_SET_OPTION),
        PDO::query() with PDO::MYSQL_ATTR_MULTI_STATEMENTS.  (mysqlnd reads an OK's info
        as length-encoded, as servers write it to every client.)"""
        super().test_multi_statements(proxy)

    def test_batch_same_as_direct(self, proxy: servers.ProxyProcess,
                                  db_server: servers.DbServer) -> None:
        """Neither API has a batch call: a prepared INSERT per row in a transaction, several
        statements in one multi-statement query, a duplicate key in a transaction.  Same
        observations as directly."""
        out = drivers.same_as_direct(self.run, proxy, db_server, "batch",
                                     self.table("batch"), rows=50)
        assert out["prepared_affected"] == 50 and out["duplicate_error"] == 1062
        assert [r["affectedRows"] for r in out["multi_statement"]] == [3, 1, 1]
        qty = [(i * 7919) % 1000 for i in range(1, 51)]
        assert out["count_sum"] == [50, str(sum(qty) + 3 - qty[-1]), "0"]
