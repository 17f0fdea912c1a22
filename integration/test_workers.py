"""``[proxy] workers = 2``: two worker processes on one port under a supervisor, against the
real server.

What a user relies on: both workers serve the port; client ids stay unique; the server never
sees more connections than the pool's budget from both together; SIGUSR1 gives one summed set
of figures; SIGHUP reaches every worker; a worker killed with SIGKILL is replaced while the
other keeps its clients; SIGTERM ends every process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pymysql
import pytest

from integration import servers


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def events(proxy: servers.ProxyProcess, name: str) -> list[dict[str, Any]]:
    return proxy.events(name)


def wait_for(condition: Any, timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def workers(make_proxy: Any) -> servers.ProxyProcess:
    proxy = make_proxy(proxy={"workers": 2}, pool={"max_connections": 4},
                       log={"level": "info", "format": "json"})
    wait_for(lambda: len(events(proxy, "listening")) == 2, what="both workers listening")
    return proxy


def test_both_workers_serve_the_port_with_unique_ids(workers: servers.ProxyProcess) -> None:
    assert len(children(workers.process.pid)) == 2
    conns = [workers.connect() for _ in range(24)]
    try:
        ids = [conn.thread_id() for conn in conns]
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
    finally:
        for conn in conns:
            conn.close()
    assert len(set(ids)) == len(ids)
    # Worker 0 gives odd ids, worker 1 even ones: both took connections (the kernel spreads
    # them by address hash; 24 all to one worker would happen once in 8 million runs).
    assert {i % 2 for i in ids} == {0, 1}, ids


def test_the_server_never_sees_more_than_the_budget(workers: servers.ProxyProcess,
                                                    db_server: servers.DbServer) -> None:
    """60 clients at once, each running transactions, on a pool budget of 4 shared by two
    workers: the server's connections of the user never exceed 4."""

    def client(index: int) -> int:
        conn = workers.connect()
        try:
            with conn.cursor() as cur:
                for step in range(5):
                    cur.execute("BEGIN")
                    cur.execute("SELECT %s", (index * 10 + step,))
                    cur.fetchone()
                    cur.execute("COMMIT")
            return 1
        finally:
            conn.close()

    watch = servers.PeakWatch(db_server, ignore_present=True)  # no pool is made before
    try:
        with ThreadPoolExecutor(60) as pool:
            done = sum(pool.map(client, range(60)))
    finally:
        peak = watch.stop()
    assert done == 60
    assert 1 <= peak <= 4, str(watch)


def test_sigusr1_logs_one_summed_set_and_sighup_reaches_every_worker(
        workers: servers.ProxyProcess) -> None:
    conns = [workers.connect() for _ in range(10)]
    try:
        workers.process.send_signal(signal.SIGUSR1)
        summed = wait_for(lambda: [e for e in events(workers, "client_stats")
                                   if e.get("workers") == 2], what="summed client_stats")
        assert summed[-1]["answered"] == 2
        # The readiness probe's connections count too: at least the 10 open here.
        assert summed[-1]["open"] == 10 and summed[-1]["accepted"] >= 10
        pools = [e for e in events(workers, "pool_stats") if e.get("workers") == 2]
        assert pools and pools[-1]["max_size"] == 4  # 2 + 2: the shares add up to the budget
        workers.process.send_signal(signal.SIGHUP)
        reloaded = wait_for(lambda: {e.get("worker") for e in events(workers, "reloaded")}
                            if len(events(workers, "reloaded")) >= 2 else None,
                            what="both workers reloaded")
        assert reloaded == {0, 1}
    finally:
        for conn in conns:
            conn.close()


def test_a_killed_worker_is_replaced_and_the_other_keeps_its_clients(
        workers: servers.ProxyProcess) -> None:
    conns = [workers.connect() for _ in range(16)]
    victim_index = 1
    # Which pid each worker is: the supervisor lists them at start, by index.
    started = events(workers, "workers_started")[-1]["pids"]
    victim = started[victim_index]
    os.kill(victim, signal.SIGKILL)
    died = wait_for(lambda: events(workers, "worker_died"), what="worker_died")
    assert died[-1]["worker"] == victim_index and died[-1]["signal"] == signal.SIGKILL
    wait_for(lambda: len(children(workers.process.pid)) == 2 and victim not in
             children(workers.process.pid), what="a new worker")
    survivors = lost = 0
    for conn in conns:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            survivors += 1
            assert conn.thread_id() % 2 == 1  # worker 0's clients, untouched
        except pymysql.err.OperationalError:
            lost += 1
            assert conn.thread_id() % 2 == 0
        finally:
            conn.close()
    assert survivors and survivors + lost == 16
    # The replacement serves: new clients reach both workers again.
    wait_for(lambda: len(events(workers, "listening")) == 3, what="the new worker listening")
    ids = set()
    for _ in range(24):
        conn = workers.connect()
        ids.add(conn.thread_id() % 2)
        conn.close()
    assert ids == {0, 1}


