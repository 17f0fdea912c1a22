"""pyproxy's own Python cost per query, without sockets or a reactor.

    python3 bench/hotpath.py [--queries N] [--classic] [--prepared | --waiting]

A client and a backend connection are wired to in-memory transports; each
round trip sends a point SELECT through FrontendProtocol and its
CommandPhase, the pool and BackendConnection, and feeds back the reply a
MariaDB server sent for it (captured once, below).  What is timed is therefore exactly the code pyproxy
adds per query: framing, dispatch, borrowing, reply tracking, session
bookkeeping, giving back.  Kernel time and Twisted's reactor are excluded,
so the figure is steady on a busy machine and comparable between commits;
bench/run.py measures the whole thing end to end.

--classic makes the client one without CLIENT_DEPRECATE_EOF (PyMySQL and
most Python drivers), whose replies pyproxy translates.  --prepared runs a
server-side prepared statement instead (prepared once, then each round trip
a COM_STMT_EXECUTE with two bound parameters and its binary two-row result,
as captured): the client's statement id mapped to the connection's, the
execute rewritten for it.  It takes a DEPRECATE_EOF client (a classic one's
statements are prepared on a classic connection, which this set-up lacks).
--waiting logs in two more clients on the same connection and keeps all three
sending, so every query waits in line for the connection and is sent when the
reply before it gives the connection back: the path most queries take when
many clients share few connections (sysbench at 64 threads on a pool of 20).
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
from vectors import PING_OK as OK  # noqa: E402
from vectors import EXECUTE_DEOF, EXECUTE_EOF, PREPARE_DEOF, PREPARE_EOF  # noqa: E402
from vectors import TRACKING_OK as OK_TRACKING  # noqa: E402

PASSWORD = b"secret"


class Transport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass


def log_in(proxy: Proxy, classic: bool) -> tuple[FrontendProtocol, Transport]:
    """A client logged in to ``proxy`` over an in-memory transport."""
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
    return client, client_transport


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

    client, client_transport = log_in(proxy, classic)
    backend_transport.clear()
    query = frame(make_query("SELECT id, name FROM app.t ORDER BY id"), 0)
    return client, (conn, client_transport, backend_transport), query


def warm_up(client: Any, conn: BackendConnection, transports: tuple[Any, Any], query: bytes) -> None:
    """The first query finds the connection with multi-statements on (as pyproxy
    logs in) and this client without: COM_SET_OPTION goes first, once, as in a
    real run.  From then on each query is one round trip, as measured."""
    client_transport, backend_transport = transports
    multi_statements = conn.state.multi_statements
    client.dataReceived(query)
    if multi_statements:  # the connection's first client, as said above
        assert backend_transport.value()[4:5] == b"\x1b", backend_transport.value()
        conn.dataReceived(OK)
    conn.dataReceived(SELECT_REPLY)
    assert not client.commands.busy
    client_transport.clear()
    backend_transport.clear()


#: The statement the prepared round trips execute, and its parameters (two LONGLONGs).
PREPARED_SQL = b"SELECT id, name, ? AS p FROM app.t WHERE id >= ?"


def prepare(client: Any, conn: BackendConnection, transports: tuple[Any, Any]) -> tuple[bytes, bytes]:
    """Prepares PREPARED_SQL through pyproxy; returns the client's COM_STMT_EXECUTE
    of it (p=7, id>=1) and the reply the server gives that execute."""
    client_transport, backend_transport = transports
    client.dataReceived(frame(b"\x16" + PREPARED_SQL, 0))
    assert backend_transport.value()[4:5] == b"\x16", backend_transport.value()
    deprecate_eof = bool(conn.capabilities & CLIENT.DEPRECATE_EOF)
    conn.dataReceived(PREPARE_DEOF if deprecate_eof else PREPARE_EOF)
    reply = client_transport.value()
    assert reply[4:5] == b"\x00", reply
    statement = reply[5:9]
    execute = frame(b"\x17" + statement + b"\x00" + (1).to_bytes(4, "little") + b"\x00\x01\x08\x00\x08\x00"
                    + (7).to_bytes(8, "little") + (1).to_bytes(8, "little"), 0)
    client_transport.clear()
    backend_transport.clear()
    reply = EXECUTE_DEOF if deprecate_eof else EXECUTE_EOF
    client.dataReceived(execute)  # once, checked: the server gets it, the client its rows
    sent = backend_transport.value()
    assert sent[4:5] == b"\x17" and sent[5:9] != b"\x00" * 4, sent
    conn.dataReceived(reply)
    assert client_transport.value() == reply, client_transport.value()
    client_transport.clear()
    backend_transport.clear()
    return execute, reply


def run_waiting(queries: int, classic: bool) -> float:
    """Three clients on the one connection, each sending its next query as soon as
    its reply has come: one is served while two wait in line, which is therefore
    never empty, as with sysbench's 64 threads on a pool of 20."""
    client, (conn, client_transport, backend_transport), query = build_setup(classic)
    warm_up(client, conn, (client_transport, backend_transport), query)
    clients = [(client, client_transport)]
    for _ in range(2):
        other, other_transport = log_in(client.proxy, classic)
        warm_up(other, conn, (other_transport, backend_transport), query)
        clients.append((other, other_transport))
    reply = SELECT_REPLY
    for each, _ in clients:
        each.dataReceived(query)
    assert clients[0][0].commands.backend is conn and clients[1][0].commands.backend is None
    protocols = [each for each, _ in clients]
    waited = conn.pool.waited_borrows
    gc.disable()
    start = time.perf_counter()
    for i in range(queries):
        conn.dataReceived(reply)  # the holder's reply: the connection goes to the next in line
        protocols[i % 3].dataReceived(query)  # and the holder's next query waits
    elapsed = time.perf_counter() - start
    gc.enable()
    assert conn.pool.waited_borrows - waited == queries, "a statement found the connection idle"
    for each, transport in clients:
        assert len(transport.value()) >= len(reply) * (queries // 3), "a client got too few replies"
        transport.clear()
    backend_transport.clear()
    return elapsed / queries * 1e6


def run(queries: int, classic: bool, prepared: bool = False) -> float:
    client, (conn, client_transport, backend_transport), query = build_setup(classic)
    warm_up(client, conn, (client_transport, backend_transport), query)
    reply = SELECT_REPLY
    if prepared:
        query, reply = prepare(client, conn, (client_transport, backend_transport))
    gc.disable()
    start = time.perf_counter()
    for _ in range(queries):
        client.dataReceived(query)
        conn.dataReceived(reply)
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
    parser.add_argument("--prepared", action="store_true")
    parser.add_argument("--waiting", action="store_true")
    args = parser.parse_args()
    if args.prepared and args.classic:
        # A classic client's statements are prepared on a classic connection,
        # and this set-up has one connection, with DEPRECATE_EOF.
        parser.error("--prepared measures a DEPRECATE_EOF client: not with --classic")
    if args.prepared and args.waiting:
        parser.error("--waiting runs point selects: not with --prepared")
    if args.waiting:
        best = min(run_waiting(args.queries, args.classic) for _ in range(5))
    else:
        best = min(run(args.queries, args.classic, args.prepared) for _ in range(5))
    kind = "classic-EOF client (translated)" if args.classic else "DEPRECATE_EOF client"
    what = ("prepared-statement execute" if args.prepared
            else "point-select, each waiting in line" if args.waiting else "point-select")
    print(f"pyproxy Python time per {what} round trip, {kind}: {best:.2f} us "
          f"(best of 5 x {args.queries})")


if __name__ == "__main__":
    main()
