"""Limits that protect the database and pyproxy: client cap, idle clients, runaway statements."""

from __future__ import annotations

import time

import pymysql
import pytest

from integration import servers


def test_client_past_the_cap_gets_1040(make_proxy) -> None:
    """With max_client_connections reached, the next client gets 1040 Too many connections."""
    proxy = make_proxy(proxy={"max_client_connections": 2})
    first, second = proxy.connect(), proxy.connect()
    with pytest.raises(pymysql.MySQLError) as info:
        proxy.connect()
    assert info.value.args[0] == 1040
    first.close()
    time.sleep(0.2)
    third = proxy.connect()
    with third.cursor() as cur:
        cur.execute("SELECT 1")
    third.close()
    second.close()


def test_idle_client_is_disconnected_and_its_transaction_rolled_back(make_proxy, db_server) -> None:
    """A client idle past idle_client_timeout is disconnected; the transaction it left open
    is rolled back, never committed."""
    proxy = make_proxy(proxy={"idle_client_timeout": 1})
    setup = proxy.connect()
    with setup.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS idle_tx (v INT)")
        cur.execute("DELETE FROM idle_tx")
    setup.close()
    idle = proxy.connect(autocommit=False)
    with idle.cursor() as cur:
        cur.execute("INSERT INTO idle_tx VALUES (1)")
    time.sleep(2.5)
    with pytest.raises(pymysql.MySQLError):
        with idle.cursor() as cur:
            cur.execute("SELECT 1")
    root = db_server.connect()
    with root.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {servers.APP_DATABASE}.idle_tx")
        assert cur.fetchone()[0] == 0
    root.close()
    assert "idle_client_timeout" in proxy.log_text()


def test_query_timeout_stops_a_runaway_statement(make_proxy) -> None:
    """A statement past query_timeout is stopped with KILL QUERY on the server; the client
    gets the server's answer quickly and its session goes on."""
    proxy = make_proxy(proxy={"query_timeout": 1})
    conn = proxy.connect()
    started = time.monotonic()
    with conn.cursor() as cur:
        try:
            cur.execute("SELECT SLEEP(20)")
            assert cur.fetchone()[0] == 1  # MariaDB: an interrupted SLEEP() returns 1
        except pymysql.MySQLError as exc:
            assert exc.args[0] == 1317
    assert time.monotonic() - started < 10
    with conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone()[0] == 2
    conn.close()
    assert "query_timeout" in proxy.log_text()


def test_init_query_runs_on_every_backend_connection(make_proxy) -> None:
    """init_query runs on each new backend connection and is the baseline clients start
    from: not undone, not carried, no extra statement per borrow."""
    proxy = make_proxy(backend={"init_query": "SET SESSION wait_timeout = 321"},
                       pool={"max_connections": 2})
    clients = [proxy.connect() for _ in range(3)]
    for client in clients:
        with client.cursor() as cur:
            cur.execute("SELECT @@wait_timeout")
            assert cur.fetchone()[0] == 321
        client.close()


def test_max_connections_percent_of_the_server(make_proxy, db_server) -> None:
    """max_connections_percent sizes the pool from the server's own max_connections."""
    root = db_server.connect()
    with root.cursor() as cur:
        cur.execute("SELECT @@max_connections")
        server_max = int(cur.fetchone()[0])
    root.close()
    proxy = make_proxy(pool={"max_connections": 100, "max_connections_percent": 2})
    client = proxy.connect()
    with client.cursor() as cur:
        cur.execute("SELECT 1")
    client.close()
    proxy.process.send_signal(__import__("signal").SIGUSR1)
    time.sleep(0.5)
    stats = [line for line in proxy.log_text().splitlines() if '"pool_stats"' in line]
    assert stats, proxy.log_text()[-2000:]
    import json
    assert json.loads(stats[-1])["max_size"] == max(1, server_max * 2 // 100)
