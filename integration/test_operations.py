"""Operations without downtime: drain on SIGTERM, PAUSE/RESUME, reload on SIGHUP."""

from __future__ import annotations

import re
import signal
import threading
import time

import pymysql
import pytest

import pyproxy
from integration import drivers, servers


def app_threads(db_server) -> int:
    root = db_server.connect()
    try:
        with root.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE user = %s",
                        (servers.APP_USER,))
            return int(cur.fetchone()[0])
    finally:
        root.close()


def test_sigterm_lets_open_transactions_finish(make_proxy, db_server) -> None:
    """On SIGTERM pyproxy stops accepting, closes idle clients, lets a client in a
    transaction commit, then exits cleanly."""
    proxy = make_proxy(proxy={"drain_timeout": 10})
    setup = proxy.connect()
    with setup.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS drain_t (v INT)")
        cur.execute("DELETE FROM drain_t")
    setup.close()
    idle = proxy.connect()
    busy = proxy.connect(autocommit=False)
    with busy.cursor() as cur:
        cur.execute("INSERT INTO drain_t VALUES (1)")
    proxy.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(pymysql.MySQLError):
        proxy.connect()
    with pytest.raises(pymysql.MySQLError):
        with idle.cursor() as cur:
            cur.execute("SELECT 1")
    with busy.cursor() as cur:
        cur.execute("INSERT INTO drain_t VALUES (2)")
    busy.commit()
    # twistd ends by re-raising the signal that stopped it, once the drain is over.
    assert proxy.process.wait(timeout=10) in (0, -signal.SIGTERM)
    root = db_server.connect()
    with root.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {servers.APP_DATABASE}.drain_t")
        assert cur.fetchone()[0] == 2
    root.close()


def test_pause_and_resume(make_proxy, db_server) -> None:
    """SIGUSR2 pauses: backend connections close, a new statement waits without error;
    SIGUSR2 again resumes and the waiting statement completes."""
    proxy = make_proxy(pool={"min_idle": 0})
    client = proxy.connect()
    with client.cursor() as cur:
        cur.execute("SELECT 1")
    proxy.process.send_signal(signal.SIGUSR2)
    time.sleep(0.5)
    assert app_threads(db_server) == 0
    result: list[object] = []

    def query() -> None:
        with client.cursor() as cur:
            cur.execute("SELECT 42")
            result.append(cur.fetchone()[0])

    thread = threading.Thread(target=query)
    thread.start()
    time.sleep(1.0)
    assert result == []
    proxy.process.send_signal(signal.SIGUSR2)
    thread.join(timeout=10)
    assert result == [42]
    client.close()
    assert '"paused"' in proxy.log_text() and '"resumed"' in proxy.log_text()


def test_sighup_reload_adds_a_user_without_dropping_clients(make_proxy, db_server) -> None:
    """A user added to the file and SIGHUP: the new user can log in, clients already
    connected keep working; a broken file is refused and the old config stays."""
    proxy = make_proxy()
    client = proxy.connect()
    late = servers.own_name("late")
    db_server.create_user(late, "late_pw", database=servers.APP_DATABASE)
    text = proxy.config_path.read_text()
    proxy.config_path.write_text(text + f'\n[[users]]\nname = "{late}"\npassword = "late_pw"\n')
    proxy.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    late_client = proxy.connect(user=late, password="late_pw")
    with late_client.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0].startswith(f"{late}@")
    late_client.close()
    with client.cursor() as cur:
        cur.execute("SELECT 1")
    proxy.config_path.write_text(text + "\n[pool]\nmax_connections = 'many'\n")
    proxy.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert "reload_failed" in proxy.log_text()
    with client.cursor() as cur:
        cur.execute("SELECT 2")
    client.close()


def test_client_connections_logged_at_debug_and_counted(make_proxy) -> None:
    """Each client connect and close is a debug line (the peer as host:port, not a repr) and
    a count in SIGUSR1's client_stats, by close reason; startup logs pyproxy's version."""
    proxy = make_proxy()
    for _ in range(3):
        proxy.connect().close()
    with pytest.raises(pymysql.MySQLError):
        proxy.connect(password="not-the-password")
    deadline = time.monotonic() + 10
    stats: dict = {}
    while time.monotonic() < deadline:
        proxy.process.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        found = drivers.log_events(proxy, "client_stats")
        stats = found[-1] if found else {}
        if stats.get("closed", {}).get("COM_QUIT") == 3:
            break
    closed = stats.get("closed", {})
    assert closed.get("COM_QUIT") == 3 and closed.get("Access denied for user") == 1, stats
    # wait_listening's TCP probes are accepted connections too, closed before a login.
    assert stats["accepted"] == sum(closed.values()) + stats["open"], stats
    connected = drivers.log_events(proxy, "client_connected")
    assert len(connected) == 3 and {event["level"] for event in connected} == {"debug"}
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", event["peer"]) for event in connected), connected
    assert {event["level"] for event in drivers.log_events(proxy, "client_closed")} == {"debug"}
    listening = drivers.log_events(proxy, "listening")
    assert listening[0]["version"] == pyproxy.__version__
    assert listening[0]["address"] == f"{proxy.host}:{proxy.port}"
