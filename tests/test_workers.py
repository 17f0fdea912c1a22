"""pyproxy.workers, pyproxy.reuseport and the worker budget: supervisor lives and signals with a
fake spawner and Clock, summed figures, SO_REUSEPORT endpoint parsing, and the shares."""

from __future__ import annotations

import signal
import socket
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock

from pyproxy import config as configuration
from pyproxy import reuseport
from pyproxy.budget import RETRY, WorkerBudget
from pyproxy.pool import Pool
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.workers import (RESTART_FIRST, RESTART_MAX, BudgetBroker, Supervisor, WorkerSpec,
                             sum_stats)
from tests.test_pool import FakeConnection, FakeConnector


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []
        self.written: list[bytes] = []

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append(data)


class Spawner:
    def __init__(self) -> None:
        self.spawned: list[tuple[Any, dict[str, str]]] = []

    def __call__(self, proto: Any, executable: str, args: list[str], env: dict[str, str],
                 childFDs: dict[int, Any]) -> None:
        assert args[1:] == ["-m", "pyproxy.workers"] and childFDs[3] == "r" and childFDs[4] == "w"
        proto.makeConnection(FakeTransport(1000 + len(self.spawned)))
        self.spawned.append((proto, env))


def supervisor(count: int = 2) -> tuple[Supervisor, Spawner, Clock]:
    spawner, clock = Spawner(), Clock()
    sup = Supervisor(count, lambda i: WorkerSpec(i, count, "/etc/p.toml", {}, None), clock,
                     drain_timeout=30, spawn=spawner)
    for index in range(count):
        sup.start_worker(index)
    return sup, spawner, clock


def test_worker_spec_travels_in_the_environment() -> None:
    spec = WorkerSpec(1, 4, "/etc/p.toml", {"pool": {"max_connections": 8}},
                      ("5.5.5-10.11", 0xFFFF, 45, 2))
    assert WorkerSpec.from_env(spec.to_env()) == spec
    sup, spawner, _ = supervisor()
    assert [WorkerSpec.from_env(env["PYPROXY_WORKER"]).index for _, env in spawner.spawned] == [0, 1]


def test_a_dead_worker_is_restarted_with_backoff() -> None:
    sup, spawner, clock = supervisor()
    clock.advance(60)
    first = sup.workers[1]
    first.processEnded(_ended(ProcessTerminated(signal=signal.SIGKILL)))
    assert 1 not in sup.workers and sup.restarts[1] == 1
    clock.advance(RESTART_FIRST)
    assert sup.workers[1] is not first and len(spawner.spawned) == 3
    # Dying again at once: the delay doubles, up to RESTART_MAX.
    delays = []
    for _ in range(8):
        worker = sup.workers[1]
        worker.processEnded(_ended(ProcessTerminated(exitCode=1)))
        delays.append(sup.delays[1])
        clock.advance(sup.delays[1])
    assert delays[0] == 2 * RESTART_FIRST and delays == sorted(delays) and delays[-1] == RESTART_MAX
    assert sup.workers[0] is spawner.spawned[0][0]  # the other never noticed


def test_signals_are_forwarded_and_sigterm_waits_for_every_worker() -> None:
    sup, spawner, clock = supervisor()
    sup.forward(signal.SIGHUP)
    assert [p.transport.signals for p, _ in spawner.spawned] == [[signal.SIGHUP]] * 2
    done = sup.stopService()
    assert [p.transport.signals[-1] for p, _ in spawner.spawned] == [signal.SIGTERM] * 2
    spawner.spawned[0][0].processEnded(_ended(ProcessDone(0)))
    assert not done.called and 0 not in sup.workers
    clock.advance(RESTART_MAX * 2)
    assert len(spawner.spawned) == 2  # no restart while stopping
    clock.advance(30 + 10)            # drain_timeout + 10: the straggler is killed
    assert spawner.spawned[1][0].transport.signals[-1] == signal.SIGKILL
    spawner.spawned[1][0].processEnded(_ended(ProcessTerminated(signal=signal.SIGKILL)))
    assert done.called


