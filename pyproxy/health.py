"""Periodic care of idle backend connections: ping, retire, keep warm.

Idle connections are the ones a client will get next, so they are the ones
checked: a connection idle for a whole interval is pinged before it can be
lent again, and one that fails is replaced.  Lent connections are never
touched; their failures reach their client directly.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from pyproxy.backend import BackendConnection
from pyproxy.logs import get_logger
from pyproxy.pool import Pool


class HealthChecker:
    """Every ``interval``: retires idle connections past max_lifetime or
    idle_timeout, pings those idle for a whole interval, and opens connections
    until each pool has min_idle (of the flavor its clients used last)."""

    def __init__(self, pools: Iterable[Pool] | dict, clock: IReactorTime, *, interval: float,
                 max_lifetime: float, idle_timeout: float, min_idle: int) -> None:
        self._pools = pools
        self.clock = clock
        self.interval = interval
        self.max_lifetime = max_lifetime
        self.idle_timeout = idle_timeout
        self.min_idle = min_idle
        self.log = get_logger(component="health")
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self.pings = 0
        self.failures = 0

    def pools(self) -> list[Pool]:
        return list(self._pools.values()) if isinstance(self._pools, dict) else list(self._pools)

    def start(self) -> None:
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        now = self.clock.seconds()
        for pool in self.pools():
            if pool.closed or pool.paused or (pool.target is not None and not pool.target.usable):
                continue  # a down server's connections were closed; its probe watches it
            for conn in list(pool.idle):
                if now - conn.created_at >= self.max_lifetime:
                    pool.discard(conn, "max_lifetime reached")
                elif now - conn.last_used >= self.idle_timeout and len(pool.idle) > self.min_idle:
                    pool.discard(conn, "idle_timeout reached")
                elif now - max(conn.last_used, conn.last_checked) >= self.interval:
                    self._ping(pool, conn)
            missing = self.min_idle - len(pool.idle) - len(pool.checking) - pool.connecting
            while missing > 0 and pool.size() < pool.max_size:
                pool.open(pool.last_flavor)
                missing -= 1

    def _ping(self, pool: Pool, conn: BackendConnection) -> None:
        pool.begin_check(conn)
        self.pings += 1

        def alive(_: bytes) -> None:
            conn.last_checked = self.clock.seconds()
            pool.end_check(conn)

        def dead(failure: Failure) -> None:
            self.failures += 1
            self.log.warning("backend_replaced", backend_id=conn.id, reason="health check failed",
                             error=failure.getErrorMessage())
            pool.discard(conn, "health check failed")
            if pool.size() < min(self.min_idle, pool.max_size):
                pool.open(pool.last_flavor)

        conn.ping().addCallbacks(alive, dead)
