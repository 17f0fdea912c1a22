"""Fault tests against a real server: crash and restart, killed connections, no lost money.

Each is bounded in time and stops by itself; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import random
import threading
import time

import pymysql

from integration import servers

ACCOUNTS = 20


def proxy_dir(make_proxy):
    """A fresh folder for a proxy started by hand (next to the fixture's ones)."""
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="pyproxy-fault-"))
START_BALANCE = 1000
# "Under load from 200 clients": most idle between transactions, the rest moving money.
IDLE_CLIENTS = 160
BANK_CLIENTS = 40


def setup_bank(db_server) -> None:
    root = db_server.connect(database=servers.APP_DATABASE)
    with root.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS accounts (id INT PRIMARY KEY, balance INT NOT NULL) "
                    "ENGINE=InnoDB")
        cur.execute("CREATE TABLE IF NOT EXISTS transfers (id VARCHAR(40) PRIMARY KEY, "
                    "src INT, dst INT, amount INT) ENGINE=InnoDB")
        cur.execute("DELETE FROM accounts")
        cur.execute("DELETE FROM transfers")
        cur.executemany("INSERT INTO accounts VALUES (%s, %s)",
                        [(i, START_BALANCE) for i in range(ACCOUNTS)])
    root.close()


def check_bank(db_server, committed: set[str]) -> None:
    """The sum is unchanged, and every transfer a client saw committed is there, once."""
    root = db_server.connect(database=servers.APP_DATABASE)
    with root.cursor() as cur:
        cur.execute("SELECT SUM(balance) FROM accounts")
        assert int(cur.fetchone()[0]) == ACCOUNTS * START_BALANCE
        cur.execute("SELECT id FROM transfers")
        stored = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT COALESCE(SUM(amount), 0) FROM transfers")
    root.close()
    assert committed <= stored, sorted(committed - stored)[:5]


class Bank:
    """Clients moving money in transactions until told to stop."""

    def __init__(self, proxy, clients: int) -> None:
        self.proxy = proxy
        self.committed: set[str] = set()
        self.errors: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]

    def run(self, n: int) -> None:
        rng = random.Random(n)
        conn = None
        count = 0
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self.proxy.connect(autocommit=False, read_timeout=30)
                src, dst = rng.sample(range(ACCOUNTS), 2)
                amount = rng.randint(1, 20)
                transfer = f"{n}-{count}"
                count += 1
                with conn.cursor() as cur:
                    cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, src))
                    cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, dst))
                    cur.execute("INSERT INTO transfers VALUES (%s, %s, %s, %s)", (transfer, src, dst, amount))
                conn.commit()
                self.committed.add(transfer)
            except pymysql.MySQLError as exc:
                self.errors.append(exc.args[0] if exc.args else 0)
                try:
                    if conn is not None:
                        conn.close()
                except Exception:  # noqa: BLE001 - the connection may already be gone
                    pass
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def __enter__(self) -> "Bank":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def test_server_crash_and_restart(make_proxy, controllable_db_server, capsys) -> None:
    """kill -9 the server under load and start it again: idle clients carry on without an
    error, in-flight transactions get errors (never a false commit), and no money is lost."""
    db = controllable_db_server
    proxy = make_proxy(pool={"max_connections": 8, "borrow_timeout": 30}, health={"interval": 0.5})
    setup_bank(db)
    idle = [proxy.connect() for _ in range(IDLE_CLIENTS)]
    for conn in idle:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    with Bank(proxy, BANK_CLIENTS) as bank:
        time.sleep(1.5)
        db.kill()
        waited: list[object] = []

        def during_downtime() -> None:
            # Sent while the server is down: it waits for a connection, then runs.
            with idle[1].cursor() as cur:
                cur.execute("SELECT 7")
                waited.append(cur.fetchone()[0])
                waited.append(time.monotonic())

        waiter = threading.Thread(target=during_downtime)
        time.sleep(0.2)
        waiter.start()
        time.sleep(1.0)
        restarted = time.monotonic()
        db.start()  # returns once the sandbox has seen the server answer
        ready = time.monotonic()
        waiter.join(timeout=30)
        assert waited[0] == 7
        first_success = waited[1]
        time.sleep(1.5)
    for conn in idle:
        with conn.cursor() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone()[0] == 2
        conn.close()
    check_bank(db, bank.committed)
    assert len(bank.committed) > 0
    with capsys.disabled():
        print(f"\n[fault] server restart: first statement through pyproxy "
              f"{(first_success - restarted) * 1000:.0f} ms after mariadbd was started again "
              f"(the test's own readiness check took {(ready - restarted) * 1000:.0f} ms); "
              f"{len(bank.committed)} transfers committed, {len(bank.errors)} client errors "
              f"({sorted(set(bank.errors))}), {IDLE_CLIENTS} idle clients: 0 errors")