def test_stats_are_asked_for_and_summed() -> None:
    sup, spawner, clock = supervisor()
    logged: list[tuple[str, dict[str, Any]]] = []
    sup.log = _Recorder(logged)  # type: ignore[assignment]
    sup.collect_stats()
    assert all(p.transport.written == [b'{"op": "stats"}\n'] for p, _ in spawner.spawned)
    pool = {"pool": "app", "target": "db:3306", "max_size": 2, "idle": 1, "borrows": 10,
            "paused": False, "borrow_wait_p99_ms": 1.5}
    spawner.spawned[0][0].childDataReceived(3, b'{"op": "stats", "stats": {"pools": [%s], '
                                            b'"clients": {"accepted": 3, "logins": 3, "open": 1, '
                                            b'"closed": {"COM_QUIT": 2}}}}\n'
                                            % _json(pool).encode())
    assert not logged
    spawner.spawned[1][0].childDataReceived(3, b'{"op": "stats", "stats": {"pools": [%s], '
                                            b'"clients": {"accepted": 4, "logins": 2, "open": 2, '
                                            b'"closed": {"COM_QUIT": 1}}}}\n'
                                            % _json({**pool, "borrows": 5, "borrow_wait_p99_ms": 3.0}).encode())
    events = dict(logged)
    assert events["pool_stats"]["max_size"] == 4 and events["pool_stats"]["borrows"] == 15
    assert events["pool_stats"]["borrow_wait_p99_ms"] == 3.0
    assert events["client_stats"]["accepted"] == 7 and events["client_stats"]["closed"] == {"COM_QUIT": 3}
    assert events["client_stats"]["answered"] == 2 and events["client_stats"]["workers"] == 2


def test_stats_from_a_silent_worker_are_left_out_after_the_timeout() -> None:
    sup, spawner, clock = supervisor()
    logged: list[tuple[str, dict[str, Any]]] = []
    sup.log = _Recorder(logged)  # type: ignore[assignment]
    sup.collect_stats()
    spawner.spawned[0][0].childDataReceived(3, b'{"op": "stats", "stats": {"clients": {"open": 5}}}\n')
    clock.advance(5)
    assert dict(logged)["client_stats"]["open"] == 5 and dict(logged)["client_stats"]["answered"] == 1


def test_sum_stats_of_nothing() -> None:
    assert sum_stats([]) == {"pools": [], "targets": [], "pins": {"pins": {}, "clients": 0, "resets": 0},
                             "clients": {"accepted": 0, "logins": 0, "open": 0, "closed": {}}}


@pytest.mark.parametrize(("text", "family", "interface", "port", "backlog"), [
    ("tcp:3306", socket.AF_INET, "", 3306, 50),
    ("tcp:port=3306:interface=127.0.0.1:backlog=9", socket.AF_INET, "127.0.0.1", 3306, 9),
    ("tcp6:3306:interface=\\:\\:1", socket.AF_INET6, "::1", 3306, 50),
    ("tcp6:3306", socket.AF_INET6, "::", 3306, 50),
])
def test_reuseport_endpoints(text: str, family: int, interface: str, port: int, backlog: int) -> None:
    assert reuseport.parse_tcp(text) == reuseport.TcpListen(family, interface, port, backlog)


@pytest.mark.parametrize(("text", "why"), [
    ("tcp:0", "fixed port"), ("unix:/tmp/s", "tcp: or tcp6:"), ("tcp:3306:reuse=1", "only port"),
    ("ssl:3306", "tcp: or tcp6:"), ("tcp:3306:backlog=x", "backlog"), ("tcp:70000", "fixed port"),
])
def test_reuseport_refuses(text: str, why: str) -> None:
    with pytest.raises(reuseport.ReusePortError, match=why):
        reuseport.parse_tcp(text)


def test_two_workers_bind_one_port_and_a_plain_listener_stops_them() -> None:
    first = reuseport.bind(reuseport.TcpListen(socket.AF_INET, "127.0.0.1", 0, 5))
    port = first.getsockname()[1]
    try:
        second = reuseport.bind(reuseport.TcpListen(socket.AF_INET, "127.0.0.1", port, 5))
        second.close()
    finally:
        first.close()
    plain = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError):
            reuseport.bind(reuseport.TcpListen(socket.AF_INET, "127.0.0.1", plain.getsockname()[1], 5))
    finally:
        plain.close()


@pytest.mark.parametrize(("budget", "count"), [(20, 2), (21, 2), (7, 3), (3, 3), (100, 7)])
def test_worker_shares_add_up_to_the_budget(budget: int, count: int) -> None:
    config = configuration.load(None, {"PYPROXY_USERS": "app:pw"})
    server = ServerInfo("5.5.5", 0, 45, 2)
    shares = [Proxy(config, Clock(), server, worker=(i, count)).worker_share(budget)
              for i in range(count)]
    assert sum(shares) == budget and max(shares) - min(shares) <= 1


