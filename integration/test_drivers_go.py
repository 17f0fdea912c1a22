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

import attrs
import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

DRIVER_DIR = Path("/usr/share/gocode/src/github.com/go-sql-driver/mysql")
GOPATH = "/usr/share/gocode"
SCENARIO = Path(__file__).resolve().parent / "go" / "scenario.go"
#: Test files of the package left out of the suite, and why.
EXCLUDED_TEST_FILES = {"connector_test.go": "dials 1.1.1.1:1234 (a public address)"}
#: Bounds on the suite: Go's own -test.timeout (a panic with every goroutine's stack), then
#: the process's.  One run takes about 40 s on 2 cores, mostly sleeps in the tests.
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
    cache = drivers.cache_root()
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


@attrs.frozen
class SuiteRun:
    """One run of the driver's suite: each test's (and subtest's) outcome."""

    name: str
    returncode: int
    seconds: float
    log_path: Path
    results: dict[str, str]

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(self.results.values())

    def summary(self) -> str:
        counts = self.counts()
        parts = [f"{n} {status}" for status, n in sorted(counts.items())]
        return f"{', '.join(parts) or 'no tests'} in {self.seconds:.1f}s (exit {self.returncode})"

    def output(self, test: str, lines: int = 15) -> str:
        """The test's own output lines, for a mismatch report."""
        found = []
        for event in _events(self.log_path):
            if event.get("Test") == test and event.get("Action") == "output":
                found.append(event.get("Output", "").rstrip("\n"))
        return "\n".join(found[-lines:])


def _events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


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


def start_suite(name: str, host: str, port: int, database: str,
                work: Path) -> Callable[[], SuiteRun]:
    """Starts the suite against ``host:port``; returns a function that waits for the run to
    end and reads its outcomes (``go tool test2json`` events in ``work/NAME.jsonl``)."""
    log_path = work / f"{name}.jsonl"
    env = go_env(MYSQL_TEST_USER=SUITE_USER, MYSQL_TEST_PASS=SUITE_PASSWORD,
                 MYSQL_TEST_PROT="tcp", MYSQL_TEST_ADDR=f"{host}:{port}",
                 MYSQL_TEST_DBNAME=database)
    cmd = ["go", "tool", "test2json", "-t", "-p", "github.com/go-sql-driver/mysql",
           str(suite_binary()), "-test.v", "-test.count=1", f"-test.timeout={SUITE_TIMEOUT}s"]
    started = time.monotonic()
    log = open(log_path, "wb")  # noqa: SIM115 - closed by wait()
    process = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT)

    def wait() -> SuiteRun:
        try:
            returncode = process.wait(SUITE_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = process.wait()
        finally:
            log.close()
        results: dict[str, str] = {}
        for event in _events(log_path):
            test, action = event.get("Test"), event.get("Action")
            if test and action == "run":
                results.setdefault(test, "unfinished")
            elif test and action in ("pass", "fail", "skip"):
                results[test] = action
        return SuiteRun(name, returncode, time.monotonic() - started, log_path, results)

    return wait


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
    try:
        # Both at once, each in its own database: the suite mostly sleeps.
        waiting = [start_suite("direct", db_server.host, db_server.port, databases["direct"],
                               tmp_path),
                   start_suite("pyproxy", proxy.host, proxy.port, databases["pyproxy"],
                               tmp_path)]
        direct, proxied = (wait() for wait in waiting)
    finally:
        for database in databases.values():
            drivers.admin_query(db_server, f"DROP DATABASE IF EXISTS {database}")
    not_passed = {test: status for test, status in direct.results.items() if status != "pass"}
    print(f"go-sql-driver suite directly: {direct.summary()}\n"
          f"go-sql-driver suite through pyproxy: {proxied.summary()}\n"
          f"not passing directly: {not_passed}")
    counts = direct.counts()
    assert counts["pass"] >= 100 and counts["pass"] >= MIN_DIRECT_PASS_RATE * len(direct.results), (
        f"the direct run is no baseline: {direct.summary()}; see {direct.log_path}")
    assert '"client_connected"' in proxy.log_text(), "the suite never connected through pyproxy"
    differences = [test for test in sorted(direct.results.keys() | proxied.results.keys())
                   if direct.results.get(test) != proxied.results.get(test)]
    report = [f"{test}: directly {direct.results.get(test, 'not run')}, through pyproxy "
              f"{proxied.results.get(test, 'not run')}\n  directly:\n{direct.output(test)}\n"
              f"  through pyproxy:\n{proxied.output(test)}" for test in differences[:20]]
    assert not differences, (f"{len(differences)} test(s) differ; directly {direct.summary()}, "
                             f"through pyproxy {proxied.summary()}; pyproxy log "
                             f"{proxy.log_path}\n" + "\n".join(report))
