"""One backend budget across pyproxy instances on several hosts, kept in Redis
(``[budget] redis``).

Each backend connection an instance opens needs a lease: a member of a sorted set per user and
target (``<prefix>:budget:<user>:<target>``) scored with its expiry in Redis's own clock. An
instance takes a lease only while the set holds fewer than the budget (one Lua script, so two
instances never both take the last one), renews all of its leases every third of
``lease_seconds``, and returns a lease when the server has closed the connection it was for.
An instance that dies stops renewing: its leases expire, and their share of the budget is
free again within one lease period. So N instances never hold more than the budget together,
and Redis is asked only when a connection opens or closes (and by the renewals), never per
query. The calls run in the reactor's thread pool. An instance refused a lease leaves a mark;
the others see it at their next renewal (within a third of ``lease_seconds``) and close their
idle connections, whose leases then go back.

If Redis cannot be reached, the instance falls back to ``local_share`` connections per pool
and says so in its log (``budget_redis_unreachable``); when Redis answers again it takes leases
for the connections it holds, closes those it cannot cover, and says so (``budget_redis_back``).

Pools start with no room (max_size 0): the first borrower's wait asks for a lease (Pool.on_full).
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet import threads
from twisted.internet.task import LoopingCall

from pyproxy.config import BudgetConfig
from pyproxy.logs import get_logger

if TYPE_CHECKING:
    from pyproxy.pool import Pool
    from pyproxy.proxy import Proxy

#: Seconds before a pool refused a lease (the budget is all taken) may ask again.
RETRY = 0.2

# KEYS[1]: the set; ARGV: budget, lease ms, then the members to add. Drops expired leases,
# adds as many members as there is room for, and returns those added. When there was no room,
# it leaves a "wanted" mark for a lease period, which the others see at their next renewal.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local room = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local added = {}
for i = 3, #ARGV do
  if room <= 0 then break end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  table.insert(added, ARGV[i])
  room = room - 1
end
if #added == 0 and #ARGV > 2 then
  redis.call('SET', KEYS[1] .. ':wanted', '1', 'PX', lease)
end
redis.call('PEXPIRE', KEYS[1], lease * 2)
return added
"""

# KEYS[1]: the set; ARGV: budget, lease ms, then this instance's members. Extends the ones
# still there; one that expired meanwhile is taken again if there is room; returns the lost,
# and whether another instance was refused a lease lately (its "wanted" mark).
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lost = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  elseif redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], lease * 2)
return {lost, redis.call('EXISTS', KEYS[1] .. ':wanted')}
"""

Key = tuple[str, str]


def where(url: str) -> str:
    """host:port of a Redis URL, for logs (the password is never in the URL)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


class RedisStore:
    """The blocking Redis calls, run in a thread (redis-py, imported only when used)."""

    def __init__(self, config: BudgetConfig) -> None:
        try:
            import redis  # noqa: PLC0415
        except ImportError:
            raise RuntimeError("[budget] redis needs the redis package: pip install "
                               "'pyproxy[redis]'") from None
        self.client = redis.Redis.from_url(config.redis, password=config.redis_password or None,
                                           socket_timeout=2.0, socket_connect_timeout=2.0)
        self.take_script = self.client.register_script(TAKE)
        self.renew_script = self.client.register_script(RENEW)
        self.lease_ms = int(config.lease_seconds * 1000)
        self.prefix = config.prefix

    def key(self, pool: Key) -> str:
        return f"{self.prefix}:budget:{pool[0]}:{pool[1]}"

    def take(self, pool: Key, budget: int, members: list[str]) -> list[str]:
        added = self.take_script(keys=[self.key(pool)], args=[budget, self.lease_ms, *members])
        return [m.decode() if isinstance(m, bytes) else m for m in added]

    def renew(self, held: dict[Key, tuple[int, list[str]]]) -> tuple[dict[Key, list[str]], set[Key]]:
        lost, wanted = {}, set()
        for pool, (budget, members) in held.items():
            if members:
                gone, mark = self.renew_script(keys=[self.key(pool)],
                                               args=[budget, self.lease_ms, *members])
                if gone:
                    lost[pool] = [m.decode() if isinstance(m, bytes) else m for m in gone]
                if mark:
                    wanted.add(pool)
        return lost, wanted

    def give(self, pool: Key, members: list[str]) -> None:
        if members:
            self.client.zrem(self.key(pool), *members)