def test_client_ids_are_unique_across_workers() -> None:
    config = configuration.load(None, {"PYPROXY_USERS": "app:pw"})
    server = ServerInfo("5.5.5", 0, 45, 2)
    ids = [[next(Proxy(config, Clock(), server, worker=(i, 3)).client_ids) for _ in range(1)]
           for i in range(3)]
    proxies = [Proxy(config, Clock(), server, worker=(i, 3)) for i in range(3)]
    seen = [next(p.client_ids) for _ in range(5) for p in proxies]
    assert ids == [[1], [2], [3]] and sorted(seen) == list(range(1, 16))


@pytest.mark.parametrize(("env", "why"), [
    ({"PYPROXY_PROXY_WORKERS": "2", "PYPROXY_PROXY_LISTEN": "tcp:0"}, "needs a fixed port"),
    ({"PYPROXY_PROXY_WORKERS": "2", "PYPROXY_PROXY_LISTEN": "unix:/tmp/x"}, "tcp: or tcp6:"),
    ({"PYPROXY_PROXY_WORKERS": "4", "PYPROXY_POOL_MAX_CONNECTIONS": "3"}, "cannot be shared by 4"),
    ({"PYPROXY_PROXY_WORKERS": "0"}, "from 1 to 256"),
    ({"PYPROXY_PROXY_WORKERS": "many"}, "from 1 to 256"),
])
def test_worker_settings_that_cannot_work(env: dict[str, str], why: str) -> None:
    with pytest.raises(configuration.ConfigError, match=why):
        configuration.load(None, {"PYPROXY_USERS": "app:pw", **env})


def test_auto_is_one_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    config = configuration.load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_PROXY_WORKERS": "auto",
                                       "PYPROXY_POOL_MAX_CONNECTIONS": "12"})
    assert config.proxy.worker_count() == 6


class _Recorder:
    def __init__(self, into: list[tuple[str, dict[str, Any]]]) -> None:
        self.into = into

    def info(self, event: str, **fields: Any) -> None:
        self.into.append((event, fields))

    warning = info


def _ended(value: BaseException) -> Any:
    from twisted.python.failure import Failure
    return Failure(value)


def _json(value: Any) -> str:
    import json
    return json.dumps(value)


# -- the budget moving between workers -------------------------------------------------------



class ClosingConnection(FakeConnection):
    """Closed by the pool, still counted until the server closes it too (lose())."""

    def close(self, reason: str) -> bool:  # type: ignore[override]
        super().close(reason)
        return True


def _pool_with(clock: Clock, idle: int, max_size: int) -> tuple[Pool, list[Any]]:
    connector = FakeConnector(clock)
    pool = Pool("app", connector, clock, max_size=max_size, borrow_timeout=30)
    conns = []
    for _ in range(idle):
        conn = ClosingConnection(0, clock)
        conn.on_lost = pool._lost
        pool.idle.append(conn)
        conns.append(conn)
    return pool, conns


def test_give_up_one_takes_a_spare_unit_at_once() -> None:
    pool, _ = _pool_with(Clock(), idle=1, max_size=3)
    answers: list[bool] = []
    pool.give_up_one(answers.append)
    assert answers == [True] and pool.max_size == 2 and len(pool.idle) == 1


def test_give_up_one_closes_an_idle_connection_and_answers_once_the_server_closed_it() -> None:
    pool, (conn,) = _pool_with(Clock(), idle=1, max_size=1)
    answers: list[bool] = []
    pool.give_up_one(answers.append)
    assert answers == [] and pool.max_size == 0 and conn.closed == "budget lent to another worker"
    assert pool.size() == 1  # still counted: the server has not let it go
    conn.lose()
    assert answers == [True] and pool.size() == 0


def test_give_up_one_refuses_when_every_unit_is_in_use_or_wanted() -> None:
    clock = Clock()
    pool, _ = _pool_with(clock, idle=0, max_size=1)
    pool.lent.add(FakeConnection(0, clock))
    answers: list[bool] = []
    pool.give_up_one(answers.append)
    assert answers == [False] and pool.max_size == 1


class _Worker:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


class _Sup:
    def __init__(self, count: int) -> None:
        self.workers = {i: _Worker() for i in range(count)}
        self.reactor = Clock()


def test_broker_asks_the_others_in_turn_and_keeps_the_ledger() -> None:
    sup = _Sup(3)
    broker = BudgetBroker(sup)  # type: ignore[arg-type]
    broker.want(1, ("app", "db"))
    assert sup.workers[2].sent == [{"op": "reclaim", "user": "app", "target": "db", "ticket": 1}]
    broker.reclaimed(2, 1, False)
    assert sup.workers[0].sent[-1]["op"] == "reclaim"
    broker.reclaimed(0, 1, True)
    assert sup.workers[1].sent == [{"op": "grant", "user": "app", "target": "db", "ok": True}]
    assert broker.ledger(1) == (("app", "db", 1),) and broker.ledger(0) == (("app", "db", -1),)
    assert broker.ledger(2) == () and broker.moves == 1
    # Nobody can give: the asker is told so.
    broker.want(0, ("app", "db"))
    broker.reclaimed(1, 2, False)
    broker.reclaimed(2, 2, False)
    assert sup.workers[0].sent[-1] == {"op": "grant", "user": "app", "target": "db", "ok": False}


