"""A real client's own regression suite through pyproxy: SQLAlchemy's dialect compliance suite.

``test/dialect/test_suite.py`` from SQLAlchemy's source distribution (about 1,800 tests of
Core, reflection, types, DDL, transactions, isolation levels and so on, over ``mysql+pymysql``)
runs twice as a subprocess: directly against ``db_server`` and through a pyproxy in front of
it.  Both runs use the same account (``sqla_suite``, all privileges) and start from freshly
created schemas (``sqla_test``, ``test_schema``, ``test_schema_2``, dropped again at the end);
the test passes when every test has the same outcome both ways.  How the suite is fetched, set up and run is
in ``integration/sqlalchemy_suite/suite.py``, which also runs the comparison by hand.

The sdist is downloaded once with pip into ``~/.cache/pyproxy-tests``.  Without network access
(and no cached copy or ``PYPROXY_SQLA_SDIST``) the test is skipped, unless
``PYPROXY_TEST_REQUIRE_SQLA_SUITE=1`` asks for a failure instead.  Each run takes about 20 s
here (2 cores); ``RUN_TIMEOUT`` bounds each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from integration import servers
from integration.sqlalchemy_suite import suite

#: Seconds one run of the suite may take (it needs about 20 s on a 2-core machine).
RUN_TIMEOUT = 240.0
#: The suite's account and database, with this run's suffix.
USER = servers.own_name(suite.USER)
DATABASE = servers.own_name(suite.DATABASE)
#: Share of the tests the direct run must pass, so that two equally broken runs (a bad
#: set-up, an unreachable server) cannot count as agreement.
MIN_DIRECT_PASS_RATE = 0.8


def _source(tmp_path: Path) -> Path:
    try:
        return suite.obtain_source(tmp_path / "src")
    except suite.SdistUnavailable as exc:
        reason = f"SQLAlchemy's source distribution is not available: {exc}"
        if os.environ.get("PYPROXY_TEST_REQUIRE_SQLA_SUITE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def _check_ran(run: suite.SuiteRun) -> None:
    """Fail unless pytest ran the suite to the end (exit 0: all passed, 1: some failed)."""
    assert run.returncode in (0, 1), (
        f"the {run.name} run of the dialect suite ended with exit {run.returncode}; "
        f"tail of {run.log_path}:\n{run.log_tail()}"
    )


def test_dialect_suite_same_through_pyproxy(
    db_server: servers.DbServer,
    make_proxy: Callable[..., servers.ProxyProcess],
    tmp_path: Path,
) -> None:
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("pymysql")
    source = _source(tmp_path)
    db_server.create_user(USER, suite.PASSWORD)
    try:
        _compare_runs(db_server, make_proxy, source, tmp_path)
    finally:
        suite.reset_schemas(db_server, DATABASE, create=False)


def _compare_runs(
    db_server: servers.DbServer,
    make_proxy: Callable[..., servers.ProxyProcess],
    source: Path,
    tmp_path: Path,
) -> None:
    suite.reset_schemas(db_server, DATABASE)
    direct = suite.run_suite(
        source,
        suite.dburi(db_server.host, db_server.port, USER, suite.PASSWORD, DATABASE),
        tmp_path, "direct", RUN_TIMEOUT,
    )
    _check_ran(direct)
    counts = direct.counts()
    ran = sum(counts[s] for s in ("passed", "failed", "error"))
    assert ran >= 100 and counts["passed"] >= MIN_DIRECT_PASS_RATE * ran, (
        f"the direct run is no baseline: {direct.summary()}; tail of {direct.log_path}:\n"
        f"{direct.log_tail()}"
    )

    # Same account, same grants (all privileges), already created above.
    proxy = make_proxy(
        users=[{"name": USER, "password": suite.PASSWORD, "create": False}],
        pool={"max_connections": 20, "borrow_timeout": 60},
    )
    suite.reset_schemas(db_server, DATABASE)
    proxied = suite.run_suite(
        source,
        suite.dburi(proxy.host, proxy.port, USER, suite.PASSWORD, DATABASE),
        tmp_path, "via-pyproxy", RUN_TIMEOUT,
    )
    log_summary = suite.proxy_log_summary(proxy.log_text())
    print(f"direct: {direct.summary()}\nvia pyproxy: {proxied.summary()}\n"
          f"pyproxy: {log_summary}")
    _check_ran(proxied)
    assert '"client_connected"' in proxy.log_text(), (
        f"the suite never connected through pyproxy; pyproxy log {proxy.log_path}"
    )

    differences = suite.compare(direct, proxied)
    assert not differences, (
        suite.mismatch_report(direct, proxied, differences)
        + f"\npyproxy: {log_summary}; log {proxy.log_path}"
    )
