"""A worker's side of the backend budget that ``[proxy] workers`` share.

Each worker starts with its share of every pool's budget (Proxy.worker_share); the shares add
up to ``max_connections``. Shares then move to where clients wait: a worker whose pool is full
while borrowers wait asks its supervisor for a unit (``want``); the supervisor asks the other
workers in turn to give one up (``reclaim``), and a worker gives a unit it does not use at once,
or closes an idle connection and gives its unit once the server has closed it; the supervisor
then hands the unit to the worker that asked (``grant``). So a client never waits while budget
is held idle in another worker, and the sum of the shares never grows: the server never sees
more than the budget from all workers together.

The supervisor keeps the ledger of how far each worker's shares have moved from the even split
(pyproxy.workers.BudgetBroker), so a worker started again after dying gets its shares back.
Nothing here runs per query: only when a pool is full, and then at most once per pool per
RETRY seconds.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyproxy.logs import get_logger

if TYPE_CHECKING:
    from pyproxy.pool import Pool
    from pyproxy.proxy import Proxy

#: Seconds before a pool that was refused a unit may ask again while it is still full.
RETRY = 0.2

Key = tuple[str, str]


class WorkerBudget:
    """Asks for units when a pool is full, gives them up when asked."""

    def __init__(self, proxy: Proxy, send: Callable[[dict[str, Any]], None],
                 moved: dict[Key, int] | None = None) -> None:
        self.proxy = proxy
        self.send = send
        # Units this worker holds above (or below) its even share, by (user, target).
        self.moved: collections.Counter[Key] = collections.Counter(moved or {})
        self.asking: set[Key] = set()
        self._retries: dict[Key, Any] = {}
        self.log = get_logger(component="budget")

    def share(self, key: Key, even: int) -> int:
        """A pool's max_size when it is made: the even share, moved as the ledger says."""
        return max(0, even + self.moved[key])

    def attach(self, pool: Pool) -> None:
        pool.on_full = self.full

    def full(self, pool: Pool) -> None:
        """Pool.on_full: borrowers wait and every unit is in use here."""
        key = (pool.user, pool.target.name)
        if key in self.asking or key in self._retries:
            return
        self.asking.add(key)
        self.send({"op": "want", "user": key[0], "target": key[1]})

    def granted(self, message: dict[str, Any]) -> None:
        key = (message["user"], message["target"])
        self.asking.discard(key)
        pool = self.proxy.pools.get(key)
        if message.get("ok"):
            self.moved[key] += 1
            if pool is not None:
                pool.max_size += 1
                self.log.debug("budget_granted", pool=key[0], target=key[1], max_size=pool.max_size)
                pool.grow()
            return
        if pool is not None and pool.waiters:
            self._retries[key] = self.proxy.reactor.callLater(RETRY, self._again, key)

    def _again(self, key: Key) -> None:
        del self._retries[key]
        pool = self.proxy.pools.get(key)
        if pool is not None and pool.waiters:
            pool.grow()

    def reclaim(self, message: dict[str, Any]) -> None:
        """The supervisor asks for one unit of ``key`` for another worker."""
        key = (message["user"], message["target"])
        ticket = message["ticket"]

        def answer(ok: bool) -> None:
            if ok:
                self.moved[key] -= 1
            self.send({"op": "reclaimed", "ticket": ticket, "ok": ok})

        pool = self.proxy.pools.get(key)
        if pool is None:
            # Not made here yet: the unit is only on the ledger.
            answer(self.share(key, self.proxy.worker_share(self.proxy.pool_budget())) > 0)
            return
        pool.give_up_one(answer)

    def received(self, message: dict[str, Any]) -> bool:
        """Handles the budget's messages from the supervisor; False for any other."""
        op = message.get("op")
        if op == "grant":
            self.granted(message)
        elif op == "reclaim":
            self.reclaim(message)
        else:
            return False
        return True

    def reset(self) -> None:
        """A reload gave every pool its even share again (every worker reloads)."""
        self.moved.clear()