def test_broker_gives_up_on_a_silent_worker() -> None:
    sup = _Sup(2)
    broker = BudgetBroker(sup)  # type: ignore[arg-type]
    broker.want(0, ("app", "db"))
    sup.reactor.advance(BudgetBroker.RECLAIM_TIMEOUT)
    assert sup.workers[0].sent[-1]["ok"] is False
    broker.reclaimed(1, 1, True)  # too late for that answer: the unit goes to the asker now
    assert sup.workers[0].sent[-1] == {"op": "grant", "user": "app", "target": "db", "ok": True}
    assert broker.ledger(0) == (("app", "db", 1),) and broker.ledger(1) == (("app", "db", -1),)
    broker.reclaimed(1, 1, True)  # answered once only: nothing granted twice
    assert [m["ok"] for m in sup.workers[0].sent] == [False, True]


def test_broker_forgets_a_late_refusal() -> None:
    sup = _Sup(2)
    broker = BudgetBroker(sup)  # type: ignore[arg-type]
    broker.want(0, ("app", "db"))
    sup.reactor.advance(BudgetBroker.RECLAIM_TIMEOUT)
    broker.reclaimed(1, 1, False)
    assert [m["ok"] for m in sup.workers[0].sent] == [False] and broker.ledger(0) == ()
    assert broker._late == {}


class GrowRecorder:
    """A pool as WorkerBudget sees it, noting the max_size at each grow() instead of
    growing (the compiled build's Pool is a native class: its methods cannot be
    replaced on an instance)."""

    def __init__(self, pool: Any) -> None:
        object.__setattr__(self, "pool", pool)
        object.__setattr__(self, "grown", [])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.pool, name, value)

    def grow(self) -> None:
        self.grown.append(self.pool.max_size)


def test_worker_budget_asks_once_grows_on_grant_and_retries_after_a_refusal() -> None:
    config = configuration.load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_PROXY_WORKERS": "2",
                                       "PYPROXY_POOL_MAX_CONNECTIONS": "2"})
    clock = Clock()
    sent: list[dict[str, Any]] = []
    proxy = Proxy(config, clock, ServerInfo("5.5.5", 0, 45, 2), worker=(1, 2))
    proxy.budget = WorkerBudget(proxy, sent.append, {("app", proxy.topology.writer.name): 1})
    pool = proxy.pool("app")
    assert pool.max_size == 2 and pool.on_full is not None  # 1 even + 1 moved here before
    key = ("app", proxy.topology.writer.name)
    pool.on_full(pool)
    pool.on_full(pool)
    assert sent == [{"op": "want", "user": "app", "target": key[1]}]
    pool.waiters.append(object())  # type: ignore[arg-type]
    proxy.budget.granted({"op": "grant", "user": "app", "target": key[1], "ok": False})
    pool.on_full(pool)
    assert len(sent) == 1  # not before RETRY
    recorder = GrowRecorder(pool)
    proxy.pools[key] = recorder  # type: ignore[assignment]
    grown = recorder.grown
    clock.advance(RETRY)
    assert grown == [2]
    pool.on_full(pool)
    proxy.budget.granted({"op": "grant", "user": "app", "target": key[1], "ok": True})
    assert pool.max_size == 3 and grown == [2, 3] and proxy.budget.moved[key] == 2
    # Asked to give one: a unit not in use goes at once.
    proxy.budget.reclaim({"op": "reclaim", "user": "app", "target": key[1], "ticket": 7})
    assert sent[-1] == {"op": "reclaimed", "ticket": 7, "ok": True} and pool.max_size == 2
    # A pool not made yet gives from the ledger.
    proxy.budget.reclaim({"op": "reclaim", "user": "other", "target": key[1], "ticket": 8})
    assert sent[-1]["ok"] is True and proxy.budget.moved[("other", key[1])] == -1
    proxy.budget.reclaim({"op": "reclaim", "user": "other", "target": key[1], "ticket": 9})
    assert sent[-1]["ok"] is False


