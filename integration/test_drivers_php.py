"""PHP's mysqli and PDO (Debian's ``php-cli`` and ``php-mysql``) through pyproxy, driven by
``integration/php/scenario.php``.

Both extensions sit on mysqlnd, PHP's own implementation of the protocol (not libmariadb);
every scenario runs through each.  mysqli sends a prepared statement with
COM_STMT_PREPARE/EXECUTE; PDO does too with ``PDO::ATTR_EMULATE_PREPARES`` off, and with
emulation on (its default) interpolates the parameters into a COM_QUERY.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

SCRIPT = Path(__file__).resolve().parent / "php" / "scenario.php"


def _missing() -> str | None:
    """Why PHP's MySQL extensions cannot run here, or None."""
    if shutil.which("php") is None:
        return "php is not installed (scripts/install-deps installs php-cli)"
    modules = subprocess.run(["php", "-m"], capture_output=True, check=False).stdout.decode()
    missing = {"mysqli", "pdo_mysql", "mysqlnd"} - set(modules.lower().split())
    if missing:
        return (f"PHP lacks {', '.join(sorted(missing))} "
                "(scripts/install-deps installs php-mysql)")
    return None


MISSING = _missing()

pytestmark = [
    pytest.mark.usefixtures("bounded"),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
]

#: mysqli refuses LOCAL INFILE unless php.ini allows it; PDO asks per connection.
COMMAND = ["php", "-d", "mysqli.allow_local_infile=1", str(SCRIPT)]

INFO_LENGTH_REASON = (
    "pyproxy strips the session-state block from an OK that is not the last of a reply "
    "(FrontendProtocol._observe_oks in pyproxy/frontend.py, for a client without "
    "CLIENT_SESSION_TRACK, which mysqlnd never asks for) with strip_session_track() and "
    "make_ok() in pyproxy/wire/responses.py, and make_ok() writes the info text ('Records: 2  "
    "Duplicates: 0  Warnings: 0') with no length before it.  MariaDB writes it length-encoded "
    "to such a client too (b'&Records: 2 ...' directly), and mysqlnd reads a length: 'R' (82) "
    "runs past the 45-byte packet ('RSET_HEADER packet additional data length is past 45 bytes "
    "the packet size'), and the client loses its connection (2006)")


@pytest.fixture(params=["mysqli", "pdo"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(target: servers.DbServer | servers.ProxyProcess, api: str, scenario: str,
        **params: Any) -> dict[str, Any]:
    return drivers.run_program(COMMAND, scenario, {**drivers.address(target), "api": api},
                               **params)


def test_plain_queries(proxy: servers.ProxyProcess, api: str) -> None:
    out = run(proxy, api, "plain", **drivers.plain_params(drivers.unique_table(f"{api}_plain")))
    drivers.check_plain(drivers.succeeded(out, proxy))


def test_commit_and_rollback_seen_from_second_connection(proxy: servers.ProxyProcess,
                                                         api: str) -> None:
    out = run(proxy, api, "transaction", table=drivers.unique_table(f"{api}_tx"))
    assert drivers.succeeded(out, proxy) == drivers.TRANSACTION_EXPECTED


@pytest.mark.xfail(strict=True, reason=INFO_LENGTH_REASON)
def test_multi_statements(proxy: servers.ProxyProcess, api: str) -> None:
    """mysqli::multi_query() (which turns multi-statements on with COM_SET_OPTION), PDO::query()
    with PDO::MYSQL_ATTR_MULTI_STATEMENTS: every affected-row count and result set."""
    out = run(proxy, api, "multi", **drivers.multi_params(drivers.unique_table(f"{api}_multi")))
    drivers.check_multi(drivers.succeeded(out, proxy))


def test_load_data_local_infile(proxy: servers.ProxyProcess, api: str, tmp_path: Path,
                                db_server: servers.DbServer) -> None:
    table = drivers.unique_table(f"{api}_infile")
    params, rows, total = drivers.infile_params(tmp_path, table)
    out = run(proxy, api, "infile", **params)
    drivers.check_infile(drivers.succeeded(out, proxy), db_server, table, rows, total)


def test_blob_larger_than_16_mib(proxy: servers.ProxyProcess, api: str,
                                 db_server: servers.DbServer) -> None:
    """Row 1 escaped into a COM_QUERY (real_escape_string, PDO::quote), row 2 a prepared
    statement's parameter (mysqli: COM_STMT_SEND_LONG_DATA in 1 MiB pieces)."""
    table = drivers.unique_table(f"{api}_blob")
    out = run(proxy, api, "blob", table=table, size=drivers.BLOB_SIZE)
    drivers.check_blob(drivers.succeeded(out, proxy), db_server, table)


def test_prepared_statements(proxy: servers.ProxyProcess, api: str) -> None:
    """PDOStatement does not show the parameter count the server announced."""
    out = run(proxy, api, "prepared", **drivers.prepared_params(drivers.unique_table(f"{api}_prep")))
    drivers.check_prepared(drivers.succeeded(out, proxy), proxy, param_count=api == "mysqli")


def test_wrong_password(proxy: servers.ProxyProcess, api: str) -> None:
    """1045 and the message; mysqlnd reports SQLSTATE HY000 for a failed login, directly too."""
    drivers.check_wrong_password(run(proxy, api, "wrong_password",
                                     wrong_password=drivers.WRONG_PASSWORD), sqlstate=False)
    out = run(proxy, api, "transaction", table=drivers.unique_table(f"{api}_after_denied"))
    assert drivers.succeeded(out, proxy) == drivers.TRANSACTION_EXPECTED


@pytest.mark.xfail(strict=True, reason=INFO_LENGTH_REASON)
def test_batch_same_as_direct(proxy: servers.ProxyProcess, api: str,
                              db_server: servers.DbServer) -> None:
    """Neither API has a batch call: a prepared INSERT per row in a transaction, several
    statements in one multi-statement query, a duplicate key in a transaction.  Same
    observations as directly."""
    table = drivers.unique_table(f"{api}_batch")
    direct = drivers.succeeded(run(db_server, api, "batch", table=f"{table}_d", rows=50))
    proxied = drivers.succeeded(run(proxy, api, "batch", table=f"{table}_p", rows=50), proxy)
    assert proxied == direct
    assert proxied["prepared_affected"] == 50 and proxied["duplicate_error"] == 1062
    assert [r["affectedRows"] for r in proxied["multi_statement"]] == [3, 1, 1]
    qty = [(i * 7919) % 1000 for i in range(1, 51)]
    assert proxied["count_sum"] == [50, str(sum(qty) + 3 - qty[-1]), "0"]
