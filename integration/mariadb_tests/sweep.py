"""Sweep MariaDB's regression suites directly and through pyproxy; record every test's verdict.

``tests.txt`` is the curated list CI runs (``integration/test_mariadb_suite.py``).  This script
is the wide net behind it: it runs every test of the chosen suites (by default ``main``,
``json``, ``jp`` and ``sys_vars``), in plain and ``--ps-protocol`` mode, first directly against
a sandbox server prepared as :func:`suite.start_server` does, then -- if it passed directly --
through a pyproxy in front of a second such server.  It writes one line per test and mode to
``sweep-results.tsv`` (in this folder, committed), so what passes through pyproxy, what does not
and why every other test is left out can be read without running anything::

    nice -n 10 python -m integration.mariadb_tests.sweep [--suites main,json] [--mode ps]
        [--jobs 2] [--budget MINUTES] [--resume] [--logs DIR] [tests...]

Columns: ``test``, ``mode``, ``direct`` (pass, fail, skip, timeout, missing, excluded, not-run),
``pyproxy`` (pass, fail, timeout, or ``-`` when not run through pyproxy), ``class`` (why a test
is out: see :data:`CLASSES`), ``note`` (the detail: the skip message, the first failing
statement, the file that gave the exclusion, or the hand-written reason from
``sweep-classes.txt``), and the seconds each run took.

Exclusions found without running the test (:func:`static_exclusion`) are those that would harm
the sweep or cannot pass without ``mariadb-test-run.pl``: tests that restart, shut down or kill
the server (they would take the shared sandbox down), that need server options of their own
(``.opt`` files), replication, option combinations, that mtr runs only with ``--big-test``
or that the suite's ``disabled.def`` lists.
Tests that fail or skip directly are classified by their output (:func:`direct_class`).

A test that passes directly and fails through pyproxy is a ``pyproxy-difference`` until someone
looks at the diff (kept in ``--logs``) and writes a line into ``sweep-classes.txt``: either an
``expected-*`` class (a difference that cannot agree through a pooler: connection ids, the
session count, accounts pyproxy does not know) or ``pyproxy-bug`` with what differs.

``--recheck`` runs each ``pyproxy-difference`` again on fresh servers and a fresh pyproxy: one
that passes then is ``order-dependent`` (something earlier tests left made it fail).

``--budget`` bounds the wall time: when it is spent (or on SIGINT/SIGTERM) no new test starts,
the running ones finish and the ones left are written as ``not-run``; ``--first`` runs the
tests matching its patterns before the others; ``--resume`` keeps the verdicts already in the
results file and runs only the tests missing, ``not-run`` or ``reset-failed`` there, so a sweep
can be finished in several sittings.  A full sweep of the four suites took 72 minutes with 2
lanes on 2 cores shared with other work.

Each of ``--jobs`` lanes has its own two servers and pyproxy.  Between tests a lane drops every
non-system schema (as :func:`suite.reset_schemas`), sets back the global variables a test
changed and drops the accounts it created, standing in for ``mariadb-test-run.pl``'s
check-testcase; a server that died is started again.  After a failure through pyproxy the lane
starts a fresh pyproxy, so one test's leftovers in pooled connections cannot fail the next.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import queue
import signal
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pymysql

from integration.mariadb_tests import suite

RESULTS_FILE = suite.HERE / "sweep-results.tsv"
#: Hand-written classes for tests that pass directly and not through pyproxy.
CLASSES_FILE = suite.HERE / "sweep-classes.txt"
DEFAULT_SUITES = ("main", "json", "jp", "sys_vars")
COLUMNS = ("test", "mode", "direct", "pyproxy", "class", "note", "direct_s", "pyproxy_s")
#: Seconds a test may run in the sweep before it counts as hung.
SWEEP_TIMEOUT = 40.0

#: Every class a line can have, and what it means (written into the results file's header).
CLASSES = {
    "ok": "passes directly and through pyproxy",
    "pyproxy-difference": "passes directly, fails through pyproxy; not yet looked at",
    "pyproxy-bug": "passes directly, fails through pyproxy because of a pyproxy bug (note says what)",
    "pyproxy-limitation": "passes directly, fails through pyproxy because of something pyproxy "
                          "does not offer (yet) but could (note says what)",
    "order-dependent": "failed through pyproxy in the sweep, passed when run again on fresh "
                       "servers and pyproxy (--recheck): earlier tests left something behind",
    "expected-pooler": "passes directly, cannot agree through a pooler (note says why)",
    "expected-accounts": "logs in as accounts pyproxy's config does not list (by design)",
    "expected-config": "differs because the sweep's pyproxy, like CI's, has [backend] database "
                       "= test: a client that asks for no schema is given it",
    "disabled": "listed in the suite's disabled.def (mtr does not run it either)",
    "restarts-server": "restarts, shuts down or kills the server (mtr restarts it; "
                       "would take the sweep's server down)",
    "server-options": "needs mariadbd options of its own (.opt file), which mtr gives it",
    "replication": "needs a replica or the binary log set up by mtr (master-slave.inc, rpl_*)",
    "combinations": "runs under mtr option combinations (.combinations file)",
    "big-test": "mtr runs it only with --big-test",
    "skips-itself": "the test skipped itself directly (debug build, plugin, engine, ... : note)",
    "debug-build": "fails directly: needs a debug build (debug_dbug, debug_sync)",
    "fails-directly": "fails directly against the sandbox server (note: first difference)",
    "timeout-directly": f"did not end within the sweep's timeout directly",
    "missing": "no .result file (mtr would record one)",
    "reset-failed": "the schemas could not be reset before the run (something an earlier "
                    "test left); --resume runs it again",
    "not-run": "not run yet (time budget spent); --resume runs it",
}

#: ``--source``d files whose use excludes a test without running it, and the class.
_SOURCE_CLASSES = (
    (re.compile(r"(restart_mysqld|shutdown_mysqld|kill_mysqld|kill_and_restart_mysqld|"
                r"restart_and_reconnect|start_mysqld|wait_until_disconnected|crash_mysqld|"
                r"kill_galera|start_mysqld_no_echo|restart_slave_sql)"), "restarts-server"),
    (re.compile(r"(master-slave\.inc|rpl_init\.inc|have_replication|rpl_end\.inc|"
                r"galera_cluster\.inc|have_wsrep)"), "replication"),
    (re.compile(r"big_test\.inc"), "big-test"),
)
#: Statements in a test (or a file it sources) that take the server down.
_SHUTDOWN_RE = re.compile(r"^\s*(--)?\s*(shutdown_server|exec\b.*\b(shutdown|kill)\b|"
                          r"shutdown\s*;)", re.IGNORECASE | re.MULTILINE)
_SOURCE_RE = re.compile(r"^\s*(?:--)?\s*source\s+([^\s;]+)", re.IGNORECASE | re.MULTILINE)


def discover(suite_dir: Path, suites: Iterable[str]) -> list[str]:
    """Every test of ``suites``, as ``suite.name``, suite by suite in name order."""
    names = []
    for name in suites:
        folder = suite_dir / "main" if name == "main" else suite_dir / "suite" / name / "t"
        names += [f"{name}.{path.stem}" for path in sorted(folder.glob("*.test"))]
    return names


class _SourceScanner:
    """Follows a test's ``--source`` lines (literal paths only) to find what it includes."""

    def __init__(self, suite_dir: Path) -> None:
        self.suite_dir = suite_dir
        self._cache: dict[Path, tuple[set[str], bool]] = {}

    def scan(self, path: Path, depth: int = 0) -> tuple[set[str], bool]:
        """The sourced file names (recursively) and whether any of them shuts the server down."""
        if path in self._cache:
            return self._cache[path]
        self._cache[path] = (set(), False)  # cycles
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return set(), False
        sourced: set[str] = set()
        shuts_down = bool(_SHUTDOWN_RE.search(text))
        for match in _SOURCE_RE.finditer(text):
            ref = match.group(1)
            sourced.add(ref)
            if "$" in ref or depth > 6:
                continue
            for base in (self.suite_dir, path.parent):
                candidate = base / ref
                if candidate.is_file():
                    more, down = self.scan(candidate, depth + 1)
                    sourced |= more
                    shuts_down = shuts_down or down
                    break
        self._cache[path] = (sourced, shuts_down)
        return sourced, shuts_down


