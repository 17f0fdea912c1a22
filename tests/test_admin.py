"""pyproxy.admin: the console over in-memory transports, logged in as a client would.

The proxy is bench/hotpath.py's: one logged-in client and one backend connection that
replays MariaDB's captured replies; the console reads its pools, clients and targets.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import vectors
from twisted.internet.testing import MemoryReactorClock, StringTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.hotpath import SELECT_REPLY, build_setup  # noqa: E402
from pyproxy import auth  # noqa: E402
from pyproxy.admin import MASK, AdminConsole, AdminCredentials, AdminProtocol  # noqa: E402
from pyproxy.config import build  # noqa: E402
from pyproxy.tap import ProxyService  # noqa: E402
from pyproxy.wire.buffer import Reader  # noqa: E402
from pyproxy.wire.commands import make_query  # noqa: E402
from pyproxy.wire.constants import CLIENT  # noqa: E402
from pyproxy.wire.framing import PacketFramer, frame  # noqa: E402
from pyproxy.wire.handshake import HandshakeResponse41, make_handshake_response41, parse_handshake_v10  # noqa: E402
from pyproxy.wire.responses import parse_err, parse_ok  # noqa: E402

ADMIN = {"user": "boss", "password": "admin-pw", "listen": "tcp:0:interface=127.0.0.1"}
CAPS = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS | CLIENT.SECURE_CONNECTION
        | CLIENT.MULTI_RESULTS | CLIENT.PLUGIN_AUTH)


@attrs.define
class Reply:
    kind: str  # "ok", "err", "rows"
    columns: list[tuple[str, int]] = attrs.field(factory=list)
    rows: list[list[str | None]] = attrs.field(factory=list)
    info: str = ""
    code: int = 0
    sqlstate: str = ""
    message: str = ""
    seqs: list[int] = attrs.field(factory=list)

    def table(self) -> list[dict[str, str | None]]:
        return [dict(zip([name for name, _ in self.columns], row)) for row in self.rows]


def decode(data: bytes, deprecate_eof: bool) -> Reply:
    """One reply as a client reads it."""
    packets = PacketFramer().feed(data)
    payloads = [p.payload for p in packets]
    seqs = [p.seq for p in packets]
    first = payloads[0]
    if first[0] == 0x00:
        return Reply("ok", info=parse_ok(first, False).info.decode(), seqs=seqs)
    if first[0] == 0xFF:
        err = parse_err(first)
        return Reply("err", code=err.code, sqlstate=err.sqlstate, message=err.message, seqs=seqs)
    count = Reader(first).lenenc_int()
    columns = []
    for payload in payloads[1:1 + count]:
        r = Reader(payload)
        for _ in range(4):
            r.lenenc_bytes()
        name = r.lenenc_bytes().decode()
        r.lenenc_bytes()
        r.lenenc_int()
        r.u16()
        r.u32()
        columns.append((name, r.u8()))
    at = 1 + count + (0 if deprecate_eof else 1)
    if not deprecate_eof:
        assert payloads[at - 1][0] == 0xFE and len(payloads[at - 1]) == 5
    rows = []
    for payload in payloads[at:-1]:
        r = Reader(payload)
        row: list[str | None] = []
        for _ in range(count):
            if payload[r.pos] == 0xFB:
                r.u8()
                row.append(None)
            else:
                row.append(r.lenenc_bytes().decode())
        rows.append(row)
    last = payloads[-1]
    assert last[0] == 0xFE and (len(last) == 5) != deprecate_eof
    return Reply("rows", columns, rows, seqs=seqs)


class Console:
    """A console client connection, logged in."""

    def __init__(self, service: ProxyService, console: AdminConsole, *, deprecate_eof: bool = True,
                 password: str = "admin-pw", user: str = "boss") -> None:
        self.deprecate_eof = deprecate_eof
        self.protocol = AdminProtocol(console)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        greeting = parse_handshake_v10(PacketFramer().feed(self.transport.value())[0].payload)
        self.greeting = greeting
        self.transport.clear()
        caps = CAPS | (CLIENT.DEPRECATE_EOF if deprecate_eof else 0)
        self.protocol.dataReceived(frame(make_handshake_response41(HandshakeResponse41(
            caps, 1 << 24, 45, user, auth.native_proof(password.encode(), greeting.auth_data), None,
            auth.NATIVE)), 1))
        self.login = decode(self.transport.value(), deprecate_eof)
        self.transport.clear()

    def query(self, sql: str) -> Reply:
        self.protocol.dataReceived(frame(make_query(sql), 0))
        reply = decode(self.transport.value(), self.deprecate_eof)
        self.transport.clear()
        return reply


@pytest.fixture
def setup() -> tuple[Any, ProxyService, AdminConsole]:
    client, (conn, _, _), query = build_setup(False)
    proxy = client.proxy
    proxy.config = attrs.evolve(proxy.config, admin=build({"users": [], "admin": ADMIN}).admin)
    service = ProxyService(proxy.config, proxy.server, reactor=proxy.reactor)
    service.proxy = proxy
    console = AdminConsole(service)
    # One query through the client, so the pool has borrowed and given back.
    client.dataReceived(query)
    conn.dataReceived(vectors.PING_OK)
    conn.dataReceived(SELECT_REPLY)
    return client, service, console


@pytest.mark.parametrize("deprecate_eof", [True, False])
def test_login_and_driver_chatter(setup: Any, deprecate_eof: bool) -> None:
    """The CLI's and drivers' first statements get what a server would answer."""
    _, service, console = setup
    admin = Console(service, console, deprecate_eof=deprecate_eof)
    assert admin.login.kind == "ok"
    assert admin.greeting.server_version == service.proxy.server.version
    reply = admin.query("select @@version_comment limit 1")
    assert reply.kind == "rows" and reply.rows == [["pyproxy admin console"]]
    assert reply.columns == [("@@version_comment", 0xFD)]
    assert reply.seqs == list(range(1, len(reply.seqs) + 1))
    assert admin.query("SET NAMES utf8mb4").kind == "ok"
    assert admin.query("SET autocommit = 0").kind == "ok"
    reply = admin.query("SELECT @@autocommit, @@max_allowed_packet AS m, @@nope, CONNECTION_ID()")
    assert reply.columns == [("@@autocommit", 0x08), ("m", 0x08), ("@@nope", 0xFD), ("CONNECTION_ID()", 0x08)]
    assert reply.rows == [["0", str(1 << 20), None, str(admin.protocol.id)]]
    reply = admin.query("SHOW VARIABLES LIKE 'character\\_set\\_c%'")
    assert reply.rows == [["character_set_client", "utf8mb4"], ["character_set_connection", "utf8mb4"]]
    assert admin.query("SHOW WARNINGS").rows == []


def test_wrong_password_and_pooled_user(setup: Any) -> None:
    """The admin password alone opens the console; a pooled account does not."""
    _, service, console = setup
    denied = Console(service, console, password="nope")
    assert denied.login.kind == "err" and denied.login.code == 1045
    denied = Console(service, console, user="app", password="secret")
    assert denied.login.kind == "err" and denied.login.code == 1045


def test_password_hash() -> None:
    """With only the stored hash, a mysql_native_password proof is checked; others are refused."""
    config = build({"users": [], "admin": {"user": "boss", "password_hash": auth.stored_hash(b"pw")}})

    @attrs.define
    class Holder:
        config: Any

    credentials = AdminCredentials(Holder(config))
    nonce = auth.new_nonce()

    def verdict(plugin: str, answer: bytes) -> Any:
        found: list[Any] = []
        credentials.credential("boss").addCallback(
            lambda credential: credentials.verify(credential, plugin, nonce, answer, secure=False)
        ).addCallback(found.append)
        return found[0]

    assert verdict(auth.NATIVE, auth.native_proof(b"pw", nonce)).accepted
    assert not verdict(auth.NATIVE, auth.native_proof(b"px", nonce)).accepted
    assert not verdict(auth.CACHING_SHA2, auth.caching_sha2_proof(b"pw", nonce)).accepted
    unknown: list[Any] = []
    credentials.credential("app").addCallback(unknown.append)
    assert unknown == [None]


def test_show_pools_servers_clients(setup: Any) -> None:
    """The tables are the pool's containers, the connection's and the client's own state."""
    client, service, console = setup
    admin = Console(service, console)
    [pool] = admin.query("SHOW POOLS").table()
    assert pool["user"] == "app" and pool["idle"] == "1" and pool["in_use"] == "0"
    assert pool["borrows"] == "1" and pool["max_connections"] == "1"
    reply = admin.query("SHOW SERVERS")
    assert dict(reply.columns)["id"] == 0x08 and dict(reply.columns)["state"] == 0xFD
    [server] = reply.table()
    [conn] = service.proxy.pools[("app", service.proxy.topology.writer.name)].idle
    assert server["id"] == str(conn.id) and server["state"] == "idle" and server["client_id"] is None
    assert server["server_thread_id"] == str(conn.handshake.connection_id)
    [row] = admin.query("SHOW CLIENTS").table()
    assert row["id"] == str(client.id) and row["user"] == "app" and row["state"] == "idle"
    assert row["tls"] == "0" and row["listener"] == "pooled" and row["backend_id"] is None
    # One process: worker 0 everywhere (the columns are those of a pyproxy with workers).
    assert pool["worker"] == server["worker"] == row["worker"] == "0"
    # A transaction holds the connection: both tables say so.
    client.commands.backend = conn
    service.proxy.pools[("app", service.proxy.topology.writer.name)].idle.remove(conn)
    service.proxy.pools[("app", service.proxy.topology.writer.name)].lent.add(conn)
    [server] = admin.query("SHOW SERVERS").table()
    assert server["state"] == "in_use" and server["client_id"] == str(client.id)
    assert admin.query("SHOW CLIENTS").table()[0]["state"] == "holding"


