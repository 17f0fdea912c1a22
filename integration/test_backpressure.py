"""A client that stops reading a large result must stop pyproxy reading from the server."""

from __future__ import annotations

import time
from pathlib import Path

import pymysql
import pymysql.cursors


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_slow_reader_does_not_fill_pyproxy_memory(make_proxy) -> None:
    """A 200 MB result read slowly: pyproxy's memory grows by a small buffer, not by the
    result, and every row still arrives."""
    proxy = make_proxy()
    pid = proxy.process.pid
    conn = proxy.connect(cursorclass=pymysql.cursors.SSCursor, read_timeout=120)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()
    before = rss_bytes(pid)
    with conn.cursor() as cur:
        cur.execute("SELECT seq, REPEAT('x', 1000000) FROM seq_1_to_200")
        first = cur.fetchone()
        assert first[0] == 1
        time.sleep(3)  # not reading: the server's rows must wait in the server, not in pyproxy
        grown = rss_bytes(pid) - before
        rows = 1 + sum(1 for _ in cur)
    conn.close()
    assert rows == 200
    assert grown < 40 * 1024 * 1024, f"pyproxy grew by {grown / 1e6:.0f} MB while the client did not read"
