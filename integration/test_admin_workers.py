"""The admin console of a real pyproxy with ``[proxy] workers = 2`` in front of a sandbox server:
one console, on the supervisor, for both workers, driven from PyMySQL and the ``mariadb`` CLI.

What an operator relies on: SHOW CLIENTS / POOLS / SERVERS list the connections of both workers
(a ``worker`` column says whose); SHOW STATS adds both up; PAUSE holds the clients of both;
KILL CLIENT closes a client whichever worker serves it; RELOAD reaches the supervisor and both
workers; SET debug_statements_for reaches both; SHUTDOWN ends every process; a worker that does
not answer is named in SHOW WARNINGS and the console does not hang on it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pymysql
import pymysql.cursors
import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.test_admin import (ADMIN_PASSWORD, ADMIN_USER, admin_port, admin_rows, admin_table, cli,
                                    cli_table, console, needs_cli)
from integration.test_workers import children, wait_for
from pyproxy.sandbox import dump_toml

pytestmark = pytest.mark.usefixtures("bounded")

Conn = pymysql.connections.Connection


@pytest.fixture
def pyproxy(make_proxy: Any) -> servers.ProxyProcess:
    proxy = make_proxy(proxy={"workers": 2, "drain_timeout": 20}, pool={"max_connections": 4},
                       admin=admin_table(), log={"level": "info", "format": "json"})
    wait_for(lambda: len(proxy.events("listening")) == 2, what="both workers listening")
    return proxy


def worker_of(conn: Conn) -> int:
    """Which worker serves a client: worker i gives ids i+1, i+1+2, ... (pyproxy.proxy)."""
    return (conn.thread_id() - 1) % 2


def clients_of_both(proxy: servers.ProxyProcess, each: int, **kwargs: Any) -> tuple[list[Conn], dict[int, list[Conn]]]:
    """Connects until each worker serves at least ``each`` clients (the kernel spreads new
    connections over the workers); returns them all, and ``each`` per worker."""
    opened: list[Conn] = []
    by_worker: dict[int, list[Conn]] = {0: [], 1: []}
    while min(len(conns) for conns in by_worker.values()) < each:
        conn = proxy.connect(read_timeout=30, **kwargs)
        opened.append(conn)
        by_worker[worker_of(conn)].append(conn)
        assert len(opened) < 200
    return opened, {index: conns[:each] for index, conns in by_worker.items()}


def close_all(conns: list[Conn]) -> None:
    for conn in conns:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - killed ones are closed already
            pass


def select(conn: Conn, value: int) -> Any:
    with conn.cursor() as cursor:
        cursor.execute("SELECT %s", (value,))
        return cursor.fetchone()[0]


def test_every_table_from_pymysql_covers_both_workers(pyproxy: servers.ProxyProcess) -> None:
    """Each table against what the clients through the two workers are: typed values, a
    worker column, the counters of both."""
    opened, _ = clients_of_both(pyproxy, 2)
    try:
        for index, conn in enumerate(opened):
            assert select(conn, index) == index
        ids = {conn.thread_id(): worker_of(conn) for conn in opened}
        clients = admin_rows(pyproxy, "SHOW CLIENTS")
        assert {row["id"]: row["worker"] for row in clients} == ids
        assert all(row["user"] == servers.APP_USER and isinstance(row["age_seconds"], float) for row in clients)
        pools = [row for row in admin_rows(pyproxy, "SHOW POOLS") if row["user"] == servers.APP_USER]
        assert sorted(row["worker"] for row in pools) == [0, 1]
        assert sum(row["max_connections"] for row in pools) == 4  # 2 + 2: the budget, shared
        for row in pools:
            served = sum(1 for worker in ids.values() if worker == row["worker"])
            assert row["borrows"] >= served and isinstance(row["borrow_wait_p99_ms"], float)
        backends = admin_rows(pyproxy, "SHOW SERVERS")
        assert {row["worker"] for row in backends} == {0, 1}
        assert all(row["user"] == servers.APP_USER and isinstance(row["id"], int) for row in backends)
        stats = {row["name"]: row["value"] for row in admin_rows(pyproxy, "SHOW STATS")}
        assert stats["client_connections"] == len(opened) and stats["com_query"] >= len(opened)
        assert stats["workers"] == 2 and stats["workers_answered"] == 2 and stats["worker_restarts"] == 0
        assert stats["backend_borrows"] >= len(opened) and stats["paused"] == 0
        [target] = admin_rows(pyproxy, "SHOW TARGETS")
        assert target["writer"] == 1 and target["role"] == "writer"
        [version] = admin_rows(pyproxy, "SHOW VERSION")
        assert version["server"] == opened[0].get_server_info()
        config = {row["key"]: row["value"] for row in admin_rows(pyproxy, "SHOW CONFIG")}
        assert config["proxy.workers"] == "2" and config["admin.password"] == "********"
        assert ADMIN_PASSWORD not in repr(config) and servers.APP_PASSWORD not in repr(config)
        assert len(admin_rows(pyproxy, "SHOW HELP")) >= 13
        with console(pyproxy) as admin, admin.cursor() as cursor:
            cursor.execute("SHOW CLIENTS")
            assert cursor.warning_count == 0  # both answered
    finally:
        close_all(opened)


@needs_cli
def test_every_command_from_the_cli(pyproxy: servers.ProxyProcess) -> None:
    opened, by_worker = clients_of_both(pyproxy, 2, autocommit=True)
    try:
        for conn in opened:
            select(conn, 1)
        clients = cli_table(pyproxy, "SHOW CLIENTS")
        assert {int(row["id"]): int(row["worker"]) for row in clients} == \
            {conn.thread_id(): worker_of(conn) for conn in opened}
        assert {row["worker"] for row in cli_table(pyproxy, "SHOW POOLS")} == {"0", "1"}
        assert {row["worker"] for row in cli_table(pyproxy, "SHOW SERVERS")} == {"0", "1"}
        stats = {row["name"]: int(row["value"]) for row in cli_table(pyproxy, "SHOW STATS")}
        assert stats["client_connections"] == len(opened) and stats["workers_answered"] == 2
        assert cli_table(pyproxy, "SHOW TARGETS")[0]["writer"] == "1"
        assert cli_table(pyproxy, "SHOW VERSION")[0]["pyproxy"]
        config = {row["key"]: row["value"] for row in cli_table(pyproxy, "SHOW CONFIG")}
        assert config["users[0].password"] == "********" and config["proxy.workers"] == "2"
        assert cli(pyproxy, "PAUSE").returncode == 0
        assert {row["name"]: row["value"] for row in cli_table(pyproxy, "SHOW STATS")}["paused"] == "1"
        assert all(row["paused"] == "1" for row in cli_table(pyproxy, "SHOW POOLS"))
        assert cli(pyproxy, "RESUME").returncode == 0
        assert all(row["paused"] == "0" for row in cli_table(pyproxy, "SHOW POOLS"))
        assert cli(pyproxy, "SET debug_statements_for = 0").returncode == 0
        assert cli(pyproxy, "RELOAD").returncode == 0
        for index in (0, 1):
            victim = by_worker[index][0]
            assert cli(pyproxy, f"KILL CLIENT {victim.thread_id()}").returncode == 0
            with pytest.raises(pymysql.err.OperationalError):
                select(victim, 2)
            assert select(by_worker[index][1], 3) == 3  # its neighbour goes on
        unknown = cli(pyproxy, "KILL CLIENT 999999")
        assert unknown.returncode != 0 and b"1094" in unknown.stderr
        remaining = {int(row["id"]) for row in cli_table(pyproxy, "SHOW CLIENTS")}
        assert remaining == {conn.thread_id() for conn in opened} - {by_worker[0][0].thread_id(),
                                                                    by_worker[1][0].thread_id()}
    finally:
        close_all(opened)


def test_pause_holds_the_clients_of_both_workers_until_resume(pyproxy: servers.ProxyProcess) -> None:
    opened, by_worker = clients_of_both(pyproxy, 1, autocommit=True)
    waiting = [by_worker[0][0], by_worker[1][0]]
    try:
        for conn in waiting:
            select(conn, 1)
        with console(pyproxy) as admin, admin.cursor() as cursor:
            cursor.execute("PAUSE")
            results: dict[int, float] = {}
            started = time.monotonic()

            def run(index: int, conn: Conn) -> None:
                assert select(conn, 2) == 2
                results[index] = time.monotonic() - started

            threads = [threading.Thread(target=run, args=(index, conn)) for index, conn in enumerate(waiting)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            assert results == {}  # both held, whichever worker serves them
            cursor.execute("RESUME")
            for thread in threads:
                thread.join(10)
        assert sorted(results) == [0, 1] and min(results.values()) >= 0.9
    finally:
        close_all(opened)
    assert {event["worker"] for event in pyproxy.events("paused")} == {0, 1}
    assert {event["worker"] for event in pyproxy.events("resumed")} == {0, 1}


def test_kill_client_closes_a_client_of_either_worker(pyproxy: servers.ProxyProcess) -> None:
    """KILL CLIENT from one console connection closes a client in a transaction in worker 0
    and one in worker 1; an unknown id of either worker is 1094."""
    opened, by_worker = clients_of_both(pyproxy, 2)
    try:
        with console(pyproxy) as admin, admin.cursor() as cursor:
            for index in (0, 1):
                victim, bystander = by_worker[index]
                with victim.cursor() as app:
                    app.execute("BEGIN")
                    app.execute("SELECT 1")
                [row] = [r for r in admin_rows(pyproxy, "SHOW CLIENTS") if r["id"] == victim.thread_id()]
                assert row["worker"] == index and row["in_transaction"] == 1
                cursor.execute(f"KILL CLIENT {victim.thread_id()}")
                with pytest.raises(pymysql.err.OperationalError):
                    select(victim, 1)
                assert select(bystander, 5) == 5
            for unknown in (999999, 999998):  # one of each worker's
                with pytest.raises(pymysql.err.OperationalError) as raised:
                    cursor.execute(f"KILL CLIENT {unknown}")
                assert raised.value.args[0] == 1094
        listed = {row["id"] for row in admin_rows(pyproxy, "SHOW CLIENTS")}
        assert not listed & {by_worker[0][0].thread_id(), by_worker[1][0].thread_id()}
    finally:
        close_all(opened)


def test_reload_reaches_the_supervisor_and_both_workers(pyproxy: servers.ProxyProcess) -> None:
    """RELOAD: a new budget shows in both workers' pools, a new admin password is the
    console's at the next login; a bad file is error 1105 and nothing changes."""
    opened, _ = clients_of_both(pyproxy, 1)
    try:
        for conn in opened:
            select(conn, 1)
        config = dict(pyproxy.config, pool={**pyproxy.config["pool"], "max_connections": 6},
                      admin={**pyproxy.config["admin"], "password": "console-pw-8"})
        pyproxy.config_path.write_text(dump_toml(config))
        with console(pyproxy) as admin, admin.cursor() as cursor:
            cursor.execute("RELOAD")
        assert sorted(event["worker"] for event in pyproxy.events("reloaded")) == [0, 1]
        with pymysql.connect(host="127.0.0.1", port=admin_port(pyproxy), user=ADMIN_USER,
                             password="console-pw-8", ssl_disabled=True,
                             cursorclass=pymysql.cursors.DictCursor) as admin, admin.cursor() as cursor:
            cursor.execute("SHOW POOLS")
            pools = [row for row in cursor.fetchall() if row["user"] == servers.APP_USER]
            assert sum(row["max_connections"] for row in pools) == 6
            pyproxy.config_path.write_text(dump_toml(dict(config, pool={**config["pool"], "max_connections": 0})))
            with pytest.raises(pymysql.err.OperationalError) as raised:
                cursor.execute("RELOAD")
            assert raised.value.args[0] == 1105 and "max_connections" in raised.value.args[1]
            cursor.execute("SHOW POOLS")
            assert sum(row["max_connections"] for row in cursor.fetchall()
                       if row["user"] == servers.APP_USER) == 6
        with pytest.raises(pymysql.err.OperationalError):
            console(pyproxy)  # the old password no longer opens it
    finally:
        close_all(opened)


