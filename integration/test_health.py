"""The health checker against a real server: idle connections replaced, lifetimes enforced."""

from __future__ import annotations

import time

from integration import servers



def app_threads(db_server) -> set[int]:
    root = db_server.connect()
    try:
        with root.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE user = %s",
                        (servers.APP_USER,))
            return {row[0] for row in cur.fetchall()}
    finally:
        root.close()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_min_idle_kept_warm_and_refilled_after_kills(make_proxy, db_server) -> None:
    """min_idle connections are opened without any client, and when the server kills
    them the health checker opens new ones; a client never notices."""
    proxy = make_proxy(pool={"min_idle": 3}, health={"interval": 0.5})
    assert wait_for(lambda: len(app_threads(db_server)) >= 3)
    first = app_threads(db_server)
    root = db_server.connect()
    with root.cursor() as cur:
        for thread in first:
            cur.execute(f"KILL {thread}")
    root.close()
    assert wait_for(lambda: len(app_threads(db_server) - first) >= 3)
    client = proxy.connect()
    with client.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1
    client.close()
    assert "backend_replaced" in proxy.log_text() or "backend_lost" in proxy.log_text()


def test_max_lifetime_retires_idle_connections(make_proxy, db_server) -> None:
    """An idle connection older than max_lifetime is closed and, with min_idle, replaced."""
    proxy = make_proxy(pool={"min_idle": 1, "max_lifetime": 1.5}, health={"interval": 0.5})
    assert wait_for(lambda: len(app_threads(db_server)) >= 1)
    first = app_threads(db_server)
    assert wait_for(lambda: app_threads(db_server) and not (app_threads(db_server) & first), 10)
    assert "max_lifetime reached" in proxy.log_text()


def test_idle_timeout_closes_unused_connections(make_proxy, db_server) -> None:
    """Connections left idle longer than idle_timeout are closed down to min_idle (0 here)."""
    proxy = make_proxy(pool={"idle_timeout": 1}, health={"interval": 0.5})
    clients = [proxy.connect() for _ in range(3)]
    for client in clients:
        client.begin()
        with client.cursor() as cur:
            cur.execute("SELECT 1 FROM DUAL")
    for client in clients:
        client.commit()
        client.close()
    assert wait_for(lambda: not app_threads(db_server), 10), app_threads(db_server)
    assert "idle_timeout reached" in proxy.log_text()
