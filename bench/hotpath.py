"""pyproxy's own Python cost per query, without sockets or a reactor.

    python3 bench/hotpath.py [--queries N] [--classic]

A client and a backend connection are wired to in-memory transports; each
round trip sends a point SELECT through FrontendProtocol, the pool and
BackendConnection, and feeds back the reply a MariaDB server sent for it
(captured once, below).  What is timed is therefore exactly the code pyproxy
adds per query: framing, dispatch, borrowing, reply tracking, session
bookkeeping, giving back.  Kernel time and Twisted's reactor are excluded,
so the figure is steady on a busy machine and comparable between commits;
bench/run.py measures the whole thing end to end.

--classic makes the client one without CLIENT_DEPRECATE_EOF (PyMySQL and
most Python drivers), whose replies pyproxy translates.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport

from pyproxy import auth, logs
from pyproxy.backend import BackendConnection, Target
from pyproxy.config import build
from pyproxy.frontend import FrontendProtocol
from pyproxy.pool import Pool
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.wire.commands import make_query
from pyproxy.wire.constants import CLIENT, SERVER_STATUS_AUTOCOMMIT
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.handshake import HandshakeResponse41, make_handshake_response41, parse_handshake_v10

# MariaDB 10.11 greeting and replies, as captured for tests/vectors.py.
GREETING = bytes.fromhex(
    "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000600000036407d775b45"
    "262b00fef72d0200ff81150000000000001d000000465e26425a7c253d447b6152006d7973716c5f6e61746976655f70"
    "617373776f726400")
OK_LOGIN = bytes.fromhex("0700000200000002000000")
# The session's own tracking settings, read before pyproxy's are set.
TRACKING_DEFAULTS = bytes.fromhex(
    "0100000104360000020364656600000020404073657373696f6e5f747261636b5f73797374656d5f7661726961626c65"
    "73000c2d0060010000fd00002700002c0000030364656600000016404073657373696f6e5f747261636b5f736368656d"
    "61000c3f000100000008800000000032000004036465660000001c404073657373696f6e5f747261636b5f7374617465"
    "5f6368616e6765000c3f0001000000088000000000360000050364656600000020404073657373696f6e5f747261636b"
    "5f7472616e73616374696f6e5f696e666f000c2d000c000000fd000027000061000006586175746f636f6d6d69742c63"
    "68617261637465725f7365745f636c69656e742c6368617261637465725f7365745f636f6e6e656374696f6e2c636861"
    "7261637465725f7365745f726573756c74732c74696d655f7a6f6e6501310130034f464607000007fe000002000000"
)
OK_TRACKING = bytes.fromhex(
    "6900000100000002400000006000211e73657373696f6e5f747261636b5f73797374656d5f7661726961626c6573012a"
    "001e1a73657373696f6e5f747261636b5f73746174655f6368616e6765024f4e00181473657373696f6e5f747261636b"
    "5f736368656d61024f4e020131")
# SELECT id, name FROM app.t ORDER BY id with CLIENT_DEPRECATE_EOF: 2 columns, 2 rows.
SELECT_REPLY = bytes.fromhex(
    "01000001021f0000020364656603617070017401740269640269640c3f000b0000000303500000002300000303646566"
    "0361707001740174046e616d65046e616d650c080014000000fd0000000000060000040131036f6e6506000005013203"
    "74776f07000006fe000022000000")
PASSWORD = b"secret"


class Transport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass


def build_setup(classic: bool) -> tuple[Any, Any, bytes]:
    reactor = MemoryReactorClock()
    config = build({"users": [{"name": "app", "password": PASSWORD.decode()}], "pool": {"max_connections": 1}})
    greeting = parse_handshake_v10(GREETING[4:])
    proxy = Proxy(config, reactor, ServerInfo(greeting.server_version, greeting.capabilities, 45,
                                              SERVER_STATUS_AUTOCOMMIT))
    target = Target("db", 3306, "app", PASSWORD.decode())
    conn = BackendConnection(target, 0, reactor)
    backend_transport = Transport()
    conn.makeConnection(backend_transport)
    conn.dataReceived(GREETING)
    conn.dataReceived(OK_LOGIN)
    conn.dataReceived(TRACKING_DEFAULTS + OK_TRACKING)
    assert conn.ready.called
    writer = proxy.topology.writer
    pool = Pool("app", lambda flavor: None, reactor, max_size=1, borrow_timeout=10,  # type: ignore[arg-type]
                target=writer)
    pool.idle.append(conn)
    conn.pool = pool
    proxy.pools[("app", writer.name)] = pool

    client = FrontendProtocol(proxy)
    client_transport = Transport()
    client.makeConnection(client_transport)
    nonce = PacketFramer().feed(client_transport.value())[0].payload
    nonce = parse_handshake_v10(nonce).auth_data
    caps = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS | CLIENT.SECURE_CONNECTION
            | CLIENT.MULTI_RESULTS | CLIENT.PLUGIN_AUTH)
    if not classic:
        caps |= CLIENT.DEPRECATE_EOF | CLIENT.SESSION_TRACK
    client.dataReceived(frame(make_handshake_response41(HandshakeResponse41(
        caps, 1 << 24, 45, "app", auth.native_proof(PASSWORD, nonce), None, auth.NATIVE)), 1))
    client_transport.clear()
    backend_transport.clear()
    return client, (conn, client_transport, backend_transport), frame(make_query(
        "SELECT id, name FROM app.t ORDER BY id"), 0)


def run(queries: int, classic: bool) -> float:
    client, (conn, client_transport, backend_transport), query = build_setup(classic)
    gc.disable()
    start = time.perf_counter()
    for _ in range(queries):
        client.dataReceived(query)
        conn.dataReceived(SELECT_REPLY)
    elapsed = time.perf_counter() - start
    gc.enable()
    assert client_transport.value(), "no reply reached the client"
    client_transport.clear()
    backend_transport.clear()
    return elapsed / queries * 1e6


def main() -> None:
    logs.configure("warning")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=50000)
    parser.add_argument("--classic", action="store_true")
    args = parser.parse_args()
    best = min(run(args.queries, args.classic) for _ in range(5))
    kind = "classic-EOF client (translated)" if args.classic else "DEPRECATE_EOF client"
    print(f"pyproxy Python time per point-select round trip, {kind}: {best:.2f} us "
          f"(best of 5 x {args.queries})")


if __name__ == "__main__":
    main()
