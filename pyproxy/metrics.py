"""Prometheus metrics: ``/metrics`` on ``[metrics] listen``, read off pyproxy's own state.

Nothing here counts anything.  At each scrape the collector reads the pools'
containers and counters, the topology's targets and the proxy's client
counters, as SIGUSR1's ``pool_stats`` does, so the page cannot drift from what
pyproxy itself believes.  Labels are bounded: users and targets come from the
configuration, states from fixed lists, and reasons are cut to their fixed part
(pyproxy.logs.reason_kind) with at most MAX_REASONS of them per metric; no SQL
text and no client address is ever a label.

prometheus_client's Twisted resource runs the scrape in a thread of the
reactor's pool, while pyproxy's state belongs to the reactor thread: the
collector hands the reading to the reactor thread and waits for it, so every
number of one scrape comes from one instant.
"""

from __future__ import annotations

import collections
import queue
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from twisted.web import resource, server

import pyproxy
from pyproxy.pool import BORROW_WAIT_BUCKETS, Pool
from pyproxy.query_stats import is_secure
from pyproxy.topology import DOWN, READ_ONLY, UNKNOWN, UP
from pyproxy.wire.commands import command_name

PREFIX = "pyproxy_"
# Distinct reasons per metric, first come first kept; later ones are summed
# under "other", so a label set stays bounded whatever clients and servers say.
MAX_REASONS = 40
OTHER = "other"
TARGET_STATES = (UNKNOWN, UP, READ_ONLY, DOWN)
# How a client connection that ended before its login went, by the fixed
# part of its close reason; "ok" is a login.
OUTCOMES = {"Access denied for user": "auth_failure",
            "max_client_connections reached": "refused_at_limit",
            "handshake timeout": "handshake_timeout"}
# Seconds a scrape waits for the reactor thread before it fails.
SCRAPE_TIMEOUT = 5.0
# A pin reason naming a routine, trigger or view ("... in shop.audit") is
# counted without the name.
_ROUTINE_NAME = re.compile(r" in [^\s()]+\.[^\s()]+")

T = TypeVar("T")


def bounded(counts: Mapping[str, int], limit: int = MAX_REASONS) -> dict[str, int]:
    """``counts`` with the first ``limit`` keys (in the order they first came, so a
    kept label never moves) and the rest summed under "other"."""
    out: dict[str, int] = {}
    for index, (key, count) in enumerate(counts.items()):
        label = key if index < limit else OTHER
        out[label] = out.get(label, 0) + count
    return out


def pin_kind(reason: str) -> str:
    """A pin reason without the routine it names, for a label."""
    return _ROUTINE_NAME.sub("", reason)