def test_show_targets_stats_version_config_help(setup: Any) -> None:
    _, service, console = setup
    admin = Console(service, console)
    [target] = admin.query("SHOW TARGETS").table()
    assert target["writer"] == "1" and target["state"] == "unknown"
    stats = {row["name"]: int(row["value"]) for row in admin.query("SHOW STATS").table()}
    assert stats["com_query"] == 1 and stats["client_logins"] == 1 and stats["commands_relayed"] == 1
    assert stats["client_received_bytes"] == service.proxy.stats.bytes_in
    version = admin.query("SHOW VERSION").table()[0]
    assert version["server"] == service.proxy.server.version
    config = {row["key"]: row for row in admin.query("SHOW CONFIG").table()}
    assert config["admin.password"]["value"] == MASK
    assert config["users[0].password"]["value"] == MASK
    assert config["users[0].name"]["value"] == "app"
    assert config["pool.max_connections"]["default"] == "100"
    assert config["aws.secrets_refresh"]["value"] == "300.0"
    assert "admin-pw" not in repr(config)
    assert not any(row["value"] == "secret" for row in config.values())
    assert len(admin.query("SHOW HELP").rows) >= 13


def test_unknown_and_other_commands(setup: Any) -> None:
    """An unknown statement: 1064/42000 listing the commands; COM_PING answered; other
    commands refused with a clear error; COM_QUIT closes."""
    _, service, console = setup
    admin = Console(service, console)
    reply = admin.query("SHOW DATABASES")
    assert (reply.kind, reply.code, reply.sqlstate) == ("err", 1064, "42000")
    assert "SHOW POOLS" in reply.message and "KILL CLIENT" in reply.message
    admin.protocol.dataReceived(frame(b"\x0e", 0))
    assert decode(admin.transport.value(), True).kind == "ok"
    admin.transport.clear()
    admin.protocol.dataReceived(frame(b"\x16SELECT 1", 0))  # COM_STMT_PREPARE
    reply = decode(admin.transport.value(), True)
    assert reply.kind == "err" and reply.code == 1047 and "COM_STMT_PREPARE" in reply.message
    admin.transport.clear()
    admin.protocol.dataReceived(frame(b"\x01", 0))
    assert admin.transport.disconnecting


