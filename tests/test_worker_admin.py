"""pyproxy.worker_admin: the supervisor's console, logged in as a client would, over a fake
spawner and a Clock.  Its workers are real AdminConsoles over bench/hotpath.py's proxy (one
client and one backend connection each), answering through ``carry_out`` as worker_main does,
so what the console shows is what each worker's own state says."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import vectors
from twisted.internet.task import Clock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.hotpath import SELECT_REPLY, build_setup  # noqa: E402
from pyproxy.admin import CLIENT_COLUMNS, POOL_COLUMNS, SERVER_COLUMNS, AdminConsole  # noqa: E402
from pyproxy.config import Config, ConfigError, build  # noqa: E402
from pyproxy.proxy import ServerInfo  # noqa: E402
from pyproxy.tap import ProxyService  # noqa: E402
from pyproxy.wire.buffer import Reader  # noqa: E402
from pyproxy.wire.commands import make_query  # noqa: E402
from pyproxy.wire.framing import PacketFramer, frame  # noqa: E402
from pyproxy.worker_admin import ADMIN_TIMEOUT, WorkersConsole, carry_out  # noqa: E402
from pyproxy.workers import Supervisor, WorkerSpec  # noqa: E402
from tests.test_admin import ADMIN, Console, Reply, decode  # noqa: E402
from tests.test_workers import Spawner  # noqa: E402

GREETING = ServerInfo("10.11.6-MariaDB-pyproxy-test", 0xFFFFFFFF, 45, 2)


class StoppableClock(Clock):
    """A Clock with the reactor's stop(), counted."""

    stops = 0

    def stop(self) -> None:
        self.stops += 1


@attrs.define
class Worker:
    """One worker's side: its proxy's console and its one client."""

    console: AdminConsole
    client: Any
    read: int = 0


def worker(index: int, count: int) -> Worker:
    client, (conn, _, _), query = build_setup(False)
    proxy = client.proxy
    proxy.worker = (index, count)
    # Ids as this worker gives them (i+1, i+1+n, ...).
    del proxy.clients[client.id]
    client.id = index + 1
    proxy.clients[client.id] = client
    service = ProxyService(proxy.config, proxy.server, reactor=proxy.reactor)
    service.proxy = proxy
    # One query, so that the pool has borrowed and given back.
    client.dataReceived(query)
    conn.dataReceived(vectors.PING_OK)
    conn.dataReceived(SELECT_REPLY)
    return Worker(AdminConsole(service), client)


class Pyproxy:
    """A supervisor with ``count`` workers and its console."""

    def __init__(self, count: int = 2, load: Any = None) -> None:
        self.config = build({"users": [{"name": "app", "password": "secret"}], "admin": ADMIN})
        self.spawner, self.clock = Spawner(), StoppableClock()
        self.supervisor = Supervisor(count, lambda i: WorkerSpec(i, count, None, {}, None), self.clock,
                                     drain_timeout=30, spawn=self.spawner, config=self.config, load=load)
        for index in range(count):
            self.supervisor.start_worker(index)
        self.workers = [worker(index, count) for index in range(count)]
        self.console = WorkersConsole(self.supervisor, GREETING)

    def asked(self, index: int) -> list[dict[str, Any]]:
        """What worker ``index`` was sent since last asked."""
        written = self.supervisor.workers[index].transport.written
        ours = self.workers[index]
        new, ours.read = written[ours.read:], len(written)
        return [json.loads(line) for chunk in new for line in chunk.splitlines()]

    def serve(self, *indices: int) -> list[dict[str, Any]]:
        """The running workers (or ``indices``) answer the admin questions they were sent, as
        worker_main does; returns the questions."""
        questions = []
        for index in indices or sorted(self.supervisor.workers):
            for message in self.asked(index):
                if message["op"] != "admin":
                    continue
                questions.append(message)
                answer, then = carry_out(self.workers[index].console, message)
                self.reply(index, {"op": "admin", "ticket": message["ticket"], **answer})
                if then is not None:
                    then()
        return questions

    def reply(self, index: int, message: dict[str, Any]) -> None:
        self.supervisor.workers[index].childDataReceived(3, json.dumps(message).encode() + b"\n")

    def login(self) -> Console:
        admin = Console(None, self.console)  # type: ignore[arg-type]
        assert admin.login.kind == "ok"
        return admin