class ProxyCollector:
    """The metrics of one running pyproxy: clients, pools, pins, health, targets.

    Args:
        proxy: the pyproxy.proxy.Proxy whose state is read.
        health: the pyproxy.health.HealthChecker, for its pings.
        call: runs a function where pyproxy's state may be read (the reactor
            thread) and returns its result; directly, by default (tests, or a
            scrape already on the reactor thread).
    """

    def __init__(self, proxy: Any, health: Any, call: Callable[[Callable[[], T]], T] | None = None) -> None:
        self.proxy = proxy
        self.health = health
        self.call = call or (lambda function: function())

    def describe(self) -> list[Metric]:
        """Nothing: the registry then never calls collect() outside a scrape."""
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.call(self.read)

    def read(self) -> list[Metric]:
        """Every family, read at once on the reactor thread."""
        return [*self._clients(), *self._traffic(), *self._sessions(), *self._pools(), *self._targets()]

    def _clients(self) -> Iterable[Metric]:
        proxy = self.proxy
        info = GaugeMetricFamily(f"{PREFIX}info", "pyproxy's version.", labels=["version"])
        info.add_metric([pyproxy.__version__], 1)
        yield info
        yield GaugeMetricFamily(f"{PREFIX}paused", "1 while PAUSE (SIGUSR2) holds new transactions.",
                                value=int(proxy.paused))
        yield GaugeMetricFamily(f"{PREFIX}client_connections", "Client connections open now.",
                                value=len(proxy.clients))
        yield CounterMetricFamily(f"{PREFIX}client_connections_accepted",
                                  "Client connections accepted.", value=proxy.connections_accepted)
        yield CounterMetricFamily(f"{PREFIX}client_logins", "Client logins that succeeded.",
                                  value=proxy.logins)
        yield CounterMetricFamily(f"{PREFIX}client_logins_tls", "Client logins that succeeded over TLS.",
                                  value=proxy.stats.logins_tls)
        closed = CounterMetricFamily(f"{PREFIX}client_connections_closed",
                                     "Client connections closed, by the fixed part of the reason.",
                                     labels=["reason"])
        for reason, count in bounded(proxy.connections_closed).items():
            closed.add_metric([reason], count)
        yield closed
        outcomes = CounterMetricFamily(
            f"{PREFIX}client_connection_outcomes",
            "How client connections went: ok (logged in), auth_failure, refused_at_limit "
            "(max_client_connections), handshake_timeout.", labels=["outcome"])
        outcomes.add_metric(["ok"], proxy.logins)
        for reason, outcome in OUTCOMES.items():
            outcomes.add_metric([outcome], proxy.connections_closed.get(reason, 0))
        yield outcomes
        failures = CounterMetricFamily(
            f"{PREFIX}auth_failures", "Client logins refused, by reason (wrong_password, "
            "unknown_user, clear_text_without_tls, an iam_* reason...); never what was sent.",
            labels=["reason"])
        for reason, count in bounded(proxy.auth_failures).items():
            failures.add_metric([reason], count)
        yield failures

    def _traffic(self) -> Iterable[Metric]:
        """The per-query counters (pyproxy.query_stats): commands, bytes, latency,
        and how clients connect."""
        stats = self.proxy.stats
        commands = CounterMetricFamily(f"{PREFIX}client_commands",
                                       "Commands received from clients, by command (COM_QUERY, "
                                       "COM_STMT_EXECUTE...).", labels=["command"])
        for code, count in enumerate(stats.commands):
            if count:
                commands.add_metric([command_name(code)], count)
        yield commands
        latency = HistogramMetricFamily(
            f"{PREFIX}statement_latency_seconds",
            "Commands relayed to a server, from their dispatch to the end of their reply (the "
            "wait for a backend connection included).")
        latency.add_metric([], [("+Inf" if bound == float("inf") else repr(bound), count)
                                for bound, count in stats.latency_cumulative()],
                           sum_value=stats.latency_sum)
        yield latency
        yield CounterMetricFamily(f"{PREFIX}client_received_bytes",
                                  "Bytes read from clients (client to pyproxy).", value=stats.bytes_in)
        yield CounterMetricFamily(f"{PREFIX}client_sent_bytes",
                                  "Bytes written to clients (pyproxy to client).", value=stats.bytes_out)
        logins = CounterMetricFamily(f"{PREFIX}client_logins_by_transport",
                                     "Client logins, over TLS or plaintext.", labels=["transport"])
        logins.add_metric(["tls"], stats.logins_tls)
        logins.add_metric(["plaintext"], stats.logins_plain)
        yield logins
        secure = sum(1 for client in self.proxy.clients.values() if is_secure(client))
        open_now = GaugeMetricFamily(f"{PREFIX}client_connections_by_transport",
                                     "Client connections open now, over TLS or plaintext.",
                                     labels=["transport"])
        open_now.add_metric(["tls"], secure)
        open_now.add_metric(["plaintext"], len(self.proxy.clients) - secure)
        yield open_now
        yield GaugeMetricFamily(f"{PREFIX}debug_statements_seconds",
                                "Seconds left of debug_statements_for (0: statements are not logged).",
                                value=self.proxy.statement_log.remaining)

    def _sessions(self) -> Iterable[Metric]:
        proxy = self.proxy
        sessions = [client.session for client in proxy.clients.values()
                    if getattr(client, "session", None) is not None]
        yield GaugeMetricFamily(f"{PREFIX}sessions_pinned",
                                "Client sessions pinned to their backend connection now.",
                                value=sum(1 for session in sessions if session.pin_reason is not None))
        yield GaugeMetricFamily(f"{PREFIX}sessions_in_transaction",
                                "Client sessions inside a transaction now (each holds a backend "
                                "connection).",
                                value=sum(1 for session in sessions if session.in_transaction))
        pins = CounterMetricFamily(f"{PREFIX}session_pins", "Sessions pinned, by reason.",
                                   labels=["reason"])
        kinds: collections.Counter[str] = collections.Counter()
        for reason, count in proxy.pins.items():
            kinds[pin_kind(reason)] += count
        for reason, count in bounded(kinds).items():
            pins.add_metric([reason], count)
        yield pins
        yield CounterMetricFamily(f"{PREFIX}backend_resets",
                                  "Backend connections reset (COM_RESET_CONNECTION) before another "
                                  "client got them.", value=proxy.resets)
        yield CounterMetricFamily(f"{PREFIX}writes_retried",
                                  "Autocommit writes refused by a writer turned read-only that "
                                  "waited for the new writer to run again.", value=proxy.writes_retried)

    def _pools(self) -> Iterable[Metric]:
        labels = ["target", "user"]
        connections = GaugeMetricFamily(
            f"{PREFIX}backend_connections",
            "Backend connections now, by state: idle, in_use (lent to a client), checking (a "
            "health check), closing (closed by pyproxy, not yet by the server), opening.",
            labels=[*labels, "state"])
        limit = GaugeMetricFamily(f"{PREFIX}backend_connections_max",
                                  "The most backend connections the pool may have.", labels=labels)
        waiting = GaugeMetricFamily(f"{PREFIX}backend_waiting_clients",
                                    "Clients waiting for a backend connection now.", labels=labels)
        counters = {name: CounterMetricFamily(f"{PREFIX}{name}", doc, labels=labels) for name, doc in (
            ("backend_connections_opened", "Backend connections opened."),
            ("backend_connection_open_failures", "Backend connections that failed to open."),
            ("backend_borrows", "Backend connections lent to clients."),
            ("backend_borrow_waits", "Borrows that found no idle connection and waited."),
            ("backend_borrow_timeouts", "Borrowers that waited borrow_timeout and got error 9001."),
        )}
        closed = CounterMetricFamily(
            f"{PREFIX}backend_connections_closed",
            "Backend connections closed, by the fixed part of the reason; lost: the server or the "
            "network closed it first.", labels=[*labels, "reason"])
        wait = HistogramMetricFamily(
            f"{PREFIX}backend_borrow_wait_seconds",
            "How long borrowers waited for a backend connection (0 when one was idle; "
            "borrow_timeout for those that timed out).", labels=labels)
        for pool in list(self.proxy.pools.values()):
            values = [pool.target.name if pool.target is not None else "", pool.user]
            for state, count in (("idle", len(pool.idle)), ("in_use", len(pool.lent)),
                                 ("checking", len(pool.checking)), ("closing", len(pool.closing)),
                                 ("opening", pool.connecting)):
                connections.add_metric([*values, state], count)
            limit.add_metric(values, pool.max_size)
            waiting.add_metric(values, len(pool.waiters))
            for name, count in (("backend_connections_opened", pool.opened),
                                ("backend_connection_open_failures", pool.open_failures),
                                ("backend_borrows", pool.borrows), ("backend_borrow_waits", pool.waits),
                                ("backend_borrow_timeouts", pool.timeouts)):
                counters[name].add_metric(values, count)
            for reason, count in bounded(pool.closed_reasons).items():
                closed.add_metric([*values, reason], count)
            wait.add_metric(values, wait_buckets(pool), sum_value=pool.wait_seconds)
        return [connections, limit, waiting, *counters.values(), closed, wait]

    def _targets(self) -> Iterable[Metric]:
        topology = self.proxy.topology
        now = topology.clock.seconds()
        state = GaugeMetricFamily(f"{PREFIX}target_state",
                                  "1 for the state each server is in (unknown: not probed yet).",
                                  labels=["target", "role", "state"])
        seconds = GaugeMetricFamily(f"{PREFIX}target_state_seconds",
                                    "Seconds each server has been in its state.", labels=["target"])
        writer = GaugeMetricFamily(f"{PREFIX}target_writer", "1 for the server that takes writes.",
                                   labels=["target"])
        probes = CounterMetricFamily(f"{PREFIX}target_probes",
                                     "Probes (login and read_only query) of each server.",
                                     labels=["target"])
        failed = CounterMetricFamily(f"{PREFIX}target_probe_failures",
                                     "Probes of each server that failed.", labels=["target"])
        for target in list(topology.targets):
            for each in TARGET_STATES:
                state.add_metric([target.name, target.role, each], int(target.state == each))
            if target.since is not None:
                seconds.add_metric([target.name], now - target.since)
            writer.add_metric([target.name], int(target is topology.writer))
            probes.add_metric([target.name], target.probes)
            failed.add_metric([target.name], target.failed_probes)
        health = self.health
        return [state, seconds, writer, probes, failed,
                CounterMetricFamily(f"{PREFIX}failovers",
                                    "Times another server took over writes.",
                                    value=topology.writer_changes),
                CounterMetricFamily(f"{PREFIX}health_pings",
                                    "Idle backend connections pinged by the health checker.",
                                    value=health.pings),
                CounterMetricFamily(f"{PREFIX}health_ping_failures",
                                    "Health-check pings that failed (the connection was replaced).",
                                    value=health.failures)]


