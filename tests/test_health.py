"""pyproxy.health: pings, retirements and min_idle, driven by a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy.backend import BackendError
from pyproxy.health import HealthChecker
from pyproxy.pool import Pool
from test_pool import FakeConnector


class HealthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector(self.clock)
        self.pool = Pool("app", self.connector, self.clock, max_size=3, borrow_timeout=5)

    def checker(self, **kwargs: Any) -> HealthChecker:
        options = {"interval": 10, "max_lifetime": 1000, "idle_timeout": 500, "min_idle": 0}
        options.update(kwargs)
        checker = HealthChecker({"app": self.pool}, self.clock, **options)  # type: ignore[arg-type]
        self.addCleanup(checker.stop)
        return checker

    def idle_connection(self, flavor: int = 0) -> Any:
        d = self.pool.borrow(flavor)
        conn = self.connector.succeed()
        self.pool.give_back(self.successResultOf(d))
        return conn

    def test_pings_connection_idle_for_an_interval(self) -> None:
        """A connection idle for a whole interval is set aside, pinged, and put back when it answers."""
        conn = self.idle_connection()
        self.checker().start()
        self.assertEqual(conn.pings, [])  # idle for 0 s at the first pass
        self.clock.advance(10)
        self.assertEqual(len(conn.pings), 1)
        self.assertIn(conn, self.pool.checking)
        self.assertIsNone(self.pool.try_borrow(0))
        conn.pings[0].callback(b"\x00\x00\x00\x02\x00\x00\x00")
        self.assertEqual(self.pool.idle, [conn])
        self.assertEqual(conn.last_checked, 10)
        self.clock.advance(9.5)
        self.assertEqual(len(conn.pings), 1)  # one more pass, but checked 10 s ago only
        self.clock.advance(0.5)
        self.assertEqual(len(conn.pings), 2)

    def test_recently_used_connection_not_pinged(self) -> None:
        """A connection used within the interval needs no ping."""
        conn = self.idle_connection()
        self.checker().start()
        self.clock.advance(9)
        borrowed = self.pool.try_borrow(0)
        self.pool.give_back(borrowed)  # last_used = 9
        self.clock.advance(1)
        self.assertEqual(conn.pings, [])

    def test_lent_connections_untouched(self) -> None:
        """Connections lent to clients are never pinged or closed."""
        d = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.successResultOf(d)
        self.checker(max_lifetime=5, idle_timeout=5).start()
        self.clock.advance(50)
        self.assertEqual((conn.pings, conn.closed), ([], None))

    def test_failed_ping_discards(self) -> None:
        """A connection whose ping fails is closed and forgotten."""
        conn = self.idle_connection()
        checker = self.checker()
        checker.start()
        self.clock.advance(10)
        conn.pings[0].errback(BackendError(2013, "HY000", "Lost connection"))
        self.assertEqual(conn.closed, "health check failed")
        self.assertEqual(self.pool.size(), 0)
        self.assertEqual((checker.pings, checker.failures), (1, 1))

    def test_failed_ping_replaced_for_min_idle(self) -> None:
        """With min_idle, a connection that failed its ping is replaced at once."""
        conn = self.idle_connection()
        self.checker(min_idle=1).start()
        self.clock.advance(10)
        conn.pings[0].errback(BackendError(2013, "HY000", "Lost connection"))
        self.assertEqual(self.connector.pending(), [0])

    def test_max_lifetime(self) -> None:
        """An idle connection older than max_lifetime is closed, whatever its use."""
        conn = self.idle_connection()
        self.checker(max_lifetime=25).start()
        for now in (10, 20, 30):
            self.clock.advance(5)
            self.pool.give_back(self.pool.try_borrow(0))  # in use: never idle for a whole interval
            self.assertIsNone(conn.closed)
            self.clock.advance(5)  # a pass at ``now``
        self.assertEqual(conn.pings, [])
        self.assertEqual(conn.closed, "max_lifetime reached")
        self.assertEqual(self.pool.size(), 0)

    def test_idle_timeout(self) -> None:
        """An idle connection unused for idle_timeout is closed."""
        conn = self.idle_connection()
        self.checker(idle_timeout=15).start()
        for _ in range(2):
            self.clock.advance(10)
            for ping in conn.pings:
                if not ping.called:
                    ping.callback(b"")
        self.assertEqual(conn.closed, "idle_timeout reached")

    def test_idle_timeout_keeps_min_idle(self) -> None:
        """idle_timeout never takes the pool below min_idle."""
        conn = self.idle_connection()
        self.checker(idle_timeout=15, min_idle=1).start()
        self.clock.advance(10)
        conn.pings[0].callback(b"")
        self.clock.advance(10)
        self.assertIsNone(conn.closed)

    def test_min_idle_opens_connections(self) -> None:
        """The checker opens connections until min_idle are idle or on their way."""
        checker = self.checker(min_idle=2)
        checker.start()
        self.assertEqual(self.connector.pending(), [0, 0])
        self.clock.advance(10)
        self.assertEqual(self.connector.pending(), [0, 0])  # already on their way
        self.connector.succeed()
        self.connector.succeed()
        self.assertEqual(len(self.pool.idle), 2)
        self.clock.advance(10)
        self.assertEqual(self.connector.pending(), [])

    def test_a_failed_ping_is_replaced_only_within_max_size(self) -> None:
        """The connection that failed its ping still counts until the server lets it
        go; min_idle above max_size must not open its replacement past the cap."""
        conn = self.idle_connection()
        self.pool.max_size = 1
        self.checker(min_idle=3).start()
        self.clock.advance(10)
        conn.close = lambda reason: True  # closed by the pool, the server has not let go yet
        conn.pings[0].errback(BackendError(2013, "HY000", "Lost connection"))
        self.assertEqual((self.pool.size(), self.connector.pending()), (1, []))

    def test_min_idle_respects_max_size(self) -> None:
        """min_idle above max_connections opens only up to the cap."""
        self.checker(min_idle=10).start()
        self.assertEqual(len(self.connector.pending()), 3)

    def test_warm_connections_have_the_flavor_clients_use(self) -> None:
        """Warm connections are opened with the flavor clients of the pool asked for last."""
        self.assertIsNone(self.pool.try_borrow(2))
        self.checker(min_idle=1).start()
        self.assertEqual(self.connector.pending(), [2])

    def test_closed_pool_skipped(self) -> None:
        """A closed pool is left alone."""
        self.pool.close()
        self.checker(min_idle=2).start()
        self.assertEqual(self.connector.pending(), [])

    def test_stop(self) -> None:
        """After stop() no pass runs."""
        conn = self.idle_connection()
        checker = self.checker()
        checker.start()
        checker.stop()
        self.clock.advance(100)
        self.assertEqual(conn.pings, [])
        checker.stop()  # twice is harmless

    def test_pools_as_list(self) -> None:
        """The checker also takes a plain list of pools."""
        conn = self.idle_connection()
        checker = HealthChecker([self.pool], self.clock, interval=10, max_lifetime=5, idle_timeout=500,
                                min_idle=0)
        checker.check()
        self.assertIsNone(conn.closed)
        self.clock.advance(5)
        checker.check()
        self.assertEqual(conn.closed, "max_lifetime reached")
