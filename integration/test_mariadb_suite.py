"""MariaDB's own regression tests pass through pyproxy exactly as they pass directly (issue 3).

The tests in ``integration/mariadb_tests/tests.txt`` (session and user variables, temporary
tables, transactions, prepared statements, character sets, data types, LOAD DATA, stored
procedures and SIGNAL, warnings, large packets, JSON, GIS; chosen from the sweep of whole
suites, ``integration/mariadb_tests/sweep.py``) run with the ``mariadb-test`` client from
Debian's ``mariadb-test`` package, in plain and in ``--ps-protocol`` mode, against two sandbox
servers set up as ``mariadb-test-run.pl`` would: one directly, the other through a pyproxy.
Both runs go at the same time and take a few minutes on 2 shared cores (309 tests, each in
both modes).

Every listed test must pass directly, and through pyproxy exactly the same tests must pass
(passing means the output equals the test's ``.result`` file).

Run just this::

    python3 -m pytest -q integration/test_mariadb_suite.py

or compare by hand, with the client's diffs::

    python3 -m integration.mariadb_tests.run --sandbox [--plain | --ps-protocol] [tests...]

Skipped, saying why, when the ``mariadb-test`` package or the MariaDB server is not installed
(``scripts/install-deps`` installs both).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from integration.mariadb_tests import suite
from pyproxy.sandbox import ProgramNotFound

#: Seconds one test may take.
TEST_TIMEOUT = 30.0

MODES = suite.MODES


@attrs.define(eq=False)
class SuiteEnv:
    """Two sandbox servers set up for the suite and a pyproxy in front of the second."""

    workdir: Path
    direct: suite.SuiteServer
    proxied: suite.SuiteServer
    proxy: Any  # integration.servers.ProxyProcess

    def proxy_target(self) -> suite.Target:
        return suite.Target(self.proxy.host, self.proxy.port, label="pyproxy")


@attrs.frozen
class Runs:
    tests_by_mode: dict[str, list[str]]
    direct: suite.Results
    proxied: suite.Results
    proxy_log: str


@pytest.fixture(scope="module")
def suite_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteEnv]:
    try:
        suite.find_client()
        suite.find_suite_dir()
    except suite.SuiteUnavailable as exc:
        pytest.skip(str(exc))
    workdir = tmp_path_factory.mktemp("mariadb-suite")
    started: list[suite.SuiteServer] = []
    proxy = None
    try:
        try:
            started.append(suite.start_server())
            started.append(suite.start_server())
        except ProgramNotFound as exc:
            pytest.skip(str(exc))
        proxy = suite.start_pyproxy(started[1].server, workdir / "pyproxy")
        yield SuiteEnv(workdir, started[0], started[1], proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        for server in started:
            server.cleanup()


@pytest.fixture(scope="module")
def runs(suite_env: SuiteEnv) -> Runs:
    """Every listed test, both modes, directly and through pyproxy (at the same time)."""
    listed = suite.read_list()
    tests_by_mode = {mode: suite.tests_for(mode, listed) for mode in MODES}
    direct, proxied = suite.run_both(
        (suite_env.direct.target(), suite_env.direct.vardir),
        (suite_env.proxy_target(), suite_env.proxied.vardir),
        tests_by_mode, workdir=suite_env.workdir, timeout=TEST_TIMEOUT)
    log = suite_env.proxy.log_text()
    # Its pooled connections may hold locks a failed test left behind: let the
    # server go before the tests below use it.
    suite_env.proxy.stop()
    return Runs(tests_by_mode, direct, proxied, log)


def _proxy_log_excerpt(log: str, lines: int = 25) -> str:
    """The last warnings and errors in the pyproxy log."""
    picked = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("warning", "error", "critical"):
            picked.append(line)
    return "\n".join(picked[-lines:]) or "(no warnings or errors logged)"


@pytest.mark.parametrize("mode", MODES)
def test_listed_tests_pass_directly(runs: Runs, mode: str) -> None:
    """The list holds only tests that pass against a server set up like mtr's."""
    failed = [outcome for name in runs.tests_by_mode[mode]
              if not (outcome := runs.direct[mode][name]).passed]
    assert not failed, (f"{len(failed)} listed tests do not pass directly in {mode} mode:\n"
                        + "\n".join(outcome.describe() for outcome in failed))


@pytest.mark.parametrize("mode", MODES)
def test_same_results_through_pyproxy(runs: Runs, mode: str) -> None:
    """What passes directly passes through pyproxy, with the same output, and nothing else."""
    names = runs.tests_by_mode[mode]
    passed_direct = {name for name in names if runs.direct[mode][name].passed}
    passed_proxied = {name for name in names if runs.proxied[mode][name].passed}
    lost = [runs.proxied[mode][name] for name in names if name in passed_direct - passed_proxied]
    gained = sorted(passed_proxied - passed_direct)
    assert not lost and not gained, (
        f"[{mode}] {len(passed_direct)} tests pass directly, {len(passed_proxied)} through "
        f"pyproxy\n"
        + (f"pass only through pyproxy: {', '.join(gained)}\n" if gained else "")
        + "\n".join(outcome.describe(60) for outcome in lost)
        + "\npyproxy log (warnings, errors):\n" + _proxy_log_excerpt(runs.proxy_log))


def _run_own_test(target: suite.Target, server: suite.SuiteServer,
                  workdir: Path) -> suite.Outcome:
    outcomes = suite.run_tests(["pyproxy.no_default_schema"], target, mode="plain",
                               vardir=server.vardir, workdir=workdir, timeout=TEST_TIMEOUT)
    return outcomes[0]


def test_no_default_schema_passes_directly(suite_env: SuiteEnv) -> None:
    outcome = _run_own_test(suite_env.direct.target(), suite_env.direct,
                            suite_env.workdir / "own")
    assert outcome.passed, outcome.describe(60)


def test_no_default_schema_through_pyproxy(suite_env: SuiteEnv) -> None:
    """Through a pyproxy with no [backend] database, as a client that names no schema sees
    a server: no schema."""
    directory = suite_env.workdir / "pyproxy-no-schema"
    shutil.rmtree(directory, ignore_errors=True)
    proxy = suite.start_pyproxy(suite_env.proxied.server, directory, database=None)
    try:
        outcome = _run_own_test(suite.Target(proxy.host, proxy.port, label="pyproxy"),
                                suite_env.proxied, suite_env.workdir / "own-proxied")
    finally:
        proxy.stop()
    assert outcome.passed, outcome.describe(60)
