"""Which servers the backend has, which of them answer, and which one takes writes.

Each target is probed on a monitor connection of its own, so a verdict never
waits behind client traffic and a full pool cannot hide a dead server.  The
probe asks the server whether it is read-only, which is how Aurora and
MySQL/MariaDB replication tell a writer from a reader: when the writer turns
read-only (a failover), the target that became writable takes its place.
Pools never decide any of this; they are told (see pyproxy.proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from pyproxy.backend import BackendConnection, BackendError, Target, connect
from pyproxy.config import TargetConfig
from pyproxy.logs import get_logger

UNKNOWN = "unknown"  # not probed yet: trusted, so start-up needs no wait
UP = "up"  # answers and takes writes
READ_ONLY = "read_only"  # answers, refuses writes
DOWN = "down"  # failure_threshold probes in a row failed

# One round trip for both switches: Aurora readers set innodb_read_only,
# replicas usually read_only.
READ_ONLY_SQL = "SELECT @@global.read_only OR @@global.innodb_read_only"
# For a server without InnoDB's switch (error 1193, unknown variable).
READ_ONLY_ONLY_SQL = "SELECT @@global.read_only"
ER_UNKNOWN_SYSTEM_VARIABLE = 1193
ER_CON_COUNT_ERROR = 1040
# The probe's own account is refused (wrong [health] user or password, no
# grant, host blocked): a configuration problem, not a server going down.
PROBE_LOGIN_REFUSED = frozenset((1044, 1045, 1129, 1130, 1226, 1251, 1698))

# A suspicion (a client saw 1290, a connection died) probes at once, but a
# storm of them probes a target at most this often.
SUSPECT_INTERVAL = 0.1
# While the writer takes no writes, the others are probed this often (at
# most), so the one promoted in a failover is found within a fraction of a
# second of becoming writable.
HUNT_INTERVAL = 0.1


@attrs.define(eq=False)
class TargetHealth:
    """What pyproxy knows about one server now."""

    config: TargetConfig
    state: str = UNKNOWN
    # Failed probes in a row; decides DOWN and the backoff while down.
    failures: int = 0
    last_error: str = ""
    # When the state began (reactor seconds): target_stats says for how long a
    # server has been down.  The first state, unknown, begins when pyproxy takes
    # the target on (at start, or when a reload adds it), so state_seconds then
    # counts from there; None (a null state_seconds) only for a target made
    # without a clock, never the time since the epoch.
    since: float | None = None
    probes: int = 0
    # Probes that failed (not those only inconclusive), since the start.
    failed_probes: int = 0
    last_probe: float = float("-inf")
    # No longer configured (SIGHUP removed it): never chosen again.
    retired: bool = False
    monitor: BackendConnection | None = attrs.field(default=None, repr=False)
    probing: bool = False
    # A suspicion came while a probe was out: its answer may predate what was
    # suspected, so another probe follows at once.
    again: bool = False
    # The number (counted by ``probes``) of the last probe that was answered.
    answered: int = 0
    timer: IDelayedCall | None = attrs.field(default=None, repr=False)
    read_only_sql: str = READ_ONLY_SQL

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def role(self) -> str:
        return self.config.role

    @property
    def usable(self) -> bool:
        return self.state != DOWN and not self.retired

    def stats(self) -> dict[str, Any]:
        return {"target": self.name, "role": self.role, "state": self.state,
                "failures": self.failures, "probes": self.probes, "last_error": self.last_error}


Listener = Callable[[str, TargetHealth, "TargetHealth | None"], None]


@attrs.define(eq=False)
class WriterWait:
    """A write ``refused`` as read-only, waiting to learn which server takes writes
    now (see Topology.await_writer)."""

    refused: TargetHealth
    # refused.probes when the refusal came: only a probe begun after it counts.
    mark: int
    deferred: defer.Deferred[TargetHealth | None] = attrs.field(init=False, repr=False)
    timer: IDelayedCall | None = attrs.field(default=None, repr=False)


_PENDING = object()


class Topology:
    """The targets, their probes, and the election of the writer.

    ``login`` says how a probe logs in to a target: a Target, or a Deferred of
    one when it must be made first (an RDS token); a login that fails counts
    as a failed probe.  ``connector`` opens the monitor connection with it
    (pyproxy.backend.connect; tests give their own).

    Listeners are called as ``listener(event, target, previous)`` with event
    ``"state"`` (``target`` changed state) or ``"writer"`` (``target`` is the
    new writer, ``previous`` the old one).
    """

    def __init__(self, targets: Iterable[TargetConfig], clock: IReactorTime,
                 login: Callable[[TargetConfig], Target | defer.Deferred[Target]], *, interval: float,
                 failure_threshold: int, backoff_max: float,
                 connector: Callable[..., defer.Deferred[BackendConnection]] | None = None) -> None:
        self.clock = clock
        self.login = login
        self.interval = interval
        self.failure_threshold = failure_threshold
        self.backoff_max = backoff_max
        self._connect = connector or (lambda target: connect(clock, target, 0))
        self.targets: list[TargetHealth] = [TargetHealth(config, since=clock.seconds()) for config in targets]
        self.writer = self._first_writer()
        self.listeners: list[Listener] = []
        # Bumped whenever a state or the writer changes: clients holding on to
        # a pool compare it instead of asking again at every borrow.
        self.epoch = 0
        # Times another target took over writes (failovers, and reloads that
        # moved the writer), for /metrics.
        self.writer_changes = 0
        self._turn = 0
        self.running = False
        self.log = get_logger(component="topology")
        self._writer_waits: list[WriterWait] = []

    def _first_writer(self) -> TargetHealth:
        """Before any probe: the first writer, else the first auto target."""
        for role in ("writer", "auto"):
            for target in self.targets:
                if target.role == role and not target.retired:
                    return target
        raise ValueError("no target with role writer or auto")

    # -- choosing -------------------------------------------------------------

    def reader(self, current: TargetHealth | None = None) -> TargetHealth:
        """A server for a read-only session: ``current`` while it still serves
        reads, else the next reader round-robin, else the writer."""
        if current is not None and current is not self.writer and current.usable:
            return current
        readers = [t for t in self.targets if t is not self.writer and t.usable]
        if not readers:
            return self.writer
        self._turn = (self._turn + 1) % len(readers)
        return readers[self._turn]

    def _elect(self) -> None:
        """The writer stays while it takes writes; otherwise the first writable
        target, role writer before auto, takes over.  With none writable, the
        old writer stays: borrowers wait for it to come back."""
        current = self.writer
        if current.state in (UP, UNKNOWN) and not current.retired:
            return
        for role in ("writer", "auto"):
            for target in self.targets:
                if target.role == role and target.state == UP and not target.retired:
                    self.writer = target
                    self.epoch += 1
                    self.writer_changes += 1
                    self.log.warning("writer_changed", previous=current.name, target=target.name,
                                     previous_state=current.state)
                    self._tell("writer", target, current)
                    return

    def await_writer(self, refused: TargetHealth, timeout: float) -> defer.Deferred[TargetHealth | None]:
        """A write was refused as read-only by ``refused``, pyproxy's writer when the
        write was sent: fires with the server that takes writes now, or None when
        none will.

        That is another server elected writer, or ``refused`` itself if a probe
        begun after the refusal finds it writable again.  None: ``refused``
        is found read-only and no other server may take writes (role reader or
        none configured), or ``timeout`` seconds pass first.  Cancelling the
        Deferred (the client left) forgets the wait.
        """
        wait = WriterWait(refused, refused.probes)
        wait.deferred = defer.Deferred(lambda _: self._forget_wait(wait))
        found = self._writer_for(wait)
        if found is not _PENDING:
            wait.deferred.callback(found)  # type: ignore[arg-type]
            return wait.deferred
        wait.timer = self.clock.callLater(timeout, self._wait_over, wait, None)
        self._writer_waits.append(wait)
        self.suspect(refused)
        return wait.deferred

    def _writer_for(self, wait: WriterWait) -> Any:
        """What a WriterWait learns now: a writer, None, or _PENDING."""
        writer = self.writer
        refused = wait.refused
        probed = refused.answered > wait.mark
        if writer.state in (UP, UNKNOWN) and not writer.retired and (writer is not refused or probed):
            return writer
        if probed and refused.state == READ_ONLY and not any(
                target is not refused and target.role != "reader" and not target.retired
                for target in self.targets):
            return None
        return _PENDING

    def _check_waits(self) -> None:
        for wait in list(self._writer_waits):
            found = self._writer_for(wait)
            if found is not _PENDING:
                self._wait_over(wait, found)

    def _wait_over(self, wait: WriterWait, found: TargetHealth | None) -> None:
        self._forget_wait(wait)
        wait.deferred.callback(found)

    def _forget_wait(self, wait: WriterWait) -> None:
        if wait in self._writer_waits:
            self._writer_waits.remove(wait)
        if wait.timer is not None and wait.timer.active():
            wait.timer.cancel()
        wait.timer = None

    @property
    def hunting(self) -> bool:
        """The writer takes no writes and nothing has replaced it yet."""
        return self.writer.state in (READ_ONLY, DOWN)

    def _tell(self, event: str, target: TargetHealth, previous: TargetHealth | None) -> None:
        for listener in list(self.listeners):
            try:
                listener(event, target, previous)
            except Exception as exc:  # noqa: BLE001 - the probes must go on whatever a listener does
                self.log.error("topology_listener_failed", change=event, target=target.name,
                               error=repr(exc))

    def _set(self, target: TargetHealth, state: str) -> None:
        if target.state == state:
            return
        previous, target.state = target.state, state
        target.since = self.clock.seconds()
        self.epoch += 1
        log = self.log.warning if state == DOWN or previous == DOWN else self.log.info
        log("target_state", target=target.name, state=state, previous=previous, role=target.role,
            error=target.last_error if state == DOWN else None)
        self._tell("state", target, None)
        self._elect()
        if target is self.writer and self.hunting:
            for other in self.targets:  # who takes over? ask the others now
                if other is not target:
                    self.suspect(other)
        if self._writer_waits:
            self._check_waits()

    # -- probing --------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        for target in self.targets:
            self.probe(target)

    def stop(self) -> None:
        self.running = False
        for target in self.targets:
            self._stop_probing(target)
        for wait in list(self._writer_waits):
            self._wait_over(wait, None)

    def _stop_probing(self, target: TargetHealth) -> None:
        if target.timer is not None and target.timer.active():
            target.timer.cancel()
        target.timer = None
        if target.monitor is not None:
            target.monitor.on_lost = None
            target.monitor.close("monitor stopped")
            target.monitor = None

    def _schedule(self, target: TargetHealth, delay: float) -> None:
        if not self.running or target.retired:
            return
        if target.timer is not None and target.timer.active():
            if target.timer.getTime() <= self.clock.seconds() + delay:
                return
            target.timer.cancel()
        target.timer = self.clock.callLater(delay, self.probe, target)

    def suspect(self, target: TargetHealth | None = None) -> None:
        """Something a client saw says a target may have changed (a 1290
        read-only error, a lost connection): probe it, or all, now."""
        now = self.clock.seconds()
        for each in (self.targets if target is None else (target,)):
            if each.probing:
                each.again = True
            else:
                # Probed a moment ago: again once SUSPECT_INTERVAL has passed,
                # not at the next interval.
                self._schedule(each, max(0.0, SUSPECT_INTERVAL - (now - each.last_probe)))

    def probe(self, target: TargetHealth) -> None:
        """Asks the server whether it is read-only, on the monitor connection
        (opened again when it died)."""
        target.timer = None
        if target.probing or not self.running or target.retired:
            return
        target.probing = True
        target.probes += 1
        target.last_probe = self.clock.seconds()
        monitor = target.monitor
        if monitor is not None and not monitor.broken:
            d = defer.succeed(monitor)
        else:
            target.monitor = None
            d = defer.maybeDeferred(self.login, target.config)
            d.addCallback(self._open_monitor, target)
            d.addCallback(self._adopt, target)
        d.addCallback(self._ask, target)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(target,), errbackArgs=(target,))

    def _open_monitor(self, login: Target, target: TargetHealth) -> defer.Deferred[BackendConnection]:
        if target.retired or not self.running:
            # Stopped while the login was being made (a token, in a thread).
            raise BackendError(2013, "HY000", "monitor stopped")
        return self._connect(login)

    def _adopt(self, conn: BackendConnection, target: TargetHealth) -> BackendConnection:
        if target.retired or not self.running:
            conn.close("monitor stopped")
            raise BackendError(2013, "HY000", "monitor stopped")
        target.monitor = conn

        def lost(_: BackendConnection) -> None:
            # A server that dies closes its sockets: probe now rather than at
            # the next interval.
            if target.monitor is conn:
                target.monitor = None
                self.suspect(target)

        conn.on_lost = lost
        return conn

    def _ask(self, conn: BackendConnection, target: TargetHealth) -> defer.Deferred[str | None]:
        d = conn.query_value(target.read_only_sql)

        def older_server(failure: Failure) -> Any:
            if failure.check(BackendError) and failure.value.code == ER_UNKNOWN_SYSTEM_VARIABLE \
                    and target.read_only_sql != READ_ONLY_ONLY_SQL:
                target.read_only_sql = READ_ONLY_ONLY_SQL
                return conn.query_value(READ_ONLY_ONLY_SQL)
            return failure

        return d.addErrback(older_server)

    def _answered(self, value: str | None, target: TargetHealth) -> None:
        target.probing = False
        target.failures = 0
        target.last_error = ""
        target.answered = target.probes
        try:
            if not target.retired and self.running:
                self._set(target, UP if value in ("0", None) else READ_ONLY)
        finally:
            self._schedule(target, min(self.interval, HUNT_INTERVAL) if self.hunting else self.interval)
            self._after_probe(target)

    def _after_probe(self, target: TargetHealth) -> None:
        """A probe is over: a suspicion that came meanwhile probes again, and the
        writes waiting for a writer learn what it says."""
        if target.again:
            target.again = False
            self.suspect(target)
        if self._writer_waits:
            self._check_waits()

    def _failed(self, failure: Failure, target: TargetHealth) -> None:
        target.probing = False
        if target.monitor is not None:
            target.monitor.on_lost = None
            target.monitor.close("probe failed")
            target.monitor = None
        if target.retired or not self.running:
            return
        code = failure.value.code if failure.check(BackendError) else 0
        if code == ER_CON_COUNT_ERROR or code in PROBE_LOGIN_REFUSED:
            # Too many connections: the server answers, it is only full.  A
            # refused probe login: pyproxy's configuration is wrong, not the
            # server.  Either way its state stands (the pools' own opens say
            # whether clients can use it).
            log = self.log.info if code == ER_CON_COUNT_ERROR else self.log.error
            # Kept for target_stats, which otherwise shows a state that stays
            # unknown without saying why.
            target.last_error = failure.getErrorMessage()
            log("probe_inconclusive", target=target.name, error=target.last_error)
            self._schedule(target, self.interval)
            self._after_probe(target)
            return
        target.failures += 1
        target.failed_probes += 1
        target.last_error = failure.getErrorMessage()
        # Capped exponential backoff: a second opinion soon, then less often
        # while the server stays away (the exponent capped too: an outage of
        # days must not overflow it).
        first = min(1.0, self.interval)
        delay = min(self.backoff_max, first * 2 ** min(target.failures - 1, 16))
        try:
            self.log.info("probe_failed", target=target.name, failures=target.failures,
                          error=target.last_error)
            if target.failures >= self.failure_threshold:
                self._set(target, DOWN)
        finally:
            self._schedule(target, delay)
            self._after_probe(target)

    # -- configuration --------------------------------------------------------

    def reconfigure(self, configs: Iterable[TargetConfig], *, interval: float, failure_threshold: int,
                    backoff_max: float) -> list[TargetHealth]:
        """Takes a reloaded target list; returns the targets no longer configured.

        A server that stays keeps its state; one that is new is probed at once.
        """
        shorter = interval < self.interval
        self.interval, self.failure_threshold, self.backoff_max = interval, failure_threshold, backoff_max
        by_name = {target.name: target for target in self.targets}
        kept: list[TargetHealth] = []
        for config in configs:
            target = by_name.pop(config.name, None)
            if target is None:
                target = TargetHealth(config, since=self.clock.seconds())
            target.config = config
            kept.append(target)
        self.targets = kept
        removed = list(by_name.values())
        for target in removed:
            target.retired = True
            self._stop_probing(target)
        for target in kept:
            if target.probes == 0 and target.timer is None:
                self._schedule(target, 0)
            elif shorter and target.state != DOWN:
                self._schedule(target, interval)  # not at the old, longer interval
        self.epoch += 1
        if self.writer.retired or self.writer.role == "reader":
            previous = self.writer
            # Known writable first, then role writer before auto.
            candidates = sorted((t for t in kept if t.role != "reader" and t.state in (UP, UNKNOWN)),
                                key=lambda t: (t.state != UP, t.role != "writer"))
            self.writer = candidates[0] if candidates else self._first_writer()
            if self.writer is not previous:
                self.writer_changes += 1
                self.log.warning("writer_changed", previous=previous.name, target=self.writer.name,
                                 previous_state="removed" if previous.retired else previous.state)
                self._tell("writer", self.writer, previous)
        # A role changed (a reader made auto, say) may make another target the
        # one to take writes now.
        self._elect()
        if self.hunting:
            self.suspect()
        if self._writer_waits:
            self._check_waits()
        return removed

    def stats(self) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        return [dict(target.stats(), writer=target is self.writer,
                     state_seconds=None if target.since is None else round(now - target.since, 1))
                for target in self.targets]
