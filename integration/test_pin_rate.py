"""Pin rate under a realistic mixed workload (issue 3).

One pyproxy with a pool of POOL_SIZE backend connections serves, at the same time and for about
DURATION seconds:

* 16 threads of SQLAlchemy ORM sessions over PyMySQL, one module-level engine with ``NullPool``
  (every session is a fresh client connection, as in a serverless function).  The engine's
  ``connect`` event runs ``SET NAMES``, ``SET SESSION sql_mode`` and ``SET SESSION time_zone``;
  the sessions commit, roll back, toggle autocommit (``isolation_level="AUTOCOMMIT"``) and the
  isolation level (``READ COMMITTED`` with ``SELECT ... FOR UPDATE``);
* 8 threads of mysql-connector-python (``use_pure=True``) prepared cursors, ``autocommit=False``,
  inserting and selecting with commit and rollback, reconnecting every few statements;
* 8 Node mysql2 connections doing ``execute()`` in a loop (``integration/node/pin_rate.js``),
  reconnecting every 40 iterations;
* sysbench ``oltp_read_write --db-ps-mode=auto`` with 8 threads for 5 s (when installed).

A root connection polls ``information_schema.PROCESSLIST`` every 50 ms for the connections of
pyproxy's user.  The test requires: no client error (sysbench's own ignored deadlock errors
aside), no ``session_pinned`` event in pyproxy's log, a peak of backend connections no higher
than the pool size, and far more client sessions than that.  The counts are printed (``-s``)
and are in every assertion message.
"""

from __future__ import annotations

import collections
import json
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mysql.connector
import pytest
from sqlalchemy import URL, Integer, String, create_engine, event, func, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from integration import servers
from integration.drivers import (  # noqa: F401  (bounded is a fixture)
    APP_DATABASE,
    APP_PASSWORD,
    APP_USER,
    NODE_DIR,
    admin_query,
    bounded,
    have_mysql2,
    log_events,
    node_program,
    unique_table,
)
from pyproxy.sandbox import child_env

pytestmark = pytest.mark.usefixtures("bounded")

POOL_SIZE = 6
#: Seconds of load from the Python and Node clients; sysbench runs SYSBENCH_TIME of them.
DURATION = 6.0
SYSBENCH_TIME = 5
#: Upper bounds on loop iterations, whatever the clock says.
MAX_ITERATIONS = 20_000
POLL_INTERVAL = 0.05
SQL_MODE = ("STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
            "NO_ENGINE_SUBSTITUTION")
SYSBENCH_DB = servers.own_name("pinrate_sb")
SYSBENCH_COMMON = ["--mysql-host=127.0.0.1", f"--mysql-user={APP_USER}",
                   f"--mysql-password={APP_PASSWORD}", f"--mysql-db={SYSBENCH_DB}",
                   "--tables=2", "--table-size=1000"]


