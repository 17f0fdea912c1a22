"""Shared helpers for the real-driver integration tests (``integration/test_drivers_*.py``).

Every driver module runs the same scenarios against a pyproxy started in front of the session's
``db_server``: plain queries over several types, a committed and a rolled-back transaction seen
from a second connection, multi-statements, LOAD DATA LOCAL INFILE, a BLOB larger than one
16 MiB protocol packet, server-side prepared statements and a wrong password.  This module holds
what those modules share: the proxy fixture plumbing, the sample data and its expected values,
a runner for the ``mariadb`` command-line client, and for the drivers driven by a program of
their own language (Node, Java, Go, PHP, Ruby: ``integration/<language>/``) the program
runner, a build cache, each scenario's parameters and checks, and :class:`ScenarioTests`.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import hashlib
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from integration import servers
from integration.sqlalchemy_suite import suite
from pyproxy.sandbox import child_env

APP_USER = servers.APP_USER
APP_PASSWORD = servers.APP_PASSWORD
APP_DATABASE = servers.APP_DATABASE
WRONG_PASSWORD = "definitely-not-app_pw"

#: Bound on one test, enforced with SIGALRM (pytest-timeout may not be installed).
TEST_TIMEOUT = 90
#: Driver socket timeouts, so a reply that never comes fails the test instead of hanging it.
IO_TIMEOUT = 30
#: The server's max_allowed_packet (the sandbox runs with 64M); drivers get the same limit.
MAX_ALLOWED_PACKET = 64 * 1024 * 1024
#: Larger than one protocol packet (0xFFFFFF bytes), so both directions need continuations.
BLOB_SIZE = 16 * 1024 * 1024 + 4321
#: Rows in the LOAD DATA LOCAL INFILE file.
INFILE_ROWS = 4000

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_SCRIPT = NODE_DIR / "scenario.js"

# --- fixtures plumbing -------------------------------------------------------------------------


@pytest.fixture(autouse=False)
def bounded() -> Iterator[None]:
    """Fail the test (instead of hanging the run) after TEST_TIMEOUT seconds.

    The handler raises in the main thread, which interrupts a driver blocked in ``recv``.
    """

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"test did not finish within {TEST_TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class ModuleProxy:
    """One pyproxy for a whole test module, started like ``make_proxy`` does.

    ``make_proxy`` is function-scoped (it builds on ``tmp_path``), so a module-scoped wrapper
    cannot use it; this calls the same :func:`servers.start_proxy`. If a test crashed pyproxy,
    the next :meth:`get` starts a fresh one, so one bug does not fail every later test; the
    crashed process's log stays in its own folder.
    """

    def __init__(self, db_server: servers.DbServer, base: Path, **overrides: Any) -> None:
        self.db_server = db_server
        self.base = base
        self.overrides = overrides
        self.started: list[servers.ProxyProcess] = []
        self._counter = itertools.count(1)

    def get(self) -> servers.ProxyProcess:
        if self.started and self.started[-1].process.poll() is None:
            return self.started[-1]
        proxy = servers.start_proxy(self.db_server, self.base / f"proxy-{next(self._counter)}",
                                    **self.overrides)
        self.started.append(proxy)
        return proxy

    def stop(self) -> None:
        for proxy in self.started:
            proxy.stop()


@contextlib.contextmanager
def module_proxy(db_server: servers.DbServer, tmp_path_factory: pytest.TempPathFactory,
                 name: str, **overrides: Any) -> Iterator[ModuleProxy]:
    holder = ModuleProxy(db_server, tmp_path_factory.mktemp(name), **overrides)
    try:
        yield holder
    finally:
        holder.stop()


def log_tail(proxy: servers.ProxyProcess, lines: int = 25) -> str:
    """The end of pyproxy's log, for assertion messages."""
    return "\n".join(proxy.log_text().splitlines()[-lines:])


def log_events(proxy: servers.ProxyProcess, event: str | None = None) -> list[dict[str, Any]]:
    """pyproxy's JSON log lines (the test config logs JSON at debug level)."""
    out = []
    for line in proxy.log_text().splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if event is None or record.get("event") == event:
            out.append(record)
    return out


# --- names and the admin side ------------------------------------------------------------------

_table_counter = itertools.count(1)


def unique_table(prefix: str) -> str:
    """A table name no other test of the session uses (one server serves the whole session)."""
    return f"{prefix}_{os.getpid()}_{next(_table_counter)}_{secrets.token_hex(3)}"


