"""Run MariaDB's regression tests from ``tests.txt`` against a server or a pyproxy.

Against something already listening (a server, or pyproxy in front of one)::

    python -m integration.mariadb_tests.run --host H --port P --user U --password PW \\
        [--ps-protocol] [--vardir DIR] [tests...]

prints PASS / FAIL / SKIP / TIMEOUT per test, with the client's diff for each failure, and exits
0 only if every test passed.  Without test names it runs the list's tests for the mode
(``--ps-protocol`` or not).  Before each test every non-system schema is dropped and an empty
``test`` created (``--no-reset`` skips that): point it at a throwaway server only.  Tests that
read or write files on the server side (``LOAD DATA INFILE``, ``SELECT ... INTO OUTFILE``) need
``--vardir`` to be the server's ``secure_file_priv`` folder laid out as ``suite.start_server``
does; many tests also expect that server's options.  The tests log in as their own
``connect`` commands say, as ``root`` without a password; ``--user`` is the first connection's.

With ``--sandbox`` it needs no server: it starts two sandbox servers configured as
``mariadb-test-run.pl`` would, a pyproxy in front of one of them, runs the tests directly and
through pyproxy (both modes unless ``--ps-protocol`` or ``--plain``) and prints where they
differ, as ``integration/test_mariadb_suite.py`` checks::

    python -m integration.mariadb_tests.run --sandbox [--plain | --ps-protocol] [tests...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from integration.mariadb_tests import suite

_print_lock = threading.Lock()


def _report(outcome: suite.Outcome) -> None:
    with _print_lock:
        print(outcome.describe(), flush=True)


def _modes(args: argparse.Namespace) -> tuple[str, ...]:
    if args.ps_protocol:
        return ("ps",)
    if args.plain or not args.sandbox:
        return ("plain",)
    return suite.MODES


def _names(args: argparse.Namespace, mode: str) -> list[str]:
    if args.tests:
        return list(args.tests)
    return suite.tests_for(mode, suite.read_list(Path(args.list)))


def run_against(args: argparse.Namespace) -> int:
    target = suite.Target(args.host, args.port, args.user, args.password, label="target")
    mode = _modes(args)[0]
    names = _names(args, mode)
    workdir = Path(tempfile.mkdtemp(prefix="pyproxy-mtr-run-"))
    vardir = Path(args.vardir) if args.vardir else workdir / "var"
    try:
        outcomes = suite.run_tests(names, target, mode=mode, vardir=vardir, workdir=workdir,
                                   timeout=args.timeout, reset=not args.no_reset,
                                   report=_report)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    counts = {status: sum(o.status == status for o in outcomes)
              for status in ("pass", "fail", "skip", "timeout", "missing")}
    print(", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no tests")
    return 0 if counts["pass"] == len(outcomes) else 1


def run_sandbox(args: argparse.Namespace) -> int:
    modes = _modes(args)
    tests_by_mode = {mode: _names(args, mode) for mode in modes}
    workdir = Path(tempfile.mkdtemp(prefix="pyproxy-mtr-run-"))
    started = time.monotonic()
    direct = proxied = proxy = None
    try:
        direct = suite.start_server()
        proxied = suite.start_server()
        proxy = suite.start_pyproxy(proxied.server, workdir / "pyproxy")
        print(f"server {direct.server.port} (direct), server {proxied.server.port} behind "
              f"pyproxy {proxy.port}; pyproxy log: {proxy.log_path}", flush=True)
        results_direct, results_proxied = suite.run_both(
            (direct.target(), direct.vardir),
            (suite.Target(proxy.host, proxy.port, label="pyproxy"), proxied.vardir),
            tests_by_mode, workdir=workdir, timeout=args.timeout, report=_report)
    finally:
        if proxy is not None:
            proxy.stop()
        for server in (direct, proxied):
            if server is not None:
                server.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    status = 0
    for mode in modes:
        names = tests_by_mode[mode]
        passed_direct = {n for n in names if results_direct[mode][n].passed}
        passed_proxied = {n for n in names if results_proxied[mode][n].passed}
        print(f"\n[{mode}] {len(names)} tests: {len(passed_direct)} pass directly, "
              f"{len(passed_proxied)} through pyproxy")
        for name in names:
            if name in passed_direct and name not in passed_proxied:
                status = 1
                print("  only directly:      " + results_proxied[mode][name].describe(60))
            elif name in passed_proxied and name not in passed_direct:
                status = 1
                print("  only through pyproxy: " + results_direct[mode][name].describe(60))
            elif name not in passed_direct:
                print(f"  fails both ways:    {name}")
    print(f"\n{time.monotonic() - started:.1f}s")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.mariadb_tests.run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", help="suite.name (default: the list's tests)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--user", default=suite.USER)
    parser.add_argument("--password", default=suite.PASSWORD)
    parser.add_argument("--ps-protocol", action="store_true",
                        help="send statements as prepared statements (mariadb-test --ps-protocol)")
    parser.add_argument("--plain", action="store_true", help="with --sandbox: only plain mode")
    parser.add_argument("--vardir", help="the server's secure_file_priv folder "
                        "(default: a temporary folder)")
    parser.add_argument("--list", default=str(suite.LIST_FILE), help="the test list")
    parser.add_argument("--timeout", type=float, default=suite.TEST_TIMEOUT,
                        help="seconds per test (default: %(default)s)")
    parser.add_argument("--no-reset", action="store_true",
                        help="do not drop and recreate the schemas before each test")
    parser.add_argument("--keep", action="store_true", help="keep the logs and .reject files")
    parser.add_argument("--sandbox", action="store_true",
                        help="start servers and pyproxy, compare direct and proxied runs")
    args = parser.parse_args(argv)
    if not args.sandbox and args.port is None:
        parser.error("--port is required (or --sandbox)")
    try:
        return run_sandbox(args) if args.sandbox else run_against(args)
    except suite.SuiteUnavailable as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