def ask(admin: Console, sql: str) -> None:
    admin.transport.clear()
    admin.protocol.dataReceived(frame(make_query(sql), 0))


def reply(admin: Console) -> Reply:
    data = admin.transport.value()
    assert data, "no answer yet"
    admin.transport.clear()
    return decode(data, admin.deprecate_eof)


def warning_count(data: bytes) -> int:
    """The warnings field of the packet that ends an answer (an OK, an EOF or a 0xFE OK)."""
    last = PacketFramer().feed(data)[-1].payload
    if last[0] == 0xFE and len(last) == 5:
        return last[1] | last[2] << 8
    r = Reader(last, 1)
    r.lenenc_int()
    r.lenenc_int()
    r.u16()
    return r.u16()


@pytest.fixture
def pyproxy() -> Pyproxy:
    return Pyproxy()


def test_the_console_greets_and_logs_in_with_the_supervisors_own_account(pyproxy: Pyproxy) -> None:
    admin = pyproxy.login()
    assert admin.greeting.server_version == GREETING.version
    assert Console(None, pyproxy.console, password="nope").login.code == 1045  # type: ignore[arg-type]
    # Chatter and configuration are answered here, without asking the workers.
    ask(admin, "select @@version_comment limit 1")
    assert reply(admin).rows == [["pyproxy admin console"]]
    ask(admin, "SHOW CONFIG")
    config = {row["key"]: row["value"] for row in reply(admin).table()}
    assert config["admin.password"] == "********" and config["users[0].name"] == "app"
    assert pyproxy.serve() == []


def test_connections_are_every_workers_rows_with_a_worker_column(pyproxy: Pyproxy) -> None:
    """SHOW CLIENTS / POOLS / SERVERS: the workers' rows one after the other, the columns
    those of one pyproxy (the worker column is there with one process too)."""
    admin = pyproxy.login()
    for sql, columns in (("SHOW CLIENTS", CLIENT_COLUMNS), ("SHOW POOLS", POOL_COLUMNS),
                         ("SHOW SERVERS", SERVER_COLUMNS)):
        ask(admin, sql)
        assert admin.transport.value() == b""  # waiting for the workers
        questions = pyproxy.serve()
        assert [q["command"] for q in questions] == [sql.lower()] * 2
        answer = reply(admin)
        assert [name for name, _ in answer.columns] == [column.name for column in columns]
        table = answer.table()
        assert [row["worker"] for row in table] == ["0", "1"], sql
    ask(admin, "SHOW CLIENTS")
    pyproxy.serve()
    clients = reply(admin).table()
    assert [(row["id"], row["user"], row["worker"]) for row in clients] == [("1", "app", "0"), ("2", "app", "1")]
    ask(admin, "SHOW POOLS")
    pyproxy.serve()
    pools = reply(admin).table()
    assert all(row["borrows"] == "1" and row["idle"] == "1" for row in pools)


def test_stats_are_summed_over_the_workers(pyproxy: Pyproxy) -> None:
    admin = pyproxy.login()
    ask(admin, "SHOW STATS")
    pyproxy.serve()
    stats = {row["name"]: int(row["value"]) for row in reply(admin).table()}
    assert stats["com_query"] == 2 and stats["commands_relayed"] == 2 and stats["client_connections"] == 2
    assert stats["backend_borrows"] == 2
    proxies = [w.console.proxy for w in pyproxy.workers]
    assert stats["client_received_bytes"] == sum(p.stats.bytes_in for p in proxies)
    assert stats["workers"] == 2 and stats["workers_answered"] == 2
    assert stats["worker_restarts"] == 0 and stats["budget_moves"] == 0


def test_targets_and_version_come_from_one_worker(pyproxy: Pyproxy) -> None:
    admin = pyproxy.login()
    ask(admin, "SHOW TARGETS")
    pyproxy.serve()
    [target] = reply(admin).table()
    assert target["writer"] == "1"
    ask(admin, "SHOW VERSION")
    pyproxy.serve()
    [version] = reply(admin).table()
    assert version["server"] == pyproxy.workers[0].console.proxy.server.version


