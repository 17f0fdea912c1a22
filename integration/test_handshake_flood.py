"""10,000 connections that never finish their login, while a real client logs in.

Opened in batches from this process against pyproxy on 127.0.0.1: each is accepted and greeted
and then says nothing.  A PyMySQL client then logs in within its own connect timeout and runs a
statement, and pyproxy's handshake timeout closes every silent one (each reads the greeting,
then EOF).  Both processes need more than 10,000 file descriptors: the soft RLIMIT_NOFILE is
raised to the hard one here before pyproxy starts (it inherits it), and the test is skipped,
saying so, where the hard limit is too low.
"""

from __future__ import annotations

import resource
import selectors
import socket
import re
import time
import urllib.request
from typing import Any

import pytest

from integration import servers
from pyproxy.sandbox import free_port

FLOOD = 10_000
BATCH = 500
# Descriptors besides the flood: the test's own, pyproxy's listeners, logs, backends.
MARGIN = 512
HANDSHAKE_TIMEOUT = 45.0


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not on /metrics"
    return float(match.group(1))


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors "
                    f"{FLOOD:,} silent connections need")
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else needed, hard))


def open_silent(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections that never answer the greeting, opened ``BATCH`` at a time
    (a blocking connect returns once the kernel has completed the TCP handshake)."""
    opened: list[socket.socket] = []
    while len(opened) < count:
        for _ in range(min(BATCH, count - len(opened))):
            sock = socket.create_connection((host, port), timeout=30)
            sock.setblocking(False)
            opened.append(sock)
        time.sleep(0.05)  # lets pyproxy accept and greet the batch
    return opened


def wait_closed_by_peer(socks: list[socket.socket], timeout: float) -> int:
    """Reads every socket until pyproxy closes it; returns how many it closed in time."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + timeout
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            try:
                data = sock.recv(65536)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                selector.unregister(sock)
                closed += 1
    selector.close()
    return closed


def test_ten_thousand_silent_connections_and_one_login(make_proxy: Any) -> None:
    raise_nofile(FLOOD + MARGIN)
    metrics = free_port()
    proxy = make_proxy(proxy={"max_client_connections": FLOOD + 100, "handshake_timeout": HANDSHAKE_TIMEOUT,
                              "backlog": 4096},
                       log={"level": "info", "format": "json"},
                       metrics={"listen": f"tcp:{metrics}:interface=127.0.0.1"})
    silent: list[socket.socket] = []
    try:
        started = time.monotonic()
        silent = open_silent(proxy.host, proxy.port, FLOOD)
        opened_in = time.monotonic() - started
        conn = proxy.connect(connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT CURRENT_USER()")
                assert cur.fetchone()[0].split("@")[0] == servers.APP_USER
            # The good client logged in while the whole flood was there.
            assert metric(metrics, "pyproxy_client_connections") >= FLOOD + 1
        finally:
            conn.close()
        assert proxy.process.poll() is None
        closed = wait_closed_by_peer(silent, HANDSHAKE_TIMEOUT + opened_in + 30)
        assert closed == FLOOD, f"pyproxy closed {closed} of {FLOOD} silent connections"
        assert metric(metrics, 'pyproxy_client_connection_outcomes_total{outcome="handshake_timeout"}') == FLOOD
        # And it still serves.
        conn = proxy.connect(connect_timeout=10)
        conn.close()
    finally:
        for sock in silent:
            sock.close()
    assert "Traceback" not in proxy.log_text()
