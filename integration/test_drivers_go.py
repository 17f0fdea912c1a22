"""go-sql-driver/mysql (Debian's ``golang-github-go-sql-driver-mysql-dev``) through pyproxy.

Two parts:

* ``integration/go/scenario.go`` runs the shared scenarios, built once (offline, GOPATH mode
  against ``/usr/share/gocode``) into ``~/.cache/pyproxy-tests``;
* the driver's own test suite (``driver_test.go`` and the others the package ships) runs
  directly against the server and through pyproxy, at the same time, each in its own database;
  every test must have the same outcome both ways.  The suite is compiled once from a copy of
  the package with ``connector_test.go`` deleted: its only test dials 1.1.1.1, and tests here
  reach loopback addresses only (no other test of the suite dials anything but
  ``MYSQL_TEST_ADDR``, the server's unix socket, or nothing at all).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.sqlalchemy_suite import suite

DRIVER_DIR = Path("/usr/share/gocode/src/github.com/go-sql-driver/mysql")
GOPATH = "/usr/share/gocode"
SCENARIO = Path(__file__).resolve().parent / "go" / "scenario.go"
#: Test files of the package left out of the suite, and why.
EXCLUDED_TEST_FILES = {"connector_test.go": "dials 1.1.1.1:1234 (a public address)"}
#: Bounds on the suite: Go's own -test.timeout (a panic with every goroutine's stack), then
#: the process's.  One run takes about 40 s alone on 2 cores (mostly sleeps in the tests), a
#: minute when both run at once.
SUITE_TIMEOUT = 240
#: Share of the tests the direct run must pass, so that two equally broken runs (a bad set-up,
#: an unreachable server) cannot count as agreement.
MIN_DIRECT_PASS_RATE = 0.9
SUITE_USER = "gosuite"
SUITE_PASSWORD = "gosuite_pw"

pytestmark = [
    pytest.mark.skipif(shutil.which("go") is None,
                       reason="go is not installed (scripts/install-deps installs golang-go)"),
    pytest.mark.skipif(not (DRIVER_DIR / "driver.go").is_file(),
                       reason=f"{DRIVER_DIR} is missing (scripts/install-deps installs "
                              "golang-github-go-sql-driver-mysql-dev)"),
]


def go_env(**more: str) -> dict[str, str]:
    """Offline, with a build cache of our own; GOPATH mode unless ``more`` says otherwise."""
    cache = suite.cache_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update({"GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": "", "GOPROXY": "off",
                "GOTOOLCHAIN": "local", "GOTELEMETRY": "off",
                "GOCACHE": str(cache / "go-build"), "GOMODCACHE": str(cache / "go-mod")})
    env.update(more)
    return env


@functools.cache
def go_version() -> str:
    return subprocess.run(["go", "version"], capture_output=True, check=True,
                          env=go_env()).stdout.decode().strip()


def driver_sources() -> list[Path]:
    return sorted(DRIVER_DIR.glob("*.go")) + [DRIVER_DIR / "go.mod"]


@functools.cache
def program() -> list[str]:
    """The scenario program, built unless a build is cached."""
    build = drivers.cached_build(
        "go-scenario", [SCENARIO, *driver_sources()], go_version(),
        lambda out: drivers.run_build(["go", "build", "-o", str(out / "scenario"),
                                       str(SCENARIO)], env=go_env(), cwd=SCENARIO.parent))
    return [str(build / "scenario")]


def run(target: servers.DbServer | servers.ProxyProcess, scenario: str,
        **params: Any) -> dict[str, Any]:
    return drivers.run_program(program(), scenario, drivers.address(target), **params)


# --- the shared scenarios ------------------------------------------------------------------


@pytest.mark.usefixtures("bounded")
class TestScenarios(drivers.ScenarioTests):
    """database/sql shows only the results with rows of a multi-statement, and
    go-sql-driver 1.5's MySQLError has no SQLSTATE."""

    name = "go"
    multi_counts = False
    sqlstate = False

    def run(self, target: servers.DbServer | servers.ProxyProcess, scenario: str,
            **params: Any) -> dict[str, Any]:
        return run(target, scenario, **params)

    def test_batch_same_as_direct(self, proxy: servers.ProxyProcess,
                                  db_server: servers.DbServer) -> None:
        """database/sql has no batch API: a prepared INSERT per row in a transaction, a
        multi-row INSERT with interpolated parameters, several statements in one Exec, a
        duplicate key inside a transaction.  Same observations as directly."""
        out = drivers.same_as_direct(run, proxy, db_server, "batch", self.table("batch"),
                                     rows=50)
        assert out["prepared_affected"] == out["multi_row_affected"] == 50
        assert out["duplicate_error"] == 1062
        qty = [(i * 7919) % 1000 for i in range(1, 101)]
        assert out["count_sum"] == [[100, str(sum(qty) + 3 - qty[-1]), "0"]]


# --- the driver's own suite -----------------------------------------------------------------


#: test2json's actions, as the SQLAlchemy suite's comparison names outcomes.
_STATUSES = {"pass": "passed", "fail": "failed", "skip": "skipped"}