def test_a_silent_worker_is_a_warning_not_a_wait(pyproxy: Pyproxy) -> None:
    """Worker 1 never answers: after ADMIN_TIMEOUT the console answers with worker 0's
    rows and one warning, which SHOW WARNINGS names; a late answer changes nothing."""
    admin = pyproxy.login()
    ask(admin, "SHOW CLIENTS")
    pyproxy.serve(0)
    pyproxy.clock.advance(ADMIN_TIMEOUT - 0.1)
    assert admin.transport.value() == b""
    pyproxy.clock.advance(0.1)
    data = admin.transport.value()
    assert warning_count(data) == 1
    assert [row["worker"] for row in reply(admin).table()] == ["0"]
    pyproxy.serve(1)  # too late
    assert admin.transport.value() == b""
    ask(admin, "SHOW WARNINGS")
    assert reply(admin).rows == [["Warning", "1105", "worker 1 did not answer within 5s: its part is missing"]]
    # A control too: the OK says there is a warning.
    ask(admin, "PAUSE")
    pyproxy.serve(0)
    pyproxy.clock.advance(ADMIN_TIMEOUT)
    data = admin.transport.value()
    assert warning_count(data) == 1 and reply(admin).info.startswith("paused")


def test_no_answer_at_all_is_an_error(pyproxy: Pyproxy) -> None:
    admin = pyproxy.login()
    ask(admin, "SHOW STATS")
    pyproxy.clock.advance(ADMIN_TIMEOUT)
    answer = reply(admin)
    assert (answer.kind, answer.code) == ("err", 1105) and "no worker answered within 5s" in answer.message
    # A worker that ends while asked is not waited for.
    ask(admin, "SHOW TARGETS")
    pyproxy.serve(0)
    _end(pyproxy.supervisor, 1)
    assert len(reply(admin).table()) == 1


def test_statements_wait_their_turn(pyproxy: Pyproxy) -> None:
    """Two statements in one read: the second is not run before the first is answered,
    and the connection is not read meanwhile."""
    admin = pyproxy.login()
    admin.transport.clear()
    admin.protocol.dataReceived(frame(make_query("SHOW CLIENTS"), 0) + frame(make_query("PAUSE"), 0))
    assert admin.transport.producerState == "paused"
    questions = pyproxy.serve()
    assert [q["command"] for q in questions] == ["show clients", "show clients"]
    # The first answer went out, and only now is PAUSE asked.
    assert decode(admin.transport.value(), True).kind == "rows"
    admin.transport.clear()
    assert [q["command"] for q in pyproxy.serve()] == ["pause", "pause"]
    assert reply(admin).info.startswith("paused") and admin.transport.producerState == "producing"


def test_controls_reach_every_worker(pyproxy: Pyproxy) -> None:
    admin = pyproxy.login()
    proxies = [w.console.proxy for w in pyproxy.workers]
    ask(admin, "PAUSE")
    pyproxy.serve()
    assert reply(admin).info == "paused: new transactions wait; backend connections close as they come free"
    assert all(p.paused for p in proxies)
    ask(admin, "RESUME")
    pyproxy.serve()
    assert reply(admin).info == "resumed" and not any(p.paused for p in proxies)
    proxies[1].pause()
    ask(admin, "PAUSE")
    pyproxy.serve()
    assert reply(admin).info == ("worker 0: paused: new transactions wait; backend connections close as "
                                 "they come free; worker 1: pyproxy was paused already")
    ask(admin, "SET debug_statements_for = 30")
    pyproxy.serve()
    assert reply(admin).info == "statements are logged for 30s"
    assert all(p.statement_log.remaining == 30 for p in proxies)
    # The supervisor's variable says so too (the statement text may not name it: see
    # pyproxy.admin_commands).
    ask(admin, "SHOW VARIABLES LIKE 'debug%'")
    assert reply(admin).rows == [["debug_statements_for", "30"]]
    pyproxy.clock.advance(10)
    ask(admin, "SHOW VARIABLES LIKE 'debug%'")
    assert reply(admin).rows == [["debug_statements_for", "20"]]