class Outcome:
    """What one workload did: client sessions opened, operations, errors (first 20 kept)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions = 0
        self.operations = 0
        self.errors = 0
        self.first_errors: list[str] = []
        self.note = ""
        self.op_seconds: list[float] = []
        self._lock = threading.Lock()

    def add(self, sessions: int = 0, operations: int = 0, seconds: float | None = None) -> None:
        with self._lock:
            self.sessions += sessions
            self.operations += operations
            if seconds is not None:
                self.op_seconds.append(seconds)

    def error(self, what: str) -> None:
        with self._lock:
            self.errors += 1
            if len(self.first_errors) < 20:
                self.first_errors.append(what)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sessions": self.sessions, "operations": self.operations,
                               "errors": self.errors}
        if self.op_seconds:
            ordered = sorted(self.op_seconds)
            out["op_ms_p50"] = round(ordered[len(ordered) // 2] * 1000, 1)
            out["op_ms_max"] = round(ordered[-1] * 1000, 1)
        if self.first_errors:
            out["first_errors"] = self.first_errors
        if self.note:
            out["note"] = self.note
        return out


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class ProcesslistPoller:
    """Counts the server connections of ``user`` every POLL_INTERVAL from a root connection."""

    def __init__(self, db_server: servers.DbServer, user: str, cap: float = 120.0) -> None:
        self.conn = db_server.connect()
        self.user = user
        self.cap = cap
        self.peak = 0
        self.samples = 0
        self.ids: set[int] = set()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.cap
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self.conn.cursor() as cur:
                    cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s",
                                (self.user,))
                    ids = [row[0] for row in cur.fetchall()]
                self.peak = max(self.peak, len(ids))
                self.ids.update(ids)
                self.samples += 1
                self._stop.wait(POLL_INTERVAL)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = describe(exc)

    def __enter__(self) -> ProcesslistPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.conn.close()


# --- the workloads ------------------------------------------------------------------------------


def orm_workload(proxy: servers.ProxyProcess, table: str, deadline: float,
                 threads: int) -> tuple[Outcome, list[Callable[[], None]]]:
    """SQLAlchemy ORM sessions over PyMySQL with NullPool; returns the outcome and the loops."""

    class Base(DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
        owner: Mapped[str] = mapped_column(String(64))
        balance: Mapped[int] = mapped_column(Integer)
        note: Mapped[str | None] = mapped_column(String(100), nullable=True)

    outcome = Outcome("sqlalchemy_orm")
    url = URL.create("mysql+pymysql", username=APP_USER, password=APP_PASSWORD,
                     host=proxy.host, port=proxy.port, database=APP_DATABASE,
                     query={"charset": "utf8mb4"})
    engine = create_engine(url, poolclass=NullPool, connect_args={
        "connect_timeout": 5, "read_timeout": 30, "write_timeout": 30, "ssl_disabled": True})
    read_committed = engine.execution_options(isolation_level="READ COMMITTED")

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, record: Any) -> None:
        outcome.add(sessions=1)
        cur = dbapi_conn.cursor()
        try:
            cur.execute("SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute(f"SET SESSION sql_mode = '{SQL_MODE}'")
            cur.execute("SET SESSION time_zone = '+00:00'")
        finally:
            cur.close()

    def loop(n: int) -> None:
        rng = random.Random(n)
        mine = f"orm-{n:02d}-%"
        for k in range(MAX_ITERATIONS):
            if time.monotonic() >= deadline:
                break
            owner = f"orm-{n:02d}-{k}"
            kind = k % 4
            started = time.monotonic()
            try:
                if kind == 0:
                    # A committed ORM transaction, then a check from a new session.
                    with Session(engine) as s, s.begin():
                        s.add_all([Account(owner=owner, balance=100),
                                   Account(owner=owner, balance=5)])
                        s.flush()
                        first = s.scalars(select(Account).where(Account.owner == owner)
                                          .order_by(Account.id)).first()
                        first.balance -= 10
                    with Session(engine) as s:
                        total = s.scalar(select(func.sum(Account.balance))
                                         .where(Account.owner == owner))
                    if total != 95:
                        outcome.error(f"{owner}: committed balance {total}, expected 95")
                elif kind == 1:
                    # Rolled back: afterwards nothing of it is visible.
                    with Session(engine) as s:
                        s.add(Account(owner=owner, balance=rng.randint(1, 9)))
                        s.flush()
                        s.execute(update(Account).where(Account.owner == owner)
                                  .values(balance=Account.balance + 1))
                        s.rollback()
                        left = s.scalar(select(func.count()).select_from(Account)
                                        .where(Account.owner == owner))
                    if left != 0:
                        outcome.error(f"{owner}: {left} rows after rollback")
                elif kind == 2:
                    # Autocommit reads; the session settings from the connect event hold.
                    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                        mode, charset, collation, tz = c.execute(text(
                            "SELECT @@SESSION.sql_mode, @@character_set_client, "
                            "@@collation_connection, @@SESSION.time_zone")).one()
                        if (set(mode.split(",")) != set(SQL_MODE.split(","))
                                or (charset, collation, tz)
                                != ("utf8mb4", "utf8mb4_unicode_ci", "+00:00")):
                            outcome.error(f"{owner}: session settings lost: "
                                          f"{mode!r} {charset} {collation} {tz}")
                        with Session(bind=c) as s:
                            s.scalars(select(Account).where(Account.owner.like(mine))
                                      .order_by(Account.id.desc()).limit(5)).all()
                else:
                    # READ COMMITTED, SELECT ... FOR UPDATE of this thread's newest rows.
                    with Session(read_committed) as s, s.begin():
                        rows = s.scalars(select(Account).where(Account.owner.like(mine))
                                         .order_by(Account.id.desc()).limit(3)
                                         .with_for_update()).all()
                        for row in rows:
                            row.note = f"touched by {k}"
                outcome.add(operations=1, seconds=time.monotonic() - started)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                outcome.error(f"{owner}: {describe(exc)}")

    def dispose() -> None:
        engine.dispose()

    return outcome, [lambda n=n: loop(n) for n in range(threads)] + [dispose]


def connector_workload(proxy: servers.ProxyProcess, table: str, deadline: float,
                       threads: int) -> tuple[Outcome, list[Callable[[], None]]]:
    """mysql-connector-python (pure) prepared cursors, autocommit off, reconnecting often."""

    outcome = Outcome("mysql_connector_prepared")
    per_session = 12

    def loop(n: int) -> None:
        k = 0
        for _ in range(MAX_ITERATIONS):
            if time.monotonic() >= deadline:
                break
            try:
                conn = mysql.connector.connect(
                    host=proxy.host, port=proxy.port, user=APP_USER, password=APP_PASSWORD,
                    database=APP_DATABASE, use_pure=True, autocommit=False,
                    connection_timeout=10, ssl_disabled=True)
            except Exception as exc:  # noqa: BLE001
                outcome.error(f"connector {n} connect: {describe(exc)}")
                continue
            outcome.add(sessions=1)
            try:
                cur = conn.cursor(prepared=True)
                for _ in range(per_session):
                    if time.monotonic() >= deadline:
                        break
                    value = f"conn-{n}-{k}"
                    started = time.monotonic()
                    cur.execute(f"INSERT INTO {table} (worker, k, v) VALUES (?, ?, ?)",
                                (n, k, value))
                    conn.commit()
                    cur.execute(f"SELECT v, k FROM {table} WHERE worker = ? AND k = ?", (n, k))
                    rows = [(bytes(v).decode() if isinstance(v, (bytes, bytearray)) else v, kk)
                            for v, kk in cur.fetchall()]
                    conn.rollback()
                    if rows != [(value, k)]:
                        outcome.error(f"connector {n}/{k}: got {rows!r}")
                    k += 1
                    outcome.add(operations=1, seconds=time.monotonic() - started)
                cur.close()
            except Exception as exc:  # noqa: BLE001
                outcome.error(f"connector {n}/{k}: {describe(exc)}")
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - a broken connection may not close cleanly
                    pass

    return outcome, [lambda n=n: loop(n) for n in range(threads)]


def node_workload(proxy: servers.ProxyProcess, table: str, duration: float,
                  connections: int) -> tuple[Outcome, list[Callable[[], None]]]:
    outcome = Outcome("node_mysql2_execute")
    node = node_program()
    if node is None or not have_mysql2():
        outcome.note = "skipped: node or mysql2 (integration/node/node_modules) missing"
        return outcome, []
    config = {"host": proxy.host, "port": proxy.port, "user": APP_USER,
              "password": APP_PASSWORD, "database": APP_DATABASE, "table": table,
              "connections": connections, "duration_ms": int(duration * 1000),
              "reconnect_every": 40, "max_iterations": MAX_ITERATIONS}

    def run() -> None:
        try:
            result = subprocess.run([node, str(NODE_DIR / "pin_rate.js"), json.dumps(config)],
                                    cwd=NODE_DIR, capture_output=True, timeout=duration + 45,
                                    check=False, env=child_env())
        except subprocess.TimeoutExpired as exc:
            outcome.error(f"node timed out: {describe(exc)}")
            return
        stdout = result.stdout.decode("utf-8", "replace").strip()
        try:
            out = json.loads(stdout.splitlines()[-1])
        except (ValueError, IndexError):
            outcome.error(f"node exited {result.returncode} without JSON: {stdout[-1000:]!r} "
                          f"{result.stderr.decode('utf-8', 'replace')[-1000:]!r}")
            return
        outcome.add(sessions=out["sessions"], operations=out["queries"])
        for err in out["errors"]:
            outcome.error(f"node: {err}")
        for _ in range(out.get("errors_not_shown", 0)):
            outcome.error("node: (not shown)")
        if out["mismatches"]:
            outcome.error(f"node: {out['mismatches']} wrong results")
        if result.returncode != 0:
            outcome.error(f"node exited {result.returncode}: {out}")

    return outcome, [run]


def sysbench_prepare(db_server: servers.DbServer) -> str | None:
    """Create sysbench's tables directly on the server; None, or why sysbench is skipped."""
    if shutil.which("sysbench") is None:
        return "skipped: sysbench is not installed"
    servers.claim_database(db_server, SYSBENCH_DB)
    admin_query(db_server, f"CREATE DATABASE IF NOT EXISTS {SYSBENCH_DB}")
    base = ["sysbench", "oltp_read_write", f"--mysql-port={db_server.port}", *SYSBENCH_COMMON]
    subprocess.run([*base, "cleanup"], capture_output=True, timeout=60, check=False)
    prepared = subprocess.run([*base, "prepare"], capture_output=True, text=True, timeout=120,
                              check=False)
    assert prepared.returncode == 0, prepared.stdout[-2000:] + prepared.stderr[-2000:]
    return None


