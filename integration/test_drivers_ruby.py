"""Ruby's mysql2 gem (Debian's ``ruby-mysql2``, on libmariadb) through pyproxy, driven by
``integration/ruby/scenario.rb``: ``Client#query`` for the text protocol, ``Client#prepare``
and ``Statement#execute`` for server-side prepared statements."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

SCRIPT = Path(__file__).resolve().parent / "ruby" / "scenario.rb"


def _missing() -> str | None:
    """Why the mysql2 gem cannot run here, or None."""
    if shutil.which("ruby") is None:
        return "ruby is not installed (scripts/install-deps installs ruby-mysql2)"
    probe = subprocess.run(["ruby", "-e", "require 'mysql2'"], capture_output=True, check=False)
    if probe.returncode != 0:
        return ("the mysql2 gem does not load (scripts/install-deps installs ruby-mysql2): "
                + probe.stderr.decode(errors="replace").strip()[-300:])
    return None


MISSING = _missing()

pytestmark = [
    pytest.mark.usefixtures("bounded"),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
]


def run(target: servers.DbServer | servers.ProxyProcess, scenario: str,
        **params: Any) -> dict[str, Any]:
    return drivers.run_program(["ruby", str(SCRIPT)], scenario, drivers.address(target),
                               **params)


def test_plain_queries(proxy: servers.ProxyProcess) -> None:
    out = run(proxy, "plain", **drivers.plain_params(drivers.unique_table("ruby_plain")))
    drivers.check_plain(drivers.succeeded(out, proxy))


def test_commit_and_rollback_seen_from_second_connection(proxy: servers.ProxyProcess) -> None:
    out = run(proxy, "transaction", table=drivers.unique_table("ruby_tx"))
    assert drivers.succeeded(out, proxy) == drivers.TRANSACTION_EXPECTED


def test_multi_statements(proxy: servers.ProxyProcess) -> None:
    """``flags: MULTI_STATEMENTS``; ``next_result``/``store_result`` walk every result."""
    out = run(proxy, "multi", **drivers.multi_params(drivers.unique_table("ruby_multi")))
    drivers.check_multi(drivers.succeeded(out, proxy))


def test_load_data_local_infile(proxy: servers.ProxyProcess, tmp_path: Path,
                                db_server: servers.DbServer) -> None:
    table = drivers.unique_table("ruby_infile")
    params, rows, total = drivers.infile_params(tmp_path, table)
    out = run(proxy, "infile", **params)
    drivers.check_infile(drivers.succeeded(out, proxy), db_server, table, rows, total)


def test_blob_larger_than_16_mib(proxy: servers.ProxyProcess, db_server: servers.DbServer,
                                 tmp_path: Path) -> None:
    """Row 1 a hex literal in a 32 MiB COM_QUERY, row 2 a prepared statement's parameter."""
    table = drivers.unique_table("ruby_blob")
    # libmariadb takes max_allowed_packet from an option file's [client] group.
    options = tmp_path / "client.cnf"
    options.write_text(f"[client]\nmax_allowed_packet={drivers.MAX_ALLOWED_PACKET}\n")
    out = run(proxy, "blob", table=table, size=drivers.BLOB_SIZE, options_file=str(options))
    drivers.check_blob(drivers.succeeded(out, proxy), db_server, table)


def test_prepared_statements(proxy: servers.ProxyProcess) -> None:
    out = run(proxy, "prepared", **drivers.prepared_params(drivers.unique_table("ruby_prep")))
    drivers.check_prepared(drivers.succeeded(out, proxy), proxy)


def test_wrong_password(proxy: servers.ProxyProcess) -> None:
    drivers.check_wrong_password(run(proxy, "wrong_password",
                                     wrong_password=drivers.WRONG_PASSWORD))
    out = run(proxy, "transaction", table=drivers.unique_table("ruby_after_denied"))
    assert drivers.succeeded(out, proxy) == drivers.TRANSACTION_EXPECTED


def test_batch_same_as_direct(proxy: servers.ProxyProcess, db_server: servers.DbServer) -> None:
    """mysql2 has no batch call: a prepared INSERT per row in a transaction, several
    statements in one multi-statement query, a duplicate key in a transaction.  Same
    observations as directly."""
    table = drivers.unique_table("ruby_batch")
    direct = drivers.succeeded(run(db_server, "batch", table=f"{table}_d", rows=50))
    proxied = drivers.succeeded(run(proxy, "batch", table=f"{table}_p", rows=50), proxy)
    assert proxied == direct
    assert proxied["prepared_affected"] == 50 and proxied["duplicate_error"] == 1062
    assert [r["affectedRows"] for r in proxied["multi_statement"]] == [3, 1, 1]
    qty = [(i * 7919) % 1000 for i in range(1, 51)]
    assert proxied["count_sum"] == [50, sum(qty) + 3 - qty[-1], 0]
