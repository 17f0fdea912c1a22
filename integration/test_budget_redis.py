"""``[budget] redis``: pyproxy instances sharing one backend budget through a real Redis
(Debian's ``redis-server``, started here on a free port), in front of the real server.

Two instances with a budget of 3 never make the server see more than 3 connections of the
user, with clients arriving directly or through a real HAProxy that sends PROXY v2 headers; a
``kill -9`` of one instance gives its share back within a lease period; without Redis an
instance serves with its local share and takes leases again when Redis is back.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pymysql
import pytest

from integration import servers
from integration.balancer import HAPROXY, MISSING, HAProxy
from integration.redis_server import MISSING as REDIS_MISSING
from integration.redis_server import REDIS_SERVER, RedisServer

redis = pytest.importorskip("redis", reason="the redis package (pip install 'pyproxy[redis]')")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=REDIS_MISSING)
BUDGET = 3
LEASE = 2.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


def instance(make_proxy: Callable[..., servers.ProxyProcess], redis_server: RedisServer,
             **proxy: Any) -> servers.ProxyProcess:
    return make_proxy(proxy=proxy, pool={"max_connections": BUDGET, "borrow_timeout": 60},
                      budget={"redis": redis_server.url, "lease_seconds": LEASE, "local_share": 2},
                      log={"level": "debug", "format": "json"})


def events(proxy: servers.ProxyProcess, name: str) -> list[dict[str, Any]]:
    return proxy.events(name)


PeakWatch = servers.PeakWatch


def warm(*instances: servers.ProxyProcess) -> None:
    """One statement per instance first: a user's first statement reads its catalog of
    stored code over a short side connection of pyproxy's own, which the budget does not
    count (README, "On several hosts"); the storms measure the pools."""
    for proxy in instances:
        conn = proxy.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()


def storm(connect: Callable[[], pymysql.connections.Connection], clients: int) -> list[int]:
    """``clients`` at once, each with three short transactions; their thread ids."""

    def client(index: int) -> int:
        conn = connect()
        try:
            with conn.cursor() as cur:
                for step in range(3):
                    cur.execute("BEGIN")
                    cur.execute("SELECT %s", (index * 10 + step,))
                    assert cur.fetchone() == (index * 10 + step,)
                    cur.execute("COMMIT")
            return conn.thread_id()
        finally:
            conn.close()

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(client, range(clients)))


def test_two_instances_never_exceed_one_budget(make_proxy: Any, redis_server: RedisServer,
                                               db_server: servers.DbServer) -> None:
    first, second = instance(make_proxy, redis_server), instance(make_proxy, redis_server)
    warm(first, second)
    watch = PeakWatch(db_server)
    try:
        with ThreadPoolExecutor(2) as both:
            done = list(both.map(lambda p: storm(p.connect, 30), (first, second)))
    finally:
        peak = watch.stop()
    assert [len(ids) for ids in done] == [30, 30]
    assert 1 <= peak <= BUDGET, str(watch)
    leases = redis_server.client().zrange(f"pyproxy:budget:{servers.APP_USER}:"
                                          f"{db_server.host}:{db_server.port}", 0, -1)
    assert len(leases) <= BUDGET


def test_a_killed_instance_gives_its_share_back_within_a_lease(
        make_proxy: Any, redis_server: RedisServer) -> None:
    doomed, survivor = instance(make_proxy, redis_server), instance(make_proxy, redis_server)
    holders = [doomed.connect() for _ in range(BUDGET)]
    for conn in holders:  # every lease held by transactions in the doomed instance
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT 1")
    result: list[Any] = []

    def wait_for_a_lease() -> None:
        # Its login already needs a backend connection, so a lease.
        late = survivor.connect(connect_timeout=30, read_timeout=30)
        with late.cursor() as cur:
            cur.execute("SELECT 42")
            result.append(cur.fetchone())
        late.close()

    waiting = threading.Thread(target=wait_for_a_lease)
    waiting.start()
    time.sleep(0.5)
    assert not result  # the budget is all taken
    killed_at = time.monotonic()
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait(5)
    waiting.join(LEASE * 3 + 5)
    returned_after = time.monotonic() - killed_at
    for conn in holders:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - their pyproxy is gone
            pass
    assert result == [(42,)]
    # One lease period, plus the survivor's next try (RETRY) and the server letting the
    # killed instance's connections go.
    assert returned_after < LEASE + 2, returned_after


def test_without_redis_the_local_share_serves_and_leases_come_back(
        make_proxy: Any, redis_server: RedisServer, db_server: servers.DbServer) -> None:
    proxy = instance(make_proxy, redis_server)
    warm(proxy)
    storm(proxy.connect, 4)
    redis_server.stop()
    # The next renewal fails: the instance says so and serves with its local share (2).
    deadline = time.monotonic() + LEASE * 2 + 5
    while not events(proxy, "budget_redis_unreachable"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    watch = PeakWatch(db_server)
    try:
        assert len(storm(proxy.connect, 10)) == 10
    finally:
        peak = watch.stop()
    assert peak <= 2, str(watch)
    assert "127.0.0.1" in events(proxy, "budget_redis_unreachable")[0]["redis"]
    redis_server.start()
    deadline = time.monotonic() + LEASE * 2 + 5
    while not events(proxy, "budget_redis_back"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(storm(proxy.connect, 6)) == 6


@pytest.mark.skipif(HAPROXY is None, reason=MISSING)
def test_behind_haproxy_two_instances_share_the_budget_and_see_clients(
        make_proxy: Any, redis_server: RedisServer, db_server: servers.DbServer,
        tmp_path: Path) -> None:
    first = instance(make_proxy, redis_server, proxy_protocol=True)
    second = instance(make_proxy, redis_server, proxy_protocol=True)
    balancer = HAProxy(tmp_path / "haproxy", {"pyproxy": ([first.port, second.port], "send-proxy-v2")})
    for _ in range(4):  # round-robin: both instances read their catalogs before the storm
        conn = first.connect(port=balancer.ports["pyproxy"])
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()
    own_ports: list[str] = []
    lock = threading.Lock()

    def connect() -> pymysql.connections.Connection:
        conn = first.connect(port=balancer.ports["pyproxy"])
        with lock:
            own_ports.append("%s:%d" % conn._sock.getsockname()[:2])
        return conn

    watch = PeakWatch(db_server)
    try:
        assert len(storm(connect, 60)) == 60
    finally:
        peak = watch.stop()
        balancer.stop()
    assert 1 <= peak <= BUDGET, str(watch)
    seen = {e.get("peer") for p in (first, second) for e in events(p, "client_connected")}
    assert set(own_ports) <= seen
    assert all(events(p, "client_connected") for p in (first, second))  # both took clients