def test_debug_statements_for_reaches_both_workers(pyproxy: servers.ProxyProcess) -> None:
    opened, by_worker = clients_of_both(pyproxy, 1)
    try:
        with console(pyproxy) as admin, admin.cursor() as cursor:
            cursor.execute("SET debug_statements_for = 30")
            cursor.execute("SHOW STATS")
            left = dict(cursor.fetchall())["debug_statements_seconds_left"]
            assert 25 <= left <= 30
        for index in (0, 1):
            select(by_worker[index][0], 40 + index)
        logged = wait_for(lambda: {e.get("worker") for e in drivers.log_events(pyproxy, "statement")} == {0, 1},
                          what="statements logged by both workers")
        assert logged
        assert all("40" not in event["digest"] for event in drivers.log_events(pyproxy, "statement"))
    finally:
        close_all(opened)


def test_a_stopped_worker_is_named_and_does_not_hang_the_console(pyproxy: servers.ProxyProcess) -> None:
    """Worker 1 stopped (SIGSTOP): the console answers with worker 0's part after its
    timeout, the warning count says so and SHOW WARNINGS names worker 1."""
    opened, by_worker = clients_of_both(pyproxy, 1)
    stopped = pyproxy.events("workers_started")[-1]["pids"][1]
    assert stopped in children(pyproxy.process.pid)
    os.kill(stopped, signal.SIGSTOP)
    try:
        with console(pyproxy, read_timeout=30) as admin, admin.cursor() as cursor:
            started = time.monotonic()
            cursor.execute("SHOW CLIENTS")
            rows = cursor.fetchall()
            assert time.monotonic() - started < 20
            assert cursor.warning_count == 1
            assert {row[-1] for row in rows} == {0}
            assert by_worker[0][0].thread_id() in {row[0] for row in rows}
            cursor.execute("SHOW WARNINGS")
            [(level, code, message)] = cursor.fetchall()
            assert (level, code) == ("Warning", 1105) and "worker 1 did not answer" in message
            cursor.execute("SHOW STATS")
            stats = dict(cursor.fetchall())
            assert stats["workers"] == 2 and stats["workers_answered"] == 1
        if drivers.mariadb_client() is not None:
            shown = cli(pyproxy, "SHOW POOLS", "--show-warnings")
            assert shown.returncode == 0 and b"worker 1 did not answer" in shown.stdout + shown.stderr
    finally:
        os.kill(stopped, signal.SIGCONT)
        close_all(opened)
    assert pyproxy.events("admin_partial_answer")


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "immediate"])
def test_shutdown_ends_every_process(make_proxy: Any, graceful: bool) -> None:
    """SHUTDOWN GRACEFUL (from PyMySQL) lets an open transaction in each worker finish;
    SHUTDOWN (from the CLI when there is one) closes them at once; the supervisor and
    both workers end, with exit code 0."""
    proxy = make_proxy(proxy={"workers": 2, "drain_timeout": 20}, pool={"max_connections": 4},
                       admin=admin_table(), log={"level": "info", "format": "json"})
    wait_for(lambda: len(proxy.events("listening")) == 2, what="both workers listening")
    pids = children(proxy.process.pid)
    opened, by_worker = clients_of_both(proxy, 1)
    try:
        for index in (0, 1):
            with by_worker[index][0].cursor() as app:
                app.execute("BEGIN")
                app.execute("SELECT 1")
        started = time.monotonic()
        if graceful or drivers.mariadb_client() is None:
            with console(proxy) as admin, admin.cursor() as cursor:
                cursor.execute("SHUTDOWN GRACEFUL" if graceful else "SHUTDOWN")
        else:
            result = cli(proxy, "SHUTDOWN")
            assert result.returncode == 0, result.stderr
        if graceful:
            time.sleep(0.5)
            assert proxy.process.poll() is None  # waiting for the transactions
            for index in (0, 1):
                with by_worker[index][0].cursor() as app:
                    app.execute("COMMIT")
        else:
            # The answer comes before the workers hear of it; well before drain_timeout
            # they are gone, and their clients' connections with them.
            assert proxy.process.wait(timeout=10) == 0
            for index in (0, 1):
                with pytest.raises(pymysql.err.OperationalError):
                    select(by_worker[index][0], 1)
        assert proxy.process.wait(timeout=20) == 0
        assert time.monotonic() - started < 20
    finally:
        close_all(opened)
    assert drivers.log_events(proxy, "shutdown_requested")[0]["graceful"] is graceful
    assert sorted(event["worker"] for event in proxy.events("worker_ended")) == [0, 1]
    for pid in pids:
        assert wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}")
                        or "Z" in open(f"/proc/{pid}/stat").read().split()[2], what=f"worker {pid} ended")