def read_results(log_path: Path) -> dict[str, suite.Outcome]:
    """Each test's (and subtest's) outcome and output from ``go tool test2json`` events; a
    test that started and never ended (a timeout, a crash) is an error."""
    statuses: dict[str, str] = {}
    outputs: dict[str, list[str]] = collections.defaultdict(list)
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        test = event.get("Test") if isinstance(event, dict) else None
        if not test:
            continue
        action = event.get("Action")
        if action == "output":
            outputs[test].append(event.get("Output", ""))
        elif action == "run":
            statuses.setdefault(test, "error")
        elif action in _STATUSES:
            statuses[test] = _STATUSES[action]
    return {test: suite.Outcome(status, "".join(outputs[test]))
            for test, status in statuses.items()}


@functools.cache
def suite_binary() -> Path:
    """The driver's tests compiled (``go test -c``) from a copy of the package, without
    EXCLUDED_TEST_FILES; built unless a build is cached."""
    def build(out: Path) -> None:
        source = out / "src"
        shutil.copytree(DRIVER_DIR, source)
        for name in EXCLUDED_TEST_FILES:
            (source / name).unlink()
        # Module mode in the copy: go.mod names the module and it requires nothing.
        drivers.run_build(["go", "test", "-c", "-vet=off", "-o", str(out / "mysql.test")],
                          cwd=source, env=go_env(GO111MODULE="on", GOFLAGS="-mod=mod"))
        shutil.rmtree(source)

    return drivers.cached_build("go-driver-suite", driver_sources(), go_version(),
                                build) / "mysql.test"


class SuiteProcess:
    """The suite running against ``host:port``, its ``go tool test2json`` events going to
    ``work/NAME.jsonl``."""

    def __init__(self, name: str, host: str, port: int, database: str, work: Path) -> None:
        self.name = name
        self.target = f"{host}:{port}/{database}"
        self.log_path = work / f"{name}.jsonl"
        env = go_env(MYSQL_TEST_USER=SUITE_USER, MYSQL_TEST_PASS=SUITE_PASSWORD,
                     MYSQL_TEST_PROT="tcp", MYSQL_TEST_ADDR=f"{host}:{port}",
                     MYSQL_TEST_DBNAME=database)
        cmd = ["go", "tool", "test2json", "-t", "-p", "github.com/go-sql-driver/mysql",
               str(suite_binary()), "-test.v", "-test.count=1",
               f"-test.timeout={SUITE_TIMEOUT}s"]
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)

    def wait(self) -> suite.SuiteRun:
        """Waits for the run to end (killed past SUITE_TIMEOUT + 30 s); its outcomes."""
        try:
            returncode = self.process.wait(SUITE_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            self.stop()
            returncode = self.process.returncode
        return suite.SuiteRun(self.name, self.target, returncode,
                              time.monotonic() - self.started, self.log_path, self.log_path,
                              read_results(self.log_path))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_driver_suite_same_through_pyproxy(
        db_server: servers.DbServer, make_proxy: Callable[..., servers.ProxyProcess],
        tmp_path: Path) -> None:
    binary = suite_binary()
    assert binary.is_file()
    db_server.create_user(SUITE_USER, SUITE_PASSWORD)
    proxy = make_proxy(users=[{"name": SUITE_USER, "password": SUITE_PASSWORD, "create": False}],
                       pool={"max_connections": 20, "borrow_timeout": 60})
    databases = {"direct": "gotest_direct", "pyproxy": "gotest_pyproxy"}
    for database in databases.values():
        drivers.admin_query(db_server, f"DROP DATABASE IF EXISTS {database}")
        drivers.admin_query(db_server, f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    running: list[SuiteProcess] = []
    try:
        # Both at once, each in its own database: the suite mostly sleeps.
        for name, target in (("direct", db_server), ("pyproxy", proxy)):
            running.append(SuiteProcess(name, target.host, target.port, databases[name],
                                        tmp_path))
        direct, proxied = (process.wait() for process in running)
    finally:
        for process in running:
            process.stop()
        for database in databases.values():
            drivers.admin_query(db_server, f"DROP DATABASE IF EXISTS {database}")
    failing = {test: outcome.status for test, outcome in direct.results.items()
               if outcome.status != "passed"}
    print(f"go-sql-driver suite directly: {direct.summary()}\n"
          f"go-sql-driver suite through pyproxy: {proxied.summary()}\n"
          f"not passing directly: {failing}")
    counts = direct.counts()
    assert counts["passed"] >= 100 and counts["passed"] >= MIN_DIRECT_PASS_RATE * len(
        direct.results), f"the direct run is no baseline: {direct.summary()}; see {direct.log_path}"
    assert '"client_connected"' in proxy.log_text(), "the suite never connected through pyproxy"
    differences = suite.compare(direct, proxied)
    assert not differences, (
        suite.mismatch_report(direct, proxied, differences, "go-sql-driver's suite")
        + f"\npyproxy log {proxy.log_path}")