def test_pause_resume_kill_debug(setup: Any) -> None:
    client, service, console = setup
    admin = Console(service, console)
    assert admin.query("PAUSE").info.startswith("paused")
    assert service.proxy.paused and all(pool.paused for pool in service.proxy.pools.values())
    assert admin.query("PAUSE").info == "pyproxy was paused already"
    assert admin.query("RESUME").info == "resumed" and not service.proxy.paused
    reply = admin.query("KILL CLIENT 999")
    assert (reply.kind, reply.code) == ("err", 1094)
    assert admin.query(f"KILL CLIENT {client.id}").kind == "ok"
    assert client.transport.disconnecting and client.closed_reason == "killed from the admin console"
    assert admin.query("SET debug_statements_for = 30").kind == "ok"
    assert service.proxy.debug_statements is not None
    stats = {row["name"]: row["value"] for row in admin.query("SHOW STATS").table()}
    assert stats["debug_statements_seconds_left"] == "30"
    service.proxy.reactor.advance(31)
    assert service.proxy.debug_statements is None


def test_show_warnings_lists_the_last_statements_error(setup: Any) -> None:
    """As a server's: SHOW WARNINGS lists the last statement's error, and keeps it; the
    next statement without warnings clears it."""
    _, service, console = setup
    admin = Console(service, console)
    assert admin.query("KILL CLIENT 999").code == 1094
    for _ in range(2):
        assert admin.query("SHOW WARNINGS").rows == [["Error", "1094", "Unknown thread id: 999"]]
    admin.query("SHOW POOLS")
    assert admin.query("SHOW WARNINGS").rows == []