def sysbench_workload(proxy: servers.ProxyProcess, skipped: str | None,
                      threads: int) -> tuple[Outcome, list[Callable[[], None]]]:
    outcome = Outcome("sysbench_ps_auto")
    if skipped:
        outcome.note = skipped
        return outcome, []

    def run() -> None:
        cmd = ["sysbench", "oltp_read_write", f"--mysql-port={proxy.port}", *SYSBENCH_COMMON,
               f"--threads={threads}", f"--time={SYSBENCH_TIME}", "--events=0",
               "--db-ps-mode=auto", "run"]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True,
                                    timeout=SYSBENCH_TIME + 45, check=False)
        except subprocess.TimeoutExpired as exc:
            outcome.error(f"sysbench timed out: {describe(exc)}")
            return
        out = result.stdout + result.stderr
        outcome.add(sessions=threads)
        if result.returncode != 0 or "FATAL" in out:
            outcome.error(f"sysbench exited {result.returncode}: {out[-2000:]}")
            return
        try:
            transactions = int(out.split("transactions:")[1].split()[0])
            ignored = int(out.split("ignored errors:")[1].split()[0])
        except (IndexError, ValueError):
            outcome.error(f"sysbench output not understood: {out[-2000:]}")
            return
        outcome.add(operations=transactions)
        outcome.note = f"{transactions} transactions, {ignored} ignored (deadlock) errors"
        if transactions <= 0:
            outcome.error("sysbench ran no transaction")

    return outcome, [run]


