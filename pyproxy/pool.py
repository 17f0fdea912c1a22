"""Backend connections for one account: which are idle, lent, being checked or opened.

A connection's state is the container it sits in, so counts cannot drift
from reality.  Borrowers that find nothing idle wait in FIFO order, up to
borrow_timeout.  The pool never touches bytes: it lends, takes back, opens
and closes.
"""

from __future__ import annotations

import bisect
import collections
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from pyproxy.backend import BackendConnection, BackendError
from pyproxy.idle import carried_timeout
from pyproxy.logs import get_logger, reason_kind
from pyproxy.wire import constants as c


# Errors that mean "the server is not there right now": a borrower waits and
# the open is retried.  Others (a wrong password, an unknown database) fail it.
TRANSIENT = frozenset((2003, 2013, 1040, 1053, 1927, 4031))
# A refused connect costs the server nothing, and every retry delay is time
# a client waits after the server is back: short and capped low.
RETRY_FIRST = 0.05
RETRY_MAX = 0.1
# Upper bounds (seconds) of the borrow-wait histogram's buckets, for
# /metrics: a borrow served at once waits 0, a timed-out one borrow_timeout.
BORROW_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                       10.0, 30.0, 60.0, 120.0)


class BorrowTimeout(BackendError):
    def __init__(self, seconds: float, cause: BackendError | None = None) -> None:
        code, state = c.ER_PROXY_BORROW_TIMEOUT
        reason = (f"the backend is unreachable: {cause.message}" if cause is not None
                  else "the pool is exhausted")
        super().__init__(code, state, f"pyproxy: no backend connection became free within "
                                      f"borrow_timeout ({seconds:g}s); {reason}")


