"""Running MariaDB's regression tests with the ``mariadb-test`` client against a running server.

MariaDB's tests (Debian package ``mariadb-test``: the client ``/usr/bin/mariadb-test``, alias
``mysqltest``, and the suite in ``/usr/share/mysql/mysql-test``) are normally run by
``mariadb-test-run.pl``, which starts servers of its own.  Here the client is run directly, one
``.test`` file at a time, against a server (or a pyproxy) that is already listening::

    cd /usr/share/mysql/mysql-test && mariadb-test --no-defaults --host=H --port=P --user=U \\
        --database=test --protocol=tcp --skip-ssl --silent --tmpdir=T --logdir=L \\
        [--ps-protocol] --test-file=main/user_var.test --result-file=main/user_var.result

The working directory must be the suite folder: tests ``--source include/...`` relative to it.
With ``--result-file`` (and no ``--record``) the client compares its output with the file and
exits 0 when they are equal, 1 with a unified diff (or the failing statement) otherwise, and 62
when the test skips itself (``--skip``, e.g. a test that needs ``--ps-protocol``).
``--protocol=tcp`` matters: the tests' own ``connect (con1,localhost,root,,)`` would otherwise
use the default unix socket instead of the host and port given.

Test names are ``main.user_var`` (``main/user_var.test``), ``sys_vars.autocommit_func``
(``suite/sys_vars/t/autocommit_func.test``) and ``pyproxy.NAME`` for pyproxy's own tests in
this folder (``t/NAME.test``, ``r/NAME.result``).

Many tests expect the server ``mariadb-test-run.pl`` would give them; :func:`start_server`
starts a :class:`pyproxy.sandbox.SandboxServer` configured the same way (see
:data:`SERVER_OPTIONS` and :func:`prepare_server`).  Before each test :func:`reset_schemas`
drops every non-system schema and creates an empty ``test``, so one failing test cannot leave
tables behind for the next (``mariadb-test-run.pl`` checks that instead).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pymysql

from pyproxy.sandbox import SandboxServer

HERE = Path(__file__).resolve().parent
#: The list of tests; see its comments for why each group is in or out.
LIST_FILE = HERE / "tests.txt"
#: The two ways the client sends statements: COM_QUERY, or COM_STMT_PREPARE + EXECUTE.
MODES = ("plain", "ps")
#: Where distributions install the suite; ``PYPROXY_MARIADB_TEST_DIR`` overrides.
SUITE_DIRS = ("/usr/share/mysql/mysql-test", "/usr/share/mariadb/mariadb-test",
              "/usr/share/mariadb/mysql-test", "/usr/mysql-test")
#: Seconds one test may run before it counts as hung (most need well under one).
TEST_TIMEOUT = 60.0
#: Seconds :func:`reset_schemas` waits for a lock before it gives up.
RESET_LOCK_WAIT = 10
#: Exit code of ``mariadb-test`` for a test that skipped itself.
SKIP_EXIT = 62
#: Schemas :func:`reset_schemas` keeps.
SYSTEM_SCHEMAS = frozenset(("information_schema", "performance_schema", "mysql", "sys", "mtr"))
#: The account the tests use: they ``connect (name,localhost,root,,)`` themselves.
USER = "root"
PASSWORD = ""

#: mariadbd options from the suite's ``include/default_mysqld.cnf`` (what
#: ``mariadb-test-run.pl`` gives every server) that change what tests print, plus name
#: resolution: connections from 127.0.0.1 then log in as ``root@localhost``, as the results
#: (``DEFINER=`root`@`localhost```) expect.  ``{vardir}`` is replaced.
SERVER_OPTIONS = (
    "--character-set-server=latin1",
    "--collation-server=latin1_swedish_ci",
    "--max-allowed-packet=16M",  # the server default; the sandbox raises it
    "--default-storage-engine=MyISAM",
    "--local-infile",
    "--log-bin-trust-function-creators=1",
    "--key-buffer-size=1M",
    "--sort-buffer-size=256K",
    "--max-heap-table-size=1M",
    "--use-stat-tables=preferably",
    "--histogram-type=json_hb",
    "--connect-timeout=60",
    "--open-files-limit=1024",
    "--innodb-buffer-pool-size=8M",
    "--plugin-maturity=unknown",
    "--skip-name-resolve=OFF",
    "--secure-file-priv={vardir}",
    "--tmpdir={vardir}/tmp",
    "--log-output=FILE",
    "--general-log",
    "--general-log-file={vardir}/log/general.log",
    "--slow-query-log",
    "--slow-query-log-file={vardir}/log/slow.log",
)
#: ``mariadb-test-run.pl`` runs servers with TZ=GMT-3 unless a test asks otherwise.
SERVER_TZ = "GMT-3"


class SuiteUnavailable(Exception):
    """The ``mariadb-test`` client or the suite is not installed; the message says so."""


def find_client() -> str:
    """Return the path of the ``mariadb-test`` client (``mysqltest`` on older packages)."""
    for name in ("mariadb-test", "mysqltest"):
        found = shutil.which(name)
        if found:
            return found
    raise SuiteUnavailable("the mariadb-test client is not installed "
                           "(Debian package mariadb-test; scripts/install-deps installs it)")


def find_suite_dir() -> Path:
    """Return the folder holding ``main/``, ``suite/`` and ``include/``."""
    candidates = [os.environ.get("PYPROXY_MARIADB_TEST_DIR", ""), *SUITE_DIRS]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if (path / "include" / "have_innodb.inc").is_file() and (path / "main").is_dir():
            return path
    raise SuiteUnavailable(f"MariaDB's test suite is not in any of {', '.join(SUITE_DIRS)} "
                           "(Debian package mariadb-test-data, installed with mariadb-test)")


@attrs.frozen
class ListedTest:
    """One line of ``tests.txt``: a test and the modes it runs in."""

    name: str
    modes: tuple[str, ...] = MODES


def read_list(path: Path = LIST_FILE) -> list[ListedTest]:
    """Read ``tests.txt``: ``suite.name [plain|ps]`` per line, ``#`` starts a comment.

    A mode after the name limits the test to that mode (tests that skip themselves in the
    other one, e.g. those that need ``--ps-protocol``).
    """
    tests = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        name, modes = words[0], tuple(words[1:]) or MODES
        if "." not in name or any(mode not in MODES for mode in modes):
            raise ValueError(f"{path}:{number}: expected 'suite.name [plain|ps]', got {line!r}")
        tests.append(ListedTest(name, modes))
    names = [test.name for test in tests]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: listed twice: {', '.join(duplicates)}")
    return tests


def tests_for(mode: str, tests: Iterable[ListedTest]) -> list[str]:
    """The names of the tests that run in ``mode``, in list order."""
    return [test.name for test in tests if mode in test.modes]


def test_files(suite_dir: Path, name: str) -> tuple[Path, Path]:
    """Return the ``.test`` and ``.result`` files of ``suite.name``."""
    suite, _, short = name.partition(".")
    if not short:
        suite, short = "main", name
    if suite == "pyproxy":
        return HERE / "t" / f"{short}.test", HERE / "r" / f"{short}.result"
    if suite == "main":
        return suite_dir / "main" / f"{short}.test", suite_dir / "main" / f"{short}.result"
    base = suite_dir / "suite" / suite
    return base / "t" / f"{short}.test", base / "r" / f"{short}.result"


@attrs.frozen
class Target:
    """Where the tests connect: a server, or a pyproxy in front of one."""

    host: str
    port: int
    user: str = USER
    password: str = PASSWORD
    label: str = "server"


@attrs.frozen
class Outcome:
    """What one run of one test gave."""

    name: str
    mode: str
    status: str  # pass, fail, skip, timeout, missing
    seconds: float
    output: str = ""
    target: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def describe(self, lines: int = 40) -> str:
        """One line of verdict, then the start of the client's output (the diff)."""
        where = f"{self.target} " if self.target else ""
        head = f"{self.status.upper():7} {self.name} [{where}{self.mode}] ({self.seconds:.2f}s)"
        text = self.output.strip()
        if self.passed or not text:
            return head
        body = text.splitlines()
        more = f"\n    ... {len(body) - lines} more lines" if len(body) > lines else ""
        return head + "\n" + "\n".join("    " + line for line in body[:lines]) + more


