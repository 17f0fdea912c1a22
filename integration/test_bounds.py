"""No client can make pyproxy grow without bound: each bound against the running proxy, with
raw sockets, a server of its own (small max_allowed_packet and max_prepared_stmt_count, so
the bounds are reached quickly) and pyproxy's RSS read from /proc.

The figures of the same attacks at full size, before and after, come from bench/bounds.py;
here the limits are generous (tens of MB, where the attacks would cost hundreds).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bounds import (
    ClientFailed,
    RawClient,
    ReplyReader,
    make_stmt_execute_long_data,
    make_stmt_send_long_data,
    prepare,
)
from integration import servers
from pyproxy.sandbox import SandboxServer
from pyproxy.wire.commands import make_query
from pyproxy.wire.framing import frame
from pyproxy.wire.responses import parse_err

MB = 1 << 20


@pytest.fixture(scope="module")
def small_limits() -> Iterator[SandboxServer]:
    server = SandboxServer(extra_args=("--max-allowed-packet=4M", "--max-prepared-stmt-count=300"))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def bounded_proxy(small_limits: SandboxServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.ProxyProcess]:
    proxy = servers.start_proxy(small_limits, tmp_path_factory.mktemp("bounds"),
                                pool={"max_connections": 4})
    yield proxy
    proxy.stop()


def rss(proxy: servers.ProxyProcess) -> int:
    for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def client(proxy: servers.ProxyProcess) -> RawClient:
    c = RawClient(proxy.host, proxy.port)
    c.login(servers.APP_USER, servers.APP_PASSWORD, servers.APP_DATABASE)
    return c


def test_packets_before_login_are_small(bounded_proxy: servers.ProxyProcess) -> None:
    """A peer that never logs in and announces a 16 MiB packet is told 1153 and closed at
    its header: ten of them cost pyproxy nothing like 160 MB; a login packet of a normal
    size still works."""
    before = rss(bounded_proxy)
    socks = []
    for _ in range(10):
        sock = socket.create_connection((bounded_proxy.host, bounded_proxy.port), timeout=10)
        sock.recv(4096)  # the greeting
        try:
            sock.sendall((0xFFFFFF).to_bytes(3, "little") + b"\x01")
            for _ in range(16):
                sock.sendall(b"x" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass  # pyproxy closed at the header, before the rest arrived
        socks.append(sock)
    for sock in socks:
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass  # closed with the rest of the packet unread
        if data:  # the ERR may be lost in the reset of a connection closed with unread bytes
            assert data[4:5] == b"\xff" and parse_err(data[4:]).code == 1153, data[:40]
        sock.close()
    assert rss(bounded_proxy) - before < 20 * MB
    client(bounded_proxy).close()


def test_long_data_past_max_allowed_packet(bounded_proxy: servers.ProxyProcess) -> None:
    """COM_STMT_SEND_LONG_DATA past the server's max_allowed_packet (4 MiB here) for one
    parameter is dropped, not kept, and the execute gets the server's own error 1105; the
    statement works again afterwards."""
    c = client(bounded_proxy)
    try:
        statement = prepare(c, "SELECT LENGTH(?)").statement
        before = rss(bounded_proxy)
        chunk = b"x" * MB
        for _ in range(40):
            c.send(make_stmt_send_long_data(statement, 0, chunk))
        c.send(make_query("SELECT 1"))  # a round trip: every chunk has been read by now
        assert c.read_reply(ReplyReader()).error == 0
        grown = rss(bounded_proxy) - before
        c.send(make_stmt_execute_long_data(statement, 1))
        reply = c.read_reply(ReplyReader())
        assert (reply.error, reply.message) == (1105, "Parameter of prepared statement which is set "
                                                      "through mysql_send_long_data() is longer than "
                                                      "'max_allowed_packet' bytes")
        assert grown < 20 * MB, f"{grown / MB:.0f} MB kept for 40 MiB of long data"
        c.send(make_stmt_send_long_data(statement, 0, b"abc"))
        c.send(make_stmt_execute_long_data(statement, 1))
        reply = c.read_reply(ReplyReader())
        assert reply.error == 0 and reply.rows == [b"\x00\x00\x03\x00\x00\x00"]  # binary row: 3
    finally:
        c.close()


def test_prepared_statements_per_client_are_capped(bounded_proxy: servers.ProxyProcess,
                                                   small_limits: SandboxServer) -> None:
    """A client may keep as many prepared statements as the server's max_prepared_stmt_count
    (300 here); the next prepare gets the server's 1461, and closing one makes room."""
    c = client(bounded_proxy)
    try:
        ids = [prepare(c, f"SELECT {i}").statement for i in range(300)]
        assert all(ids)
        c.send(b"\x16SELECT 300")
        reply = c.read_reply(ReplyReader(prepare=True))
        assert reply.error == 1461, reply
        assert "max_prepared_stmt_count" in reply.message
        c.send(b"\x19" + ids[0].to_bytes(4, "little"))  # COM_STMT_CLOSE
        assert prepare(c, "SELECT 300").statement
    finally:
        c.close()


def test_pipelined_queries_of_a_client_that_does_not_read(bounded_proxy: servers.ProxyProcess) -> None:
    """A client pipelines 3,000 queries of 30 kB results each (90 MB in all) and reads
    nothing: pyproxy stops running its queries and reading its socket once the unsent
    replies pass a buffer, instead of keeping them all; read afterwards, every reply is
    intact and in order."""
    c = client(bounded_proxy)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        before = rss(bounded_proxy)
        count = 3000
        batch = b"".join(frame(make_query(f"SELECT {i}, REPEAT('x', 30000)"), 0) for i in range(count))
        c.sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 10
        while sent < len(batch) and time.monotonic() < deadline:
            try:
                sent += c.sock.send(batch[sent:sent + MB])
            except BlockingIOError:
                time.sleep(0.05)
        time.sleep(2)  # what pyproxy would do with its time if it were not stopped
        grown = rss(bounded_proxy) - before
        c.sock.setblocking(True)
        c.sock.settimeout(60)
        reader = ReplyReader()
        seen = 0
        while seen < count:
            if sent < len(batch):
                c.sock.setblocking(False)
                try:
                    sent += c.sock.send(batch[sent:sent + MB])
                except BlockingIOError:
                    pass
                c.sock.setblocking(True)
                c.sock.settimeout(60)
            reply = c.read_reply(reader)
            assert reply.error == 0 and reply.rows[0].startswith(bytes((len(str(seen)),)) + str(seen).encode())
            seen += 1
        assert grown < 40 * MB, f"pyproxy grew by {grown / MB:.0f} MB for a client that did not read"
    except ClientFailed as exc:
        pytest.fail(str(exc))
    finally:
        c.close()
