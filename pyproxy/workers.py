"""Worker processes (``[proxy] workers = N``): one pyproxy per core, on the same ports.

One Python process runs on one core, so pyproxy scales on a host by running several. The
process twistd starts becomes a supervisor that serves no client itself: it starts N workers
(``python -m pyproxy.workers``), each a whole pyproxy with its own reactor, pools and health
checker, listening on the same ports with SO_REUSEPORT (pyproxy.reuseport) so that the kernel
spreads new connections across them.

What the supervisor owns:

* the workers' lives: a worker that dies is started again (after 0.5 s, doubling up to 30 s
  while it keeps dying within 10 s of its start); SIGTERM drains every worker and ends when all
  have ended; a worker whose supervisor died gets SIGTERM from the kernel (PR_SET_PDEATHSIG);
* signals: SIGHUP (reload) and SIGUSR2 (pause/resume) go to every worker; SIGHUP also
  re-reads the supervisor's own copy of the configuration (for its admin console);
* KILL of a client another worker serves: the asking worker sends it here, and it goes on to
  the worker whose id it is (ids are i+1, i+1+n, ...), whose answer comes back the same way;
* SIGUSR1: it asks each worker for its figures over a control channel and logs them summed
  (``pool_stats`` per pool, ``client_stats``, ``pin_summary``, with ``workers``); each worker
  also logs its own at shutdown, with its ``worker`` index;
* the listeners that speak for the whole pyproxy: ``/metrics`` (pyproxy.worker_metrics) and
  the admin console (pyproxy.worker_admin), which ask every worker with ``ask()`` and put the
  answers together;
* the budget: worker i of n gets its share of every per-pool budget (Proxy.worker_share), the
  shares adding up to it, so the server never sees more than ``max_connections`` per user and
  target from all workers together; client ids are unique across workers (i+1, i+1+n, ...).

The control channel is a pair of pipes (the worker's fds 3 and 4) carrying one JSON object per
line.  A question the supervisor asks every worker carries a ``ticket`` that the answer repeats
(ops ``metrics`` and ``admin``); a worker that has not answered within the asker's timeout is
left out, so no figure or console waits on a stuck worker.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessDone
from twisted.protocols.basic import LineOnlyReceiver

from pyproxy import logs, signal_handlers
from pyproxy.admin_merge import owner
from pyproxy.config import Config, ConfigError

WORKER_ENV = "PYPROXY_WORKER"
#: The worker's ends of the control channel: it writes to the supervisor on 3, reads on 4.
TO_PARENT_FD, FROM_PARENT_FD = 3, 4
RESTART_FIRST, RESTART_MAX, STABLE_AFTER = 0.5, 30.0, 10.0
STATS_TIMEOUT = 5.0
#: Seconds a KILL of another worker's client waits for that worker's answer.
KILL_TIMEOUT = 5.0
#: pool_stats fields that are not counts: the largest worker's figure stands for them.
NOT_SUMMED = {"borrow_wait_p50_ms", "borrow_wait_p99_ms", "borrow_wait_max_ms", "paused"}
#: The ops whose messages from a worker answer a question of ``Supervisor.ask()``.
ANSWERS = frozenset({"metrics", "admin"})


@attrs.frozen
class WorkerSpec:
    """What a worker needs to load the configuration its supervisor loaded."""

    index: int
    count: int
    config: str | None
    overrides: dict[str, dict[str, Any]]
    # The greeting fields pyproxy's start-up check read from the server (ServerInfo).
    server: tuple[str, int, int, int] | None
    # Budget units moved to (or from) this worker so far: [user, target, units].
    moved: tuple[tuple[str, str, int], ...] = ()

    def to_env(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_env(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        server = tuple(data["server"]) if data["server"] is not None else None
        moved = tuple(tuple(entry) for entry in data.get("moved", ()))
        return cls(data["index"], data["count"], data["config"], data["overrides"], server,  # type: ignore[arg-type]
                   moved)  # type: ignore[arg-type]


@attrs.frozen
class Gathered:
    """The answers to one question asked of the workers (``Supervisor.ask``)."""

    # The workers asked that were still running when the answers were gathered.
    asked: frozenset[int]
    # Worker index -> its answer (the whole message).
    answers: dict[int, dict[str, Any]]


@attrs.define
class _Asking:
    asked: set[int]
    answers: dict[int, dict[str, Any]]
    done: defer.Deferred[Gathered]
    timer: Any


class JsonLines(LineOnlyReceiver):
    """One JSON object per line, each way."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 24

    def __init__(self, received: Callable[[dict[str, Any]], None]) -> None:
        self.received = received

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if isinstance(message, dict):
            self.received(message)

    def send(self, message: dict[str, Any]) -> None:
        self.sendLine(json.dumps(message).encode())