def reset_schemas(target: Target) -> None:
    """Drop every non-system schema and create an empty ``test`` (latin1, as the suite's own
    bootstrap does); roll back XA transactions a failed test left prepared."""
    conn = pymysql.connect(host=target.host, port=target.port, user=target.user,
                           password=target.password, database="mysql", autocommit=True,
                           connect_timeout=10, read_timeout=RESET_LOCK_WAIT + 30,
                           write_timeout=30)
    try:
        with conn.cursor() as cur:
            # A session a failed test left holding locks must not stall the run for a day.
            cur.execute(f"SET SESSION lock_wait_timeout = {RESET_LOCK_WAIT}")
            cur.execute("XA RECOVER FORMAT='SQL'")  # data: the xid as SQL, X'..',X'..',n
            for row in cur.fetchall():
                xid = row[3].decode() if isinstance(row[3], bytes) else row[3]
                cur.execute("XA ROLLBACK " + xid)
            cur.execute("SHOW DATABASES")
            for (schema,) in cur.fetchall():
                if schema.lower() not in SYSTEM_SCHEMAS:
                    cur.execute("DROP DATABASE `" + schema.replace("`", "``") + "`")
            cur.execute("CREATE DATABASE test CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    finally:
        conn.close()


def client_command(client: str, target: Target, test_file: Path, result_file: Path, *,
                   ps: bool, tmpdir: Path, logdir: Path) -> list[str]:
    """The ``mariadb-test`` command line for one test (run it in the suite folder)."""
    cmd = [
        client, "--no-defaults", f"--host={target.host}", f"--port={target.port}",
        f"--user={target.user}", "--database=test", "--protocol=tcp", "--skip-ssl",
        "--silent", f"--tmpdir={tmpdir}", f"--logdir={logdir}", "--tail-lines=20",
        "--max-connect-retries=20",
    ]
    if target.password:
        cmd.append(f"--password={target.password}")
    if ps:
        cmd.append("--ps-protocol")
    cmd += [f"--test-file={test_file}", f"--result-file={result_file}"]
    return cmd


def client_env(suite_dir: Path, vardir: Path, target: Target) -> dict[str, str]:
    """The variables tests read (``$MYSQLTEST_VARDIR``...), as ``mariadb-test-run.pl`` sets them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL", "MARIADB"))}
    env.update({
        "LC_ALL": "C",
        "MYSQL_TEST_DIR": str(suite_dir),
        "MYSQLTEST_VARDIR": str(vardir),
        "MYSQL_TMP_DIR": str(vardir / "tmp"),
        "MASTER_MYPORT": str(target.port),
    })
    return env


def run_test(client: str, suite_dir: Path, name: str, target: Target, *, mode: str,
             vardir: Path, logdir: Path, timeout: float = TEST_TIMEOUT) -> Outcome:
    """Run one test against ``target`` and compare it with its ``.result`` file."""
    test_file, result_file = test_files(suite_dir, name)
    if not test_file.is_file() or not result_file.is_file():
        return Outcome(name, mode, "missing", 0.0, f"no {test_file} or {result_file}",
                       target.label)
    logdir.mkdir(parents=True, exist_ok=True)
    tmpdir = vardir / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    # The client writes NAME.reject next to the result file it compares with: give it a copy
    # here rather than let it write into the installed suite.
    expected = logdir / f"{name.replace('.', '__')}.result"  # NAME.reject: no dots
    shutil.copyfile(result_file, expected)
    cmd = client_command(client, target, test_file, expected, ps=mode == "ps",
                         tmpdir=tmpdir, logdir=logdir)
    started = time.monotonic()
    process = subprocess.Popen(cmd, cwd=suite_dir, env=client_env(suite_dir, vardir, target),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        seconds = time.monotonic() - started
        tail = _text(out).strip().splitlines()[-10:]
        log = expected.with_suffix(".log")
        return Outcome(name, mode, "timeout", seconds,
                       f"no end after {timeout:.0f}s; output so far in {log}\n" + "\n".join(tail),
                       target.label)
    seconds = time.monotonic() - started
    text = _text(out)
    if process.returncode == 0:
        return Outcome(name, mode, "pass", seconds, text, target.label)
    if process.returncode == SKIP_EXIT:
        return Outcome(name, mode, "skip", seconds, text, target.label)
    return Outcome(name, mode, "fail", seconds, text or f"exit code {process.returncode}",
                   target.label)


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def run_tests(names: Sequence[str], target: Target, *, mode: str, vardir: Path, workdir: Path,
              timeout: float = TEST_TIMEOUT, reset: bool = True,
              report: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run ``names`` one after another against ``target``, each after :func:`reset_schemas`."""
    client = find_client()
    suite_dir = find_suite_dir()
    logdir = workdir / f"{target.label}-{mode}"
    outcomes = []
    for name in names:
        if reset:
            try:
                reset_schemas(target)
            except pymysql.err.MySQLError as exc:
                outcome = Outcome(name, mode, "fail", 0.0, f"resetting the schemas failed: {exc}",
                                  target.label)
                outcomes.append(outcome)
                if report is not None:
                    report(outcome)
                continue
        outcome = run_test(client, suite_dir, name, target, mode=mode, vardir=vardir,
                           logdir=logdir, timeout=timeout)
        outcomes.append(outcome)
        if report is not None:
            report(outcome)
    return outcomes


Results = dict[str, dict[str, Outcome]]  # mode -> test name -> outcome


def run_modes(target: Target, tests_by_mode: Mapping[str, Sequence[str]], *, vardir: Path,
              workdir: Path, timeout: float = TEST_TIMEOUT,
              report: Callable[[Outcome], None] | None = None) -> Results:
    """Run each mode's tests against ``target``, the modes one after another."""
    results: Results = {}
    for mode, names in tests_by_mode.items():
        outcomes = run_tests(names, target, mode=mode, vardir=vardir, workdir=workdir,
                             timeout=timeout, report=report)
        results[mode] = {outcome.name: outcome for outcome in outcomes}
    return results


def run_both(direct: tuple[Target, Path], proxied: tuple[Target, Path],
             tests_by_mode: Mapping[str, Sequence[str]], *, workdir: Path,
             timeout: float = TEST_TIMEOUT,
             report: Callable[[Outcome], None] | None = None) -> tuple[Results, Results]:
    """Run the same tests directly and through pyproxy at the same time, each against its
    own server (``(target, vardir)``): the two runs share no server state, and together
    they take as long as the slower one."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(run_modes, target, tests_by_mode, vardir=vardir,
                               workdir=workdir, timeout=timeout, report=report)
                   for target, vardir in (direct, proxied)]
        return futures[0].result(), futures[1].result()


# --- a server configured like mariadb-test-run.pl's -----------------------------------------


@attrs.define(eq=False)
class SuiteServer:
    """A sandbox mariadbd prepared for the suite, and its ``vardir``.

    ``vardir`` mirrors ``mariadb-test-run.pl``'s: ``std_data/`` (a copy of the suite's),
    ``tmp/``, ``log/`` and ``mysqld.1`` (a link to the sandbox folder, so ``mysqld.1/data`` is
    the datadir), and it is the server's ``secure_file_priv``: tests that read and write files
    on the server side find them where they expect.
    """

    vardir: Path
    server: SandboxServer

    def target(self) -> Target:
        return Target(self.server.host, self.server.port, label="direct")

    def cleanup(self) -> None:
        try:
            self.server.cleanup()
        finally:
            shutil.rmtree(self.vardir, ignore_errors=True)


def start_server(suite_dir: Path | None = None) -> SuiteServer:
    """Start a sandbox mariadbd set up as ``mariadb-test-run.pl`` would (see module doc)."""
    suite_dir = suite_dir or find_suite_dir()
    # A short path: the sandbox's folder and socket go inside (a long TMPDIR would make the
    # sandbox put them elsewhere, and '../../std_data' from the datadir would miss).
    vardir = Path(tempfile.mkdtemp(prefix="pyproxy-mtr-",
                                   dir="/tmp" if os.path.isdir("/tmp") else None))
    options = [option.format(vardir=vardir) for option in SERVER_OPTIONS]
    server = SandboxServer(max_connections=151, extra_args=options, base_dir=str(vardir))
    suite_server = SuiteServer(vardir, server)
    try:
        for sub in ("tmp", "log"):
            (vardir / sub).mkdir()
        shutil.copytree(suite_dir / "std_data", vardir / "std_data", symlinks=True)
        previous = os.environ.get("TZ")
        os.environ["TZ"] = SERVER_TZ  # read by mariadbd at start only
        try:
            server.start()
        finally:
            if previous is None:
                del os.environ["TZ"]
            else:
                os.environ["TZ"] = previous
        assert server.tmpdir is not None
        (vardir / "mysqld.1").symlink_to(server.tmpdir)
        prepare_server(server, suite_dir)
    except BaseException:
        suite_server.cleanup()
        raise
    return suite_server


def prepare_server(server: SandboxServer, suite_dir: Path) -> None:
    """Give a fresh sandbox what ``mariadb-test-run.pl``'s bootstrap gives its servers.

    The ``test`` schema (latin1), an ``mtr`` schema with ``mtr.add_suppression()`` (tests
    call it to silence error-log checks, which are not made here), the time zone tables'
    test data the package ships, and ``root@localhost`` as the only root account.
    """
    conn = server.connect(client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS test "
                        "CHARACTER SET latin1 COLLATE latin1_swedish_ci")
            cur.execute("CREATE DATABASE IF NOT EXISTS mtr CHARACTER SET latin1")
            cur.execute("CREATE TABLE mtr.test_suppressions (pattern VARCHAR(255)) ENGINE=MyISAM")
            cur.execute("CREATE PROCEDURE mtr.add_suppression(pattern VARCHAR(255)) "
                        "INSERT INTO mtr.test_suppressions VALUES (pattern)")
            cur.execute("SELECT user, host FROM mysql.user WHERE user = 'root' "
                        "AND host <> 'localhost'")
            for user, host in cur.fetchall():
                cur.execute("DROP USER %s@%s", (user, host))
            timezones = _timezone_data(suite_dir)
            if timezones is not None:
                cur.execute("USE mysql")
                cur.execute(timezones.read_text())
                while cur.nextset():
                    pass
    finally:
        conn.close()


def _timezone_data(suite_dir: Path) -> Path | None:
    for candidate in (suite_dir.parent / "mysql_test_data_timezone.sql",
                      Path("/usr/share/mysql/mysql_test_data_timezone.sql"),
                      Path("/usr/share/mariadb/mysql_test_data_timezone.sql")):
        if candidate.is_file():
            return candidate
    return None


def start_pyproxy(server: SandboxServer, directory: Path, database: str | None = "test",
                  **sections: Mapping[str, Any]) -> Any:
    """Start pyproxy in front of ``server`` for the suite: account ``root`` without a
    password (the tests' own ``connect`` commands use it), ``database`` as the default schema.

    Returns an :class:`integration.servers.ProxyProcess`.  ``start_proxy`` also creates its
    ``app`` account and schema on the server; they are dropped again, since tests list
    schemas and accounts.
    """
    from integration import servers  # the pytest helpers; not needed to run tests by hand

    config: dict[str, Any] = {
        "backend": {"database": database},
        "pool": {"max_connections": 30, "borrow_timeout": 30},
        "log": {"level": "info"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    proxy = servers.start_proxy(server, directory,
                                users=[{"name": USER, "password": PASSWORD, "create": False}],
                                **config)
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS {servers.APP_USER}@'%', {servers.APP_USER}@localhost")
            cur.execute(f"DROP DATABASE IF EXISTS {servers.APP_DATABASE}")
    finally:
        conn.close()
    return proxy
