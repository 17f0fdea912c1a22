"""pyproxy.redis_budget's bookkeeping with a fake store run at once: leases taken when a pool
is full, refused and retried, returned when a connection is gone, given up when another
instance wants one, and the local share while Redis is out of reach."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pyproxy import config as configuration
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.redis_budget import RETRY, RedisBudget
from tests.test_pool import FakeConnection


@pytest.fixture(autouse=True)
def no_real_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opens stay pending: what is checked is how many the pool starts."""
    monkeypatch.setattr(Proxy, "_open", lambda self, user, server, flavor: defer.Deferred())


class FakeStore:
    """Leases in a dict; ``down`` makes every call fail like an unreachable Redis."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.leases: dict[Any, list[str]] = {}
        self.wanted: set[Any] = set()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("Connection refused")

    def take(self, key: Any, budget: int, members: list[str]) -> list[str]:
        self._check()
        held = self.leases.setdefault(key, [])
        added = members[:max(0, budget - len(held))]
        held.extend(added)
        if members and not added:
            self.wanted.add(key)
        return added

    def renew(self, held: dict[Any, Any]) -> tuple[dict[Any, list[str]], set[Any]]:
        self._check()
        return {}, {key for key in held if key in self.wanted}

    def give(self, key: Any, members: list[str]) -> None:
        self._check()
        for member in members:
            self.leases[key].remove(member)


def setup(budget: int = 2) -> tuple[Proxy, RedisBudget, FakeStore, Clock]:
    config = configuration.load(None, {"PYPROXY_USERS": "app:pw",
                                       "PYPROXY_POOL_MAX_CONNECTIONS": str(budget),
                                       "PYPROXY_BUDGET_REDIS": "redis://127.0.0.1:6399/0",
                                       "PYPROXY_BUDGET_LOCAL_SHARE": "1"})
    clock = Clock()
    proxy = Proxy(config, clock, ServerInfo("5.5.5", 0, 45, 2))
    store = FakeStore(budget)
    budget_ = RedisBudget(proxy, config.budget, store=store, run=defer.maybeDeferred)
    proxy.budget = budget_
    return proxy, budget_, store, clock


def test_a_pool_starts_without_room_and_takes_a_lease_per_connection() -> None:
    proxy, budget, store, _ = setup()
    pool = proxy.pool("app")
    assert pool.max_size == 0 and pool.on_full is not None and pool.on_gone is not None
    pool.borrow(0)
    assert pool.max_size == 1 and pool.connecting == 1
    assert len(store.leases[("app", pool.target.name)]) == 1 and budget.taken == 1


def test_refused_then_retried_after_retry_seconds() -> None:
    proxy, budget, store, clock = setup(budget=1)
    key = ("app", proxy.topology.writer.name)
    store.leases[key] = ["someone-else"]
    pool = proxy.pool("app")
    pool.borrow(0)
    assert pool.max_size == 0 and budget.refused == 1 and key in store.wanted
    store.leases[key] = []  # the other instance's lease expired
    clock.advance(RETRY)
    assert pool.max_size == 1 and pool.connecting == 1


def test_leases_go_back_when_the_server_let_the_connection_go() -> None:
    proxy, budget, store, _ = setup()
    pool = proxy.pool("app")
    key = ("app", pool.target.name)
    budget.held[key] = ["me:1", "me:2"]
    store.leases[key] = ["me:1", "me:2"]
    pool.max_size = 2
    conn = FakeConnection(0, Clock())
    conn.on_lost = pool._lost
    pool.idle.append(conn)
    conn.lose()  # one connection gone, nobody waiting: both spare leases go back
    assert store.leases[key] == [] and pool.max_size == 0 and budget.returned == 2


def test_another_instance_wanting_makes_idle_connections_go() -> None:
    proxy, budget, store, _ = setup()
    pool = proxy.pool("app")
    key = ("app", pool.target.name)
    budget.held[key] = ["me:1"]
    store.leases[key] = ["me:1"]
    pool.max_size = 1
    conn = FakeConnection(0, Clock())
    pool.idle.append(conn)
    store.wanted.add(key)
    budget.renew()
    assert conn.closed == "budget lent to another worker"
    assert store.leases[key] == [] and budget.held[key] == []


def test_unreachable_redis_gives_the_local_share_and_recovery_leases_what_is_open() -> None:
    proxy, budget, store, _ = setup(budget=3)
    pool = proxy.pool("app")
    key = ("app", pool.target.name)
    store.down = True
    pool.borrow(0)
    assert not budget.reachable and pool.max_size == 1 and pool.connecting == 1
    budget.renew()  # still down: nothing changes
    assert not budget.reachable
    store.down = False
    budget.renew()
    assert budget.reachable and len(store.leases[key]) == 1 and pool.max_size == 1


def test_close_returns_every_lease() -> None:
    proxy, budget, store, _ = setup()
    key = ("app", proxy.topology.writer.name)
    budget.held[key] = ["me:1"]
    store.leases[key] = ["me:1"]
    budget.close()
    assert store.leases[key] == [] and budget.stats()["leases"] == 0