def admin_query(db_server: servers.DbServer, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
    """Runs ``sql`` as the server's admin, directly (not through pyproxy), in database app."""
    conn = db_server.connect(database=APP_DATABASE)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args or None)
            return list(cur.fetchall())
    finally:
        conn.close()


def admin_scalar(db_server: servers.DbServer, sql: str, args: Sequence[Any] = ()) -> Any:
    return admin_query(db_server, sql, args)[0][0]


# --- sample data -------------------------------------------------------------------------------

EMOJI_TEXT = "emoji \U0001F600\U0001F389 and \u00fc\u00df \u4e2d\u6587"

#: Columns of the sample table; every driver creates it through pyproxy.
SAMPLE_DDL = ("CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, "
              "amount DECIMAL(12,4) NULL, created DATETIME NULL, note TEXT NULL, "
              "score DOUBLE NULL) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")

SAMPLE_ROWS: list[tuple[Any, ...]] = [
    (1, "plain ascii", decimal.Decimal("12345678.1234"), datetime.datetime(2024, 2, 29, 23, 59, 58),
     "first", 1.5),
    (2, EMOJI_TEXT, decimal.Decimal("-0.0001"), datetime.datetime(1999, 12, 31, 0, 0, 1),
     None, -2.25),
    (3, "all nulls", None, None, None, None),
    (4, "quote ' and backslash \\ and \"", decimal.Decimal("0.0000"),
     datetime.datetime(2038, 1, 19, 3, 14, 7), EMOJI_TEXT * 3, 0.0),
]

SAMPLE_INSERT = "INSERT INTO {table} (id, name, amount, created, note, score) VALUES ({marks})"
SAMPLE_SELECT = "SELECT id, name, amount, created, note, score FROM {table} ORDER BY id"

#: One literal row of every interesting type, with what it must decode to.
LITERAL_SELECT = ("SELECT 42 AS i, NULL AS n, CAST('12345.6789' AS DECIMAL(12,4)) AS d, "
                  "CAST('2024-02-29 23:59:58' AS DATETIME) AS dt, "
                  f"_utf8mb4'{EMOJI_TEXT}' AS s, 1.5e0 AS f")
LITERAL_EXPECTED = (42, None, decimal.Decimal("12345.6789"),
                    datetime.datetime(2024, 2, 29, 23, 59, 58), EMOJI_TEXT, 1.5)


def multi_statement_sql(table: str) -> str:
    """One COM_QUERY with five statements: DDL, DML, two result sets and an UPDATE."""
    return (f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20)); "
            f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'); "
            f"SELECT id, v FROM {table} ORDER BY id; "
            f"UPDATE {table} SET v = 'c' WHERE id = 2; "
            "SELECT NULL AS n, 'x' AS s")


#: What a DB-API cursor collects from multi_statement_sql(): row counts and rows.
MULTI_STATEMENT_RESULTS = [0, 2, ((1, "a"), (2, "b")), 1, ((None, "x"),)]


def collect_result_sets(cursor: Any) -> list[Any]:
    """Every result of a multi-statement from a DB-API cursor: rows, or the row count."""
    sets = []
    while True:
        sets.append(cursor.fetchall() if cursor.description else cursor.rowcount)
        if not cursor.nextset():
            return sets


def sample_insert(table: str, marker: str = "%s") -> str:
    return SAMPLE_INSERT.format(table=table, marks=", ".join([marker] * 6))


def normalise_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """Drivers differ in small ways (bytes for TEXT, float for DOUBLE); compare like this."""
    out = []
    for value in row:
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8")
        out.append(value)
    return tuple(out)


# --- LOAD DATA LOCAL INFILE --------------------------------------------------------------------

INFILE_DDL = ("CREATE TABLE {table} (id INT PRIMARY KEY, label VARCHAR(64) NOT NULL, "
              "qty INT NOT NULL) CHARACTER SET utf8mb4")


def write_infile(directory: Path, rows: int = INFILE_ROWS) -> tuple[Path, int, int]:
    """Writes a tab-separated file of ``rows`` rows; returns its path, row count and SUM(qty)."""
    path = directory / f"infile-{secrets.token_hex(4)}.tsv"
    total = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i in range(1, rows + 1):
            qty = (i * 7919) % 1000
            total += qty
            f.write(f"{i}\tlabel-{i}-\u00e9\U0001F600\t{qty}\n")
    return path, rows, total


