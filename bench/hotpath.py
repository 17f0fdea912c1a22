"""pyproxy's own Python cost per query, without sockets or a reactor.

    python3 bench/hotpath.py [--queries N] [--classic]

A client and a backend connection are wired to in-memory transports; each
round trip sends a point SELECT through FrontendProtocol and its
CommandPhase, the pool and BackendConnection, and feeds back the reply a
MariaDB server sent for it (captured once, below).  What is timed is therefore exactly the code pyproxy
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
import sys
import time
from pathlib import Path
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

# MariaDB 10.11's greeting and replies, as captured for the unit tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from vectors import GREETING, SELECT_DEOF as SELECT_REPLY  # noqa: E402
from vectors import LOGIN_OK as OK_LOGIN, TRACKING_DEFAULTS_ROWS as TRACKING_DEFAULTS  # noqa: E402
from vectors import TRACKING_OK as OK_TRACKING  # noqa: E402

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
    proxy.catalog("app").load([])  # read once per user in a real run; no stored code here
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
