"""pyproxy.pool: lending, FIFO waiting, flavors and growth, on a fake clock and a fake connector."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy.backend import BackendError
from pyproxy.pool import BorrowTimeout, Pool
from pyproxy.session import SessionState

_ids = itertools.count(1)


class FakeConnection:
    """What the pool and the health checker use of a BackendConnection."""

    def __init__(self, flavor: int, clock: Clock) -> None:
        self.id = next(_ids)
        self.flavor = flavor
        self.broken = False
        self.closed: str | None = None
        self.created_at = self.last_used = self.last_checked = clock.seconds()
        self.on_lost: Any = None
        self.pings: list[defer.Deferred[bytes]] = []
        # The session as its last client left it, and the wait_timeout on it.
        self.state = SessionState()
        self.wait_limit = 0

    def close(self, reason: str) -> bool:
        """As BackendConnection.close; False: no connectionLost follows."""
        self.closed = reason
        self.broken = True
        return False

    def ping(self) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.pings.append(d)
        return d

    def lose(self) -> None:
        """The server went away on its own."""
        self.broken = True
        if self.on_lost is not None:
            self.on_lost(self)

    def __repr__(self) -> str:
        return f"<conn {self.id} flavor={self.flavor}>"


class FakeConnector:
    """Returns a Deferred per open; the test decides when and how each one fires."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.opens: list[tuple[int, defer.Deferred[Any]]] = []

    def __call__(self, flavor: int) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.opens.append((flavor, d))
        return d

    def pending(self) -> list[int]:
        return [flavor for flavor, d in self.opens if not d.called]

    def succeed(self, index: int = -1) -> FakeConnection:
        flavor, d = [(f, d) for f, d in self.opens if not d.called][index]
        conn = FakeConnection(flavor, self.clock)
        d.callback(conn)
        return conn

    def fail(self, index: int = 0, error: Exception | None = None) -> None:
        _, d = [(f, d) for f, d in self.opens if not d.called][index]
        d.errback(error or BackendError(2003, "HY000", "Can't connect"))


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector(self.clock)
        self.pool = self.make_pool(2)

    def make_pool(self, max_size: int) -> Pool:
        self.pool = Pool("app", self.connector, self.clock, max_size=max_size, borrow_timeout=5)
        return self.pool

    def check_size(self) -> None:
        pool = self.pool
        assert pool.size() <= pool.max_size, (pool.size(), pool.max_size)
        assert pool.size() == len(pool.idle) + len(pool.lent) + len(pool.checking) + pool.connecting
        assert pool.connecting == len(self.connector.pending())
        assert not set(pool.idle) & pool.lent

    def borrowed(self, flavor: int = 0) -> Any:
        conn = self.successResultOf(self.pool.borrow(flavor))
        self.check_size()
        return conn

    # -- lending ----------------------------------------------------------

    def test_first_borrow_opens_a_connection(self) -> None:
        """With nothing idle, a borrower waits for a connection opened for it."""
        d = self.pool.borrow(0)
        self.assertNoResult(d)
        self.assertEqual(self.connector.pending(), [0])
        self.check_size()
        conn = self.connector.succeed()
        self.assertIs(self.successResultOf(d), conn)
        self.assertEqual(self.pool.lent, {conn})
        self.assertIs(conn.on_lost.__self__, self.pool)  # type: ignore[union-attr]
        self.check_size()

    def test_give_back_then_borrow_reuses(self) -> None:
        """A connection given back is idle and lent again without opening another."""
        d = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.pool.give_back(self.successResultOf(d))
        self.assertEqual(self.pool.idle, [conn])
        self.assertIs(self.pool.try_borrow(0), conn)
        self.assertEqual(len(self.connector.opens), 1)
        self.check_size()

    def test_try_borrow_most_recently_used_first(self) -> None:
        """The fast path takes the connection given back last (its caches are warm)."""
        d1, d2 = self.pool.borrow(0), self.pool.borrow(0)
        c1, c2 = self.connector.succeed(0), self.connector.succeed(0)
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), (c1, c2))
        self.pool.give_back(c2)
        self.pool.give_back(c1)
        self.assertIs(self.pool.try_borrow(0), c1)
        self.assertIsNone(self.pool.try_borrow(1))

    def test_waiters_are_served_fifo(self) -> None:
        """With the pool full, waiters get connections back in the order they asked."""
        self.make_pool(1)
        first = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.successResultOf(first)
        waiting = [self.pool.borrow(0) for _ in range(3)]
        self.check_size()
        self.assertEqual(self.connector.pending(), [])
        for i, d in enumerate(waiting):
            for later in waiting[i:]:
                self.assertNoResult(later)
            self.pool.give_back(conn)
            self.assertIs(self.successResultOf(d), conn)
            self.check_size()
        self.assertEqual(len(self.connector.opens), 1)

    def test_borrow_timeout(self) -> None:
        """A waiter not served within borrow_timeout gets error 9001 (HY000)."""
        self.make_pool(1)
        self.pool.borrow(0)
        self.connector.succeed()
        d = self.pool.borrow(0)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, BorrowTimeout)
        self.assertEqual((failure.value.code, failure.value.sqlstate), (9001, "HY000"))
        self.assertIn("borrow_timeout (5s)", failure.value.message)
        self.assertEqual(list(self.pool.waiters), [])
        self.assertEqual(self.pool.timeouts, 1)

    def test_wait_without_a_deferred(self) -> None:
        """wait(), the per-query path, lines up as borrow() does and calls back plainly:
        served in order, timed out with 9001, cancelled without a call, refused when closed."""
        self.make_pool(1)
        self.pool.borrow(0)
        conn = self.connector.succeed()
        seen: list[Any] = []
        first = self.pool.wait(0, False, lambda c: seen.append(("lent", 1, c)), lambda e: seen.append(("refused", 1, e)))
        gone = self.pool.wait(0, False, lambda c: seen.append(("lent", 2, c)), lambda e: seen.append(("refused", 2, e)))
        late = self.pool.wait(0, False, lambda c: seen.append(("lent", 3, c)), lambda e: seen.append(("refused", 3, e)))
        assert first is not None and gone is not None and late is not None
        self.assertEqual((seen, self.pool.waits), ([], 4))  # with the first borrow, which waited for its open
        gone.cancel()
        self.pool.give_back(conn)
        self.assertEqual(seen, [("lent", 1, conn)])
        self.assertTrue(first.done)
        self.clock.advance(5)
        [(kind, number, error)] = seen[1:]
        self.assertEqual((kind, number, type(error), error.code), ("refused", 3, BorrowTimeout, 9001))
        self.assertEqual(list(self.pool.waiters), [])
        self.pool.close()
        refused: list[BaseException] = []
        self.assertIsNone(self.pool.wait(0, False, seen.append, refused.append))
        self.assertEqual([error.code for error in refused], [2013])  # type: ignore[attr-defined]

    def test_a_wait_served_at_once_is_done_when_it_returns(self) -> None:
        """A connection may come before wait() returns: its Waiter says so (nothing to cancel)."""
        self.connector = FakeConnector(self.clock)
        opened = FakeConnection(0, self.clock)
        self.pool = Pool("app", lambda flavor: defer.succeed(opened), self.clock, max_size=1, borrow_timeout=5)
        seen: list[Any] = []
        waiter = self.pool.wait(0, False, seen.append, seen.append)
        assert waiter is not None
        self.assertTrue(waiter.done)
        self.assertEqual(seen, [opened])

    def test_served_waiter_timer_cancelled(self) -> None:
        """A waiter served in time leaves no timer behind."""
        self.pool.borrow(0)
        self.connector.succeed()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_waiter_leaves_the_queue(self) -> None:
        """A client that goes away while waiting is forgotten; its timer is cancelled."""
        self.make_pool(1)
        self.pool.borrow(0)
        conn = self.connector.succeed()
        d = self.pool.borrow(0)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(list(self.pool.waiters), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.pool.give_back(conn)
        self.assertEqual(self.pool.idle, [conn])

    def test_give_back_unknown_connection_ignored(self) -> None:
        """Giving back a connection that is not lent (twice, or discarded) does nothing."""
        d = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.successResultOf(d)
        self.pool.give_back(conn)
        self.pool.give_back(conn)
        self.assertEqual(self.pool.idle, [conn])

    def test_broken_connection_given_back_is_closed(self) -> None:
        """A broken connection is closed, not idled, and a waiter gets a new one."""
        self.make_pool(1)
        d = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.successResultOf(d)
        waiter = self.pool.borrow(0)
        conn.broken = True
        self.pool.give_back(conn)
        self.assertEqual(conn.closed, "broken")
        self.assertEqual(self.connector.pending(), [0])
        self.check_size()
        fresh = self.connector.succeed()
        self.assertIs(self.successResultOf(waiter), fresh)

    def test_discard_opens_for_waiters(self) -> None:
        """Discarding a lent connection makes room for a waiter."""
        self.make_pool(1)
        d = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.successResultOf(d)
        waiter = self.pool.borrow(0)
        self.pool.discard(conn, "reset failed")
        self.assertEqual(conn.closed, "reset failed")
        self.check_size()
        conn = self.connector.succeed()
        self.assertIs(self.successResultOf(waiter), conn)

    # -- flavors ------------------------------------------------------------

    def test_flavors_do_not_mix(self) -> None:
        """An idle connection of one flavor is never lent for another."""
        d = self.pool.borrow(1)
        conn = self.connector.succeed()
        self.pool.give_back(self.successResultOf(d))
        d2 = self.pool.borrow(2)
        self.assertNoResult(d2)
        self.assertEqual(self.connector.pending(), [2])
        self.assertEqual(self.pool.idle, [conn])
        self.check_size()

    def opened(self, flavor: int) -> Any:
        """A connection of ``flavor`` opened for a borrower, and lent to it."""
        d = self.pool.borrow(flavor)
        self.connector.succeed()
        return self.successResultOf(d)

    def waiting(self, flavor: int, fallback: int) -> list[Any]:
        """A borrower on the per-query path: what it was lent, once it is."""
        got: list[Any] = []
        self.pool.wait(flavor, False, got.append, self.fail, fallback)
        return got

    def test_fallback_flavor_serves_when_its_own_is_not_idle(self) -> None:
        """A borrower with a fallback takes an idle connection of its own flavor first,
        most recently used first, else one of the fallback flavor; never another."""
        self.make_pool(3)
        own, other, modern = (self.opened(flavor) for flavor in (9, 3, 0))
        for conn in (own, other, modern):
            self.pool.give_back(conn)
        self.assertIs(self.pool.try_borrow(9, 0), own)
        self.assertIs(self.pool.try_borrow(9, 0), modern)
        self.assertIsNone(self.pool.try_borrow(9, 0))
        self.assertEqual(self.pool.idle, [other])
        self.check_size()

    def test_waiter_takes_a_connection_of_its_fallback_flavor(self) -> None:
        """A connection given back goes to the oldest waiter it serves, by either flavor,
        and an opening of the fallback flavor counts as one for it."""
        self.make_pool(1)
        modern = self.opened(0)
        got = self.waiting(9, 0)
        self.assertEqual(self.connector.pending(), [])  # full: it waits
        self.pool.give_back(modern)
        self.assertEqual(got, [modern])
        self.assertEqual(modern.closed, None)
        self.check_size()

    def test_open_of_the_fallback_flavor_covers_a_waiter(self) -> None:
        """A connection being opened (to keep one warm) of the fallback flavor will serve
        the borrower: no other is opened for it."""
        self.pool.open(0)
        got = self.waiting(9, 0)
        self.assertEqual(self.connector.pending(), [0])
        conn = self.connector.succeed()
        self.assertEqual(got, [conn])
        self.check_size()

    def test_full_pool_replaces_idle_for_another_flavor(self) -> None:
        """With the pool full, a waiter for another flavor closes an idle one and opens its own."""
        self.make_pool(1)
        d = self.pool.borrow(0)
        old = self.connector.succeed()
        self.pool.give_back(self.successResultOf(d))
        waiter = self.pool.borrow(8)
        self.assertEqual(old.closed, "replaced by a connection for another client flavor")
        self.assertEqual(self.connector.pending(), [8])
        self.check_size()
        new = self.connector.succeed()
        self.assertIs(self.successResultOf(waiter), new)
        self.assertEqual(new.flavor, 8)

    def test_replacement_waits_until_the_server_lets_go(self) -> None:
        """A connection closed to make room still counts until the server has closed
        it too: the replacement opens only then, so the server never sees more than
        max_size connections."""
        self.make_pool(1)
        d = self.pool.borrow(0)
        old = self.connector.succeed()
        old.on_lost = self.pool._lost
        old.close = lambda reason: setattr(old, "closed", reason) or True  # type: ignore[method-assign]
        self.pool.give_back(self.successResultOf(d))
        waiter = self.pool.borrow(8)
        self.assertEqual(old.closed, "replaced by a connection for another client flavor")
        self.assertEqual((self.connector.pending(), self.pool.size()), ([], 1))
        self.assertEqual(self.pool.stats()["closing"], 1)
        old.lose()  # the server closed its end
        self.assertEqual(self.connector.pending(), [8])
        new = self.connector.succeed()
        self.assertIs(self.successResultOf(waiter), new)
        self.assertEqual(self.pool.size(), 1)

    def test_opened_connection_for_other_flavor_waiter(self) -> None:
        """A freshly opened connection goes to the oldest waiter of its own flavor."""
        a = self.pool.borrow(1)
        b = self.pool.borrow(2)
        self.assertEqual(self.connector.pending(), [1, 2])
        conn2 = self.connector.succeed(1)
        self.assertIs(self.successResultOf(b), conn2)
        self.assertNoResult(a)
        conn = self.connector.succeed()
        self.assertIs(self.successResultOf(a), conn)
        self.check_size()

    def test_give_back_to_full_pool_serves_other_flavor_waiter(self) -> None:
        """A connection given back while only another flavor waits is replaced by one for that waiter."""
        self.make_pool(1)
        d = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.successResultOf(d)
        waiter = self.pool.borrow(8)
        self.assertEqual(self.connector.pending(), [])  # full: nothing can open yet
        self.pool.give_back(conn)
        self.check_size()
        self.assertEqual(self.connector.pending(), [8])
        conn = self.connector.succeed()
        self.assertIs(self.successResultOf(waiter), conn)

    # -- failures -------------------------------------------------------------

    def test_connect_failure_fails_one_waiter(self) -> None:
        """A failed open fails the oldest waiter of its flavor with that error; others keep waiting."""
        d1, d2 = self.pool.borrow(0), self.pool.borrow(0)
        self.connector.fail(0, BackendError(1045, "28000", "Access denied"))
        failure = self.failureResultOf(d1, BackendError)
        self.assertEqual(failure.value.code, 1045)
        self.assertNoResult(d2)
        self.assertEqual(self.pool.open_failures, 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 5)
        self.check_size()
        conn = self.connector.succeed()
        self.assertIs(self.successResultOf(d2), conn)

    def test_connect_failure_retries_for_remaining_waiters(self) -> None:
        """After a failed open, a waiter left with nothing opening for it gets a new attempt."""
        self.make_pool(1)
        d1, d2 = self.pool.borrow(0), self.pool.borrow(0)
        self.assertEqual(self.connector.pending(), [0])
        self.connector.fail(0, BackendError(1045, "28000", "Access denied"))
        self.failureResultOf(d1, BackendError)
        self.assertNoResult(d2)
        self.check_size()
        self.assertEqual(self.connector.pending(), [0])

    def test_unreachable_server_keeps_borrowers_waiting(self) -> None:
        """While the server is unreachable, borrowers wait and opens are retried with
        growing delays; once it answers, the waiting borrower gets its connection."""
        d = self.pool.borrow(0)
        self.connector.fail(0, BackendError(2003, "HY000", "Can't connect"))
        self.assertNoResult(d)
        self.assertEqual(self.connector.pending(), [])
        self.clock.advance(0.05)  # RETRY_FIRST
        self.assertEqual(self.connector.pending(), [0])
        self.connector.fail(0, BackendError(2003, "HY000", "Can't connect"))
        self.clock.advance(0.05)
        self.assertEqual(self.connector.pending(), [])  # twice as long: 0.1 s
        self.clock.advance(0.05)
        conn = self.connector.succeed()
        self.assertIs(self.successResultOf(d), conn)
        self.check_size()

    def test_borrow_timeout_names_the_unreachable_server(self) -> None:
        """A borrower that waited out borrow_timeout on a dead server is told so."""
        d = self.pool.borrow(0)
        self.connector.fail(0, BackendError(2003, "HY000", "Can't connect to MySQL server"))
        for _ in range(60):
            self.clock.advance(0.1)
            for _ in self.connector.pending():
                self.connector.fail(0, BackendError(2003, "HY000", "Can't connect to MySQL server"))
        failure = self.failureResultOf(d, BorrowTimeout)
        self.assertIn("unreachable", failure.value.message)

    def test_lost_idle_connection_is_forgotten(self) -> None:
        """A connection that dies while idle leaves the pool."""
        d = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.pool.give_back(self.successResultOf(d))
        conn.lose()
        self.assertEqual(self.pool.idle, [])
        self.assertEqual(self.pool.size(), 0)
        self.check_size()

    def test_lost_lent_connection_makes_room(self) -> None:
        """A lent connection that dies frees its slot for a waiter."""
        self.make_pool(1)
        d = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.successResultOf(d)
        waiter = self.pool.borrow(0)
        conn.lose()
        self.assertEqual(self.pool.lent, set())
        self.assertEqual(self.connector.pending(), [0])
        self.check_size()
        conn = self.connector.succeed()
        self.assertIs(self.successResultOf(waiter), conn)

    def test_max_size_never_exceeded(self) -> None:
        """Through a long mix of borrows, returns, flavors, losses and failures the size stays capped."""
        self.make_pool(3)
        lent: list[Any] = []
        waiting: list[defer.Deferred[Any]] = []

        def collect() -> None:
            for d in list(waiting):
                if d.called:
                    waiting.remove(d)
                    result: list[Any] = []
                    d.addBoth(result.append)
                    if isinstance(result[0], FakeConnection):
                        lent.append(result[0])
            self.check_size()

        for step in range(200):
            action = step % 7
            flavor = (step // 3) % 3
            if action in (0, 1, 4):
                waiting.append(self.pool.borrow(flavor))
            elif action == 2 and self.connector.pending():
                self.connector.succeed(0)
            elif action == 3 and lent:
                self.pool.give_back(lent.pop(0))
            elif action == 5 and self.connector.pending() and step % 2:
                self.connector.fail(0)
            elif action == 6 and lent:
                lent.pop().lose()
            collect()
            self.clock.advance(1)
            collect()

    # -- shutdown -----------------------------------------------------------------

    def test_close(self) -> None:
        """close() fails waiters with 2013, closes idle ones, and refuses new borrowers."""
        self.make_pool(1)
        d = self.pool.borrow(0)
        lent = self.connector.succeed()
        self.successResultOf(d)
        waiter = self.pool.borrow(0)
        self.pool.close()
        self.assertEqual(self.failureResultOf(waiter, BackendError).value.code, 2013)
        self.assertEqual(self.failureResultOf(self.pool.borrow(0), BackendError).value.code, 2013)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.pool.give_back(lent)
        self.assertEqual(lent.closed, "pool closed")
        self.assertEqual(self.pool.size(), 0)

    def test_close_closes_idle_and_late_opens(self) -> None:
        """Idle connections close at once; one still opening closes when it arrives."""
        d = self.pool.borrow(0)
        idle = self.connector.succeed()
        self.pool.give_back(self.successResultOf(d))
        late = self.pool.borrow(1)
        self.pool.close()
        self.assertEqual(idle.closed, "shutdown")
        self.failureResultOf(late, BackendError)
        conn = self.connector.succeed()
        self.assertEqual(conn.closed, "pool closed")
        self.assertEqual(self.pool.idle, [])

    # -- health-check hooks -------------------------------------------------------

    def test_check_moves_connection_aside(self) -> None:
        """A connection being checked is neither idle nor lendable, and returns after the check."""
        d = self.pool.borrow(0)
        conn = self.connector.succeed()
        self.pool.give_back(self.successResultOf(d))
        self.pool.begin_check(conn)
        self.assertIsNone(self.pool.try_borrow(0))
        self.assertEqual(self.pool.size(), 1)
        self.pool.end_check(conn)
        self.assertIs(self.pool.try_borrow(0), conn)

    def test_a_connection_in_its_first_use_hook_counts_against_max_size(self) -> None:
        """While the first connection answers what the pool must learn first
        (``first_use``), it is still one of max_size: a borrower who comes meanwhile
        gets no extra connection, and the hook's connection serves the oldest waiter."""
        learning: defer.Deferred[None] = defer.Deferred()
        self.pool.first_use = lambda conn: learning
        first, second = self.pool.borrow(0), self.pool.borrow(0)
        conn = self.connector.succeed(0)
        self.assertEqual((self.pool.size(), self.connector.pending()), (2, [0]))
        third = self.pool.borrow(0)
        self.assertEqual(self.connector.pending(), [0])  # full: nothing more opens
        learning.callback(None)
        self.assertIs(self.successResultOf(first), conn)
        self.assertNoResult(second)
        self.assertNoResult(third)
        self.check_size()

    def test_a_connection_given_back_inside_a_placement_still_counts(self) -> None:
        """A waiter served inside a placement gives its connection back at once and
        lines up again: the connection queued for placement is not yet in any list,
        and the pool must not open another one past max_size for the new waiter."""
        self.make_pool(1)
        d = self.pool.borrow(0)
        holder = self.connector.succeed()
        self.successResultOf(d)
        seen: list[Any] = []

        def lent(conn: Any) -> None:
            self.pool.give_back(conn)
            self.pool.wait(0, False, seen.append, seen.append)

        self.pool.wait(0, False, lent, seen.append)
        self.pool.give_back(holder)
        self.assertEqual(self.connector.pending(), [])
        self.assertEqual(seen, [holder])  # the queued connection served the new waiter
        self.check_size()


class LongLineTests(SynchronousTestCase):
    def test_waiters_served_synchronously_do_not_recurse(self) -> None:
        """Thousands of waiters that each give the connection back at once are served
        one after another, not by nested calls that would overflow the stack."""
        clock = Clock()
        connector = FakeConnector(clock)
        pool = Pool("app", connector, clock, max_size=1, borrow_timeout=60)
        served: list[int] = []

        def use_and_return(conn: Any, i: int) -> None:
            served.append(i)
            pool.give_back(conn)

        for i in range(5000):
            pool.borrow(0).addCallback(use_and_return, i)
        connector.succeed()
        self.assertEqual(served, list(range(5000)))
        self.assertEqual(len(pool.idle), 1)
        self.assertEqual(pool.size(), 1)


class StatsTests(SynchronousTestCase):
    def test_borrow_wait_percentiles_count_immediate_borrows(self) -> None:
        """Percentiles of borrow latency include the borrows served at once (as 0)."""
        clock = Clock()
        connector = FakeConnector(clock)
        pool = Pool("app", connector, clock, max_size=1, borrow_timeout=60)
        first = pool.borrow(0)
        clock.advance(0.25)
        conn = connector.succeed()
        self.assertIs(self.successResultOf(first), conn)
        for _ in range(98):
            pool.give_back(conn)
            self.assertIs(self.successResultOf(pool.borrow(0)), conn)
        stats = pool.stats()
        self.assertEqual((stats["borrows"], stats["waits"], stats["lent"]), (99, 1, 1))
        self.assertEqual(stats["borrow_wait_p50_ms"], 0.0)
        self.assertEqual(stats["borrow_wait_max_ms"], 250.0)


class FairnessTests(SynchronousTestCase):
    def test_oldest_waiter_served_first_across_flavors(self) -> None:
        """In a full pool, a connection coming back does not go to a younger waiter of
        its own flavor while an older waiter of another flavor has nothing opening for it:
        it makes room for the older one (FIFO, as documented)."""
        clock = Clock()
        connector = FakeConnector(clock)
        pool = Pool("app", connector, clock, max_size=1, borrow_timeout=60)
        d = pool.borrow(0)
        conn = connector.succeed()
        self.successResultOf(d)
        older = pool.borrow(2)
        younger = pool.borrow(0)
        pool.give_back(conn)
        self.assertEqual(conn.closed, "replaced by a connection for another client flavor")
        self.assertEqual(connector.pending(), [2])
        conn2 = connector.succeed()
        self.assertIs(self.successResultOf(older), conn2)
        self.assertNoResult(younger)


class HandOverTests(SynchronousTestCase):
    """A failover moves the line of waiters from one server's pool to another's."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.old_server = FakeConnector(self.clock)
        self.new_server = FakeConnector(self.clock)
        self.old = Pool("app", self.old_server, self.clock, max_size=1, borrow_timeout=10)
        self.new = Pool("app", self.new_server, self.clock, max_size=1, borrow_timeout=10)

    def test_waiters_move_in_arrival_order_with_their_deadlines(self) -> None:
        first = self.old.borrow(0)
        self.clock.advance(1)
        local = self.new.borrow(0)  # arrived between the two
        self.clock.advance(1)
        second = self.old.borrow(0)
        self.old.hand_over(self.new)
        self.assertEqual(len(self.old.waiters), 0)
        self.assertEqual([w.deferred for w in self.new.waiters], [first, local, second])
        conn = self.new_server.succeed()
        self.assertIs(self.successResultOf(first), conn)
        self.assertIs(conn.pool, self.new)
        # Deadlines stay those of arrival: 11 s for the one that came at 1 s, 12 s for the other.
        self.clock.advance(9)
        self.failureResultOf(local, BorrowTimeout)
        self.assertNoResult(second)
        self.clock.advance(1)
        self.failureResultOf(second, BorrowTimeout)

    def test_cancelled_after_the_move_leaves_the_new_line(self) -> None:
        d = self.old.borrow(0)
        self.old.hand_over(self.new)
        d.cancel()
        self.assertEqual(len(self.new.waiters), 0)
        self.failureResultOf(d, defer.CancelledError)

    def test_opening_for_the_old_server_then_serves_nobody_waiting(self) -> None:
        self.old.borrow(0)
        self.old.hand_over(self.new)
        self.assertEqual(self.new_server.pending(), [0])
        late = self.old_server.succeed()
        self.assertEqual(self.old.idle, [late])

    def test_moved_waiter_takes_an_idle_connection_there(self) -> None:
        """The new writer's pool has idle connections (read-only traffic left them): the
        moved waiter gets one at once, before any newcomer, and nothing is opened."""
        self.new = Pool("app", self.new_server, self.clock, max_size=2, borrow_timeout=10)
        d = self.new.borrow(0)
        idle = self.new_server.succeed()
        self.new.give_back(self.successResultOf(d))
        waiting = self.old.borrow(0)
        self.old.hand_over(self.new)
        self.assertIs(self.successResultOf(waiting), idle)
        self.assertIsNone(idle.closed)
        self.assertEqual(self.new_server.pending(), [])