def test_sigterm_ends_every_process(workers: servers.ProxyProcess) -> None:
    pids = children(workers.process.pid)
    assert len(pids) == 2
    # twistd re-raises the SIGTERM that stopped it once everything has ended (not -9: it
    # ended within the timeout, workers drained).
    assert workers.stop(timeout=20) in (0, -signal.SIGTERM)
    assert [e["worker"] for e in events(workers, "worker_ended")] in ([0, 1], [1, 0])
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_budget_moves_to_the_worker_whose_clients_wait(make_proxy: Any,
                                                       db_server: servers.DbServer) -> None:
    """A budget of 2 split 1 + 1: two transactions at once from clients of one worker both
    run, because the other worker gives up its idle connection; then a client of the other
    worker gets a unit back as soon as one is idle. The server never sees more than 2."""
    proxy = make_proxy(proxy={"workers": 2}, pool={"max_connections": 2, "borrow_timeout": 30},
                       log={"level": "info", "format": "json"})
    wait_for(lambda: len(events(proxy, "listening")) == 2, what="both workers listening")
    pool: list[pymysql.connections.Connection] = []
    by_worker: dict[int, list[pymysql.connections.Connection]] = {0: [], 1: []}
    while len(by_worker[0]) < 1 or len(by_worker[1]) < 2:
        conn = proxy.connect(read_timeout=20)
        pool.append(conn)
        by_worker[(conn.thread_id() - 1) % 2].append(conn)
        assert len(pool) < 200
    (other,), (first, second) = by_worker[0][:1], by_worker[1][:2]

    watch = servers.PeakWatch(db_server)
    try:
        with other.cursor() as cur:   # worker 0 opens its one connection, then idles it
            cur.execute("SELECT 1")
        with first.cursor() as cur:   # worker 1's own unit, held by a transaction
            cur.execute("BEGIN")
            cur.execute("SELECT 1")
        started = time.monotonic()
        with second.cursor() as cur:  # needs worker 0's unit
            cur.execute("BEGIN")
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)
        assert time.monotonic() - started < 10
        # Both units now serve worker 1's transactions: worker 0's client waits until one
        # is idle, then gets it back.
        result: list[Any] = []
        waiting = threading.Thread(target=lambda: result.append(_select(other)))
        waiting.start()
        time.sleep(0.5)
        assert not result
        with first.cursor() as cur:
            cur.execute("COMMIT")
        waiting.join(10)
        assert result == [(3,)]
        with second.cursor() as cur:
            cur.execute("COMMIT")
    finally:
        peak = watch.stop()
        for conn in pool:
            conn.close()
    assert 1 <= peak <= 2, str(watch)
    proxy.process.send_signal(signal.SIGUSR1)
    summed = wait_for(lambda: [e for e in events(proxy, "pin_summary") if e.get("workers") == 2],
                      what="summed stats")
    assert summed[-1]["budget_moves"] >= 2


def _select(conn: pymysql.connections.Connection) -> Any:
    with conn.cursor() as cur:
        cur.execute("SELECT 3")
        return cur.fetchone()


def test_the_metrics_page_sums_the_workers(make_proxy: Any) -> None:
    import urllib.request

    from pyproxy.sandbox import free_port

    port = free_port()
    proxy = make_proxy(proxy={"workers": 2}, pool={"max_connections": 4},
                       metrics={"listen": f"tcp:{port}:interface=127.0.0.1"},
                       log={"level": "info", "format": "json"})
    wait_for(lambda: len(events(proxy, "listening")) == 2, what="both workers listening")
    conns = [proxy.connect() for _ in range(12)]
    try:
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        assert {(c.thread_id() - 1) % 2 for c in conns} == {0, 1}
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        for conn in conns:
            conn.close()
    values = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values["pyproxy_workers"] == 2 and values["pyproxy_workers_answered"] == 2
    assert values["pyproxy_client_connections"] == 12
    # The readiness probe's SELECT 1 aside, every query the clients sent is counted once.
    queries = sum(v for k, v in values.items()
                  if k.startswith("pyproxy_client_commands_total") and "COM_QUERY" in k)
    assert queries >= 12
    shares = [v for k, v in values.items() if k.startswith("pyproxy_backend_connections_max")]
    assert shares and sum(shares) == 4  # 2 + 2: the budget, not twice it


def test_kill_reaches_a_client_in_the_other_worker(workers: servers.ProxyProcess) -> None:
    by_worker: dict[int, list[pymysql.connections.Connection]] = {0: [], 1: []}
    opened = []
    while not (by_worker[0] and by_worker[1]):
        conn = workers.connect(read_timeout=30)
        opened.append(conn)
        by_worker[(conn.thread_id() - 1) % 2].append(conn)
        assert len(opened) < 100
    sleeper, killer = by_worker[0][0], by_worker[1][0]
    result: list[Any] = []

    def sleep() -> None:
        try:
            with sleeper.cursor() as cur:
                cur.execute("SELECT SLEEP(20)")
                result.append(cur.fetchone()[0])
        except pymysql.err.OperationalError as exc:
            result.append(exc.args[0])

    started = time.monotonic()
    thread = threading.Thread(target=sleep)
    thread.start()
    time.sleep(0.5)
    try:
        with killer.cursor() as cur:
            cur.execute(f"KILL QUERY {sleeper.thread_id()}")
        thread.join(10)
        # The statement was stopped: SLEEP returns 1, or the client gets 1317, as directly.
        assert result in ([1], [1317]) and time.monotonic() - started < 10
        with killer.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as unknown:
                cur.execute(f"KILL {sleeper.thread_id() + 1000 * 2}")
            assert unknown.value.args[0] == 1094
            cur.execute(f"KILL {sleeper.thread_id()}")
        with pytest.raises(pymysql.err.OperationalError):
            with sleeper.cursor() as cur:
                cur.execute("SELECT 1")
    finally:
        for conn in opened:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the killed one is closed already
                pass