def test_metrics_pages_are_summed_where_they_add_up() -> None:
    from pyproxy import worker_metrics

    page = """# HELP pyproxy_client_connections Client connections open now.
# TYPE pyproxy_client_connections gauge
pyproxy_client_connections %d
# HELP pyproxy_client_commands_total Commands by type.
# TYPE pyproxy_client_commands_total counter
pyproxy_client_commands_total{command="COM_QUERY"} %d
# HELP pyproxy_target_state 1 for the state each server is in.
# TYPE pyproxy_target_state gauge
pyproxy_target_state{state="up",target="db:3306"} 1
# HELP pyproxy_statement_seconds Statement latency through pyproxy.
# TYPE pyproxy_statement_seconds histogram
pyproxy_statement_seconds_bucket{le="0.001"} %d
pyproxy_statement_seconds_bucket{le="+Inf"} %d
pyproxy_statement_seconds_count %d
pyproxy_statement_seconds_sum 0.5
# HELP pyproxy_process_start_time_seconds Start time.
# TYPE pyproxy_process_start_time_seconds gauge
pyproxy_process_start_time_seconds %d
# HELP pyproxy_failovers_total Times another server took over writes.
# TYPE pyproxy_failovers_total counter
pyproxy_failovers_total 1
"""
    text = worker_metrics.render([page % (3, 10, 4, 5, 5, 100), page % (2, 7, 1, 2, 2, 90)], 2).decode()
    lines = set(text.splitlines())
    assert "pyproxy_client_connections 5.0" in lines
    assert 'pyproxy_client_commands_total{command="COM_QUERY"} 17.0' in lines
    assert 'pyproxy_target_state{state="up",target="db:3306"} 1.0' in lines
    assert 'pyproxy_statement_seconds_bucket{le="0.001"} 5.0' in lines
    assert "pyproxy_statement_seconds_count 7.0" in lines and "pyproxy_statement_seconds_sum 1.0" in lines
    assert "pyproxy_process_start_time_seconds 90.0" in lines
    assert "pyproxy_failovers_total 1.0" in lines  # one failover, seen by both workers
    assert "pyproxy_workers 2.0" in lines and "pyproxy_workers_answered 2.0" in lines


def test_ask_gathers_the_workers_asked_and_leaves_out_the_others() -> None:
    """``only`` asks some workers; one that ends is not waited for; an answer to another
    ticket, or from a worker not asked, is not taken."""
    sup, spawner, clock = supervisor(3)
    gathered: list[Any] = []
    sup.ask({"op": "admin", "command": "kill client"}, 5.0, only=[2, 7]).addCallback(gathered.append)
    assert [len(p.transport.written) for p, _ in spawner.spawned] == [0, 0, 1]
    spawner.spawned[1][0].childDataReceived(3, b'{"op": "admin", "ticket": 1, "info": "not asked"}\n')
    spawner.spawned[2][0].childDataReceived(3, b'{"op": "admin", "ticket": 9, "info": "other"}\n')
    assert gathered == []
    spawner.spawned[2][0].childDataReceived(3, b'{"op": "admin", "ticket": 1, "info": "done"}\n')
    assert gathered[0].asked == {2} and gathered[0].answers[2]["info"] == "done"
    sup.ask({"op": "admin"}, 5.0).addCallback(gathered.append)
    spawner.spawned[0][0].childDataReceived(3, b'{"op": "admin", "ticket": 2, "rows": []}\n')
    spawner.spawned[1][0].processEnded(_ended(ProcessTerminated(exitCode=1)))
    assert len(gathered) == 1
    spawner.spawned[2][0].processEnded(_ended(ProcessTerminated(exitCode=1)))
    assert gathered[1].asked == {0} and list(gathered[1].answers) == [0]
    assert all(call.func != sup._gathered for call in clock.getDelayedCalls())  # timers cancelled
    sup.ask({"op": "admin"}, 5.0, only=[1]).addCallback(gathered.append)
    assert gathered[2].asked == frozenset() and gathered[2].answers == {}


def test_a_scrape_waits_for_every_worker_or_the_timeout() -> None:
    sup, spawner, clock = supervisor()
    pages: list[list[str]] = []
    sup.scrape(5.0).addCallback(pages.append)
    assert [p.transport.written for p, _ in spawner.spawned] == [[b'{"op": "metrics", "ticket": 1}\n']] * 2
    spawner.spawned[1][0].childDataReceived(3, b'{"op": "metrics", "ticket": 1, "text": "b"}\n')
    assert pages == []
    spawner.spawned[0][0].childDataReceived(3, b'{"op": "metrics", "ticket": 1, "text": "a"}\n')
    assert sorted(pages[0]) == ["a", "b"]
    sup.scrape(5.0).addCallback(pages.append)
    clock.advance(5.0)
    assert pages[1] == []