@functools.cache
def _disabled(suite_dir: Path, name: str) -> dict[str, str]:
    """A suite's ``disabled.def``: test name -> the reason given."""
    path = suite_dir / "main" / "disabled.def" if name == "main" else \
        suite_dir / "suite" / name / "disabled.def"
    found = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            test, sep, reason = line.partition(":")
            if sep and not test.lstrip().startswith("#") and test.strip():
                found[test.strip()] = " ".join(reason.split())
    return found


def static_exclusion(suite_dir: Path, name: str,
                     scanner: _SourceScanner) -> tuple[str, str] | None:
    """``(class, note)`` for a test that is not run at all, or None."""
    test_file, result_file = suite.test_files(suite_dir, name)
    disabled = _disabled(suite_dir, name.partition(".")[0])
    short = name.partition(".")[2]
    if short in disabled:
        return "disabled", f"disabled.def: {disabled[short]}"[:200]
    if not result_file.is_file():
        return "missing", f"no {result_file.name}"
    stem = test_file.with_suffix("")
    for suffix in (".opt", "-master.opt", "-slave.opt"):
        opt = Path(str(stem) + suffix)
        if opt.is_file():
            options = opt.read_text(errors="replace").split()
            if all(_normal_option(o) in _GIVEN_OPTIONS for o in options):
                continue  # the sandbox has them already
            return "server-options", f"{opt.name}: {' '.join(options)[:150]}"
    if Path(str(stem) + ".combinations").is_file():
        return "combinations", f"{stem.name}.combinations"
    sourced, shuts_down = scanner.scan(test_file)
    for ref in sorted(sourced):
        for pattern, cls in _SOURCE_CLASSES:
            if pattern.search(ref):
                return cls, f"sources {ref}"
    if shuts_down:
        return "restarts-server", "shuts the server down (shutdown_server, SHUTDOWN, kill)"
    return None


