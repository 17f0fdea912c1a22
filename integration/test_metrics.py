"""``/metrics`` read over HTTP while clients work, checked against the server's own view
(SHOW PROCESSLIST) and the pool's (SIGUSR1's ``pool_stats``); and the log stream those
runs wrote: one JSON format for pyproxy's events and twistd's, fields, no password.

The load is a few PyMySQL clients through a test pyproxy whose pool is smaller than
the number of clients, so borrowers wait; every loop is bounded by a count and by
the test's alarm (``bounded``), and traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.test_operations import app_threads  # the server's count of the app account
from pyproxy.sandbox import free_port

pytestmark = pytest.mark.usefixtures("bounded")

CLIENTS = 6
POOL = 3
#: Statements per client; enough that scrapes land while they run.
ROUNDS = 150

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_table() -> dict[str, str]:
    return {"listen": f"tcp:{free_port()}:interface=127.0.0.1"}


def scrape(proxy: servers.ProxyProcess) -> Samples:
    """One GET of /metrics, parsed as Prometheus parses it."""
    port = int(proxy.config["metrics"]["listen"].split(":")[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def pool_value(samples: Samples, proxy: servers.ProxyProcess, name: str, **labels: str) -> float:
    return value(samples, name, target=target_of(proxy), user=servers.APP_USER, **labels)


def target_of(proxy: servers.ProxyProcess) -> str:
    backend = proxy.config["backend"]
    return f"{backend['host']}:{backend['port']}"


def backend_gauges(samples: Samples, proxy: servers.ProxyProcess) -> dict[str, float]:
    return {state: pool_value(samples, proxy, "pyproxy_backend_connections", state=state)
            for state in ("idle", "in_use", "checking", "closing", "opening")}


def server_and_metrics_agree(proxy: servers.ProxyProcess, db_server: servers.DbServer,
                             attempts: int = 50) -> tuple[int, dict[str, float]]:
    """SHOW PROCESSLIST's count of the app account and the backend connection gauges,
    read until they describe the same moment (none opening or closing, the same number
    before and after the scrape), at most ``attempts`` times; returns the last reading."""
    for _ in range(attempts):
        before = app_threads(db_server)
        gauges = backend_gauges(scrape(proxy), proxy)
        after = app_threads(db_server)
        settled = gauges["opening"] == 0 and gauges["closing"] == 0 and before == after
        if settled and before == sum(gauges.values()):
            break
        time.sleep(0.05)
    return before, gauges


@pytest.fixture
def loaded_proxy(make_proxy: Any) -> servers.ProxyProcess:
    return make_proxy(metrics=metrics_table(), pool={"max_connections": POOL},
                      session={"routine_refresh": 0})


class Load:
    """CLIENTS PyMySQL clients, each running ROUNDS short transactions and statements."""

    def __init__(self, proxy: servers.ProxyProcess) -> None:
        self.clients = [proxy.connect(read_timeout=30) for _ in range(CLIENTS)]
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self.work, args=(conn,)) for conn in self.clients]

    def work(self, conn: pymysql.connections.Connection) -> None:
        try:
            with conn.cursor() as cur:
                for i in range(ROUNDS):
                    if i % 3 == 0:
                        conn.begin()
                        cur.execute("SELECT SLEEP(0.005)")
                        conn.commit()
                    else:
                        cur.execute("SELECT %s", (i,))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def __exit__(self, *exc_info: object) -> None:
        for thread in self.threads:
            thread.join(timeout=60)
        for conn in self.clients:
            conn.close()


def test_metrics_under_load_agree_with_server_and_pool(loaded_proxy: servers.ProxyProcess,
                                                       db_server: servers.DbServer) -> None:
    proxy = loaded_proxy
    scrapes: list[Samples] = []
    with Load(proxy) as load:
        while load.running() and len(scrapes) < 20:
            samples = scrape(proxy)
            scrapes.append(samples)
            gauges = backend_gauges(samples, proxy)
            assert sum(gauges.values()) <= POOL, gauges
            assert value(samples, "pyproxy_client_connections") == CLIENTS
        # The server's view while the clients still run (or just finished).
        threads, gauges = server_and_metrics_agree(proxy, db_server)
        assert threads == sum(gauges.values()), (threads, gauges)
    assert not load.errors, load.errors
    assert len(scrapes) >= 2, "the load ended before a second scrape"
    borrows = [pool_value(s, proxy, "pyproxy_backend_borrows_total") for s in scrapes]
    assert borrows == sorted(borrows) and borrows[-1] > borrows[0], borrows

    # At rest: the pool's own report (SIGUSR1) and the page say the same.
    deadline = time.monotonic() + 20
    while value(scrape(proxy), "pyproxy_client_connections") and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.process.send_signal(signal.SIGUSR1)
    stats = wait_for_pool_stats(proxy)
    samples = scrape(proxy)
    gauges = backend_gauges(samples, proxy)
    assert (gauges["idle"], gauges["in_use"], gauges["checking"]) == (
        stats["idle"], stats["lent"], stats["checking"]), (gauges, stats)
    for name, key in (("pyproxy_backend_borrows_total", "borrows"),
                      ("pyproxy_backend_borrow_waits_total", "waits"),
                      ("pyproxy_backend_borrow_timeouts_total", "timeouts"),
                      ("pyproxy_backend_connections_opened_total", "opened"),
                      ("pyproxy_backend_connection_open_failures_total", "open_failures")):
        assert pool_value(samples, proxy, name) == stats[key], (name, stats)
    # Every statement borrowed (a transaction once for its three statements).
    assert stats["borrows"] >= CLIENTS * ROUNDS * 2 // 3
    assert stats["waits"] > 0, stats  # more clients than connections
    assert pool_value(samples, proxy, "pyproxy_backend_borrow_wait_seconds_count") == (
        stats["borrows"] + stats["timeouts"])
    assert pool_value(samples, proxy, "pyproxy_backend_connections_max") == POOL
    assert value(samples, "pyproxy_client_connections") == 0
    assert value(samples, "pyproxy_client_logins_total") == CLIENTS
    assert value(samples, "pyproxy_client_connections_closed_total", reason="COM_QUIT") == CLIENTS
    assert value(samples, "pyproxy_client_connection_outcomes_total", outcome="ok") == CLIENTS
    threads, gauges = server_and_metrics_agree(proxy, db_server)
    assert threads == sum(gauges.values()) == gauges["idle"] > 0, (threads, gauges)
    names = {name for name, _ in samples}
    assert not {name for name in names if not name.startswith("pyproxy_")}, names
    assert "pyproxy_process_resident_memory_bytes" in names


def wait_for_pool_stats(proxy: servers.ProxyProcess) -> dict[str, Any]:
    while True:
        for event in reversed(drivers.log_events(proxy, "pool_stats")):
            if event.get("pool") == servers.APP_USER:
                return event
        time.sleep(0.05)


def test_pinned_and_transaction_gauges(loaded_proxy: servers.ProxyProcess) -> None:
    """A session with a user variable counts as pinned (and its reason), one inside a
    transaction as in a transaction, each holding a backend connection."""
    proxy = loaded_proxy
    pinned, busy = proxy.connect(), proxy.connect()
    try:
        with pinned.cursor() as cur:
            cur.execute("SET @kept = 42")
        busy.begin()
        with busy.cursor() as cur:
            cur.execute("SELECT 1")
        samples = scrape(proxy)
        assert value(samples, "pyproxy_sessions_pinned") == 1
        assert value(samples, "pyproxy_sessions_in_transaction") == 1
        assert pool_value(samples, proxy, "pyproxy_backend_connections", state="in_use") == 2
        pins = {dict(labels)["reason"]: count for (name, labels), count in samples.items()
                if name == "pyproxy_session_pins_total"}
        assert pins == {"user variable set": 1}, pins
        busy.commit()
    finally:
        pinned.close()
        busy.close()


def test_failover_shows_in_target_metrics(server_group: servers.ServerGroup,
                                          make_group_proxy: Any) -> None:
    """A failover: the old writer reads read_only, the new one up and writer, and the
    failover is counted once."""
    proxy = make_group_proxy(["writer", "auto"], metrics=metrics_table(),
                             health={"interval": 1, "connect_timeout": 2, "failure_threshold": 2})
    old, new = server_group.address(0), server_group.address(1)
    before = scrape(proxy)
    assert value(before, "pyproxy_target_writer", target=old) == 1
    assert value(before, "pyproxy_failovers_total") == 0
    server_group.fail_over(0, 1)
    while not drivers.log_events(proxy, "writer_changed"):
        time.sleep(0.05)
    after = scrape(proxy)
    assert value(after, "pyproxy_failovers_total") == 1
    assert value(after, "pyproxy_target_writer", target=new) == 1
    assert value(after, "pyproxy_target_writer", target=old) == 0
    for target, role, state in ((old, "writer", "read_only"), (new, "auto", "up")):
        states = {s: value(after, "pyproxy_target_state", target=target, role=role, state=s)
                  for s in ("unknown", "up", "read_only", "down")}
        assert states == {s: float(s == state) for s in states}, (target, states)
    assert value(after, "pyproxy_target_state_seconds", target=old) >= 0
    assert value(after, "pyproxy_target_probes_total", target=new) >= 1


@pytest.fixture
def log_lines(loaded_proxy: servers.ProxyProcess) -> Iterator[list[str]]:
    """The whole log of a proxy that served a client and a failed login, then stopped."""
    proxy = loaded_proxy
    client = proxy.connect()
    with client.cursor() as cur:
        cur.execute("SELECT 1")
    client.close()
    with pytest.raises(pymysql.MySQLError):
        proxy.connect(password="wrong-" + servers.APP_PASSWORD)
    scrape(proxy)
    proxy.process.send_signal(signal.SIGUSR1)
    wait_for_pool_stats(proxy)
    proxy.stop()
    yield proxy.log_text().splitlines()


def test_one_stream_one_format(log_lines: list[str]) -> None:
    """Every line is one JSON object, twistd's own start-up and shutdown lines too."""
    events = [json.loads(line) for line in log_lines if line.strip()]
    twisted = [event for event in events if event.get("logger") == "twisted"]
    assert any("starting up" in event["event"] for event in twisted), twisted
    assert any("Received SIGTERM" in event["event"] for event in twisted), twisted
    assert all({"event", "level", "timestamp"} <= set(event) for event in events)


def test_events_carry_fields_and_no_password(log_lines: list[str]) -> None:
    events = [json.loads(line) for line in log_lines if line.strip()]

    def first(name: str) -> dict[str, Any]:
        return next(event for event in events if event["event"] == name)

    connected = first("client_connected")
    assert connected["user"] == servers.APP_USER and connected["client_id"] and connected["peer"]
    closed = [event for event in events if event["event"] == "client_closed"
              and event["client_id"] == connected["client_id"]]
    assert [(event["user"], event["reason"]) for event in closed] == [(servers.APP_USER, "COM_QUIT")]
    opened = first("backend_opened")
    assert opened["backend_id"] and opened["pool"] == servers.APP_USER and opened["target"]
    assert first("auth_failed")
    listening = first("listening")
    assert listening["metrics"].startswith("127.0.0.1:")
    text = "\n".join(log_lines)
    for secret in (servers.APP_PASSWORD, servers.MONITOR_PASSWORD, "wrong-" + servers.APP_PASSWORD):
        assert secret not in text, secret
