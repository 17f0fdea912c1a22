"""pyproxy.query_stats and pyproxy.statement_log, through a real client connection and
CommandPhase (bench/hotpath.py's in-memory set-up: a logged-in client, one backend
connection that replays MariaDB's captured replies)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import structlog
import vectors
from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.hotpath import SELECT_REPLY, build_setup  # noqa: E402
from pyproxy import metrics  # noqa: E402
from pyproxy.config import build  # noqa: E402
from pyproxy.proxy import Proxy, ServerInfo  # noqa: E402
from pyproxy.query_stats import LATENCY_BUCKETS, QueryStats, is_secure  # noqa: E402
from pyproxy.statement_log import StatementLog  # noqa: E402
from pyproxy.wire.commands import make_query  # noqa: E402
from pyproxy.wire.constants import COMMAND  # noqa: E402
from pyproxy.wire.framing import frame  # noqa: E402
from test_metrics import FakeHealth, scrape  # noqa: E402


def run_queries(count: int, classic: bool = False) -> tuple[Any, Any, int, int]:
    """``count`` point selects through a logged-in client; returns the client, its
    backend connection, and the bytes it sent and was sent during them."""
    client, (conn, client_transport, _), query = build_setup(classic)
    for index in range(count):
        client.dataReceived(query)
        if index == 0:
            # The client negotiated no CLIENT_MULTI_STATEMENTS: the connection is set
            # so first (COM_SET_OPTION), in the same write.
            conn.dataReceived(vectors.PING_OK)
        client.proxy.reactor.advance(0.003)  # the server takes 3 ms
        conn.dataReceived(SELECT_REPLY)
    return client, conn, len(query) * count, len(client_transport.value())


def test_commands_bytes_and_latency_are_counted() -> None:
    """Each COM_QUERY is counted by command, its bytes both ways exactly, and its time
    (3 ms on the clock) lands in the 5 ms bucket."""
    client, _, received, sent = run_queries(5)
    stats = client.proxy.stats
    assert stats.commands[COMMAND.COM_QUERY] == 5
    assert sum(stats.commands) == 5
    # The login's greeting and OK were counted too (the set-up cleared them from the transport).
    assert stats.bytes_out > sent
    assert stats.bytes_in > received
    assert stats.logins_plain == 1 and stats.logins_tls == 0
    bucket = LATENCY_BUCKETS.index(0.005)
    assert stats.latency[bucket] == 5 and sum(stats.latency) == 5
    assert abs(stats.latency_sum - 0.015) < 1e-9


def test_bytes_match_the_transports() -> None:
    """bytes_in is everything the client wrote (login included); bytes_out everything it
    was written."""
    client, (conn, client_transport, _), query = build_setup(False)
    stats = client.proxy.stats
    written_before, read_before = stats.bytes_out, stats.bytes_in
    for _ in range(3):
        client.dataReceived(query)
        conn.dataReceived(vectors.PING_OK if _ == 0 else b"")
        conn.dataReceived(SELECT_REPLY)
    client.dataReceived(frame(b"\x0e", 0))  # COM_PING, answered by pyproxy
    assert stats.bytes_out - written_before == len(client_transport.value())
    assert stats.bytes_in - read_before == 3 * len(query) + 5


def test_metrics_page_shows_them() -> None:
    """The scrape reads the same counters: by command name, bytes, the histogram, transports."""
    client, _, _, _ = run_queries(3)
    registry = CollectorRegistry()
    registry.register(metrics.ProxyCollector(client.proxy, FakeHealth()))
    samples = scrape(registry)
    stats = client.proxy.stats
    assert samples[("pyproxy_client_commands_total", frozenset({("command", "COM_QUERY")}))] == 3
    assert samples[("pyproxy_client_received_bytes_total", frozenset())] == stats.bytes_in
    assert samples[("pyproxy_client_sent_bytes_total", frozenset())] == stats.bytes_out
    assert samples[("pyproxy_statement_latency_seconds_count", frozenset())] == 3
    assert samples[("pyproxy_statement_latency_seconds_bucket", frozenset({("le", "0.0025")}))] == 0
    assert samples[("pyproxy_statement_latency_seconds_bucket", frozenset({("le", "0.005")}))] == 3
    assert samples[("pyproxy_client_logins_by_transport_total", frozenset({("transport", "plaintext")}))] == 1
    assert samples[("pyproxy_client_connections_by_transport", frozenset({("transport", "tls")}))] == 0
    assert samples[("pyproxy_client_connections_by_transport",
                    frozenset({("transport", "plaintext")}))] == 1


def test_secure_flag() -> None:
    """A client that says it is secure (the TLS work sets it) counts as TLS."""

    class Client:
        transport = None
        secure = True

    assert is_secure(Client())
    Client.secure = False
    assert not is_secure(Client())


def test_histogram_edges() -> None:
    """bisect_left: a time equal to a bound is in that bucket; past the last, in the overflow."""
    stats = QueryStats()
    assert stats.latency_cumulative()[-1] == (float("inf"), 0)
    assert len(stats.latency) == len(LATENCY_BUCKETS) + 1


class TestStatementLog:
    def setup_method(self) -> None:
        self.clock = MemoryReactorClock()
        config = build({"users": [{"name": "app", "password": "pw"}]})
        self.proxy = Proxy(config, self.clock, ServerInfo("10.11.19-MariaDB", 0xFFFFFFFF, 45, 2))

    def test_switches_itself_off(self) -> None:
        """On for 60 s: debug_statements is set, then cleared by the clock."""
        log = self.proxy.statement_log
        with structlog.testing.capture_logs() as events:
            log.turn_on_for(60)
            assert self.proxy.debug_statements is log and log.remaining == 60
            self.clock.advance(59.5)
            assert self.proxy.debug_statements is log
            self.clock.advance(1)
            assert self.proxy.debug_statements is None and log.remaining == 0
        assert [e["event"] for e in events] == ["debug_statements_on", "debug_statements_off"]
        assert events[1]["reason"] == "time is up"

    def test_turned_on_again_extends_and_zero_stops(self) -> None:
        log = self.proxy.statement_log
        log.turn_on_for(10)
        self.clock.advance(5)
        log.turn_on_for(10)
        self.clock.advance(7)
        assert self.proxy.debug_statements is log
        log.turn_on_for(0)
        assert self.proxy.debug_statements is None
        assert not self.clock.getDelayedCalls()

    def test_config_turns_it_on_at_start(self) -> None:
        config = build({"users": [{"name": "app", "password": "pw"}], "log": {"debug_statements_for": 30}})
        proxy = Proxy(config, self.clock, ServerInfo("10.11.19-MariaDB", 0xFFFFFFFF, 45, 2))
        proxy.start()
        try:
            assert proxy.debug_statements is not None and proxy.statement_log.remaining == 30
        finally:
            proxy.close()
        assert proxy.debug_statements is None


def test_statements_logged_as_digests_through_a_client() -> None:
    """While on, each COM_QUERY is one ``statement`` event with the client, its user, the
    backend connection and the digest; no value appears.  Off: nothing."""
    client, (conn, _, _), _ = build_setup(False)
    query = frame(make_query("SELECT name FROM app.t WHERE id = 42 AND name = 'hunter2'"), 0)
    with structlog.testing.capture_logs() as events:
        client.dataReceived(query)
        conn.dataReceived(vectors.PING_OK)
        conn.dataReceived(SELECT_REPLY)
        client.proxy.statement_log.turn_on_for(1)
        client.dataReceived(query)
        conn.dataReceived(SELECT_REPLY)
        client.proxy.reactor.advance(2)
        client.dataReceived(query)
        conn.dataReceived(SELECT_REPLY)
    statements = [e for e in events if e["event"] == "statement"]
    assert len(statements) == 1
    [event] = statements
    assert event["digest"] == "SELECT name FROM app.t WHERE id = ? AND name = ?"
    assert event["client_id"] == client.id and event["user"] == "app"
    assert event["backend_id"] == conn.id and event["command"] == "COM_QUERY"
    assert not any("hunter2" in repr(e) or "42" in repr(e.get("digest")) for e in events)
