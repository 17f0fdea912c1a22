"""Failover between servers (issue 4, item 5): pyproxy with ``[[backend.targets]]``.

Three throwaway servers (``server_group``) stand for a cluster without replication: each holds
the same initial tables, and a failover is simulated as Aurora shows it to clients, by making
the writer read-only and another server writable (``SET GLOBAL read_only`` as root). The
application user is limited to its database, so ``read_only`` applies to it
(:func:`servers.create_database_user`).

What is checked: write traffic moves to the new writer within a few seconds under a
bank-transfer load, and no money or committed transfer is lost or doubled on either server;
idle clients keep their connection and their next statement runs on the new writer; a pinned
client on the old writer gets 2013 (1927 on libmariadb, which refuses client codes from a
server) and is disconnected; the read-only listener spreads sessions over the
readers and follows failovers; a stopped target is marked down and comes back. Issue 11:
autocommit writes the demoted writer refused run again on the new writer, so autocommit
writers see no error at all (text and prepared statements, LOAD DATA LOCAL), while writes
inside transactions still get theirs; LAST_INSERT_ID() stays the client's when a held
connection is given up at the failover.

Every test is bounded in time, stops by itself and sends traffic to 127.0.0.1 only. The
figures (recovery times, errors by code) are printed for the README and closing notes.
"""

from __future__ import annotations

import collections
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pymysql
import pytest

from integration import servers
from integration.drivers import log_events
from pyproxy.sandbox import free_port

#: Enough accounts that lock waits stay short: SET GLOBAL read_only=1 waits for running
#: writes, and with a few hot rows it does not get through (see ServerGroup.set_read_only).
ACCOUNTS = 200
START_BALANCE = 1000

#: Fast probes, so detection is quick and the tests short.
HEALTH = {"interval": 1, "connect_timeout": 2, "failure_threshold": 2, "backoff_max": 2}

#: The client lost its connection (2013 from pyproxy or the driver, 2006 from the driver when
#: the socket was already closed).
LOST_CONNECTION = frozenset((2013, 2006))

#: What a transaction in flight during a failover may be told: the server is read-only
#: (1290), the connection was lost, or the server's own deadlock / lock-wait errors.
IN_FLIGHT_ERRORS = LOST_CONNECTION | {1290, 1213, 1205}


# --- helpers ---------------------------------------------------------------------------------


def statement(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> Any:
    """Run one statement and return the first column of its first row (None without rows)."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    return None if row is None else row[0]


def server_of(group: servers.ServerGroup, conn: pymysql.connections.Connection) -> int:
    """The index of the group's server that runs ``conn``'s statements now."""
    return group.index_of_port(int(statement(conn, "SELECT @@port")))


def read_only_listen() -> dict[str, str]:
    """A ``[proxy]`` table with a read-only listener on a free port."""
    return {"read_only_listen": f"tcp:{free_port()}:interface=127.0.0.1"}


def events(proxy: servers.ProxyProcess, name: str, **fields: Any) -> list[dict[str, Any]]:
    """pyproxy's log events ``name`` whose fields have these values."""
    return [event for event in log_events(proxy, name)
            if all(event.get(key) == value for key, value in fields.items())]


def wait_for_event(proxy: servers.ProxyProcess, name: str, timeout: float, after: int = 0,
                   **fields: Any) -> tuple[dict[str, Any], float]:
    """The first event ``name`` with these fields beyond the first ``after`` ones, and the
    monotonic time it was seen; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = events(proxy, name, **fields)[after:]
        if found:
            return found[0], time.monotonic()
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {name} event with {fields} within {timeout}s; "
                                 f"events so far: {events(proxy, name)}")
        time.sleep(0.05)


def wait_until(predicate: Any, timeout: float, what: str,
               diagnose: Callable[[], str] | None = None) -> float:
    """Poll ``predicate`` until it is true; return the monotonic time it was. Fails the test
    after ``timeout`` seconds, with what ``diagnose()`` says then."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s"
                                 + (f"\n{diagnose()}" if diagnose else ""))
        time.sleep(0.02)
    return time.monotonic()


def server_activity(server: Any) -> str:
    """What the application user's threads and InnoDB's transactions on ``server`` are doing,
    to tell a stalled proxy from a lock wait when load stops moving."""
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, command, time, state, info FROM information_schema.processlist"
                        " WHERE user = %s", (servers.APP_USER,))
            threads = cur.fetchall()
            cur.execute("SELECT trx_mysql_thread_id, trx_state, trx_started, trx_query "
                        "FROM information_schema.innodb_trx")
            transactions = cur.fetchall()
    finally:
        conn.close()
    return "\n".join([f"server {server.port} threads of {servers.APP_USER}:",
                      *map(str, threads), "InnoDB transactions:", *map(str, transactions)])


def balance_on(group: servers.ServerGroup, index: int, account: int) -> int:
    """The balance of ``account`` on server ``index``, read directly."""
    conn = group[index].connect(database=servers.APP_DATABASE)
    try:
        return int(statement(conn, "SELECT balance FROM accounts WHERE id = %s", (account,)))
    finally:
        conn.close()