def test_kill_client_goes_to_the_worker_that_gave_the_id(pyproxy: Pyproxy) -> None:
    admin = pyproxy.login()
    victim = pyproxy.workers[1].client
    ask(admin, "KILL CLIENT 2")
    assert pyproxy.asked(0) == []
    assert [q["command"] for q in pyproxy.serve(1)] == ["kill client"]
    assert reply(admin).info == "client 2 closed"
    assert victim.transport.disconnecting and not pyproxy.workers[0].client.transport.disconnecting
    # An id of worker 1's that it does not have: its own 1094.
    ask(admin, "KILL CLIENT 4")
    pyproxy.serve()
    answer = reply(admin)
    assert (answer.kind, answer.code, answer.message) == ("err", 1094, "Unknown thread id: 4")
    # Worker 0 silent: an error saying so, after the timeout.
    ask(admin, "KILL CLIENT 1")
    pyproxy.clock.advance(ADMIN_TIMEOUT)
    answer = reply(admin)
    assert answer.code == 1105 and "worker 0, which serves client 1, did not answer" in answer.message
    pyproxy.asked(0)
    # No worker gives 0; a worker being restarted has no clients.
    ask(admin, "KILL CLIENT 0")
    assert reply(admin).code == 1094
    _end(pyproxy.supervisor, 0)
    ask(admin, "KILL CLIENT 3")
    assert reply(admin).code == 1094 and pyproxy.serve() == []


def test_reload_reads_the_supervisors_copy_first_then_every_worker() -> None:
    loads: list[Config] = []
    pyproxy = Pyproxy(load=lambda: loads.pop(0) if loads else _raise(ConfigError("pool.max_connections: bad")))
    admin = pyproxy.login()
    better = attrs.evolve(pyproxy.config, pool=attrs.evolve(pyproxy.config.pool, max_connections=7),
                          admin=attrs.evolve(pyproxy.config.admin, password="new-pw"))
    for w in pyproxy.workers:
        w.console.service._reload = lambda: better
    ask(admin, "RELOAD")
    answer = reply(admin)
    assert (answer.kind, answer.code) == ("err", 1105) and "reload failed" in answer.message
    assert "pool.max_connections: bad" in answer.message and pyproxy.serve() == []
    loads.append(better)
    pyproxy.supervisor.budget.moved[("app", "db")][0] = 1
    ask(admin, "RELOAD")
    assert [q["command"] for q in pyproxy.serve()] == ["reload", "reload"]
    assert reply(admin).info == "reloaded; changed: pool, admin"
    assert pyproxy.supervisor.config is better and not pyproxy.supervisor.budget.moved
    assert all(w.console.proxy.config.pool.max_connections == 7 for w in pyproxy.workers)
    # The new admin password is the one the next login needs.
    assert Console(None, pyproxy.console, password="new-pw").login.kind == "ok"  # type: ignore[arg-type]


def test_shutdown_tells_every_worker_then_stops_the_supervisor(pyproxy: Pyproxy) -> None:
    admin = pyproxy.login()
    ask(admin, "SHUTDOWN")
    assert reply(admin).info == "shutting down" and pyproxy.clock.stops == 0
    pyproxy.clock.advance(0)
    assert pyproxy.clock.stops == 1
    for index in (0, 1):
        assert pyproxy.asked(index) == [{"op": "shutdown", "graceful": False}]
    # Stopping (the reactor's shutdown) sends no SIGTERM on top to workers already told.
    pyproxy.supervisor.stopService()
    assert all(not w.transport.signals for w in pyproxy.supervisor.workers.values())
    graceful = Pyproxy()
    admin = graceful.login()
    ask(admin, "SHUTDOWN GRACEFUL")
    assert reply(admin).info == "shutting down once open transactions end"
    graceful.clock.advance(0)
    assert graceful.asked(1) == [{"op": "shutdown", "graceful": True}]


def test_a_worker_carries_out_only_what_the_console_forwards(pyproxy: Pyproxy) -> None:
    console = pyproxy.workers[0].console
    for command in ("shutdown", "select", "show config", ""):
        answer, then = carry_out(console, {"command": command, "args": []})
        assert answer["error"][0] == 1105 and then is None
    answer, _ = carry_out(console, {"command": "kill client", "args": [99]})
    assert answer == {"error": [1094, "HY000", "Unknown thread id: 99"]}
    answer, _ = carry_out(console, {"command": "show targets", "args": []})
    assert len(answer["rows"]) == 1 and json.loads(json.dumps(answer)) == answer


def _end(supervisor: Supervisor, index: int) -> None:
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    supervisor.workers[index].processEnded(Failure(ProcessTerminated(exitCode=1)))


def _raise(exc: Exception) -> Any:
    raise exc