def test_reload(setup: Any, tmp_path: Path) -> None:
    """RELOAD is SIGHUP's reload; a bad configuration is an error and the running one stays."""
    _, service, console = setup
    admin = Console(service, console)
    reply = admin.query("RELOAD")
    assert reply.kind == "err" and "without a configuration" in reply.message
    good = attrs.evolve(service.config, pool=attrs.evolve(service.config.pool, max_connections=7))
    service._reload = lambda: good
    reply = admin.query("RELOAD")
    assert reply.kind == "ok" and "pool" in reply.info and service.proxy.config.pool.max_connections == 7

    def bad() -> Any:
        from pyproxy.config import ConfigError
        raise ConfigError("pool.max_connections: must be a positive number, got 0")

    service._reload = bad
    reply = admin.query("RELOAD")
    assert reply.kind == "err" and "must be a positive number" in reply.message
    assert service.proxy.config.pool.max_connections == 7


def test_shutdown(setup: Any) -> None:
    """SHUTDOWN answers, then stops the reactor; GRACEFUL keeps drain_timeout."""
    _, service, console = setup
    stopped = []
    service.reactor = MemoryReactorClock()
    service.reactor.stop = lambda: stopped.append(service._immediate)  # type: ignore[method-assign]
    service.proxy.reactor = service.reactor
    admin = Console(service, console)
    assert admin.query("SHUTDOWN GRACEFUL").kind == "ok"
    assert stopped == []
    service.reactor.advance(0)
    assert stopped == [False]
    admin.query("SHUTDOWN")
    service.reactor.advance(0)
    assert stopped == [False, True]


def test_connection_cap(setup: Any) -> None:
    """Past ADMIN_MAX_CONNECTIONS open console connections, the next gets 1040 and is closed."""
    from pyproxy.admin import ADMIN_MAX_CONNECTIONS

    _, service, console = setup
    opened = [Console(service, console) for _ in range(ADMIN_MAX_CONNECTIONS)]
    extra = AdminProtocol(console)
    transport = StringTransport()
    extra.makeConnection(transport)
    assert parse_err(PacketFramer().feed(transport.value())[0].payload).code == 1040
    assert transport.disconnecting
    opened[0].protocol.connectionLost()
    assert Console(service, console).login.kind == "ok"


def test_bad_packets_close_cleanly(setup: Any) -> None:
    """Garbage at login: an ERR and a close, never a traceback."""
    _, service, console = setup
    protocol = AdminProtocol(console)
    transport = StringTransport()
    protocol.makeConnection(transport)
    transport.clear()
    protocol.dataReceived(frame(b"\x00\x01", 1))
    assert transport.value()[4] == 0xFF and transport.disconnecting


def test_fuzzed_input_never_escapes(setup: Any) -> None:
    """Random packets and statements, before and after login: only well-formed packets
    come back, every ERR parses, nothing raises (fixed seed, so a failure replays)."""
    import random

    _, service, console = setup
    rng = random.Random(20261207)
    words = ["SHOW", "POOLS", "KILL", "CLIENT", "SET", "debug_statements_for", "=", "SELECT", "@@x", ",",
             "LIMIT", "1", "'", "\"", "`", "LIKE", "VARIABLES", "--", "/*", ";", "\\", "\xff", "-5", "1e9"]
    for case in range(400):
        admin = Console(service, console) if case % 2 else None
        protocol = admin.protocol if admin else AdminProtocol(console)
        transport = admin.transport if admin else StringTransport()
        if admin is None:
            protocol.makeConnection(transport)
        transport.clear()
        if rng.random() < 0.5:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        else:
            sql = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 8)))
            if "SHUTDOWN" in sql:
                continue
            payload = b"\x03" + sql.encode("utf-8", "surrogateescape")
        protocol.dataReceived(frame(payload, rng.randrange(3)))
        for packet in PacketFramer().feed(transport.value()):
            if packet.payload[:1] == b"\xff":
                parse_err(packet.payload)
        protocol.connectionLost()