def error_code(exc: BaseException) -> int:
    """The MySQL error code of a driver exception (0 for the driver's own InterfaceError)."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0


# --- the bank --------------------------------------------------------------------------------


def setup_bank(group: servers.ServerGroup, count: int) -> None:
    """The same accounts on the first ``count`` servers, and an empty transfer log each.

    The log records the server's port with every transfer, so a transfer can be traced to the
    server that committed it.
    """
    db = servers.APP_DATABASE
    for index in range(count):
        group.admin(
            index,
            f"CREATE DATABASE IF NOT EXISTS {db}",
            f"DROP TABLE IF EXISTS {db}.accounts, {db}.transfers",
            f"CREATE TABLE {db}.accounts (id INT PRIMARY KEY, balance INT NOT NULL) ENGINE=InnoDB",
            f"CREATE TABLE {db}.transfers (id VARCHAR(40) PRIMARY KEY, src INT NOT NULL, "
            "dst INT NOT NULL, amount INT NOT NULL, port INT NOT NULL) ENGINE=InnoDB",
            f"INSERT INTO {db}.accounts VALUES "
            + ", ".join(f"({i}, {START_BALANCE})" for i in range(ACCOUNTS)),
        )


@attrs.frozen
class Transfer:
    """A transfer a client saw committed, on the server whose port it read in the transaction."""

    id: str
    client: int
    began: float
    src: int
    dst: int
    amount: int
    port: int
    committed_at: float


class BankClients:
    """Threads moving money through pyproxy in transactions until told to stop.

    Each client keeps one PyMySQL connection and pauses between transactions (so it is often
    idle, holding no backend connection). A transaction reads ``@@port`` after BEGIN, so the
    client knows which server ran it. On an error the client rolls back and carries on with
    the same connection; only when that connection is gone does it open a new one (counted in
    ``reconnects``).
    """

    def __init__(self, proxy: servers.ProxyProcess, clients: int, pause: float = 0.05) -> None:
        self.proxy = proxy
        self.pause = pause
        self.committed: list[Transfer] = []
        #: Transfers whose COMMIT lost its connection: they may or may not be stored.
        self.uncertain: set[str] = set()
        self.errors: collections.Counter[int] = collections.Counter()
        self.reconnects = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(clients)]

    def __enter__(self) -> BankClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self._threads), "a bank client hung"

    def on(self, port: int) -> list[Transfer]:
        with self._lock:
            return [transfer for transfer in self.committed if transfer.port == port]

    def first_commits(self, port: int) -> dict[int, float]:
        """When each client first committed a transfer on the server at ``port``."""
        first: dict[int, float] = {}
        for transfer in self.on(port):
            first.setdefault(transfer.client, transfer.committed_at)
        return first

    def _connect(self) -> pymysql.connections.Connection | None:
        while not self.stop.is_set():
            try:
                return self.proxy.connect(autocommit=True, read_timeout=30, write_timeout=30)
            except pymysql.MySQLError as exc:
                with self._lock:
                    self.errors[error_code(exc)] += 1
                time.sleep(0.05)
        return None

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        conn = self._connect()
        count = 0
        while conn is not None and not self.stop.is_set():
            src, dst = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 20)
            transfer_id = f"{n}-{count}"
            count += 1
            committing = False
            began = time.monotonic()
            try:
                conn.begin()
                port = int(statement(conn, "SELECT @@port"))
                statement(conn, "UPDATE accounts SET balance = balance - %s WHERE id = %s",
                          (amount, src))
                statement(conn, "UPDATE accounts SET balance = balance + %s WHERE id = %s",
                          (amount, dst))
                statement(conn, "INSERT INTO transfers VALUES (%s, %s, %s, %s, @@port)",
                          (transfer_id, src, dst, amount))
                committing = True
                conn.commit()
                with self._lock:
                    self.committed.append(
                        Transfer(transfer_id, n, began, src, dst, amount, port,
                                 time.monotonic()))
            except pymysql.MySQLError as exc:
                code = error_code(exc)
                with self._lock:
                    self.errors[code] += 1
                    if committing and code in LOST_CONNECTION:
                        self.uncertain.add(transfer_id)
                conn = self._after_error(conn)
            time.sleep(rng.uniform(0, self.pause))
        if conn is not None:
            conn.close()

    def _after_error(
        self, conn: pymysql.connections.Connection
    ) -> pymysql.connections.Connection | None:
        """Roll back on the same connection; a new one only if pyproxy closed this one."""
        try:
            conn.rollback()
            return conn
        except pymysql.MySQLError:
            pass
        try:
            conn.close()
        except pymysql.MySQLError:
            pass  # already closed by the driver
        with self._lock:
            self.reconnects += 1
        return self._connect()


def check_no_money_lost(group: servers.ServerGroup, count: int, bank: BankClients) -> None:
    """On each of the first ``count`` servers the balances add up and match that server's own
    transfer log; every transfer a client saw committed is stored once, on the server the
    client saw, and nothing is stored that a client did not see committed (except commits
    whose connection was lost, which may have happened)."""
    stored: dict[str, int] = {}
    for index in range(count):
        conn = group[index].connect(database=servers.APP_DATABASE)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, balance FROM accounts")
                balances = dict(cur.fetchall())
                cur.execute("SELECT id, src, dst, amount, port FROM transfers")
                log = cur.fetchall()
        finally:
            conn.close()
        assert sum(balances.values()) == ACCOUNTS * START_BALANCE, (index, balances)
        expected = {account: START_BALANCE for account in range(ACCOUNTS)}
        for transfer_id, src, dst, amount, port in log:
            assert port == group[index].port
            assert transfer_id not in stored, f"transfer {transfer_id} on two servers"
            stored[transfer_id] = port
            expected[src] -= amount
            expected[dst] += amount
        assert balances == expected, f"server {index}: balances do not match its transfers"
    for transfer in bank.committed:
        assert stored.get(transfer.id) == transfer.port, \
            f"committed transfer {transfer} is stored on {stored.get(transfer.id)}"
    seen = {transfer.id for transfer in bank.committed}
    phantom = set(stored) - seen - bank.uncertain
    assert not phantom, f"stored but never reported committed: {sorted(phantom)[:5]}"


# --- the tests -------------------------------------------------------------------------------


def test_application_user_is_subject_to_read_only(server_group: servers.ServerGroup) -> None:
    """The premise of every test here: the group's users cannot write on a read-only server
    (a user with READ_ONLY ADMIN or SUPER could, and no failover would be seen)."""
    server_group.create_user(servers.APP_USER, servers.APP_PASSWORD, database=servers.APP_DATABASE)
    conn = pymysql.connect(host=server_group[1].host, port=server_group[1].port,
                           user=servers.APP_USER, password=servers.APP_PASSWORD,
                           database=servers.APP_DATABASE, autocommit=True)
    try:
        with pytest.raises(pymysql.MySQLError) as caught:
            statement(conn, "CREATE TABLE read_only_probe (id INT)")
        assert error_code(caught.value) == 1290
        assert statement(conn, "SELECT @@global.read_only") == 1
    finally:
        conn.close()


def test_failover_under_bank_transfer_load(
    server_group: servers.ServerGroup, make_group_proxy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 4: the writer turns read-only and another server writable while 40 clients move
    money and 60 sit idle. Write traffic moves to the new writer within a few seconds, idle
    clients keep their connections and their next statement runs on the new writer, clients in
    flight get clear errors or succeed, and no money or committed transfer is lost or doubled.

    Server 1 is writable too but has role ``reader``: it must never be elected.
    """
    group = server_group
    setup_bank(group, 3)
    group.set_read_only(1, False)
    proxy = make_group_proxy(["writer", "reader", "auto"], health=HEALTH,
                             pool={"max_connections": 12, "borrow_timeout": 10})
    idle = [proxy.connect(read_timeout=30) for _ in range(60)]
    assert {server_of(group, conn) for conn in idle} == {0}
    with BankClients(proxy, 40) as bank:
        wait_until(lambda: len(bank.on(group[0].port)) >= 200, 20, "transfers on the writer",
                   lambda: server_activity(group[0]))
        flip = group.fail_over(0, 2)
        wait_until(lambda: len(bank.first_commits(group[2].port)) == 40, 20,
                   "every bank client committing on the new writer",
                   lambda: f"errors so far: {bank.errors}\n{server_activity(group[2])}")
        time.sleep(1.0)
    first_commits = bank.first_commits(group[2].port)
    first, last = min(first_commits.values()), max(first_commits.values())
    assert not bank.on(group[1].port), "a writable reader was elected writer"
    assert all(t.port == group[2].port for t in bank.committed if t.began > flip.demoted)
    changed = events(proxy, "writer_changed")
    assert [(e["previous"], e["target"]) for e in changed] == [
        (group.address(0), group.address(2))], changed
    for conn in idle:
        assert server_of(group, conn) == 2  # the same connection, no error, new writer
        conn.close()
    check_no_money_lost(group, 3, bank)
    unexpected = set(bank.errors) - IN_FLIGHT_ERRORS
    assert not unexpected, f"errors other than {sorted(IN_FLIGHT_ERRORS)}: {bank.errors}"
    # From the moment the old writer refused writes: how long the server took to get there
    # (the global read lock waits for running writes) is not pyproxy's.
    recovery = first - flip.demoted
    assert recovery < 5.0, f"first write on the new writer {recovery:.2f}s after the flip"
    with capsys.disabled():
        print(f"\n[failover] bank, 40 clients + 60 idle: first transfer committed on the new "
              f"writer {recovery * 1000:.0f} ms after the old one turned read-only "
              f"({(first - flip.promoted) * 1000:.0f} ms after the new one turned writable), "
              f"all 40 clients writing there after {(last - flip.demoted) * 1000:.0f} ms; "
              f"turning the old writer read-only took {(flip.demoted - flip.began) * 1000:.0f} "
              f"ms ({flip.attempts} attempts); {len(bank.committed)} transfers "
              f"committed ({len(bank.on(group[0].port))} old writer, "
              f"{len(bank.on(group[2].port))} new), client errors "
              f"{dict(sorted(bank.errors.items()))}, {len(bank.uncertain)} commits lost "
              f"their connection, {bank.reconnects} reconnects; 60 idle clients: 0 errors, "
              "0 reconnects")


