"""pyproxy.topology: probes, target states and the writer election, on a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy.backend import BackendError, Target
from pyproxy.config import TargetConfig
from pyproxy.topology import DOWN, READ_ONLY, READ_ONLY_ONLY_SQL, UNKNOWN, UP, Topology

A = TargetConfig("a", 1, "writer")
B = TargetConfig("b", 2, "auto")
C = TargetConfig("c", 3, "reader")


class Monitor:
    """A monitor connection whose answers the test gives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queries: list[tuple[str, defer.Deferred[str | None]]] = []
        self.broken = False
        self.closed: str | None = None
        self.on_lost: Any = None

    def query_value(self, sql: str) -> defer.Deferred[str | None]:
        d: defer.Deferred[str | None] = defer.Deferred()
        self.queries.append((sql, d))
        return d

    def close(self, reason: str) -> bool:
        """As BackendConnection.close; False: no connectionLost follows."""
        self.closed = reason
        self.broken = True
        return False

    def die(self) -> None:
        self.broken = True
        if self.on_lost is not None:
            self.on_lost(self)


class Servers:
    """The connector: opens succeed or fail as each server is set up to."""

    def __init__(self) -> None:
        self.reachable: dict[str, bool] = {"a": True, "b": True, "c": True}
        self.read_only: dict[str, str] = {"a": "0", "b": "1", "c": "1"}
        self.monitors: dict[str, list[Monitor]] = {"a": [], "b": [], "c": []}
        self.answer = True  # answer queries at once

    def __call__(self, target: Target) -> defer.Deferred[Monitor]:
        if not self.reachable[target.host]:
            return defer.fail(BackendError(2003, "HY000", f"Can't connect to {target.host}"))
        monitor = Monitor(target.host)
        if self.answer:
            original = monitor.query_value

            def query_value(sql: str, monitor: Monitor = monitor, original: Any = original) -> Any:
                d = original(sql)
                if not self.reachable[monitor.name]:
                    d.errback(BackendError(2013, "HY000", "Lost connection"))
                else:
                    d.callback(self.read_only[monitor.name])
                return d

            monitor.query_value = query_value  # type: ignore[method-assign]
        self.monitors[target.host].append(monitor)
        return defer.succeed(monitor)


class TopologyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.servers = Servers()
        self.events: list[tuple[str, str, str | None]] = []

    def topology(self, *targets: TargetConfig, **options: Any) -> Topology:
        settings = {"interval": 10, "failure_threshold": 2, "backoff_max": 8}
        settings.update(options)
        topology = Topology(targets, self.clock, lambda server: Target(server.host, server.port, "mon", "pw"),
                            connector=self.servers, **settings)
        topology.listeners.append(lambda event, target, previous: self.events.append(
            (event, target.name, previous.name if previous is not None else None)))
        self.addCleanup(topology.stop)
        return topology

    def run_for(self, seconds: float) -> None:
        """Clock.advance schedules what runs during a step from the step's end, so
        time passes in small steps here, as it would in a reactor."""
        for _ in range(round(seconds * 8)):
            self.clock.advance(0.125)  # exact in binary: steps add up to whole seconds

    def states(self, topology: Topology) -> dict[str, str]:
        return {target.config.host: target.state for target in topology.targets}

    def test_first_probe_learns_states(self) -> None:
        """Before any probe every target is trusted; the first probe says which is read-only."""
        topology = self.topology(A, B, C)
        self.assertEqual(set(self.states(topology).values()), {UNKNOWN})
        self.assertEqual(topology.writer.name, "a:1")
        topology.start()
        self.assertEqual(self.states(topology), {"a": UP, "b": READ_ONLY, "c": READ_ONLY})
        self.assertEqual(topology.writer.name, "a:1")
        self.assertEqual(self.servers.monitors["a"][0].queries[0][0],
                         "SELECT @@global.read_only OR @@global.innodb_read_only")

    def test_probes_every_interval_on_one_connection(self) -> None:
        topology = self.topology(A)
        topology.start()
        self.run_for(10)
        self.run_for(10)
        self.assertEqual(len(self.servers.monitors["a"]), 1)
        self.assertEqual(len(self.servers.monitors["a"][0].queries), 3)
        self.assertEqual(topology.targets[0].probes, 3)

    def test_auto_writer_first_when_no_writer_role(self) -> None:
        topology = self.topology(C, TargetConfig("b", 2, "auto"))
        self.assertEqual(topology.writer.name, "b:2")

    def test_down_after_threshold_then_backoff_then_up(self) -> None:
        """Two failed probes in a row mark a target down; it is probed again with a
        growing delay, capped, and is up at the first probe that answers."""
        topology = self.topology(A, B, interval=10, failure_threshold=2, backoff_max=8)
        topology.start()
        self.servers.reachable["a"] = False
        self.run_for(10)  # failure 1: a second opinion after 1 s
        self.assertEqual(topology.targets[0].state, UP)
        self.assertEqual(topology.targets[0].failures, 1)
        self.run_for(1)  # failure 2: down
        self.assertEqual(topology.targets[0].state, DOWN)
        self.assertIn(("state", "a:1", None), self.events)
        probes = topology.targets[0].probes
        delays = []
        for _ in range(5):
            start = self.clock.seconds()
            while topology.targets[0].probes == probes:
                self.clock.advance(0.5)
            probes = topology.targets[0].probes
            delays.append(self.clock.seconds() - start)
        self.assertEqual(delays, [2, 4, 8, 8, 8])
        self.servers.reachable["a"] = True
        self.run_for(8)
        self.assertEqual(topology.targets[0].state, UP)
        self.assertEqual(topology.targets[0].failures, 0)

    def test_marked_down_within_two_intervals(self) -> None:
        topology = self.topology(A, interval=5)
        topology.start()
        self.run_for(0.1)
        self.servers.reachable["a"] = False
        self.run_for(10)
        self.assertEqual(topology.targets[0].state, DOWN)

    def test_failover_elects_the_writable_target(self) -> None:
        """The writer turns read-only and the auto target writable: writes move there."""
        topology = self.topology(A, B, C)
        topology.start()
        epoch = topology.epoch
        self.servers.read_only.update(a="1", b="0")
        self.run_for(10)
        self.assertEqual(topology.writer.name, "b:2")
        self.assertIn(("writer", "b:2", "a:1"), self.events)
        self.assertGreater(topology.epoch, epoch)
        # The old writer, now read-only, serves reads.
        self.assertEqual(topology.reader().name in ("a:1", "c:3"), True)

    def test_reader_role_never_takes_writes(self) -> None:
        topology = self.topology(A, C)
        topology.start()
        self.servers.read_only.update(a="1", c="0")
        self.run_for(10)
        self.assertEqual(topology.writer.name, "a:1")

    def test_no_writable_target_keeps_the_writer(self) -> None:
        """With nothing writable the writer stays, so borrowers wait for it."""
        topology = self.topology(A, B)
        topology.start()
        self.servers.reachable["a"] = False
        self.run_for(11)
        self.assertEqual(topology.targets[0].state, DOWN)
        self.assertEqual(topology.writer.name, "a:1")

    def test_writer_down_moves_to_writable_auto(self) -> None:
        topology = self.topology(A, B)
        topology.start()
        self.servers.reachable["a"] = False
        self.servers.read_only["b"] = "0"
        self.run_for(11)
        self.assertEqual(topology.writer.name, "b:2")

    def test_writer_stays_while_writable(self) -> None:
        """Two writable targets (a split brain, or both roles writer): no flapping."""
        topology = self.topology(A, TargetConfig("b", 2, "writer"))
        topology.start()
        self.servers.read_only["b"] = "0"
        self.run_for(30)
        self.assertEqual(topology.writer.name, "a:1")

    def test_readers_round_robin_and_sticky(self) -> None:
        topology = self.topology(A, B, C)
        topology.start()
        first = topology.reader()
        second = topology.reader()
        self.assertEqual({first.name, second.name}, {"b:2", "c:3"})
        self.assertIs(topology.reader(first), first)
        self.servers.reachable["b"] = False
        self.run_for(11)
        self.assertEqual(topology.reader(topology.targets[1]).name, "c:3")

    def test_reader_falls_back_to_writer(self) -> None:
        topology = self.topology(A, C)
        topology.start()
        self.servers.reachable["c"] = False
        self.run_for(11)
        self.assertIs(topology.reader(), topology.writer)

    def test_suspect_probes_now_once(self) -> None:
        """A client's 1290 probes at once; a storm of suspicions probes once."""
        topology = self.topology(A, B)
        topology.start()
        self.run_for(1)
        self.servers.read_only.update(a="1", b="0")
        for _ in range(50):
            topology.suspect()
        self.clock.advance(0)
        self.assertEqual(topology.writer.name, "b:2")
        self.assertEqual(topology.targets[0].probes, 2)

    def test_lost_monitor_probes_now(self) -> None:
        topology = self.topology(A)
        topology.start()
        self.run_for(1)
        self.servers.reachable["a"] = False
        self.servers.monitors["a"][0].die()
        self.clock.advance(0)
        self.assertEqual(topology.targets[0].failures, 1)
        self.run_for(1)
        self.assertEqual(topology.targets[0].state, DOWN)

    def test_older_server_without_innodb_read_only(self) -> None:
        self.servers.answer = False
        topology = self.topology(A)
        topology.start()
        monitor = self.servers.monitors["a"][0]
        monitor.queries[0][1].errback(BackendError(1193, "HY000", "Unknown system variable"))
        self.assertEqual(monitor.queries[1][0], READ_ONLY_ONLY_SQL)
        monitor.queries[1][1].callback("1")
        self.assertEqual(topology.targets[0].state, READ_ONLY)
        self.assertEqual(topology.targets[0].read_only_sql, READ_ONLY_ONLY_SQL)

    def test_stalled_probe_is_not_doubled(self) -> None:
        """A probe still waiting (the query's own deadline ends it) is not sent again."""
        self.servers.answer = False
        topology = self.topology(A, interval=1)
        topology.start()
        self.run_for(5)
        topology.suspect()
        self.assertEqual(len(self.servers.monitors["a"][0].queries), 1)

    def test_reconfigure_keeps_adds_and_retires(self) -> None:
        topology = self.topology(A, B)
        topology.start()
        kept = topology.targets[0]
        removed = topology.reconfigure([A, C], interval=10, failure_threshold=2, backoff_max=8)
        self.assertEqual([t.name for t in removed], ["b:2"])
        self.assertTrue(removed[0].retired)
        self.assertEqual(self.servers.monitors["b"][0].closed, "monitor stopped")
        self.assertIs(topology.targets[0], kept)
        self.assertEqual(topology.targets[1].state, UNKNOWN)
        self.clock.advance(0)
        self.assertEqual(topology.targets[1].state, READ_ONLY)

    def test_reconfigure_removing_the_writer(self) -> None:
        topology = self.topology(A, B)
        topology.start()
        self.servers.read_only["b"] = "0"
        topology.reconfigure([B], interval=10, failure_threshold=2, backoff_max=8)
        self.assertEqual(topology.writer.name, "b:2")
        self.assertIn(("writer", "b:2", "a:1"), self.events)

    def test_stop_closes_monitors_and_timers(self) -> None:
        topology = self.topology(A)
        topology.start()
        topology.stop()
        self.assertEqual(self.servers.monitors["a"][0].closed, "monitor stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_writer_read_only_hunts_for_the_next(self) -> None:
        """When the writer turns read-only and nothing replaces it yet, the others are
        asked at once and then every HUNT_INTERVAL, not every interval."""
        topology = self.topology(A, B, interval=10)
        topology.start()
        self.run_for(1)
        self.servers.read_only["a"] = "1"
        topology.suspect(topology.targets[0])
        self.clock.advance(0)
        self.assertTrue(topology.hunting)
        self.assertEqual(topology.targets[1].probes, 2)  # asked at once
        self.run_for(1)
        # then every HUNT_INTERVAL (0.1 s; 0.125 s in these steps), not every 10 s
        self.assertEqual(topology.targets[1].probes, 10)
        self.servers.read_only["b"] = "0"
        self.run_for(0.25)
        self.assertEqual(topology.writer.name, "b:2")
        self.assertFalse(topology.hunting)
        probes = topology.targets[1].probes
        self.run_for(5)
        self.assertEqual(topology.targets[1].probes, probes)  # back to the interval

    def test_full_server_is_not_down(self) -> None:
        """Error 1040 (too many connections) means the server answers: no failure counted."""
        self.servers.answer = False
        topology = self.topology(A, interval=1)
        topology.start()
        monitor = self.servers.monitors["a"][0]
        monitor.queries[0][1].callback("0")
        for _ in range(3):
            self.run_for(1)
            monitor = self.servers.monitors["a"][-1]
            monitor.queries[-1][1].errback(BackendError(1040, "08004", "Too many connections"))
        self.assertEqual((topology.targets[0].state, topology.targets[0].failures), (UP, 0))

    def test_reload_that_makes_a_writable_reader_auto_elects_it(self) -> None:
        """The writer is down and a writable server is listed as reader; a reload making
        it auto elects it at once, though no state changed."""
        self.servers.read_only["c"] = "0"
        topology = self.topology(A, C)
        topology.start()
        self.servers.reachable["a"] = False
        self.servers.monitors["a"][0].die()
        self.run_for(15)
        self.assertEqual((topology.targets[0].state, topology.writer.name), (DOWN, "a:1"))
        topology.reconfigure([A, TargetConfig("c", 3, "auto")], interval=10, failure_threshold=2,
                             backoff_max=8)
        self.assertEqual(topology.writer.name, "c:3")

    def test_reload_prefers_a_known_writable_target_to_an_unprobed_one(self) -> None:
        self.servers.read_only["b"] = "0"
        self.servers.reachable["x"] = False
        self.servers.monitors["x"] = []
        topology = self.topology(A, B)
        topology.start()
        topology.reconfigure([TargetConfig("x", 9, "writer"), B], interval=10, failure_threshold=2,
                             backoff_max=8)
        self.assertEqual(topology.writer.name, "b:2")

    def test_suspicion_just_after_a_probe_is_kept(self) -> None:
        """A 1290 seen 50 ms after the last probe: probed again once SUSPECT_INTERVAL has
        passed, not at the next interval."""
        topology = self.topology(A, B)
        topology.start()
        self.clock.advance(0.05)
        self.servers.read_only.update(a="1", b="0")
        topology.suspect()
        self.run_for(0.25)
        self.assertEqual(topology.writer.name, "b:2")

    def test_outage_of_hours_keeps_probing(self) -> None:
        """The backoff's exponent is capped: after thousands of failed probes the target
        is still probed, and found up when it is back."""
        topology = self.topology(A, C, backoff_max=10)
        topology.start()
        self.servers.reachable["c"] = False
        self.servers.monitors["c"][0].die()
        reader = topology.targets[1]
        reader.failures = 5000  # as after about 14 hours at backoff_max
        for _ in range(30):
            self.clock.advance(1)
        self.assertEqual(reader.state, DOWN)
        self.servers.reachable["c"] = True
        for _ in range(11):
            self.clock.advance(1)
        self.assertEqual(reader.state, READ_ONLY)

    def test_refused_probe_login_is_no_outage(self) -> None:
        """A wrong [health] user or password says nothing about the servers: their state
        stands and the error is logged."""
        topology = self.topology(A, C)
        self.servers.reachable["c"] = True
        topology._connect = lambda target: defer.fail(  # type: ignore[method-assign]
            BackendError(1045, "28000", "Access denied for user 'mon'"))
        topology.start()
        self.run_for(30)
        self.assertEqual({t.state for t in topology.targets}, {UNKNOWN})

    def test_listener_failure_does_not_stop_probes(self) -> None:
        topology = self.topology(A)
        topology.listeners.append(lambda *args: 1 / 0)
        topology.start()
        self.servers.reachable["a"] = False
        self.run_for(12)
        self.assertEqual(topology.targets[0].state, DOWN)
        self.assertIsNotNone(topology.targets[0].timer)

    def test_shorter_interval_on_reload_applies_now(self) -> None:
        topology = self.topology(A, interval=600)
        topology.start()
        topology.reconfigure([A], interval=5, failure_threshold=2, backoff_max=8)
        self.run_for(5)
        self.assertEqual(topology.targets[0].probes, 2)

    def test_a_target_never_probed_counts_its_state_from_when_pyproxy_took_it_on(self) -> None:
        """A probe whose login is refused (a wrong password) leaves the state unknown; the
        stats then say since when pyproxy has known the target, and why, never the time
        since the epoch that the reactor's clock counts from."""
        self.clock.advance(1_700_000_000)  # a real reactor's seconds() is time since the epoch
        refused = BackendError(1045, "28000", "Access denied for user 'mon'@'localhost'")
        self.servers = lambda target: defer.fail(refused)  # type: ignore[assignment]
        topology = self.topology(A)
        topology.start()
        self.run_for(7)
        topology.reconfigure([A, B], interval=10, failure_threshold=2, backoff_max=8)
        self.run_for(3)
        first, added = topology.stats()
        self.assertEqual((first["state"], first["state_seconds"]), (UNKNOWN, 10.0))
        self.assertIn("Access denied", first["last_error"])
        self.assertEqual((added["state"], added["state_seconds"]), (UNKNOWN, 3.0))

    def test_stats_say_how_long_a_server_has_been_down(self) -> None:
        topology = self.topology(A, C)
        topology.start()
        self.servers.reachable["c"] = False
        self.servers.monitors["c"][0].die()
        self.run_for(31)
        writer, reader = topology.stats()
        self.assertEqual((writer["state"], writer["writer"]), (UP, True))
        self.assertEqual((reader["state"], reader["writer"]), (DOWN, False))
        # Down since its second failed probe, about a second after the monitor died.
        self.assertTrue(29.5 <= reader["state_seconds"] <= 30.0, reader)


class AwaitWriterTests(SynchronousTestCase):
    """Topology.await_writer: a write refused as read-only learns which server takes
    writes now (pyproxy.write_retry)."""

    setUp = TopologyTests.setUp
    topology = TopologyTests.topology
    run_for = TopologyTests.run_for

    def started(self, *targets: TargetConfig) -> tuple[Topology, Any]:
        topology = self.topology(*targets)
        topology.start()
        return topology, topology.targets[0]

    def test_new_writer_elected(self) -> None:
        """The refusing writer is found read-only, the other server writable: the wait
        fires with the new writer as soon as it is elected."""
        topology, a = self.started(A, B)
        self.servers.read_only.update(a="1")
        results: list[Any] = []
        topology.await_writer(a, 5).addCallback(results.append)
        self.assertEqual(results, [])
        self.run_for(0.25)  # a probed at once: read-only; b hunted
        self.assertEqual(results, [])
        self.servers.read_only.update(b="0")
        self.run_for(0.25)
        self.assertEqual([target.name for target in results], ["b:2"])

    def test_already_moved_fires_at_once(self) -> None:
        topology, a = self.started(A, B)
        self.servers.read_only.update(a="1", b="0")
        self.run_for(10)
        self.assertEqual(topology.writer.name, "b:2")
        results: list[Any] = []
        topology.await_writer(a, 5).addCallback(results.append)
        self.assertEqual([target.name for target in results], ["b:2"])

    def test_same_writer_writable_after_a_new_probe(self) -> None:
        """Only a probe begun after the refusal counts: the refusing server, still
        writable by it, is the answer."""
        topology, a = self.started(A, B)
        results: list[Any] = []
        topology.await_writer(a, 5).addCallback(results.append)
        self.assertEqual(results, [])
        self.run_for(0.25)
        self.assertEqual(results, [a])

    def test_nobody_else_may_write(self) -> None:
        """The refusing writer is read-only and the others are readers: None at once."""
        topology, a = self.started(A, C)
        self.servers.read_only.update(a="1")
        results: list[Any] = []
        topology.await_writer(a, 5).addCallback(results.append)
        self.run_for(0.25)
        self.assertEqual(results, [None])

    def test_timeout(self) -> None:
        topology, a = self.started(A, B)
        self.servers.read_only.update(a="1")
        results: list[Any] = []
        topology.await_writer(a, 2).addCallback(results.append)
        self.run_for(1.875)
        self.assertEqual(results, [])
        self.run_for(0.25)
        self.assertEqual(results, [None])
        self.assertEqual(topology._writer_waits, [])

    def test_cancel_forgets_the_wait(self) -> None:
        topology, a = self.started(A, B)
        self.servers.read_only.update(a="1")
        d = topology.await_writer(a, 2)
        d.addErrback(lambda failure: failure.trap(defer.CancelledError))
        d.cancel()
        self.assertEqual(topology._writer_waits, [])
        self.assertEqual([call for call in self.clock.getDelayedCalls() if call.func == topology._wait_over], [])

    def test_suspicion_during_a_probe_probes_again(self) -> None:
        """A probe out when a suspicion comes may have been answered before the change:
        another follows at once rather than at the next interval."""
        self.servers.answer = False
        topology, a = self.started(A, B)
        monitor = self.servers.monitors["a"][0]
        topology.suspect(a)
        monitor.queries[0][1].callback("0")
        self.run_for(0.25)
        self.assertEqual(len(monitor.queries), 2)


class AsynchronousLoginTests(SynchronousTestCase):
    """A probe whose login is made first (an RDS token, made in a thread): the probe waits
    for it, and a login that cannot be made is a failed probe, like an unreachable server."""

    setUp = TopologyTests.setUp
    run_for = TopologyTests.run_for
    states = TopologyTests.states

    def topology(self, login: Any) -> Topology:
        topology = Topology([A], self.clock, login, connector=self.servers, interval=10,
                            failure_threshold=2, backoff_max=8)
        self.addCleanup(topology.stop)
        return topology

    def test_probe_waits_for_the_login(self) -> None:
        logins: list[defer.Deferred[Target]] = []
        topology = self.topology(lambda server: logins.append(defer.Deferred()) or logins[-1])
        topology.start()
        self.assertEqual((self.servers.monitors["a"], topology.targets[0].probing), ([], True))
        logins[0].callback(Target("a", 1, "mon", "", token="a:1/?Action=connect"))
        self.assertEqual(self.states(topology), {"a": UP})
        self.assertEqual(len(self.servers.monitors["a"]), 1)

    def test_login_that_cannot_be_made_fails_the_probe(self) -> None:
        """Each probe asks for a login again; failures count, back off and make the
        target down; once a login can be made, the next probe finds it up."""
        made: list[bool] = []
        fail = [True]

        def login(server: TargetConfig) -> defer.Deferred[Target]:
            made.append(True)
            if fail[0]:
                return defer.fail(BackendError(2003, "HY000", "Can't connect (no RDS IAM token: NoCredentialsError)"))
            return defer.succeed(Target(server.host, server.port, "mon", ""))

        topology = self.topology(login)
        topology.start()
        target = topology.targets[0]
        self.assertEqual((target.state, target.failures), (UNKNOWN, 1))
        self.assertIn("no RDS IAM token", target.last_error)
        self.run_for(1)  # the second opinion, a second later
        self.assertEqual((target.state, target.failures, len(made)), (DOWN, 2, 2))
        self.assertEqual(self.servers.monitors["a"], [])
        fail[0] = False
        self.run_for(2)  # backoff: 2 s after the second failure
        self.assertEqual((target.state, len(made)), (UP, 3))

    def test_login_failing_synchronously_is_a_failed_probe(self) -> None:
        def login(server: TargetConfig) -> Target:
            raise BackendError(2003, "HY000", "no token")

        topology = self.topology(login)
        topology.start()
        self.assertEqual((topology.targets[0].failures, topology.targets[0].last_error), (1, "(2003) no token"))

    def test_stopped_while_the_login_is_made(self) -> None:
        """No monitor connection is opened for a login that comes after stop()."""
        pending: defer.Deferred[Target] = defer.Deferred()
        topology = self.topology(lambda server: pending)
        topology.start()
        topology.stop()
        pending.callback(Target("a", 1, "mon", ""))
        self.assertEqual(self.servers.monitors["a"], [])
        self.assertFalse(topology.targets[0].probing)