def wait_buckets(pool: Pool) -> list[tuple[str, float]]:
    """The borrow-wait histogram's cumulative buckets: the borrows served at once
    (they waited 0) are in every bucket, then the recorded waits."""
    cumulative = pool.borrows - pool.waited_borrows
    out = []
    for bound, count in zip(BORROW_WAIT_BUCKETS, pool.wait_buckets):
        cumulative += count
        out.append((repr(bound), cumulative))
    out.append(("+Inf", cumulative + pool.wait_buckets[-1]))
    return out


def on_reactor(reactor: Any, function: Callable[[], T], timeout: float = SCRAPE_TIMEOUT) -> T:
    """Runs ``function`` on the reactor thread and waits for its result, at most
    ``timeout`` seconds (a reactor that is stopping never answers)."""
    answer: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            answer.put((True, function()))
        except BaseException as exc:  # noqa: BLE001 - handed to the scrape thread, raised there
            answer.put((False, exc))

    reactor.callFromThread(run)
    try:
        ok, value = answer.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"the reactor did not answer within {timeout:g}s") from None
    if not ok:
        raise value
    return value


def registry(proxy: Any, health: Any, reactor: Any) -> CollectorRegistry:
    """pyproxy's collectors, and the process's own (CPU, memory, file descriptors)
    as pyproxy_process_*."""
    out = CollectorRegistry()
    out.register(ProxyCollector(proxy, health, lambda function: on_reactor(reactor, function)))
    ProcessCollector(namespace=PREFIX.rstrip("_"), registry=out)
    return out


class MetricsSite(server.Site):
    """No access log: a scrape every few seconds would drown pyproxy's own events."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def site(metrics: CollectorRegistry) -> server.Site:
    """The HTTP site: ``/metrics`` is prometheus_client's own Twisted resource."""
    from prometheus_client.twisted import MetricsResource  # noqa: PLC0415 - imports the reactor

    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(metrics))
    return MetricsSite(root)