def test_writer_crash_then_promotion(
    server_group: servers.ServerGroup, make_group_proxy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The writer is killed (kill -9) under load and the other server is promoted a moment
    later, as in an unplanned Aurora failover: the probes mark the writer down, the promoted
    server becomes the writer, idle clients carry on there without an error or a reconnect,
    transactions in flight get lost-connection errors, and no committed transfer is lost."""
    group = server_group
    setup_bank(group, 2)
    proxy = make_group_proxy(["writer", "auto"], health=HEALTH,
                             pool={"max_connections": 12, "borrow_timeout": 20})
    idle = [proxy.connect(read_timeout=30) for _ in range(40)]
    assert {server_of(group, conn) for conn in idle} == {0}
    with BankClients(proxy, 20) as bank:
        wait_until(lambda: len(bank.on(group[0].port)) >= 100, 20, "transfers on the writer",
                   lambda: server_activity(group[0]))
        killed = time.monotonic()
        group[0].kill()
        time.sleep(0.5)
        group.set_read_only(1, False)
        promoted = time.monotonic()
        wait_until(lambda: len(bank.first_commits(group[1].port)) == 20, 20,
                   "every bank client committing on the promoted server",
                   lambda: f"errors so far: {bank.errors}")
        time.sleep(0.5)
    first = min(bank.first_commits(group[1].port).values())
    changed = events(proxy, "writer_changed")
    assert [(e["previous"], e["target"]) for e in changed] == [
        (group.address(0), group.address(1))], changed
    for conn in idle:
        assert server_of(group, conn) == 1  # same connection, no error
        conn.close()
    group[0].start()  # its data, to check that no committed transfer was lost
    check_no_money_lost(group, 2, bank)
    unexpected = set(bank.errors) - IN_FLIGHT_ERRORS
    assert not unexpected, f"errors other than {sorted(IN_FLIGHT_ERRORS)}: {bank.errors}"
    with capsys.disabled():
        print(f"\n[failover] writer killed, other promoted 0.5 s later: first transfer on the "
              f"new writer {(first - promoted) * 1000:.0f} ms after the promotion "
              f"({(first - killed) * 1000:.0f} ms after the kill); {len(bank.committed)} "
              f"transfers committed, client errors {dict(sorted(bank.errors.items()))}, "
              f"{bank.reconnects} reconnects; 40 idle clients: 0 errors, 0 reconnects")


def test_clients_on_the_old_writer_after_failover(
    server_group: servers.ServerGroup, make_group_proxy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """With probes only every 30 s, a write refused with 1290 makes pyproxy look at once: the
    autocommit write waits for the new writer and runs there within about a second, without
    an error. An idle unpinned client's next statement runs there without an error; a pinned
    client whose backend connection is on the old writer gets 2013 and is disconnected, since
    its session state is gone."""
    group = server_group
    setup_bank(group, 2)
    proxy = make_group_proxy(["writer", "auto"], health={**HEALTH, "interval": 30})
    pinned = proxy.connect(read_timeout=30)
    statement(pinned, "SET @kept = 42")  # a user variable pins the session
    assert server_of(group, pinned) == 0
    idle = proxy.connect(read_timeout=30)
    assert server_of(group, idle) == 0
    writer = proxy.connect(autocommit=True, read_timeout=30)
    statement(writer, "UPDATE accounts SET balance = balance WHERE id = 1")
    flipped = group.fail_over(0, 1).demoted
    statement(writer, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")  # no error
    moved = time.monotonic() - flipped
    assert server_of(group, writer) == 1
    assert moved < 3.0, f"writes moved {moved:.2f}s after the flip with a 30 s interval"
    assert [balance_on(group, i, 1) for i in (0, 1)] == [START_BALANCE, START_BALANCE + 1], \
        "the write ran once, on the new writer"
    assert len(events(proxy, "write_run_again")) == 1
    assert server_of(group, idle) == 1
    with pytest.raises(pymysql.MySQLError) as caught:
        statement(pinned, "SELECT @kept")
    assert error_code(caught.value) == 2013, caught.value
    with pytest.raises(pymysql.MySQLError):
        statement(pinned, "SELECT 1")  # pyproxy closed it
    for conn in (pinned, idle, writer):
        try:
            conn.close()
        except pymysql.MySQLError:
            pass  # the pinned one is already closed
    with capsys.disabled():
        print(f"\n[failover] health interval 30 s: an autocommit write sent right after the "
              f"flip ran on the new writer {moved * 1000:.0f} ms after the flip, without an "
              "error; idle client: no error; pinned client: 2013, disconnected")


class AutocommitWriters:
    """Threads writing through pyproxy in autocommit until told to stop: each statement
    inserts a row with an id of its own into ``autocommit_writes``, so every write can be
    traced to the one server that stored it. Every error is counted; after one the thread
    goes on with the same connection (a new one only if it is gone)."""

    def __init__(self, proxy: servers.ProxyProcess, clients: int, pause: float = 0.01) -> None:
        self.proxy = proxy
        self.pause = pause
        self.done: list[tuple[str, int, float]] = []  # (id, thread, when it succeeded)
        self.failed: set[str] = set()
        self.errors: collections.Counter[int] = collections.Counter()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(clients)]

    def __enter__(self) -> AutocommitWriters:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self._threads), "a writer hung"

    def after(self, moment: float) -> dict[int, int]:
        """Writes that succeeded after ``moment``, by thread."""
        with self._lock:
            return collections.Counter(n for _, n, when in self.done if when > moment)

    def _run(self, n: int) -> None:
        conn = self.proxy.connect(autocommit=True, read_timeout=30)
        count = 0
        while not self.stop.is_set():
            write_id = f"a{n}-{count}"
            count += 1
            try:
                statement(conn, "INSERT INTO autocommit_writes VALUES (%s, @@port)", (write_id,))
                with self._lock:
                    self.done.append((write_id, n, time.monotonic()))
            except pymysql.MySQLError as exc:
                with self._lock:
                    self.errors[error_code(exc)] += 1
                    self.failed.add(write_id)
                if error_code(exc) in LOST_CONNECTION:
                    conn = self.proxy.connect(autocommit=True, read_timeout=30)
            time.sleep(self.pause)
        conn.close()


def test_autocommit_writers_see_no_error_across_a_failover(
    server_group: servers.ServerGroup, make_group_proxy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11: 12 autocommit writers and 12 bank clients (transactions) write through a
    failover. The autocommit writers see no error at all: a write the demoted writer refused
    waits for the new writer and runs there, once (every write they saw succeed is stored
    exactly once, on one of the servers, and nothing else is). The transaction writers still
    get their errors (pyproxy never runs part of a transaction again), and no money is lost."""
    group = server_group
    setup_bank(group, 2)
    for index in range(2):
        group.admin(index, f"CREATE TABLE {servers.APP_DATABASE}.autocommit_writes "
                    "(id VARCHAR(40) PRIMARY KEY, port INT NOT NULL) ENGINE=InnoDB")
    # Room for all: an autocommit writer keeps its connection from one write to the next
    # (held for a follow-up after each, hold_for_next_statement).
    proxy = make_group_proxy(["writer", "auto"], health=HEALTH,
                             pool={"max_connections": 30, "borrow_timeout": 10})
    with AutocommitWriters(proxy, 12) as writers, BankClients(proxy, 12) as bank:
        wait_until(lambda: len(writers.done) >= 200 and len(bank.on(group[0].port)) >= 50, 20,
                   "writes on the writer",
                   lambda: f"{len(writers.done)} writes, errors {writers.errors}; "
                   f"{len(bank.committed)} transfers, errors {bank.errors}\n"
                   + server_activity(group[0]))
        flip = group.fail_over(0, 1)
        wait_until(lambda: len(writers.after(flip.promoted)) == 12
                   and len(bank.first_commits(group[1].port)) == 12, 20,
                   "every writer writing on the new writer",
                   lambda: f"errors so far: {writers.errors} {bank.errors}")
        time.sleep(0.5)
    stored: collections.Counter[str] = collections.Counter()
    by_server = []
    for index in range(2):
        conn = group[index].connect(database=servers.APP_DATABASE)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, port FROM autocommit_writes")
                rows = cur.fetchall()
        finally:
            conn.close()
        assert all(port == group[index].port for _, port in rows)
        stored.update(write_id for write_id, _ in rows)
        by_server.append(len(rows))
    assert not writers.errors, f"autocommit writers got errors: {writers.errors}"
    seen = [write_id for write_id, _, _ in writers.done]
    assert all(stored[write_id] == 1 for write_id in seen), "a write is stored twice or lost"
    assert set(stored) == set(seen), "stored but never reported done"
    retried = len(events(proxy, "write_run_again"))
    assert retried >= 1, "no write was refused during the failover: the test saw nothing"
    check_no_money_lost(group, 2, bank)
    unexpected = set(bank.errors) - IN_FLIGHT_ERRORS
    assert not unexpected, f"errors other than {sorted(IN_FLIGHT_ERRORS)}: {bank.errors}"
    with capsys.disabled():
        print(f"\n[failover] 12 autocommit writers + 12 bank clients: autocommit writers "
              f"{len(seen)} writes ({by_server[0]} old writer, {by_server[1]} new), 0 errors, "
              f"{retried} refused writes run again on the new writer; bank clients "
              f"{len(bank.committed)} transfers, errors {dict(sorted(bank.errors.items()))}")


def test_writes_in_transactions_still_get_their_error(
    server_group: servers.ServerGroup, make_group_proxy: Any
) -> None:
    """A write refused as read-only inside a transaction (BEGIN, or autocommit=0) reaches the
    client as 1290, never run again silently: the transaction's earlier statements ran on the
    old writer. Neither server has the write."""
    group = server_group
    setup_bank(group, 2)
    proxy = make_group_proxy(["writer", "auto"], health=HEALTH)
    began = proxy.connect(autocommit=True, read_timeout=30)
    began.begin()
    statement(began, "UPDATE accounts SET balance = balance WHERE id = 3")
    implicit = proxy.connect(autocommit=False, read_timeout=30)
    statement(implicit, "SELECT balance FROM accounts WHERE id = 4")
    group.fail_over(0, 1)
    for conn, account in ((began, 3), (implicit, 4)):
        with pytest.raises(pymysql.MySQLError) as caught:
            statement(conn, "UPDATE accounts SET balance = balance + 1 WHERE id = %s", (account,))
        assert error_code(caught.value) == 1290, caught.value
        conn.rollback()
    assert [balance_on(group, i, account) for i in (0, 1) for account in (3, 4)] == [
        START_BALANCE] * 4
    assert events(proxy, "write_run_again") == []
    for conn in (began, implicit):
        conn.close()


def test_load_data_local_refused_before_its_file_runs_again(
    server_group: servers.ServerGroup, make_group_proxy: Any, tmp_path: Any
) -> None:
    """An autocommit LOAD DATA LOCAL sent to the demoted writer is refused before the server
    asks for the file (one ERR, no file sent), so it runs again on the new writer, which asks
    for the file then: the rows are loaded once, there, and the client sees no error."""
    group = server_group
    for index in range(2):
        group.admin(index, f"CREATE DATABASE IF NOT EXISTS {servers.APP_DATABASE}",
                    f"DROP TABLE IF EXISTS {servers.APP_DATABASE}.loaded",
                    f"CREATE TABLE {servers.APP_DATABASE}.loaded (id INT PRIMARY KEY) ENGINE=InnoDB")
    data = tmp_path / "rows.txt"
    data.write_text("".join(f"{i}\n" for i in range(1, 101)))
    proxy = make_group_proxy(["writer", "auto"], health={**HEALTH, "interval": 30})
    conn = proxy.connect(autocommit=True, read_timeout=30, local_infile=True)
    statement(conn, "SELECT 1")
    group.fail_over(0, 1)
    statement(conn, f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE loaded")
    assert conn.affected_rows() == 100
    counts = []
    for index in range(2):
        direct = group[index].connect(database=servers.APP_DATABASE)
        try:
            counts.append(statement(direct, "SELECT COUNT(*) FROM loaded"))
        finally:
            direct.close()
    assert counts == [0, 100]
    assert len(events(proxy, "write_run_again")) == 1
    conn.close()


def test_prepared_write_refused_runs_again_prepared_on_the_new_writer(
    server_group: servers.ServerGroup, make_group_proxy: Any
) -> None:
    """A COM_STMT_EXECUTE (mysql-connector-python's prepared cursor) refused by the demoted
    writer runs on the new writer, where pyproxy prepares the statement first: no error,
    the row written once, there."""
    mysql_connector = pytest.importorskip("mysql.connector")
    group = server_group
    setup_bank(group, 2)
    proxy = make_group_proxy(["writer", "auto"], health={**HEALTH, "interval": 30})
    conn = mysql_connector.connect(host=proxy.host, port=proxy.port, user=servers.APP_USER,
                                   password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                                   use_pure=True, autocommit=True)
    try:
        cur = conn.cursor(prepared=True)
        update = "UPDATE accounts SET balance = balance + ? WHERE id = ?"
        cur.execute(update, (1, 5))
        group.fail_over(0, 1)
        cur.execute(update, (10, 6))  # prepared on the old writer only: no error
        assert cur.rowcount == 1
    finally:
        conn.close()
    assert [balance_on(group, i, account) for i in (0, 1) for account in (5, 6)] == [
        START_BALANCE + 1, START_BALANCE, START_BALANCE, START_BALANCE + 10]
    assert len(events(proxy, "write_run_again")) == 1


def test_last_insert_id_after_a_hold_given_up_at_failover(
    server_group: servers.ServerGroup, make_group_proxy: Any
) -> None:
    """A client's connection held for a follow-up is given up when the writer moves; what
    LAST_INSERT_ID() is for the client is read back first, so on the new writer the client
    sees the id its own INSERT generated, not an explicit id its last OK reported."""
    group = server_group
    for index in range(2):
        group.admin(index, f"CREATE DATABASE IF NOT EXISTS {servers.APP_DATABASE}",
                    f"DROP TABLE IF EXISTS {servers.APP_DATABASE}.ai",
                    f"CREATE TABLE {servers.APP_DATABASE}.ai (id INT AUTO_INCREMENT PRIMARY KEY,"
                    " v INT) ENGINE=InnoDB")
    proxy = make_group_proxy(["writer", "auto"], health=HEALTH,
                             session={"hold_for_next_statement": 60})
    conn = proxy.connect(autocommit=True, read_timeout=30)
    statement(conn, "INSERT INTO ai (v) VALUES (1)")
    assert conn.insert_id() == 1
    statement(conn, "INSERT INTO ai (id, v) VALUES (100, 2)")  # the OK reports 100
    assert conn.insert_id() == 100
    group.fail_over(0, 1)
    wait_for_event(proxy, "writer_changed", 10, target=group.address(1))
    assert statement(conn, "SELECT LAST_INSERT_ID()") == 1
    assert server_of(group, conn) == 1
    conn.close()


def test_pinned_libmariadb_client_on_the_old_writer_is_told_clearly(
    server_group: servers.ServerGroup, make_group_proxy: Any
) -> None:
    """The pinned-client case above for a client on libmariadb (mysqlclient), which most
    non-Python drivers share. libmariadb takes an error packet carrying one of its own client
    codes (2001-2061, so 2013 too) for a malformed reply and reports 2027; such a client gets
    1927 (connection killed) instead, naming 2013 in the message, and is disconnected."""
    mysqldb = pytest.importorskip("MySQLdb")
    group = server_group
    proxy = make_group_proxy(["writer", "auto"], health=HEALTH)
    pinned = mysqldb.connect(host=proxy.host, port=proxy.port, user=servers.APP_USER,
                             password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                             read_timeout=30)
    try:
        cur = pinned.cursor()
        cur.execute("SET @kept = 42")
        cur.execute("SELECT @@port")
        assert cur.fetchone()[0] == group[0].port
        group.fail_over(0, 1)
        wait_for_event(proxy, "writer_changed", 10, target=group.address(1))
        with pytest.raises(mysqldb.OperationalError) as caught:
            cur.execute("SELECT @kept")
        assert error_code(caught.value) == 1927, caught.value
        assert "Lost connection" in str(caught.value) and "client error 2013" in str(caught.value)
        with pytest.raises(mysqldb.OperationalError) as closed:
            cur.execute("SELECT 1")
        assert error_code(closed.value) in (2006, 2013), closed.value
    finally:
        pinned.close()


@pytest.fixture
def reader_sessions() -> Iterator[list[pymysql.connections.Connection]]:
    """Connections the test opens through the read-only listener; closed at teardown."""
    opened: list[pymysql.connections.Connection] = []
    yield opened
    for conn in opened:
        try:
            conn.close()
        except pymysql.MySQLError:
            pass


def open_readers(proxy: servers.ProxyProcess, count: int,
                 opened: list[pymysql.connections.Connection]
                 ) -> list[pymysql.connections.Connection]:
    """``count`` sessions through the read-only listener, one after the other."""
    conns = [proxy.connect(port=proxy.read_only_port, read_timeout=30) for _ in range(count)]
    opened.extend(conns)
    return conns


def servers_of(group: servers.ServerGroup,
               conns: list[pymysql.connections.Connection]) -> list[int]:
    return [server_of(group, conn) for conn in conns]


def test_read_only_listener_spreads_sessions_over_readers(
    server_group: servers.ServerGroup, make_group_proxy: Any,
    reader_sessions: list[pymysql.connections.Connection],
) -> None:
    """Sessions of the read-only listener go round-robin to the readers (never the writer)
    and stay on theirs; after a failover they run on the readers of the new topology, the
    demoted writer included, and never on the new writer. SIGUSR1 reports every target."""
    group = server_group
    proxy = make_group_proxy(["writer", "auto", "reader"], health=HEALTH,
                             proxy=read_only_listen())
    writer = proxy.connect(read_timeout=30)
    assert server_of(group, writer) == 0
    sessions = open_readers(proxy, 6, reader_sessions)
    placed = servers_of(group, sessions)
    assert sorted(collections.Counter(placed).items()) == [(1, 3), (2, 3)], placed
    assert servers_of(group, sessions) == placed  # each stays on its reader

    group.fail_over(0, 1)
    wait_for_event(proxy, "writer_changed", 10, target=group.address(1))
    assert server_of(group, writer) == 1
    moved = servers_of(group, sessions)
    assert set(moved) == {0, 2}, moved
    assert all(now == 2 for now, was in zip(moved, placed) if was == 2), (placed, moved)
    fresh = servers_of(group, open_readers(proxy, 4, reader_sessions))
    assert sorted(collections.Counter(fresh).items()) == [(0, 2), (2, 2)], fresh

    before = len(events(proxy, "target_stats"))
    proxy.process.send_signal(signal.SIGUSR1)
    wait_until(lambda: len(events(proxy, "target_stats")) >= before + 3, 10, "target_stats")
    reported = {event["target"] for event in events(proxy, "target_stats")[before:]}
    assert reported == {group.address(i) for i in range(3)}
    writer.close()


def test_read_only_listener_uses_the_demoted_writer(
    server_group: servers.ServerGroup, make_group_proxy: Any,
    reader_sessions: list[pymysql.connections.Connection],
) -> None:
    """With two servers, reader sessions run on the one reader; after a failover that reader
    is the writer, and the demoted writer, the only reader left, serves them. When that one
    stops too, they run on the writer, without an error."""
    group = server_group
    proxy = make_group_proxy(["writer", "auto"], health=HEALTH, proxy=read_only_listen())
    sessions = open_readers(proxy, 3, reader_sessions)
    assert servers_of(group, sessions) == [1, 1, 1]
    group.fail_over(0, 1)
    wait_for_event(proxy, "writer_changed", 10, target=group.address(1))
    assert servers_of(group, sessions) == [0, 0, 0]
    assert servers_of(group, open_readers(proxy, 2, reader_sessions)) == [0, 0]
    group[0].stop()
    wait_for_event(proxy, "target_state", 10, target=group.address(0), state="down")
    assert servers_of(group, sessions) == [1, 1, 1]


def test_stopped_target_is_marked_down_and_back_up(
    server_group: servers.ServerGroup, make_group_proxy: Any,
    reader_sessions: list[pymysql.connections.Connection], capsys: pytest.CaptureFixture[str],
) -> None:
    """A reader that stops is marked down within about two intervals; idle sessions that used
    it carry on on the other reader without an error (one statement sent right after the
    stop included); when it is back it is marked up and gets new sessions again."""
    group = server_group
    proxy = make_group_proxy(["writer", "reader", "reader"], health=HEALTH,
                             proxy=read_only_listen(), pool={"borrow_timeout": 10})
    sessions = open_readers(proxy, 4, reader_sessions)
    placed = servers_of(group, sessions)
    assert sorted(placed) == [1, 1, 2, 2], placed
    on_stopped = [conn for conn, index in zip(sessions, placed) if index == 2]
    target = group.address(2)

    stopped = time.monotonic()
    group[2].stop()
    during: list[Any] = []
    early = threading.Thread(target=lambda: during.append(_server_or_error(group,
                                                                           on_stopped[0])))
    early.start()
    _, seen_down = wait_for_event(proxy, "target_state", 10, target=target, state="down")
    early.join(30)
    assert during == [1], f"a statement sent right after the stop got {during}"
    assert servers_of(group, on_stopped) == [1] * len(on_stopped)
    down_after = seen_down - stopped
    interval = HEALTH["interval"]
    assert down_after < 2 * interval + HEALTH["connect_timeout"] + 1.0, down_after

    downs = len(events(proxy, "target_state", target=target))
    group[2].start()
    group.set_read_only(2, True)
    restarted = time.monotonic()
    event, seen_up = wait_for_event(proxy, "target_state", 15, after=downs, target=target)
    assert event["state"] in ("up", "read_only"), event
    fresh = servers_of(group, open_readers(proxy, 4, reader_sessions))
    assert sorted(fresh) == [1, 1, 2, 2], fresh
    with capsys.disabled():
        print(f"\n[failover] reader stopped: marked down after {down_after * 1000:.0f} ms "
              f"(interval {interval} s, threshold {HEALTH['failure_threshold']}); back "
              f"{(seen_up - restarted) * 1000:.0f} ms after it answered again; idle reader "
              "sessions: 0 errors")


def _server_or_error(group: servers.ServerGroup, conn: pymysql.connections.Connection
                     ) -> int | str:
    """Which server ran a statement, or the error it got (for a thread's result)."""
    try:
        return server_of(group, conn)
    except pymysql.MySQLError as exc:
        return f"error {error_code(exc)}: {exc}"


def test_sighup_reloads_the_targets(
    server_group: servers.ServerGroup, make_group_proxy: Any
) -> None:
    """SIGHUP with a second server added to [[backend.targets]]: it is probed at once and,
    when the first turns read-only, becomes the writer; an idle client connected before the
    reload sees no error and no reconnect, and its next statement runs on the new writer."""
    from pyproxy.sandbox import dump_toml  # noqa: PLC0415 - only this test writes configs

    group = server_group
    proxy = make_group_proxy(["writer"], health=HEALTH)
    idle = proxy.connect(read_timeout=30)
    assert server_of(group, idle) == 0
    config = dict(proxy.config)
    config["backend"] = {**config["backend"], **group.backend(["writer", "auto"])}
    config["backend"] = {k: v for k, v in config["backend"].items() if v is not None}
    proxy.config_path.write_text(dump_toml(config))
    proxy.process.send_signal(signal.SIGHUP)
    wait_for_event(proxy, "target_state", 10, target=group.address(1), state="read_only")
    assert server_of(group, idle) == 0
    group.fail_over(0, 1)
    wait_for_event(proxy, "writer_changed", 10, target=group.address(1))
    assert server_of(group, idle) == 1  # the same connection, no error
    # And back: the reload removes the first server; the writer stays where it is.
    config["backend"]["targets"] = config["backend"]["targets"][1:]
    proxy.config_path.write_text(dump_toml(config))
    proxy.process.send_signal(signal.SIGHUP)
    wait_for_event(proxy, "reloaded", 10)
    assert server_of(group, idle) == 1
    idle.close()