# -- the supervisor ------------------------------------------------------------------------


class BudgetBroker:
    """Moves budget units between workers (see pyproxy.budget): one ``want`` is served by
    asking the other workers in turn to give a unit up, and keeps the ledger of where the
    units are, so a worker started again gets its shares back."""

    RECLAIM_TIMEOUT = 2.0

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        # (user, target) -> worker index -> units moved to it (negative: from it).
        self.moved: dict[tuple[str, str], collections.Counter[int]] = collections.defaultdict(
            collections.Counter)
        self._tickets: dict[int, tuple[int, tuple[str, str], list[int], Any]] = {}
        # Tickets whose candidate did not answer in time, by (candidate, ticket): the
        # asker and the pool.  A late yes still gives up a unit, which then goes to
        # the asker rather than vanish from the budget.
        self._late: dict[tuple[int, int], tuple[int, tuple[str, str]]] = {}
        self._next = 0
        self.moves = 0

    def want(self, index: int, key: tuple[str, str]) -> None:
        others = sorted(self.supervisor.workers)
        # Start after the asker, so that no worker is always asked first.
        others = [i for i in others if i > index] + [i for i in others if i < index]
        self._next += 1
        self._tickets[self._next] = (index, key, others, None)
        self._ask(self._next)

    def _ask(self, ticket: int) -> None:
        index, key, others, _ = self._tickets[ticket]
        while others:
            candidate = others.pop(0)
            worker = self.supervisor.workers.get(candidate)
            if worker is None:
                continue
            timer = self.supervisor.reactor.callLater(self.RECLAIM_TIMEOUT, self._timed_out,
                                                      candidate, ticket)
            self._tickets[ticket] = (index, key, others, (candidate, timer))
            worker.send({"op": "reclaim", "user": key[0], "target": key[1], "ticket": ticket})
            return
        del self._tickets[ticket]
        self._grant(index, key, False)

    def _timed_out(self, candidate: int, ticket: int) -> None:
        index, key = self._tickets[ticket][:2]
        self.reclaimed(candidate, ticket, False)
        self._late[(candidate, ticket)] = (index, key)

    def reclaimed(self, candidate: int, ticket: int, ok: bool) -> None:
        late = self._late.pop((candidate, ticket), None)
        if late is not None:
            # The asker was told no (or served by another worker) meanwhile; the
            # unit this worker gave up is still the asker's to use or give back.
            if ok:
                self._move(candidate, *late)
            return
        entry = self._tickets.get(ticket)
        if entry is None or entry[3] is None or entry[3][0] != candidate:
            return
        index, key, others, (_, timer) = entry
        if timer.active():
            timer.cancel()
        if not ok:
            self._tickets[ticket] = (index, key, others, None)
            self._ask(ticket)
            return
        del self._tickets[ticket]
        self._move(candidate, index, key)

    def _move(self, candidate: int, index: int, key: tuple[str, str]) -> None:
        self.moved[key][candidate] -= 1
        self.moved[key][index] += 1
        self.moves += 1
        self._grant(index, key, True)

    def _grant(self, index: int, key: tuple[str, str], ok: bool) -> None:
        worker = self.supervisor.workers.get(index)
        if worker is not None:
            worker.send({"op": "grant", "user": key[0], "target": key[1], "ok": ok})

    def ledger(self, index: int) -> tuple[tuple[str, str, int], ...]:
        return tuple((key[0], key[1], units[index]) for key, units in self.moved.items()
                     if units[index])

    def reset(self) -> None:
        self.moved.clear()
        self._late.clear()


