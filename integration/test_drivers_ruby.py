"""Ruby's mysql2 gem (Debian's ``ruby-mysql2``, on libmariadb) through pyproxy, driven by
``integration/ruby/scenario.rb``: ``Client#query`` for the text protocol, ``Client#prepare``
and ``Statement#execute`` for server-side prepared statements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

SCRIPT = Path(__file__).resolve().parent / "ruby" / "scenario.rb"
MISSING = drivers.unusable(["ruby", "-e", "require 'mysql2'"], "ruby-mysql2")

pytestmark = [
    pytest.mark.usefixtures("bounded"),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
]


class TestScenarios(drivers.ScenarioTests):
    name = "ruby"

    def run(self, target: servers.DbServer | servers.ProxyProcess, scenario: str,
            **params: Any) -> dict[str, Any]:
        return drivers.run_program(["ruby", str(SCRIPT)], scenario, drivers.address(target),
                                   **params)

    def test_load_data_local_infile_prepared(self, proxy: servers.ProxyProcess, tmp_path: Path,
                                             db_server: servers.DbServer) -> None:
        """The LOAD DATA statement prepared on the server (COM_STMT_PREPARE), then executed:
        the server's LOCAL INFILE request comes in the reply to COM_STMT_EXECUTE."""
        self.load_data(proxy, tmp_path, db_server, prepared=True)

    def test_batch_same_as_direct(self, proxy: servers.ProxyProcess,
                                  db_server: servers.DbServer) -> None:
        """mysql2 has no batch call: a prepared INSERT per row in a transaction, several
        statements in one multi-statement query, a duplicate key in a transaction.  Same
        observations as directly."""
        out = drivers.same_as_direct(self.run, proxy, db_server, "batch", self.table("batch"),
                                     rows=50)
        assert out["prepared_affected"] == 50 and out["duplicate_error"] == 1062
        assert [r["affectedRows"] for r in out["multi_statement"]] == [3, 1, 1]
        qty = [(i * 7919) % 1000 for i in range(1, 51)]
        assert out["count_sum"] == [50, sum(qty) + 3 - qty[-1], 0]
