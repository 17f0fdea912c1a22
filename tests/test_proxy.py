"""pyproxy.proxy: what topology changes and reloads do to the pools."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy.config import build
from pyproxy.pool import Pool
from pyproxy.proxy import Proxy, ServerInfo
from test_pool import FakeConnector

TARGETS = [{"host": "w", "port": 1}, {"host": "r", "port": 2, "role": "auto"},
           {"host": "s", "port": 3, "role": "reader"}]


def configure(targets: list[dict[str, Any]] = TARGETS, **sections: Any) -> Any:
    return build({"backend": {"targets": targets}, "pool": {"max_connections": 1, "borrow_timeout": 5},
                  "users": [{"name": "app", "password": "pw"}], **sections})


class ProxyTopologyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.proxy = Proxy(configure(), self.reactor, ServerInfo("10.11.19-MariaDB", 0xFFFFFFFF, 45, 2))
        self.connectors: dict[str, FakeConnector] = {}
        for target in self.proxy.topology.targets:
            connector = self.connectors[target.name] = FakeConnector(self.reactor)
            self.proxy.pools[("app", target.name)] = Pool("app", connector, self.reactor, max_size=1,
                                                          borrow_timeout=5, target=target)
        self.w, self.r, self.s = self.proxy.topology.targets
        for target, state in ((self.w, "up"), (self.r, "read_only"), (self.s, "read_only")):
            target.state = state

    def pool(self, target: Any) -> Pool:
        return self.proxy.pool("app", target)

    def test_writer_change_moves_waiters(self) -> None:
        lent = self.pool(self.w).borrow(0)
        self.connectors["w:1"].succeed()
        self.successResultOf(lent)
        waiting = self.pool(self.w).borrow(0)  # the writer's pool (1) is full
        self.proxy.topology._set(self.w, "read_only")
        self.proxy.topology._set(self.r, "up")
        self.assertIs(self.proxy.topology.writer, self.r)
        self.assertEqual(len(self.pool(self.w).waiters), 0)
        conn = self.connectors["r:2"].succeed()
        self.assertIs(self.successResultOf(waiting), conn)

    def test_down_server_closes_idle_and_sends_readers_elsewhere(self) -> None:
        reader = self.pool(self.s)
        held = reader.borrow(0)
        idle_conn = self.connectors["s:3"].succeed()
        reader.give_back(self.successResultOf(held))
        self.assertEqual(reader.idle, [idle_conn])
        lent = reader.borrow(0)
        self.successResultOf(lent)
        waiting = reader.borrow(0)
        self.proxy.topology._set(self.s, "down")
        self.assertEqual(len(reader.waiters), 0)
        # Sent to the other reader (r), the only other server up and not the writer.
        conn = self.connectors["r:2"].succeed()
        self.assertIs(self.successResultOf(waiting), conn)

    def test_down_writer_keeps_its_waiters(self) -> None:
        """With nothing else writable, writer traffic waits for the writer to come back."""
        waiting = self.pool(self.w).borrow(0)
        self.proxy.topology._set(self.w, "down")
        self.assertIs(self.proxy.topology.writer, self.w)
        self.assertEqual(len(self.pool(self.w).waiters), 1)
        self.assertNoResult(waiting)

    def test_route(self) -> None:
        self.assertIs(self.proxy.route("app", False, None).target, self.w)
        first = self.proxy.route("app", True, None)
        self.assertIn(first.target, (self.r, self.s))
        self.assertIs(self.proxy.route("app", True, first), first)  # sticky

    def test_reload_removes_a_server(self) -> None:
        reader = self.pool(self.s)
        lent = reader.borrow(0)
        self.connectors["s:3"].succeed()
        self.successResultOf(lent)
        waiting = reader.borrow(0)
        self.proxy.reconfigure(configure(TARGETS[:2]))
        self.assertNotIn(("app", "s:3"), self.proxy.pools)
        self.assertTrue(reader.closed)
        self.assertTrue(self.s.retired)
        conn = self.connectors["r:2"].succeed()
        self.assertIs(self.successResultOf(waiting), conn)

    def test_reload_of_other_settings_keeps_connections(self) -> None:
        """Changing the target list or pool sizes does not renew the pools; a new
        password or default schema does."""
        writer = self.pool(self.w)
        d = writer.borrow(0)
        conn = self.connectors["w:1"].succeed()
        writer.give_back(self.successResultOf(d))
        self.proxy.reconfigure(configure(TARGETS[:2], health={"interval": 3}))
        self.assertEqual(writer.idle, [conn])
        self.assertEqual(self.proxy.topology.interval, 3)
        config = configure(TARGETS[:2])
        self.proxy.reconfigure(attrs.evolve(config, backend=attrs.evolve(config.backend, database="other")))
        self.assertEqual(writer.idle, [])
        self.assertEqual(conn.closed, "configuration changed")

    def test_monitor_login(self) -> None:
        login = self.proxy._monitor_login(self.r.config)
        self.assertEqual((login.host, login.port, login.user, login.database), ("r", 2, "app", None))
        self.proxy.config = configure(health={"user": "mon", "password": "mpw"})
        login = self.proxy._monitor_login(self.r.config)
        self.assertEqual((login.user, login.password), ("mon", "mpw"))

    def test_reader_back_takes_read_only_waiters_from_a_down_writer(self) -> None:
        """With no reader, read-only sessions wait on the writer; when the writer is down
        and a reader comes back, those (and only those) move to it."""
        self.proxy.topology._set(self.r, "down")
        self.proxy.topology._set(self.s, "down")
        self.proxy.topology._set(self.w, "down")
        writer = self.pool(self.w)
        reads = writer.borrow(0, readonly=True)
        writes = writer.borrow(0)
        self.proxy.topology._set(self.s, "read_only")
        self.assertEqual([waiter.deferred for waiter in writer.waiters], [writes])
        conn = self.connectors["s:3"].succeed()
        self.assertIs(self.successResultOf(reads), conn)
        self.assertNoResult(writes)
        self.reactor.advance(5)
        self.failureResultOf(writes)  # its own deadline still ran on the writer's pool