class WorkerProcess(protocol.ProcessProtocol):
    """The supervisor's side of one worker process."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.lines = JsonLines(lambda message: supervisor.received(index, message))
        self.started_at = supervisor.reactor.seconds()

    def connectionMade(self) -> None:
        self.lines.makeConnection(_ChildWriter(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == TO_PARENT_FD:
            self.lines.dataReceived(data)

    def send(self, message: dict[str, Any]) -> None:
        self.lines.send(message)

    def signal(self, signum: int) -> None:
        try:
            self.transport.signalProcess(signum)
        except Exception:  # noqa: BLE001 - ProcessExitedAlready: it is ending anyway
            pass

    @property
    def pid(self) -> int | None:
        return getattr(self.transport, "pid", None)

    def processEnded(self, reason: Any) -> None:
        self.supervisor.exited(self, reason.value)


class _ChildWriter:
    """Lets a LineReceiver write to the worker's control pipe."""

    disconnecting = False

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.transport.writeToChild(FROM_PARENT_FD, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.transport.closeChildFD(FROM_PARENT_FD)


class Supervisor(service.Service):
    """Starts, watches and signals the workers (see the module docstring)."""

    def __init__(self, count: int, spec: Callable[[int], WorkerSpec], reactor: Any,
                 drain_timeout: float, spawn: Callable[..., Any] | None = None,
                 config: Config | None = None, load: Callable[[], Config] | None = None) -> None:
        self.count = count
        # The configuration as the workers have it, and how to read it again (SIGHUP,
        # RELOAD): the admin console's account and SHOW CONFIG come from it.
        self.config = config
        self.load = load
        # Called with (old, new) after each reload of it.
        self.reload_watchers: list[Callable[[Config | None, Config], None]] = []
        # The supervisor's own listeners by key ("metrics.listen", "admin.listen"),
        # closed when it stops.
        self.listeners: dict[str, Any] = {}
        self.spec = spec
        self.reactor = reactor
        self.drain_timeout = drain_timeout
        self.spawn = spawn or reactor.spawnProcess
        self.workers: dict[int, WorkerProcess] = {}
        self.restarts: collections.Counter[int] = collections.Counter()
        self.delays: dict[int, float] = {}
        self._restart_calls: dict[int, Any] = {}
        self.stopping = False
        self._all_ended: defer.Deferred[None] | None = None
        self._stats: dict[int, dict[str, Any]] | None = None
        self._stats_timer: Any = None
        self._asking: dict[int, _Asking] = {}
        self._tickets = itertools.count(1)
        # Workers told to stop by the admin console's SHUTDOWN: no SIGTERM on top.
        self._told: set[WorkerProcess] = set()
        self.budget = BudgetBroker(self)
        self.log = logs.get_logger(component="supervisor")

    # -- lives --------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self.start_worker(index)
        for signum, action in ((signal.SIGHUP, self.reload),
                               (signal.SIGUSR2, lambda: self.forward(signal.SIGUSR2)),
                               (signal.SIGUSR1, self.collect_stats)):
            signal_handlers.on_reactor(self.reactor, signum, action)
        self.reactor.callWhenRunning(signal_handlers.defer_reactor_handlers, self.reactor)
        self.log.info("workers_started", workers=self.count,
                      pids=[worker.pid for worker in self.workers.values()],
                      **{key.split(".")[0]: logs.format_address(port.getHost())
                         for key, port in self.listeners.items()})

    def start_worker(self, index: int) -> None:
        self._restart_calls.pop(index, None)
        worker = WorkerProcess(self, index)
        env = dict(os.environ)
        env[WORKER_ENV] = attrs.evolve(self.spec(index), moved=self.budget.ledger(index)).to_env()
        # The worker imports this very pyproxy, wherever it was imported from.
        source = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (source, env.get("PYTHONPATH"))))
        self.spawn(worker, sys.executable, [sys.executable, "-m", "pyproxy.workers"], env=env,
                   childFDs={0: "w", 1: 1, 2: 2, TO_PARENT_FD: "r", FROM_PARENT_FD: "w"})
        self.workers[index] = worker

    def exited(self, worker: WorkerProcess, reason: BaseException) -> None:
        index = worker.index
        if self.workers.get(index) is worker:
            del self.workers[index]
        if self._stats is not None and index not in self._stats:
            self._stats[index] = {}
        for ticket, asking in list(self._asking.items()):
            if index in asking.asked and index not in asking.answers:
                asking.asked.discard(index)
                if asking.asked <= asking.answers.keys():
                    self._gathered(ticket)
        code = getattr(reason, "exitCode", None)
        killed_by = getattr(reason, "signal", None)
        if self.stopping:
            self.log.info("worker_ended", worker=index, code=code, signal=killed_by)
            if not self.workers and self._all_ended is not None and not self._all_ended.called:
                self._all_ended.callback(None)
            return
        lived = self.reactor.seconds() - worker.started_at
        delay = RESTART_FIRST if lived >= STABLE_AFTER else min(
            RESTART_MAX, self.delays.get(index, RESTART_FIRST / 2) * 2)
        self.delays[index] = delay
        self.restarts[index] += 1
        self.log.warning("worker_died", worker=index, code=code, signal=killed_by,
                         clean=isinstance(reason, ProcessDone), lived_seconds=round(lived, 1),
                         restart_in=delay)
        self._restart_calls[index] = self.reactor.callLater(delay, self.start_worker, index)

    def reload(self) -> None:
        """SIGHUP: every worker reloads, and gives every pool its even share again."""
        try:
            self.reload_config()
        except ConfigError:
            pass  # logged; the workers read the same file and say so too
        self.budget.reset()
        self.forward(signal.SIGHUP)

    def reload_config(self) -> Config:
        """Reads the supervisor's copy of the configuration again (before the workers
        reload theirs); returns it.

        Raises:
            ConfigError: it is bad (logged as ``reload_failed``); the running one stays.
        """
        if self.load is None:
            raise ConfigError("pyproxy was started without a configuration to read again")
        try:
            config = self.load()
        except ConfigError as exc:
            self.log.error("reload_failed", error=str(exc))
            raise
        old, self.config = self.config, config
        if old is not None:
            # What the supervisor itself listens with, or how many workers it runs.
            for setting, before, after in (
                    ("proxy.workers", old.proxy.worker_count(), config.proxy.worker_count()),
                    ("metrics.listen", old.metrics.listen, config.metrics.listen),
                    ("admin.listen", (old.admin.listen, old.admin.enabled),
                     (config.admin.listen, config.admin.enabled))):
                if before != after:
                    self.log.warning("reload_needs_restart", setting=setting)
        for watcher in self.reload_watchers:
            watcher(old, config)
        return config

    def forward(self, signum: int) -> None:
        """SIGHUP and SIGUSR2 mean the same to every worker."""
        self.log.info("signal_forwarded", signal=signal.Signals(signum).name, workers=len(self.workers))
        for worker in self.workers.values():
            worker.signal(signum)

    def stopService(self) -> defer.Deferred[None]:
        """Every worker drains (its own drain_timeout) and ends; one that has not
        ended shortly after that is killed."""
        super().stopService()
        self.stopping = True
        for port in self.listeners.values():
            port.stopListening()
        for call in self._restart_calls.values():
            if call.active():
                call.cancel()
        self._restart_calls.clear()
        self._all_ended = defer.Deferred()
        if not self.workers:
            self._all_ended.callback(None)
            return self._all_ended
        for worker in self.workers.values():
            if worker not in self._told:
                worker.signal(signal.SIGTERM)

        def kill_stragglers() -> None:
            for worker in list(self.workers.values()):
                self.log.warning("worker_killed", worker=worker.index, reason="did not end after drain")
                worker.signal(signal.SIGKILL)

        timer = self.reactor.callLater(self.drain_timeout + 10, kill_stragglers)
        self._all_ended.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        return self._all_ended

    def shut_down(self, graceful: bool) -> None:
        """The admin console's SHUTDOWN: every worker stops, at once (its clients are
        closed) or as on SIGTERM (open transactions get drain_timeout), and the
        supervisor ends once they all have, as on SIGTERM."""
        self.log.info("shutdown_requested", graceful=graceful, workers=len(self.workers))
        for worker in self.workers.values():
            worker.send({"op": "shutdown", "graceful": graceful})
            self._told.add(worker)
        self.reactor.stop()

    # -- figures ------------------------------------------------------------------------

    def collect_stats(self) -> None:
        """SIGUSR1: every worker's figures, summed."""
        if self._stats is not None or not self.workers:
            return
        self._stats = {}
        for worker in self.workers.values():
            worker.send({"op": "stats"})
        self._stats_timer = self.reactor.callLater(STATS_TIMEOUT, self._log_stats)

    def received(self, index: int, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "want":
            self.budget.want(index, (str(message["user"]), str(message["target"])))
        elif op == "reclaimed":
            self.budget.reclaimed(index, int(message["ticket"]), bool(message.get("ok")))
        elif op == "kill":
            self._route_kill(index, message)
        elif op == "killed":
            origin = self.workers.get(int(message.get("origin", -1)))
            if origin is not None:
                origin.send({"op": "killed", "ticket": message.get("ticket"), "error": message.get("error")})
        elif op in ANSWERS:
            ticket = message.get("ticket")
            asking = self._asking.get(ticket) if isinstance(ticket, int) else None
            if asking is not None and index in asking.asked:
                asking.answers[index] = message
                if asking.asked <= asking.answers.keys():
                    self._gathered(ticket)  # type: ignore[arg-type]
        elif op == "stats" and self._stats is not None:
            self._stats[index] = message.get("stats") or {}
            if len(self._stats) >= self.count or all(i in self._stats for i in self.workers):
                self._log_stats()

    def _route_kill(self, index: int, message: dict[str, Any]) -> None:
        """KILL of a client id another worker gave (ids are i+1, i+1+n, ...): the
        worker that has it runs it and its answer goes back to the asker."""
        number = int(message.get("id", 0))
        holder = owner(number, self.count)
        worker = self.workers.get(holder) if holder is not None else None
        if worker is None:
            asker = self.workers.get(index)
            if asker is not None:
                asker.send({"op": "killed", "ticket": message.get("ticket"),
                            "error": [[1094, "HY000"], f"Unknown thread id: {number}"]})
            return
        worker.send({**message, "origin": index})

    def ask(self, message: dict[str, Any], timeout: float,
            only: Iterable[int] | None = None) -> defer.Deferred[Gathered]:
        """Sends ``message`` with a ticket to every running worker (or those of
        ``only``) and gathers their answers: once all have answered, or ended, or
        after ``timeout`` seconds with those that did."""
        ticket = next(self._tickets)
        asked = set(self.workers) if only is None else {i for i in only if i in self.workers}
        timer = self.reactor.callLater(timeout, self._gathered, ticket)
        asking = self._asking[ticket] = _Asking(asked, {}, defer.Deferred(), timer)
        for index in sorted(asked):
            self.workers[index].send({**message, "ticket": ticket})
        if not asked:
            self._gathered(ticket)
        return asking.done

    def _gathered(self, ticket: int) -> None:
        asking = self._asking.pop(ticket, None)
        if asking is None:
            return
        if asking.timer.active():
            asking.timer.cancel()
        asking.done.callback(Gathered(frozenset(asking.asked), dict(asking.answers)))

    def scrape(self, timeout: float) -> defer.Deferred[list[str]]:
        """Every worker's metrics page (pyproxy.worker_metrics), those that answer
        within ``timeout`` seconds."""
        return self.ask({"op": "metrics"}, timeout).addCallback(
            lambda gathered: [str(answer.get("text", "")) for answer in gathered.answers.values()])

    def _log_stats(self) -> None:
        if self._stats is None:
            return
        if self._stats_timer is not None and self._stats_timer.active():
            self._stats_timer.cancel()
        gathered, self._stats = self._stats, None
        answered = [stats for stats in gathered.values() if stats]
        summed = sum_stats(answered)
        common = {"workers": self.count, "answered": len(answered),
                  "restarts": sum(self.restarts.values()), "budget_moves": self.budget.moves}
        for target in summed["targets"]:
            self.log.info("target_stats", **target, **common)
        for pool in summed["pools"]:
            self.log.info("pool_stats", **pool, **common)
        self.log.info("client_stats", **summed["clients"], **common)
        self.log.info("pin_summary", **summed["pins"], **common)


def sum_stats(per_worker: list[dict[str, Any]]) -> dict[str, Any]:
    """Adds up what each worker reported (ProxyService.stats): pools by (pool, target),
    counts summed and the wait percentiles' largest; clients and pins summed; targets as the
    first worker sees them (each worker probes on its own)."""
    pools: dict[tuple[Any, Any], dict[str, Any]] = {}
    clients: dict[str, Any] = {"accepted": 0, "logins": 0, "open": 0, "closed": collections.Counter()}
    pins: dict[str, Any] = {"pins": collections.Counter(), "clients": 0, "resets": 0}
    for stats in per_worker:
        for pool in stats.get("pools", []):
            key = (pool.get("pool"), pool.get("target"))
            total = pools.setdefault(key, {})
            for name, value in pool.items():
                if name in ("pool", "target"):
                    total[name] = value
                elif isinstance(value, bool):
                    total[name] = total.get(name, False) or value
                elif not isinstance(value, (int, float)):
                    total.setdefault(name, value)
                elif name in NOT_SUMMED:
                    total[name] = max(total.get(name, value), value)
                else:
                    total[name] = total.get(name, 0) + value
        worker_clients = stats.get("clients", {})
        for name in ("accepted", "logins", "open"):
            clients[name] += worker_clients.get(name, 0)
        clients["closed"].update(worker_clients.get("closed", {}))
        worker_pins = stats.get("pins", {})
        pins["pins"].update(worker_pins.get("pins", {}))
        pins["clients"] += worker_pins.get("clients", 0)
        pins["resets"] += worker_pins.get("resets", 0)
    clients["closed"] = dict(clients["closed"])
    pins["pins"] = dict(pins["pins"])
    targets = per_worker[0].get("targets", []) if per_worker else []
    return {"pools": list(pools.values()), "clients": clients, "pins": pins, "targets": targets}


# -- a worker --------------------------------------------------------------------------------


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its supervisor dies, so no worker is left serving
    behind a dead supervisor (which would never restart it or forward a reload)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main() -> int:
    """``python -m pyproxy.workers``, started by the supervisor with WORKER_ENV set."""
    text = os.environ.pop(WORKER_ENV, None)
    if text is None:
        sys.stderr.write("pyproxy.workers: started by pyproxy's supervisor only "
                         "([proxy] workers)\n")
        return 2
    die_with_parent()
    spec = WorkerSpec.from_env(text)
    parent = os.getppid()

    import structlog  # noqa: PLC0415
    from twisted.internet import reactor, threads  # noqa: PLC0415
    from twisted.internet.stdio import StandardIO  # noqa: PLC0415

    from pyproxy import config as configuration  # noqa: PLC0415
    from pyproxy.proxy import ServerInfo  # noqa: PLC0415
    from pyproxy.tap import ProxyService, StartupError, configure_logs, default_server  # noqa: PLC0415

    def load() -> configuration.Config:
        return configuration.load(spec.config, os.environ, spec.overrides)

    try:
        config = load()
    except configuration.ConfigError as exc:
        sys.stderr.write(f"pyproxy worker {spec.index}: {exc}\n")
        return 2
    configure_logs(config)
    structlog.contextvars.bind_contextvars(worker=spec.index)
    server = ServerInfo(*spec.server) if spec.server is not None else default_server(config)
    proxy_service = ProxyService(config, server, reactor, reload=load, worker=(spec.index, spec.count))
    from pyproxy.budget import WorkerBudget  # noqa: PLC0415

    budget = WorkerBudget(proxy_service.proxy, lambda message: link.send(message),
                          {(user, target): units for user, target, units in spec.moved})
    if proxy_service.proxy.budget is None:
        # Without [budget] redis, the workers share the budget through their supervisor.
        proxy_service.proxy.budget = budget
    try:
        proxy_service.listen()
    except StartupError as exc:
        sys.stderr.write(f"pyproxy worker {spec.index}: {exc}\n")
        return 2

    registry: list[Any] = []

    def page() -> str:
        from prometheus_client import generate_latest  # noqa: PLC0415

        return generate_latest(registry[0]).decode()

    from pyproxy.admin import AdminConsole  # noqa: PLC0415
    from pyproxy.worker_admin import carry_out  # noqa: PLC0415

    # This worker's part of the supervisor's admin console (no listener of its own).
    console = AdminConsole(proxy_service)
    kills: dict[int, defer.Deferred[Any]] = {}
    tickets = itertools.count(1)

    def remote_kill(number: int, user: str, query: bool) -> defer.Deferred[Any]:
        ticket = next(tickets)
        d: defer.Deferred[Any] = defer.Deferred()
        kills[ticket] = d
        link.send({"op": "kill", "ticket": ticket, "id": number, "user": user, "query": query})

        def unanswered() -> None:
            pending = kills.pop(ticket, None)
            if pending is not None:
                pending.callback(((1094, "HY000"), f"Unknown thread id: {number}"))

        reactor.callLater(KILL_TIMEOUT, unanswered)
        return d

    proxy_service.proxy.remote_kill = remote_kill

    def from_parent(message: dict[str, Any]) -> None:
        if budget.received(message):
            return
        op = message.get("op")
        if op == "kill":
            from pyproxy.kill import kill_client  # noqa: PLC0415

            kill_client(proxy_service.proxy, int(message["id"]), str(message["user"]),
                        bool(message.get("query"))).addCallback(lambda error: link.send(
                            {"op": "killed", "ticket": message.get("ticket"),
                             "origin": message.get("origin"), "error": error}))
            return
        if op == "killed":
            pending = kills.pop(int(message.get("ticket", 0)), None)
            if pending is not None:
                error = message.get("error")
                pending.callback(None if not error else ((int(error[0][0]), str(error[0][1])), str(error[1])))
            return
        if op == "admin":
            answer, then = carry_out(console, message)
            link.send({"op": "admin", "ticket": message.get("ticket"), **answer})
            if then is not None:
                reactor.callLater(0, then)
            return
        if op == "shutdown":
            proxy_service.shut_down(bool(message.get("graceful")))
            return
        if op == "metrics":
            if not registry:
                from pyproxy import metrics  # noqa: PLC0415

                registry.append(metrics.registry(proxy_service.proxy, proxy_service.health, reactor))
            # Collecting waits on the reactor (pyproxy.metrics.on_reactor): off its thread.
            threads.deferToThread(page).addCallbacks(
                lambda text: link.send({"op": "metrics", "ticket": message.get("ticket"), "text": text}),
                lambda failure: link.send({"op": "metrics", "ticket": message.get("ticket"), "text": ""}))
            return
        if op == "stats":
            link.send({"op": "stats", "stats": proxy_service.stats()})

    link = JsonLines(from_parent)
    StandardIO(link, stdin=FROM_PARENT_FD, stdout=TO_PARENT_FD, reactor=reactor)

    def orphaned() -> None:
        if os.getppid() != parent:
            reactor.stop()
        else:
            reactor.callLater(1.0, orphaned)

    reactor.callWhenRunning(proxy_service.startService)
    reactor.callWhenRunning(orphaned)
    reactor.addSystemEventTrigger("before", "shutdown", proxy_service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