def _normal_option(option: str) -> str:
    return option.lstrip("-").replace("_", "-").lower()


#: The options every sweep server has, as an .opt file would spell them.
_GIVEN_OPTIONS = frozenset([_normal_option(option) for option in suite.SERVER_OPTIONS
                            if "{" not in option]
                           + ["loose-innodb", "innodb", "skip-core-file", "loose-skip-stack-trace",
                              "skip-stack-trace"])


_DEBUG_RE = re.compile(r"debug_sync|debug_dbug|\bdbug\b|have_debug", re.IGNORECASE)
_FAIL_LINE_RE = re.compile(r"^(mysqltest|mariadb-test): .*$", re.MULTILINE)


def _first_line(output: str) -> str:
    """The line of the client's output that says what went wrong, shortened."""
    match = _FAIL_LINE_RE.search(output)
    if match:
        line = match.group(0)
    else:
        # A diff: the first removed/added line after the headers.
        lines = [line for line in output.splitlines()
                 if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        line = lines[0] if lines else (output.strip().splitlines() or [""])[0]
    return _clean(line)[:200]


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


#: Differences through pyproxy recognised from the client's output: (pattern, class, reason).
#: Anything else stays ``pyproxy-difference`` until sweep-classes.txt says what it is.
PROXY_RULES = (
    (re.compile(r"query '(connect|change_user)\b.*' failed: ER_ACCESS_DENIED_ERROR", re.I),
     "expected-accounts", "logs in as an account the test creates; pyproxy admits only the "
     "users its config lists"),
    (re.compile(r"ER_NOT_SUPPORTED_YET \(1235\): 'pyproxy supports only KILL"),
     "expected-pooler", "KILL with an expression (KILL CONNECTION_ID()): pyproxy maps thread "
     "ids and takes only a literal id"),
    (re.compile(r"query 'KILL [^\n]*' failed: ER_NO_SUCH_THREAD \(1094\)", re.I),
     "pyproxy-bug", "KILL of an id read with CONNECTION_ID() (or from the processlist): "
     "CONNECTION_ID() reaches the backend and returns its thread id, while pyproxy's KILL "
     "takes only pyproxy's own (greeting) ids, so it answers ER_NO_SUCH_THREAD"),
    (re.compile(r"^-[^\n]*\t\d+ \((type|format)=\w+\)\t", re.MULTILINE),
     "pyproxy-limitation", "column definitions without MariaDB's extended metadata "
     "('255 (type=point)', '(format=json)'): pyproxy offers no MariaDB extended capabilities "
     "(MARIADB_CLIENT_EXTENDED_METADATA)"),
    (re.compile(r"\(data after the end of a reply\)"),
     "pyproxy-bug", "COM_STMT_EXECUTE of a CALL (or BEGIN NOT ATOMIC) whose routine opens a "
     "cursor: the server flags the EOF after the result set's column definitions with "
     "SERVER_STATUS_CURSOR_EXISTS, pyproxy's ResponseTracker (state COLUMNS_EOF) ends the reply "
     "there although the client asked for no cursor, the rows that follow are 'data after the "
     "end of a reply' and the client's connection is closed"),
    (re.compile(r"^[ +-].*(SESSION_STATUS|show (session )?status)", re.MULTILINE | re.IGNORECASE),
     "expected-pooler", "reads its own session's status counters (SESSION_STATUS, SHOW STATUS): "
     "through a pooler the backend session is not the client's alone"),
    (re.compile(r"count_sessions\.inc"),
     "expected-pooler", "counts the server's sessions (count_sessions.inc): pyproxy keeps "
     "idle pooled backend connections open by design"),
    (re.compile(r"^ select database\(\);\n database\(\)\n-NULL\n\+test$",
                re.MULTILINE | re.IGNORECASE),
     "expected-config", "a connection made with *NO-ONE* as schema gets pyproxy's default "
     "schema (test); passes through a pyproxy without one (see pyproxy.no_default_schema)"),
)


def proxy_class(output: str) -> tuple[str, str]:
    """Class and note of a test that passed directly and failed through pyproxy."""
    for pattern, cls, reason in PROXY_RULES:
        if pattern.search(output):
            return cls, f"{reason}: {_first_line(output)}"[:300]
    return "pyproxy-difference", _first_line(output)


def direct_class(outcome: suite.Outcome) -> tuple[str, str]:
    """Class and note of a test that did not pass directly."""
    if outcome.status == "skip":
        text = outcome.output.strip().splitlines()
        return "skips-itself", _clean(text[-1] if text else "")[:200]
    if outcome.status == "timeout":
        return "timeout-directly", f"no end within {outcome.seconds:.0f}s"
    if outcome.status == "missing":
        return "missing", _clean(outcome.output)[:200]
    line = _first_line(outcome.output)
    if _DEBUG_RE.search(line):
        return "debug-build", line
    return "fails-directly", line


@attrs.define
class Row:
    """One line of the results file."""

    test: str
    mode: str
    direct: str = "not-run"
    pyproxy: str = "-"
    cls: str = "not-run"
    note: str = ""
    direct_s: str = ""
    pyproxy_s: str = ""

    def line(self) -> str:
        return "\t".join((self.test, self.mode, self.direct, self.pyproxy, self.cls,
                          self.note.replace("\t", " "), self.direct_s, self.pyproxy_s))

    @classmethod
    def parse(cls, line: str) -> Row:
        fields = line.split("\t")
        fields += [""] * (len(COLUMNS) - len(fields))
        return cls(*fields[:len(COLUMNS)])


def read_results(path: Path) -> dict[tuple[str, str], Row]:
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line or line.startswith("#") or line.startswith("test\t"):
                continue
            row = Row.parse(line)
            rows[(row.test, row.mode)] = row
    return rows


def read_classes(path: Path = CLASSES_FILE) -> dict[tuple[str, str], tuple[str, str]]:
    """``sweep-classes.txt``: ``test mode|both class reason...`` per line, ``#`` comments."""
    classes = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            test, mode, cls, *reason = line.split(None, 3)
            if cls not in CLASSES:
                raise ValueError(f"{path}: unknown class {cls!r} in {line!r}")
            for each in (suite.MODES if mode == "both" else (mode,)):
                classes[(test, each)] = (cls, " ".join(reason))
    return classes


def apply_classes(rows: dict[tuple[str, str], Row],
                  classes: dict[tuple[str, str], tuple[str, str]]) -> None:
    """Give the hand-classified pyproxy failures their class and reason."""
    for key, row in rows.items():
        if row.direct == "pass" and row.pyproxy not in ("pass", "-") and key in classes:
            row.cls, reason = classes[key]
            row.note = reason


def write_results(path: Path, rows: dict[tuple[str, str], Row], order: Sequence[str],
                  header: Sequence[str]) -> None:
    """Rewrite the results file: header comments, a summary, then one line per test and mode."""
    position = {name: i for i, name in enumerate(order)}
    ordered = sorted(rows.values(), key=lambda r: (position.get(r.test, len(position)), r.test,
                                                   suite.MODES.index(r.mode)
                                                   if r.mode in suite.MODES else 9))
    lines = [f"# {line}" if line else "#" for line in header]
    lines += ["#", "# Summary (suite, mode: tests, passed directly, passed through pyproxy, "
              "not run):"]
    by: dict[tuple[str, str], Counter[str]] = {}
    for row in ordered:
        counter = by.setdefault((row.test.split(".", 1)[0], row.mode), Counter())
        counter["tests"] += 1
        counter["direct"] += row.direct == "pass"
        counter["pyproxy"] += row.pyproxy == "pass"
        counter["not-run"] += row.direct == "not-run"
    for (name, mode), c in by.items():
        lines.append(f"#   {name:9} {mode:5}: {c['tests']:5} tests, {c['direct']:5} pass directly, "
                     f"{c['pyproxy']:5} through pyproxy, {c['not-run']:5} not run")
    classes = Counter(row.cls for row in ordered)
    lines += ["#", "# Classes (lines per class):"]
    lines += [f"#   {cls:20} {classes[cls]:5}  {meaning}" for cls, meaning in CLASSES.items()]
    lines.append("\t".join(COLUMNS))
    lines += [row.line() for row in ordered]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


# --- lanes: two servers and a pyproxy each ----------------------------------------------------


@attrs.define(eq=False)
class ServerState:
    """What a server looked like when it was prepared, to put back after each test."""

    variables: dict[str, str]
    users: set[tuple[str, str]]


def _connect(target: suite.Target) -> pymysql.Connection:
    return pymysql.connect(host=target.host, port=target.port, user=target.user,
                           password=target.password, autocommit=True, connect_timeout=10,
                           read_timeout=60, write_timeout=30)


def snapshot(target: suite.Target) -> ServerState:
    conn = _connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL VARIABLES")
            variables = {name: value for name, value in cur.fetchall()}
            cur.execute("SELECT user, host FROM mysql.user")
            users = {(user, host) for user, host in cur.fetchall()}
    finally:
        conn.close()
    return ServerState(variables, users)


_NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?$")


def restore(target: suite.Target, state: ServerState) -> list[str]:
    """Set back the globals a test changed and drop the accounts it created; return what
    changed (for the log)."""
    changed = []
    conn = _connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL VARIABLES")
            for name, value in cur.fetchall():
                before = state.variables.get(name)
                if before is None or before == value or name in _VOLATILE:
                    continue
                literal = before if _NUMBER_RE.match(before) else conn.escape(before)
                if before == "" and name not in _EMPTY_OK:
                    literal = "DEFAULT"
                try:
                    cur.execute(f"SET GLOBAL `{name}` = {literal}")
                    changed.append(name)
                except pymysql.err.MySQLError:
                    pass  # read-only, or a value only the command line can give
            cur.execute("SELECT user, host FROM mysql.user")
            for user, host in cur.fetchall():
                if (user, host) not in state.users:
                    try:
                        cur.execute("DROP USER %s@%s", (user, host))
                    except pymysql.err.MySQLError:
                        cur.execute("DROP ROLE %s", (user,))
                    changed.append(f"user {user}@{host}")
    finally:
        conn.close()
    return changed


#: MariaDB's error for a DROP DATABASE that left files in the schema's folder.
ER_DB_DROP_RMDIR = 1010

#: Globals that change by themselves.
_VOLATILE = frozenset(("gtid_binlog_pos", "gtid_current_pos", "gtid_binlog_state",
                       "gtid_slave_pos", "timestamp", "last_insert_id", "insert_id",
                       "rand_seed1", "rand_seed2", "pseudo_thread_id", "warning_count",
                       "error_count", "identity", "in_transaction", "external_user",
                       "last_gtid", "innodb_buffer_pool_size"))
_EMPTY_OK = frozenset(("init_connect", "init_slave", "general_log_file", "slow_query_log_file"))


@attrs.define(eq=False)
class Lane:
    """One worker: a server run directly, one behind a pyproxy; restarts what dies."""

    number: int
    workdir: Path
    direct: suite.SuiteServer | None = None
    proxied: suite.SuiteServer | None = None
    proxy: Any = None
    direct_state: ServerState | None = None
    proxied_state: ServerState | None = None
    proxy_starts: int = 0

    def start(self) -> None:
        if self.direct is None:
            self.direct = suite.start_server()
            self.direct_state = snapshot(self.direct.target())
        if self.proxied is None:
            self.proxied = suite.start_server()
            self.proxied_state = snapshot(self.proxied.target())
        if self.proxy is None:
            self.proxy_starts += 1
            self.proxy = suite.start_pyproxy(
                self.proxied.server, self.workdir / f"pyproxy-{self.proxy_starts}")

    def restart_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        self.start()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        for server in (self.direct, self.proxied):
            if server is not None:
                server.cleanup()
        self.direct = self.proxied = None

    def proxy_target(self) -> suite.Target:
        return suite.Target(self.proxy.host, self.proxy.port, label="pyproxy")

    def _prepare(self, which: str) -> None:
        """Reset schemas, globals and accounts on one side; restart it if it is gone."""
        for attempt in (1, 2):
            try:
                if which == "direct":
                    assert self.direct is not None and self.direct_state is not None
                    suite.reset_schemas(self.direct.target())
                    restore(self.direct.target(), self.direct_state)
                else:
                    assert self.proxied is not None and self.proxied_state is not None
                    suite.reset_schemas(self.proxy_target())
                    # Globals through pyproxy: it follows SET GLOBAL that passes through it.
                    restore(self.proxy_target(), self.proxied_state)
                return
            except pymysql.err.OperationalError as exc:
                if attempt == 2:
                    raise
                if exc.args and exc.args[0] == ER_DB_DROP_RMDIR:
                    self._clear_schema_folders(which)
                else:
                    self._revive(which)
            except (pymysql.err.MySQLError, OSError):
                if attempt == 2:
                    raise
                self._revive(which)

    def _clear_schema_folders(self, which: str) -> None:
        """Remove the files a test left in a schema's folder (SELECT ... INTO OUTFILE 'name'
        writes into the datadir): DROP DATABASE leaves a folder it finds files of no table in,
        and fails ("Directory not empty") from then on, for every later test."""
        server = self.direct if which == "direct" else self.proxied
        assert server is not None and server.server.tmpdir is not None
        datadir = Path(server.server.tmpdir) / "data"
        for folder in datadir.iterdir():
            if folder.is_dir() and folder.name.lower() not in suite.SYSTEM_SCHEMAS:
                for leftover in folder.iterdir():
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)

    def _revive(self, which: str) -> None:
        """Start again whatever of this side no longer answers."""
        if which == "direct":
            if self.direct is not None:
                self.direct.cleanup()
            self.direct = None
        else:
            if self.proxy is not None:
                self.proxy.stop()
                self.proxy = None
            if self.proxied is not None and not _answers(self.proxied.target()):
                self.proxied.cleanup()
                self.proxied = None
        self.start()

    def run(self, client: str, suite_dir: Path, name: str, mode: str,
            timeout: float, logs: Path) -> Row:
        row = Row(name, mode)
        try:
            self._prepare("direct")
        except (pymysql.err.MySQLError, OSError) as exc:
            row.direct, row.cls, row.note = "fail", "reset-failed", f"reset failed: {exc}"
            return row
        assert self.direct is not None
        outcome = suite.run_test(client, suite_dir, name, self.direct.target(), mode=mode,
                                 vardir=self.direct.vardir, logdir=self.workdir / "direct",
                                 timeout=timeout)
        row.direct, row.direct_s = outcome.status, f"{outcome.seconds:.2f}"
        if not outcome.passed:
            row.cls, row.note = direct_class(outcome)
            _save(logs, name, mode, "direct", outcome.output)
            if not _answers(self.direct.target()):
                self._revive("direct")
            return row
        try:
            self._prepare("proxied")
        except (pymysql.err.MySQLError, OSError) as exc:
            row.pyproxy, row.cls, row.note = "fail", "reset-failed", f"reset failed: {exc}"
            self.restart_proxy()
            return row
        assert self.proxied is not None
        outcome = suite.run_test(client, suite_dir, name, self.proxy_target(), mode=mode,
                                 vardir=self.proxied.vardir, logdir=self.workdir / "pyproxy",
                                 timeout=timeout)
        row.pyproxy, row.pyproxy_s = outcome.status, f"{outcome.seconds:.2f}"
        if outcome.passed:
            row.cls = "ok"
        else:
            row.cls, row.note = proxy_class(outcome.output)
            _save(logs, name, mode, "pyproxy", outcome.output)
            # Leftovers in pooled connections must not fail the next test.
            if not _answers(self.proxied.target()):
                self._revive("proxied")
            else:
                self.restart_proxy()
        return row