class Timer(Protocol):
    """What the pool uses of Twisted's IDelayedCall.  A plain protocol: zope's
    interfaces declare methods without ``self``, which mypyc (the compiled build)
    cannot call through."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the pool uses of Twisted's IReactorTime (see Timer)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any,  # noqa: N802
                  **kw: Any) -> Timer: ...


@attrs.define(eq=False, slots=True)
class Waiter:
    """A borrower in the pool's line.  It is given the connection, or the error
    that kept one from coming, through a Deferred (``borrow``) or through two
    plain callables (``wait``: the per-query path, where a client whose pool is
    busy waits for every statement, and a Deferred's machinery is most of what
    waiting costs)."""

    flavor: int
    since: float = 0.0
    # The pool whose line it stands in; changes when a failover moves the line.
    pool: Pool | None = None
    # A read-only listener's session: a reader would do as well.
    readonly: bool = False
    deferred: defer.Deferred[BackendConnection] | None = None
    lent: Callable[[BackendConnection], Any] | None = None
    refused: Callable[[BaseException], Any] | None = None
    # Given its connection or its error already (it may be, before wait() returns).
    done: bool = False
    # Another flavor that serves it as well (-1: none), though less well: a
    # client without CLIENT_DEPRECATE_EOF gets its EOFs by translation on a
    # connection with it (see CommandPhase.start_session).
    fallback: int = -1

    def takes(self, conn: BackendConnection) -> bool:
        return conn.flavor == self.flavor or conn.flavor == self.fallback

    def give(self, conn: BackendConnection) -> None:
        self.done = True
        if self.lent is not None:
            self.lent(conn)
        else:
            self.deferred.callback(conn)  # type: ignore[union-attr]

    def fail(self, error: BaseException | Failure) -> None:
        self.done = True
        if self.refused is not None:
            self.refused(error.value if isinstance(error, Failure) else error)
        else:
            self.deferred.errback(error)  # type: ignore[union-attr]

    def cancel(self) -> None:
        """The borrower went away: it leaves the line, and is given nothing."""
        if self.pool is not None:
            self.pool._cancel(self)


Connector = Callable[[int], "defer.Deferred[BackendConnection]"]


class Pool:
    """The pool of one user's backend connections."""

    def __init__(self, user: str, connector: Connector, clock: Clock, *,
                 max_size: int, borrow_timeout: float, target: Any = None) -> None:
        self.user = user
        # The server these connections go to (a pyproxy.topology.TargetHealth).
        self.target = target
        self.connector = connector
        self.clock = clock
        self.max_size = max_size
        self.borrow_timeout = borrow_timeout
        self.idle: list[BackendConnection] = []
        self.lent: set[BackendConnection] = set()
        self.checking: set[BackendConnection] = set()
        # Closed by the pool, and not yet by the server, which still counts them.
        self.closing: set[BackendConnection] = set()
        self.connecting = 0
        self.waiters: deque[Waiter] = deque()
        self._to_place: deque[BackendConnection] = deque()
        self._expiry: Timer | None = None
        # Opens in progress, by flavor.
        self._opening: dict[int, int] = {}
        self._placing = False
        self.closed = False
        # PAUSE: borrowers wait, connections that come back are closed.
        self.paused = False
        # Opens failing because the server is unreachable: retried with backoff.
        self._retries = 0
        self._retry: Timer | None = None
        self.last_error: BackendError | None = None
        # Bumped when the backend or the account changes (SIGHUP): older
        # connections are closed instead of reused.
        self.generation = 0
        # Called with the first connection that opens, before it is lent.
        self.first_use: Callable[[BackendConnection], defer.Deferred[Any]] | None = None
        # The flavor clients asked for last: min_idle keeps that one warm.
        self.last_flavor = 0
        self.log = get_logger(pool=user, target=target.name if target is not None else None)
        # Counters for the benchmark and, later, the admin interface.
        self.borrows = 0
        self.waits = 0
        self.timeouts = 0
        self.opened = 0
        self.open_failures = 0
        # How long the last borrowers waited, in seconds (0 when served at once).
        self.wait_times: deque[float] = deque(maxlen=10000)
        # Since the start, for /metrics: borrowers served after waiting, and
        # those plus the timed-out ones by BORROW_WAIT_BUCKETS bucket (the last
        # is past the largest bound) with their total wait.  Only waits are
        # recorded, off the fast path; a borrow served at once waited 0.
        self.waited_borrows = 0
        self.wait_buckets = [0] * (len(BORROW_WAIT_BUCKETS) + 1)
        self.wait_seconds = 0.0
        # Connections closed, by the fixed part of the reason (pyproxy.logs.
        # reason_kind); "lost" when the server or the network closed one first.
        self.closed_reasons: collections.Counter[str] = collections.Counter()
        # [proxy] workers: called when borrowers wait and the pool is at max_size
        # with nothing to replace, to ask for budget another worker holds
        # (pyproxy.budget); the unit lent back out waits for its server close.
        self.on_full: Callable[[Pool], None] | None = None
        # Called when the server has let one of this pool's connections go: a
        # Redis budget then returns the lease it no longer needs.
        self.on_gone: Callable[[Pool], None] | None = None
        self._released: dict[BackendConnection, Callable[[bool], None]] = {}

    def size(self) -> int:
        # Every connection the server may count, wherever the pool holds it:
        # one queued by a nested _place is in none of the sets for a moment.
        return (len(self.idle) + len(self.lent) + len(self.checking) + len(self.closing) + self.connecting
                + len(self._to_place))

    def _retire(self, conn: BackendConnection, reason: str) -> None:
        """Closes a connection the pool has let go of.  It still counts against
        max_size until the server has closed it too, so that a replacement never
        makes the server see more connections than max_size.

        One that broke first was counted as lost (see _lost), so it is not counted
        again under this reason."""
        if not conn.broken:
            self.closed_reasons[reason_kind(reason)] += 1
        self.closing.add(conn)
        if not conn.close(reason):
            self.closing.discard(conn)

    def _record_wait(self, seconds: float) -> None:
        self.wait_times.append(seconds)
        self.wait_buckets[bisect.bisect_left(BORROW_WAIT_BUCKETS, seconds)] += 1
        self.wait_seconds += seconds

    # -- lending --------------------------------------------------------------

    def try_borrow(self, flavor: int, fallback: int = -1) -> BackendConnection | None:
        """The fast path: an idle connection of the right flavor, most recently used
        first; else one of the ``fallback`` flavor."""
        self.last_flavor = flavor
        if self.paused:
            return None
        idle = self.idle
        stale = False
        second: BackendConnection | None = None
        for i in range(len(idle) - 1, -1, -1):
            conn = idle[i]
            if conn.flavor == flavor or conn.flavor == fallback:
                limit = conn.wait_limit
                if limit and self.clock.seconds() - max(conn.last_used, conn.last_checked) >= limit / 2:
                    # A client's short wait_timeout is still on it: the server
                    # may close it under the next borrower's first command.
                    del idle[i]
                    self._retire(conn, "wait_timeout left by a client nearly reached")
                    stale = True
                    continue
                if conn.flavor != flavor:
                    if second is None:
                        second = conn
                    continue
                del idle[i]
                return self._lend_idle(conn, stale)
        if second is not None:
            idle.remove(second)
            return self._lend_idle(second, stale)
        if stale:
            self._grow()
        return None

    def _lend_idle(self, conn: BackendConnection, stale: bool) -> BackendConnection:
        self.lent.add(conn)
        self.borrows += 1
        self.wait_times.append(0.0)
        if stale:
            self._grow()
        return conn

    def borrow(self, flavor: int, readonly: bool = False) -> defer.Deferred[BackendConnection]:
        """Fires with a connection now lent to the caller, or fails with BorrowTimeout
        or the error that kept a new connection from opening.  ``readonly``: the
        borrower came through the read-only listener (see hand_over)."""
        if self.closed:
            return defer.fail(BackendError(*c.CR_SERVER_LOST, "pyproxy is shutting down"))
        conn = self.try_borrow(flavor)
        if conn is not None:
            return defer.succeed(conn)
        waiter = Waiter(flavor, since=self.clock.seconds(), pool=self, readonly=readonly)
        waiter.deferred = defer.Deferred(lambda _: waiter.cancel())
        self._line_up(waiter)
        return waiter.deferred

    def wait(self, flavor: int, readonly: bool, lent: Callable[[BackendConnection], Any],
             refused: Callable[[BaseException], Any], fallback: int = -1) -> Waiter | None:
        """``borrow`` for a caller that has just found no idle connection
        (``try_borrow``): ``lent`` is called with the connection, or ``refused``
        with what kept one from coming; the Waiter returned cancels.  None when
        the pool is closed (``refused`` has been called)."""
        if self.closed:
            refused(BackendError(*c.CR_SERVER_LOST, "pyproxy is shutting down"))
            return None
        waiter = Waiter(flavor, self.clock.seconds(), self, readonly, None, lent, refused, False, fallback)
        self._line_up(waiter)
        return waiter

    def _line_up(self, waiter: Waiter) -> None:
        self.waiters.append(waiter)
        self._schedule_expiry()
        self.waits += 1
        self._grow()

    def give_back(self, conn: BackendConnection) -> None:
        """Returns a lent connection whose session the caller has left clean."""
        if conn not in self.lent:
            return
        self.lent.discard(conn)
        if conn.broken or self.closed:
            self._retire(conn, "pool closed" if self.closed else "broken")
            self._grow()
            return
        conn.last_used = self.clock.seconds()
        conn.wait_limit = carried_timeout(conn.state) or 0
        if (not self.waiters and not self._placing and not self.paused and conn.generation == self.generation
                and self.size() < self.max_size):
            # The common case, as _place_one would decide it: nobody waits.
            self.idle.append(conn)
            return
        self._place(conn)

    def discard(self, conn: BackendConnection, reason: str) -> None:
        """Closes a connection that must not serve anyone again."""
        self._forget(conn)
        self._retire(conn, reason)
        self._grow()

    def begin_check(self, conn: BackendConnection) -> None:
        """Takes an idle connection aside for a health check."""
        self.idle.remove(conn)
        self.checking.add(conn)

    def end_check(self, conn: BackendConnection) -> None:
        """A checked connection passed; it serves again."""
        if conn not in self.checking:
            return
        self.checking.discard(conn)
        if self.closed or conn.broken:
            self._retire(conn, "pool closed" if self.closed else "broken")
            return
        self._place(conn)

    def _forget(self, conn: BackendConnection) -> None:
        self.lent.discard(conn)
        self.checking.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def _place(self, conn: BackendConnection) -> None:
        """Hands a free connection to the oldest waiter that can use it, else idles it.

        A waiter's callback may finish its work at once and give the connection
        back, which places it again: such nested placements are queued and
        run by the outermost call, so a long line of waiters cannot overflow
        the stack.
        """
        self._to_place.append(conn)
        if self._placing:
            return
        self._placing = True
        try:
            while self._to_place:
                self._place_one(self._to_place.popleft())
        finally:
            self._placing = False

    def _place_one(self, conn: BackendConnection) -> None:
        if self.size() >= self.max_size:
            # The budget shrank under this connection (a reload, a lost lease, or
            # Redis out of reach: the local share): it goes.
            self._retire(conn, "over the budget")
            self._grow()
            return
        if self.paused or conn.generation != self.generation:
            self._retire(conn, "pool paused" if self.paused else "configuration changed")
            self._grow()
            return
        waiters = self.waiters
        if waiters:
            oldest = waiters[0]
            if oldest.takes(conn):
                waiters.popleft()
                self._lend_to(oldest, conn)
                return
            full = self.size() + 1 >= self.max_size
            if full and not self._opening.get(oldest.flavor) and not self._opening.get(oldest.fallback):
                # FIFO across flavors: the oldest waiter needs another kind of
                # connection and nothing is being opened for it, so this one
                # makes room rather than serving a younger waiter again.
                self._retire(conn, "replaced by a connection for another client flavor")
                self._grow()
                return
            for waiter in waiters:
                if waiter.takes(conn):
                    waiters.remove(waiter)
                    self._lend_to(waiter, conn)
                    return
            if full:
                self._retire(conn, "replaced by a connection for another client flavor")
                self._grow()
                return
        self.idle.append(conn)

    def _lend_to(self, waiter: Waiter, conn: BackendConnection) -> None:
        if not self.waiters and self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.lent.add(conn)
        self.borrows += 1
        self.waited_borrows += 1
        self._record_wait(self.clock.seconds() - waiter.since)
        waiter.give(conn)

    def _schedule_expiry(self) -> None:
        """One timer for the whole line, set for the oldest waiter's deadline,
        instead of one per borrower (a storm has thousands)."""
        if self._expiry is None and self.waiters:
            due = self.waiters[0].since + self.borrow_timeout - self.clock.seconds()
            self._expiry = self.clock.callLater(max(0.0, due), self._expire_waiters)

    def _expire_waiters(self) -> None:
        self._expiry = None
        deadline = self.clock.seconds() - self.borrow_timeout
        waiters = self.waiters
        while waiters and waiters[0].since <= deadline + 1e-9:
            waiter = waiters.popleft()
            self.timeouts += 1
            self._record_wait(self.borrow_timeout)
            self.log.warning("borrow_timeout", waited=self.borrow_timeout, pool_size=self.size())
            cause = self.last_error if self._retries else None
            waiter.fail(BorrowTimeout(self.borrow_timeout, cause))
        self._schedule_expiry()

    def _cancel(self, waiter: Waiter) -> None:
        """The client went away while waiting."""
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        if not self.waiters and self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
            self._expiry = None

    # -- growing --------------------------------------------------------------

    def _grow(self) -> None:
        """Opens connections for waiters, oldest first, that no opening connection
        of their flavor will serve."""
        if self.closed or self.paused or not self.waiters:
            return
        if self.connecting == 0 and self.size() >= self.max_size and not self.idle:
            # Full, nothing to replace: a connection coming back will serve them,
            # or budget another worker holds idle.
            if self.on_full is not None:
                self.on_full(self)
            return
        covered = dict(self._opening)
        for waiter in list(self.waiters):
            if covered.get(waiter.flavor):
                covered[waiter.flavor] -= 1
                continue
            if covered.get(waiter.fallback):
                covered[waiter.fallback] -= 1
                continue
            if self.size() >= self.max_size:
                if not self.idle:
                    if self.on_full is not None:
                        self.on_full(self)
                    return
                self._retire(self.idle.pop(0), "replaced by a connection for another client flavor")
                if self.size() >= self.max_size:
                    return  # opened once the server has let that one go (_lost)
            self.open(waiter.flavor)

    def open(self, flavor: int) -> defer.Deferred[Any]:
        """Opens one connection; it goes to a waiter or to the idle list."""
        self.connecting += 1
        self._opening[flavor] = self._opening.get(flavor, 0) + 1
        d = self.connector(flavor)

        generation = self.generation

        def opened(conn: BackendConnection) -> None:
            self.connecting -= 1
            self._opening[flavor] -= 1
            self.opened += 1
            if self._retries:
                self.log.info("backend_up", failed_opens=self._retries)
            self._retries = 0
            conn.generation = generation
            if self.closed:
                self.closed_reasons["pool closed"] += 1
                conn.close("pool closed")
                return
            conn.on_lost = self._lost
            conn.pool = self
            self.log.info("backend_opened", backend_id=conn.id)
            if self.first_use is not None:
                # Something to learn from the server before anyone borrows.  The
                # connection waits among the checked ones, so that it counts
                # against max_size meanwhile.
                hook, self.first_use = self.first_use, None
                self.checking.add(conn)
                hook(conn).addBoth(lambda _: self.end_check(conn))
                return
            self._place(conn)

        def failed(failure: Failure) -> None:
            self.connecting -= 1
            self._opening[flavor] -= 1
            self.open_failures += 1
            exc = failure.value
            self.last_error = exc if isinstance(exc, BackendError) else None
            if isinstance(exc, BackendError) and exc.code in TRANSIENT:
                # The server is down or restarting: borrowers keep waiting (up to
                # borrow_timeout) while opens are retried with capped backoff.
                if self._retries == 0:
                    self.log.warning("backend_down", error=str(exc))
                self._retries += 1
                delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (self._retries - 1))
                self.log.warning("backend_open_failed", error=str(exc), retry_in=delay)
                if self._retry is None or not self._retry.active():
                    self._retry = self.clock.callLater(delay, self._retry_grow)
                return
            self.log.warning("backend_open_failed", error=str(exc))
            for waiter in self.waiters:
                if waiter.flavor == flavor:
                    self.waiters.remove(waiter)
                    waiter.fail(failure)
                    break
            self._grow()

        d.addCallbacks(opened, failed)
        return d

    def _retry_grow(self) -> None:
        self._retry = None
        self._grow()

    def _lost(self, conn: BackendConnection) -> None:
        """A connection died on its own (server restart, KILL, network), or one the
        pool closed is closed by the server too."""
        was_idle = conn in self.idle or conn in self.checking
        if conn not in self.closing:
            self.closed_reasons["lost"] += 1
        self._forget(conn)
        self.closing.discard(conn)
        released = self._released.pop(conn, None)
        if released is not None:
            released(True)
        if self.on_gone is not None:
            self.on_gone(self)
        if was_idle:
            self.log.info("backend_replaced", backend_id=conn.id, reason="lost while idle")
        self._grow()

    def grow(self) -> None:
        """More room (budget granted): opens for the waiters it can now serve."""
        self._grow()

    def trim(self) -> None:
        """Less room (budget taken back): idle connections over max_size close now;
        lent ones close when they come back."""
        while self.idle and self.size() > self.max_size:
            self._retire(self.idle.pop(0), "over the budget")

    def give_up_one(self, done: Callable[[bool], None]) -> None:
        """[proxy] workers: gives one unit of this pool's budget to another worker.

        A unit not in use goes at once; otherwise the oldest idle connection is
        closed, and the unit goes when the server has closed it (``done(True)``
        then), so that the server never sees both workers' connections at
        once.  ``done(False)``: every unit is in use or wanted here.
        """
        if self.max_size > self.size():
            self.max_size -= 1
            done(True)
            return
        if self.idle and not self.waiters:
            conn = self.idle.pop(0)
            self.max_size -= 1
            self._released[conn] = done
            self._retire(conn, "budget lent to another worker")
            if conn not in self.closing:
                self._released.pop(conn)(True)
            return
        done(False)

    def pause(self) -> None:
        """New transactions wait; running ones finish; idle connections close now and
        lent ones when they come back, so the server can be worked on."""
        self.paused = True
        for conn in self.idle + list(self.checking):
            self._retire(conn, "pool paused")
        self.idle.clear()
        self.checking.clear()

    def resume(self) -> None:
        self.paused = False
        self._grow()

    def hand_over(self, other: Pool, readonly_only: bool = False) -> None:
        """Moves this pool's waiters (or only the read-only listener's) into another
        pool's line (the writer moved, a reader went down or came back), merged
        by arrival so FIFO and deadlines still hold."""
        if other is self or not self.waiters:
            return
        if readonly_only:
            waiters = deque(waiter for waiter in self.waiters if waiter.readonly)
            if not waiters:
                return
            self.waiters = deque(waiter for waiter in self.waiters if not waiter.readonly)
        else:
            waiters, self.waiters = self.waiters, deque()
        for pool in (self, other):
            if pool._expiry is not None and pool._expiry.active():
                pool._expiry.cancel()
            pool._expiry = None
        for waiter in waiters:
            waiter.pool = other
        other.waiters = deque(sorted((*other.waiters, *waiters), key=lambda waiter: waiter.since))
        self._schedule_expiry()  # for those that stay, if any
        other._schedule_expiry()
        # Idle connections there serve the line first, oldest waiter first, so
        # no newcomer's try_borrow takes them ahead of it.
        idle, other.idle = other.idle, []
        for conn in idle:
            other._place(conn)
        other._grow()

    def renew(self) -> None:
        """The target or the account changed: no connection opened before is reused."""
        self.generation += 1
        for conn in self.idle:
            self._retire(conn, "configuration changed")
        self.idle.clear()
        self._grow()

    def stats(self) -> dict[str, Any]:
        """Counters and container sizes, for logs and benchmarks.

        Borrow latency percentiles are over the last 10,000 borrows: those
        served at once count as 0, those that timed out as borrow_timeout.
        """
        recent = sorted(self.wait_times)

        def percentile(q: float) -> float:
            return recent[int(q * (len(recent) - 1))] if recent else 0.0

        return {
            "pool": self.user, "target": self.target.name if self.target is not None else None,
            "paused": self.paused, "max_size": self.max_size,
            "idle": len(self.idle), "lent": len(self.lent), "checking": len(self.checking),
            "closing": len(self.closing), "connecting": self.connecting, "waiting": len(self.waiters),
            "borrows": self.borrows, "waits": self.waits, "timeouts": self.timeouts,
            "opened": self.opened, "open_failures": self.open_failures,
            "borrow_wait_p50_ms": round(percentile(0.5) * 1000, 3),
            "borrow_wait_p99_ms": round(percentile(0.99) * 1000, 3),
            "borrow_wait_max_ms": round((recent[-1] if recent else 0.0) * 1000, 3),
        }

    def close(self) -> None:
        """Closes every idle connection and refuses new borrowers; lent ones close on return."""
        self.closed = True
        for call in (self._retry, self._expiry):
            if call is not None and call.active():
                call.cancel()
        for waiter in list(self.waiters):
            self._cancel(waiter)
            waiter.fail(BackendError(*c.CR_SERVER_LOST, "pyproxy is shutting down"))
        for conn in self.idle + list(self.checking):
            self._retire(conn, "shutdown")
        self.idle.clear()
        self.checking.clear()