def load_data_sql(path: Path, table: str) -> str:
    return (f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {table} CHARACTER SET utf8mb4 "
            "FIELDS TERMINATED BY '\\t' LINES TERMINATED BY '\\n' (id, label, qty)")


# --- BLOB --------------------------------------------------------------------------------------

BLOB_DDL = "CREATE TABLE {table} (id INT PRIMARY KEY, data LONGBLOB NOT NULL)"


def blob_payload(size: int = BLOB_SIZE) -> bytes:
    """Random bytes: every byte value occurs, so escaping and framing errors show."""
    return os.urandom(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_blob_on_server(db_server: servers.DbServer, table: str, row_id: int,
                         expected: bytes) -> None:
    """The stored value, read directly from the server, is exactly ``expected``."""
    length, digest = admin_query(
        db_server, f"SELECT LENGTH(data), SHA2(data, 256) FROM {table} WHERE id = %s", (row_id,))[0]
    assert (length, digest) == (len(expected), sha256(expected))


# --- wrong password ----------------------------------------------------------------------------


def assert_access_denied(code: int, message: str, sqlstate: str | None = None) -> None:
    assert code == 1045, (code, message)
    assert "Access denied" in message, message
    if sqlstate is not None:
        assert sqlstate == "28000", (sqlstate, message)


# --- external programs -------------------------------------------------------------------------


def mariadb_client() -> str | None:
    return shutil.which("mariadb") or shutil.which("mysql")


def run_cli(proxy: servers.ProxyProcess, sql: str | None, *extra: str,
            password: str = APP_PASSWORD, stdin: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Runs the ``mariadb`` client against pyproxy: batch mode, no headers, raw values."""
    client = mariadb_client()
    assert client is not None
    cmd = [client, "--no-defaults", "--protocol=TCP", "-h", proxy.host, "-P", str(proxy.port),
           "-u", APP_USER, f"-p{password}", "--default-character-set=utf8mb4",
           "--batch", "--raw", "--skip-column-names", "--connect-timeout=10", *extra,
           APP_DATABASE]
    if sql is not None:
        cmd += ["-e", sql]
    return subprocess.run(cmd, input=stdin if stdin is not None else b"", capture_output=True,
                          timeout=timeout, check=False)


def cli_rows(result: subprocess.CompletedProcess[bytes]) -> list[list[str]]:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    text = result.stdout.decode("utf-8")
    return [line.split("\t") for line in text.splitlines()]


def node_program() -> str | None:
    return shutil.which("node") or shutil.which("nodejs")


def have_mysql2() -> bool:
    return (NODE_DIR / "node_modules" / "mysql2" / "package.json").is_file()


def run_node(proxy: servers.ProxyProcess, scenario: str, timeout: float = 60,
             **params: Any) -> dict[str, Any]:
    """Runs ``integration/node/scenario.js SCENARIO PARAMS_JSON`` and returns its JSON output
    (see :func:`run_program`); errors carry mysql2's ``code``, ``errno``, ``sqlState`` and
    ``message``."""
    node = node_program()
    assert node is not None
    return run_program([node, str(NODE_SCRIPT)], scenario, address(proxy), cwd=NODE_DIR,
                       timeout=timeout, **params)


# --- scenario programs: one process per scenario, JSON in, JSON out ----------------------------
#
# The Node, Java, Go, PHP and Ruby drivers are driven by a program per language
# (integration/<language>/), called as ``PROGRAM SCENARIO CONFIG_JSON``.  The config holds
# ``host``, ``port``, ``user``, ``password``, ``database`` and the scenario's parameters (the
# ``*_params`` functions below); the program prints one JSON object on its last stdout line,
# or ``{"error": {"errno", "sqlState", "message"}}`` and exits 1 when the driver threw.
# Values come back JSON-safe: DECIMAL as its text, DATETIME as "YYYY-MM-DD HH:MM:SS", a byte
# string as ``{"buffer_length", "sha256"}``; the ``check_*`` functions compare them.


def unusable(probe: Sequence[str], packages: str) -> str | None:
    """Why a driver cannot run here (a skip reason), or None: ``probe`` is a command that
    exits 0 when the driver loads; ``packages`` are what scripts/install-deps installs."""
    hint = f"(scripts/install-deps installs {packages})"
    if shutil.which(probe[0]) is None:
        return f"{probe[0]} is not installed {hint}"
    result = subprocess.run(list(probe), capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        return f"{' '.join(probe)} failed {hint}: {output[-300:]}"
    return None


def address(server: servers.DbServer | servers.ProxyProcess, user: str = APP_USER,
            password: str = APP_PASSWORD, database: str = APP_DATABASE) -> dict[str, Any]:
    """The connection part of a scenario config: pyproxy, or the server itself to compare."""
    return {"host": server.host, "port": server.port, "user": user, "password": password,
            "database": database}


def run_program(cmd: Sequence[str], scenario: str, config: dict[str, Any],
                cwd: Path | None = None, timeout: float = 60, **params: Any) -> dict[str, Any]:
    """Runs ``CMD SCENARIO CONFIG_JSON`` and returns the JSON object its stdout ends with,
    plus ``_exit_code`` and ``_stderr``.

    The config is ASCII-only JSON (non-ASCII escaped), so no program depends on the locale
    to read its arguments.
    """
    result = subprocess.run([*cmd, scenario, json.dumps({**config, **params})], cwd=cwd,
                            capture_output=True, timeout=timeout, check=False, env=child_env())
    stdout = result.stdout.decode("utf-8", "replace").strip()
    stderr = result.stderr.decode("utf-8", "replace").strip()
    try:
        out = json.loads(stdout.splitlines()[-1]) if stdout else None
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise AssertionError(f"{Path(cmd[-1]).name} {scenario} exited {result.returncode} "
                             f"without JSON; stdout: {stdout[-2000:]!r}; "
                             f"stderr: {stderr[-2000:]!r}")
    out["_exit_code"] = result.returncode
    out["_stderr"] = stderr
    return out


def succeeded(out: dict[str, Any], proxy: servers.ProxyProcess | None = None) -> dict[str, Any]:
    """``out`` without its ``_`` keys, once sure the scenario ran to the end."""
    assert "error" not in out and out["_exit_code"] == 0, (
        out, log_tail(proxy) if proxy is not None else "")
    return {k: v for k, v in out.items() if not k.startswith("_")}


def cached_build(name: str, inputs: Sequence[Path], tools: str,
                 build: Callable[[Path], None]) -> Path:
    """The folder ``build(folder)`` filled, made once per content of ``inputs`` and ``tools``
    (the compiler's and library's versions) and kept in the tests' cache folder
    (``~/.cache/pyproxy-tests``, shared with the SQLAlchemy suite's download)."""
    digest = hashlib.sha256(tools.encode())
    for path in inputs:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    target = suite.cache_dir() / f"{name}-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-building-", dir=target.parent))
    try:
        build(work)
        try:
            work.rename(target)  # atomic: a concurrent run sees all or nothing
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def run_build(cmd: Sequence[str], timeout: float = 300, **kwargs: Any) -> None:
    """Runs a compiler; its output is the assertion message when it fails."""
    result = subprocess.run(list(cmd), capture_output=True, timeout=timeout, check=False,
                            **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {result.returncode}:\n"
        + (result.stdout + result.stderr).decode(errors="replace")[-4000:])


def as_json(value: Any) -> Any:
    """The JSON form a scenario program gives ``value``: DECIMAL and DATETIME as text."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    return value


def json_rows(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [[as_json(v) for v in row] for row in rows]


def from_json_rows(rows: Sequence[Sequence[Any]],
                   like: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """``rows`` as a program printed them, read back as Python values of the types ``like``
    (the expected rows) has: DECIMAL by value (Ruby prints 0.0000 as 0.0), DATETIME parsed.
    Other values stay as they are: an integer printed as a string still differs."""
    def read(value: Any, model: Any) -> Any:
        if isinstance(value, str) and isinstance(model, decimal.Decimal):
            return decimal.Decimal(value)
        if isinstance(value, str) and isinstance(model, datetime.datetime):
            return datetime.datetime.fromisoformat(value)
        return value

    assert len(rows) == len(like), (rows, like)
    return [tuple(read(v, m) for v, m in zip(row, model, strict=True))
            for row, model in zip(rows, like, strict=True)]


def plain_params(table: str) -> dict[str, Any]:
    """Literal types, then the sample table written with parameters and read back."""
    return {"literal_sql": LITERAL_SELECT, "ddl": SAMPLE_DDL.format(table=table),
            "insert": sample_insert(table, "?"), "rows": json_rows(SAMPLE_ROWS),
            "select": SAMPLE_SELECT.format(table=table),
            "by_name": f"SELECT id, name FROM {table} WHERE name = ?", "emoji": EMOJI_TEXT}


def check_plain(out: dict[str, Any]) -> None:
    """``*_query`` came through the text protocol, ``*_execute`` and ``by_name`` through
    server-side prepared statements."""
    for how in ("query", "execute"):
        assert from_json_rows(out[f"literal_{how}"], [LITERAL_EXPECTED]) == [LITERAL_EXPECTED], how
        assert from_json_rows(out[f"table_{how}"], SAMPLE_ROWS) == SAMPLE_ROWS, how
    assert out["by_name"] == [[2, EMOJI_TEXT]]


#: What the ``transaction`` scenario sees: a writer commits one row and rolls back another,
#: a second connection counts the rows as it goes.
TRANSACTION_EXPECTED = {
    "reader_during_commit_tx": 0,
    "reader_after_commit": 1,
    "writer_inside_rollback_tx": 2,
    "reader_during_rollback_tx": 1,
    "writer_after_rollback": 1,
    "reader_rows": [[1, "committed"]],
}


def multi_params(table: str) -> dict[str, Any]:
    return {"sql": multi_statement_sql(table),
            "after": f"SELECT GROUP_CONCAT(v ORDER BY id) FROM {table}"}


def check_multi(out: dict[str, Any], counts: bool = True) -> None:
    """Every result of :func:`multi_statement_sql` in order: ``{"rows": [...]}`` or
    ``{"affectedRows": n}``; without ``counts`` the driver reports only the result sets."""
    got = [tuple(map(tuple, r["rows"])) if "rows" in r else r["affectedRows"]
           for r in out["results"]]
    expected = [r for r in MULTI_STATEMENT_RESULTS if counts or not isinstance(r, int)]
    assert got == expected
    assert out["after"] == [["a,c"]]


def infile_params(directory: Path, table: str) -> tuple[dict[str, Any], int, int]:
    """The ``infile`` scenario's parameters, the file's row count and SUM(qty)."""
    path, rows, total = write_infile(directory)
    return ({"table": table, "file": str(path), "ddl": INFILE_DDL.format(table=table),
             "load": load_data_sql(path, table)}, rows, total)


def check_infile(out: dict[str, Any], db_server: servers.DbServer, table: str, rows: int,
                 total: int) -> None:
    assert out["affectedRows"] == rows
    assert [int(v) for v in out["count_sum"]] == [rows, total]
    assert admin_scalar(db_server, f"SELECT COUNT(*) FROM {table}") == rows


def check_blob(out: dict[str, Any], db_server: servers.DbServer, table: str) -> None:
    """Rows 1 (written through the text protocol) and 2 (binary) hold the program's random
    BLOB_SIZE bytes, and each read back whole through both protocols."""
    assert out["length"] == BLOB_SIZE
    for row_id in (1, 2):
        stored = admin_query(
            db_server, f"SELECT LENGTH(data), SHA2(data, 256) FROM {table} WHERE id = %s",
            (row_id,))[0]
        assert stored == (BLOB_SIZE, out["sha256"]), f"row {row_id} stored wrongly"
        for how in ("query", "execute"):
            assert out[f"{how}_{row_id}_length"] == BLOB_SIZE, (how, row_id)
            assert out[f"{how}_{row_id}_equal"] is True, (how, row_id)
    assert out["after"] == 1


def prepared_params(table: str) -> dict[str, Any]:
    return {"table": table, "ddl": SAMPLE_DDL.format(table=table),
            "insert": sample_insert(table, "?"), "rows": json_rows(SAMPLE_ROWS),
            "select_from": (f"SELECT id, name, amount, created, note, score FROM {table} "
                            "WHERE id >= ? ORDER BY id"),
            "emoji": EMOJI_TEXT}


def check_prepared(out: dict[str, Any], proxy: servers.ProxyProcess,
                   param_count: bool = True) -> None:
    """Executions of one statement with another client served in between, parameter
    metadata (unless the driver does not show it), NULL and utf8mb4 parameters; no session
    pinned for them."""
    assert [e["low"] for e in out["executions"]] == [1, 3, 2]
    for execution in out["executions"]:
        expected = [r for r in SAMPLE_ROWS if r[0] >= execution["low"]]
        assert from_json_rows(execution["rows"], expected) == expected, execution["low"]
        assert execution["other_count"] == len(SAMPLE_ROWS)
    assert out["param_count"] == (3 if param_count else None)
    assert out["explicit"] == [[None, EMOJI_TEXT, 7], ["x", "y", 8]]
    assert out["after"] == 2
    pins = log_events(proxy, "session_pinned")
    assert not any("prepared" in str(p.get("reason")) or "cursor" in str(p.get("reason"))
                   for p in pins), log_tail(proxy)


def check_wrong_password(out: dict[str, Any], sqlstate: bool = True) -> None:
    """1045 with its message, and SQLSTATE 28000 unless the driver does not pass on the
    server's (``sqlstate`` false)."""
    assert out["_exit_code"] == 1, out
    err = out["error"]
    assert_access_denied(err["errno"], err["message"], err["sqlState"] if sqlstate else None)




def same_as_direct(run: Callable[..., dict[str, Any]], proxy: servers.ProxyProcess,
                   db_server: servers.DbServer, scenario: str, table: str,
                   **params: Any) -> dict[str, Any]:
    """Runs ``scenario`` directly against the server and through pyproxy, each in its own
    table; asserts the two saw the same and returns what the pyproxy run saw."""
    direct = succeeded(run(db_server, scenario, table=f"{table}_d", **params))
    proxied = succeeded(run(proxy, scenario, table=f"{table}_p", **params), proxy)
    assert proxied == direct
    return proxied


class ScenarioTests:
    """The shared scenarios as tests, for a driver run by a scenario program.

    A driver module subclasses this as ``TestScenarios``, names it (``name``: the table
    prefix) and gives :meth:`run`; the other attributes say what the driver does not show.
    A subclass marks a case xfail by overriding its method and calling this one.
    """

    name = ""
    #: The driver reports a multi-statement's update counts, not only its result sets.
    multi_counts = True
    #: The driver shows how many parameters the server announced for a prepared statement.
    param_count = True
    #: The driver passes on the SQLSTATE of a failed login.
    sqlstate = True

    def run(self, target: servers.DbServer | servers.ProxyProcess, scenario: str,
            **params: Any) -> dict[str, Any]:
        raise NotImplementedError

    def table(self, what: str) -> str:
        return unique_table(f"{self.name}_{what}")

    def test_plain_queries(self, proxy: servers.ProxyProcess) -> None:
        out = self.run(proxy, "plain", **plain_params(self.table("plain")))
        check_plain(succeeded(out, proxy))

    def test_commit_and_rollback_seen_from_second_connection(
            self, proxy: servers.ProxyProcess) -> None:
        out = self.run(proxy, "transaction", table=self.table("tx"))
        assert succeeded(out, proxy) == TRANSACTION_EXPECTED

    def test_multi_statements(self, proxy: servers.ProxyProcess) -> None:
        out = self.run(proxy, "multi", **multi_params(self.table("multi")))
        check_multi(succeeded(out, proxy), counts=self.multi_counts)

    def test_load_data_local_infile(self, proxy: servers.ProxyProcess, tmp_path: Path,
                                    db_server: servers.DbServer) -> None:
        self.load_data(proxy, tmp_path, db_server)

    def load_data(self, proxy: servers.ProxyProcess, directory: Path,
                  db_server: servers.DbServer, **more: Any) -> None:
        """The ``infile`` scenario; ``more`` parameters say how (``prepared=True``)."""
        table = self.table("infile")
        params, rows, total = infile_params(directory, table)
        out = self.run(proxy, "infile", **params, **more)
        check_infile(succeeded(out, proxy), db_server, table, rows, total)

    def test_blob_larger_than_16_mib(self, proxy: servers.ProxyProcess,
                                     db_server: servers.DbServer, tmp_path: Path) -> None:
        """``options_file`` raises max_allowed_packet for drivers on libmariadb, which read
        it from an option file's [client] group; the others ask the server or need none."""
        table = self.table("blob")
        options = tmp_path / "client.cnf"
        options.write_text(f"[client]\nmax_allowed_packet={MAX_ALLOWED_PACKET}\n")
        out = self.run(proxy, "blob", table=table, size=BLOB_SIZE, options_file=str(options))
        check_blob(succeeded(out, proxy), db_server, table)

    def test_prepared_statements(self, proxy: servers.ProxyProcess) -> None:
        out = self.run(proxy, "prepared", **prepared_params(self.table("prep")))
        check_prepared(succeeded(out, proxy), proxy, param_count=self.param_count)

    def test_wrong_password(self, proxy: servers.ProxyProcess) -> None:
        """1045, then pyproxy still serves the right password."""
        out = self.run(proxy, "wrong_password", wrong_password=WRONG_PASSWORD)
        check_wrong_password(out, sqlstate=self.sqlstate)
        out = self.run(proxy, "transaction", table=self.table("after_denied"))
        assert succeeded(out, proxy) == TRANSACTION_EXPECTED
