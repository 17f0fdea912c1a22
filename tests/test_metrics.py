"""pyproxy.metrics: what a scrape reads off the pools, the topology and the proxy."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy import metrics
from pyproxy.config import build
from pyproxy.pool import Pool
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.session import ClientSession, SessionState
from test_pool import FakeConnector

TARGETS = [{"host": "w", "port": 1}, {"host": "r", "port": 2, "role": "auto"}]


@attrs.define
class FakeClient:
    """What a scrape reads of a client connection: its session."""

    session: ClientSession | None


@attrs.define
class FakeHealth:
    pings: int = 0
    failures: int = 0


class ImmediateReactor:
    """A reactor thread that is the caller's own."""

    def callFromThread(self, function: Any, *args: Any) -> None:
        function(*args)


class SilentReactor:
    """A reactor that never runs what it is handed (it is stopping)."""

    def callFromThread(self, function: Any, *args: Any) -> None:
        pass


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the text a Prometheus server would read, by name and labels."""
    text = generate_latest(registry).decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = build({"backend": {"targets": TARGETS},
                        "pool": {"max_connections": 2, "borrow_timeout": 5},
                        "users": [{"name": "app", "password": "pw"}]})
        self.proxy = Proxy(config, self.reactor, ServerInfo("10.11.19-MariaDB", 0xFFFFFFFF, 45, 2))
        self.w, self.r = self.proxy.topology.targets
        self.connector = FakeConnector(self.reactor)
        self.pool = self.proxy.pools[("app", "w:1")] = Pool(
            "app", self.connector, self.reactor, max_size=2, borrow_timeout=5, target=self.w)
        self.health = FakeHealth()
        self.registry = CollectorRegistry()
        self.registry.register(metrics.ProxyCollector(self.proxy, self.health))

    def value(self, name: str, **values: str) -> float:
        return scrape(self.registry)[(name, labels(**values))]

    def pool_value(self, name: str, **values: str) -> float:
        return self.value(name, target="w:1", user="app", **values)

    def test_backend_connections_are_the_pool_containers(self) -> None:
        """The state gauges are the pool's own container sizes, whatever happened."""
        first = self.pool.borrow(0)
        self.connector.succeed()
        conn = self.successResultOf(first)
        second = self.pool.borrow(0)  # opens a second connection
        self.assertEqual(self.pool_value("pyproxy_backend_connections", state="opening"), 1)
        self.connector.succeed()
        self.successResultOf(second)
        self.pool.give_back(conn)
        stats = self.pool.stats()
        for state, key in (("idle", "idle"), ("in_use", "lent"), ("checking", "checking"),
                           ("closing", "closing"), ("opening", "connecting")):
            self.assertEqual(self.pool_value("pyproxy_backend_connections", state=state), stats[key], state)
        self.assertEqual((stats["idle"], stats["lent"]), (1, 1))
        self.assertEqual(self.pool_value("pyproxy_backend_connections_max"), 2)
        self.assertEqual(self.pool_value("pyproxy_backend_connections_opened_total"), 2)
        self.assertEqual(self.pool_value("pyproxy_backend_borrows_total"), stats["borrows"])
        self.assertEqual(self.pool_value("pyproxy_backend_borrow_waits_total"), stats["waits"])

    def test_borrow_wait_histogram(self) -> None:
        """Borrows served at once count as waits of 0; waits and timeouts fall in their
        buckets; count and sum add up."""
        lent = [self.pool.borrow(0), self.pool.borrow(0)]
        self.connector.succeed()
        self.connector.succeed()
        conns = [self.successResultOf(d) for d in lent]
        self.pool.give_back(conns[0])
        self.successResultOf(self.pool.borrow(0))  # at once
        waiting = self.pool.borrow(0)
        self.reactor.advance(2.0)
        self.pool.give_back(conns[1])
        self.successResultOf(waiting)
        timing_out = self.pool.borrow(0)
        self.reactor.advance(5.0)
        self.failureResultOf(timing_out)
        bucket = "pyproxy_backend_borrow_wait_seconds_bucket"
        # The first two borrows waited for their opens, which fired at once (0 s).
        self.assertEqual(self.pool_value(bucket, le="0.001"), 3)
        self.assertEqual(self.pool_value(bucket, le="1.0"), 3)
        self.assertEqual(self.pool_value(bucket, le="2.5"), 4)
        self.assertEqual(self.pool_value(bucket, le="5.0"), 5)
        self.assertEqual(self.pool_value(bucket, le="+Inf"), 5)
        self.assertEqual(self.pool_value("pyproxy_backend_borrow_wait_seconds_count"), 5)
        self.assertAlmostEqual(self.pool_value("pyproxy_backend_borrow_wait_seconds_sum"), 7.0)
        self.assertEqual(self.pool_value("pyproxy_backend_borrow_timeouts_total"), 1)
        self.assertEqual(self.pool_value("pyproxy_backend_borrows_total"), 4)

    def test_closed_connections_counted_once_by_reason(self) -> None:
        """A connection closed by pyproxy counts under its reason (cut before the error
        text), one that dies on its own as lost, and one discarded after it died only
        once."""
        lent = [self.pool.borrow(0), self.pool.borrow(0)]
        self.connector.succeed()
        self.connector.succeed()
        first, second = (self.successResultOf(d) for d in lent)
        self.pool.discard(first, "reset failed: (1105) Unknown error at 10.0.0.7")
        second.lose()
        self.pool.discard(second, "lost during a command")
        self.assertEqual(self.pool_value("pyproxy_backend_connections_closed_total", reason="reset failed"), 1)
        self.assertEqual(self.pool_value("pyproxy_backend_connections_closed_total", reason="lost"), 1)
        samples = scrape(self.registry)
        closed = [key for key in samples if key[0] == "pyproxy_backend_connections_closed_total"]
        self.assertEqual(len(closed), 2, closed)

    def test_clients_sessions_and_pins(self) -> None:
        """Client counts, outcomes, pinned and in-transaction sessions, and pins by reason
        without the routine a reason names."""
        proxy = self.proxy
        proxy.connections_accepted = 7
        pinned = ClientSession(SessionState(), pin_reason="user variable set")
        busy = ClientSession(SessionState(), in_transaction=True)
        proxy.clients.update({1: FakeClient(pinned), 2: FakeClient(busy), 3: FakeClient(None)})
        for secure in (False, True):
            proxy.client_connected(_Log(), None, secure)
        proxy.client_closed(_Log(), "Access denied for user 'app'@'10.0.0.7' (using password: YES)")
        proxy.client_closed(_Log(), "max_client_connections reached")
        proxy.client_closed(_Log(), "COM_QUIT")
        proxy.pins["stored code that may leave state behind (user variable set in shop.audit)"] += 1
        proxy.pins["stored code that may leave state behind (user variable set in shop.other)"] += 2
        proxy.resets = 4
        proxy.writes_retried = 5
        self.assertEqual(self.value("pyproxy_client_connections"), 3)
        self.assertEqual(self.value("pyproxy_client_connections_accepted_total"), 7)
        self.assertEqual(self.value("pyproxy_client_logins_total"), 2)
        self.assertEqual(self.value("pyproxy_client_logins_tls_total"), 1)
        self.assertEqual(self.value("pyproxy_client_connections_closed_total",
                                    reason="Access denied for user"), 1)
        for outcome, count in (("ok", 2), ("auth_failure", 1), ("refused_at_limit", 1),
                               ("handshake_timeout", 0)):
            self.assertEqual(self.value("pyproxy_client_connection_outcomes_total", outcome=outcome),
                             count, outcome)
        self.assertEqual(self.value("pyproxy_sessions_pinned"), 1)
        self.assertEqual(self.value("pyproxy_sessions_in_transaction"), 1)
        self.assertEqual(self.value("pyproxy_session_pins_total",
                                    reason="stored code that may leave state behind (user variable set)"), 3)
        self.assertEqual(self.value("pyproxy_backend_resets_total"), 4)
        self.assertEqual(self.value("pyproxy_writes_retried_total"), 5)
        for name, label_set in scrape(self.registry):
            for _, value in label_set:
                self.assertNotIn("10.0.0.7", value)
                self.assertNotIn("shop.", value)

    def test_auth_failures_by_reason(self) -> None:
        """Refused logins by their fixed reason, as the login counts them through its owner."""
        self.proxy.auth_failures.update({"wrong_password": 3, "clear_text_without_tls": 1})
        self.assertEqual(self.value("pyproxy_auth_failures_total", reason="wrong_password"), 3)
        self.assertEqual(self.value("pyproxy_auth_failures_total", reason="clear_text_without_tls"), 1)

    def test_targets_and_failovers(self) -> None:
        """Each target's state as a labelled gauge, its time in that state, the writer,
        probes and failovers."""
        topology = self.proxy.topology
        self.reactor.advance(10)
        topology._set(self.w, "up")
        topology._set(self.r, "read_only")
        self.reactor.advance(3)
        topology._set(self.r, "up")
        topology._set(self.w, "read_only")  # the writer turns read-only: r takes over
        self.w.probes, self.w.failed_probes = 5, 2
        self.health.pings, self.health.failures = 9, 1
        self.reactor.advance(1.5)
        for state in ("unknown", "up", "read_only", "down"):
            self.assertEqual(self.value("pyproxy_target_state", target="w:1", role="writer", state=state),
                             int(state == "read_only"), state)
            self.assertEqual(self.value("pyproxy_target_state", target="r:2", role="auto", state=state),
                             int(state == "up"), state)
        self.assertEqual(self.value("pyproxy_target_state_seconds", target="w:1"), 1.5)
        self.assertEqual(self.value("pyproxy_target_writer", target="r:2"), 1)
        self.assertEqual(self.value("pyproxy_target_writer", target="w:1"), 0)
        self.assertEqual(self.value("pyproxy_failovers_total"), 1)
        self.assertEqual(self.value("pyproxy_target_probes_total", target="w:1"), 5)
        self.assertEqual(self.value("pyproxy_target_probe_failures_total", target="w:1"), 2)
        self.assertEqual(self.value("pyproxy_health_pings_total"), 9)
        self.assertEqual(self.value("pyproxy_health_ping_failures_total"), 1)

    def test_every_name_is_prefixed(self) -> None:
        """Every metric of the served registry, the process's included, is pyproxy_*,
        and a scrape reads pyproxy's state on the reactor thread."""
        registry = metrics.registry(self.proxy, self.health, ImmediateReactor())
        names = {name for name, _ in scrape(registry)}
        self.assertIn("pyproxy_client_connections", names)
        self.assertIn("pyproxy_process_open_fds", names)
        self.assertEqual({name for name in names if not name.startswith("pyproxy_")}, set())


class _Log:
    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_bounded_keeps_the_first_reasons_and_sums_the_rest() -> None:
    """Past MAX_REASONS distinct reasons, later ones are counted as "other", and a
    reason that has its own label keeps it as others come."""
    counts = {f"reason {chr(65 + i)}": 1 for i in range(5)}
    assert metrics.bounded(counts, limit=3) == {"reason A": 1, "reason B": 1, "reason C": 1, "other": 2}
    counts["reason A"] = 9
    assert metrics.bounded(counts, limit=3)["reason A"] == 9


def test_a_scrape_waits_for_the_reactor_thread_only_so_long() -> None:
    """A reactor that never runs the read (one that is stopping) fails the scrape
    instead of hanging its thread, and the reactor's errors reach the scrape."""
    with pytest.raises(TimeoutError):
        metrics.on_reactor(SilentReactor(), lambda: 1, timeout=0.01)
    assert metrics.on_reactor(ImmediateReactor(), lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        metrics.on_reactor(ImmediateReactor(), lambda: 1 / 0)