def test_server_kills_pyproxy_connections(make_proxy, db_server, capsys) -> None:
    """An admin KILLs every pyproxy connection on the server, twice, under load: idle
    clients carry on, in-flight transactions get errors, no money is lost."""
    proxy = make_proxy(pool={"max_connections": 8, "borrow_timeout": 30})
    setup_bank(db_server)
    idle = [proxy.connect() for _ in range(IDLE_CLIENTS)]
    with Bank(proxy, BANK_CLIENTS) as bank:
        for _ in range(2):
            time.sleep(1.0)
            root = db_server.connect()
            with root.cursor() as cur:
                cur.execute("SELECT id FROM information_schema.processlist WHERE user = %s",
                            (servers.APP_USER,))
                for (thread,) in cur.fetchall():
                    try:
                        cur.execute(f"KILL {int(thread)}")
                    except pymysql.MySQLError:
                        pass  # already gone
            root.close()
        time.sleep(1.0)
    for conn in idle:
        with conn.cursor() as cur:
            cur.execute("SELECT 3")
            assert cur.fetchone()[0] == 3
        conn.close()
    check_bank(db_server, bank.committed)
    with capsys.disabled():
        print(f"\n[fault] server KILLs: {len(bank.committed)} transfers committed, "
              f"{len(bank.errors)} client errors ({sorted(set(bank.errors))}), {IDLE_CLIENTS} idle clients: 0 errors")


def wait_for_state(proxy: servers.ProxyProcess, state: str, timeout: float,
                   previous: str | None = None) -> bool:
    """Waits for a target_state event into ``state`` (from ``previous``, if given)
    in pyproxy's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proxy.log_text().splitlines():
            if '"target_state"' in line:
                event = json.loads(line)
                if event.get("state") == state and previous in (None, event.get("previous")):
                    return True
        time.sleep(0.1)
    return False


def test_stalled_server(make_proxy, db_server) -> None:
    """A server that stops answering (a relay that stops forwarding): a borrower gets an
    error after borrow_timeout naming the unreachable backend, the probes mark the
    server down, and pyproxy recovers by itself (server up again) once traffic flows."""
    from integration.relay import Relay

    relay = Relay((db_server.host, db_server.port))

    class Relayed:
        host, port = "127.0.0.1", relay.port

        def create_user(self, *args, **kwargs) -> None:
            db_server.create_user(*args, **kwargs)

    try:
        proxy = servers.start_proxy(Relayed(), proxy_dir(make_proxy),
                                    backend={"connect_timeout": 1},
                                    pool={"borrow_timeout": 3},
                                    health={"interval": 0.5, "connect_timeout": 1})
        client = proxy.connect(read_timeout=30)
        with client.cursor() as cur:
            cur.execute("SELECT 1")
        assert wait_for_state(proxy, "up", 10, previous="unknown")  # the first probe answered
        relay.stall()
        time.sleep(2.0)  # the health checker's pings go unanswered: connections are dropped
        started = time.monotonic()
        with client.cursor() as cur:
            try:
                cur.execute("SELECT 2")
                raise AssertionError("a statement ran on a stalled server")
            except pymysql.MySQLError as exc:
                assert exc.args[0] in (9001, 2013), exc
        assert time.monotonic() - started < 10
        # The probes (1 s deadline, two failures in a row) mark the server down.
        assert wait_for_state(proxy, "down", 10, previous="up"), proxy.log_text()[-3000:]
        relay.resume()
        assert wait_for_state(proxy, "up", 10, previous="down"), proxy.log_text()[-3000:]
        client = proxy.connect(read_timeout=30)
        with client.cursor() as cur:
            cur.execute("SELECT 3")
            assert cur.fetchone()[0] == 3
        client.close()
        log = proxy.log_text()
        assert "backend_down" in log and "backend_up" in log
        proxy.stop()
    finally:
        relay.close()


def _admin_kill(db_server, thread: int) -> None:
    root = db_server.connect()
    try:
        with root.cursor() as cur:
            cur.execute(f"KILL {int(thread)}")
    finally:
        root.close()


def test_lost_transaction_is_rolled_back_and_must_be_acknowledged(make_proxy, db_server) -> None:
    """A transaction's backend connection killed, while the client waits between statements
    and while a statement runs: the client keeps its connection, is told the transaction was
    rolled back, gets 9002 for anything but ROLLBACK (so its COMMIT cannot succeed), and
    after ROLLBACK carries on; the server holds none of the transaction's writes."""
    proxy = make_proxy()
    setup_bank(db_server)
    client = proxy.connect(read_timeout=30)
    try:
        for mid_statement in (False, True):
            with client.cursor() as cur:
                client.begin()
                cur.execute("UPDATE accounts SET balance = balance - 100 WHERE id = 0")
                cur.execute("SELECT @@pseudo_thread_id")  # the server's thread id
                thread = cur.fetchone()[0]
                if mid_statement:
                    killer = threading.Timer(0.5, _admin_kill, (db_server, thread))
                    killer.start()
                    try:
                        cur.execute("SELECT SLEEP(10)")
                        raise AssertionError("the statement outlived its connection")
                    except pymysql.MySQLError as exc:
                        lost = exc
                    killer.join()
                else:
                    _admin_kill(db_server, thread)
                    time.sleep(0.3)
                    try:
                        cur.execute("UPDATE accounts SET balance = balance + 100 WHERE id = 1")
                        raise AssertionError("a statement ran in a transaction that is gone")
                    except pymysql.MySQLError as exc:
                        lost = exc
                assert lost.args[0] == 2013, lost
                assert "the transaction was rolled back" in lost.args[1], lost
                for sql in ("UPDATE accounts SET balance = balance + 100 WHERE id = 1", "COMMIT"):
                    try:
                        cur.execute(sql)
                        raise AssertionError(f"{sql} ran after a lost transaction")
                    except pymysql.MySQLError as exc:
                        assert exc.args[0] == 9002, exc
                client.rollback()
                cur.execute("SELECT SUM(balance), MIN(balance) FROM accounts")
                total, lowest = cur.fetchone()
                assert (int(total), lowest) == (ACCOUNTS * START_BALANCE, START_BALANCE)
    finally:
        client.close()