# --- the test -----------------------------------------------------------------------------------


def wait_for_event(proxy: servers.ProxyProcess, event: str, after: int,
                   timeout: float = 10.0) -> list[dict[str, Any]]:
    """Events ``event`` beyond the first ``after`` ones, waiting until there is one."""
    deadline = time.monotonic() + timeout
    while True:
        found = log_events(proxy, event)[after:]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def test_mixed_workload_pins_nothing_and_stays_within_the_pool(make_proxy, db_server) -> None:
    """Issue 3: the mixed workload of the module docstring pins no session, and the server
    never sees more connections from pyproxy than its pool allows."""
    orm_table = unique_table("pin_orm")
    conn_table = unique_table("pin_conn")
    node_table = unique_table("pin_node")
    db_server.create_user(APP_USER, APP_PASSWORD, database=APP_DATABASE)
    admin_query(db_server, f"CREATE TABLE {orm_table} (id INT AUTO_INCREMENT PRIMARY KEY, "
                           "owner VARCHAR(64) NOT NULL, balance INT NOT NULL, "
                           "note VARCHAR(100) NULL, KEY (owner)) CHARACTER SET utf8mb4")
    for table in (conn_table, node_table):
        admin_query(db_server, f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, "
                               "worker INT NOT NULL, k INT NOT NULL, v VARCHAR(64) NOT NULL, "
                               "KEY (worker, k)) CHARACTER SET utf8mb4")
    # Before pyproxy starts, so that from now on every connection of APP_USER is pyproxy's.
    sysbench_skipped = sysbench_prepare(db_server)
    # The four drivers ask for four different capability sets (FOUND_ROWS, LOCAL_FILES,
    # IGNORE_SPACE), so the pool keeps replacing connections for another flavor and a borrower
    # of a flavor few others use can wait seconds: borrow_timeout is generous for that.
    proxy = make_proxy(pool={"max_connections": POOL_SIZE, "borrow_timeout": 30},
                       log={"level": "info"})
    # The user's catalog of stored code is read before its first statement, over a
    # connection of pyproxy's own that the pool does not count (README, "Stored code"):
    # read now, so that the poller below counts the pool's connections alone.
    warm = proxy.connect()
    with warm.cursor() as cur:
        cur.execute("SELECT 1")
    warm.close()

    deadline = time.monotonic() + DURATION
    workloads = [
        orm_workload(proxy, orm_table, deadline, threads=16),
        connector_workload(proxy, conn_table, deadline, threads=8),
        node_workload(proxy, node_table, DURATION, connections=8),
        sysbench_workload(proxy, sysbench_skipped, threads=8),
    ]
    jobs = [job for _, loops in workloads for job in loops]
    failures: list[str] = []
    with ProcesslistPoller(db_server, APP_USER) as poller:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(job) for job in jobs]
            for future in futures:
                try:
                    future.result(timeout=DURATION + 60)
                except Exception as exc:  # noqa: BLE001
                    failures.append(describe(exc))
        time.sleep(0.2)

    stats_before = len(log_events(proxy, "pool_stats"))
    pins_before = len(log_events(proxy, "pin_summary"))
    proxy.process.send_signal(signal.SIGUSR1)
    pool_stats = wait_for_event(proxy, "pool_stats", stats_before)
    pin_summary = wait_for_event(proxy, "pin_summary", pins_before)

    pinned = log_events(proxy, "session_pinned")
    reasons = collections.Counter(str(event.get("reason")) for event in pinned)
    # Logins are logged at debug level only; SIGUSR1's client_stats counts the connections.
    client_sessions = log_events(proxy, "client_stats")[-1]["accepted"]
    outcomes = {outcome.name: outcome.summary() for outcome, _ in workloads}
    summary = {
        "client_sessions_accepted": client_sessions,
        "client_sessions_opened": sum(o.sessions for o, _ in workloads),
        "pinned_sessions": len(pinned),
        "pin_reasons": dict(reasons),
        "peak_server_connections": poller.peak,
        "pool_size": POOL_SIZE,
        "distinct_server_connections_polled": len(poller.ids),
        "processlist_samples": poller.samples,
        "backend_connections_opened": len(log_events(proxy, "backend_opened")),
        "replaced_for_another_flavor": sum(
            1 for e in log_events(proxy, "backend_closed")
            if "another client flavor" in str(e.get("reason"))),
        "pool_stats": pool_stats[-1:] and {k: v for k, v in pool_stats[-1].items()
                                           if k not in ("timestamp", "logger")},
        "pin_summary": pin_summary[-1].get("pins") if pin_summary else None,
        # Connections reset before another client got them (pinned sessions'), per
        # 1,000 borrows (transactions, or statements in autocommit).
        "resets": pin_summary[-1].get("resets") if pin_summary else None,
        "resets_per_1000_borrows": (
            round(1000 * pin_summary[-1].get("resets", 0) / max(1, sum(
                event.get("borrows", 0) for event in pool_stats if event)), 3)
            if pin_summary else None),
        "workloads": outcomes,
        "harness_failures": failures,
        "pyproxy_warnings": collections.Counter(
            str(e.get("event")) for e in log_events(proxy)
            if e.get("level") in ("warning", "error", "critical")),
    }
    report = json.dumps(summary, indent=2, default=str)
    print(f"\npin-rate summary:\n{report}")

    assert proxy.process.poll() is None, f"pyproxy exited\n{report}"
    assert poller.error is None and poller.samples > 10, report
    assert not failures, report
    assert all(o.errors == 0 for o, _ in workloads), report
    assert all(o.operations > 0 for o, _ in workloads if not o.note.startswith("skipped")), report
    assert not pinned, f"{len(pinned)} pinned sessions: {dict(reasons)}\n{report}"
    assert summary["pin_summary"] == {}, report
    assert summary["resets"] == 0, report
    assert 0 < poller.peak <= POOL_SIZE, report
    assert client_sessions > 50 and summary["client_sessions_opened"] > 50, report