def _answers(target: suite.Target) -> bool:
    try:
        _connect(target).close()
    except (pymysql.err.MySQLError, OSError):
        return False
    return True


def _save(logs: Path, name: str, mode: str, where: str, output: str) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.{mode}.{where}.txt").write_text(output)


# --- the sweep --------------------------------------------------------------------------------


def sweep(args: argparse.Namespace) -> int:
    client = suite.find_client()
    suite_dir = suite.find_suite_dir()
    suites = [s for s in args.suites.split(",") if s]
    names = list(args.tests) or discover(suite_dir, suites)
    order = discover(suite_dir, suites) if not args.tests else names
    modes = suite.MODES if args.mode == "both" else (args.mode,)
    results = Path(args.results)
    if args.reclassify:
        return reclassify(results, Path(args.logs))
    if args.recheck:
        return recheck(args)
    rows = read_results(results) if args.resume else {}
    scanner = _SourceScanner(suite_dir)
    todo: list[tuple[str, str]] = []
    first = [p for p in args.first.split(",") if p]
    if first:
        # Stable: the tests matching --first keep their order, ahead of the others.
        names.sort(key=lambda n: not any(fnmatch.fnmatchcase(n, p) for p in first))
    for name in names:
        excluded = static_exclusion(suite_dir, name, scanner)
        for mode in modes:
            key = (name, mode)
            if excluded is not None and not args.run_excluded:
                rows[key] = Row(name, mode, "excluded", "-", *excluded)
            elif (key not in rows or rows[key].direct in ("not-run", "excluded")
                  or rows[key].cls == "reset-failed"):
                rows[key] = Row(name, mode)
                todo.append(key)
    print(f"{len(todo)} runs to do, {sum(r.direct == 'excluded' for r in rows.values())} "
          f"excluded without running", flush=True)

    started = time.monotonic()
    deadline = started + args.budget * 60 if args.budget else None
    work: queue.Queue[tuple[str, str]] = queue.Queue()
    for key in todo:
        work.put(key)
    lock = threading.Lock()
    done = [0]
    classes = read_classes()
    workdir = Path(tempfile.mkdtemp(prefix="pyproxy-sweep-"))
    logs = Path(args.logs)
    previous_wall = _previous_wall(results) if args.resume else 0.0

    def header(final: bool) -> list[str]:
        wall = previous_wall + time.monotonic() - started
        return [
            "MariaDB regression suites run directly and through pyproxy "
            "(integration/mariadb_tests/sweep.py; see its docstring and README.rst, Testing).",
            f"Suites: {', '.join(suites) if not args.tests else 'selected tests'}; modes: "
            f"{', '.join(modes)}; server: the sandbox of suite.start_server(); "
            f"timeout {args.timeout:.0f}s per run.",
            f"Wall time: {wall:.0f}s ({'finished' if final else 'in progress'}; "
            f"{args.jobs} lanes, nice -n 10, 2 shared cores).",
            "Hand-written classes of the pyproxy failures: sweep-classes.txt; notes: "
            "sweep-notes.md.",
        ]

    def flush(final: bool = False) -> None:
        apply_classes(rows, classes)
        write_results(results, rows, order, header(final))

    def worker(number: int) -> None:
        lane = Lane(number, workdir / f"lane{number}")
        try:
            lane.start()
            while True:
                if stopping.is_set() or (deadline is not None and time.monotonic() > deadline):
                    return
                try:
                    name, mode = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    row = lane.run(client, suite_dir, name, mode, args.timeout, logs)
                except Exception as exc:  # a lane that cannot restart its servers
                    row = Row(name, mode, "fail", "-", "fails-directly",
                              f"sweep error: {exc!r}"[:200])
                    lane.stop()
                    lane.start()
                with lock:
                    rows[(name, mode)] = row
                    done[0] += 1
                    print(f"[{done[0]}/{len(todo)} {time.monotonic() - started:.0f}s] "
                          f"{name} {mode}: {row.direct}/{row.pyproxy} {row.cls} {row.note[:100]}",
                          flush=True)
                    if done[0] % 25 == 0:
                        flush()
        finally:
            lane.stop()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True)
               for n in range(args.jobs)]
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        # The lanes finish the test they run, stop their servers; the file is written.
        print("stopping after the running tests (signal again to leave at once)", flush=True)
        stopping.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(1.0)
    finally:
        with lock:
            flush(final=work.empty())
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    counts = Counter(row.cls for row in rows.values())
    print(", ".join(f"{n} {cls}" for cls, n in counts.most_common()))
    print(f"{time.monotonic() - started:.0f}s; results in {results}, diffs in {logs}")
    return 0


