"""``[proxy] proxy_protocol``: pyproxy behind a real HAProxy (Debian's ``haproxy``) that sends
PROXY v1 (``send-proxy``) and v2 (``send-proxy-v2``) headers.

pyproxy must see each client's own address and port, not HAProxy's; a client that connects to
pyproxy directly, without a header, never gets a greeting; and sessions through the balancer
work as they do without it, large replies and many clients included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pymysql
import pytest

from integration import servers
from integration.balancer import HAPROXY, MISSING, HAProxy

pytestmark = pytest.mark.skipif(HAPROXY is None, reason=MISSING)


@pytest.fixture
def balanced(make_proxy: Any, tmp_path: Path) -> Iterator[tuple[servers.ProxyProcess, HAProxy]]:
    proxy = make_proxy(proxy={"proxy_protocol": True, "handshake_timeout": 2},
                       log={"level": "debug", "format": "json"})
    balancer = HAProxy(tmp_path, {"v1": ([proxy.port], "send-proxy"),
                                  "v2": ([proxy.port], "send-proxy-v2")})
    try:
        yield proxy, balancer
    finally:
        balancer.stop()


def logged(proxy: servers.ProxyProcess, event: str) -> list[dict[str, Any]]:
    return proxy.events(event)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_pyproxy_sees_the_clients_own_address(balanced: Any, version: str) -> None:
    proxy, balancer = balanced
    conn = proxy.connect(port=balancer.ports[version])
    try:
        own = "%s:%d" % conn._sock.getsockname()[:2]
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    deadline = time.monotonic() + 5
    while own not in [e.get("peer") for e in logged(proxy, "client_connected")]:
        assert time.monotonic() < deadline, (own, logged(proxy, "client_connected"))
        time.sleep(0.05)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_refused_login_names_the_clients_host(balanced: Any, version: str) -> None:
    proxy, balancer = balanced
    with pytest.raises(pymysql.err.OperationalError) as refused:
        proxy.connect(port=balancer.ports[version], password="wrong")
    assert refused.value.args[0] == 1045
    assert "@'127.0.0.1'" in refused.value.args[1]


def test_a_client_that_skips_the_balancer_gets_no_greeting(balanced: Any) -> None:
    proxy, _ = balanced
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as lost:
        proxy.connect(connect_timeout=10)
    assert lost.value.args[0] == 2013, lost.value.args
    # handshake_timeout = 2: closed then, not at once and not after the client's own timeout.
    assert 1.5 < time.monotonic() - started < 9
    assert [e["reason"] for e in logged(proxy, "proxy_header_refused")] == [
        "no PROXY header in time"]
    assert not logged(proxy, "client_connected")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_sessions_through_the_balancer_work_as_without_it(balanced: Any, version: str) -> None:
    """Twenty clients at once, each with a transaction, a 3 MB reply and a prepared-looking
    parameterised query: the transport pyproxy took over from the header reader carries it
    all, back-pressure included."""
    proxy, balancer = balanced

    def client(index: int) -> tuple[int, int, int]:
        conn = proxy.connect(port=balancer.ports[version])
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT %s + 1", (index,))
                (plus_one,) = cur.fetchone()
                cur.execute("SELECT REPEAT('x', 3000000)")
                (big,) = cur.fetchone()
                cur.execute("COMMIT")
                cur.execute("SELECT CONNECTION_ID() IS NOT NULL")
                (ok,) = cur.fetchone()
            return plus_one, len(big), ok
        finally:
            conn.close()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(client, range(20)))
    assert results == [(i + 1, 3_000_000, 1) for i in range(20)]