class RedisBudget:
    """An instance's leases, and its pools' room to match (see the module docstring)."""

    def __init__(self, proxy: Proxy, config: BudgetConfig,
                 store: Any = None, run: Callable[..., Any] | None = None) -> None:
        self.proxy = proxy
        self.config = config
        self.store = store if store is not None else RedisStore(config)
        # Runs a blocking call off the reactor thread; tests pass one that runs it at once.
        self.run = run or (lambda f, *a: threads.deferToThread(f, *a))
        worker = proxy.worker[0]
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{worker}:{os.urandom(3).hex()}"
        self._serial = itertools.count(1)
        self.held: dict[Key, list[str]] = collections.defaultdict(list)
        self.asking: set[Key] = set()
        self._retries: dict[Key, Any] = {}
        self.reachable = True
        self._renewer: LoopingCall | None = None
        self.taken = self.returned = self.refused = 0
        self.log = get_logger(component="budget", redis=where(config.redis))

    # -- what the proxy and its pools ask ---------------------------------------------------

    def share(self, key: Key, even: int) -> int:
        """A new pool's room: the leases it holds (none yet), or the local share while Redis
        is out of reach."""
        return len(self.held[key]) if self.reachable else self.config.local_share

    def attach(self, pool: Pool) -> None:
        pool.on_full = self.full
        pool.on_gone = self.gone

    def full(self, pool: Pool) -> None:
        """Borrowers wait and every lease is in use: take one more."""
        key = (pool.user, pool.target.name)
        if not self.reachable or key in self.asking or key in self._retries:
            return
        self.asking.add(key)
        member = f"{self.instance}:{next(self._serial)}"
        d = self.run(self.store.take, key, self.proxy.pool_budget(), [member])
        d.addCallbacks(lambda added: self._taken(key, added), lambda failure: self._failed(key, failure))

    def _taken(self, key: Key, added: list[str]) -> None:
        self.asking.discard(key)
        pool = self.proxy.pools.get(key)
        if not added:
            self.refused += 1
            if pool is not None and pool.waiters:
                self._retries[key] = self.proxy.reactor.callLater(RETRY, self._again, key)
            return
        self.taken += len(added)
        self.held[key].extend(added)
        if pool is not None and self.reachable:
            pool.max_size = len(self.held[key])
            pool.grow()

    def _again(self, key: Key) -> None:
        del self._retries[key]
        pool = self.proxy.pools.get(key)
        if pool is not None and pool.waiters:
            pool.grow()

    def gone(self, pool: Pool) -> None:
        """The server let one of the pool's connections go: leases nobody waits for go back."""
        if not self.reachable or pool.waiters:
            return
        key = (pool.user, pool.target.name)
        spare = len(self.held[key]) - pool.size()
        if spare <= 0:
            return
        members = [self.held[key].pop() for _ in range(spare)]
        pool.max_size = len(self.held[key])
        self.returned += len(members)
        self.run(self.store.give, key, members).addErrback(lambda failure: self._failed(key, failure))

    # -- renewals, Redis lost and found -------------------------------------------------------

    def start(self) -> None:
        self._renewer = LoopingCall(self.renew)
        self._renewer.clock = self.proxy.reactor
        self._renewer.start(self.config.lease_seconds / 3, now=False)

    def renew(self) -> Any:
        if not self.reachable:
            return self._recover()
        budget = self.proxy.pool_budget()
        snapshot = {key: (budget, list(members)) for key, members in self.held.items() if members}
        d = self.run(self.store.renew, snapshot)
        d.addCallbacks(self._renewed, lambda failure: self._failed(None, failure))
        return d

    def _renewed(self, result: tuple[dict[Key, list[str]], set[Key]]) -> None:
        lost, wanted = result
        for key in wanted:
            self._give_up_idle(key)
        for key, members in lost.items():
            held = self.held[key]
            for member in members:
                if member in held:
                    held.remove(member)
            self.log.warning("budget_leases_lost", pool=key[0], target=key[1], lost=len(members))
            pool = self.proxy.pools.get(key)
            if pool is not None:
                pool.max_size = len(held)
                pool.trim()

    def _give_up_idle(self, key: Key) -> None:
        """Another instance was refused a lease: connections idle here go, and their
        leases with them once the server has closed them, unless borrowers wait here."""
        pool = self.proxy.pools.get(key)
        if pool is None or pool.waiters:
            return
        spare = len(pool.idle) + max(0, pool.max_size - pool.size())
        for _ in range(spare):
            pool.give_up_one(lambda ok: self._give_one(key) if ok else None)

    def _give_one(self, key: Key) -> None:
        held = self.held[key]
        if not held:
            return
        member = held.pop()
        self.returned += 1
        self.run(self.store.give, key, [member]).addErrback(lambda failure: self._failed(key, failure))

    def _failed(self, key: Key | None, failure: Any) -> None:
        if key is not None:
            self.asking.discard(key)
        if not self.reachable:
            return
        self.reachable = False
        self.log.warning("budget_redis_unreachable", error=failure.getErrorMessage(),
                         local_share=self.config.local_share)
        for pool in self.proxy.pools.values():
            pool.max_size = self.config.local_share
            pool.trim()
            pool.grow()

    def _recover(self) -> Any:
        """Redis was out of reach: lease what is open now, close what cannot be covered."""
        budget = self.proxy.pool_budget()
        wanted = {key: pool.size() for key, pool in self.proxy.pools.items()}

        def take_all() -> dict[Key, list[str]]:
            out = {}
            for key, count in wanted.items():
                members = [f"{self.instance}:{next(self._serial)}" for _ in range(count)]
                out[key] = self.store.take(key, budget, members) if members else []
            return out

        def recovered(taken: dict[Key, list[str]]) -> None:
            if self.reachable:
                return
            self.reachable = True
            for key, members in taken.items():
                self.held[key] = list(members)
                pool = self.proxy.pools.get(key)
                if pool is not None:
                    pool.max_size = len(members)
                    pool.trim()
                    pool.grow()
            self.log.info("budget_redis_back", leases=sum(len(m) for m in taken.values()))

        d = self.run(take_all)
        d.addCallbacks(recovered, lambda failure: None)  # still out of reach: try again later
        return d

    def reset(self) -> None:
        """A reload: leases stay what they are (the budget is read at each take)."""

    def close(self) -> Any:
        """Shutdown: every lease goes back at once rather than expiring."""
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        held, self.held = dict(self.held), collections.defaultdict(list)
        if not self.reachable:
            return None

        def give_all() -> None:
            for key, members in held.items():
                self.store.give(key, members)

        return self.run(give_all).addErrback(lambda failure: None)

    def stats(self) -> dict[str, Any]:
        return {"leases": sum(len(m) for m in self.held.values()), "taken": self.taken,
                "returned": self.returned, "refused": self.refused, "redis_reachable": self.reachable}