def reclassify(results: Path, logs: Path) -> int:
    """Classify the pyproxy failures in ``results`` again from their saved output (after
    :data:`PROXY_RULES` or sweep-classes.txt changed), without running anything."""
    text = results.read_text()
    rows = read_results(results)
    for row in rows.values():
        if row.note.startswith("reset failed"):
            row.cls = "reset-failed"
        elif row.cls == "order-dependent":
            continue  # what --recheck found stays
        elif row.direct == "pass" and row.pyproxy not in ("pass", "-"):
            log = logs / f"{row.test}.{row.mode}.pyproxy.txt"
            if log.is_file():
                row.cls, row.note = proxy_class(log.read_text(errors="replace"))
    apply_classes(rows, read_classes())
    header = []
    for line in text.splitlines():
        if line.startswith("# Summary"):
            break
        header.append(line[2:] if line.startswith("# ") else "")
    while header and not header[-1]:
        header.pop()
    order = list(dict.fromkeys(row.test for row in rows.values()))
    write_results(results, rows, order, header)
    print(Counter(row.cls for row in rows.values()).most_common())
    return 0


def recheck(args: argparse.Namespace) -> int:
    """Run each ``pyproxy-difference`` of the results file again on fresh servers and a fresh
    pyproxy (one new lane per test and mode): one that passes then failed in the sweep only
    because of what earlier tests left behind (``order-dependent``)."""
    client = suite.find_client()
    suite_dir = suite.find_suite_dir()
    results = Path(args.results)
    text = results.read_text()
    rows = read_results(results)
    todo = [row for row in rows.values() if row.cls == "pyproxy-difference"]
    print(f"{len(todo)} to run again", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="pyproxy-sweep-recheck-"))
    try:
        for number, row in enumerate(todo):
            lane = Lane(number, workdir / f"lane{number}")
            try:
                lane.start()
                again = lane.run(client, suite_dir, row.test, row.mode, args.timeout,
                                 Path(args.logs) / "recheck")
            finally:
                lane.stop()
            if again.cls == "ok":
                row.cls = "order-dependent"
                row.note = f"passed again on fresh servers and pyproxy; in the sweep: {row.note}"
            else:
                row.note = f"fails again on fresh servers and pyproxy: {again.note}"
            print(f"{row.test} {row.mode}: {again.direct}/{again.pyproxy} -> {row.cls}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    header = []
    for line in text.splitlines():
        if line.startswith("# Summary"):
            break
        header.append(line[2:] if line.startswith("# ") else "")
    while header and not header[-1]:
        header.pop()
    write_results(results, rows, list(dict.fromkeys(row.test for row in rows.values())), header)
    return 0


def _previous_wall(path: Path) -> float:
    """The wall time a results file already records, to add a resumed sweep's to it."""
    if path.is_file():
        match = re.search(r"^# Wall time: (\d+)s", path.read_text(), re.MULTILINE)
        if match:
            return float(match.group(1))
    return 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.mariadb_tests.sweep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", help="suite.name (default: every test of --suites)")
    parser.add_argument("--suites", default=",".join(DEFAULT_SUITES),
                        help="comma-separated suites (default: %(default)s)")
    parser.add_argument("--mode", choices=("plain", "ps", "both"), default="both",
                        help="plain (COM_QUERY), ps (--ps-protocol) or both (default)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="lanes run at the same time, each with two servers and a pyproxy "
                             "(default: %(default)s; at most 2 on a shared 2-core machine)")
    parser.add_argument("--budget", type=float, default=0,
                        help="minutes after which no new test starts (default: no limit)")
    parser.add_argument("--first", default="",
                        help="comma-separated patterns (main.type_*,json.*) of tests to run "
                             "before the others")
    parser.add_argument("--resume", action="store_true",
                        help="keep the verdicts in the results file; run only the missing "
                             "and not-run ones")
    parser.add_argument("--results", default=str(RESULTS_FILE),
                        help="the results file (default: %(default)s)")
    parser.add_argument("--logs", default=os.path.join(tempfile.gettempdir(), "pyproxy-sweep-logs"),
                        help="where the client's output of every failure goes "
                             "(default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=SWEEP_TIMEOUT,
                        help="seconds per run (default: %(default)s)")
    parser.add_argument("--run-excluded", action="store_true",
                        help="run the tests excluded without running too (restarting tests "
                             "take the lane's server down; it is started again)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' folders")
    parser.add_argument("--recheck", action="store_true",
                        help="run every pyproxy-difference of the results file again, each on "
                             "fresh servers and pyproxy; those that pass become order-dependent")
    parser.add_argument("--reclassify", action="store_true",
                        help="run nothing: classify the pyproxy failures in the results file "
                             "again from the output saved in --logs and sweep-classes.txt")
    args = parser.parse_args(argv)
    try:
        return sweep(args)
    except suite.SuiteUnavailable as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
